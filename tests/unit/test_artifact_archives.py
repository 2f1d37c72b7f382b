"""Artifact archives from outside are hostile until checked: crafted .tar.gz files are refused.

Each crafted archive holds the real sample artifact's files and then one hostile member, so every
refusal also proves that what was already unpacked is gone: after a refusal the directory it was
unpacked into does not exist. Sizes use the real `ArchiveLimits` defaults where a test can afford
it (the gzip bombs); the count cap is shown with its default too.
"""

from __future__ import annotations

import io
import subprocess
import sys
import tarfile
from collections.abc import Callable
from pathlib import Path

import pytest

from quantship import artifact
from quantship.archive import ArchiveLimits

MiB = 2**20


class Zeros(io.RawIOBase):
    """`size` zero bytes, produced as read: a bomb without the memory."""

    def __init__(self, size: int) -> None:
        self.left = size

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: memoryview) -> int:  # type: ignore[override]
        count = min(len(buffer), self.left)
        buffer[:count] = b"\0" * count
        self.left -= count
        return count


def info(name: str, kind: bytes = tarfile.REGTYPE, size: int = 0, link: str = "") -> tarfile.TarInfo:
    member = tarfile.TarInfo(name)
    member.type, member.size, member.linkname, member.mode = kind, size, link, 0o644
    return member


Extra = Callable[[tarfile.TarFile], None]


def craft(source: Path, tarball: Path, extra: Extra | None = None, prefix: str = "") -> Path:
    """The artifact's files (under `prefix`), then whatever `extra` adds."""
    with tarfile.open(tarball, "w:gz") as archive:
        for file in sorted(source.iterdir()):
            archive.add(file, arcname=prefix + file.name)
        if extra is not None:
            extra(archive)
    return tarball


def adding(member: tarfile.TarInfo, data: bytes = b"") -> Extra:
    def add(archive: tarfile.TarFile) -> None:
        member.size = len(data) if member.isreg() else 0
        archive.addfile(member, io.BytesIO(data) if member.isreg() else None)

    return add


def refused(tarball: Path, unpack_to: Path) -> str:
    with pytest.raises(artifact.ArtifactError) as caught:
        artifact.load_artifact(tarball, extract_to=unpack_to)
    assert not unpack_to.exists(), f"left behind: {sorted(p.name for p in unpack_to.rglob('*'))}"
    return f"{caught.value.reason}: {caught.value}"


def test_a_packed_artifact_unpacks_and_verifies(artifact_copy: Path, tmp_path: Path) -> None:
    artifact.pack(artifact_copy, tmp_path / "a.tar.gz")

    loaded = artifact.load_artifact(tmp_path / "a.tar.gz", extract_to=tmp_path / "out")

    assert loaded.root == tmp_path / "out"
    assert loaded.digest == artifact.load_artifact(artifact_copy).digest


def test_an_archive_of_the_artifact_directory_unpacks_under_it(artifact_copy: Path, tmp_path: Path) -> None:
    def directory(archive: tarfile.TarFile) -> None:
        archive.addfile(info("digits", tarfile.DIRTYPE))

    tarball = tmp_path / "a.tar.gz"
    with tarfile.open(tarball, "w:gz") as archive:
        directory(archive)
        for file in sorted(artifact_copy.iterdir()):
            archive.add(file, arcname=f"./digits/{file.name}")

    loaded = artifact.load_artifact(tarball, extract_to=tmp_path / "out")

    assert loaded.root == tmp_path / "out" / "digits"


@pytest.mark.parametrize(
    ("member", "complaint"),
    [
        (info("../escaped.txt"), "'../escaped.txt' points outside the artifact"),
        (info("sub/../../escaped.txt"), "points outside the artifact"),
        (info("/tmp/absolute.txt"), "'/tmp/absolute.txt' points outside the artifact"),
        (info("evil", tarfile.SYMTYPE, link="/etc/passwd"), "symbolic link to '/etc/passwd'"),
        (info("model-link", tarfile.SYMTYPE, link="model.onnx"), "symbolic link to 'model.onnx'"),
        (info("hard", tarfile.LNKTYPE, link="/etc/shadow"), "hard link to '/etc/shadow'"),
        (info("null", tarfile.CHRTYPE), "is a device"),
        (info("disk", tarfile.BLKTYPE), "is a device"),
        (info("pipe", tarfile.FIFOTYPE), "is a named pipe"),
        (info("a/b/c.txt"), "is nested"),
    ],
    ids=lambda value: value.name if isinstance(value, tarfile.TarInfo) else None,
)
def test_a_hostile_member_is_refused_and_nothing_stays_on_disk(
    artifact_copy: Path, tmp_path: Path, member: tarfile.TarInfo, complaint: str
) -> None:
    tarball = craft(artifact_copy, tmp_path / "a.tar.gz", adding(member, b"owned\n"))

    message = refused(tarball, tmp_path / "out")

    assert message.startswith("unsafe_archive: ") and complaint in message, message
    assert not (tmp_path / "escaped.txt").exists() and not Path("/tmp/absolute.txt").exists()


def test_a_file_the_manifest_does_not_name_is_refused(artifact_copy: Path, tmp_path: Path) -> None:
    tarball = craft(artifact_copy, tmp_path / "a.tar.gz", adding(info("run-me.sh"), b"#!/bin/sh\n"))

    message = refused(tarball, tmp_path / "out")

    assert message == f"unsafe_archive: {tarball}: archive holds files the manifest does not name: run-me.sh"


def test_a_member_twice_is_refused(artifact_copy: Path, tmp_path: Path) -> None:
    tarball = craft(artifact_copy, tmp_path / "a.tar.gz", adding(info("model.onnx"), b"swapped"))

    assert "'model.onnx' appears twice" in refused(tarball, tmp_path / "out")


