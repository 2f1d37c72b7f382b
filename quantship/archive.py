"""Unpacking an artifact's .tar.gz, hostile until checked: member by member, with caps on size,
member count and compression ratio (`ArchiveLimits`), only regular files with plain names, at most one
wrapping directory. A refused archive raises `RefusedArchive` and `remove_unpacked` leaves nothing on
disk. What the files hold is the artifact module's to verify.
A leaf: it imports nothing of quantship.
"""

from __future__ import annotations

import contextlib
import gzip
import io
import shutil
import tarfile
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import IO, Any


@dataclass(frozen=True)
class ArchiveLimits:
    """What an artifact .tar.gz may hold before it is refused as hostile (reason `unsafe_archive`)."""

    max_bytes: int = 16 * 2**30
    """Unpacked bytes, all files together. 16 GiB: a large INT8 model with its FP32 reference."""
    max_members: int = 16
    """Entries in the archive. An artifact has a manifest, a model and a reference (and perhaps a
    directory entry): a few, never thousands."""
    max_ratio: float = 100.0
    """Unpacked bytes per byte of the .tar.gz, once past `ratio_floor`. ONNX weights barely compress
    (about 1.1x); a gzip bomb of zeros compresses a thousandfold and stops here, early."""
    ratio_floor: int = 64 * 2**20
    """Unpacked bytes always allowed whatever the ratio (small, sparse models compress well)."""


class RefusedArchive(Exception):
    """An archive that cannot be unpacked. `reason`, as `artifact.ArtifactError`'s: `unsafe_archive`
    (hostile: what it held is said), `format` (not a readable .tar.gz) or `io` (the local disk's
    fault: full, read-only)."""

    def __init__(self, message: str, *, reason: str) -> None:
        super().__init__(message)
        self.reason = reason


class _Unsafe(Exception):
    """An archive refused as hostile; the message says what it held."""


class _Capped(io.RawIOBase):
    """The decompressed stream, refusing to give more than `limit` bytes: a gzip bomb stops here
    however its tar headers lie, before it reaches the disk or memory (pax headers are read whole)."""

    def __init__(self, stream: gzip.GzipFile, limit: int, why: str) -> None:
        self._stream, self._limit, self._why, self.read_bytes = stream, limit, why, 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        data = self._stream.read(min(len(buffer), self._limit - self.read_bytes + 1))
        self.read_bytes += len(data)
        if self.read_bytes > self._limit:
            raise _Unsafe(self._why)
        buffer[: len(data)] = data
        return len(data)


def extract(tarball: Path, dest: Path, limits: ArchiveLimits) -> tuple[Path, set[str]]:
    """Unpack `tarball` into `dest` member by member; returns the artifact's root (dest, or the one
    directory the archive wraps it in) and the names of the files unpacked. A refusal raises
    `RefusedArchive`, and what was unpacked by then stays for `remove_unpacked`."""
    packed = tarball.stat().st_size
    unpacked_limit = min(limits.max_bytes, max(limits.ratio_floor, int(packed * limits.max_ratio)))
    # tar's own headers and padding: 1 KiB per member at most, and the final 10 KiB record
    stream_limit = unpacked_limit + 1024 * (limits.max_members + 1) + 10240
    bomb = (
        f"unpacks to more than {unpacked_limit} bytes ({packed} packed; limits: {limits.max_bytes} bytes, "
        f"{limits.max_ratio:g}x compression past {limits.ratio_floor} bytes)"
    )
    wrapper: str | None = None
    names: set[str] = set()
    total = 0
    try:
        with _writing():
            dest.mkdir(parents=True, exist_ok=True)
        with tarball.open("rb") as raw, gzip.GzipFile(fileobj=raw) as unzipped:
            capped = io.BufferedReader(_Capped(unzipped, stream_limit, bomb))
            with tarfile.open(fileobj=capped, mode="r|") as archive:
                for count, member in enumerate(archive, 1):
                    if count > limits.max_members:
                        raise _Unsafe(f"more than {limits.max_members} members")
                    wrapper, name = _member_name(member, wrapper)
                    if member.isdir() and name is None:
                        continue
                    if not member.isreg() or name is None:
                        raise _Unsafe(f"{member.name!r} is a {_kind(member)}, not a regular file")
                    total += member.size
                    if total > unpacked_limit:
                        raise _Unsafe(bomb)
                    if name in names:
                        raise _Unsafe(f"{member.name!r} appears twice")
                    names.add(name)
                    root = dest / wrapper if wrapper else dest
                    with _writing():
                        root.mkdir(exist_ok=True)
                    source = archive.extractfile(member)
                    assert source is not None  # a regular file
                    with source:
                        _unpack_member(source, root / name)
    except _Unsafe as exc:
        raise RefusedArchive(f"{tarball}: refused: {exc}", reason="unsafe_archive") from exc
    except _Unwritable as exc:  # the local disk's fault (full, read-only), not the archive's
        raise RefusedArchive(f"cannot unpack {tarball} into {dest}: {exc}", reason="io") from exc
    except (OSError, EOFError, tarfile.TarError, zlib.error) as exc:
        if isinstance(exc, OSError) and exc.errno is not None:  # EIO: the disk's (BadGzipFile has none)
            raise RefusedArchive(f"cannot read {tarball}: {exc.strerror or exc}", reason="io") from exc
        raise RefusedArchive(f"{tarball}: unreadable archive: {exc}", reason="format") from exc
    return dest / wrapper if wrapper else dest, names


