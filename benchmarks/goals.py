"""Issue 11's serving goals, judged on one run's figures: each suite prints its verdicts under its
tables, so that whoever re-measures reads met or not met, and by how much, without doing the sums.

The verdicts are of that run on that machine only: on a slower CPU (a longer call) the transport's
share shrinks and the shares of raw onnxruntime grow, as the README's Performance section shows."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from rich.console import Console

PEER_RATIO = 2.0
"""quantship's req/s over each peer's, in every cell of the peers table."""
RAW_SHARE = 0.90
"""quantship's req/s over raw onnxruntime's calls/s on the compute-heavy cells."""
TINY_CPU_US = 100.0
"""Server CPU a request on the binary and gRPC paths for a tiny model (digits)."""
SLI_COST = 0.05
"""Throughput the default SLIs may cost, at every concurrency."""
COMPUTE_HEAVY_MIN_C = 8
"""The MLP counts as compute-heavy at this concurrency and above (issue 11: "the MLP at c>=8")."""


@dataclass(frozen=True)
class Figures:
    """One server's figures in one cell."""

    per_s: float
    p99_ms: float
    errors: int = 0
    """Requests not answered 2xx (or not answered at all): a figure with errors is not judged, since a
    fast refusal is not throughput."""


@dataclass(frozen=True)
class PeersRow:
    """One cell of the peers table: quantship, the peers, the floor and raw onnxruntime."""

    model: str
    c: int
    ours: Figures
    peers: Mapping[str, Figures]
    floor: Figures
    raw_per_s: float
    compute_heavy: bool
    """The model is one of the issue's compute-heavy ones (then c >= COMPUTE_HEAVY_MIN_C counts)."""

    @property
    def label(self) -> str:
        return f"{self.model} c={self.c}"

    def invalid(self) -> str:
        """Why some comparison of this cell cannot be judged ("" when all can): quantship's errors
        (none can), or a peer's (that one cannot). The floor is in no goal: its errors are not here."""
        servers = {"quantship": self.ours, **self.peers}
        return ", ".join(
            f"{name} {figures.errors} errors" for name, figures in servers.items() if figures.errors
        )

    def judged_peers(self) -> dict[str, Figures]:
        """The peers quantship is compared with in this cell: those without errors, none if it erred."""
        return {} if self.ours.errors else {name: p for name, p in self.peers.items() if not p.errors}


NO_PEER = "no peer measured"


@dataclass(frozen=True)
class Verdict:
    goal: str
    met: bool | None
    """None: not judged (nothing it could be judged on was measured)."""
    detail: str

    def line(self) -> str:
        if self.met is None:
            return f"[yellow]not judged[/]: {self.goal}: {self.detail}"
        mark = "[green]met[/]" if self.met else "[red]not met[/]"
        return f"{mark}: {self.goal}: {self.detail}"


def _judged(missed: bool, invalid: bool) -> bool | None:
    """A goal of every cell: not met where a valid cell misses it; not judged where a cell could not be
    judged (its errors), since the goal names every cell; met otherwise."""
    if missed:
        return False
    return None if invalid else True


def peers_verdicts(rows: Iterable[PeersRow]) -> list[Verdict]:
    rows = list(rows)
    raw = _raw_share_verdict(rows)
    ratio_goal = f">= {PEER_RATIO:g}x both peers' req/s in every cell"
    p99_goal = "p99 <= both peers' in every cell"
    if not any(row.peers for row in rows):
        return [Verdict(ratio_goal, None, NO_PEER), Verdict(p99_goal, None, NO_PEER), raw]
    # A pair of servers that answered is judged even where another pair of the cell cannot be: a
    # cell missed against one peer misses the goal whatever the other peer's errors.
    valid = [row for row in rows if row.peers and not row.invalid()]
    invalid = "".join(
        f"; {row.label} not judged: {row.invalid() or NO_PEER}" for row in rows if row not in valid
    )
    floors = "".join(
        f"; {row.label}: the floor {row.floor.errors} errors" for row in rows if row.floor.errors
    )
    slow = [
        row for row in rows if any(row.ours.per_s < PEER_RATIO * p.per_s for p in row.judged_peers().values())
    ]
    long_tail = [row for row in rows if any(row.ours.p99_ms > p.p99_ms for p in row.judged_peers().values())]

    def ratios(row: PeersRow, server: Figures) -> str:
        return " / ".join(f"{server.per_s / p.per_s:.2f}x" for p in row.judged_peers().values())

    def p99s(row: PeersRow) -> str:
        peers = ", ".join(f"{name} {_ms(p.p99_ms)}" for name, p in row.judged_peers().items())
        return f"{row.label} {_ms(row.ours.p99_ms)} ms against {peers}"

    return [
        Verdict(
            ratio_goal,
            _judged(bool(slow), bool(invalid)),
            f"{len([row for row in valid if row not in slow])} of {len(rows)} cells"
            + "".join(
                f"; {row.label} {ratios(row, row.ours)} (the floor {ratios(row, row.floor)})" for row in slow
            )
            + invalid
            + floors,
        ),
        Verdict(
            p99_goal,
            _judged(bool(long_tail), bool(invalid)),
            f"{len([row for row in valid if row not in long_tail])} of {len(rows)} cells"
            + "".join(f"; {p99s(row)}" for row in long_tail)
            + invalid
            + floors,
        ),
        raw,
    ]


