"""An artifact's manifest, as written and as read: the written layout and its size, and a hostile
manifest read strictly (finite JSON, size, format version, plain file names, `manifest_schema`),
then the files it lists checked against it (regular files, sizes, sha256s, nothing unlisted)."""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import math
import os
import stat
import sys
from collections.abc import Collection, Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

from quantship.activations import HISTOGRAM_BINS, ActivationHistogram, ActivationRange
from quantship.artifact_format import (
    FILE_NAME,
    FORMAT_VERSION,
    FORMAT_VERSIONS,
    MANIFEST_FILE,
    MAX_MANIFEST_BYTES,
    PER_POSITION_FORMAT_VERSION,
    REQUANTIZED_FORMAT_VERSION,
    ArtifactError,
    sha256_file,
)
from quantship.manifest_schema import manifest_problem
from quantship.printable import brief


def format_version(manifest: Mapping[str, Any]) -> int:
    """The oldest format that holds `manifest`: see REQUANTIZED_FORMAT_VERSION and
    PER_POSITION_FORMAT_VERSION."""
    rule = (manifest.get("validation") or {}).get("shadow_rule") or {}
    if isinstance(rule, Mapping) and rule.get("per_position"):
        return PER_POSITION_FORMAT_VERSION
    ranges = manifest.get("activation_ranges") or []
    requantized = any(isinstance(r, Mapping) and r.get("requantized_by") for r in ranges)
    return REQUANTIZED_FORMAT_VERSION if requantized else FORMAT_VERSION


def manifest_text(manifest: Mapping[str, Any]) -> str:
    """A manifest as written: keys sorted, numbers finite, indented for people down to the values
    that hold no list or object, each on one line: a range or a sensitivity is a line, a histogram's
    64 counts one. json's indent=2 gave every count a line of its own: a 48-layer GPT-2's manifest
    took 2.90 MB, 1.76 MB so. Signatures and digests cover `canonical_bytes`, never this layout: a
    manifest written indented by an older quantship reads and verifies alike."""
    return _laid_out(manifest, "") + "\n"


def _laid_out(value: Any, indent: str) -> str:
    """`value` as JSON, a line a member where it holds a list or an object, else on one line."""
    inner = indent + "  "
    if isinstance(value, dict) and any(isinstance(v, dict | list | tuple) for v in value.values()):
        keyed = sorted(((_json_key(key), v) for key, v in value.items()), key=lambda member: member[0])
        members = (f"{inner}{json.dumps(key)}: {_laid_out(v, inner)}" for key, v in keyed)
        return "{\n" + ",\n".join(members) + f"\n{indent}}}"
    if isinstance(value, list | tuple) and any(isinstance(v, dict | list | tuple) for v in value):
        return "[\n" + ",\n".join(inner + _laid_out(v, inner) for v in value) + f"\n{indent}]"
    return json.dumps(value, sort_keys=True, allow_nan=False)


def _json_key(key: Any) -> str:
    """An object key as json.dumps writes it: a string as it is, a number, true, false or null as its
    JSON text (a bare 1 before a colon is no JSON)."""
    return key if isinstance(key, str) else json.dumps(key)


def least_manifest_bytes(tensors: Collection[str]) -> int:
    """The fewest bytes the activation ranges and calibration histograms of `tensors` take in a
    manifest as `write_artifact` writes it, every number at its shortest (a real one is about 1.5
    times this: 0.70 KB an activation, 0.47 KB here, on a GPT-2): what `quantize` weighs against
    MAX_MANIFEST_BYTES before its first trial."""
    least = {
        "activation_ranges": [ActivationRange(name, 0.0, 0.0, 0.0).to_json() for name in tensors],
        "activation_histograms": [
            ActivationHistogram(name, 0.0, 0.0, (0,) * HISTOGRAM_BINS, 0, 0).to_json() for name in tensors
        ],
    }
    return len(manifest_text(least).encode())


def check_readable(out_dir: Path, manifest: Mapping[str, Any], size: int) -> None:
    """Refuse to write a manifest that its readers would refuse: quantize fails naming why, rather
    than leave an artifact nothing serves."""
    if size > MAX_MANIFEST_BYTES:
        raise ArtifactError(
            f"{out_dir}: its manifest would be {size} bytes, more than the {MAX_MANIFEST_BYTES} an "
            "artifact's manifest may hold",
            reason="format",
        )
    problem = manifest_problem(manifest)
    if problem is not None:
        raise ArtifactError(
            f"{out_dir}: its manifest would be refused on reading: {problem}", reason="format"
        )


