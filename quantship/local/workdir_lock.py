"""One demo at a time in a workdir. `quantship demo` holds an exclusive flock on LOCK_FILE there for
its whole run (`held`); a second demo started in the same workdir refuses at once, naming the first
one's pid, before it touches anything: two at once cleared and rewrote each other's captures,
artifacts and summary.

The lock is the kernel's, on an open file: it goes when the holder ends, however it ends (a `kill -9`
too), so a stale file never blocks a rerun. Python opens files non-inheritable, so the servers and
Prometheus the demo starts do not hold it past it. The file itself stays: removing it would let a
third demo lock a new file while a second still waits on the old one.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Iterator
from pathlib import Path

LOCK_FILE = ".quantship-demo.lock"


class WorkdirLockError(Exception):
    """The demo cannot have the workdir to itself: a refusal, told in one line."""


class WorkdirBusy(WorkdirLockError):
    """Another demo holds the workdir's lock."""

    def __init__(self, workdir: Path, pid: int | None) -> None:
        who = "another demo" if pid is None else f"another demo (pid {pid})"
        super().__init__(
            f"{who} is running in {workdir}: wait for it to end, or give this one another --workdir"
        )
        self.pid = pid


class WorkdirUnlockable(WorkdirLockError):
    """The lock file cannot be opened or locked: a read-only workdir, something else of that name, or
    a network filesystem without locks (NFS mounted `nolock` answers ENOLCK)."""

    def __init__(self, path: Path, error: OSError) -> None:
        super().__init__(
            f"cannot lock {path} ({error.strerror or error}), which keeps two demos from sharing a "
            "workdir: give --workdir a folder on a local disk you can write"
        )


@contextlib.contextmanager
def held(workdir: Path) -> Iterator[None]:
    """The workdir's lock, held until the block ends; WorkdirBusy at once when another run holds it,
    WorkdirUnlockable where there is no lock to take."""
    path = workdir / LOCK_FILE
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as exc:
        raise WorkdirUnlockable(path, exc) from None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise WorkdirBusy(workdir, _holder(fd)) from None
        except OSError as exc:
            raise WorkdirUnlockable(path, exc) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        yield
    finally:
        os.close(fd)  # releases the lock


def _holder(fd: int) -> int | None:
    """The pid the holder wrote (None in the moment between its lock and its write)."""
    written = os.pread(fd, 32, 0).decode(errors="replace").strip()
    return int(written) if written.isdigit() else None
