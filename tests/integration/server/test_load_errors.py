"""A failure of the server's own code while loading is a bug, logged with its traceback and counted as
`internal`, never reported as a broken model; a model onnxruntime refuses is still `model`, and a file
the server may not read is `io`."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry
from server_harness import MODEL, load_alone, settings_for

from quantship import artifact
from quantship.server.metrics import ServerMetrics
from quantship.server.service import ModelService, Opened, Phase
from quantship.server.settings import ServerSettings


class BuggyService(ModelService):
    """The real service, with a bug of ours where the loaded parts are put together."""

    def _assemble(self, opened: Opened) -> object:  # type: ignore[override]
        raise KeyError("a bug of ours")


def service_for(settings: ServerSettings, kind: type[ModelService]) -> tuple[ModelService, CollectorRegistry]:
    registry = CollectorRegistry()
    return kind(settings, ServerMetrics(registry, settings.labels, max_batch_size=32)), registry


def failures(registry: CollectorRegistry, settings: ServerSettings, reason: str) -> float | None:
    return registry.get_sample_value(
        "quantship_model_load_failures_total", {**settings.labels, "reason": reason}
    )


async def test_a_bug_while_loading_is_logged_with_its_traceback_and_counted_as_internal(
    good_artifact: artifact.Artifact, caplog: pytest.LogCaptureFixture
) -> None:
    settings = settings_for(good_artifact, "buggy")
    service, registry = service_for(settings, BuggyService)
    with caplog.at_level(logging.ERROR, logger="quantship.server"):
        await service.load()
    assert service.phase is Phase.REFUSED
    assert "a bug; see its log" in service.problem and "onnxruntime" not in service.problem
    assert failures(registry, settings, "internal") == 1
    assert failures(registry, settings, "model") == 0
    (traced,) = [record for record in caplog.records if record.exc_info is not None]
    assert "failed in the server's own code" in traced.getMessage()
    await service.close(1)


async def test_a_model_onnxruntime_refuses_is_still_a_broken_model(tmp_path: Path) -> None:
    garbage = tmp_path / "garbage.onnx"
    garbage.write_bytes(b"not an onnx model")
    manifest = {"quantization": {"precision": "fp32", "mode": "none"}}
    written = artifact.write_artifact(tmp_path / "artifact", {artifact.MODEL_FILE: garbage}, manifest)
    settings = settings_for(written, "broken")
    service, registry = service_for(settings, ModelService)
    await service.load()
    assert service.phase is Phase.REFUSED
    assert "onnxruntime cannot load" in service.problem
    assert failures(registry, settings, "model") == 1
    assert failures(registry, settings, "internal") == 0
    await service.close(1)


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
