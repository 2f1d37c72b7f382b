"""Scratch directories: marked with their owner, and swept only when provably ours and the owner dead."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from quantship import scratch


def dead_pid() -> int:
    """The pid of a process that has exited and been reaped."""
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def marked(root: Path, prefix: str = scratch.SERVE_PREFIX, **owner: object) -> Path:
    """A scratch directory whose owner file says what the test wants."""
    path = scratch.create(prefix, root)
    recorded = json.loads((path / scratch.OWNER_FILE).read_text())
    (path / scratch.OWNER_FILE).write_text(json.dumps({**recorded, **owner}))
    (path / "artifact").mkdir()
    (path / "artifact" / "model.onnx").write_bytes(b"weights")
    return path


def test_a_scratch_directory_records_this_process_as_its_owner(tmp_path: Path) -> None:
    path = scratch.create(scratch.ARTIFACT_PREFIX, tmp_path)
    assert path.parent == tmp_path and path.name.startswith(scratch.ARTIFACT_PREFIX)
    owner = scratch.Owner(**json.loads((path / scratch.OWNER_FILE).read_text()))
    assert owner == scratch.Owner.me() and owner.pid == os.getpid()
    assert not owner.is_dead()


def test_a_dead_owners_directories_are_swept_and_nothing_else(tmp_path: Path) -> None:
    dead = dead_pid()
    stale = [marked(tmp_path, prefix, pid=dead) for prefix in scratch.PREFIXES]
    live = marked(tmp_path)  # this process
    other_namespace = marked(tmp_path, pid=dead, pid_namespace="pid:[1]")
    unmarked = tmp_path / f"{scratch.SERVE_PREFIX}old"
    unmarked.mkdir()
    half_marked = marked(tmp_path, pid=dead)
    (half_marked / scratch.OWNER_FILE).write_text('{"pid": ')
    not_a_pid = marked(tmp_path, pid="1234")
    not_ours = tmp_path / "quantship-quantize-x"  # a prefix the sweep does not own
    not_ours.mkdir()
    (not_ours / scratch.OWNER_FILE).write_text(
        json.dumps({"pid": dead, "started": None, "pid_namespace": None})
    )
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    target = marked(elsewhere, pid=dead)  # reached only through a symlink with our prefix
    link = tmp_path / f"{scratch.SERVE_PREFIX}link"
    link.symlink_to(target)

    removed = scratch.sweep(tmp_path)

    assert sorted(removed) == sorted(stale)
    assert not any(path.exists() for path in stale)
    for kept in (live, other_namespace, unmarked, half_marked, not_a_pid, not_ours, link, target):
        assert kept.exists(), kept.name


def test_a_reused_pid_does_not_keep_a_dead_owners_directory(tmp_path: Path) -> None:
    me = scratch.Owner.me()
    assert me.started is not None, "no /proc start time on this system"
    reused = marked(tmp_path, started=me.started - 1)  # our pid, but a process started earlier
    unknown_start = marked(tmp_path, started=None)  # cannot tell: kept
    assert scratch.sweep(tmp_path) == [reused]
    assert unknown_start.exists()


def test_the_scratch_context_removes_its_directory_whatever_happens(tmp_path: Path) -> None:
    with pytest.raises(RuntimeError), scratch.directory(scratch.ARTIFACT_PREFIX, tmp_path) as path:
        (path / "partial").write_bytes(b"x")
        raise RuntimeError("refused")
    assert list(tmp_path.iterdir()) == []


def test_an_owner_from_another_pid_namespace_is_never_judged_dead() -> None:
    owner = dataclasses.replace(scratch.Owner.me(), pid=dead_pid(), pid_namespace="pid:[1]")
    assert not owner.is_dead()
    assert dataclasses.replace(owner, pid_namespace=scratch.Owner.me().pid_namespace).is_dead()


def test_a_directory_beside_dest_sweeps_what_killed_runs_left_and_nothing_else(tmp_path: Path) -> None:
    """What an OOM-killed init container left beside its artifact, in an emptyDir it comes back to:
    its owner was in another pid namespace, so only the lock it no longer holds proves it dead."""
    dest = tmp_path / "model"
    killed = [tmp_path / ".model.fetch-a1b2c3d4", tmp_path / ".model.fetch-e5f6g7h8"]
    for leftover in killed:
        (leftover / "artifact").mkdir(parents=True)
        (leftover / "artifact" / "model.onnx").write_bytes(b"half a model")
    kept = [
        tmp_path / ".model-cache",
        tmp_path / ".model.pull-e5f6g7h8",  # another kind
        tmp_path / ".other.fetch-00000000",  # another destination
        tmp_path / ".model.fetch-v2.old",  # `-o model.fetch-v2`'s artifact, moved aside
    ]
    for folder in kept:
        folder.mkdir()
    (tmp_path / ".model.fetch-notadir").write_text("not a directory: not ours")

    with scratch.beside(dest, "fetch") as folder:
        assert folder.parent == tmp_path and folder.name.startswith(".model.fetch-")
        assert not any(leftover.exists() for leftover in killed)
        assert all(folder.exists() for folder in kept)
    assert not folder.exists()
    assert sorted(path.name for path in tmp_path.iterdir()) == sorted(
        [*(folder.name for folder in kept), ".model.fetch-notadir"]
    )


def test_a_live_runs_directory_beside_dest_is_left_and_neither_run_waits(tmp_path: Path) -> None:
    """Two runs into one directory: the second sweeps only what no live run holds, at once."""
    code = (
        "import sys; from pathlib import Path; from quantship import scratch\n"
        "with scratch.beside(Path(sys.argv[1]) / 'model', 'fetch') as folder:\n"
        "    (folder / 'part').write_text('being written')\n"
        "    print(folder, flush=True); sys.stdin.readline()\n"
    )
    first = subprocess.Popen(
        [sys.executable, "-c", code, str(tmp_path)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    assert first.stdout is not None and first.stdin is not None
    live = Path(first.stdout.readline().strip())

    with scratch.beside(tmp_path / "model", "fetch"):
        assert (live / "part").read_text() == "being written"
    first.stdin.write("done\n")
    first.stdin.close()
    assert first.wait(timeout=30) == 0
    assert not live.exists(), "removed by its own run"


def test_runs_into_one_destination_never_sweep_each_others_live_directories(tmp_path: Path) -> None:
    """Between mkdtemp and its lock a new directory looks like a dead run's: another run's sweep
    took it from under its maker (72 of 900 runs failed in three processes, before)."""
    code = (
        "import sys; from pathlib import Path; from quantship import scratch\n"
        "failed = 0\n"
        "for _ in range(300):\n"
        "    try:\n"
        "        with scratch.beside(Path(sys.argv[1]) / 'model', 'fetch') as folder:\n"
        "            (folder / 'part').write_bytes(b'x'); (folder / 'part').read_bytes()\n"
        "    except OSError:\n"
        "        failed += 1\n"
        "print(failed)\n"
    )
    runs = [
        subprocess.Popen([sys.executable, "-c", code, str(tmp_path)], stdout=subprocess.PIPE, text=True)
        for _ in range(3)
    ]
    failed = [int(run.communicate(timeout=120)[0]) for run in runs]
    assert failed == [0, 0, 0]
    assert list(tmp_path.iterdir()) == []
