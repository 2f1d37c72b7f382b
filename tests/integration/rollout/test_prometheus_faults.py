"""PrometheusSource when Prometheus answers badly: every fault has its own outcome, none is a zero.

A real HTTP server on loopback (aiohttp) plays a Prometheus that answers one way per test; a real
Prometheus refuses a query whose label name is not PromQL. The outcomes:

  5xx, timeout, connection refused                  Unreachable    an outage: waiting may help
  refused query (400), not JSON, more than 1 series Misconfigured  a configuration error: it will not
  empty vector, NaN                                 NoData         nothing counted yet

and a judgement over such answers says which it was (`Analysis.unreachable` / `.misconfigured`),
which is what lets the engine hold through an outage but fail a canary it can never judge.
"""

from __future__ import annotations

import asyncio
import gzip
import json
import math
import os
import signal
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest
import pytest_asyncio
from aiohttp import web
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from quantship import slo
from quantship.local.prometheus import PrometheusProcess, free_port
from quantship.rollout import (
    AnalysisSpec,
    Counts,
    Misconfigured,
    NoData,
    PrometheusSource,
    PrometheusSources,
    RolloutSpec,
    Unreachable,
    Value,
    Verdict,
    judge,
    measure,
)

ERRORS = slo.Objective(slo.SLI.ERRORS, budget=0.001)
LABELS = {"model": "digits", "revision": "v2"}
TIMEOUT = 0.5
"""The source's timeout: the slow Prometheus answers long after it."""

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def vector(*values: str) -> dict[str, object]:
    """A successful instant query's body with one series per value."""
    result = [{"metric": {"pod": f"p{n}"}, "value": [1700000000.0, value]} for n, value in enumerate(values)]
    return {"status": "success", "data": {"resultType": "vector", "result": result}}


@dataclass
class Stub:
    """A loopback HTTP server answering /api/v1/query with whatever `answer` says."""

    answer: Handler
    url: str = ""
    queries: list[str] = field(default_factory=list)
    times: list[str] = field(default_factory=list)
    """The `time` each query asked for."""


@pytest_asyncio.fixture
async def stub() -> AsyncIterator[Stub]:
    async def ok(request: web.Request) -> web.StreamResponse:
        return web.json_response(vector("1"))

    server = Stub(ok)

    async def query(request: web.Request) -> web.StreamResponse:
        server.queries.append(request.query["query"])
        server.times.append(request.query.get("time", ""))
        return await server.answer(request)

    app = web.Application()
    app.router.add_get("/api/v1/query", query)
    runner = web.AppRunner(app, shutdown_timeout=0.1)
    await runner.setup()
    port = free_port()
    site = web.TCPSite(runner, "127.0.0.1", port)
    await site.start()
    server.url = f"http://127.0.0.1:{port}"
    yield server
    await runner.cleanup()


@pytest_asyncio.fixture
async def source(stub: Stub) -> AsyncIterator[PrometheusSource]:
    prometheus = PrometheusSource(stub.url, timeout=TIMEOUT)
    yield prometheus
    await prometheus.aclose()


def answering(status: int, body: object | None = None, text: str | None = None) -> Handler:
    async def answer(request: web.Request) -> web.StreamResponse:
        if text is not None:
            return web.Response(status=status, text=text, content_type="text/html")
        return web.json_response(body, status=status)

    return answer


async def both(source: PrometheusSource) -> list[object]:
    """What `counts` and `fallback_ops` make of the same answer."""
    return [await source.counts(ERRORS, 300, LABELS), await source.fallback_ops(LABELS)]


