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
It imports nothing else of quantship but those and `quantship.scratch` and `quantship.printable`
(leaves too), so any part may depend on it.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import io
import json
import math
import os
import re
import shutil
import stat
import sys
import tarfile
from collections.abc import Collection, Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from quantship import scratch
from quantship.activations import HISTOGRAM_BINS, ActivationHistogram, ActivationRange
from quantship.archive import ArchiveLimits, RefusedArchive, extract, remove_unpacked
from quantship.manifest_schema import SIGNATURE_KEY, manifest_problem
from quantship.printable import brief

FORMAT_VERSION = 1
REQUANTIZED_FORMAT_VERSION = 2
"""A manifest whose activation ranges include requantized outputs (a QOperator model's QLinear ops:
int8 codes, `requantized_by` set). A server that predates them reads those codes as floats: it
would count most values clipped and report a huge drift, so they are refused by version instead."""
PER_POSITION_FORMAT_VERSION = 3
"""A manifest whose shadow rule judges per position (`validation.shadow_rule.per_position`: a token
model's answer per token, padding left out). A server that predates it ignores the field and judges
whole rows, reading far more disagreement than the gate measured (a canary rolled back for nothing),
or refuses [N, seq, classes] scores: so it is refused by version instead."""
FORMAT_VERSIONS = (FORMAT_VERSION, REQUANTIZED_FORMAT_VERSION, PER_POSITION_FORMAT_VERSION)
MODEL_FILE = "model.onnx"
REFERENCE_FILE = "reference.onnx"
FP32_PRECISION = "fp32"
"""quantization.precision of an unquantized baseline (`quantship package`): no gate, no reference."""
MANIFEST_FILE = "manifest.json"


MAX_MANIFEST_BYTES = 4 * 2**20
"""The largest manifest read or written: 4 MiB. As `_manifest_text` writes it, a manifest costs about
0.7 KB per quantized activation (its range and histogram) and 0.2 KB per node (its sensitivity),
measured on GPT-2s exported as the zoo's (random weights: the count depends on depth, not width): a
48-layer one, GPT-2 XL's depth, quantizes 1,878 activations (39 a layer) and writes 1.76 MB, so
4 MiB holds some 4,500 activations with their nodes, a GPT-2 of 110 layers or more (written
indented, the 48-layer one took 2.90 MB and 4 MiB held 2,700: an 80-layer Llama's 3,693, 3.46 MB
now, took 5.70 MB, refused after calibrating). `quantize` refuses a model with too many before
calibrating (`least_manifest_bytes`). JSON swells when parsed, up to 33 times for a manifest of
nested empty lists: 4 MiB of them took 133 MB, where the 64 MiB this was took 1.75 GB, enough to
kill a server pod with a small memory limit; 4 MiB of a GPT-2's ranges, histograms and
sensitivities take 15 MB to load (3.9 times; 11 MB written indented, Python's allocations)."""

FILE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,254}")
"""How the manifest may name a file of the artifact (model.onnx, reference.onnx): a plain name in the
artifact's folder. The manifest may be hostile: no separator or `..` to step out of the folder, and
nothing a terminal or a log would act on (a newline, an escape sequence) where the name is printed."""

MAX_DOWNLOAD_BYTES = 8 * 2**30
"""The largest artifact downloaded (a .tar.gz over http(s), or an OCI pull's layers together):
8 GiB. INT8 weights barely compress, so its archive may unpack to twice that (ArchiveLimits)."""


class ArtifactError(Exception):
    """An artifact that must not be served. Permanent: retrying the same bytes cannot help.

    `reason` is a short, stable label (it becomes `quantship_model_load_failures_total{reason}`).
    """

    def __init__(self, message: str, *, reason: str) -> None:
        super().__init__(message)
        self.reason = reason

    def naming(self, scratch_paths: Iterable[Path], shown_as: str) -> ArtifactError:
        """The same refusal with `scratch_paths` (where the artifact was unpacked or downloaded, most
        specific first) named as what the user gave (`shown_as`): a temporary folder, gone by the
        time the message is read, says nothing about which artifact failed."""
        message = str(self)
        for path in scratch_paths:
            message = message.replace(str(path), shown_as)
        return ArtifactError(message, reason=self.reason)