class _Unwritable(Exception):
    """Unpacking could not write (a full disk, a read-only one); the message is the system's."""


@contextlib.contextmanager
def _writing() -> Iterator[None]:
    """A failed write inside raises _Unwritable: told apart from a failed read of the archive."""
    try:
        yield
    except OSError as exc:
        raise _Unwritable(exc.strerror or str(exc)) from exc


def _unpack_member(source: IO[bytes], target: Path) -> None:
    """Copy a member's bytes into the new file `target`, its writes (the close's flush too) in
    `_writing`; the archive's read errors come out as they are."""
    with _writing():
        out = target.open("xb")
    try:
        while block := source.read(1 << 20):
            with _writing():
                out.write(block)
    finally:
        with _writing():
            out.close()


def _member_name(member: tarfile.TarInfo, wrapper: str | None) -> tuple[str | None, str | None]:
    """(the wrapping directory, the file's name) of a member, both plain names; refuses absolute
    names, `..`, and anything deeper than one wrapping directory (an artifact is flat)."""
    path = PurePosixPath(member.name)
    parts = [part for part in path.parts if part != "."]
    if path.is_absolute() or ".." in parts or "\\" in member.name:
        raise _Unsafe(f"{member.name!r} points outside the artifact")
    if not parts:  # "." itself
        return wrapper, None
    if len(parts) > 2 or (member.isdir() and len(parts) > 1):
        raise _Unsafe(f"{member.name!r} is nested; an artifact is flat (at most one wrapping directory)")
    if member.isdir() or len(parts) == 2:
        folder = parts[0]
        if wrapper is not None and folder != wrapper:
            raise _Unsafe(f"{member.name!r}: more than one directory ({wrapper!r} and {folder!r})")
        return folder, None if member.isdir() else parts[1]
    if wrapper is not None:
        raise _Unsafe(f"{member.name!r} lies beside the directory {wrapper!r}")
    return None, parts[0]


def read_file(
    tarball: Path, name: str, max_bytes: int, limits: ArchiveLimits = ArchiveLimits()
) -> bytes | None:
    """The bytes of the regular file `name` at the top of the .tar.gz `tarball` or in the one
    directory wrapping it, among its first `limits.max_members` members; None where there is none,
    it is larger than `max_bytes`, or `tarball` is no readable .tar.gz. Nothing is unpacked (gzip
    still inflates what it skips)."""
    try:
        with tarfile.open(tarball, "r:gz") as archive:
            for count, member in enumerate(archive, 1):
                parts = [part for part in PurePosixPath(member.name).parts if part != "."]
                if member.isreg() and 0 < len(parts) <= 2 and parts[-1] == name:
                    if member.size > max_bytes or (data := archive.extractfile(member)) is None:
                        return None
                    return data.read(max_bytes)
                if count >= limits.max_members:
                    return None
    except (OSError, EOFError, tarfile.TarError, zlib.error):
        return None
    return None


def _kind(member: tarfile.TarInfo) -> str:
    if member.issym():
        return f"symbolic link to {member.linkname!r}"
    if member.islnk():
        return f"hard link to {member.linkname!r}"
    if member.ischr() or member.isblk():
        return "device"
    if member.isfifo():
        return "named pipe"
    return "directory" if member.isdir() else f"special member (type {member.type!r})"


def remove_unpacked(dest: Path, created: bool) -> None:
    """Whatever a refused archive left: `dest` itself when we made it, else its contents."""
    if created:
        shutil.rmtree(dest, ignore_errors=True)
        return
    for child in dest.iterdir() if dest.exists() else ():
        if child.is_dir() and not child.is_symlink():
            shutil.rmtree(child, ignore_errors=True)
        else:
            child.unlink(missing_ok=True)
