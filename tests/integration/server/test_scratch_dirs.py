"""No scratch directory outlives its use: `quantship verify` of a .tar.gz (pass or refuse), a served
.tar.gz after SIGTERM, and one left by a server killed with SIGKILL, swept by the next server.

Every process runs with its own TMPDIR, so the test sees exactly the directories it made (and
onnxruntime's own `.ses` file, which is not ours to judge).
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
from server_harness import MODEL

from quantship import artifact, scratch
from quantship.local.processes import ServerProcess


@pytest.fixture
def tarball(good_artifact: artifact.Artifact, tmp_path: Path) -> Path:
    path = tmp_path / "digits.tar.gz"
    artifact.pack(good_artifact.root, path)
    return path


def ours(folder: Path) -> list[Path]:
    return sorted(path for path in folder.iterdir() if path.name.startswith("quantship-"))


def verify(path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "quantship", "verify", str(path)], capture_output=True, text=True, timeout=120
    )


def archive_of(folder: Path, tarball: Path, extra: dict[str, bytes] | None = None) -> Path:
    """A .tar.gz of `folder`'s files as they are (pack() would refuse a tampered artifact)."""
    with tarfile.open(tarball, "w:gz") as archive:
        for file in sorted(folder.iterdir()):
            archive.add(file, arcname=file.name)
        for name, content in (extra or {}).items():
            (folder.parent / name).write_bytes(content)
            archive.add(folder.parent / name, arcname=name)
    return tarball


def test_verify_of_a_tarball_leaves_nothing_when_it_passes(tarball: Path, tmpdir_env: Path) -> None:
    result = verify(tarball)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("ok: ")
    assert ours(tmpdir_env) == []


@pytest.mark.parametrize("fault", ["tampered model", "file the manifest does not name"])
def test_verify_of_a_tarball_leaves_nothing_when_it_refuses(
    fault: str, artifact_copy: Path, tmp_path: Path, tmpdir_env: Path
) -> None:
    extra = None
    if fault == "tampered model":
        with (artifact_copy / artifact.MODEL_FILE).open("ab") as model:
            model.write(b"\0")
    else:
        extra = {"run-me.sh": b"#!/bin/sh\n"}
    result = verify(archive_of(artifact_copy, tmp_path / "bad.tar.gz", extra))
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    assert ours(tmpdir_env) == []


def serve(tarball: Path, revision: str, log: Path) -> ServerProcess:
    server = ServerProcess(tarball, model=MODEL, revision=revision, log_path=log)
    server.start()
    asyncio.run(server.wait_ready(timeout=120))
    return server


def scratch_dirs(folder: Path) -> list[Path]:
    return sorted(path for path in folder.iterdir() if path.name.startswith(scratch.SERVE_PREFIX))


def test_a_killed_servers_directory_is_swept_by_the_next_and_a_live_ones_never(
    tarball: Path, tmp_path: Path, tmpdir_env: Path
) -> None:
    killed = serve(tarball, "killed", tmp_path / "killed.log")
    try:
        [left] = scratch_dirs(tmpdir_env)
        assert list(left.rglob(artifact.MODEL_FILE))  # the served model, unpacked
    finally:
        assert killed.pid is not None
        os.kill(killed.pid, signal.SIGKILL)
        killed.stop()  # reaps it
    assert scratch_dirs(tmpdir_env) == [left]  # SIGKILL: nobody cleaned up

    successor = serve(tarball, "successor", tmp_path / "successor.log")
    try:
        [own] = scratch_dirs(tmpdir_env)
        assert own != left and not left.exists()
        assert (
            "removed 1 scratch directories of dead quantship processes"
            in (tmp_path / "successor.log").read_text()
        )
        assert verify(tarball).returncode == 0  # verify sweeps too: never a live server's directory
        assert list(own.rglob(artifact.MODEL_FILE))
    finally:
        assert successor.stop() == -signal.SIGTERM  # drained; uvicorn re-raises the signal
    assert ours(tmpdir_env) == []
