"""`quantship serve` as a child process on a loopback port: the local stand-in for a Deployment.

The demo's Workloads adapter and the integration tests start model servers through this class,
so both run the real command a container would run.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import httpx

from quantship.local.lifetime import dying_with_parent
from quantship.local.prometheus import free_port


class ServerError(Exception):
    """A model server process failed to start or died."""


class ServerProcess:
    def __init__(
        self,
        artifact: Path,
        *,
        model: str,
        revision: str,
        track: str = "stable",
        port: int | None = None,
        extra_args: Sequence[str] = (),
        log_path: Path | None = None,
    ) -> None:
        self.artifact = artifact
        self.model = model
        self.revision = revision
        self.track = track
        self.port = port or free_port()
        self.extra_args = list(extra_args)
        self.log_path = log_path
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process else None

    def command(self) -> list[str]:
        return [
            sys.executable, "-m", "quantship", "serve", str(self.artifact),
            "--model-name", self.model, "--revision", self.revision, "--track", self.track,
            "--host", "127.0.0.1", "--port", str(self.port), *self.extra_args,
        ]  # fmt: skip

    def start(self) -> None:
        log = self.log_path.open("ab") if self.log_path else subprocess.DEVNULL
        try:
            self._process = subprocess.Popen(
                dying_with_parent(self.command()),  # and a kill -9 of ours does not orphan it
                stdout=log,
                stderr=subprocess.STDOUT,
                env={**os.environ, "PYTHONUNBUFFERED": "1"},
                start_new_session=True,  # our Ctrl-C handling stops it in order, not the terminal's
            )
        finally:
            if log is not subprocess.DEVNULL:
                log.close()  # type: ignore[union-attr]

    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    async def wait_ready(self, timeout: float = 60.0) -> None:
        """Until /v2/health/ready answers 200. Raises ServerError if the process exits or time runs out."""
        deadline = time.monotonic() + timeout
        async with httpx.AsyncClient(timeout=2.0) as client:
            while time.monotonic() < deadline:
                if not self.running():
                    raise ServerError(
                        f"quantship serve ({self.revision}) exited at start:\n{self.log_tail()}"
                    )
                try:
                    if (await client.get(f"{self.url}/v2/health/ready")).status_code == 200:
                        return
                except httpx.TransportError:
                    pass
                await asyncio.sleep(0.1)
        raise ServerError(
            f"quantship serve ({self.revision}) not ready after {timeout:.0f} s:\n{self.log_tail()}"
        )

    def stop(self, timeout: float = 10.0) -> int | None:
        """SIGTERM (the server drains in-flight requests), SIGKILL after `timeout`. Returns the exit code."""
        if self._process is None:
            return None
        if self._process.poll() is None:
            self._process.send_signal(signal.SIGTERM)
            try:
                self._process.wait(timeout)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait()
        return self._process.returncode

    def log_tail(self, lines: int = 20) -> str:
        if self.log_path is None:
            return "(no log file)"
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"
