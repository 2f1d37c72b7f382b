"""Fixtures shared by every test folder: the sample models and artifacts, built once a run (once for
all its xdist workers: `built_once`) with the real scikit-learn, skl2onnx and onnxruntime.quantization.
They are shared and must stay as built: a test that alters one works on a copy."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from built_once import built_once
from hypothesis import settings

from quantship import artifact, zoo
from quantship.quantize import QuantizeConfig, run
from quantship.quantize.config import Format

# Property tests draw the same examples on every run (a red CI is a bug, not a draw), keep no example
# database in the tree, and set no deadline: a test server's first requests warm up and batch.
settings.register_profile("quantship", deadline=None, database=None, derandomize=True)
settings.load_profile("quantship")


@pytest.fixture(scope="session")
def sample(tmp_path_factory: pytest.TempPathFactory, worker_id: str) -> Iterator[zoo.SampleModel]:
    with built_once(tmp_path_factory, worker_id, "zoo", zoo.build_digits) as folder:
        yield zoo.SampleModel(folder / "digits")


def _quantized(
    name: str,
    config: QuantizeConfig,
    calibration: Path,
    sample: zoo.SampleModel,
    tmp_path_factory: pytest.TempPathFactory,
    worker_id: str,
) -> Iterator[artifact.Artifact]:
    """The digits model quantized with `config` on `calibration`, built once a run; every worker, the
    one that built it too, reads the same manifest back from disk."""

    def quantize(out: Path) -> None:
        run(sample.model, out, config, calibration=calibration, evaluation=sample.evaluation)

    with built_once(tmp_path_factory, worker_id, name, quantize) as folder:
        yield artifact.load_artifact(folder)


@pytest.fixture(scope="session")
def good_artifact(
    sample: zoo.SampleModel, tmp_path_factory: pytest.TempPathFactory, worker_id: str
) -> Iterator[artifact.Artifact]:
    """INT8 digits model calibrated on every digit: passes the gate, clips almost nothing."""
    yield from _quantized(
        "digits-good", QuantizeConfig(), sample.calibration, sample, tmp_path_factory, worker_id
    )


@pytest.fixture(scope="session")
def skewed_artifact(
    sample: zoo.SampleModel, tmp_path_factory: pytest.TempPathFactory, worker_id: str
) -> Iterator[artifact.Artifact]:
    """INT8 digits model calibrated on one digit only: its ranges are too narrow for real traffic."""
    yield from _quantized(
        "digits-skewed", QuantizeConfig(), sample.calibration_skewed, sample, tmp_path_factory, worker_id
    )


@pytest.fixture(scope="session")
def qoperator_skewed_artifact(
    sample: zoo.SampleModel, tmp_path_factory: pytest.TempPathFactory, worker_id: str
) -> Iterator[artifact.Artifact]:
    """The skewed calibration in QOperator format: QLinear ops requantize every activation in their
    kernels, and real traffic saturates their outputs."""
    yield from _quantized(
        "digits-qoperator-skewed",
        QuantizeConfig(format=Format.QOPERATOR),
        sample.calibration_skewed,
        sample,
        tmp_path_factory,
        worker_id,
    )


@pytest.fixture
def artifact_copy(good_artifact: artifact.Artifact, tmp_path: Path) -> Path:
    """A private copy of the good artifact, for tests that tamper with it."""
    import shutil

    target = tmp_path / "artifact"
    shutil.copytree(good_artifact.root, target)
    return target