async def test_an_answer_counts_bad_and_total_from_their_own_queries(
    stub: Stub, source: PrometheusSource
) -> None:
    async def answer(request: web.Request) -> web.StreamResponse:
        query = request.query["query"]
        value = "2" if "fallback_ops" in query else "3" if 'code=~"5.."' in query else "400"
        return web.json_response(vector(value))

    stub.answer = answer

    assert await source.counts(ERRORS, 300, LABELS) == Counts(bad=3.0, total=400.0)
    assert await source.fallback_ops(LABELS) == Value(2.0)
    total_query, bad_query = stub.queries[:2]
    assert 'code=~"5.."' in bad_query and 'code=~"5.."' not in total_query
    assert stub.times[0] == stub.times[1], "bad and total counted over the same window"
    assert "[5m]" in total_query and 'revision="v2"' in total_query


async def test_the_accuracy_slo_reads_its_bad_events_whole_too_where_the_servers_count_them(
    stub: Stub, source: PrometheusSource
) -> None:
    """A token model's shadowed rows disagree by their share of flipped tokens; the rows with a flip
    are what the analysis' chance guard counts. A server older than that series has none: no count,
    and the guard reads the shares as before."""
    accuracy = slo.Objective(slo.SLI.ACCURACY_DELTA, budget=0.005)
    whole = {"value": "60"}

    async def answer(request: web.Request) -> web.StreamResponse:
        query = request.query["query"]
        if slo.Metric.SHADOW_DISAGREEING_ROWS_TOTAL in query:
            return web.json_response(vector(whole["value"]) if whole["value"] else vector())
        return web.json_response(vector("1.5" if "disagreements" in query else "100"))

    stub.answer = answer

    assert await source.counts(accuracy, 300, LABELS) == Counts(bad=1.5, total=100.0, whole_bad=60.0)
    whole["value"] = ""
    assert await source.counts(accuracy, 300, LABELS) == Counts(bad=1.5, total=100.0)


async def test_a_5xx_is_unreachable_with_prometheus_own_words(stub: Stub, source: PrometheusSource) -> None:
    stub.answer = answering(503, {"status": "error", "errorType": "unavailable", "error": "TSDB not ready"})

    for answer in await both(source):
        assert isinstance(answer, Unreachable), answer
        assert "answered 503" in answer.reason and "unavailable: TSDB not ready" in answer.reason


async def test_a_5xx_without_prometheus_own_words_says_its_status(
    stub: Stub, source: PrometheusSource
) -> None:
    stub.answer = answering(500, {"status": "error"})

    for answer in await both(source):
        assert isinstance(answer, Unreachable) and answer.reason.endswith(
            "answered 500: Internal Server Error"
        )


async def test_a_5xx_with_json_that_is_no_object_is_unreachable(stub: Stub, source: PrometheusSource) -> None:
    stub.answer = answering(503, ["overloaded"])

    for answer in await both(source):
        assert isinstance(answer, Unreachable) and answer.reason.endswith("answered 503: Service Unavailable")


async def test_a_5xx_from_a_proxy_in_front_is_unreachable(stub: Stub, source: PrometheusSource) -> None:
    stub.answer = answering(502, text="<html>Bad Gateway</html>")

    for answer in await both(source):
        assert isinstance(answer, Unreachable) and "answered 502: <html>Bad Gateway</html>" in answer.reason


async def test_a_prometheus_slower_than_the_timeout_is_unreachable(
    stub: Stub, source: PrometheusSource
) -> None:
    async def slow(request: web.Request) -> web.StreamResponse:
        await asyncio.sleep(30)
        return web.json_response(vector("1"))

    stub.answer = slow

    for answer in await both(source):
        assert isinstance(answer, Unreachable), answer
        assert f"no answer within {TIMEOUT:g} s, to " in answer.reason


async def test_nothing_listening_is_unreachable() -> None:
    source = PrometheusSource(f"http://127.0.0.1:{free_port()}", timeout=TIMEOUT)
    try:
        for answer in await both(source):
            assert isinstance(answer, Unreachable) and "ConnectError" in answer.reason, answer
    finally:
        await source.aclose()


async def test_a_refused_query_is_a_misconfiguration_not_an_outage(
    stub: Stub, source: PrometheusSource
) -> None:
    refusal = {"status": "error", "errorType": "bad_data", "error": 'parse error: unexpected "-"'}
    stub.answer = answering(400, refusal)

    for answer in await both(source):
        assert isinstance(answer, Misconfigured), answer
        assert "refused the query (400: bad_data: parse error" in answer.reason