def _raw_share_verdict(rows: list[PeersRow]) -> Verdict:
    """quantship's share of raw onnxruntime on the table's compute-heavy cells (raw has no errors)."""
    raw_goal = f">= {RAW_SHARE:.0%} of raw onnxruntime, compute-heavy cells of the table"
    heavy = [row for row in rows if row.compute_heavy and row.c >= COMPUTE_HEAVY_MIN_C]
    heavy_valid = [row for row in heavy if not row.ours.errors]
    shares = [f"{row.label} {row.ours.per_s / row.raw_per_s:.0%}" for row in heavy_valid]
    unjudged = [
        f"{row.label} not judged: quantship {row.ours.errors} errors" for row in heavy if row.ours.errors
    ]
    if not heavy:
        return Verdict(raw_goal, None, "no such cell")
    return Verdict(
        raw_goal,
        _judged(any(row.ours.per_s < RAW_SHARE * row.raw_per_s for row in heavy_valid), bool(unjudged)),
        "; ".join(shares + unjudged),
    )


def heavy_verdicts(
    of_raw: Mapping[str, float],
    floor_of_raw: Mapping[str, float],
    ours_p99: float,
    peers_p99: Mapping[str, float],
) -> list[Verdict]:
    """The compute-heavy cell: quantship's share of raw on each transport (beside the floor's on it),
    and its gRPC p99 against each peer's gRPC p99."""
    shares = "; ".join(
        f"{transport} {share:.0%} (the floor {floor_of_raw[transport]:.0%})"
        for transport, share in of_raw.items()
    )
    peers = ", ".join(f"{name} {_ms(p99)}" for name, p99 in peers_p99.items())
    return [
        Verdict(
            f">= {RAW_SHARE:.0%} of raw onnxruntime, compute-heavy cell",
            all(share >= RAW_SHARE for share in of_raw.values()),
            shares,
        ),
        Verdict(
            "p99 <= the peers', compute-heavy cell over gRPC",
            all(ours_p99 <= p99 for p99 in peers_p99.values()) if peers_p99 else None,
            f"{_ms(ours_p99)} ms against {peers}" if peers_p99 else NO_PEER,
        ),
    ]


def tiny_cpu_verdict(
    cpu_us: Mapping[str, Mapping[int, float]], floors: Mapping[str, Mapping[int, float]]
) -> Verdict:
    """Server CPU a request on each binary transport, judged at its cheapest concurrency (batching
    spreads a call over a batch's requests) and shown at every one, beside its floor's."""

    def figures(cells: Mapping[int, float]) -> str:
        return " / ".join(f"{cpu:.0f}" for cpu in cells.values())

    concurrency = " / ".join(str(c) for c in next(iter(cpu_us.values())))
    detail = "; ".join(
        f"{transport} {figures(cells)} µs (the floor {figures(floors[transport])})"
        for transport, cells in cpu_us.items()
    )
    return Verdict(
        f"<= {TINY_CPU_US:.0f} µs of server CPU a request on each binary path for a tiny model, at its "
        f"cheapest c (c = {concurrency})",
        all(min(cells.values()) <= TINY_CPU_US for cells in cpu_us.values()),
        detail,
    )


def sli_cost_verdict(costs: Mapping[int, float]) -> Verdict:
    """The default SLIs' throughput cost (median of paired rounds) at each concurrency."""
    return Verdict(
        f"default SLIs cost <= {SLI_COST:.0%} of throughput at every concurrency",
        all(cost <= SLI_COST for cost in costs.values()),
        ", ".join(f"c={c} {cost:+.1%}" for c, cost in costs.items()),
    )


def _ms(milliseconds: float) -> str:
    """A p99 with the digits that tell two close ones apart (wrk reports sub-10 ms to 0.01 ms)."""
    return f"{milliseconds:.2f}" if milliseconds < 10 else f"{milliseconds:.1f}"


def show(console: Console, verdicts: Iterable[Verdict]) -> None:
    console.print("issue 11's goals on this run:")
    for verdict in verdicts:
        console.print(f"  {verdict.line()}")
