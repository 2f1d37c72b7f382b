"""`quantship quantize-job`: the container of spec.quantize's Job, runnable anywhere.

It fetches the inputs (file://, pvc:// under --pvc-root, http(s)://), runs `quantship quantize`
(the caller passes it in: the CLI's own command, with the flags the operator wrote), and when the
gate passed publishes the artifact: copied to a pvc:// (or file://) target through a scratch
directory and a rename, or pushed to an oci:// target with `quantship.oci` and named by digest
(pushed to the Job's own unique tag first, `quantship.UNIQUE_TAG_ENV` or --unique-tag, so that
digest stays tagged after the next Job moves the target's tag).
Its verdict goes, as one JSON object, to --result-file: in the Job that is the container's
termination message, which the operator reads from the pod's status. The verdict:
`{"gate": "passed"|"failed", "metric", "value", "threshold", "artifact"}`, or `{"error": ...}`
when something failed before a verdict. The CLI exits 0 on a passed gate, 1 on a failed one.
"""

from __future__ import annotations

import contextlib
import glob
import json
import math
import os
import re
import shutil
import tempfile
import time
import urllib.parse
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from quantship import artifact, artifact_dirs, oci
from quantship.operator import crd_uris, fetch

if TYPE_CHECKING:
    from quantship.quantize.gate_metrics import MetricSpec

MAX_MESSAGE = 4096
"""Kubernetes keeps at most this many bytes of a termination message."""
Quantize = Callable[[Path, Path, Path | None, Path], None]
"""(model, calibration, evaluation or None, out): runs `quantship quantize`, which writes the
artifact (marked gate: failed when the gate failed) to out."""


class JobError(Exception):
    """An input or the target cannot be used: no verdict."""


@dataclass(frozen=True)
class Verdict:
    passed: bool
    metric: str | None
    value: float | None
    threshold: float | None
    artifact: str | None
    """The published artifact's URI (an oci:// one pinned by digest); None when the gate failed."""
    int8_flags: tuple[str, ...] | None = None
    """The int8 CPU features of the machine the gate ran on (the manifest's validation.hardware)."""
    meaning: str | None = None
    """What the metric's number is (top1_accuracy's is a relative loss, not an accuracy); None from
    a Job of an older quantship."""
    higher_is_better: bool | None = None
    """Whether the threshold is the least value the gate accepts, or the most."""
    shadow_disagreement: float | None = None
    """The share of evaluation rows the server's shadow SLI rule counts as disagreeing with FP32 (the
    manifest's validation.shadow_disagreement): what a canary's accuracy delta should read on traffic
    like the evaluation data. None from an older quantship, or where no rule could judge the rows."""

    def to_json(self) -> dict[str, Any]:
        return {
            "gate": "passed" if self.passed else "failed",
            "metric": self.metric,
            "value": self.value,
            "threshold": self.threshold,
            "artifact": self.artifact,
            "int8Flags": list(self.int8_flags) if self.int8_flags is not None else None,
            "meaning": self.meaning,
            "higherIsBetter": self.higher_is_better,
            "shadowDisagreement": self.shadow_disagreement,
        }

    def describe(self) -> str:
        """The gate's number in words: `top1_accuracy 0.02 against threshold 0.01` read as an
        accuracy of 2%, where it is a relative loss of 2% and the limit the most allowed."""
        meaning = f" ({self.meaning})" if self.meaning else ""
        match self.higher_is_better:
            case True:
                limit = "the gate needs at least"
            case False:
                limit = "the gate allows at most"
            case None:
                limit = "threshold"
        return f"{self.metric}{meaning} {self.value}; {limit} {self.threshold}"


def read_result(message: str) -> Verdict | str:
    """A termination message back: the Verdict, or the error it names (or why it cannot be read)."""
    try:
        data = json.loads(message)
    except ValueError:
        return f"no verdict in the termination message: {message[:200]!r}"
    if not isinstance(data, Mapping):
        return f"no verdict in the termination message: {message[:200]!r}"
    if "error" in data:
        return str(data["error"])
    if data.get("gate") not in ("passed", "failed"):
        return f"no verdict in the termination message: {message[:200]!r}"

    passed = data["gate"] == "passed"
    produced = data.get("artifact")
    if passed:
        if not isinstance(produced, str):
            return "the gate passed but the Job named no artifact"
        # it goes into the servers' fetch command
        if not re.fullmatch(crd_uris.ARTIFACT_URI.pattern, produced):
            return f"the gate passed but the Job named no artifact URI: {produced[:200]!r}"
    meaning, higher = data.get("meaning"), data.get("higherIsBetter")
    return Verdict(
        passed=passed,
        metric=str(data["metric"]) if data.get("metric") is not None else None,
        value=_number(data.get("value")),
        threshold=_number(data.get("threshold")),
        artifact=produced if passed else None,
        int8_flags=_flags(data.get("int8Flags")),
        meaning=meaning[:200] if isinstance(meaning, str) else None,
        higher_is_better=higher if isinstance(higher, bool) else None,
        shadow_disagreement=share(data.get("shadowDisagreement")),
    )