async def test_a_body_that_is_not_json_is_a_misconfiguration(stub: Stub, source: PrometheusSource) -> None:
    stub.answer = answering(200, text="<html>Grafana login</html>")

    for answer in await both(source):
        assert isinstance(answer, Misconfigured) and "not JSON: is it Prometheus?" in answer.reason, answer


async def test_json_that_is_not_prometheus_api_is_a_misconfiguration(
    stub: Stub, source: PrometheusSource
) -> None:
    stub.answer = answering(200, {"status": "success", "data": {"rows": []}})
    for answer in await both(source):
        assert isinstance(answer, Misconfigured) and "without a result vector" in answer.reason, answer

    stub.answer = answering(200, ["not", "an", "object"])
    for answer in await both(source):
        assert isinstance(answer, Misconfigured) and "not Prometheus's API" in answer.reason, answer

    stub.answer = answering(200, {"status": "success", "data": {"result": [{"metric": {}, "value": []}]}})
    for answer in await both(source):
        assert isinstance(answer, Misconfigured) and "malformed sample" in answer.reason, answer


async def test_each_judgement_asks_for_its_own_time(stub: Stub, source: PrometheusSource) -> None:
    """Asked without a time, every judgement's query was the same URL, which a cache in front of
    Prometheus could answer with an earlier judgement's counts: the first step's for every step
    after. Each query asks for the time of its judgement, a URL no earlier one asked."""
    stub.answer = answering(200, vector("1"))
    await both(source)
    first = list(stub.times)
    await asyncio.sleep(0.01)
    await both(source)
    later = stub.times[len(first) :]
    assert first and later and set(first).isdisjoint(later), (first, later)
    assert all(abs(float(asked) - time.time()) < 60 for asked in stub.times), stub.times


async def test_more_than_one_series_is_a_label_selector_problem(stub: Stub, source: PrometheusSource) -> None:
    stub.answer = answering(200, vector("5", "7"))

    for answer in await both(source):
        assert isinstance(answer, Misconfigured), answer
        assert "expected one series, got 2" in answer.reason and "'pod': 'p1'" in answer.reason


async def test_series_that_are_not_objects_are_a_misconfiguration_too(
    stub: Stub, source: PrometheusSource
) -> None:
    stub.answer = answering(200, {"status": "success", "data": {"result": [None, 7]}})

    for answer in await both(source):
        assert isinstance(answer, Misconfigured) and "expected one series, got 2" in answer.reason, answer


@pytest.mark.parametrize("value", ["+Inf", "-Inf"])
async def test_an_infinite_count_is_a_misconfiguration_never_a_pass(
    stub: Stub, source: PrometheusSource, value: str
) -> None:
    """A total of +Inf made any canary's error ratio 0."""
    stub.answer = answering(200, vector(value))

    for answer in await both(source):
        assert isinstance(answer, Misconfigured) and "not a count" in answer.reason, answer


def raw(status: int, text: str) -> Handler:
    async def answer(request: web.Request) -> web.StreamResponse:
        return web.Response(status=status, text=text, content_type="application/json")

    return answer


def gzipped(body: object) -> Handler:
    """Compressed though the client asked for identity: a proxy's doing (a bomb, perhaps)."""

    async def answer(request: web.Request) -> web.StreamResponse:
        compressed = gzip.compress(json.dumps(body).encode())
        headers = {"Content-Encoding": "gzip", "Content-Type": "application/json"}
        return web.Response(status=200, body=compressed, headers=headers)

    return answer


