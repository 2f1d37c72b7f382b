"""`quantship demo` / `make demo`: the whole platform on one machine, every figure from the running system.

1. The sample model, a well calibrated and a badly calibrated INT8 artifact, and the FP32 baseline.
2. A real Prometheus when one is installed (else the direct-scrape source), the FP32 model as the
   stable revision, and steady traffic with label feedback.
3. A canary of the good INT8 artifact through the rollout engine: judged at each step, promoted.
4. A canary of the badly calibrated one: the engine rolls it back on its own, with the burn rates
   that decided it.
5. Drift: the stable's images turn twice as bright; its activation drift SLI rises over the drift alert's
   threshold; the real quantizer recalibrates from the rows the stable captured (`--capture-dir`).
6. A canary of the recalibrated artifact on the same drifted traffic: promoted, its drift back
   under the threshold.
7. A summary, `summary.json`, and an HTML report with the rollouts over time.

The engine is the operator's (`quantship.rollout`); only the adapters are local: `quantship serve`
processes as Workloads, the load generator as TrafficRouter. Ctrl-C stops every process started.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import shutil
import signal
import sys
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.live import Live
from rich.table import Table

from quantship import artifact, fitted, slo, zoo
from quantship.local import demo_report, live, workdir_lock
from quantship.local.prometheus import PrometheusProcess, find_binary
from quantship.local.recalibration import (
    DriftLoop,
    DriftReader,
    RecalibrationError,
    command_line,
    prometheus_drift,
    quantize_arguments,
    recalibrate,
    scraped_drift,
    wait_for_capture,
    wait_for_drift,
)
from quantship.local.scrape import ScrapeSource
from quantship.local.stopping import Stopper
from quantship.local.timeline import Timeline
from quantship.local.traffic import LoadGenerator
from quantship.local.workloads import LocalWorkloads
from quantship.quantize import QuantizeConfig, default_progress, package_fp32, printed_warnings, summary
from quantship.quantize import report as quantize_report
from quantship.quantize import run as quantize
from quantship.rollout import (
    AnalysisSpec,
    MetricsSource,
    Phase,
    PrometheusSource,
    RolloutSpec,
    RolloutStatus,
    run_rollout,
)
from quantship.server.capture import CAPTURE_FILE

MODEL = "digits"


@dataclass(frozen=True)
class DemoSettings:
    """Timings short enough for a demo: a production canary judges over minutes, not seconds."""

    steps: tuple[int, ...]
    step_interval: float
    """Seconds each canary step lasts before it is judged."""
    short_window: int
    long_window: int
    rate: float
    """Requests per second the load generator sends, split by the canary weight."""
    min_samples: int
    prometheus: bool
    """Use a real Prometheus (when installed); False: the servers are scraped directly."""

    @classmethod
    def for_run(cls, *, quick: bool, prometheus: bool) -> DemoSettings:
        if quick:
            return cls((50, 100), 6.0, 5, 10, 50.0, 50, prometheus)
        return cls((20, 50, 100), 10.0, 10, 20, 60.0, 60, prometheus)

    def describe(self) -> str:
        source = "Prometheus (1 s scrapes)" if self.prometheus else "direct scrape of /metrics (1 s)"
        return (
            f"steps {'/'.join(map(str, self.steps))}% of {self.step_interval:g} s each; burn rates over "
            f"{self.short_window} s and {self.long_window} s windows; {self.rate:g} requests/s; "
            f"every request shadowed and clip-checked; metrics from {source}"
        )


INCONCLUSIVE_LIMIT = 5
"""Judgements short of data the demo sits out before rolling back (the default is 3). Its canaries
share two cores with the other servers, Prometheus, this process and, for the recalibrated one, the
quantize run that just finished: on a slow 2-core machine that canary's first three 5 s windows once
held 35-46 of the 50 samples a verdict needs, and it was rolled back for want of data, not for any
fault. Two more steps' worth of waiting; a canary that never gets traffic is still rolled back."""

