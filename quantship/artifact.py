"""The quantship artifact: a directory (or .tar.gz of one) holding the INT8 model, its FP32
reference and a manifest that makes both verifiable.

Every part reads artifacts through this module: the quantizer writes them (`write_artifact`),
`quantship verify` and the operator's fetch step load them (`load_artifact`), which checks every
file's sha256 and, when a public key is configured, the manifest's ed25519 signature; the server
loads them with `load_verified`, which also hands over the bytes it hashed of the files it serves.
A .tar.gz from outside is hostile until checked: `quantship.archive` unpacks it within its limits,
and this module refuses anything in it the manifest does not name; a refused archive leaves nothing
on disk. What a manifest may hold is `quantship.manifest_schema`'s, and the activation ranges and
histograms it lists are `quantship.activations`'.

Its parts, in layers: this module (writing, loading, archives) over `artifact_dirs` (putting an
artifact in place atomically), over `artifact_manifest` (the manifest as written and as read, and
the listed files checked against it) and `artifact_keys` (ed25519 keys, signatures), over
`artifact_format` (the format's names and limits, `ArtifactError`, `Artifact`, hashes). Artifact,
ArtifactError and the file names are importable from here, as most importers use them.
They import nothing else of quantship but those and `quantship.scratch` and `quantship.printable`
(leaves too), so any part may depend on them.
"""

from __future__ import annotations

import base64
import contextlib
import os
import shutil
import stat
import tarfile
from collections.abc import Callable, Collection, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from quantship import scratch
from quantship.archive import ArchiveLimits, RefusedArchive, extract, read_file, remove_unpacked
from quantship.artifact_dirs import replace_dir
from quantship.artifact_format import (
    MANIFEST_FILE,
    MAX_DOWNLOAD_BYTES,
    MAX_MANIFEST_BYTES,
    MODEL_FILE,
    Artifact,
    ArtifactError,
    canonical_bytes,
    sha256_file,
)
from quantship.artifact_format import REFERENCE_FILE as REFERENCE_FILE  # named here beside MODEL_FILE
from quantship.artifact_keys import check_signature, public_key_id
from quantship.artifact_manifest import (
    check_file,
    check_file_names,
    check_nothing_unlisted,
    check_readable,
    format_version,
    manifest_text,
    parse_manifest,
    printable_names,
    read_checked,
    read_manifest,
)
from quantship.manifest_schema import SIGNATURE_KEY


def write_artifact(
    out_dir: Path,
    files: Mapping[str, Path],
    manifest: Mapping[str, Any],
    *,
    sign_key: Ed25519PrivateKey | None = None,
) -> Artifact:
    """Write `files` (artifact name -> source path) and a manifest to `out_dir`, all or nothing.

    Everything is written to a sibling scratch directory that is renamed into place at the end,
    so a reader never sees a half-written artifact and a failure leaves nothing behind (what a
    kill -9 leaves, the next write sweeps).
    """
    if MODEL_FILE not in files:
        raise ArtifactError(f"an artifact needs {MODEL_FILE}", reason="format")
    out_dir = out_dir.resolve()
    check_file_names(out_dir, files)
    parent = out_dir.parent
    # Built in a scratch directory beside out_dir (scratch.beside): one that a killed write left
    # (kill -9 mid-copy: an artifact's size, forever) is swept by the next.
    building = contextlib.ExitStack()
    try:
        staging = building.enter_context(scratch.beside(out_dir, WRITE_SCRATCH))
    except OSError as exc:
        raise ArtifactError(f"cannot write to {parent}: {exc.strerror or exc}", reason="io") from exc
    with building:
        entries: dict[str, dict[str, Any]] = {}
        for name, source in files.items():
            shutil.copyfile(source, staging / name)
            entries[name] = {"sha256": sha256_file(staging / name), "size": (staging / name).stat().st_size}
        full = {"format_version": format_version(manifest), **manifest, "files": entries}
        if sign_key is not None:
            full[SIGNATURE_KEY] = {
                "algorithm": "ed25519",
                "key_id": public_key_id(sign_key.public_key()),
                "value": base64.b64encode(sign_key.sign(canonical_bytes(full))).decode(),
            }
        text = manifest_text(full)
        check_readable(out_dir, full, len(text.encode()))
        (staging / MANIFEST_FILE).write_text(text)
        staging.chmod(0o755)
        replace_dir(staging, out_dir)
    return Artifact(root=out_dir, manifest=full, signed=sign_key is not None)


