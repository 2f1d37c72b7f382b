"""The benchmark suites judge issue 11's goals on their own figures (benchmarks/goals.py, run from
the repository root as the suites run: `benchmarks` is not an installed package). A verdict must
fail on the one cell that misses, judge only the cells the goal names, and say by how much."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]

JUDGE = """
import json, sys
from benchmarks.goals import Figures as F, PeersRow
from benchmarks.goals import heavy_verdicts, peers_verdicts, sli_cost_verdict, tiny_cpu_verdict
rows = [
    PeersRow("digits INT8", 32, F(6060, 13.8), {"kserve": F(1243, 40.0), "mlserver": F(1576, 122.7)},
             F(7505, 9.9), 40062, False),
    PeersRow("MLP", 1, F(637, 2.5), {"kserve": F(359, 4.8), "mlserver": F(398, 4.9)},
             F(642, 3.1), 1274, True),
    PeersRow("MLP", 8, F(1284, 10.9), {"kserve": F(347, 31.1), "mlserver": F(390, 38.0)},
             F(723, 23.9), 1110, True),
]
tail = [PeersRow("digits FP32", 1, F(3057, 2.9), {"kserve": F(1007, 2.7), "mlserver": F(1185, 3.0)},
                 F(4390, 0.6), 40647, False)]