@dataclass(frozen=True)
class Artifact:
    """A verified artifact on local disk. Construct it with `load_artifact`, never by hand."""

    root: Path
    manifest: dict[str, Any]
    signed: bool

    @property
    def model_path(self) -> Path:
        return self.root / MODEL_FILE

    @property
    def reference_path(self) -> Path | None:
        return self.root / REFERENCE_FILE if REFERENCE_FILE in self.manifest["files"] else None

    @property
    def activation_ranges(self) -> list[ActivationRange]:
        """One a tensor: a range listed twice, alike (`manifest_schema`'s `_twice_problem` refuses two
        that differ), is counted once, not twice a sample."""
        ranges = (ActivationRange.from_json(r) for r in self.manifest.get("activation_ranges", []))
        return list(dict.fromkeys(ranges))

    @property
    def activation_histograms(self) -> list[ActivationHistogram]:
        histograms = (
            ActivationHistogram.from_json(h) for h in self.manifest.get("activation_histograms", [])
        )
        return list(dict.fromkeys(histograms))

    @property
    def row_shapes(self) -> dict[str, list[int]]:
        """Each input's shape in a call of one sample of the gate's data, by input name: sizes the model
        ran at where it leaves dimensions open. Empty for an artifact made without data."""
        inputs = self.manifest.get("model", {}).get("inputs", [])
        return {
            entry["name"]: list(entry["row_shape"]) for entry in inputs if {"name", "row_shape"} <= set(entry)
        }

    @property
    def quantization(self) -> dict[str, Any]:
        return dict(self.manifest.get("quantization", {}))

    @property
    def gate(self) -> str:
        """The accuracy gate's verdict (`passed`, `failed`), or `unknown` where the manifest has none."""
        return str(self.manifest.get("validation", {}).get("gate", "unknown"))

    @property
    def gate_passed(self) -> bool:
        return self.gate == "passed"

    @property
    def baseline(self) -> bool:
        """Written by `quantship package`: the FP32 model as given, no quantization and no gate."""
        return self.manifest.get("quantization", {}).get("precision") == FP32_PRECISION

    def gate_in_words(self) -> str:
        """`gate passed`, `gate failed`, or why there is none: as the CLI prints it."""
        return "no gate (an unquantized baseline)" if self.baseline else f"gate {self.gate}"

    @property
    def digest(self) -> str:
        """sha256 of the canonical manifest: names this exact artifact (a revision id)."""
        return hashlib.sha256(canonical_bytes(self.manifest)).hexdigest()


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as stream:
        for block in iter(lambda: stream.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def canonical_bytes(manifest: Mapping[str, Any]) -> bytes:
    """The bytes a signature covers: the manifest without its signature, keys sorted, no spaces."""
    unsigned = {k: v for k, v in manifest.items() if k != SIGNATURE_KEY}
    return json.dumps(unsigned, sort_keys=True, separators=(",", ":"), allow_nan=False).encode()


# -- keys -------------------------------------------------------------------------------------


def generate_keypair(private_path: Path, public_path: Path) -> None:
    """Write a new key pair. Refuses to replace either file: a signing key overwritten by mistake
    leaves every artifact it signed unverifiable. The private key is never readable by others, not
    even between its creation and a chmod; a pair that cannot be written whole leaves neither half."""
    if private_path.resolve() == public_path.resolve():
        raise ArtifactError(f"{private_path}: the private and public keys need two files", reason="key")
    key = Ed25519PrivateKey.generate()
    private = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    public = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    _write_new_key(private_path, private, 0o600)
    try:
        _write_new_key(public_path, public, 0o644)
    except ArtifactError:
        private_path.unlink()  # half a pair is useless, and would block the rerun
        raise


def _write_new_key(path: Path, content: bytes, mode: int) -> None:
    """`content` in a file created here: an existing one, even one made a moment ago, is kept; one
    made here and not written whole (a full disk) is removed, or it would refuse every rerun."""
    try:
        descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    except FileExistsError as exc:
        raise ArtifactError(
            f"{path} exists; refusing to replace a key (remove it first)", reason="key"
        ) from exc
    except OSError as exc:
        raise ArtifactError(
            f"cannot write the key pair: {path}: {exc.strerror or exc}", reason="key"
        ) from exc
    try:
        with os.fdopen(descriptor, "wb") as stream:
            stream.write(content)
    except OSError as exc:
        path.unlink()
        raise ArtifactError(
            f"cannot write the key pair: {path}: {exc.strerror or exc}", reason="key"
        ) from exc


def load_private_key(path: Path) -> Ed25519PrivateKey:
    try:
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    except (OSError, ValueError, TypeError) as exc:
        raise ArtifactError(f"cannot read private key {path}: {exc}", reason="key") from exc
    if not isinstance(key, Ed25519PrivateKey):
        raise ArtifactError(f"{path} is not an ed25519 private key", reason="key")
    return key


def load_public_key(path: Path) -> Ed25519PublicKey:
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ArtifactError(f"cannot read public key {path}: {exc.strerror or exc}", reason="key") from exc
    try:
        key = serialization.load_pem_public_key(data)
    except ValueError as exc:  # cryptography's own words ask "Are you sure this is a public key?"
        private = b"PRIVATE KEY-----" in data
        held = "a private key: pass the public key keygen wrote with it" if private else "no PEM public key"
        raise ArtifactError(f"{path} is not a public key (it holds {held})", reason="key") from exc
    if not isinstance(key, Ed25519PublicKey):
        raise ArtifactError(f"{path} is not an ed25519 public key", reason="key")
    return key


def _public_key_id(key: Ed25519PublicKey) -> str:
    raw = key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:16]