WRITE_SCRATCH = "write"
"""The kind of write_artifact's scratch directories beside their destination: `.NAME.write-XXXX`."""


@dataclass(frozen=True)
class Packed:
    """What `pack` wrote: `path`, the archive (the file TARBALL names when it is a link), and
    whether it `replaced` an older artifact archive there."""

    path: Path
    replaced: bool


def pack(artifact_dir: Path, tarball: Path, *, verified: Callable[[Artifact], None] | None = None) -> Packed:
    """A .tar.gz of a verified artifact's listed files, for object stores and HTTP servers; written
    beside `tarball` and renamed into place, so a reader never fetches half an archive. As
    `quantize -o` replaces an older artifact, this replaces an older artifact archive, and a link to
    one replaces the archive it names (the link stays); anything else at `tarball`, or that a link
    there names, is refused, untouched. `verified` is handed the artifact once verified, before the
    archive is written."""
    if not tarball.name.endswith(ARCHIVE_SUFFIXES):  # serve, verify and fetch know archives by name
        raise ArtifactError(f"{tarball}: an artifact archive's name ends in .tar.gz or .tgz", reason="format")
    target = _link_followed(tarball) if tarball.is_symlink() else tarball
    replacing = target.exists()
    if replacing and not _is_artifact_archive(target):
        named = tarball if target == tarball else f"{tarball} (a link to {target})"
        raise ArtifactError(
            f"{named} exists and is not an artifact archive; refusing to replace it", reason="io"
        )
    artifact = load_artifact(artifact_dir)
    if verified is not None:
        verified(artifact)
    # A scratch directory of its own: two packs to one TARBALL shared `.NAME.partial`, and the one
    # that said "wrote" left the other's archive, which said "cannot write".
    with scratch.beside(target, PACK_SCRATCH) as folder:
        staging = folder / target.name
        with tarfile.open(staging, "w:gz") as archive:
            for name in [MANIFEST_FILE, *artifact.manifest["files"]]:
                archive.add(artifact.root / name, arcname=name)
        os.replace(staging, target)
    return Packed(target, replacing)


def _link_followed(link: Path) -> Path:
    """The file the link `link` names (`current.tar.gz -> v3.tar.gz`), which pack replaces if it is
    an older artifact archive, as `quantize -o current` replaces the artifact its link names; a link
    to nothing, or one that never ends, is refused before any work."""
    try:
        target = link.resolve()
    except (OSError, RuntimeError) as exc:  # a loop: RuntimeError before Python 3.13
        raise ArtifactError(
            f"{link} is a link that cannot be followed ({exc}); refusing it", reason="io"
        ) from exc
    if not target.exists():
        raise ArtifactError(
            f"{link} is a link to {target}, which does not exist; refusing to write through it", reason="io"
        )
    refuse_inside_an_artifact(target)
    return target


PACK_SCRATCH = "pack"
"""The kind of pack's scratch directories beside their archive: `.NAME.pack-XXXX`."""


def _is_artifact_archive(tarball: Path) -> bool:
    """Whether `tarball` is a regular .tar.gz whose manifest.json (at its top or in its one wrapping
    directory) is a manifest quantship reads: what `pack` may replace. A file named manifest.json is
    not enough: a gzipped `docker save` holds one at its top, and pack replaced it."""
    if tarball.is_symlink() or not tarball.is_file():
        return False
    data = read_file(tarball, MANIFEST_FILE, MAX_MANIFEST_BYTES)
    if data is None:
        return False
    try:
        parse_manifest(data.decode(), tarball / MANIFEST_FILE)
    except (UnicodeDecodeError, ArtifactError):
        return False
    return True


