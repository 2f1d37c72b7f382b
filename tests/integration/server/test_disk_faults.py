"""A disk that fails the server while it loads (full under a .tar.gz it unpacks, a listed file it may
not read) is the node's to fix: refused with reason `io`, in one line naming where, never `format`
(which blames a good artifact) nor `internal` ("a bug"). Each load runs the real model service in a
process of its own, under a file size limit (RLIMIT_FSIZE, a full disk's stand-in: writes past it
fail with EFBIG) or as a user that file modes apply to."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
from server_harness import MODEL

from quantship import artifact

LOAD_ALONE = """\
import asyncio, json, resource, signal, sys
from pathlib import Path
from prometheus_client import CollectorRegistry
from quantship.server.metrics import LOAD_FAILURE_REASONS, ServerMetrics
from quantship.server.service import ModelService
from quantship.server.settings import ServerSettings

artifact, reference, limit, model = sys.argv[1:]
if int(limit):
    resource.setrlimit(resource.RLIMIT_FSIZE, (int(limit), int(limit)))
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # EFBIG, not the signal's kill
settings = ServerSettings(
    Path(artifact), model, "alone", reference=Path(reference) if reference else None
)
registry = CollectorRegistry()
service = ModelService(settings, ServerMetrics(registry, settings.labels))


async def load() -> None:
    await service.load()
    failures = {
        reason: registry.get_sample_value(
            "quantship_model_load_failures_total", {**settings.labels, "reason": reason}
        )
        for reason in LOAD_FAILURE_REASONS
    }
    print(json.dumps({"phase": service.phase, "problem": service.problem, "failures": failures}))
    await service.close(1)


asyncio.run(load())
"""


@dataclass(frozen=True)
class LoadedAlone:
    phase: str
    problem: str
    failures: dict[str, float]
    """quantship_model_load_failures_total by reason."""


def load_alone(
    artifact_path: Path, *, reference: Path | None = None, file_size_limit: int = 0, powerless: bool = False
) -> LoadedAlone:
    """The real model service loading `artifact_path` once, in a process of its own: under a file size
    limit (RLIMIT_FSIZE, a full disk's stand-in: writes past it fail with EFBIG), or `powerless`, as a
    user that file modes apply to (root without its capabilities: CAP_DAC_OVERRIDE reads anything)."""
    prefix = ["setpriv", "--bounding-set=-all", "--inh-caps=-all"] if powerless and os.geteuid() == 0 else []
    args = [str(artifact_path), str(reference or ""), str(file_size_limit), MODEL]
    run = subprocess.run(
        [*prefix, sys.executable, "-c", LOAD_ALONE, *args], capture_output=True, text=True, timeout=120
    )
    assert run.returncode == 0, run.stderr
    return LoadedAlone(**json.loads(run.stdout.strip().splitlines()[-1]))


@pytest.mark.parametrize("at", ["scratch folder", "unpacking"])
def test_a_full_disk_under_a_served_tarball_is_the_nodes_fault_not_the_artifacts_nor_a_bug(
    good_artifact: artifact.Artifact, tmp_path: Path, tmpdir_env: Path, at: str
) -> None:
    """The disk full as the server makes its scratch folder (its 100-byte owner file) or unpacks the
    model into it: reason `format` ("unreadable archive") blamed a good artifact, reason `internal`
    ("a bug") the server."""
    tarball = tmp_path / "digits.tar.gz"
    artifact.pack(good_artifact.root, tarball)
    model_size = good_artifact.manifest["files"][artifact.MODEL_FILE]["size"]
    limit = {"scratch folder": 16, "unpacking": model_size // 2}[at]

    loaded = load_alone(tarball, file_size_limit=limit)

    assert (loaded.failures["io"], loaded.failures["format"], loaded.failures["internal"]) == (1, 0, 0)
    problem = loaded.problem
    assert problem.startswith(f"model '{MODEL}' is not served: cannot unpack {tarball}")
    assert "File too large" in problem and str(tmpdir_env) in problem, problem  # where, and why


@pytest.mark.parametrize("served", [True, False], ids=["reference served", "replaced by --reference"])
def test_a_listed_file_the_server_may_not_read_is_refused_as_io_in_one_line(
    good_artifact: artifact.Artifact, artifact_copy: Path, served: bool
) -> None:
    """reference.onnx at mode 000: read and kept when it is the reference served, only hashed when
    --reference replaces it, where a PermissionError escaped: "a bug", with a traceback."""
    (artifact_copy / artifact.REFERENCE_FILE).chmod(0)
    replacement = None if served else good_artifact.reference_path

    loaded = load_alone(artifact_copy, reference=replacement, powerless=True)

    assert loaded.phase == "refused"
    assert (loaded.failures["io"], loaded.failures["internal"]) == (1, 0)
    unreadable = artifact_copy / artifact.REFERENCE_FILE
    assert loaded.problem == f"model '{MODEL}' is not served: {unreadable}: cannot read it: Permission denied"
