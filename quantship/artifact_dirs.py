"""Putting an artifact directory in place atomically (`replace_dir`), what it may replace
(`in_the_way`), putting back one a killed replacement moved aside (`restore_interrupted`), and where
a failed gate's best effort goes."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from quantship.artifact_format import ArtifactError
from quantship.artifact_manifest import is_artifact_dir, read_manifest

GATE_FAILED_SUFFIX = ".gate-failed"
"""Where a failed gate's best effort goes when `-o` holds an artifact it must not replace."""


def gate_failed_path(out: Path) -> Path:
    """`<out>.gate-failed`: beside `out`, for a best effort that must not replace what `out` holds."""
    return out.with_name(out.name + GATE_FAILED_SUFFIX)


def holds_servable(path: Path) -> bool:
    """Whether `path` holds an artifact not marked `gate: failed` (a passing INT8 model, an FP32
    package): one that `verify` accepts and `serve` serves, which a failed gate must not replace."""
    if not is_artifact_dir(path):
        return False
    validation = read_manifest(path).get("validation")
    return not (isinstance(validation, dict) and validation.get("gate") == "failed")


def in_the_way(target: Path) -> Path | None:
    """What holds someone's data that replace_dir refuses to replace at `target`: `target` itself,
    unless it is nothing, an empty directory (made for the artifact) or an older artifact; or, where
    an older artifact is, the `.NAME.old` it would be moved aside to, unless that is nothing or an
    artifact. `quantize -o`, `pull -o` and `fetch` ask first, before the calibration or the download
    that ends in replace_dir (a folder of the user's at `.NAME.old` was refused only after them)."""
    if target.is_dir() and not target.is_symlink() and not any(target.iterdir()):
        return None
    if not target.exists() and not target.is_symlink():
        return None
    if not is_artifact_dir(target):
        return target
    old = _displaced(target)
    return old if (old.exists() or old.is_symlink()) and not is_artifact_dir(old) else None


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
        if (ours.exists() or ours.is_symlink()) and not is_artifact_dir(ours):
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
    if not target.exists() and not target.is_symlink() and is_artifact_dir(old):
        try:
            os.rename(old, target)
        except OSError as exc:
            raise ArtifactError(
                f"cannot put back the artifact {old} moved aside: {exc.strerror or exc}", reason="io"
            ) from exc


def _displaced(target: Path) -> Path:
    """Where replace_dir moves the artifact it replaces, until the new one is in place."""
    return target.with_name(f".{target.name}.old")