# Requests share two cores with the servers, Prometheus and this process: the latency SLO only
# catches real regressions here, not scheduler noise.
OBJECTIVES = slo.default_objectives(latency_threshold=0.25)
DRIFT_WINDOW = 128
"""Sampled requests the servers' drift gauge covers (--drift-window). The default, 512, is ten
seconds of the demo's traffic; 128 follows a drift within three, and calm digits traffic still
reads 0.006-0.009 bits, well under the alert's threshold."""
SERVER_ARGS = [
    "--shadow-rate", "1.0", "--clip-sample-rate", "1.0", "--sli-cpu-budget", "2",  # every request judged
    "--drift-window", str(DRIFT_WINDOW),
]  # fmt: skip
DRIFT_SCALE = 2.0
"""The drift phase sends the stable its images twice as bright: drift 0.12 bits on digits, well over
the 0.05 threshold (held-out images as they are: 0.004-0.01), while FP32 stays 94% accurate. Darker
ones (x0.5, 0.085 bits) leave FP32 82% accurate and wavering: even an INT8 model calibrated on them
disagrees with it on 0.5-0.75% of the rows, over the accuracy budget, and its canary would be rolled
back for what is no quantization fault."""
CAPTURE_ROWS = 3000
"""Rows each server's capture keeps (--capture-max-samples; 3000 digits rows are 750 KiB): more than
the stable serves before its first capture write, so the reservoir keeps every row it served, each of
the 397 distinct request rows drifted among them, and the recalibrated ranges are those of the drifted
traffic itself. A random subset is a gamble: of ten recalibrations on 256 rows, one disagreed with
FP32 on 3 drifted rows, over the accuracy budget, and its canary would have been rolled back."""
CAPTURE_DRIFTED_S = 10.0
"""Seconds of drifted traffic a capture must span to be recalibrated from: 500-600 drifted rows at
the demo's rates, most of the reservoir (the normal rows served before the drift stay in it)."""
DRIFT_TIMEOUT = 60.0
"""Seconds the drift phase waits for the drift to rise over the threshold (it takes 1-3)."""
CAPTURE_FLUSH_S = 5.0
"""Seconds between the servers' capture writes (--capture-flush-s; the default, 30, suits a node's
disk, not a demo that waits for the file)."""
CAPTURE_TIMEOUT = CAPTURE_DRIFTED_S + CAPTURE_FLUSH_S + 20.0
"""Seconds the drift phase waits for that capture: the server writes one at most every flush interval."""


@dataclass(frozen=True)
class Revision:
    name: str
    artifact: Path
    label: str
    expected: Phase


def build_artifacts(workdir: Path, console: Console) -> tuple[zoo.SampleModel, list[Revision]]:
    console.rule("1. the sample model, two INT8 artifacts and the FP32 baseline")
    sample = zoo.build_digits(workdir / "zoo")
    console.print(f"built {sample.model} (scikit-learn digits MLP, FP32)")
    built: dict[str, artifact.Artifact] = {}
    for name, calibration, story in (
        ("int8-good", sample.calibration, "256 calibration images of every digit"),
        (
            "int8-skewed",
            sample.calibration_skewed,
            f"16 calibration images of the digit {zoo.SKEWED_DIGIT} only",
        ),
    ):
        console.print(f"quantizing [bold]{name}[/]: {story}")
        progress = default_progress()
        result = quantize(
            sample.model,
            workdir / "artifacts" / name,
            QuantizeConfig(),
            calibration=calibration,
            evaluation=sample.evaluation,
            progress=progress,
            # As `quantship quantize` prints them: the skewed one's clip prediction was in its report only.
            warn=printed_warnings(progress.console),
        )
        built[name] = result.artifact
    console.print(summary.table(list(built.items())))
    skewed = built["int8-skewed"].manifest["validation"]
    console.print(
        f"Both pass the offline gate (skewed: delta {skewed['delta']:+.2%} on held-out data), yet the "
        "skewed one's activation ranges come from one digit: real traffic will clip. "
        "Watch the canary catch it."
    )
    reports = workdir / "reports"
    reports.mkdir(parents=True, exist_ok=True)
    for name, loaded in built.items():
        (reports / f"{name}.html").write_text(quantize_report.render(loaded))
    fp32 = package_fp32(sample.model, workdir / "artifacts" / "fp32")
    return sample, [
        Revision("v1-fp32", fp32.root, "FP32 baseline", Phase.PROMOTED),
        Revision("v2-int8", built["int8-good"].root, "INT8, good calibration", Phase.PROMOTED),
        Revision(
            "v3-int8-skewed", built["int8-skewed"].root, "INT8, one-digit calibration", Phase.ROLLED_BACK
        ),
    ]


RECALIBRATED = Path("artifacts") / "int8-recalibrated"


