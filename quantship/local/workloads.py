"""`Workloads` as local `quantship serve` processes: the demo's stand-in for Deployments.

Each revision runs as one or more `ServerProcess` children on loopback ports, from the artifact
registered for it with `add`. Promotion (the canary becoming the stable track) starts
replacement processes with the new `--track`, waits until they are ready, then stops the old
ones, so the revision keeps serving throughout. `endpoints()` tells the traffic generator where a
revision answers; `targets()` tells Prometheus (`PrometheusProcess.set_targets`) or the direct
scraper what to scrape; `on_change` fires whenever that changes.

Used by the demo (`quantship demo`), the integration tests and the rollout benchmark.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence
from pathlib import Path

import httpx

from quantship.local.processes import ServerError, ServerProcess
from quantship.rollout import PortError, Track

log = logging.getLogger(__name__)

READY_FAILURES = 3
"""Failed readiness checks in a row before a live server counts as not ready: the failureThreshold
of the operator's readinessProbe (quantship/operator/resources.py), so that the demo judges
readiness as a cluster would."""


class LocalWorkloads:
    def __init__(
        self,
        *,
        model: str,
        workdir: Path,
        server_args: Sequence[str] = (),
        replicas: int = 1,
        ready_timeout: float = 60.0,
        on_change: Callable[[], None] | None = None,
    ) -> None:
        self.model = model
        self.workdir = workdir
        self.server_args = list(server_args)
        """Extra `quantship serve` flags for every process (e.g. --shadow-rate 1.0)."""
        self.replicas = replicas
        """Processes a revision starts with."""
        self.ready_timeout = ready_timeout
        self.on_change = on_change
        self._artifacts: dict[str, Path] = {}
        self._args: dict[str, list[str]] = {}
        self._processes: dict[str, list[ServerProcess]] = {}
        self._tracks: dict[str, Track] = {}
        self._failures: dict[str, int] = {}
        """Readiness checks failed in a row, by server URL, of servers that answered ready once."""

    def add(self, revision: str, artifact: Path, args: Sequence[str] = ()) -> None:
        """Register the artifact a revision serves, and `quantship serve` flags for its processes
        alone (after `server_args`); `run` starts it."""
        self._artifacts[revision] = artifact
        self._args[revision] = list(args)

    # -- the Workloads port ---------------------------------------------------------------------

    async def run(self, revision: str, track: Track) -> None:
        if revision not in self._artifacts:
            raise PortError(f"no artifact registered for revision {revision}", reason="UnknownRevision")
        current = self._processes.get(revision)
        if current and self._tracks.get(revision) is track:
            return
        if not current:
            self._processes[revision] = [self._start(revision, track) for _ in range(self.replicas)]
            self._tracks[revision] = track
            self._changed()
            return
        # relabel (promotion): bring up the new track before the old one goes
        replacements = [self._start(revision, track) for _ in current]
        try:
            await asyncio.gather(*(process.wait_ready(self.ready_timeout) for process in replacements))
        except ServerError as exc:
            await self._stop(replacements)
            raise PortError(
                f"revision {revision} could not restart as {track}: {exc}", reason="ServerFailed"
            ) from exc
        self._processes[revision], self._tracks[revision] = replacements, track
        self._changed()
        await self._stop(current)

    async def ready(self, revision: str) -> bool:
        """Every process of the revision is ready, as a kubelet's readiness probe would say: a process
        that exited is not ready at once; a live one that answered ready before stays ready until
        READY_FAILURES checks in a row fail (a slow answer on a loaded machine is not a dead server,
        and the rollout engine rolls a canary that is not ready back at once)."""
        processes = self._processes.get(revision)
        if not processes:
            return False
        async with httpx.AsyncClient(timeout=2.0) as client:
            answers = [await self._probe(client, revision, process) for process in processes]
        return all(answers)

    async def all_ready(self, revision: str) -> bool:
        """`ready` is every process already."""
        return await self.ready(revision)

    async def _probe(self, client: httpx.AsyncClient, revision: str, process: ServerProcess) -> bool:
        if not process.running():
            log.warning("revision %s: server exited:\n%s", revision, process.log_tail())
            return False
        try:
            answered = (await client.get(f"{process.url}/v2/health/ready")).status_code == 200
        except httpx.TransportError:
            answered = False
        if answered:
            self._failures[process.url] = 0
            return True
        if process.url not in self._failures:
            return False  # never ready yet
        self._failures[process.url] += 1
        return self._failures[process.url] < READY_FAILURES

    async def scale(self, revision: str, replicas: int) -> None:
        processes = self._processes.get(revision)
        if processes is None:
            raise PortError(f"revision {revision} is not running", reason="UnknownRevision")
        track = self._tracks[revision]
        while len(processes) < replicas:
            processes.append(self._start(revision, track))
        surplus = processes[replicas:]
        del processes[replicas:]
        self._changed()
        await self._stop(surplus)

    async def remove(self, revision: str) -> None:
        processes = self._processes.pop(revision, [])
        self._tracks.pop(revision, None)
        if processes:
            self._changed()
            await self._stop(processes)

    # -- what the traffic generator and the scrapers need ---------------------------------------

    def endpoints(self, revision: str) -> list[str]:
        """Base URLs of a revision's running servers."""
        return [process.url for process in self._processes.get(revision, []) if process.running()]

    def targets(self) -> list[tuple[str, dict[str, str]]]:
        """`host:port` of every server with its labels, for file_sd or the direct scraper."""
        return [
            (
                process.address,
                {"model": self.model, "revision": revision, "track": self._tracks[revision].value},
            )
            for revision, processes in self._processes.items()
            for process in processes
        ]

    def tracks(self) -> dict[str, Track]:
        return dict(self._tracks)

    async def aclose(self) -> None:
        """Stop every server this adapter started."""
        for revision in list(self._processes):
            await self.remove(revision)

    # -- inside ---------------------------------------------------------------------------------

    def _start(self, revision: str, track: Track) -> ServerProcess:
        index = sum(1 for p in self.workdir.glob(f"server-{revision}-*.log")) if self.workdir.exists() else 0
        self.workdir.mkdir(parents=True, exist_ok=True)
        process = ServerProcess(
            self._artifacts[revision],
            model=self.model,
            revision=revision,
            track=track.value,
            extra_args=[*self.server_args, *self._args[revision]],
            log_path=self.workdir / f"server-{revision}-{index}.log",
        )
        process.start()
        return process

    async def _stop(self, processes: Sequence[ServerProcess]) -> None:
        for process in processes:  # a later server on the same port starts not ready
            self._failures.pop(process.url, None)
        await asyncio.gather(*(asyncio.to_thread(process.stop) for process in processes))

    def _changed(self) -> None:
        if self.on_change is not None:
            self.on_change()
