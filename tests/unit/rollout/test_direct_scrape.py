"""The direct scraper evaluates `quantship.slo`'s series as PromQL's sum(increase()) would: over
the window, across targets, through counter resets, and with the bad series absent meaning 0."""

from __future__ import annotations

import http.server
import socket
import threading
from collections.abc import Iterator

import pytest
from quiet_http import QuietHTTPServer

from quantship import slo
from quantship.local.recalibration import DRIFT_SERIES
from quantship.local.scrape import ScrapeSource, Selector
from quantship.rollout import (
    AnalysisSpec,
    Counts,
    NoData,
    RolloutSpec,
    Unreachable,
    Value,
    Verdict,
    judge,
    measure,
)

ERRORS = slo.Objective(slo.SLI.ERRORS, budget=0.001)
LATENCY = slo.Objective(slo.SLI.LATENCY, budget=0.01, latency_threshold=0.1)
LABELS = 'model="digits",revision="v2",track="canary"'


class Exposition(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        body = self.server.text.encode()  # type: ignore[attr-defined]
        self.send_response(200)
        self.send_header("Content-Type", "text/plain; version=0.0.4")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def exporter() -> Iterator[http.server.ThreadingHTTPServer]:
    """A real HTTP server whose /metrics text the test sets."""
    server = QuietHTTPServer(("127.0.0.1", 0), Exposition)
    server.text = ""  # type: ignore[attr-defined]
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


def exposition(ok: int, failed: int, fast: int, fallback: int | None = None) -> str:
    lines = [
        "# TYPE quantship_requests_total counter",
        f'quantship_requests_total{{{LABELS},code="200"}} {ok}',
        *([f'quantship_requests_total{{{LABELS},code="503"}} {failed}'] if failed else []),
        "# TYPE quantship_request_duration_seconds histogram",
        f'quantship_request_duration_seconds_bucket{{{LABELS},le="0.1"}} {fast}',
        f'quantship_request_duration_seconds_bucket{{{LABELS},le="+Inf"}} {ok}',
        f"quantship_request_duration_seconds_count{{{LABELS}}} {ok}",
        f"quantship_request_duration_seconds_sum{{{LABELS}}} 1.0",
        "# TYPE quantship_model_info gauge",
        f'quantship_model_info{{{LABELS},precision="int8"}} 1',
    ]
    if fallback is not None:
        lines += [
            "# TYPE quantship_fallback_ops gauge",
            f'quantship_fallback_ops{{{LABELS},op_type="Conv"}} {fallback}',
        ]
    return "\n".join(lines) + "\n"


def test_selectors_read_the_series_slo_writes() -> None:
    bad = Selector.parse(slo.counters(ERRORS).bad)
    assert bad.name == "quantship_requests_total"
    assert bad.matches("quantship_requests_total", {"code": "503"})
    assert not bad.matches("quantship_requests_total", {"code": "200"})
    bucket = Selector.parse(slo.counters(LATENCY).bad)
    assert bucket.matches("quantship_request_duration_seconds_bucket", {"le": "0.1"})


async def test_increase_over_the_window_survives_a_counter_reset(
    exporter: http.server.ThreadingHTTPServer,
) -> None:
    address = f"127.0.0.1:{exporter.server_address[1]}"
    source = ScrapeSource(lambda: [(address, {"model": "digits", "revision": "v2"})])
    labels = {"model": "digits", "revision": "v2"}
    for text in (
        exposition(100, 0, 95),
        exposition(150, 0, 140),
        exposition(20, 2, 18),
        exposition(60, 4, 50),
    ):
        exporter.text = text  # type: ignore[attr-defined]
        await source.scrape_once()

    errors = await source.counts(ERRORS, 600, labels)
    latency = await source.counts(LATENCY, 600, labels)

    # the server restarted between the 2nd and 3rd scrape: 150 -> 20 counts 20 new requests;
    # the 503 series appeared after the restart and counts from 0
    assert errors == Counts(bad=4, total=(100 + 50 + 20 + 40) + 4)
    assert latency == Counts(bad=(210 - (95 + 45 + 18 + 32)), total=210)
    assert await source.fallback_ops(labels) == Value(0), "scraped, and no op falls back"
    exporter.text = exposition(60, 4, 50, fallback=2)  # type: ignore[attr-defined]
    await source.scrape_once()
    assert await source.fallback_ops(labels) == Value(2)
    assert isinstance(await source.counts(ERRORS, 600, {"model": "digits", "revision": "v3"}), NoData)


async def test_latest_reads_a_gauge_as_max_of_the_last_scrape(
    exporter: http.server.ThreadingHTTPServer,
) -> None:
    """The demo's drift figures without Prometheus: `max(quantship_activation_drift{tensor="all",...})`
    over the last scrape of every target within the labels, other tensors and revisions ignored."""
    address = f"127.0.0.1:{exporter.server_address[1]}"
    source = ScrapeSource(lambda: [(address, {"model": "digits", "revision": "v2"})])
    drift = "# TYPE quantship_activation_drift gauge\n" + "".join(
        f'quantship_activation_drift{{model="digits",revision="{revision}",tensor="{tensor}"}} {value}\n'
        for revision, tensor, value in (("v2", "all", 0.02), ("v2", "fc1", 0.9), ("v3", "all", 0.5))
    )
    assert source.latest(DRIFT_SERIES, {"model": "digits", "revision": "v2"}) is None, "nothing scraped yet"
    exporter.text = drift  # type: ignore[attr-defined]
    await source.scrape_once()
    exporter.text = drift.replace("} 0.02", "} 0.07")  # type: ignore[attr-defined]
    await source.scrape_once()
    assert source.latest(DRIFT_SERIES, {"model": "digits", "revision": "v2"}) == 0.07
    assert source.latest(DRIFT_SERIES, {"model": "digits"}) == 0.5
    assert source.latest(DRIFT_SERIES, {"model": "digits", "revision": "v9"}) is None


async def test_a_server_that_stops_answering_is_named_with_what_failed() -> None:
    """A listening socket that never answers (a SIGSTOPped server): the reason says it timed out and
    after how long, never `ReadTimeout: ` with nothing after the colon (issue 15)."""
    with socket.create_server(("127.0.0.1", 0)) as silent:
        address = f"127.0.0.1:{silent.getsockname()[1]}"
        source = ScrapeSource(lambda: [(address, {"model": "digits", "revision": "v2"})], timeout=0.2)
        await source.scrape_once()
        measured = await source.counts(ERRORS, 600, {"model": "digits", "revision": "v2"})
    assert isinstance(measured, Unreachable)
    assert f"{address}: ReadTimeout, no answer within 0.2 s" in measured.reason


@pytest.mark.parametrize("written", ["NaN", "+Inf"])
async def test_a_server_exporting_nan_or_inf_counters_is_judged_misconfigured_never_passed(
    exporter: http.server.ThreadingHTTPServer, written: str
) -> None:
    """A broken exporter's counters (or its fallback-ops gauge) read NaN or +Inf: a judgement over
    them raised ValueError from round(NaN), which ended `quantship demo` with a traceback, or
    passed (a NaN burn rate is above no threshold; a NaN gauge read 0 through max())."""
    address = f"127.0.0.1:{exporter.server_address[1]}"
    labels = {"model": "digits", "revision": "v2"}
    source = ScrapeSource(lambda: [(address, labels)])
    spec = RolloutSpec("digits", "v2", (ERRORS, LATENCY), analysis=AnalysisSpec(min_samples=10))
    exporter.text = exposition(0, 0, 0, fallback=0)  # type: ignore[attr-defined]
    await source.scrape_once()
    exporter.text = exposition(1000, 0, 1000, fallback=0).replace("} 1000\n", f"}} {written}\n")  # type: ignore[attr-defined]
    await source.scrape_once()

    analysis = judge(await measure(source, spec, "v2", None, 0.0), spec)

    assert analysis.verdict is Verdict.INCONCLUSIVE and analysis.misconfigured
    assert f"misconfigured on 1m: 0 bad of {float(written):g}, not counts" in analysis.reason

    exporter.text = exposition(1000, 0, 1000, fallback=0).replace("} 0\n", "} NaN\n")  # type: ignore[attr-defined]
    await source.scrape_once()
    gate = judge(await measure(source, spec, "v2", None, 0.0), spec).fallback_ops
    assert (
        gate.verdict is Verdict.INCONCLUSIVE
        and gate.reason == "fallback ops: misconfigured: nan ops, not a count"
    )
