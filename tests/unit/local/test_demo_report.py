"""The demo report's decision log and figures, from samples and decisions made by hand."""

from __future__ import annotations

import base64
import html
import io
import re

import numpy as np
from matplotlib import image

from quantship import reporting
from quantship.local import demo, demo_report
from quantship.local.recalibration import DriftLoop
from quantship.local.timeline import DecisionRecord, RevisionSample, Sample, Timeline
from quantship.rollout import Action, RolloutSpec
from quantship.rollout.analysis import Analysis, GateResult, SLOResult, Verdict, WindowResult
from quantship.rollout.engine import Decision
from quantship.rollout.state import Phase, RolloutStatus


def rows(table: str) -> list[list[str]]:
    return [
        [html.unescape(cell) for cell in re.findall(r"<td[^>]*>(.*?)</td>", row, re.S)]
        for row in re.findall(r"<tr>(.*?)</tr>", table, re.S)
    ]


def test_the_log_gives_a_canary_weight_only_where_a_canary_serves() -> None:
    """A promoted revision serves all traffic: its row must not read "0%" beside that."""
    canary = RolloutStatus(phase=Phase.PROGRESSING, stable="v1", canary="v2", weight=20, step=0)
    promoted = RolloutStatus(phase=Phase.PROMOTED, stable="v2", message="v2 serves all traffic")
    records = [
        DecisionRecord(10.0, "v2", Decision(Action.SET_WEIGHT, canary, "canary at 20%")),
        DecisionRecord(20.0, "v2", Decision(Action.PROMOTE, promoted, "v2 serves all traffic")),
    ]
    logged = [row for row in rows(demo_report._log(_timeline(records))) if row]
    assert [row[4] for row in logged] == ["20%", "-"]


def _timeline(records: list[DecisionRecord], samples: list[Sample] | None = None) -> Timeline:
    return Timeline(
        objectives=demo.OBJECTIVES, window=10, model="digits", decisions=records, samples=samples or []
    )


def _pixels(section: str, left: float = 0.0, right: float = 1.0) -> np.ndarray:
    """The RGB pixels (0-1) of a section's figure, between two shares of its width."""
    encoded = re.search(r'src="data:image/png;base64,([^"]+)"', section)
    assert encoded, section
    rgb = image.imread(io.BytesIO(base64.b64decode(encoded.group(1))), format="png")[:, :, :3]
    return rgb[:, int(rgb.shape[1] * left) : int(rgb.shape[1] * right)]


def _greenish(rgb: np.ndarray) -> int:
    return int(((rgb[:, :, 1] - np.maximum(rgb[:, :, 0], rgb[:, :, 2])) > 0.15).sum())


def test_a_rolled_back_revision_is_drawn_in_the_failure_colour_not_green() -> None:
    """matplotlib's third colour, green, went to the third revision: the rolled-back v3-int8-skewed."""
    samples = [
        Sample(
            float(at),
            "v3",
            20,
            {name: _revision(drift=0.01 * (1 + n)) for n, name in enumerate(("v1", "v2", "v3"))},
        )
        for at in range(20)
    ]
    rolled_back = RolloutStatus(phase=Phase.ROLLED_BACK, stable="v2")
    timeline = _timeline(
        [DecisionRecord(18.0, "v3", Decision(Action.ROLL_BACK, rolled_back, "clip rate"))], samples
    )

    drift = demo_report._drift(timeline, DriftLoop(revision="v2", scale=2.0))

    assert _greenish(_pixels(drift)) == 0  # green says passed in these figures
    assert demo_report._revisions(timeline)["v3"] == (demo_report.FAIL_COLOR, "v3 (rolled back)")


def _revision(drift: float) -> RevisionSample:
    return RevisionSample("stable", 10, 0, {}, 0.002, 0.004, drift=drift)


def test_equal_burn_rates_at_one_judgement_all_show() -> None:
    """Every SLI at 0 on a calm step: the points lay on each other and only the last drawn showed."""
    spec = demo._spec("v2", demo.DemoSettings.for_run(quick=True, prometheus=False))
    judged = [
        DecisionRecord(at, "v2", Decision(Action.SET_WEIGHT, RolloutStatus(), "passed", _calm(spec, at)))
        for at in (10.0, 20.0)
    ]

    figure = demo_report._burn_rates(_timeline(judged), spec)

    plot, legend = _colours(_pixels(figure, 0, 0.75)), _colours(_pixels(figure, 0.75, 1.0))  # legend: beside
    assert {_rgb(colour) for colour in demo_report._PALETTE[: len(demo.OBJECTIVES)]} <= legend, "one an SLI"
    hidden = [
        c for c in legend if not any(max(abs(a - b) for a, b in zip(c, p, strict=True)) <= 3 for p in plot)
    ]
    assert not hidden, f"in the legend, hidden in the plot: {hidden}"