def _capture_args(workdir: Path, revision: str) -> list[str]:
    """Every revision keeps a capture, as production would: whichever is stable when the traffic
    drifts is recalibrated from its own."""
    return [
        "--capture-dir", str(_capture_dir(workdir, revision)), "--capture-max-samples", str(CAPTURE_ROWS),
        "--capture-flush-s", str(CAPTURE_FLUSH_S),
    ]  # fmt: skip


def _capture_dir(workdir: Path, revision: str) -> Path:
    return workdir / "captures" / revision


def _spec(revision: str, settings: DemoSettings) -> RolloutSpec:
    return RolloutSpec(
        model=MODEL,
        revision=revision,
        objectives=OBJECTIVES,
        steps=settings.steps,
        step_interval=settings.step_interval,
        progress_deadline=60.0,
        analysis=AnalysisSpec(
            short_window=settings.short_window,
            long_window=settings.long_window,
            min_samples=settings.min_samples,
            inconclusive_limit=INCONCLUSIVE_LIMIT,
        ),
    )


PREVIOUS_RUN = (
    "summary.json",
    "reports/demo.html",
    "reports/int8-recalibrated.html",
    "captures",
    "prometheus/data",
)
"""What a run leaves that the next must not read as its own: Prometheus keeps the old servers' gauges
for its 5-minute lookback (a rerun read the last run's drift, 0.128 bits, as its calm one and said
"rose in 0 s" with ok: true), and an interrupted rerun left the last summary saying ok."""


WORKDIR_MARK = ".quantship-demo"
"""A file the demo leaves in its workdir: only there does a run remove a previous one's outputs (a
`--workdir .` must not lose a user's ./captures or ./summary.json)."""


def _written_by_a_demo(summary: Path) -> bool:
    """A summary.json of the demo's own form: a workdir of a demo from before WORKDIR_MARK."""
    try:
        written = json.loads(summary.read_text())
    except (OSError, ValueError):
        return False
    return isinstance(written, dict) and {"ok", "rollouts", "drift", "decisions"} <= set(written)


def clear_previous_run(workdir: Path) -> Path:
    """The workdir, made and marked (WORKDIR_MARK), without a previous demo run's outputs
    (PREVIOUS_RUN and its recalibrated artifact; nothing else of what may be there is touched)."""
    workdir = workdir.resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    mark = workdir / WORKDIR_MARK
    if not mark.is_file():
        mark.write_text("quantship demo --workdir: each run replaces the previous one's outputs here\n")
        if not _written_by_a_demo(workdir / "summary.json"):
            return workdir
    for name in PREVIOUS_RUN:
        path = workdir / name
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        else:
            path.unlink(missing_ok=True)
    recalibrated = workdir / RECALIBRATED
    if (recalibrated / artifact.MANIFEST_FILE).is_file():
        shutil.rmtree(recalibrated)
    return workdir


async def run_demo(
    workdir: Path,
    console: Console,
    built: tuple[zoo.SampleModel, list[Revision]],
    *,
    quick: bool = False,
    prometheus: bool = True,
    on_unwind: Callable[[], None] = lambda: None,
    started: float | None = None,
) -> int:
    """The demo from step 2 on, with step 1's `built` (build_artifacts); returns the exit code (0:
    promoted the good artifact, rolled back the bad one). `on_unwind` is called once the demo begins
    to stop the processes it started, however it ends."""
    started = time.monotonic() if started is None else started
    settings = _settings(console, quick=quick, prometheus=prometheus)
    sample, revisions = built

    console.rule("2. serving, metrics and traffic")
    console.print(settings.describe())
    timeline = Timeline(OBJECTIVES, settings.short_window, MODEL)
    outcomes: list[dict[str, Any]] = []
    drift = DriftLoop(revision="", scale=DRIFT_SCALE)
    serving = _serving(workdir, sample, revisions, settings, console, on_unwind)
    async with serving as (workloads, load, metrics, reader):
        timeline.drift = reader
        await _rollouts(
            revisions,
            settings,
            workloads,
            load,
            metrics,
            timeline,
            console,
            outcomes,
            (workdir, sample, drift),
        )

    console.rule("7. summary")
    return _report(workdir, settings, revisions, timeline, outcomes, drift, console, started)


