"""A failure of the server's own code while loading is a bug, logged with its traceback and counted as
`internal`, never reported as a broken model; a model onnxruntime refuses is still `model`, and a
hostile manifest is refused for what it is."""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable
from pathlib import Path

import pytest
from click.testing import CliRunner
from prometheus_client import CollectorRegistry
from server_harness import settings_for

from quantship import artifact
from quantship.cli import ExitCode, main
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
    verified = CliRunner().invoke(main, ["verify", str(written.root)])  # said ok: its hashes match
    assert verified.exit_code == ExitCode.REFUSED, verified.output
    assert verified.output.startswith(
        f"error: {written.root}: a server refuses to load it: onnxruntime cannot"
    )


def _size(literal: str) -> Callable[[Path], str]:
    """The manifest's size of model.onnx, written as `literal` ({} the true size)."""

    def tamper(root: Path) -> str:
        text = (root / artifact.MANIFEST_FILE).read_text()
        size = (root / artifact.MODEL_FILE).stat().st_size
        return text.replace(f'"size": {size}', f'"size": {literal.format(size)}', 1)

    return tamper


def _fifo(root: Path) -> str:
    (root / artifact.MODEL_FILE).unlink()
    os.mkfifo(root / artifact.MODEL_FILE)
    return (root / artifact.MANIFEST_FILE).read_text()


def _label(root: Path) -> str:
    manifest = json.loads((root / artifact.MANIFEST_FILE).read_text())
    manifest["calibration"]["method"] = "A" * 2**20  # was on every scrape of /metrics, as a label
    return json.dumps(manifest)


def _node_name(root: Path) -> str:
    manifest = json.loads((root / artifact.MANIFEST_FILE).read_text())
    manifest["quantization"]["excluded_nodes"] = ["A" * 10**6]  # printed whole by the report
    return json.dumps(manifest)


@pytest.mark.timeout(120)
@pytest.mark.parametrize(
    ("tamper", "reason", "said"),
    [
        pytest.param(_size("{}.0"), "format", ".0 is not of type 'integer'", id="a size written as a float"),
        pytest.param(_size("1e400"), "format", "1e400 is out of a number's range", id="a size past a float"),
        pytest.param(
            _size("1000000000000000"),
            "hash_mismatch",
            "manifest says 1000000000000000",
            id="a size past memory",
        ),
        pytest.param(
            _fifo, "format", "model.onnx is listed in the manifest but is a named pipe", id="a pipe"
        ),
        pytest.param(_label, "format", "['calibration']['method']: 'AAAA", id="a 1 MiB label"),
        pytest.param(
            _node_name,
            "format",
            "['quantization']['excluded_nodes'][0]: a node name of 1000000 characters, more than the 4096",
            id="a 1 MB node name",
        ),
    ],
)
async def test_a_hostile_manifest_is_refused_for_what_it_is_never_as_a_bug(
    artifact_copy: Path, tamper: Callable[[Path], str], reason: str, said: str
) -> None:
    """Each went READY, or was refused as "a bug" (TypeError, MemoryError) or as `missing`."""
    (artifact_copy / artifact.MANIFEST_FILE).write_text(tamper(artifact_copy))
    settings = settings_for(artifact_copy, "hostile")
    service, registry = service_for(settings, ModelService)
    await service.load()
    try:
        assert service.phase is Phase.REFUSED
        assert said in service.problem and "\n" not in service.problem, service.problem
        assert failures(registry, settings, reason) == 1
        assert failures(registry, settings, "internal") == 0
    finally:
        await service.close(1)