def test_the_burn_rate_threshold_is_drawn_as_the_drift_threshold_in_the_limits_colour_not_red() -> None:
    """The burn-rate figure drew its threshold in the failure colour, the drift figure its own dark:
    a limit is not a failure, and every figure draws budgets and thresholds alike."""
    spec = demo._spec("v2", demo.DemoSettings.for_run(quick=True, prometheus=False))
    calm = [
        DecisionRecord(at, "v2", Decision(Action.SET_WEIGHT, RolloutStatus(), "passed", _calm(spec, at)))
        for at in (10.0, 20.0)
    ]
    samples = [Sample(float(at), "v2", 20, {"v2": _revision(drift=0.01)}) for at in range(20)]
    burn_rates = _pixels(demo_report._burn_rates(_timeline(calm), spec), 0, 0.75)  # the plot
    drift = _pixels(demo_report._drift(_timeline([], samples), DriftLoop(revision="v2", scale=2.0)))

    for figure in (burn_rates, drift):
        assert _count(figure, demo_report.LIMIT_COLOR) > 0
        assert _count(figure, demo_report.FAIL_COLOR) == 0


def _rgb(colour: str) -> tuple[int, ...]:
    return tuple(int(colour[i : i + 2], 16) for i in (1, 3, 5))


def _count(rgb: np.ndarray, colour: str) -> int:
    """Pixels of `colour`, within a rounding."""
    pixels = (rgb.reshape(-1, 3) * 255).round().astype(int)
    return int((np.abs(pixels - np.array(_rgb(colour))).max(axis=1) <= 3).sum())


def _colours(rgb: np.ndarray, least: int = 12) -> set[tuple[int, ...]]:
    """The saturated colours filling `least` pixels or more: markers and lines, not their blurred edges."""
    pixels = (rgb.reshape(-1, 3) * 255).round().astype(int)
    saturated = pixels[np.ptp(pixels, axis=1) > 60]
    values, counts = np.unique(saturated, axis=0, return_counts=True)
    return {
        tuple(int(v) for v in value) for value, count in zip(values, counts, strict=True) if count >= least
    }


def _calm(spec: RolloutSpec, at: float) -> Analysis:
    """A judgement that found nothing bad: every SLI burning 0 on both windows."""
    windows = tuple(WindowResult(window, 0.0, 600.0, 0.0) for window in spec.analysis.windows)
    slos = tuple(
        SLOResult(o.sli, o.budget, 1.0, 0.0, windows, Verdict.PASS, "within budget") for o in demo.OBJECTIVES
    )
    return Analysis(at, Verdict.PASS, "passed", slos, GateResult(None, 0, Verdict.PASS, ""))


def test_decision_names_sit_above_the_curves_apart_from_each_other() -> None:
    """Written down their lines inside the axes, the names ran across the curves they named."""
    promoted, rolled_back = RolloutStatus(phase=Phase.PROMOTED), RolloutStatus(phase=Phase.ROLLED_BACK)
    decisions = [  # the full demo's, 14 s apart: centred side by side on one row, two names overlap
        DecisionRecord(38.0, "v2-int8", Decision(Action.PROMOTE, promoted, "passed")),
        DecisionRecord(52.0, "v3-int8-skewed", Decision(Action.ROLL_BACK, rolled_back, "clip rate")),
        DecisionRecord(104.0, "v4-int8-recal", Decision(Action.PROMOTE, promoted, "passed")),
    ]
    fig, ax = reporting.new_figure(10, 3)
    ax.plot(range(110), [0.12] * 110)  # a curve along the top, as the drifted stable's
    demo_report._decision_lines(ax, decisions)
    renderer = fig.canvas.get_renderer()
    fig.draw(renderer)
    frame = ax.get_window_extent(renderer)
    names = [text.get_window_extent(renderer) for text in ax.texts]
    reporting.pyplot().close(fig)

    assert len(names) == 3 and all(name.y0 >= frame.y1 for name in names)
    assert not any(a.overlaps(b) for n, a in enumerate(names) for b in names[n + 1 :])


def test_a_judgement_short_of_data_is_not_drawn_as_a_failed_one() -> None:
    """The recalibrated canary's first judgement waited for shadow samples: a red point, read as failed."""
    samples = [Sample(float(at), "v2", 20, {"v2": _revision(drift=0.01)}) for at in range(20)]
    waiting = RolloutStatus(phase=Phase.PROGRESSING, stable="v1", canary="v2", weight=20)
    short = Analysis(
        10.0, Verdict.INCONCLUSIVE, "58 samples of the 60 needed", (), GateResult(None, 0, Verdict.PASS, "")
    )
    timeline = _timeline(
        [DecisionRecord(10.0, "v2", Decision(Action.JUDGED, waiting, "waiting", short))], samples
    )

    rgb = _pixels(demo_report._weight(timeline), 0, 0.7)  # the plot, not its legend's sentence

    reddish = (rgb[:, :, 0] - np.maximum(rgb[:, :, 1], rgb[:, :, 2])) > 0.3
    assert not reddish.any(), f"{int(reddish.sum())} red pixels"