def _settings(console: Console, *, quick: bool, prometheus: bool) -> DemoSettings:
    settings = DemoSettings.for_run(
        quick=quick, prometheus=prometheus and find_binary("prometheus") is not None
    )
    if prometheus and not settings.prometheus:
        console.print(
            "[yellow]prometheus is not installed (scripts/install-tools): scraping servers directly[/]"
        )
    return settings


@contextlib.asynccontextmanager
async def _serving(
    workdir: Path,
    sample: zoo.SampleModel,
    revisions: list[Revision],
    settings: DemoSettings,
    console: Console,
    on_unwind: Callable[[], None],
) -> AsyncIterator[tuple[LocalWorkloads, LoadGenerator, MetricsSource, DriftReader]]:
    """The servers of every revision, the metrics source (Prometheus, or a direct scrape), where the
    drift gauge is read from, and the load generator; every process they started is stopped on the
    way out, whatever happened."""
    prom: PrometheusProcess | None = None
    workloads = LocalWorkloads(
        model=MODEL,
        workdir=workdir / "servers",
        server_args=SERVER_ARGS,
        on_change=lambda: prom.set_targets(workloads.targets()) if prom else None,
    )
    for revision in revisions:
        workloads.add(revision.name, revision.artifact, _capture_args(workdir, revision.name))
    load = LoadGenerator(workloads.endpoints, sample.requests, model=MODEL, rate=settings.rate)
    async with contextlib.AsyncExitStack() as stack:  # closed last in, first out
        metrics: MetricsSource
        scraper: ScrapeSource | None = None
        if settings.prometheus:
            prom = PrometheusProcess(workdir / "prometheus")
            prom.start()
            stack.callback(prom.stop)
            metrics = PrometheusSource(prom.url)
            stack.push_async_callback(metrics.aclose)
            drift = prometheus_drift(prom)
        else:
            metrics = scraper = ScrapeSource(workloads.targets, interval=1.0)
            stack.push_async_callback(scraper.aclose)
            drift = scraped_drift(scraper)
        stack.push_async_callback(workloads.aclose)
        stack.push_async_callback(load.aclose)
        if prom is not None:
            await prom.wait_ready()
            console.print(f"Prometheus: {prom.url}")
        if scraper is not None:
            await scraper.start()
        await load.start()
        try:
            yield workloads, load, metrics, drift
        finally:
            on_unwind()


async def _rollouts(
    revisions: list[Revision],
    settings: DemoSettings,
    workloads: LocalWorkloads,
    load: LoadGenerator,
    metrics: MetricsSource,
    timeline: Timeline,
    console: Console,
    outcomes: list[dict[str, Any]],
    drift: tuple[Path, zoo.SampleModel, DriftLoop],
) -> None:
    """Each revision in turn, the first as the first stable, then a canary each, then the drift
    loop's recalibrated revision; a live view."""
    status = RolloutStatus()
    spec = _spec(revisions[0].name, settings)
    with _view(console, timeline, lambda: spec) as refresh:
        sampler = asyncio.create_task(timeline.run(workloads.tracks, metrics, load, lambda _: refresh()))
        try:
            for number, revision in enumerate(revisions):
                spec = _spec(revision.name, settings)
                if number:
                    console.rule(f"{number + 2}. canary of {revision.name} ({revision.label})")
                status = await _rollout(
                    spec, status, revision, workloads, load, metrics, timeline, console, outcomes, refresh
                )
            workdir, sample, loop = drift
            recalibrated = await _drift(workdir, sample, loop, status, workloads, load, timeline, console)
            if recalibrated is not None:
                spec = _spec(recalibrated.name, settings)
                console.rule(
                    f"6. canary of {recalibrated.name} ({recalibrated.label}) on the drifted traffic"
                )
                status = await _rollout(
                    spec, status, recalibrated, workloads, load, metrics, timeline, console, outcomes, refresh
                )
                _drift_after(loop, recalibrated, status, timeline, console)
        finally:
            sampler.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await sampler


