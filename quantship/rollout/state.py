"""The state a rollout persists between ticks: phase, revisions, step, counters, history.

The engine re-derives everything from this on each tick (nothing lives in memory), so whoever
stores it — the QuantizedModel's status on Kubernetes, a variable in the local demo — can stop
and restart the engine and it resumes where it stood. `to_dict`/`from_dict` give the JSON form
the operator writes into the resource's status (camelCase, timestamps in RFC 3339).
"""

from __future__ import annotations

import datetime
import enum
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

HISTORY_LENGTH = 10
"""Decisions kept in the status: enough to see how the last rollout went, small enough for etcd."""


class Phase(enum.StrEnum):
    PENDING = "Pending"
    """The first revision is starting and takes no traffic yet."""
    PROGRESSING = "Progressing"
    """A canary is rolled out: first waiting for its readiness (step -1), then taking part of the
    traffic and judged at the end of each step."""
    PROMOTED = "Promoted"
    """The asked revision serves all traffic (after passing every step, or as the first revision)."""
    ROLLED_BACK = "RolledBack"
    """The canary was judged bad (or aborted by a person); the stable serves all traffic."""
    FAILED = "Failed"
    """The canary could not be judged at all (never became ready); the stable serves all traffic."""


def to_timestamp(seconds: float | None) -> str | None:
    if seconds is None:
        return None
    return datetime.datetime.fromtimestamp(seconds, tz=datetime.UTC).isoformat().replace("+00:00", "Z")


def from_timestamp(text: str | None) -> float | None:
    if not text:
        return None
    return datetime.datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


TIMES = ("startedAt", "stepStartedAt", "retiringSince")
"""The status's times, as `to_dict` writes them (RFC 3339)."""


def readable(data: Mapping[str, Any], now: float) -> tuple[dict[str, Any], list[str]]:
    """`data` (a status in `to_dict`'s form) with what `from_dict` cannot read put right, and what
    was put right, said. Only the operator writes the status, but a person can (`kubectl patch
    --subresource=status`), and one it could not read failed every tick with a traceback: a time
    that is not one reads as `now` (its progress deadline or step interval starts again: nothing
    comes sooner than it would have), a history entry's `count` that is not a number is dropped.
    The next status write puts the values read in its place."""
    fixed, said = dict(data), []
    for key in TIMES:
        try:
            from_timestamp(data.get(key))
        except (TypeError, ValueError, AttributeError) as exc:  # "yesterday", month 13, a number
            fixed[key] = to_timestamp(now)
            said.append(f"status.{key} {data.get(key)!r} is not an RFC 3339 time ({exc}): read as now")
    history = data.get("history") or ()
    if any(not isinstance(entry.get("count", 1), int) for entry in history):
        fixed["history"] = [
            {k: v for k, v in entry.items() if k != "count" or isinstance(v, int)} for entry in history
        ]
        said.append("status.history: a count that is not a whole number: dropped")
    return fixed, said


@dataclass(frozen=True)
class RolloutStatus:
    phase: Phase = Phase.PENDING
    stable: str | None = None
    """The revision serving the rest of the traffic (all of it outside a canary)."""
    canary: str | None = None
    """The revision under test, if any."""
    rejected: str | None = None
    """The last revision rolled back or failed: not tried again until another one is asked for."""
    step: int = -1
    """Index into the spec's steps; -1 before the first."""
    weight: int = 0
    """Canary weight asked for, percent."""
    achieved_weight: float = 0.0
    """Canary weight the router reports it achieved, percent."""
    started_at: float | None = None
    """When the current new revision (canary or first stable) was started."""
    step_started_at: float | None = None
    """When the current step began (or the last judgement that kept the step)."""
    failures: int = 0
    """Failed judgements of the current canary."""
    inconclusive: int = 0
    """Consecutive inconclusive judgements of the current canary."""
    last_analysis: Mapping[str, Any] | None = None
    history: tuple[Mapping[str, Any], ...] = ()
    message: str = ""
    retiring: tuple[str, ...] = ()
    """Revisions to remove, kept here until they are gone (`engine.retire`): removed only once a
    status naming their successor is saved, and once their successor has all its servers ready
    (past the progress deadline, one: never while they are the last that serve), so that a tick
    cut off half-way or a restarted operator finishes the job instead of losing it."""
    retiring_since: float | None = None
    """When the last decision that retired a revision was taken: what the progress deadline of
    `engine.retire`'s wait counts from. None while nothing retires."""

    @property
    def in_flight(self) -> bool:
        """A new revision is on its way (pending or progressing): the engine must keep ticking."""
        return self.phase in (Phase.PENDING, Phase.PROGRESSING)

    def with_history(self, at: float, action: str, reason: str, *, again: bool = False) -> RolloutStatus:
        """The status with the decision recorded last in its history, and as its message. `again`:
        the decision repeats the last entry's (a held judgement saying what the one before said),
        which takes it in place, with `count` (decisions it stands for) and `firstAt` (the first
        one's time): a hold that lasts would otherwise push every earlier decision out."""
        entry: dict[str, Any] = {
            "at": to_timestamp(at),
            "action": action,
            "phase": self.phase.value,
            "stable": self.stable,
            "canary": self.canary,
            "weight": self.weight,
            "reason": reason,
        }
        last = self.history[-1] if self.history else None
        if again and last is not None and last.get("action") == action:
            entry |= {"count": int(last.get("count", 1)) + 1, "firstAt": last.get("firstAt", last.get("at"))}
            return replace(self, history=(*self.history[:-1], entry), message=reason)
        return replace(self, history=(*self.history, entry)[-HISTORY_LENGTH:], message=reason)

    def to_dict(self) -> dict[str, Any]:
        return {
            "phase": self.phase.value,
            "stableRevision": self.stable,
            "canaryRevision": self.canary,
            "rejectedRevision": self.rejected,
            "step": self.step,
            "weight": self.weight,
            "achievedWeight": self.achieved_weight,
            "startedAt": to_timestamp(self.started_at),
            "stepStartedAt": to_timestamp(self.step_started_at),
            "failures": self.failures,
            "inconclusive": self.inconclusive,
            "lastAnalysis": dict(self.last_analysis) if self.last_analysis is not None else None,
            "history": [dict(entry) for entry in self.history],
            "message": self.message,
            "retiringRevisions": list(self.retiring) or None,  # None: the merge patch removes the key
            "retiringSince": to_timestamp(self.retiring_since) if self.retiring else None,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any] | None) -> RolloutStatus:
        """Read a status written by `to_dict`; missing keys take their defaults (a fresh resource)."""
        if not data or not data.get("phase"):
            return cls()
        return cls(
            phase=Phase(data["phase"]),
            stable=data.get("stableRevision"),
            canary=data.get("canaryRevision"),
            rejected=data.get("rejectedRevision"),
            step=int(data.get("step", -1)),
            weight=int(data.get("weight", 0)),
            achieved_weight=float(data.get("achievedWeight", 0.0)),
            started_at=from_timestamp(data.get("startedAt")),
            step_started_at=from_timestamp(data.get("stepStartedAt")),
            failures=int(data.get("failures", 0)),
            inconclusive=int(data.get("inconclusive", 0)),
            last_analysis=data.get("lastAnalysis"),
            history=tuple(data.get("history") or ()),
            message=str(data.get("message") or ""),
            retiring=tuple(data.get("retiringRevisions") or ()),
            retiring_since=from_timestamp(data.get("retiringSince")),
        )