def test_the_legends_of_the_figures_over_time_sit_beside_their_axes_not_on_them() -> None:
    """In the latency figure's upper left corner, the legend hid the p95 peaks of the first 30 s."""
    revisions = {name: _revision(drift=0.01) for name in ("v1", "v2")}
    samples = [Sample(float(at), "v2", 20, revisions) for at in range(30)]
    timeline = _timeline([], samples)
    figures = {
        "latency": demo_report._latency_figure(timeline),
        "drift": demo_report._drift_figure(timeline, DriftLoop(revision="v1", scale=2.0))[0],
        **{o.sli.value: demo_report._sli_figure(timeline, o)[0] for o in demo.OBJECTIVES},
    }
    for name, fig in figures.items():
        renderer = fig.canvas.get_renderer()
        fig.draw(renderer)
        (ax,) = fig.axes
        legend, frame = ax.get_legend().get_window_extent(renderer), ax.get_window_extent(renderer)
        reporting.pyplot().close(fig)
        assert legend.x0 >= frame.x1, f"{name}: the legend is drawn over the plot"


def test_each_outcome_says_whether_it_went_as_the_demo_planned() -> None:
    """The skewed canary's "RolledBack" stood in the passing colour with nothing to say why."""
    outcomes = [
        {"revision": "v2", "artifact": "good", "phase": "Promoted", "expected": "Promoted"},
        {"revision": "v3", "artifact": "skewed", "phase": "RolledBack", "expected": "RolledBack"},
        {"revision": "v4", "artifact": "recal", "phase": "RolledBack", "expected": "Promoted"},
    ]
    table = demo_report._outcome([{**o, "seconds": 1.0, "judgements": 1, "reason": "-"} for o in outcomes])
    results = [re.sub("<[^>]+>", "", row[2]) for row in rows(table) if row]
    assert results == ["Promoted (as planned)", "RolledBack (as planned)", "RolledBack (planned: Promoted)"]


def _latencies(p95_ms: list[float]) -> Timeline:
    samples = [
        Sample(float(at), "v2", 20, {"v2": RevisionSample("stable", 60, 0, {}, ms / 3000, ms / 1000)})
        for at, ms in enumerate(p95_ms)
    ]
    return _timeline([], samples)


def test_one_latency_spike_does_not_flatten_the_others() -> None:
    """A 2 s spike under load drew every other latency (50-150 ms) into the axis' bottom tenth."""
    calm = [50.0 + (at * 37) % 100 for at in range(100)]
    fig = demo_report._latency_figure(_latencies([*calm[:80], 2000.0, *calm[80:]]))
    (ax,) = fig.axes
    bottom, top = ax.get_ylim()
    marks = [text.get_text() for text in ax.texts]
    label = ax.get_ylabel()
    reporting.pyplot().close(fig)

    assert max(calm) <= top < 3 * max(calm), (bottom, top)
    assert "2000 ms" in marks and "cut" in label  # the spike still shows, and the axis says it is cut


def test_latencies_without_a_spike_keep_the_whole_axis() -> None:
    calm = [50.0 + (at * 37) % 100 for at in range(100)]
    fig = demo_report._latency_figure(_latencies(calm))
    (ax,) = fig.axes
    top, marks, label = ax.get_ylim()[1], ax.texts, ax.get_ylabel()
    reporting.pyplot().close(fig)

    assert top >= max(calm) and not marks and label == "latency (ms)"


def test_a_number_in_the_log_and_the_drift_loop_stays_on_one_line_with_its_unit() -> None:
    """The log's narrow "at" column wrapped 14.6 s as "14.6" over "s"."""
    promoted = RolloutStatus(phase=Phase.PROMOTED, stable="v2", message="v2 serves all traffic")
    records = [DecisionRecord(14.6, "v2", Decision(Action.PROMOTE, promoted, "v2 serves all traffic"))]
    (logged,) = [row for row in rows(demo_report._log(_timeline(records))) if row]
    assert logged[0] == "14.6\N{NO-BREAK SPACE}s"

    loop = DriftLoop(revision="v2", scale=2.0, calm=0.005, drifted=0.125, rose_in=2.0, captured=1113)
    values = dict(_facts(demo_report._drift_loop(loop)))
    assert values["drift alert threshold"] == "0.05\N{NO-BREAK SPACE}bits"
    assert values["drift once drifted"] == "0.125\N{NO-BREAK SPACE}bits"
    assert values["rose over the threshold in"] == "2\N{NO-BREAK SPACE}s"
    assert values["capture recalibrated from"] == "1113\N{NO-BREAK SPACE}rows"


def test_the_drift_loop_table_names_each_row_and_has_no_empty_header_row() -> None:
    """Its header row was two empty cells, drawn as a blank shaded bar above the table."""
    table = demo_report._drift_loop(DriftLoop(revision="v2", scale=2.0))
    every_row = re.findall(r"<tr>(.*?)</tr>", table, re.S)
    assert len(_facts(table)) == len(every_row) == 10  # each row a name and its value, no other row
    assert ("stable whose traffic drifted", "v2") in _facts(table)


def _facts(table: str) -> list[tuple[str, str]]:
    """The rows of a table of named values: a header cell, then a value cell."""
    return [
        (html.unescape(name), html.unescape(re.sub("<[^>]+>", "", value)))
        for name, value in re.findall(r"<tr><th>(.+?)</th><td[^>]*>(.*?)</td></tr>", table, re.S)
    ]
