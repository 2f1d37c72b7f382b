"""`state.readable`: a status a person wrote that `RolloutStatus` cannot read is put right, and said;
one the operator wrote passes as it is."""

from __future__ import annotations

import pytest

from quantship.rollout import Phase, RolloutStatus
from quantship.rollout.state import readable, to_timestamp

NOW = 1_765_000_000.0


@pytest.mark.parametrize("key", ["startedAt", "stepStartedAt", "retiringSince"])
@pytest.mark.parametrize("written", ["yesterday", "2026-13-01T00:00:00Z", 1765000000])
def test_a_time_that_is_not_one_reads_as_now(key: str, written: object) -> None:
    fixed, said = readable({"phase": "Progressing", key: written}, NOW)

    assert fixed[key] == to_timestamp(NOW)
    (saying,) = said
    assert saying.startswith(f"status.{key} {written!r} is not an RFC 3339 time (")
    assert saying.endswith("): read as now")
    RolloutStatus.from_dict(fixed)  # reads


def test_a_history_count_that_is_not_a_number_is_dropped_and_the_next_held_judgement_counts_again() -> None:
    entry = {"at": to_timestamp(NOW - 60), "action": "Judged", "reason": "holding", "count": "many"}
    fixed, said = readable({"phase": "Progressing", "history": [entry]}, NOW)

    assert said == ["status.history: a count that is not a whole number: dropped"]
    again = RolloutStatus.from_dict(fixed).with_history(NOW, "Judged", "holding", again=True)
    assert again.history[-1]["count"] == 2


def test_a_status_the_operator_wrote_is_read_as_it_is() -> None:
    written = RolloutStatus(
        Phase.PROGRESSING, stable="a", canary="b", step=0, started_at=NOW, step_started_at=NOW,
        retiring=("c",), retiring_since=NOW,
    ).with_history(NOW, "SetWeight", "step 1").to_dict()  # fmt: skip

    assert readable(written, NOW + 10) == (written, [])