def is_artifact_dir(path: Path) -> bool:
    if path.is_symlink() or not path.is_dir():
        return False
    try:
        check_nothing_unlisted(path, read_manifest(path))
    except ArtifactError:
        return False
    return True


def printable_names(names: Iterable[str]) -> str:
    """Names found in a folder or an archive, as a line to print: whatever they hold (a newline,
    an escape sequence), and however many."""
    return brief(", ".join(names), 400)


def check_nothing_unlisted(root: Path, manifest: Mapping[str, Any]) -> None:
    unlisted = sorted(
        entry.name for entry in root.iterdir() if entry.name not in {MANIFEST_FILE, *manifest["files"]}
    )
    if unlisted:
        raise ArtifactError(
            f"{root}: holds what its manifest does not name: {printable_names(unlisted)} (an artifact is "
            "exactly the files its manifest lists; `quantship fetch file://DIR DEST` copies only those)",
            reason="format",
        )


def parse_json(text: str | bytes) -> Any:
    """JSON as a manifest may hold it: finite numbers only. No NaN or Infinity, nor a number that
    reads as infinity (1e400, or an integer of 310 digits): a signature could not cover them
    (`canonical_bytes` refuses them, a traceback in `pull` and `report`), and no count or range
    could use them."""
    return json.loads(text, parse_constant=_refuse_constant, parse_float=_finite_float, parse_int=_finite_int)


def _refuse_constant(name: str) -> None:
    raise ValueError(f"{name} is not a JSON number")


def _finite_float(literal: str) -> float:
    value = float(literal)
    if not math.isfinite(value):
        raise ValueError(f"{brief(literal, 40)} is out of a number's range (it reads as infinity)")
    return value


def _finite_int(literal: str) -> int:
    value = int(literal)  # past 4300 digits, a ValueError of its own
    if abs(value) > sys.float_info.max:
        raise ValueError(f"{brief(literal, 40)} is out of a number's range (it reads as infinity)")
    return value


def read_manifest(root: Path) -> dict[str, Any]:
    manifest_path = root / MANIFEST_FILE
    if not root.exists():
        raise ArtifactError(f"{root}: no such artifact", reason="missing")
    if root.is_file() and root.suffix == ".onnx":  # a model where its artifact was meant
        raise ArtifactError(
            f"{root}: an ONNX model, not an artifact: serve what `quantship quantize` writes, or wrap "
            f"it unquantized with `quantship package {root} --out DIR`",
            reason="format",
        )
    if not manifest_path.is_file():
        raise ArtifactError(f"{root}: not an artifact (no {MANIFEST_FILE})", reason="format")
    if manifest_path.stat().st_size > MAX_MANIFEST_BYTES:
        raise ArtifactError(f"{manifest_path}: larger than {MAX_MANIFEST_BYTES} bytes", reason="format")
    try:
        text = manifest_path.read_text()
    except (OSError, UnicodeDecodeError) as exc:
        raise ArtifactError(f"{manifest_path}: unreadable manifest: {exc}", reason="format") from exc
    return parse_manifest(text, manifest_path)


def parse_manifest(text: str, manifest_path: Path) -> dict[str, Any]:
    """The manifest `text`, read from `manifest_path`, as `read_manifest` accepts one (its file
    list's names, format version and `manifest_schema`), or ArtifactError naming `manifest_path`."""
    try:
        manifest = parse_json(text)
    except (ValueError, RecursionError) as exc:  # a JSONDecodeError is a ValueError
        raise ArtifactError(f"{manifest_path}: unreadable manifest: {exc}", reason="format") from exc
    if not isinstance(manifest, dict) or not isinstance(manifest.get("files"), dict):
        raise ArtifactError(f"{manifest_path}: manifest has no file list", reason="format")
    check_file_names(manifest_path, manifest["files"])
    version = manifest.get("format_version")
    if type(version) is not int or version not in FORMAT_VERSIONS:  # True == 1, but is no version
        readable = " and ".join(map(str, FORMAT_VERSIONS))
        raise ArtifactError(
            f"{manifest_path}: format version {version!r}, this quantship reads {readable}", reason="format"
        )
    problem = manifest_problem(manifest)
    if problem is not None:
        raise ArtifactError(f"{manifest_path}: {problem}", reason="format")
    return manifest