async def _drift(
    workdir: Path,
    sample: zoo.SampleModel,
    loop: DriftLoop,
    status: RolloutStatus,
    workloads: LocalWorkloads,
    load: LoadGenerator,
    timeline: Timeline,
    console: Console,
) -> Revision | None:
    """Drift the stable's traffic, watch its drift SLI cross the alert threshold, recalibrate from its
    capture. The recalibrated revision to canary, or None when the loop could not go on (why is
    printed, and `loop` stays not ok)."""
    assert status.stable is not None and timeline.drift is not None
    console.rule(f"5. drift: {status.stable}'s traffic moves away from its calibration data")
    loop.revision = status.stable
    timeline.begin(f"drift of {loop.revision}", status)  # what the live view's header names
    scope = {"model": MODEL, "revision": loop.revision}
    loop.calm = await timeline.drift(scope)
    console.print(
        f"{timeline.now():5.0f}s {loop.revision}: activation drift {_bits(loop.calm)} on real traffic "
        f"(drift alert threshold {loop.threshold:g}); sending it images {loop.scale:g}x as bright"
    )
    since = time.time()
    load.drift(loop.revision, loop.scale)
    capture = _capture_dir(workdir, loop.revision) / CAPTURE_FILE
    try:
        loop.drifted, loop.rose_in = await wait_for_drift(
            timeline.drift, scope, loop.threshold, DRIFT_TIMEOUT
        )
        console.print(
            f"{timeline.now():5.0f}s {loop.revision}: drift rose to {_bits(loop.drifted)} in "
            f"{loop.rose_in:.0f} s, over the threshold (QuantshipActivationDrift fires when an hour's "
            f"average stays over it); waiting for the server to write its capture of the drifted rows"
        )
        loop.captured = await wait_for_capture(capture, since + CAPTURE_DRIFTED_S, CAPTURE_TIMEOUT)
        settled = await timeline.drift(scope)  # the window now holds drifted requests only
        loop.drifted = max(loop.drifted, settled or 0.0)
        out = workdir / RECALIBRATED
        arguments = quantize_arguments(sample.model, capture, sample.evaluation, out)
        console.print(
            f"{timeline.now():5.0f}s {loop.revision}: drift {_bits(loop.drifted)}; recalibrating on the "
            f"{loop.captured} rows captured: {command_line(arguments)}"
        )
        await recalibrate(arguments)
    except RecalibrationError as exc:
        console.print(f"[bold red]drift loop stopped[/]: {exc}")
        return None
    _show_recalibrated(out, workdir, console)
    revision = Revision("v4-int8-recal", out, "INT8, recalibrated on the drifted capture", Phase.PROMOTED)
    workloads.add(revision.name, revision.artifact, _capture_args(workdir, revision.name))
    load.drift(revision.name, loop.scale)  # the canary sees the traffic the stable sees
    loop.recalibrated = revision.name
    return revision


def _show_recalibrated(out: Path, workdir: Path, console: Console) -> None:
    """The recalibrated artifact at `out` on the console: its manifest's warnings, as `quantship
    quantize` would have printed them (the child ran with -q, its output kept for a failure), and its
    summary table; its report in the workdir's reports."""
    recalibrated = artifact.load_artifact(out)
    warn = printed_warnings(console)
    for message in recalibrated.manifest.get("warnings", []):
        warn(message)
    (workdir / "reports" / "int8-recalibrated.html").write_text(quantize_report.render(recalibrated))
    console.print(summary.table([("int8-recalibrated", recalibrated)]))


def _drift_after(
    loop: DriftLoop, revision: Revision, status: RolloutStatus, timeline: Timeline, console: Console
) -> None:
    """The recalibrated revision's drift on the drifted traffic: its last reading as the canary, after
    a whole step at full weight (the promoted stable is a fresh process whose window starts empty)."""
    loop.phase = status.phase.value
    readings = [
        s.revisions[revision.name].drift
        for s in timeline.samples
        if revision.name in s.revisions and s.revisions[revision.name].track == "canary"
    ]
    loop.after = next((d for d in reversed(readings) if d is not None), None)
    style = "green" if loop.ok else "red"
    console.print(
        f"[{style}]{revision.name}: drift on the same drifted traffic {_bits(loop.after)}[/] "
        f"(threshold {loop.threshold:g}; {loop.revision}: {_bits(loop.drifted)}); {loop.phase}"
    )


def _bits(value: float | None) -> str:
    return "not reported" if value is None else f"{value:.3f} bits"