PARTIAL = {**vector("1"), "warnings": ["partial response: store 10.0.0.3 unreachable"]}
MATRIX = {
    "status": "success",
    "data": {"resultType": "matrix", "result": [{"metric": {}, "value": [1, "1"]}]},
}
ANSWERS_THAT_ARE_NOT_COUNTS = [
    # (what, handler, outcome, words): none may become a measurement, none an exception
    ("429 from a query frontend", answering(429, {"status": "error", "error": "busy"}), Unreachable, "429"),
    ("408", answering(408, {"status": "error", "error": "slow"}), Unreachable, "408"),
    ("a partial answer", answering(200, PARTIAL), Unreachable, "answered in part"),
    ("a matrix", answering(200, MATRIX), Misconfigured, "'matrix', not a vector"),
    ("success in a redirect", answering(302, vector("1")), Misconfigured, "refused the query (302"),
    ("a boolean sample", answering(200, {**vector("1"), "data": {"resultType": "vector",
     "result": [{"metric": {}, "value": [1, True]}]}}), Misconfigured, "malformed sample"),
    ("a number past a float", raw(200, json.dumps(vector("1")).replace('"1"]', "1" + "0" * 400 + "]")),
     Misconfigured, "malformed sample"),
    ("JSON nested past recursion", raw(200, "[" * 100_000 + "]" * 100_000), Misconfigured, "not JSON"),
    ("a 503 nested past recursion", raw(503, "[" * 100_000 + "]" * 100_000), Unreachable, "503"),
    ("an answer compressed unasked", gzipped(vector("1")), Misconfigured, "gzip-encoded"),
    ("an answer over MAX_ANSWER_BYTES", raw(200, json.dumps(vector("1")) + " " * (5 * 2**20)),
     Misconfigured, "over 4194304 bytes"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("handler", "outcome", "words"),
    [case[1:] for case in ANSWERS_THAT_ARE_NOT_COUNTS],
    ids=[case[0] for case in ANSWERS_THAT_ARE_NOT_COUNTS],
)
async def test_answers_that_are_not_counts_are_outcomes_never_measurements(
    stub: Stub, source: PrometheusSource, handler: Handler, outcome: type, words: str
) -> None:
    stub.answer = handler
    for answer in await both(source):
        assert isinstance(answer, outcome) and words in answer.reason, answer


async def test_a_count_under_zero_is_zero_within_extrapolation_and_a_misconfiguration_beyond(
    stub: Stub, source: PrometheusSource
) -> None:
    """The latency SLI's bad events are total - good: a little under 0 from increase()'s extrapolation."""

    def counting(bad: str) -> Handler:
        async def answer(request: web.Request) -> web.StreamResponse:
            total = request.query["query"].startswith("sum(increase(quantship_requests_total")
            return web.json_response(vector("1000" if total else bad))

        return answer

    stub.answer = counting("-0.4")
    assert await source.counts(ERRORS, 300, LABELS) == Counts(bad=0.0, total=1000.0)
    stub.answer = counting("-1000")
    answer = await source.counts(ERRORS, 300, LABELS)
    assert isinstance(answer, Misconfigured) and "-1000 bad events of 1000" in answer.reason, answer
    stub.answer = answering(200, vector("-5"))
    ops = await source.fallback_ops(LABELS)
    assert isinstance(ops, Misconfigured) and "-5 ops" in ops.reason, ops


async def test_an_answer_dribbled_a_byte_at_a_time_ends_within_the_query_deadline(
    stub: Stub, source: PrometheusSource
) -> None:
    """httpx's timeout bounds each read: a byte every 0.2 s never trips a 0.5 s one."""

    async def dribble(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "application/json"})
        await response.prepare(request)
        for byte in json.dumps(vector("1")).encode():
            await response.write(bytes([byte]))
            await asyncio.sleep(0.2)
        return response

    stub.answer = dribble
    started = asyncio.get_running_loop().time()
    answer = await source.fallback_ops(LABELS)
    assert isinstance(answer, Unreachable) and "no whole answer within 1 s" in answer.reason, answer
    assert asyncio.get_running_loop().time() - started < 5 * TIMEOUT


