"""A real Prometheus server as a child process on a loopback port, for the demo and the tests.

Targets come from a file_sd file that Prometheus re-reads on its own, so model servers can be
added and removed while it runs (a canary appears, a rolled-back one goes). Never listens on
anything but 127.0.0.1.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import socket
import subprocess
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import httpx
import yaml

from quantship.local.lifetime import dying_with_parent

PROJECT_TOOLS = Path(__file__).resolve().parents[2] / ".tools"


class PrometheusError(Exception):
    """Prometheus is missing, failed to start, or refused a query."""


def find_binary(name: str) -> str | None:
    """A binary on PATH, else one scripts/install-tools unpacked into .tools/."""
    found = shutil.which(name)
    if found:
        return found
    for candidate in (PROJECT_TOOLS / "bin" / name, PROJECT_TOOLS / "pkg" / "usr" / "bin" / name):
        if candidate.is_file():
            return str(candidate)
    return None


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class PrometheusProcess:
    def __init__(
        self,
        workdir: Path,
        *,
        scrape_interval: str = "1s",
        evaluation_interval: str = "1s",
        rule_files: Sequence[Path] = (),
        port: int | None = None,
    ) -> None:
        binary = find_binary("prometheus")
        if binary is None:
            raise PrometheusError("prometheus is not installed: run scripts/install-tools (or make setup)")
        self.binary = binary
        self.workdir = workdir.resolve()  # Prometheus reads file_sd paths relative to its config file
        self.port = port or free_port()
        self.scrape_interval = scrape_interval
        self.evaluation_interval = evaluation_interval
        self.rule_files = list(rule_files)
        self._process: subprocess.Popen[bytes] | None = None
        self._targets_file = workdir / "targets.json"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def log_path(self) -> Path:
        return self.workdir / "prometheus.log"

    def set_targets(self, targets: Sequence[tuple[str, Mapping[str, str]]]) -> None:
        """Scrape these `host:port` targets, each with extra target labels. Takes effect within a second."""
        groups = [{"targets": [address], "labels": dict(labels)} for address, labels in targets]
        staging = self._targets_file.with_suffix(".tmp")
        staging.write_text(json.dumps(groups))
        staging.replace(self._targets_file)  # Prometheus must never read a half-written file

    def start(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        if not self._targets_file.exists():
            self.set_targets([])
        config: dict[str, Any] = {
            "global": {
                "scrape_interval": self.scrape_interval,
                "evaluation_interval": self.evaluation_interval,
            },
            "scrape_configs": [
                {
                    "job_name": "quantship",
                    "scrape_timeout": self.scrape_interval,
                    # The servers label their own series (model, revision, track), the operator its
                    # own with each model's namespace too; keep theirs.
                    "honor_labels": True,
                    "file_sd_configs": [{"files": [str(self._targets_file)], "refresh_interval": "1s"}],
                }
            ],
        }
        if self.rule_files:
            config["rule_files"] = [str(path) for path in self.rule_files]
        config_path = self.workdir / "prometheus.yml"
        config_path.write_text(yaml.safe_dump(config))
        log = self.log_path.open("wb")
        self._process = subprocess.Popen(
            dying_with_parent(
                [  # and a kill -9 of ours does not orphan it
                    self.binary,
                    f"--config.file={config_path}",
                    f"--storage.tsdb.path={self.workdir / 'data'}",
                    f"--web.listen-address=127.0.0.1:{self.port}",
                    "--web.enable-lifecycle",
                    "--storage.tsdb.retention.time=1d",
                ]
            ),
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # Ctrl-C in a terminal reaches us, and we stop it in order
        )
        log.close()

    async def wait_ready(self, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        async with httpx.AsyncClient(timeout=2.0) as client:
            while time.monotonic() < deadline:
                if self._process is None or self._process.poll() is not None:
                    raise PrometheusError(f"prometheus exited at start:\n{self._log_tail()}")
                try:
                    if (await client.get(f"{self.url}/-/ready")).status_code == 200:
                        return
                except httpx.TransportError:
                    pass
                await asyncio.sleep(0.2)
        raise PrometheusError(f"prometheus not ready after {timeout:.0f} s:\n{self._log_tail()}")

    async def query(self, promql: str) -> list[dict[str, Any]]:
        """An instant query's result vector: [{"metric": {...}, "value": [ts, "1.5"]}, ...]."""
        async with httpx.AsyncClient(timeout=5.0) as client:
            response = await client.get(f"{self.url}/api/v1/query", params={"query": promql})
        body = response.json()
        if body.get("status") != "success":
            raise PrometheusError(f"query failed: {body.get('error', response.text)}: {promql}")
        return list(body["data"]["result"])

    def stop(self, timeout: float = 10.0) -> None:
        if self._process is None or self._process.poll() is not None:
            return
        self._process.terminate()
        try:
            self._process.wait(timeout)
        except subprocess.TimeoutExpired:
            self._process.kill()
            self._process.wait()

    def _log_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"
