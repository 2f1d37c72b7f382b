"""Server benchmark: what quantship serve costs over onnxruntime alone, and what it buys over a naive server.

In one run on this machine, with the same INT8 digits artifact, the same session options (one
intra-op thread each: on 2 cores the event loop and the load generator need the other one), and one
load generator (aiohttp in this process, keep-alive connections, one-row JSON requests, `c` workers in
a closed loop for a fixed time after a warm-up):

    raw session.run      c threads in this process, one row per call: no HTTP at all (the ceiling)
    raw, c rows a call   one thread, c rows per call: what perfect batching could reach
    naive FastAPI        benchmarks/naive_server.py under uvicorn, session.run on the event loop
    naive, thread pool   the same with a plain `def` route (Starlette's thread pool)
    quantship serve      shadow and clip sampling off
    quantship, unbatched --max-batch-size 1: each request its own call off the event loop
    quantship, shadow 5% --shadow-rate 0.05 (the default): the FP32 reference on 5% of requests

All servers run at once; HTTP points are measured in interleaved rounds (every variant once per
round, for each concurrency) and the median round is reported, so that load from other processes
on a shared machine spreads over all variants alike. Beside latency and throughput, each HTTP point
gives the server process's CPU time per request (/proc/PID/stat): on 2 shared cores, that is what
bounds throughput, and it is far steadier than throughput.

Targets (issue 3): p50 overhead over raw session.run <= 1 ms at c=1; with dynamic batching >= 1.5x
the naive server's throughput at c=32; shadow at 5% costs <= 5% throughput. Printed as measured.
"""

from __future__ import annotations

import asyncio
import os
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import httpx
import numpy as np
from prometheus_client.parser import text_string_to_metric_families
from rich.console import Console
from rich.table import Table

from benchmarks import children
from benchmarks.percentile import nearest_rank
from benchmarks.process_cpu import cpu_seconds
from quantship import runtime, zoo
from quantship.local.processes import ServerProcess
from quantship.local.prometheus import free_port
from quantship.quantize import QuantizeConfig
from quantship.quantize import run as quantize

CONCURRENCY = (1, 8, 32)
ROUNDS = int(os.environ.get("BENCH_ROUNDS", 3))
WARMUP_S = float(os.environ.get("BENCH_WARMUP_S", 0.5))
MEASURE_S = float(os.environ.get("BENCH_MEASURE_S", 1.5))
THREADS = 1
ROOT = Path(__file__).resolve().parents[1]
INFER = "/v2/models/digits/infer"


@dataclass(frozen=True)
class Point:
    variant: str
    concurrency: int
    p50_ms: float
    p99_ms: float
    per_s: float
    unit: str = "req/s"
    cpu_us: float | None = None
    """Server process CPU time per request, in microseconds (HTTP variants)."""
    note: str = ""


def _summary(variant: str, concurrency: int, latencies: list[float], seconds: float) -> Point:
    ordered = sorted(latencies)
    p99 = nearest_rank(ordered, 0.99)
    return Point(variant, concurrency, statistics.median(ordered) * 1e3, p99 * 1e3, len(ordered) / seconds)


# -- raw onnxruntime -----------------------------------------------------------------------------