def _report(
    workdir: Path,
    settings: DemoSettings,
    revisions: list[Revision],
    timeline: Timeline,
    outcomes: list[dict[str, Any]],
    drift: DriftLoop,
    console: Console,
    started: float,
) -> int:
    """The HTML report, summary.json and the summary table; 0 when every outcome is the expected one
    and the drift loop went round (drift over the threshold, recalibrated, promoted, back under)."""
    report = workdir / "reports" / "demo.html"
    report.write_text(
        demo_report.render(
            timeline, _spec(revisions[-1].name, settings), outcomes[1:], drift, settings.describe()
        )
    )
    ok = all(o["phase"] == o["expected"] for o in outcomes) and drift.ok
    decisions = [r.to_json() for r in timeline.decisions if r.decision.action.value != "Wait"]
    summary = {
        "ok": ok,
        "settings": settings.describe(),
        "rollouts": outcomes,
        "drift": drift.to_json(),
        "decisions": decisions,
        "seconds": round(time.monotonic() - started, 1),
    }
    (workdir / "summary.json").write_text(json.dumps(summary, indent=2))
    console.print(_summary(outcomes))
    console.print(_drift_summary(drift))
    console.print(f"report: {report}  (artifact reports beside it); decisions: {workdir / 'summary.json'}")
    console.print(f"took {time.monotonic() - started:.0f} s")
    if not ok:
        console.print("[bold red]an outcome differs from what the demo expects: see the reasons above[/]")
    return 0 if ok else 1


async def _rollout(
    spec: RolloutSpec,
    status: RolloutStatus,
    revision: Revision,
    workloads: LocalWorkloads,
    load: LoadGenerator,
    metrics: MetricsSource,
    timeline: Timeline,
    console: Console,
    outcomes: list[dict[str, Any]],
    refresh: Any,
) -> RolloutStatus:
    timeline.begin(revision.name, status)
    began = time.monotonic()

    def on_decision(decision: Any) -> None:
        timeline.record(decision)
        if decision.action.value != "Wait" and not can_show_live(console):
            console.print(
                f"{timeline.now():5.0f}s {revision.name}: {decision.action.value}: {decision.reason}"
            )
        refresh()

    final = await run_rollout(
        spec, status, workloads=workloads, router=load, metrics=metrics, interval=0.5, on_decision=on_decision
    )
    judged = [r for r in timeline.decisions if r.rollout == revision.name and r.decision.analysis is not None]
    last = next(
        (
            r.decision.reason
            for r in reversed(timeline.decisions)
            if r.rollout == revision.name and r.decision.action.value != "Wait"
        ),
        final.message,
    )
    outcomes.append(
        {
            "revision": revision.name,
            "artifact": revision.label,
            "phase": final.phase.value,
            "expected": revision.expected.value,
            "seconds": round(time.monotonic() - began, 1),
            "judgements": len(judged),
            "reason": last,
        }
    )
    style = "green" if final.phase is revision.expected else "red"
    console.print(f"[{style}]{revision.name}: {final.phase.value}[/] — {last}")
    return final


@contextlib.contextmanager
def _view(console: Console, timeline: Timeline, spec: Any) -> Any:
    """A live view on a terminal; elsewhere (CI logs, pipes) decisions are printed as lines instead."""
    if not can_show_live(console):
        yield lambda: None
        return
    with Live(live.render(timeline, spec()), console=console, refresh_per_second=4, transient=True) as view:
        yield lambda: view.update(live.render(timeline, spec()))


def can_show_live(console: Console) -> bool:
    """Whether a live view can show: a terminal, not a dumb one (rich's Live draws nothing there),
    at least LIVE_MIN_WIDTH wide (narrower, its cells are cut: "v3-int8-skew…", and at 80 columns
    every one of them, "0.0…"; the lines printed instead stay whole)."""
    return console.is_terminal and not console.is_dumb_terminal and console.width >= LIVE_MIN_WIDTH


LIVE_MIN_WIDTH = 120
"""Columns the live view's traffic table needs with the demo's revision names (118 at most)."""


def _summary(outcomes: list[dict[str, Any]]) -> fitted.Fitted:
    """A row per rollout where that fits (its reason wrapped within 60 columns), else, as on an
    80-column terminal, each rollout's outcome under its name (fitted.py)."""
    wide = Table(title="rollouts")
    for column in ("revision", "artifact", "result", "expected", "took", "judgements"):
        wide.add_column(column)
    wide.add_column("why", max_width=WHY_COLUMNS)
    narrow = Table(title="rollouts")
    narrow.add_column("revision")
    narrow.add_column("outcome", overflow="fold")
    for o in outcomes:
        style = "green" if o["phase"] == o["expected"] else "red"
        result, took = f"[{style}]{o['phase']}[/]", f"{o['seconds']:.0f} s"
        wide.add_row(
            o["revision"], o["artifact"], result, o["expected"], took, str(o["judgements"]), o["reason"]
        )
        judgements = f"{o['judgements']} judgement{'' if o['judgements'] == 1 else 's'}"
        narrow.add_row(
            o["revision"],
            f"{o['artifact']}\n{result} (expected {o['expected']}) in {took}, {judgements}\n{o['reason']}",
        )
    return fitted.Fitted(wide, narrow)