def load_artifact(
    path: Path,
    *,
    public_key: Ed25519PublicKey | None = None,
    extract_to: Path | None = None,
    limits: ArchiveLimits = ArchiveLimits(),
) -> Artifact:
    """Verify and open an artifact directory or .tar.gz.

    Refuses, with an ArtifactError naming the problem: a missing or unreadable manifest, an unknown
    format version, a listed file that is missing or whose size or sha256 differ, and, when a
    public key is given, a missing or invalid signature; a directory holding anything its manifest
    does not name (onnxruntime would read an unlisted file a model names as external data, unverified).
    A tarball is unpacked to `extract_to`
    (which must not exist yet, or be empty) within `limits`, and refused when it holds anything but
    regular files the manifest names; a refused tarball leaves nothing at `extract_to`. Without
    `extract_to`, it goes to a fresh scratch directory that outlives the call (`scratch.sweep` removes
    it once this process is gone): `opened` removes it on leaving its block.
    """
    return load_verified(path, public_key=public_key, extract_to=extract_to, limits=limits).artifact


@dataclass(frozen=True)
class Verified:
    """A verified artifact and the very bytes of the files it was asked to keep, as read and hashed.

    Whoever serves the artifact builds from `contents`, never by opening a path again: a file swapped
    after hashing (a rerun `quantize -o`, or anyone who can write the folder) then never gets in.
    `take` hands a file's bytes over and forgets them, so they are freed once their user is done."""

    artifact: Artifact
    contents: dict[str, bytes]

    def take(self, name: str) -> bytes | None:
        """The kept bytes of `name` (None where the manifest lists no such file), released here."""
        return self.contents.pop(name, None)


def load_verified(
    path: Path,
    *,
    keep: Collection[str] = (),
    public_key: Ed25519PublicKey | None = None,
    extract_to: Path | None = None,
    limits: ArchiveLimits = ArchiveLimits(),
) -> Verified:
    """`load_artifact`, keeping in memory the listed files named in `keep`: each is read once, and
    those bytes are the ones hashed against the manifest (whose signature is checked over the
    manifest as read). Files not kept are hashed as they stream by."""
    path = Path(path)
    kept = frozenset(keep)
    if not is_archive(path):
        return _verify(path, public_key, kept, exact=True)
    if extract_to is None:
        folder = scratch.create(scratch.ARTIFACT_PREFIX)
        try:
            return _unpack_and_verify(path, folder / UNPACKED, public_key, limits, kept)
        except BaseException:
            scratch.remove(folder)
            raise
    return _unpack_and_verify(path, Path(extract_to), public_key, limits, kept)


def copy_listed(
    source: Path,
    dest: Path,
    *,
    public_key: Ed25519PublicKey | None = None,
    max_bytes: int = MAX_DOWNLOAD_BYTES,
) -> Artifact:
    """Copy the artifact directory `source` to `dest` (which must not exist), then verify the copy.

    Only the manifest and the files it lists are read, each a regular file (a mounted ConfigMap's
    links to one count) of the listed size, copied no further than that size: an unlisted file, a
    link to /dev/zero or a file still growing cannot reach `dest`. Other entries in `source` (a
    claim's lost+found) are left alone."""
    manifest = read_manifest(source)
    listed = manifest["files"]
    if sum(entry["size"] for entry in listed.values()) > max_bytes:
        raise ArtifactError(f"{source}: the listed files hold more than {max_bytes} bytes", reason="format")
    dest.mkdir()
    try:
        for name in [MANIFEST_FILE, *listed]:
            size = listed[name]["size"] if name in listed else MAX_MANIFEST_BYTES
            _copy_at_most(source / name, dest / name, size, exact=name in listed)
        return load_artifact(dest, public_key=public_key)
    except BaseException:
        shutil.rmtree(dest, ignore_errors=True)
        raise


def _copy_at_most(source: Path, target: Path, size: int, *, exact: bool) -> None:
    try:
        descriptor = os.open(source, os.O_RDONLY | os.O_NONBLOCK)  # a FIFO must not wait for a writer
    except FileNotFoundError:
        raise ArtifactError(f"{source}: listed in the manifest but missing", reason="missing") from None
    except OSError as exc:
        raise ArtifactError(f"{source}: cannot read it: {exc.strerror or exc}", reason="io") from None
    try:
        if not stat.S_ISREG(os.fstat(descriptor).st_mode):
            raise ArtifactError(f"{source}: not a regular file", reason="format")
        copied = 0
        with target.open("wb") as out:
            while block := os.read(descriptor, min(1 << 20, size + 1 - copied)):
                copied += len(block)
                if copied > size:
                    break
                out.write(block)
    except OSError as exc:
        raise ArtifactError(f"copying {source}: {exc.strerror or exc}", reason="io") from None
    finally:
        os.close(descriptor)
    if copied > size or (exact and copied != size):
        raise ArtifactError(
            f"{source}: {'larger' if copied > size else 'smaller'} than the manifest says (tampered?)",
            reason="hash_mismatch",
        )