# -- writing ----------------------------------------------------------------------------------


def _format_version(manifest: Mapping[str, Any]) -> int:
    """The oldest format that holds `manifest`: see REQUANTIZED_FORMAT_VERSION and
    PER_POSITION_FORMAT_VERSION."""
    rule = (manifest.get("validation") or {}).get("shadow_rule") or {}
    if isinstance(rule, Mapping) and rule.get("per_position"):
        return PER_POSITION_FORMAT_VERSION
    ranges = manifest.get("activation_ranges") or []
    requantized = any(isinstance(r, Mapping) and r.get("requantized_by") for r in ranges)
    return REQUANTIZED_FORMAT_VERSION if requantized else FORMAT_VERSION


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
    _check_file_names(out_dir, files)
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
        full = {"format_version": _format_version(manifest), **manifest, "files": entries}
        if sign_key is not None:
            full[SIGNATURE_KEY] = {
                "algorithm": "ed25519",
                "key_id": _public_key_id(sign_key.public_key()),
                "value": base64.b64encode(sign_key.sign(canonical_bytes(full))).decode(),
            }
        text = _manifest_text(full)
        _check_readable(out_dir, full, len(text.encode()))
        (staging / MANIFEST_FILE).write_text(text)
        staging.chmod(0o755)
        replace_dir(staging, out_dir)
    return Artifact(root=out_dir, manifest=full, signed=sign_key is not None)


def _manifest_text(manifest: Mapping[str, Any]) -> str:
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
    return len(_manifest_text(least).encode())


def _check_readable(out_dir: Path, manifest: Mapping[str, Any], size: int) -> None:
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


WRITE_SCRATCH = "write"
"""The kind of write_artifact's scratch directories beside their destination: `.NAME.write-XXXX`."""
GATE_FAILED_SUFFIX = ".gate-failed"
"""Where a failed gate's best effort goes when `-o` holds an artifact it must not replace."""


def gate_failed_path(out: Path) -> Path:
    """`<out>.gate-failed`: beside `out`, for a best effort that must not replace what `out` holds."""
    return out.with_name(out.name + GATE_FAILED_SUFFIX)


def holds_servable(path: Path) -> bool:
    """Whether `path` holds an artifact not marked `gate: failed` (a passing INT8 model, an FP32
    package): one that `verify` accepts and `serve` serves, which a failed gate must not replace."""
    if not _is_artifact_dir(path):
        return False
    validation = _read_manifest(path).get("validation")
    return not (isinstance(validation, dict) and validation.get("gate") == "failed")


def replace_dir(new: Path, target: Path) -> None:
    """Put the artifact directory `new` in place as `target`: where nothing is, in place of an empty
    directory, or in place of an older artifact (a manifest quantship reads, and nothing it does not
    list). Anything else at `target` is someone's data: refused, untouched."""
    restore_interrupted(target)
    if target.is_dir() and not target.is_symlink() and not any(target.iterdir()):
        target.rmdir()
    if not target.exists() and not target.is_symlink():
        os.rename(new, target)
        return
    old = _displaced(target)
    for ours in (target, old):
        if (ours.exists() or ours.is_symlink()) and not _is_artifact_dir(ours):
            raise ArtifactError(f"{ours} exists and is not an artifact; refusing to replace it", reason="io")
    shutil.rmtree(old, ignore_errors=True)
    try:
        os.rename(target, old)
        os.rename(new, target)
    except BaseException:  # Ctrl-C, SIGTERM (cli.Terminated) or a failure about the two renames
        if target.exists():  # not moved aside yet, or the new one in place: `old` is only litter
            shutil.rmtree(old, ignore_errors=True)
        restore_interrupted(target)
        raise
    shutil.rmtree(old, ignore_errors=True)


def restore_interrupted(target: Path) -> None:
    """Put back the artifact a replacement moved aside (`.NAME.old`) when the new one never took
    its place: killed between the two renames, `target` was gone and the good artifact hidden."""
    old = _displaced(target)
    if not target.exists() and not target.is_symlink() and _is_artifact_dir(old):
        try:
            os.rename(old, target)
        except OSError as exc:
            raise ArtifactError(
                f"cannot put back the artifact {old} moved aside: {exc.strerror or exc}", reason="io"
            ) from exc


def _displaced(target: Path) -> Path:
    """Where replace_dir moves the artifact it replaces, until the new one is in place."""
    return target.with_name(f".{target.name}.old")