slow_heavy = [PeersRow("MLP", 32, F(1000, 20.0), {"kserve": F(400, 99.0)}, F(900, 99.0), 1699, True)]
verdicts = {
    "peers": peers_verdicts(rows),
    "tail": peers_verdicts(tail),
    "slow_heavy": peers_verdicts(slow_heavy),
    "heavy": heavy_verdicts({"gRPC": 0.66, "HTTP binary": 0.92}, {"gRPC": 0.67, "HTTP binary": 0.78},
                            13.6, {"kserve": 11.8, "mlserver": 23.1}),
    "heavy_met": heavy_verdicts({"gRPC": 0.95}, {"gRPC": 0.97}, 11.8, {"kserve": 11.8}),
    "tiny": [tiny_cpu_verdict({"HTTP binary": {1: 260, 8: 172, 32: 95}, "gRPC": {1: 500, 8: 417, 32: 440}},
                              {"HTTP binary": {1: 101, 8: 47, 32: 40}, "gRPC": {1: 337, 8: 342, 32: 349}})],
    "tiny_met": [tiny_cpu_verdict({"HTTP binary": {1: 260, 32: 95}}, {"HTTP binary": {1: 101, 32: 40}})],
    "sli": [sli_cost_verdict({1: 0.047, 8: 0.029, 32: 0.039}), sli_cost_verdict({1: 0.01, 8: 0.051})],
    # no peer installed: quantship far behind every figure a peer could have had
    "no_peer": peers_verdicts([PeersRow("MLP", c, F(10, 99.0), {}, F(900, 1.0), 1000, True) for c in (1, 8)]),
    "heavy_no_peer": heavy_verdicts({"gRPC": 0.95}, {"gRPC": 0.9}, 500.0, {}),
    # a peer answering only 400s, fast: its refusals are not throughput
    "refusing_peer": peers_verdicts([
        PeersRow("digits", 8, F(3000, 2.0), {"kserve": F(6524, 1.0, 13066)}, F(4000, 1.0), 1e9, False),
        PeersRow("digits", 32, F(3000, 2.0), {"kserve": F(1000, 9.0)}, F(4000, 1.0), 1e9, False),
    ]),
    "erring_ours": peers_verdicts([
        PeersRow("MLP", 8, F(5000, 1.0, 7), {"kserve": F(100, 9.0)}, F(900, 1.0), 1000, True),
    ]),
    "one_slow_one_erring": peers_verdicts([
        PeersRow("digits", 8, F(3000, 2.0), {"kserve": F(6524, 1.0, 13066)}, F(4000, 1.0), 1e9, False),
        PeersRow("digits", 32, F(1000, 2.0), {"kserve": F(1000, 9.0)}, F(4000, 1.0), 1e9, False),
    ]),
    # one peer refusing or a floor with errors: quantship at half the peer that answered
    "half_of_mlserver": peers_verdicts([
        PeersRow("digits", 8, F(1000, 9.0), {"kserve": F(6000, 1.0, 500), "mlserver": F(2000, 1.0)},
                 F(4000, 1.0), 1e9, False),
    ]),
    "half_beside_an_erring_floor": peers_verdicts([
        PeersRow("digits", 8, F(1000, 9.0), {"kserve": F(2000, 1.0)}, F(4000, 1.0, 3), 1e9, False),
    ]),
}
print(json.dumps({name: [[v.met, v.detail] for v in found] for name, found in verdicts.items()}))
"""


def judged() -> dict[str, list[tuple[bool, str]]]:
    done = subprocess.run(
        [sys.executable, "-c", JUDGE], cwd=ROOT, capture_output=True, text=True, timeout=120, check=True
    )
    found: dict[str, list[tuple[bool, str]]] = json.loads(done.stdout.strip().splitlines()[-1])
    return found


def test_each_goal_fails_on_the_cell_that_misses_it_and_says_by_how_much() -> None:
    verdicts = judged()

    ratio, p99, raw = verdicts["peers"]
    assert not ratio[0]
    assert ratio[1].startswith("2 of 3 cells; MLP c=1 1.77x / 1.60x (the floor 1.79x / 1.61x)")
    assert p99 == [True, "3 of 3 cells"]
    assert raw == [True, "MLP c=8 116%"]  # c=1 is not one of the compute-heavy cells

    assert verdicts["tail"][1] == [
        False,
        "0 of 1 cells; digits FP32 c=1 2.90 ms against kserve 2.70, mlserver 3.00",
    ]
    assert verdicts["slow_heavy"][2] == [False, "MLP c=32 59%"]

    share, heavy_p99 = verdicts["heavy"]
    assert share == [False, "gRPC 66% (the floor 67%); HTTP binary 92% (the floor 78%)"]
    assert heavy_p99 == [False, "13.6 ms against kserve 11.8, mlserver 23.1"]
    assert [met for met, _ in verdicts["heavy_met"]] == [True, True]  # a p99 equal to a peer's is not over it

    [tiny] = verdicts["tiny"]
    assert not tiny[0]  # HTTP binary reaches 95 µs at c=32, gRPC never does
    assert tiny[1] == (
        "HTTP binary 260 / 172 / 95 µs (the floor 101 / 47 / 40); "
        "gRPC 500 / 417 / 440 µs (the floor 337 / 342 / 349)"
    )
    assert verdicts["tiny_met"][0][0]

    met, missed = verdicts["sli"]
    assert met == [True, "c=1 +4.7%, c=8 +2.9%, c=32 +3.9%"]
    assert missed[0] is False


def test_a_goal_with_no_peer_measured_is_not_judged() -> None:
    verdicts = judged()
    ratio, p99, raw = verdicts["no_peer"]
    assert ratio == [None, "no peer measured"]
    assert p99 == [None, "no peer measured"]
    assert raw == [False, "MLP c=8 1%"]  # raw onnxruntime is always measured: judged
    share, heavy_p99 = verdicts["heavy_no_peer"]
    assert heavy_p99 == [None, "no peer measured"]
    assert share[0] is True


def test_a_cell_with_errors_is_not_judged_and_says_why() -> None:
    verdicts = judged()
    ratio, p99, _ = verdicts["refusing_peer"]
    # The valid cell meets both goals, the refusing peer's cell cannot be judged: the goal names every cell.
    assert ratio == [None, "1 of 2 cells; digits c=8 not judged: kserve 13066 errors"]
    assert p99 == [None, "1 of 2 cells; digits c=8 not judged: kserve 13066 errors"]
    ratio, p99, raw = verdicts["erring_ours"]
    assert ratio == [None, "0 of 1 cells; MLP c=8 not judged: quantship 7 errors"]
    assert raw == [None, "MLP c=8 not judged: quantship 7 errors"]
    ratio, _, _ = verdicts["one_slow_one_erring"]
    assert ratio[0] is False  # a valid cell that misses is a miss, whatever the others
    assert (
        ratio[1]
        == "0 of 2 cells; digits c=32 1.00x (the floor 4.00x); digits c=8 not judged: kserve 13066 errors"
    )


def test_a_miss_against_a_peer_that_answered_fails_whatever_the_other_peer_or_the_floor() -> None:
    """One refusing peer (or a floor with errors) made the whole cell 'not judged', hiding quantship
    at half the other peer's req/s (review of 52b5bad)."""
    verdicts = judged()
    for case in ("half_of_mlserver", "half_beside_an_erring_floor"):
        ratio, p99, raw = verdicts[case]
        assert ratio[0] is False and p99[0] is False, case
        assert raw == [None, "no such cell"]
    assert "0.50x" in verdicts["half_of_mlserver"][0][1]
    assert "not judged: kserve 500 errors" in verdicts["half_of_mlserver"][0][1]
    assert "the floor 3 errors" in verdicts["half_beside_an_erring_floor"][0][1]