def raw_session_run(model: Path, rows: np.ndarray, concurrency: int) -> Point:
    session = runtime.create_session(model, threads=THREADS)
    one = rows[:1]
    latencies: list[float] = []
    lock = threading.Lock()
    start_measuring = time.perf_counter() + WARMUP_S
    stop = start_measuring + MEASURE_S * 2

    def worker() -> None:
        mine = []
        while (now := time.perf_counter()) < stop:
            session.run(None, {"X": one})
            if now >= start_measuring:
                mine.append(time.perf_counter() - now)
        with lock:
            latencies.extend(mine)

    threads = [threading.Thread(target=worker) for _ in range(concurrency)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return _summary("raw session.run", concurrency, latencies, MEASURE_S * 2)


def raw_batched(model: Path, rows: np.ndarray, concurrency: int) -> Point:
    session = runtime.create_session(model, threads=THREADS)
    batch = np.ascontiguousarray(rows[np.arange(concurrency) % len(rows)])
    latencies = []
    start_measuring = time.perf_counter() + WARMUP_S
    while (now := time.perf_counter()) < start_measuring + MEASURE_S * 2:
        session.run(None, {"X": batch})
        if now >= start_measuring:
            latencies.append(time.perf_counter() - now)
    point = _summary(f"raw, {concurrency} rows a call", concurrency, latencies, MEASURE_S * 2)
    return Point(point.variant, concurrency, point.p50_ms, point.p99_ms, point.per_s * concurrency, "rows/s")


# -- HTTP ----------------------------------------------------------------------------------------


@dataclass
class Target:
    variant: str
    url: str
    pid: int
    metrics: bool = False
    """quantship: scrape batch sizes and shadow comparisons around each point."""


async def _drive(url: str, body: bytes, concurrency: int, on_start: Callable[[], None]) -> list[float]:
    loop = asyncio.get_running_loop()
    start_measuring = loop.time() + WARMUP_S
    stop = start_measuring + MEASURE_S
    latencies: list[float] = []
    started = False
    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(
        connector=connector, headers={"Content-Type": "application/json"}
    ) as http:

        async def worker() -> None:
            nonlocal started
            while (now := loop.time()) < stop:
                if now >= start_measuring and not started:
                    started = True
                    on_start()
                began = time.perf_counter()
                async with http.post(url, data=body) as response:
                    await response.read()
                    if response.status != 200:
                        raise RuntimeError(f"{url} answered {response.status}: {await response.text()}")
                if now >= start_measuring:
                    latencies.append(time.perf_counter() - began)

        await asyncio.gather(*(worker() for _ in range(concurrency)))
    return latencies


def scrape_sums(url: str, *names: str, **labels: str) -> list[float]:
    """Each named metric of a quantship server, summed over its series (those carrying `labels`)."""
    text = httpx.get(f"{url}/metrics").text
    samples = [sample for family in text_string_to_metric_families(text) for sample in family.samples]
    matching = [s for s in samples if labels.items() <= s.labels.items()]
    return [sum(s.value for s in matching if s.name == name) for name in names]


def measure(target: Target, body: bytes, concurrency: int) -> Point:
    names = ("quantship_batch_size_sum", "quantship_batch_size_count", "quantship_shadow_comparisons_total")
    marks: dict[str, float] = {}

    def on_start() -> None:
        marks["cpu"] = cpu_seconds(target.pid)

    before = scrape_sums(target.url, *names) if target.metrics else []
    latencies = asyncio.run(_drive(target.url + INFER, body, concurrency, on_start))
    cpu = cpu_seconds(target.pid) - marks["cpu"]
    point = _summary(target.variant, concurrency, latencies, MEASURE_S)
    note = ""
    if target.metrics:
        rows, calls, shadowed = (
            after - b for after, b in zip(scrape_sums(target.url, *names), before, strict=True)
        )
        note = f"{rows / calls:.1f} rows/call" if calls else ""
        note += f", {shadowed / rows:.1%} shadowed" if shadowed and rows else ""
    return Point(
        point.variant, concurrency, point.p50_ms, point.p99_ms, point.per_s,
        cpu_us=cpu / len(latencies) * 1e6 if latencies else None, note=note,
    )  # fmt: skip


def _wait_answering(process: subprocess.Popen[bytes], url: str, body: bytes, timeout: float = 60) -> None:
    deadline, seen = time.monotonic() + timeout, "nothing"
    while time.monotonic() < deadline and process.poll() is None:
        try:
            answer = httpx.post(url, content=body, headers={"Content-Type": "application/json"})
            if answer.status_code == 200:
                return
            seen = f"{answer.status_code} {answer.text[:200]}"
        except httpx.TransportError as exc:
            seen = repr(exc)
        time.sleep(0.1)
    raise RuntimeError(f"{url} did not answer (exit code {process.poll()}, last: {seen})")


@contextmanager
def naive_server(variant: str, model: Path, app: str, body: bytes) -> Iterator[Target]:
    port = free_port()
    process = children.start(
        [sys.executable, "-m", "uvicorn", f"benchmarks.naive_server:{app}", "--app-dir", str(ROOT),
         "--host", "127.0.0.1", "--port", str(port), "--log-level", "warning", "--no-access-log"],
        env={**os.environ, "NAIVE_MODEL": str(model), "NAIVE_THREADS": str(THREADS)},
        cwd=ROOT,
    )  # fmt: skip
    try:
        url = f"http://127.0.0.1:{port}"
        _wait_answering(process, url + INFER, body)
        yield Target(variant, url, process.pid)
    finally:
        children.stop(process)


@contextmanager
def quantship_server(variant: str, artifact_root: Path, workdir: Path, *flags: str) -> Iterator[Target]:
    server = ServerProcess(
        artifact_root,
        model="digits",
        revision="bench",
        extra_args=["--threads", str(THREADS), "--clip-sample-rate", "0", "--log-level", "warning", *flags],
        log_path=workdir / f"{variant.replace(' ', '-').replace(',', '').replace('%', '')}.log",
    )
    server.start()
    try:
        asyncio.run(server.wait_ready())
        assert server.pid is not None
        yield Target(variant, server.url, server.pid, metrics=True)
    finally:
        server.stop()


# -- the run -------------------------------------------------------------------------------------


def run(workdir: Path) -> None:
    console = Console(width=160)
    hardware = runtime.hardware()
    console.print(
        f"CPU: {hardware.cpu}, {os.cpu_count()} cores; onnxruntime {runtime.ort.__version__}, {THREADS} "
        f"intra-op thread per session; HTTP: {ROUNDS} interleaved rounds of {WARMUP_S} s warm-up + "
        f"{MEASURE_S} s per point, median round shown"
    )
    sample = zoo.build_digits(workdir / "server-zoo")
    built = quantize(
        sample.model, workdir / "server-digits", QuantizeConfig(), calibration=sample.calibration
    )
    model = built.artifact.model_path
    rows = np.load(sample.requests)[zoo.INPUT_NAME]
    body = (
        '{"inputs":[{"name":"X","shape":[1,64],"datatype":"FP32","data":' + str(rows[0].tolist()) + "}]}"
    ).encode()
    points: list[Point] = []
    for c in CONCURRENCY:
        points.append(raw_session_run(model, rows, c))
        if c > 1:
            points.append(raw_batched(model, rows, c))
    with ExitStack() as servers:
        targets = [
            servers.enter_context(naive_server("naive FastAPI", model, "app", body)),
            servers.enter_context(naive_server("naive, thread pool", model, "threadpool_app", body)),
            servers.enter_context(
                quantship_server("quantship serve", built.artifact.root, workdir, "--shadow-rate", "0")
            ),
            servers.enter_context(
                quantship_server(
                    "quantship, unbatched",
                    built.artifact.root,
                    workdir,
                    "--shadow-rate",
                    "0",
                    "--max-batch-size",
                    "1",
                )
            ),
            servers.enter_context(quantship_server("quantship, shadow 5%", built.artifact.root, workdir)),
        ]
        rounds: dict[tuple[str, int], list[Point]] = {}
        for _ in range(ROUNDS):
            for c in CONCURRENCY:
                for target in targets:
                    rounds.setdefault((target.variant, c), []).append(measure(target, body, c))
    for measured in rounds.values():
        points.append(sorted(measured, key=lambda p: p.per_s)[len(measured) // 2])
    _print(console, points)


def _print(console: Console, points: list[Point]) -> None:
    table = Table(title="digits MLP INT8, one-row JSON requests")
    for column in ("variant", "c", "p50 ms", "p99 ms", "throughput", "server CPU/request", "note"):
        table.add_column(column, justify="left" if column in ("variant", "note") else "right")
    for p in sorted(points, key=lambda p: p.concurrency):
        cpu = "" if p.cpu_us is None else f"{p.cpu_us:.0f} µs"
        table.add_row(p.variant, str(p.concurrency), f"{p.p50_ms:.3f}", f"{p.p99_ms:.3f}",
                      f"{p.per_s:,.0f} {p.unit}", cpu, p.note)  # fmt: skip
    console.print(table)

    def find(variant: str, c: int) -> Point:
        return next(p for p in points if p.variant == variant and p.concurrency == c)

    def verdict(ok: bool) -> str:
        return "[green]met[/]" if ok else "[red]missed[/]"

    overhead = find("quantship serve", 1).p50_ms - find("raw session.run", 1).p50_ms
    naive = max((find(v, 32) for v in ("naive FastAPI", "naive, thread pool")), key=lambda p: p.per_s)
    speedup = find("quantship serve", 32).per_s / naive.per_s
    costs = [
        1 - find("quantship, shadow 5%", c).per_s / find("quantship serve", c).per_s for c in CONCURRENCY
    ]
    cpu_costs = [
        (find("quantship, shadow 5%", c).cpu_us or 0) / (find("quantship serve", c).cpu_us or 1) - 1
        for c in CONCURRENCY
    ]
    console.print(f"p50 overhead over raw session.run at c=1: {overhead:.3f} ms (target <= 1 ms): ", end="")
    console.print(verdict(overhead <= 1))
    batching = find("quantship serve", 32).per_s / find("quantship, unbatched", 32).per_s
    console.print(
        f"throughput at c=32 over the better naive server ({naive.variant}): {speedup:.2f}x "
        f"(target >= 1.5x): {verdict(speedup >= 1.5)}; over quantship unbatched: {batching:.2f}x"
    )
    console.print(
        "5% shadow evaluation, throughput cost at c=1/8/32: "
        + " / ".join(f"{cost:+.1%}" for cost in costs)
        + ", server CPU per request: "
        + " / ".join(f"{cost:+.1%}" for cost in cpu_costs)
        + f" (target <= 5%): {verdict(max(costs) <= 0.05)}"
    )