def _number(value: Any) -> float | None:
    """A verdict's number, or None where it is none the status can hold: JSON reads 1e999 as inf
    (which the status patch cannot write) and a 400-digit integer overflows a float."""
    if not isinstance(value, int | float) or isinstance(value, bool):
        return None
    try:
        number = float(value)
    except OverflowError:
        return None
    return number if math.isfinite(number) else None


def share(value: Any) -> float | None:
    """A share of rows (0 to 1), or None where `value` is none: a string, NaN, a negative number or
    one above 1 would have the operator warn of a burn no canary can read."""
    number = _number(value)
    return number if number is not None and 0.0 <= number <= 1.0 else None


def _metric_spec(metric: Any) -> MetricSpec | None:
    """The gating metric's MetricSpec, or None for a name this quantship does not know. Imported
    here, in the Job, which quantizes: the operator reading the verdict runs without onnxruntime."""
    from quantship.quantize.gate_metrics import METRICS, Metric

    try:
        return METRICS[Metric(metric)]
    except ValueError:
        return None


def _flags(value: Any) -> tuple[str, ...] | None:
    return tuple(str(flag) for flag in value) if isinstance(value, list) else None


def write_result(result_file: Path, data: Mapping[str, Any]) -> None:
    text = json.dumps(data)
    if len(text.encode()) > MAX_MESSAGE:
        text = json.dumps({"error": str(data.get("error", text))[: MAX_MESSAGE // 2]})
    result_file.write_text(text)


def _input(uri: str, workdir: Path, pvc_root: Path, timeout: float, speed_limit: oci.SpeedLimit) -> Path:
    """The input at `uri`: a file://, pvc:// path as it is, an http(s):// one downloaded into
    `workdir` (removed again when the download fails: no half file is left there)."""
    try:
        local = fetch.source_path(uri, pvc_root)
    except fetch.FetchError as exc:
        raise JobError(str(exc)) from exc
    if local is None:
        if uri.startswith(oci.SCHEME):
            raise JobError(f"{uri}: inputs are file://, pvc:// or http(s)://")
        name = Path(urllib.parse.urlparse(uri).path).name or "input"
        folder = Path(tempfile.mkdtemp(prefix="input-", dir=workdir))
        local = folder / name
        try:
            fetch.download(uri, local, timeout=timeout, speed_limit=speed_limit)
        except fetch.FetchError as exc:
            shutil.rmtree(folder, ignore_errors=True)
            raise JobError(str(exc)) from exc
    if not local.is_file():
        raise JobError(f"{uri}: {local} is not a file")
    return local


PUBLISH_PREFIX = ".{}.publish-"
"""A publish's scratch folder beside its target, named apart from anything else's: a user's
`.NAME-cache`, another target's scratch sharing the prefix, `.NAME.old`."""
STALE_PUBLISH_S = 3600.0
"""A publish scratch folder this old is a killed Job's (kill -9, OOM, a node lost mid-publish): a
publish takes minutes at most, and a younger one may be another Job's, publishing now."""


def _sweep_publishes(dest: Path) -> None:
    """Remove the scratch folders killed publishes to `dest` left beside it (artifact-sized, on a
    shared claim, and nothing else ever removes them)."""
    stale = time.time() - STALE_PUBLISH_S
    for leftover in dest.parent.glob(f"{glob.escape(PUBLISH_PREFIX.format(dest.name))}*"):
        with contextlib.suppress(OSError):  # gone meanwhile, or not ours to remove
            if leftover.is_dir() and not leftover.is_symlink() and leftover.stat().st_mtime < stale:
                shutil.rmtree(leftover)


def _target_dir(target: str, pvc_root: Path) -> Path:
    """Where a pvc:// or file:// target's artifact goes."""
    try:
        dest = fetch.source_path(target, pvc_root)
    except fetch.FetchError as exc:
        raise JobError(str(exc)) from exc
    if dest is None:
        raise JobError(f"{target}: a target is pvc://, file:// or oci://")
    if target.startswith("pvc://") and dest.parent == pvc_root:  # what is there would be replaced
        raise JobError(f"{target}: a target is a path inside the claim, not the claim itself")
    return dest


def check_target(target: str, pvc_root: Path, unique_tag: str | None = None) -> None:
    """Refuse a target the artifact could never be published to, before the inputs are fetched and
    quantized (minutes of CPU, up to the Job's deadline): an oci:// one that is no tag, a folder
    whose parent cannot be created or written (a read-only claim, a file in the way). The registry
    itself is not asked: its answer may change by the time the push comes."""
    if target.startswith(oci.SCHEME):
        try:
            reference = oci.push_reference(target)
            if unique_tag is not None:
                oci.push_reference(f"oci://{reference.registry}/{reference.repository}:{unique_tag}")
        except oci.OciError as exc:
            raise JobError(str(exc)) from exc
        return
    if unique_tag is not None:
        raise JobError(f"{target}: a unique tag is for an oci:// target only")
    parent = _target_dir(target, pvc_root).parent
    existing = parent  # creates nothing: a gate that fails publishes nothing, not even folders
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise JobError(f"{target}: {existing} is not a folder")
    if not os.access(existing, os.W_OK | os.X_OK):  # a read-only claim, a folder not ours
        raise JobError(f"{target}: cannot write to {existing}")


def _publish(
    out: Path,
    target: str,
    pvc_root: Path,
    registry_config: Path | None,
    insecure: bool,
    timeout: float,
    unique_tag: str | None = None,
    speed_limit: oci.SpeedLimit = oci.SPEED_LIMIT,
) -> str:
    if target.startswith(oci.SCHEME):
        return _push(out, target, registry_config, insecure, timeout, speed_limit, unique_tag)
    dest = _target_dir(target, pvc_root)
    dest.parent.mkdir(parents=True, exist_ok=True)
    _sweep_publishes(dest)
    scratch = Path(tempfile.mkdtemp(prefix=PUBLISH_PREFIX.format(dest.name), dir=dest.parent))
    try:
        published = artifact.copy_listed(out, scratch / "artifact")  # what lands is what was written
        artifact_dirs.replace_dir(published.root, dest)  # never over anything but an older artifact
    except artifact.ArtifactError as exc:
        raise JobError(f"{target}: {exc}") from exc
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return target


def _push(
    out: Path,
    target: str,
    registry_config: Path | None,
    insecure: bool,
    timeout: float,
    speed_limit: oci.SpeedLimit,
    unique_tag: str | None,
) -> str:
    """Push to `unique_tag` (when given), then move the target's tag there too: the digest the
    verdict pins stays tagged once the next Job moves the target's tag, so a registry's cleanup
    of untagged manifests (Harbor, ECR, GHCR retention) leaves the servers' artifact alone."""
    credentials = oci.Credentials(docker_config=registry_config)
    reference = oci.Reference.parse(target)
    first = (
        target if unique_tag is None else f"oci://{reference.registry}/{reference.repository}:{unique_tag}"
    )
    moved = () if unique_tag is None or reference.tag is None else (reference.tag,)
    try:
        digest = oci.push(
            out,
            first,
            credentials=credentials,
            insecure=insecure,
            timeout=timeout,
            also_tags=moved,
            speed_limit=speed_limit,
        )
    except oci.OciError as exc:
        raise JobError(str(exc)) from exc
    return f"oci://{reference.registry}/{reference.repository}@{digest}"


def run(
    *,
    model: str,
    calibration: str,
    evaluation: str | None,
    target: str,
    quantize: Quantize,
    workdir: Path,
    result_file: Path,
    pvc_root: Path = fetch.PVC_ROOT,
    registry_config: Path | None = None,
    insecure: bool = False,
    timeout: float = oci.TIMEOUT_S,
    unique_tag: str | None = None,
    speed_limit: oci.SpeedLimit = oci.SPEED_LIMIT,
) -> Verdict:
    """Fetch, quantize, publish when the gate passed; the verdict (or the error) goes to result_file.
    An input's download or the push that moves slower than `speed_limit` is abandoned. Raises
    JobError (or what quantize raises) after writing the error."""
    try:
        check_target(target, pvc_root, unique_tag)
        workdir.mkdir(parents=True, exist_ok=True)
        model_path = _input(model, workdir, pvc_root, timeout, speed_limit)
        calibration_path = _input(calibration, workdir, pvc_root, timeout, speed_limit)
        gate_data = _input(evaluation, workdir, pvc_root, timeout, speed_limit) if evaluation else None
        out = workdir / "artifact"
        shutil.rmtree(out, ignore_errors=True)
        quantize(model_path, calibration_path, gate_data, out)
        validation = artifact.load_artifact(out).manifest.get("validation", {})
        passed = validation.get("gate") == "passed"
        spec = _metric_spec(validation.get("metric"))
        verdict = Verdict(
            passed=passed,
            metric=validation.get("metric"),
            value=validation.get("value"),
            threshold=validation.get("threshold"),
            artifact=(
                _publish(out, target, pvc_root, registry_config, insecure, timeout, unique_tag, speed_limit)
                if passed
                else None
            ),
            int8_flags=_flags((validation.get("hardware") or {}).get("int8_flags")),
            meaning=spec.meaning if spec else None,
            higher_is_better=spec.higher_is_better if spec else None,
            shadow_disagreement=share(validation.get("shadow_disagreement")),
        )
    except Exception as exc:
        write_result(result_file, {"error": str(exc) or type(exc).__name__})
        raise
    write_result(result_file, verdict.to_json())
    return verdict