def pack(artifact_dir: Path, tarball: Path) -> None:
    """A .tar.gz of a verified artifact's listed files, for object stores and HTTP servers; written
    beside `tarball` and renamed into place, so a reader never fetches half an archive."""
    if not tarball.name.endswith(ARCHIVE_SUFFIXES):  # serve, verify and fetch know archives by name
        raise ArtifactError(f"{tarball}: an artifact archive's name ends in .tar.gz or .tgz", reason="format")
    artifact = load_artifact(artifact_dir)
    staging = tarball.with_name(f".{tarball.name}.partial")
    try:
        with tarfile.open(staging, "w:gz") as archive:
            for name in [MANIFEST_FILE, *artifact.manifest["files"]]:
                archive.add(artifact.root / name, arcname=name)
        os.replace(staging, tarball)
    finally:
        staging.unlink(missing_ok=True)


# -- reading ----------------------------------------------------------------------------------


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
    manifest = _read_manifest(source)
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
                f"{path}: archive holds files the manifest does not name: {_names(unnamed)}",
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
    manifest = _read_manifest(path)
    if exact:
        _check_nothing_unlisted(path, manifest)
    contents: dict[str, bytes] = {}
    for name, entry in manifest["files"].items():
        if name in keep:
            contents[name] = _read_checked(path, name, entry)
        else:
            _check_file(path, name, entry)
    if MODEL_FILE not in manifest["files"]:
        raise ArtifactError(f"{path}: manifest lists no {MODEL_FILE}", reason="format")
    if public_key is not None:
        _check_signature(path, manifest, public_key)
    signed = isinstance(manifest.get(SIGNATURE_KEY), dict)
    return Verified(Artifact(root=path, manifest=manifest, signed=signed), contents)


def _is_artifact_dir(path: Path) -> bool:
    if path.is_symlink() or not path.is_dir():
        return False
    try:
        _check_nothing_unlisted(path, _read_manifest(path))
    except ArtifactError:
        return False
    return True


def _names(names: Iterable[str]) -> str:
    """Names found in a folder or an archive, as a line to print: whatever they hold (a newline,
    an escape sequence), and however many."""
    return brief(", ".join(names), 400)


def _check_nothing_unlisted(root: Path, manifest: Mapping[str, Any]) -> None:
    unlisted = sorted(
        entry.name for entry in root.iterdir() if entry.name not in {MANIFEST_FILE, *manifest["files"]}
    )
    if unlisted:
        raise ArtifactError(
            f"{root}: holds what its manifest does not name: {_names(unlisted)} (an artifact is "
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


def _read_manifest(root: Path) -> dict[str, Any]:
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
        manifest = parse_json(manifest_path.read_text())
    except (
        OSError,
        UnicodeDecodeError,
        ValueError,
        RecursionError,
    ) as exc:  # a JSONDecodeError is a ValueError
        raise ArtifactError(f"{manifest_path}: unreadable manifest: {exc}", reason="format") from exc
    if not isinstance(manifest, dict) or not isinstance(manifest.get("files"), dict):
        raise ArtifactError(f"{manifest_path}: manifest has no file list", reason="format")
    _check_file_names(manifest_path, manifest["files"])
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


def _check_file_names(where: Path, names: Iterable[str]) -> None:
    for name in names:
        if not FILE_NAME.fullmatch(name):
            raise ArtifactError(
                f"{where}: manifest names a file that is no plain name inside the artifact (letters, "
                f"digits, '.', '_', '-'): {brief(repr(name), 80)}",
                reason="format",
            )


def _check_file(root: Path, name: str, entry: Mapping[str, Any]) -> None:
    file = _listed_file(root, name)
    _check_size(root, name, entry, file.stat().st_size)
    try:
        sha256 = sha256_file(file)
    except OSError as exc:  # as for a kept file (`_read_at_most`): the reader's lack, not the artifact's
        raise ArtifactError(f"{file}: cannot read it: {exc.strerror or exc}", reason="io") from None
    _check_digest(root, name, entry, sha256)


def _read_checked(root: Path, name: str, entry: Mapping[str, Any]) -> bytes:
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
    file = root / name  # a plain name (_read_manifest): never one out of the artifact
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


def _check_signature(root: Path, manifest: Mapping[str, Any], public_key: Ed25519PublicKey) -> None:
    signature = manifest.get(SIGNATURE_KEY)
    if not isinstance(signature, dict) or "value" not in signature:
        raise ArtifactError(f"{root}: artifact is unsigned, but a public key is required", reason="signature")
    if signature.get("algorithm") != "ed25519":
        raise ArtifactError(
            f"{root}: unsupported signature algorithm {signature.get('algorithm')!r}", reason="signature"
        )
    try:
        public_key.verify(base64.b64decode(signature["value"]), canonical_bytes(manifest))
    except (InvalidSignature, ValueError) as exc:
        raise ArtifactError(
            f"{root}: manifest signature does not verify with the given public key", reason="signature"
        ) from exc
