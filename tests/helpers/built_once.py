"""Session data built once for all pytest-xdist workers of a run, as pytest-xdist documents ("Making
session-scoped fixtures execute only once"): the first worker to ask builds it under a file lock in the
run's folder, the others wait for it and reuse it. Each worker then shares the very files every other
worker reads, so a test that writes into them would corrupt the others' runs: leaving, each worker
checks that the files are as it found them."""

from __future__ import annotations

import hashlib
import shutil
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from filelock import FileLock


@contextmanager
def built_once(
    tmp_path_factory: pytest.TempPathFactory, worker_id: str, name: str, build: Callable[[Path], object]
) -> Iterator[Path]:
    """The folder `name` that `build(folder)` makes, built by one worker of the run only; on leaving, an
    AssertionError if a test changed, added or removed any of its files."""
    basetemp = tmp_path_factory.getbasetemp()
    # Under xdist each worker's basetemp is a folder of the run's (popen-gw0, ...); without it, this
    # process is the run, and the folder above is shared with other runs of this user.
    run_folder = basetemp if worker_id == "master" else basetemp.parent
    folder, done = run_folder / name, run_folder / f"{name}.built"
    with FileLock(run_folder / f"{name}.lock"):
        if not done.exists():
            shutil.rmtree(folder, ignore_errors=True)  # what a worker that failed mid-build left
            build(folder)
            done.touch()  # outside the folder: an artifact's folder holds only the files it lists
    found = _fingerprint(folder)
    yield folder
    left = _fingerprint(folder)
    changed = sorted(path for path in found.keys() | left.keys() if found.get(path) != left.get(path))
    assert not changed, (
        f"a test changed {', '.join(changed)} in {folder}, which every worker of the run shares:"
        " a test that alters it must work on a copy (see the artifact_copy fixture)"
    )


def _fingerprint(folder: Path) -> dict[str, str]:
    """Each file's sha256, by its path in `folder`."""
    digests = {}
    for path in sorted(folder.rglob("*")):
        if path.is_file():
            with path.open("rb") as file:
                digests[str(path.relative_to(folder))] = hashlib.file_digest(file, "sha256").hexdigest()
    return digests
