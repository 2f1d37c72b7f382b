"""onnxruntime's telemetry is off wherever quantship runs it: no device id or event cache in the home
directory, no session file in $TMPDIR (and so nothing queued for upload)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from quantship import TELEMETRY_OPT_OUT, artifact

RUN_A_SESSION = """
import sys
{imports}
import onnxruntime
onnxruntime.InferenceSession(sys.argv[1], providers=["CPUExecutionProvider"])
"""


def _files_left(model: Path, tmp_path: Path, imports: str, **env: str) -> list[str]:
    home, scratch = tmp_path / "home", tmp_path / "tmp"
    home.mkdir()
    scratch.mkdir()
    # Only what Python needs: onnxruntime stays quiet by itself where it sees a CI's variables (CI,
    # GITHUB_ACTIONS, JENKINS_URL...), which would make the opt-in test below fail in CI alone.
    kept = {name: os.environ[name] for name in ("PATH", "PYTHONPATH") if name in os.environ}
    subprocess.run(
        [sys.executable, "-c", RUN_A_SESSION.format(imports=imports), str(model)],
        check=True, timeout=60, env={**kept, "HOME": str(home), "TMPDIR": str(scratch), **env},
    )  # fmt: skip
    return sorted(str(path.relative_to(tmp_path)) for path in tmp_path.rglob("*") if path.is_file())


def test_importing_quantship_first_keeps_onnxruntime_from_writing_telemetry(
    good_artifact: artifact.Artifact, tmp_path: Path
) -> None:
    assert _files_left(good_artifact.root / artifact.MODEL_FILE, tmp_path, "import quantship") == []


@pytest.mark.parametrize("imports", ["", "import quantship"])
def test_a_user_who_opts_in_keeps_onnxruntime_s_own_default(
    good_artifact: artifact.Artifact, tmp_path: Path, imports: str
) -> None:
    """The check that the test above could fail: with the opt-out unset to 0, onnxruntime writes."""
    left = _files_left(
        good_artifact.root / artifact.MODEL_FILE, tmp_path, imports, **{TELEMETRY_OPT_OUT: "0"}
    )
    assert "tmp/.ses" in left