WHY_COLUMNS = 60
"""Columns the rollouts table gives each reason, wrapped: with every other column whole, 170 in all."""


def _drift_summary(loop: DriftLoop) -> fitted.Fitted:
    """A row where that fits (about 110 columns), else a figure a row (fitted.py)."""
    title = f"drift loop: images {loop.scale:g}x as bright, alert threshold {loop.threshold:g} bits"
    headers = [
        "stable",
        "drift before",
        "drift drifted",
        "rose in",
        "captured",
        "recalibrated",
        "drift after",
        "result",
    ]
    style = "green" if loop.ok else "red"
    row = [
        loop.revision or "-",
        _bits(loop.calm),
        _bits(loop.drifted),
        "-" if loop.rose_in is None else f"{loop.rose_in:.0f} s",
        "-" if loop.captured is None else f"{loop.captured} rows",
        loop.recalibrated or "-",
        _bits(loop.after),
        f"[{style}]{loop.phase or 'not run'}[/]",
    ]
    wide = Table(title=title)
    for column in headers:
        wide.add_column(column)
    wide.add_row(*row)
    return fitted.Fitted(wide, fitted.transposed(title, headers, [row]))


async def _until_stopped(
    workdir: Path,
    console: Console,
    built: tuple[zoo.SampleModel, list[Revision]],
    *,
    quick: bool,
    prometheus: bool,
    started: float,
) -> int:
    """run_demo, cancelled by Ctrl-C, SIGTERM or SIGHUP (stopping.py): the servers and Prometheus run
    in sessions of their own, so a closed terminal or a `kill` must not orphan them."""
    demo = asyncio.current_task()
    assert demo is not None
    stopper = Stopper(demo)
    stopper.install()
    try:
        return await run_demo(
            workdir,
            console,
            built,
            quick=quick,
            prometheus=prometheus,
            on_unwind=stopper.unwind,
            started=started,
        )
    except asyncio.CancelledError:
        if stopper.signal not in (None, signal.SIGINT):
            raise StoppedBy(stopper.signal) from None
        raise


STOPPED_SERVING = "every server, Prometheus and the load generator were stopped"
STOPPED_QUANTIZING = "while building the artifacts (step 1), before any server or Prometheus started"
"""What a stop left running, said as it happened: in step 1 there was nothing to stop but the quantizer."""


class StoppedBy(Exception):
    """The demo was stopped by a signal other than Ctrl-C: the process ends by it once cleaned up."""

    def __init__(self, sig: signal.Signals) -> None:
        super().__init__(sig.name)
        self.signal = sig


def main(workdir: Path, console: Console, *, quick: bool, prometheus: bool) -> int:
    """The demo. Step 1 (training and quantizing: no process of ours runs yet) before the event loop,
    where Ctrl-C stops it at once: on the loop, its handlers waited for the quantizing to end."""
    started = time.monotonic()
    workdir = workdir.resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    with workdir_lock.held(workdir):  # WorkdirBusy before anything of another run's is touched
        return _locked(workdir, console, quick=quick, prometheus=prometheus, started=started)


def _locked(workdir: Path, console: Console, *, quick: bool, prometheus: bool, started: float) -> int:
    built: tuple[zoo.SampleModel, list[Revision]] | None = None
    try:
        workdir = clear_previous_run(workdir)
        built = build_artifacts(workdir, console)
        return asyncio.run(
            _until_stopped(workdir, console, built, quick=quick, prometheus=prometheus, started=started)
        )
    except (KeyboardInterrupt, asyncio.CancelledError, StoppedBy) as stop:
        console.print(f"[yellow]interrupted: {STOPPED_SERVING if built else STOPPED_QUANTIZING}[/]")
        if isinstance(stop, StoppedBy):  # a kill or a closed terminal: end by it, as its sender expects
            sys.stdout.flush()
            signal.signal(stop.signal, signal.SIG_DFL)
            signal.raise_signal(stop.signal)
        return 130