async def test_queries_queued_behind_a_hung_one_are_answered_by_the_outage_it_left(stub: Stub) -> None:
    """The operator's queries share IN_FLIGHT turns: behind hung ones, each waited out its timeout
    (26 s for 30 canaries at a 1 s timeout). The first to time out answers those behind it."""

    async def hung(request: web.Request) -> web.StreamResponse:
        await asyncio.sleep(30)
        return web.json_response(vector("1"))

    stub.answer = hung
    source = PrometheusSource(stub.url, timeout=TIMEOUT, in_flight=asyncio.Semaphore(1), outage_memory=5.0)
    started = asyncio.get_running_loop().time()
    try:
        answers = await asyncio.gather(*(source.fallback_ops(LABELS) for _ in range(6)))
    finally:
        await source.aclose()
    assert all(isinstance(answer, Unreachable) for answer in answers), answers
    assert sum("not retried yet" in answer.reason for answer in answers) == 5, answers
    assert asyncio.get_running_loop().time() - started < 3 * TIMEOUT


async def test_a_busy_prometheus_answering_every_query_is_never_unreachable(stub: Stub) -> None:
    """Waiting for a turn is not Prometheus's delay: only the query's own time counts."""

    async def busy(request: web.Request) -> web.StreamResponse:
        await asyncio.sleep(0.6 * TIMEOUT)
        return web.json_response(vector("1"))

    stub.answer = busy
    source = PrometheusSource(stub.url, timeout=TIMEOUT, in_flight=asyncio.Semaphore(2), outage_memory=5.0)
    try:
        answers = await asyncio.gather(*(source.fallback_ops(LABELS) for _ in range(12)))
    finally:
        await source.aclose()
    assert answers == [Value(1.0)] * 12, answers


@pytest.mark.parametrize("body", [vector(), vector("NaN")], ids=["empty vector", "NaN"])
async def test_an_empty_vector_or_nan_is_no_data_never_zero(
    stub: Stub, source: PrometheusSource, body: dict[str, object]
) -> None:
    stub.answer = answering(200, body)

    for answer in await both(source):
        assert isinstance(answer, NoData), answer
        assert ("NaN" in answer.reason) is (body != vector()), answer.reason


async def test_no_total_is_no_data_whatever_the_bad_count_says(stub: Stub, source: PrometheusSource) -> None:
    async def answer(request: web.Request) -> web.StreamResponse:
        bad = 'code=~"5.."' in request.query["query"]
        return web.json_response(vector("3") if bad else vector())

    stub.answer = answer

    answer = await source.counts(ERRORS, 300, LABELS)
    assert isinstance(answer, NoData) and 'code=~"5.."' not in answer.reason, answer
    assert len(stub.queries) == 1, "the bad count is not even asked for"


async def test_nan_on_the_bad_count_alone_is_no_data(stub: Stub, source: PrometheusSource) -> None:
    async def answer(request: web.Request) -> web.StreamResponse:
        total = request.query["query"].startswith("sum(")
        return web.json_response(vector("400" if total else "NaN"))

    stub.answer = answer

    answer = await source.counts(ERRORS, 300, LABELS)
    assert isinstance(answer, NoData) and "NaN" in answer.reason and 'code=~"5.."' in answer.reason


async def test_a_judgement_says_misconfigured_or_unreachable_by_type(
    stub: Stub, source: PrometheusSource
) -> None:
    spec = RolloutSpec(model="digits", revision="v2", objectives=(ERRORS,), analysis=AnalysisSpec())

    stub.answer = answering(200, vector("1", "2"))
    misconfigured = judge(await measure(source, spec, "v2", "v1", now=0.0), spec)
    stub.answer = answering(503, {"status": "error", "errorType": "unavailable", "error": "down"})
    unreachable = judge(await measure(source, spec, "v2", "v1", now=0.0), spec)

    assert misconfigured.verdict is unreachable.verdict is Verdict.INCONCLUSIVE
    assert misconfigured.misconfigured and not misconfigured.unreachable
    assert unreachable.unreachable and not unreachable.misconfigured
    assert "misconfigured on 1m" in misconfigured.reason and "unreachable on 1m" in unreachable.reason
    assert misconfigured.to_dict()["slos"][0]["windows"][0]["fault"] == "Misconfigured"


