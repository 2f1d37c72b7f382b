"""Fixtures shared by every test folder: the sample models and artifacts, built once per session
with the real scikit-learn, skl2onnx and onnxruntime.quantization."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import settings

from quantship import artifact, zoo
from quantship.quantize import QuantizeConfig, run
from quantship.quantize.config import Format

# Property tests draw the same examples on every run (a red CI is a bug, not a draw), keep no example
# database in the tree, and set no deadline: a test server's first requests warm up and batch.
settings.register_profile("quantship", deadline=None, database=None, derandomize=True)
settings.load_profile("quantship")


@pytest.fixture(scope="session")
def sample(tmp_path_factory: pytest.TempPathFactory) -> zoo.SampleModel:
    return zoo.build_digits(tmp_path_factory.mktemp("zoo"))


@pytest.fixture(scope="session")
def good_artifact(sample: zoo.SampleModel, tmp_path_factory: pytest.TempPathFactory) -> artifact.Artifact:
    """INT8 digits model calibrated on every digit: passes the gate, clips almost nothing."""
    out = tmp_path_factory.mktemp("artifacts") / "digits-good"
    return run(
        sample.model, out, QuantizeConfig(), calibration=sample.calibration, evaluation=sample.evaluation
    ).artifact


@pytest.fixture(scope="session")
def skewed_artifact(sample: zoo.SampleModel, tmp_path_factory: pytest.TempPathFactory) -> artifact.Artifact:
    """INT8 digits model calibrated on one digit only: its ranges are too narrow for real traffic."""
    out = tmp_path_factory.mktemp("artifacts") / "digits-skewed"
    return run(
        sample.model,
        out,
        QuantizeConfig(),
        calibration=sample.calibration_skewed,
        evaluation=sample.evaluation,
    ).artifact


@pytest.fixture(scope="session")
def qoperator_skewed_artifact(
    sample: zoo.SampleModel, tmp_path_factory: pytest.TempPathFactory
) -> artifact.Artifact:
    """The skewed calibration in QOperator format: QLinear ops requantize every activation in their
    kernels, and real traffic saturates their outputs."""
    out = tmp_path_factory.mktemp("artifacts") / "digits-qoperator-skewed"
    return run(
        sample.model,
        out,
        QuantizeConfig(format=Format.QOPERATOR),
        calibration=sample.calibration_skewed,
        evaluation=sample.evaluation,
    ).artifact


@pytest.fixture
def artifact_copy(good_artifact: artifact.Artifact, tmp_path: Path) -> Path:
    """A private copy of the good artifact, for tests that tamper with it."""
    import shutil

    target = tmp_path / "artifact"
    shutil.copytree(good_artifact.root, target)
    return target
