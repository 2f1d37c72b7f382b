"""Scratch directories that are provably ours: marked with their owner, removed when done, and swept
when the owner died without removing them (kill -9, the OOM killer).

`create` makes `<tmp>/<prefix>XXXX` holding an owner file: the process id, its start time and its
pid namespace. `sweep` removes a directory only when all of this holds: its name has one of our
prefixes, it is a real directory of this user (no symlink), its owner file reads, and that owner is
dead (no such process, or the pid now belongs to a process started later). A live process's
directory, one from another pid namespace (a container sharing /tmp) and anything unmarked are left
alone: a leak is better than deleting a running server's model from under it.
`beside` makes a directory next to a destination instead (what a pull, a fetch or a write renames into
place), proven live by the lock its run holds on it rather than by an owner file, which would be
renamed into place with it.
It imports nothing else of quantship, so any part may use it.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

log = logging.getLogger("quantship.scratch")

SERVE_PREFIX = "quantship-serve-"
"""A model server's directory: the .tar.gz artifact it serves, unpacked."""
ARTIFACT_PREFIX = "quantship-artifact-"
"""An artifact .tar.gz unpacked to be verified or read (`quantship verify`, `quantship report`)."""
QUANTIZE_PREFIX = "quantship-quantize-"
"""A quantization's working files: the prepared model, each trial's candidate."""
PUSH_PREFIX = "quantship-push-"
"""A push's OCI config blob (the manifest, copied)."""
PREFIXES = (SERVE_PREFIX, ARTIFACT_PREFIX, QUANTIZE_PREFIX, PUSH_PREFIX)
OWNER_FILE = ".quantship-owner"


@dataclass(frozen=True)
class Owner:
    pid: int
    started: int | None
    """Start time of the process, in clock ticks since boot (/proc/PID/stat): tells a reused pid."""
    pid_namespace: str | None
    """/proc/self/ns/pid: a pid means nothing in another namespace."""

    @classmethod
    def me(cls) -> Owner:
        pid = os.getpid()
        return cls(pid, _start_time(pid), _pid_namespace())

    def is_dead(self) -> bool:
        """True only when this process certainly exits no more: unknown counts as alive."""
        if self.pid_namespace != _pid_namespace():
            return False
        try:
            os.kill(self.pid, 0)
        except ProcessLookupError:
            return True
        except PermissionError:
            pass  # alive, another user's
        started = _start_time(self.pid)
        return self.started is not None and started is not None and started != self.started


def create(prefix: str, root: Path | None = None) -> Path:
    """A fresh directory `<root>/<prefix>XXXX` (root: the system's temporary directory), marked ours."""
    path = Path(tempfile.mkdtemp(prefix=prefix, dir=root))
    staging = path / f"{OWNER_FILE}.partial"
    staging.write_text(json.dumps(asdict(Owner.me())))
    staging.rename(path / OWNER_FILE)  # a sweeper never reads half an owner file
    return path


def remove(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)


@contextlib.contextmanager
def directory(prefix: str, root: Path | None = None) -> Iterator[Path]:
    """A scratch directory (`create`) removed on leaving, whatever happened inside."""
    path = create(prefix, root)
    try:
        yield path
    finally:
        remove(path)


BESIDE_SUFFIX = re.compile(r"[a-z0-9_]{8}")
"""What tempfile.mkdtemp adds to a prefix: a name beside `dest` that is more than the prefix and
this (`.model.write-v2.old`, the artifact `-o model.write-v2` moved aside) is not ours."""


