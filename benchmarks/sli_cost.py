"""What the quantization SLIs cost: quantship with its default sampling against the same server with
them off, under the same wrk load as the peers suite (digits INT8, one-row JSON, wrk on core 0, each
server pinned to core 1, one onnxruntime thread).

Default sampling is `--shadow-rate 0.05 --clip-sample-rate 0.05` within `--sli-cpu-budget 0.05`;
"off" is `--shadow-rate 0 --clip-sample-rate 0`. Both servers run at once and are measured in
interleaved rounds (for each concurrency, one then the other, swapping which goes first every
round), and the median round of each is reported, so that load from other processes falls on both
alike: identical runs on a 2-core VM differ by up to 20%, more than the 5% this measures. The cost
is the median of the rounds' paired costs (each round's two cells ran back to back), for throughput
and for the server's CPU time a request (/proc/PID/stat). Each server's CPU is also split by thread
(/proc/PID/task): the nice-19 SLI thread, and the serving threads (event loop, inference), whose CPU
a request with SLIs on against off says what the sampling and hand-offs cost the request path itself,
a steadier figure than throughput on a noisy VM.

Target (issue 11): the SLIs cost <= 5% of throughput at c=1, 8 and 32. Printed as measured.
"""

from __future__ import annotations

import json
import os
import statistics
import time
from contextlib import ExitStack
from pathlib import Path

import httpx
from rich.console import Console
from rich.table import Table

from benchmarks import peers
from benchmarks.process_cpu import cpu_seconds_by_nice
from benchmarks.server import scrape_sums
from quantship import runtime
from quantship.server.background import NICE
from quantship.slo import Metric

ROUNDS = int(os.environ.get("SLI_ROUNDS", 5))
OFF = ("--shadow-rate", "0", "--clip-sample-rate", "0")
VARIANTS = ("SLIs off", "default SLIs")
TARGET = 0.05
SAMPLES = (Metric.SHADOW_COMPARISONS_TOTAL.value, Metric.SAMPLES_DROPPED_TOTAL.value)
"""Scraped around each measured cell of the SLI server: what it compared, and what it skipped."""
CELL_S = peers.WARMUP_S + peers.SECONDS
"""Seconds of load between the two scrapes of a cell: its warm-up and its measurement."""