def check_file_names(where: Path, names: Iterable[str]) -> None:
    for name in names:
        if not FILE_NAME.fullmatch(name):
            raise ArtifactError(
                f"{where}: manifest names a file that is no plain name inside the artifact (letters, "
                f"digits, '.', '_', '-'): {brief(repr(name), 80)}",
                reason="format",
            )


def check_file(root: Path, name: str, entry: Mapping[str, Any]) -> None:
    file = _listed_file(root, name)
    _check_size(root, name, entry, file.stat().st_size)
    try:
        sha256 = sha256_file(file)
    except OSError as exc:  # as for a kept file (`_read_at_most`): the reader's lack, not the artifact's
        raise ArtifactError(f"{file}: cannot read it: {exc.strerror or exc}", reason="io") from None
    _check_digest(root, name, entry, sha256)


def read_checked(root: Path, name: str, entry: Mapping[str, Any]) -> bytes:
    """The bytes of a listed file, read once and checked against the manifest: the very bytes its
    user gets. The size on disk is checked before reading, so memory is asked for what is there,
    never for what a manifest says (10**15 bytes: a MemoryError); the read stops one byte past it,
    for a file still growing."""
    file = _listed_file(root, name)
    with _regular_file(file) as (stream, size):
        _check_size(root, name, entry, size)
        content = stream.read(size + 1)
    if len(content) > entry["size"]:  # read no further: how much larger is not known here
        raise ArtifactError(
            f"{root}: {name} is larger than the {entry['size']} bytes the manifest says (tampered?)",
            reason="hash_mismatch",
        )
    _check_size(root, name, entry, len(content))
    _check_digest(root, name, entry, hashlib.sha256(content).hexdigest())
    return content


def _listed_file(root: Path, name: str) -> Path:
    file = root / name  # a plain name (read_manifest): never one out of the artifact
    try:
        mode = file.stat().st_mode  # never opened here: a named pipe would wait for a writer
    except OSError:  # nothing there, or a link to nothing
        raise ArtifactError(
            f"{root}: {name} is listed in the manifest but missing", reason="missing"
        ) from None
    if not stat.S_ISREG(mode):
        raise ArtifactError(
            f"{root}: {name} is listed in the manifest but is a {_file_kind(mode)}, not a regular file",
            reason="format",
        )
    return file


def _file_kind(mode: int) -> str:
    if stat.S_ISDIR(mode):
        return "directory"
    if stat.S_ISFIFO(mode):
        return "named pipe"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "device"
    return "socket" if stat.S_ISSOCK(mode) else "special file"


def _check_size(root: Path, name: str, entry: Mapping[str, Any], size: int) -> None:
    if size != entry.get("size"):
        raise ArtifactError(
            f"{root}: {name} is {size} bytes, manifest says {entry.get('size')} (tampered?)",
            reason="hash_mismatch",
        )


def _check_digest(root: Path, name: str, entry: Mapping[str, Any], sha256: str) -> None:
    if sha256 != entry.get("sha256"):
        raise ArtifactError(
            f"{root}: {name} does not match its sha256 in the manifest (tampered?)", reason="hash_mismatch"
        )


@contextlib.contextmanager
def _regular_file(file: Path) -> Iterator[tuple[io.BufferedReader, int]]:
    """`file` open to read, and its size: refused unless a regular file (one swapped for a FIFO
    since it was checked must not block the read, nor a link to /dev/zero fill memory). An
    OSError, opening or reading, is an ArtifactError."""
    try:
        descriptor = os.open(file, os.O_RDONLY | os.O_NONBLOCK)
    except OSError as exc:
        raise ArtifactError(f"{file}: cannot read it: {exc.strerror or exc}", reason="io") from None
    with os.fdopen(descriptor, "rb") as stream:
        try:
            status = os.fstat(descriptor)
            if not stat.S_ISREG(status.st_mode):
                raise ArtifactError(f"{file}: not a regular file", reason="format")
            yield stream, status.st_size
        except OSError as exc:
            raise ArtifactError(f"reading {file}: {exc.strerror or exc}", reason="io") from None
