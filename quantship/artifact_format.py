"""The artifact format: its versions, file names and limits, `ArtifactError`, the verified
`Artifact` and the hashes (a file's sha256, the manifest's canonical bytes a signature covers).
The bottom of `quantship.artifact`'s layers: it imports none of the others."""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from quantship.activations import ActivationHistogram, ActivationRange
from quantship.manifest_schema import SIGNATURE_KEY

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
"""The largest manifest read or written: 4 MiB. As `manifest_text` writes it, a manifest costs about
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
