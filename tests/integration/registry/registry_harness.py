"""A real OCI distribution registry (Debian's docker-registry, the CNCF distribution) on loopback,
open or behind htpasswd basic auth. `.ci/run` installs the package (scripts/install-tools)."""

from __future__ import annotations

import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import bcrypt
import requests

from quantship.local.prometheus import free_port

REPO = Path(__file__).resolve().parents[3]
BINARY = shutil.which("docker-registry") or str(REPO / ".tools/bin/docker-registry")
USER, PASSWORD = "ci", "s3cret-pass"


@dataclass(frozen=True)
class Registry:
    address: str
    process: subprocess.Popen[bytes]
    auth: bool
    root: Path
    """Its storage lives under root/data: tests reach in to tamper with a blob."""

    def uri(self, path: str) -> str:
        return f"oci://{self.address}/{path}"


def start(root: Path, *, auth: bool) -> Registry:
    port = free_port()
    config = root / "config.yml"
    lines = [
        "version: 0.1",
        "log: {level: error}",
        "storage:",
        f"  filesystem: {{rootdirectory: {root / 'data'}}}",
        "  delete: {enabled: true}",
        "http:",
        f"  addr: 127.0.0.1:{port}",
    ]
    if auth:
        htpasswd = root / "htpasswd"
        htpasswd.write_text(f"{USER}:{bcrypt.hashpw(PASSWORD.encode(), bcrypt.gensalt(rounds=4)).decode()}\n")
        lines += ["auth:", "  htpasswd:", "    realm: quantship-tests", f"    path: {htpasswd}"]
    config.write_text("\n".join(lines) + "\n")
    with (root / "registry.log").open("wb") as log:  # the child keeps its own descriptor
        process = subprocess.Popen([BINARY, "serve", str(config)], stdout=subprocess.DEVNULL, stderr=log)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            requests.get(f"http://127.0.0.1:{port}/v2/", timeout=1)
            return Registry(f"127.0.0.1:{port}", process, auth, root)
        except requests.RequestException:
            if process.poll() is not None:
                break
            time.sleep(0.1)
    process.kill()
    raise RuntimeError(f"docker-registry did not start: {(root / 'registry.log').read_text()[-2000:]}")