@pytest.mark.prometheus
async def test_a_real_prometheus_refusing_a_bad_label_name_is_a_misconfiguration(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    prometheus = PrometheusProcess(tmp_path_factory.mktemp("prometheus"), scrape_interval="1s")
    prometheus.start()
    source = PrometheusSource(prometheus.url, timeout=10.0)
    try:
        await prometheus.wait_ready()
        # a label name with a dash (spec.analysis.labels {"k8s-namespace": ...}) is not PromQL
        refused = await source.counts(ERRORS, 300, {**LABELS, "k8s-namespace": "prod"})
        empty = await source.counts(ERRORS, 300, LABELS)
    finally:
        await source.aclose()
        prometheus.stop()

    assert isinstance(refused, Misconfigured), refused
    assert "refused the query (400: bad_data:" in refused.reason
    assert isinstance(empty, NoData) and "no series for" in empty.reason, empty


async def _until_stopped(pid: int) -> None:
    """Until every thread of `pid` is stopped. kill() only queues SIGSTOP: a thread running on the
    other CPU stops when it next enters the kernel, and on a busy VM that was late enough for
    Prometheus to answer the query sent right after (a flaky NoData, 2026-12-04)."""

    def state(task: Path) -> str:
        try:
            return (task / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except FileNotFoundError:  # a thread that exited meanwhile holds nothing up
            return "T"

    for _ in range(500):
        if all(state(task) == "T" for task in Path(f"/proc/{pid}/task").iterdir()):
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"Prometheus (pid {pid}) did not stop within 5 s of SIGSTOP")


@pytest.mark.prometheus
async def test_a_real_prometheus_that_stops_answering_names_the_fault_the_url_the_query_and_the_timeout(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    prometheus = PrometheusProcess(tmp_path_factory.mktemp("prometheus"), scrape_interval="1s")
    prometheus.start()
    source = PrometheusSource(prometheus.url, timeout=TIMEOUT)
    # quantship.local.prometheus has no pid of its own to give; its Popen has one
    pid = prometheus._process.pid  # type: ignore[union-attr]
    try:
        await prometheus.wait_ready()
        answering = await source.counts(ERRORS, 300, LABELS)
        os.kill(pid, signal.SIGSTOP)  # alive, connections accepted by the kernel, never answered
        try:
            await _until_stopped(pid)
            stopped = await source.counts(ERRORS, 300, LABELS)
        finally:
            os.kill(pid, signal.SIGCONT)
    finally:
        await source.aclose()
        prometheus.stop()

    assert isinstance(answering, NoData), answering
    assert isinstance(stopped, Unreachable), stopped
    _, total = slo.bad_and_total(ERRORS, "5m", LABELS)
    assert stopped.reason == (
        f"Prometheus at {prometheus.url}: ReadTimeout, no answer within {TIMEOUT:g} s, to {total}"
    )


async def test_closing_the_source_closes_its_client_and_a_later_query_opens_another(stub: Stub) -> None:
    client = httpx.AsyncClient(timeout=TIMEOUT)
    source = PrometheusSource(stub.url, client=client)
    await source.aclose()
    await source.aclose()  # closing twice is fine

    answer = await source.fallback_ops(LABELS)
    await source.aclose()

    assert client.is_closed and answer == Value(1.0)


async def test_a_client_given_to_the_source_is_the_one_it_queries_with(stub: Stub) -> None:
    sent: list[httpx.Request] = []

    async def record(request: httpx.Request) -> None:
        sent.append(request)

    client = httpx.AsyncClient(timeout=TIMEOUT, event_hooks={"request": [record]})
    source = PrometheusSource(stub.url, client=client)
    try:
        assert await source.fallback_ops(LABELS) == Value(1.0)
        assert await source.fallback_ops(LABELS) == Value(1.0)
    finally:
        await source.aclose()

    assert len(sent) == 2 and client.is_closed


# -- the operator's sources: one client, a bound on queries in flight, outages remembered a moment --


async def test_the_operators_sources_share_one_client_per_process_closed_once(stub: Stub) -> None:
    sources = PrometheusSources(timeout=TIMEOUT)
    first, again, other = sources(stub.url), sources(stub.url), sources(f"{stub.url}/")

    assert first is again and await first.fallback_ops(LABELS) == Value(1.0)
    assert await other.fallback_ops(LABELS) == Value(1.0)
    await sources.aclose()
    assert sources.client.is_closed


async def test_after_a_refused_connection_the_queries_of_the_next_moment_report_it_without_connecting() -> (
    None
):
    sent: list[httpx.Request] = []

    async def record(request: httpx.Request) -> None:
        sent.append(request)

    now = [0.0]
    client = httpx.AsyncClient(timeout=TIMEOUT, event_hooks={"request": [record]})
    spec = RolloutSpec(model="digits", revision="v2", objectives=(ERRORS,), analysis=AnalysisSpec())
    source = PrometheusSource(
        f"http://127.0.0.1:{free_port()}",
        client=client,
        in_flight=asyncio.Semaphore(1),  # one at a time, as when many judgements queue
        outage_memory=1.0,
        clock=lambda: now[0],
    )
    try:
        analysis = judge(await measure(source, spec, "v2", "v1", now=0.0), spec)
        connected_once = len(sent)
        now[0] = 1.0  # a moment later: Prometheus may be back, ask again
        later = await source.fallback_ops(LABELS)
    finally:
        await client.aclose()

    assert analysis.verdict is Verdict.INCONCLUSIVE and analysis.unreachable
    assert connected_once == 1, f"{connected_once} connections for one judgement of a Prometheus that is down"
    assert isinstance(later, Unreachable) and len(sent) == 2


# -- whatever Prometheus answers: an outcome, never an exception ------------------------------------------

SCALARS = st.one_of(
    st.none(), st.booleans(), st.integers(-10, 10**400), st.floats(), st.text(max_size=5),
    st.sampled_from(["1", "NaN", "+Inf", "-Inf", "-3", "1e400", "0", ""]),
)  # fmt: skip
JSON = st.recursive(
    SCALARS,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3),
    max_leaves=8,
)
SAMPLES = st.fixed_dictionaries(
    {"metric": st.dictionaries(st.text(max_size=4), st.text(max_size=4), max_size=2),
     "value": st.tuples(st.floats(0, 2e9), SCALARS).map(list) | JSON}
) | JSON  # fmt: skip
VECTOR = st.fixed_dictionaries({"resultType": st.just("vector"), "result": st.lists(SAMPLES, max_size=3)})
BODIES = (
    st.fixed_dictionaries({"status": st.sampled_from(["success", "error", None]), "data": VECTOR | JSON})
    | JSON
)


@settings(
    max_examples=300,
    suppress_health_check=[HealthCheck.function_scoped_fixture],  # the stub answers each example anew
)  # fmt: skip
@given(body=BODIES, status=st.sampled_from([200, 200, 200, 400, 422, 500, 503, 204]))
async def test_any_answer_is_an_outcome_never_an_exception(
    stub: Stub, source: PrometheusSource, body: object, status: int
) -> None:
    async def answer(request: web.Request) -> web.StreamResponse:
        return web.Response(status=status, text=json.dumps(body), content_type="application/json")

    stub.answer = answer
    for outcome in await both(source):
        assert isinstance(outcome, Counts | Value | NoData | Unreachable | Misconfigured), outcome
        if isinstance(outcome, Counts | Value):
            counted = [outcome.bad, outcome.total] if isinstance(outcome, Counts) else [outcome.value]
            assert all(math.isfinite(count) for count in counted), outcome