def test_a_file_beside_the_wrapping_directory_is_refused(artifact_copy: Path, tmp_path: Path) -> None:
    tarball = craft(artifact_copy, tmp_path / "a.tar.gz", adding(info("other/x")), prefix="digits/")

    assert "more than one directory ('digits' and 'other')" in refused(tarball, tmp_path / "out")


def test_more_members_than_the_cap_are_refused(artifact_copy: Path, tmp_path: Path) -> None:
    def many(archive: tarfile.TarFile) -> None:
        for n in range(ArchiveLimits.max_members):
            adding(info(f"f{n}"), b"x")(archive)

    tarball = craft(artifact_copy, tmp_path / "a.tar.gz", many)

    assert f"more than {ArchiveLimits.max_members} members" in refused(tarball, tmp_path / "out")


def test_a_gzip_bomb_is_refused_before_it_fills_the_disk(artifact_copy: Path, tmp_path: Path) -> None:
    def bomb(archive: tarfile.TarFile) -> None:
        archive.addfile(info("reference.onnx.bak", size=200 * MiB), Zeros(200 * MiB))

    tarball = craft(artifact_copy, tmp_path / "a.tar.gz", bomb)
    assert tarball.stat().st_size < 2 * MiB  # ~1000x: far past ArchiveLimits.max_ratio

    message = refused(tarball, tmp_path / "out")

    assert message.startswith("unsafe_archive: ") and "unpacks to more than" in message, message


def test_a_bomb_in_a_pax_header_is_stopped_in_the_stream(artifact_copy: Path, tmp_path: Path) -> None:
    """tarfile reads a pax header whole, before any member: the cap on the stream stops it."""
    member = info("x")
    member.pax_headers = {"comment": "0" * (100 * MiB)}
    tarball = tmp_path / "a.tar.gz"
    with tarfile.open(tarball, "w:gz", format=tarfile.PAX_FORMAT) as archive:
        archive.addfile(member, io.BytesIO(b""))
    assert tarball.stat().st_size < MiB

    message = refused(tarball, tmp_path / "out")

    assert message.startswith("unsafe_archive: ") and "unpacks to more than" in message, message


def test_the_limits_are_the_callers_to_tighten(artifact_copy: Path, tmp_path: Path) -> None:
    tarball = artifact_copy.parent / "a.tar.gz"
    artifact.pack(artifact_copy, tarball)
    size = sum(p.stat().st_size for p in artifact_copy.iterdir())

    with pytest.raises(artifact.ArtifactError, match="unpacks to more than"):
        artifact.load_artifact(tarball, extract_to=tmp_path / "out", limits=ArchiveLimits(max_bytes=size - 1))
    assert not (tmp_path / "out").exists()
    loaded = artifact.load_artifact(
        tarball, extract_to=tmp_path / "out", limits=ArchiveLimits(max_bytes=size)
    )
    assert loaded.root == tmp_path / "out"


def test_a_tampered_file_in_an_archive_leaves_nothing_either(artifact_copy: Path, tmp_path: Path) -> None:
    with (artifact_copy / "model.onnx").open("r+b") as model:
        model.seek(100)
        model.write(b"\x00\x01\x02")
    tarball = craft(artifact_copy, tmp_path / "a.tar.gz")

    message = refused(tarball, tmp_path / "out")
    assert "does not match its sha256" in message
    # named by the archive the user gave, not the folder it was unpacked into (gone once read)
    assert f"{tarball}: model.onnx" in message and str(tmp_path / "out") not in message


def test_a_truncated_archive_is_unreadable_not_unsafe(artifact_copy: Path, tmp_path: Path) -> None:
    tarball = craft(artifact_copy, tmp_path / "a.tar.gz")
    tarball.write_bytes(tarball.read_bytes()[: tarball.stat().st_size // 2])

    assert refused(tarball, tmp_path / "out").startswith("format: ")


def test_an_archive_is_not_unpacked_over_files(artifact_copy: Path, tmp_path: Path) -> None:
    tarball = craft(artifact_copy, tmp_path / "a.tar.gz")
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "keep.txt").write_text("mine")

    with pytest.raises(artifact.ArtifactError, match="not empty"):
        artifact.load_artifact(tarball, extract_to=tmp_path / "out")
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["keep.txt"]


def test_a_disk_that_refuses_a_write_while_unpacking_is_an_io_error_not_the_archives(
    artifact_copy: Path, tmp_path: Path
) -> None:
    """A full disk (here a file size limit below model.onnx's, in a process of its own) was an
    "unreadable archive", reason format: a server's load failures blamed a good artifact."""
    tarball = craft(artifact_copy, tmp_path / "a.tar.gz")
    limit = (artifact_copy / artifact.MODEL_FILE).stat().st_size // 2
    code = (
        "import resource, signal, sys\n"
        "from pathlib import Path\n"
        "from quantship import artifact\n"
        f"resource.setrlimit(resource.RLIMIT_FSIZE, ({limit}, {limit}))\n"
        "signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # EFBIG, not the signal's kill\n"
        "try:\n"
        "    artifact.load_artifact(Path(sys.argv[1]), extract_to=Path(sys.argv[2]))\n"
        "except artifact.ArtifactError as error:\n"
        "    print(f'{error.reason}: {error}')\n"
    )
    out = tmp_path / "out"
    run = subprocess.run(
        [sys.executable, "-c", code, str(tarball), str(out)], capture_output=True, text=True, timeout=60
    )

    assert run.stdout == f"io: cannot unpack {tarball} into {out}: File too large\n", run.stderr
    assert not out.exists()