ARCHIVE_SUFFIXES = (".tar.gz", ".tgz")
"""How an artifact archive is named: what `serve`, `verify` and `fetch` tell from a directory by."""


UNPACKED = "artifact"
"""The folder inside a scratch directory that a tarball is unpacked to (beside its owner file)."""


def refuse_inside_an_artifact(out: Path) -> None:
    """Refuse to write `out` inside an artifact's directory: a file or folder its manifest does not
    list makes the artifact unverifiable, and every server then refuses it (`report -o ART/r.html`)."""
    for folder in out.absolute().parents:
        if (folder / MANIFEST_FILE).is_file():
            raise ArtifactError(
                f"{out} is inside the artifact {folder}: anything its manifest does not list makes it "
                "unverifiable; write it elsewhere",
                reason="format",
            )


def is_archive(path: Path) -> bool:
    return path.is_file() and path.name.endswith(ARCHIVE_SUFFIXES)


@contextlib.contextmanager
def opened(path: Path, *, public_key: Ed25519PublicKey | None = None) -> Iterator[Artifact]:
    """`load_artifact`, for reading the files while inside the block: a tarball is unpacked into a
    scratch directory removed on leaving, whether it verified or not."""
    path = Path(path)
    if not is_archive(path):
        yield load_artifact(path, public_key=public_key)
        return
    with scratch.directory(scratch.ARTIFACT_PREFIX) as folder:
        yield load_artifact(path, public_key=public_key, extract_to=folder / UNPACKED)


def _unpack_and_verify(
    path: Path,
    dest: Path,
    public_key: Ed25519PublicKey | None,
    limits: ArchiveLimits,
    keep: frozenset[str] = frozenset(),
) -> Verified:
    created = not dest.exists()
    if dest.is_dir() and any(dest.iterdir()):
        raise ArtifactError(f"{dest}: not empty; refusing to unpack {path} into it", reason="io")
    try:
        try:
            root, unpacked = extract(path, dest, limits)
        except RefusedArchive as exc:
            raise ArtifactError(str(exc), reason=exc.reason) from exc
        if MANIFEST_FILE not in unpacked:
            raise ArtifactError(f"{path}: archive holds no {MANIFEST_FILE}", reason="format")
        try:
            loaded = _verify(root, public_key, keep)
        except ArtifactError as exc:
            raise exc.naming([root, dest], str(path)) from None
        unnamed = sorted(unpacked - {MANIFEST_FILE, *loaded.artifact.manifest["files"]})
        if unnamed:
            raise ArtifactError(
                f"{path}: archive holds files the manifest does not name: {printable_names(unnamed)}",
                reason="unsafe_archive",
            )
        return loaded
    except BaseException:
        remove_unpacked(dest, created)
        raise


def _verify(
    path: Path, public_key: Ed25519PublicKey | None, keep: frozenset[str], *, exact: bool = False
) -> Verified:
    """`exact`: refuse anything in `path` the manifest does not list (checked before any hashing).
    `keep`: the listed files to read into memory, hashing those very bytes."""
    manifest = read_manifest(path)
    if exact:
        check_nothing_unlisted(path, manifest)
    contents: dict[str, bytes] = {}
    for name, entry in manifest["files"].items():
        if name in keep:
            contents[name] = read_checked(path, name, entry)
        else:
            check_file(path, name, entry)
    if MODEL_FILE not in manifest["files"]:
        raise ArtifactError(f"{path}: manifest lists no {MODEL_FILE}", reason="format")
    if public_key is not None:
        check_signature(path, manifest, public_key)
    signed = isinstance(manifest.get(SIGNATURE_KEY), dict)
    return Verified(Artifact(root=path, manifest=manifest, signed=signed), contents)