def run(workdir: Path) -> None:
    console = Console(width=160)
    wrk = peers.ensure_wrk()
    model = next(m for m in peers.models(workdir) if m.name == "digits INT8")
    script = peers.post_script(workdir / "sli-post.lua", model.body)
    console.print(
        f"{time.strftime('%Y-%m-%d')}, CPU: {runtime.hardware().cpu}, {os.cpu_count()} cores; "
        f"{model.name}; {ROUNDS} interleaved rounds of {peers.SECONDS} s a cell, median shown"
    )
    cells: dict[tuple[str, int], list[peers.Cell]] = {}
    sampled: dict[int, list[tuple[float, float]]] = {}
    sli_us: dict[int, list[float]] = {}
    serving_us: dict[tuple[str, int], list[float]] = {}
    with ExitStack() as stack:
        servers = {
            VARIANTS[0]: stack.enter_context(peers.quantship(model, workdir, *OFF, log_name="slis-off")),
            VARIANTS[1]: stack.enter_context(peers.quantship(model, workdir, log_name="slis-on")),
        }
        for variant, server in servers.items():  # chosen at load by timing: the two may differ
            batching = httpx.get(f"{server.url}/v2/models/m", timeout=10).json()["batching"]
            console.print(f"{variant}: batching {json.dumps(batching)}")
        for round_ in range(ROUNDS):
            for c in peers.CONCURRENCY:
                order = list(servers.items())[:: 1 if round_ % 2 == 0 else -1]  # neither always goes first
                for variant, server in order:
                    scraped = scrape_sums(server.url, *SAMPLES)
                    sli_cpu, serving_cpu = cpu_seconds_by_nice(server.pid, NICE)
                    cell = peers.measure(wrk, server, script, c)
                    cells.setdefault((variant, c), []).append(cell)
                    sli_after, serving_after = cpu_seconds_by_nice(server.pid, NICE)
                    requests = max(cell.per_s * CELL_S, 1.0)  # a failed cell answers nothing
                    serving_us.setdefault((variant, c), []).append(
                        (serving_after - serving_cpu) / requests * 1e6
                    )
                    if variant == VARIANTS[1]:
                        sli_us.setdefault(c, []).append((sli_after - sli_cpu) / requests * 1e6)
                        compared, dropped = (
                            a - b for a, b in zip(scrape_sums(server.url, *SAMPLES), scraped, strict=True)
                        )
                        sampled.setdefault(c, []).append((compared, dropped))
    table = Table(title="the SLIs' cost: default sampling against none (req/s, p50/p99 ms, CPU µs a request)")
    columns = ("c", "SLIs off", "default SLIs", "throughput cost", "CPU cost", "rounds' costs",
               "serving threads", "SLI thread", "shadowed, dropped / s", "load")  # fmt: skip
    for column in columns:
        table.add_column(column, justify="right")
    costs = []
    for c in peers.CONCURRENCY:
        off, on = (_median(cells[variant, c]) for variant in VARIANTS)
        pairs = list(zip(cells[VARIANTS[0], c], cells[VARIANTS[1], c], strict=True))
        each = [1 - on_round.per_s / off_round.per_s for off_round, on_round in pairs]
        cost = statistics.median(each)
        cpu_costs = [b.cpu_us / a.cpu_us - 1 for a, b in pairs if a.cpu_us and b.cpu_us]
        cpu_cost = f"{statistics.median(cpu_costs):+.1%}" if cpu_costs else "n/a"
        costs.append(cost)
        loads = max(cell.load for variant in VARIANTS for cell in cells[variant, c])
        serving_off, serving_on = (statistics.median(serving_us[variant, c]) for variant in VARIANTS)
        paired = zip(serving_us[VARIANTS[0], c], serving_us[VARIANTS[1], c], strict=True)
        serving_costs = [on_us / off_us - 1 for off_us, on_us in paired if off_us > 0] or [float("nan")]
        table.add_row(
            str(c), peers._cell(off), peers._cell(on), f"{cost:+.1%}", cpu_cost,
            " ".join(f"{x:+.0%}" for x in each),
            f"{serving_off:.0f} -> {serving_on:.0f} µs ({statistics.median(serving_costs):+.1%})",
            _thread_share(statistics.median(sli_us[c]), on.cpu_us),
            f"{statistics.median(s for s, _ in sampled[c]) / CELL_S:.0f}, "
            f"{statistics.median(d for _, d in sampled[c]) / CELL_S:.0f}",
            f"{loads:.2f}",
        )  # fmt: skip
    console.print(table)
    console.print(
        "serving threads: CPU a request of the threads that answer requests (event loop, inference), "
        "SLIs off -> on (median of the rounds' paired costs): what the SLIs cost the request path. "
        "SLI thread: the server's nice-19 thread's CPU a request, and its share of the server's CPU a "
        "request: the SLIs' own work. shadowed, dropped: FP32 comparisons made, and shadow and clip samples "
        "skipped, a second (medians). The SLI thread runs at nice 19 and SCHED_IDLE: on a saturated core it "
        "gets what serving leaves, and what it cannot take is dropped (quantship_samples_dropped_total)"
    )
    worst = max(costs)
    verdict = "[green]met[/]" if worst <= TARGET else "[red]missed[/]"
    console.print(f"worst throughput cost {worst:+.1%} (target <= {TARGET:.0%}): {verdict}")


def _thread_share(thread_us: float, server_us: float | None) -> str:
    share = f" ({thread_us / server_us:.1%})" if server_us else ""
    return f"{thread_us:.0f} µs{share}"


def _median(cells: list[peers.Cell]) -> peers.Cell:
    return sorted(cells, key=lambda cell: cell.per_s)[len(cells) // 2]