@contextlib.contextmanager
def beside(dest: Path, kind: str) -> Iterator[Path]:
    """A scratch directory `.NAME.KIND-XXXXXXXX` beside `dest`, in which what becomes `dest` is
    built (then renamed into place), removed on leaving. Its run holds an exclusive lock on it while
    it lives (the kernel lets go when the process dies: kill -9, the OOM killer, a restarted init
    container in another pid namespace, where an owner file would prove nothing); so another such
    directory whose lock can be taken is a dead run's, and is removed first. Runs never wait for
    each other. Where the file system has no locks, no sweep: a leak rather than a live run's
    files deleted."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    prefix = f".{dest.name}.{kind}-"
    path, held, locked = _made_and_held(dest.parent, prefix)
    try:
        if locked:  # else no locks here: and so no sweep either
            _sweep_beside(dest.parent, prefix, keep=path)
        yield path
    finally:
        os.close(held)  # and the lock with it
        remove(path)


BESIDE_ATTEMPTS = 100


def _made_and_held(parent: Path, prefix: str) -> tuple[Path, int, bool]:
    """A new directory and an open descriptor holding its lock (False: the file system has none).
    Between mkdtemp and the lock another run may take it for a dead run's and sweep it: then it is
    gone, or that run holds its lock, and a new one is made."""
    for _ in range(BESIDE_ATTEMPTS):
        path = Path(tempfile.mkdtemp(prefix=prefix, dir=parent))
        try:
            held = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
        except FileNotFoundError:
            continue  # swept already
        try:
            fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:  # a sweeper holds it, and removes it
            os.close(held)
            continue
        except OSError:
            return path, held, False
        try:
            same = os.stat(path).st_ino == os.fstat(held).st_ino
        except FileNotFoundError:
            same = False
        if same:
            return path, held, True
        os.close(held)  # swept before our lock: what we hold is gone
    raise OSError(f"could not make a scratch directory in {parent}: other runs kept sweeping it")


def _sweep_beside(parent: Path, prefix: str, *, keep: Path) -> None:
    for entry in os.scandir(parent):
        name = entry.name
        if not name.startswith(prefix) or not BESIDE_SUFFIX.fullmatch(name[len(prefix) :]):
            continue
        if entry.path == str(keep) or not entry.is_dir(follow_symlinks=False):
            continue
        try:
            other = os.open(entry.path, os.O_RDONLY | os.O_DIRECTORY)
        except OSError:
            continue  # gone meanwhile, or not ours to open
        try:
            fcntl.flock(other, fcntl.LOCK_EX | fcntl.LOCK_NB)  # held: a live run's
        except OSError:
            continue
        else:
            log.info("removed %s, left by a run that was killed", name)
            remove(Path(entry.path))
        finally:
            os.close(other)


def sweep(root: Path | None = None, prefixes: tuple[str, ...] = PREFIXES) -> list[Path]:
    """Remove the directories under `root` (default: the system's temporary directory) left by dead
    quantship processes (see the module docstring for what proves it); returns what was removed."""
    folder = Path(tempfile.gettempdir() if root is None else root)
    removed = []
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return []
    for entry in entries:
        if entry.name.startswith(prefixes) and _owned_by_the_dead(entry):
            remove(Path(entry.path))
            removed.append(Path(entry.path))
    if removed:
        log.info(
            "removed %d scratch directories of dead quantship processes: %s",
            len(removed), ", ".join(path.name for path in removed),
        )  # fmt: skip
    return removed


def _owned_by_the_dead(entry: os.DirEntry[str]) -> bool:
    try:
        if not entry.is_dir(follow_symlinks=False) or entry.stat(follow_symlinks=False).st_uid != os.getuid():
            return False
        owner = Owner(**json.loads((Path(entry.path) / OWNER_FILE).read_text()))
    except (OSError, ValueError, TypeError):
        return False  # unmarked, half-made, or not ours to judge
    return isinstance(owner.pid, int) and owner.pid > 0 and owner.is_dead()


def _start_time(pid: int) -> int | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # Field 22; the command name (field 2) may hold spaces and parentheses, so count from its end.
    return int(stat.rsplit(")", 1)[1].split()[19])


def _pid_namespace() -> str | None:
    try:
        return os.readlink("/proc/self/ns/pid")
    except OSError:
        return None
