"""Operator at scale (issue 15): N QuantizedModels' canaries at once against kmock, the operator in
its own process so its CPU and memory are its own.

For each N: the models are created and served (v1), then all get a new artifact (v2): N canaries
that wait for readiness (nothing changes: the requests counted then are the polling cost), then
all become ready at once and are judged every step (5 s) with Prometheus unreachable, as in the
issue: every judgement is inconclusive and the third rolls the canary back (~15 s after ready).
Judgement lag is when each judgement ran after it was due (the previous step start + 5 s), read
from the status history the operator writes. Goals: lag <= 1 s at 200 canaries, and at most 1 API
request per model per minute between changes.

kmock is Python in this process, so it shares the machine with the operator: a real API server
answers faster. Set QUANTSHIP_BENCH_SIZES (e.g. "1,10") to run fewer sizes.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from benchmarks import children

SIZES = (1, 10, 50, 200)
NAMESPACE = "default"
STEP_INTERVAL = 5.0
INCONCLUSIVE_LIMIT = 3
PENDING_WINDOW = 30.0
"""Seconds the requests of N waiting canaries are counted (6 ticks of 5 s)."""
UNREACHABLE_PROMETHEUS = "http://127.0.0.1:1"
BENCH_USER_AGENT = "quantship-bench/kubectl"
LAG_GOAL = 1.0
RECORDED = 5
"""Requests kmock keeps on record (it needs the one it serves)."""
REQUESTS_GOAL = 1.0
"""API requests per model per minute between changes."""


@dataclass
class Result:
    size: int
    pending_rate: float = 0.0
    per_model_minute: float = 0.0
    cpu_pending: float = 0.0
    cpu_judging: float = 0.0
    rss_mb: float = 0.0
    lags: list[float] = field(default_factory=list)
    ready_to_rollback: list[float] = field(default_factory=list)


def run(workdir: Path) -> None:
    console = Console(width=160)
    sizes = tuple(int(n) for n in os.environ.get("QUANTSHIP_BENCH_SIZES", "").split(",") if n) or SIZES
    results = []
    for size in sizes:
        console.print(f"{size} canaries ...")
        results.append(asyncio.run(_measure(size, workdir / f"operator-{size}")))
    table = Table(
        title=f"operator at scale (kmock; tick 5 s, step {STEP_INTERVAL:g} s, Prometheus unreachable)"
    )
    columns = (
        "N",
        "API req/s, pending",
        "req/model/min, pending",
        "CPU %, pending / judging",
        "RSS MB",
        "judgement lag p50 / p99 / max",
        "ready -> rolled back p50 / max",
        "goals met",
    )
    for column in columns:
        table.add_column(column, justify="right")
    for r in results:
        lag_max = max(r.lags) if r.lags else float("nan")
        met = lag_max <= LAG_GOAL and r.per_model_minute <= REQUESTS_GOAL
        table.add_row(
            str(r.size),
            f"{r.pending_rate:.2f}",
            f"{r.per_model_minute:.2f}",
            f"{r.cpu_pending:.1f} / {r.cpu_judging:.1f}",
            f"{r.rss_mb:.0f}",
            f"{_quantile(r.lags, 0.5):.2f} / {_quantile(r.lags, 0.99):.2f} / {lag_max:.2f} s",
            f"{_quantile(r.ready_to_rollback, 0.5):.1f} / {_quantile(r.ready_to_rollback, 1.0):.1f} s",
            "yes" if met else "NO",
        )
    console.print(table)
    console.print(
        f"goals: lag <= {LAG_GOAL:g} s at every N, <= {REQUESTS_GOAL:g} request per model per minute"
    )


def _quantile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


# -- one size --------------------------------------------------------------------------------------


async def _measure(size: int, workdir: Path) -> Result:
    # kmock plus what a real API server fills in: the operator tests' own fixture
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "integration" / "operator"))
    import kmock
    from kmock_cluster import QM, Cluster, declare  # type: ignore[import-not-found]
    from kubernetes.aio import client

    from quantship.operator import crd
    from quantship.operator.kube import MERGE_PATCH
    from quantship.operator.spec import ModelSpec
    from quantship.rollout.state import from_timestamp

    class CountingCluster(Cluster):  # type: ignore[misc]
        """kmock counting the operator's requests itself: kmock matches each request against every
        one it recorded before (quadratic), so it keeps only the latest here, and as few of the
        answers and refusals it records."""

        operator_requests = 0

        async def _handle(self, request: kmock.Request) -> Any:
            if request.headers.get("User-Agent") != BENCH_USER_AGENT:
                CountingCluster.operator_requests += 1
            for recorded in (self._requests, self.answers, self.invalid, self.pruned):
                del recorded[:-RECORDED]
            return await super()._handle(request)

    workdir.mkdir(parents=True, exist_ok=True)
    result = Result(size)
    names = [f"model-{index}" for index in range(size)]

    def spec(name: str, version: str) -> dict[str, Any]:
        return {
            "artifact": {"uri": f"https://models.example.com/{name}-{version}.tar.gz"},
            "replicas": 1,
            "rollout": {"steps": [50, 100], "stepInterval": f"{STEP_INTERVAL:g}s", "progressDeadline": "30m"},
            "analysis": {"prometheusUrl": UNREACHABLE_PROMETHEUS, "inconclusiveLimit": INCONCLUSIVE_LIMIT},
        }

    def child(name: str, version: str) -> str:
        body = {"metadata": {"name": name, "namespace": NAMESPACE}, "spec": spec(name, version)}
        return f"{name}-{ModelSpec.from_resource(body).revision}"

    def status(name: str) -> dict[str, Any]:
        try:
            found = cluster.objects[QM, NAMESPACE, name]
        except KeyError:
            return {}
        return dict(found.raw.get("status") or {}) if not found.deleted else {}

    def exists(resource: str, name: str) -> bool:
        try:
            return not cluster.objects[resource, NAMESPACE, name].deleted
        except KeyError:
            return False

    def operator_requests() -> int:
        return CountingCluster.operator_requests

    async def until(check: Any, what: str, timeout: float = 600.0) -> None:
        started = time.monotonic()
        while not check():
            if time.monotonic() - started > timeout:
                raise RuntimeError(f"{size} canaries: timed out waiting for {what}")
            await asyncio.sleep(0.5)
        print(f"  {what}: {time.monotonic() - started:.1f} s", flush=True)

    async def drop_events() -> None:
        """kmock keeps every Event the operator posts as an object and scans them all on each
        lookup; a real API server does not. Nobody reads them here: drop them as they come."""
        while True:
            await asyncio.sleep(1.0)
            for key in [key for key in cluster.objects if key[0].plural == "events"]:
                del cluster.objects[key]

    async with CountingCluster() as cluster, kmock.Server(cluster):
        declare(cluster)
        dropping = asyncio.create_task(drop_events())
        url = str(cluster.url).rstrip("/")
        metrics_port = _free_port()
        log = (workdir / "operator.log").open("w")
        operator = children.start(
            [sys.executable, "-m", "benchmarks.operator_scale", url, str(metrics_port)],
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=Path(__file__).resolve().parents[1],
        )
        sampler = _Sampler(operator.pid)
        try:
            await until(lambda: _answers(metrics_port), "the operator's metrics port", timeout=60)
            async with client.ApiClient(client.Configuration(host=url)) as api:
                api.user_agent = BENCH_USER_AGENT
                custom, apps = client.CustomObjectsApi(api), client.AppsV1Api(api)

                async def ready(deployment: str) -> None:
                    await apps.patch_namespaced_deployment_status(
                        deployment, NAMESPACE, {"status": {"readyReplicas": 1}}, _content_type=MERGE_PATCH
                    )

                # every model serves v1
                for name in names:
                    body = {
                        "apiVersion": crd.API_VERSION,
                        "kind": crd.KIND,
                        "metadata": {"name": name},
                        "spec": spec(name, "v1"),
                    }
                    await custom.create_namespaced_custom_object(
                        crd.GROUP, crd.VERSION, NAMESPACE, crd.PLURAL, body
                    )
                stables = {name: child(name, "v1") for name in names}
                await until(lambda: all(exists("apps/v1/deployments", d) for d in stables.values()), "v1")
                for deployment in stables.values():
                    await ready(deployment)
                await until(lambda: all(status(n).get("phase") == "Promoted" for n in names), "v1 served")

                # every model gets a canary that waits for readiness: nothing changes meanwhile
                for name in names:
                    await custom.patch_namespaced_custom_object(
                        crd.GROUP,
                        crd.VERSION,
                        NAMESPACE,
                        crd.PLURAL,
                        name,
                        {"spec": spec(name, "v2")},
                        _content_type=MERGE_PATCH,
                    )
                canaries = {name: child(name, "v2") for name in names}
                await until(lambda: all(exists("apps/v1/deployments", d) for d in canaries.values()), "v2")
                await until(
                    lambda: all("waiting for canary" in status(n).get("message", "") for n in names),
                    "canaries waiting",
                )
                await asyncio.sleep(2 * 5.0)  # the last writes and kopf's bookkeeping settle
                before, cpu_before = operator_requests(), sampler.cpu()
                started = time.monotonic()
                await asyncio.sleep(PENDING_WINDOW)
                elapsed = time.monotonic() - started
                counted = operator_requests() - before
                result.pending_rate = counted / elapsed
                result.per_model_minute = counted / size / (elapsed / 60)
                result.cpu_pending = 100 * (sampler.cpu() - cpu_before) / elapsed

                # all canaries ready at once; judged every step; rolled back at the third judgement
                made_ready: dict[str, float] = {}
                cpu_before, started = sampler.cpu(), time.monotonic()
                for name, deployment in canaries.items():
                    made_ready[name] = time.time()
                    await ready(deployment)
                await until(lambda: all(status(n).get("phase") == "RolledBack" for n in names), "rollbacks")
                elapsed = time.monotonic() - started
                result.cpu_judging = 100 * (sampler.cpu() - cpu_before) / elapsed
                for name in names:
                    history = status(name).get("history") or []
                    times = [(entry["action"], from_timestamp(entry["at"]) or 0.0) for entry in history]
                    judged = [at for action, at in times if action in ("SetWeight", "Judged", "RollBack")]
                    judged = judged[-(INCONCLUSIVE_LIMIT + 1) :]
                    result.lags += [
                        later - (earlier + STEP_INTERVAL) for earlier, later in itertools.pairwise(judged)
                    ]
                    result.ready_to_rollback.append(judged[-1] - made_ready[name])
            result.rss_mb = sampler.peak_rss_mb()
        finally:
            children.stop(operator)
            sampler.stop()
            log.close()
            dropping.cancel()
    return result


# -- measuring the operator's process -------------------------------------------------------------


class _Sampler:
    """CPU seconds and peak RSS of a process, from /proc (RSS sampled every 0.5 s in a thread)."""

    def __init__(self, pid: int) -> None:
        import threading

        self.pid = pid
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()

    def cpu(self) -> float:
        fields = Path(f"/proc/{self.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def peak_rss_mb(self) -> float:
        return self.peak * os.sysconf("SC_PAGE_SIZE") / 2**20

    def _sample(self) -> None:
        while not self._stop.wait(0.5):
            try:
                self.peak = max(self.peak, int(Path(f"/proc/{self.pid}/statm").read_text().split()[1]))
            except (OSError, IndexError, ValueError):
                return

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)


def _answers(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=1):
            return True
    except OSError:
        return False


def _free_port() -> int:
    from quantship.local.prometheus import free_port

    return free_port()


# -- the operator's process ------------------------------------------------------------------------


def _serve_operator(url: str, metrics_port: int) -> None:
    """The real operator (kopf) against kmock at `url`, as `quantship operator --standalone
    --namespace default` runs it, with the default 5 s tick; SIGTERM stops it."""
    import kopf
    from kubernetes.aio import client

    from quantship.operator import OperatorSettings
    from quantship.operator import run as run_operator

    settings = OperatorSettings(
        namespaces=(NAMESPACE,), metrics_port=metrics_port, health_port=0, standalone=True
    )
    asyncio.run(
        run_operator(
            settings,
            api_config=client.Configuration(host=url),
            login=lambda **_: kopf.ConnectionInfo(server=url, insecure=True),
        )
    )


if __name__ == "__main__":
    _serve_operator(sys.argv[1], int(sys.argv[2]))
