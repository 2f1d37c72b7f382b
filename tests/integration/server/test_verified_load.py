"""The bytes the server verified are the bytes it serves: a folder swapped after its files were hashed
(by `quantize -o` rerun, or by anyone who can write it) never gets its model, reference, observer or
load-time analysis in, even with a public key required. Real sessions; the swap runs where a real one
would, between the verification and the sessions' creation, from a subclass of our own service."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper
from prometheus_client import CollectorRegistry
from server_harness import settings_for

from quantship import artifact, artifact_keys, zoo
from quantship.artifact import MODEL_FILE, REFERENCE_FILE
from quantship.server import runner_graph
from quantship.server.metrics import ServerMetrics
from quantship.server.runner import Runner
from quantship.server.service import ModelService, Phase

SEVEN = 7
"""What the swapped-in model answers, whatever the input."""


def build_always_seven(path: Path) -> Path:
    """Takes the digits model's X float[N, 64]; answers `label` 7 (`probabilities` one-hot) for every row."""
    weights = numpy_helper.from_array(np.zeros((64, 10), np.float32), "W")
    bias = numpy_helper.from_array(np.eye(10, dtype=np.float32)[SEVEN], "B")
    graph = helper.make_graph(
        [
            helper.make_node("MatMul", ["X", "W"], ["scores"]),
            helper.make_node("Add", ["scores", "B"], ["probabilities"]),
            helper.make_node("ArgMax", ["probabilities"], ["label"], axis=1, keepdims=0),
        ],
        "always_seven",
        [helper.make_tensor_value_info("X", TensorProto.FLOAT, ["N", 64])],
        [
            helper.make_tensor_value_info("label", TensorProto.INT64, ["N"]),
            helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, ["N", 10]),
        ],
        [weights, bias],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return path


def _manifest(loaded: artifact.Artifact) -> dict[str, Any]:
    return {k: v for k, v in loaded.manifest.items() if k not in ("files", "format_version", "signature")}


class SwappedAfterVerifying(ModelService):
    """The real service; once the artifact is verified, its folder is replaced by `swap_in` (as a
    rename does: the path now names other files) before any session exists."""

    swap_in: Path

    def _verify(self) -> artifact.Verified:
        verified = super()._verify()
        root = self.settings.artifact
        root.rename(root.with_name(root.name + ".verified"))
        self.swap_in.rename(root)
        return verified


def labels(runner: Runner, images: np.ndarray) -> np.ndarray:
    return runner.run({zoo.INPUT_NAME: images})["label"]


async def test_a_folder_swapped_after_verifying_serves_the_verified_bytes(
    good_artifact: artifact.Artifact, sample: zoo.SampleModel, tmp_path: Path
) -> None:
    private, public = tmp_path / "sign.pem", tmp_path / "sign.pub"
    artifact_keys.generate_keypair(private, public)
    files = {name: good_artifact.root / name for name in good_artifact.manifest["files"]}
    signed = artifact.write_artifact(
        tmp_path / "served", files, _manifest(good_artifact), sign_key=artifact_keys.load_private_key(private)
    )
    seven = build_always_seven(tmp_path / "seven.onnx")
    unsigned = artifact.write_artifact(
        tmp_path / "swap-in", {MODEL_FILE: seven, REFERENCE_FILE: seven}, _manifest(good_artifact)
    )
    settings = settings_for(signed, "signed-v1", public_key=public)
    registry = CollectorRegistry()
    service = SwappedAfterVerifying(settings, ServerMetrics(registry, settings.labels))
    service.swap_in = unsigned.root
    await service.load()
    try:
        # the swap took place: the served path now holds the unsigned always-7 artifact
        assert artifact.load_artifact(settings.artifact).manifest["files"] == unsigned.manifest["files"]
        assert service.phase is Phase.READY, service.problem
        model = service.ready_model()
        images = np.load(sample.requests)[zoo.INPUT_NAME][:50]
        assert labels(Runner.load(seven), images).tolist() == [SEVEN] * len(images)
        signed_answers = labels(Runner.load(good_artifact.model_path), images)
        assert len(set(signed_answers.tolist())) > 1
        assert np.array_equal(labels(model.runner, images), signed_answers)
        reference = model.opened.reference
        assert reference is not None
        assert np.array_equal(
            labels(reference, images), labels(Runner.load(good_artifact.reference_path), images)
        )
        # the observer and the load-time analysis read the verified model too (the always-7 one has
        # no quantized tensor to observe, no op meant to run in int8)
        assert model.clip is not None and model.opened.ranges == good_artifact.activation_ranges
        assert model.opened.fallback == runner_graph.fallback_ops(good_artifact.model_path)
        assert model.opened.fallback
    finally:
        await service.close(1)


async def test_a_model_keeping_its_weights_beside_it_is_refused_not_served_with_other_weights(
    tmp_path: Path, monkeypatch: Any
) -> None:
    """A session built from bytes reads external weights from the working directory: a weights.bin
    there, never hashed, was served in place of the artifact's own (hashed) copy."""
    model = onnx.load(str(build_always_seven(tmp_path / "seven.onnx")))
    onnx.save(model, str(tmp_path / "external.onnx"), save_as_external_data=True, location="weights.bin",
              size_threshold=0)  # fmt: skip
    written = artifact.write_artifact(
        tmp_path / "art",
        {MODEL_FILE: tmp_path / "external.onnx", "weights.bin": tmp_path / "weights.bin"},
        {"quantization": {"precision": "fp32", "mode": "none"}},
    )
    elsewhere = tmp_path / "cwd"
    elsewhere.mkdir()
    (elsewhere / "weights.bin").write_bytes((tmp_path / "weights.bin").read_bytes())
    monkeypatch.chdir(elsewhere)  # where onnxruntime would look: a file an attacker could place
    settings = settings_for(written, "external-v1")
    service = ModelService(settings, ServerMetrics(CollectorRegistry(), settings.labels))
    await service.load()
    try:
        assert service.phase is Phase.REFUSED
        assert "keeps weights in external data" in (service.problem or "")
    finally:
        await service.close(1)
