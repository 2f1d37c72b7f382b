"""A load generator that is missing and cannot be installed stops the suite with ensure_tool's own one
line, not apt-get's CalledProcessError (benchmarks/peers.py, run from the repository root as the suites
run: `benchmarks` is not an installed package). apt-get here is a script that fails as apt-get does on a
fresh image with no package lists, so that the test changes nothing on the host."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]


def test_a_failing_apt_get_ends_in_the_tools_own_message(tmp_path: Path) -> None:
    apt_get = tmp_path / "apt-get"
    apt_get.write_text(
        '#!/bin/sh\n[ "$1" = update ] && exit 100\n'
        "echo 'E: Unable to locate package no-such-package' >&2\nexit 100\n"
    )
    apt_get.chmod(0o755)
    code = "from benchmarks import peers; peers.ensure_tool('quantship-no-such-tool', 'no-such-package')"
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60,
        env={**os.environ, "PATH": f"{tmp_path}:{os.environ['PATH']}"},
    )  # fmt: skip
    assert done.returncode == 1
    assert "Traceback" not in done.stderr
    assert done.stderr.startswith(
        "quantship-no-such-tool is not installed: `apt-get install no-such-package` (Debian/Ubuntu) as root"
    )
    assert len(done.stderr.strip().splitlines()) == 1
