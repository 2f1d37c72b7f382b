"""The real models (EfficientNet-Lite0, all-MiniLM-L6-v2, a small GPT-2 LM), built once by the CLI.

These tests run only when asked for: `pytest tests/real` (or `make real-models`). A bare `pytest`
(`make test`) leaves this folder out, so the light suite never installs torch or exports a model.

The models live in build/zoo (override with QUANTSHIP_REAL_ZOO). The `real_zoo` fixture runs
`quantship zoo build` for each: the first time it creates .venv-export/, exports, and trains the LM
(minutes); afterwards the CLI finds them up to date and returns at once.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from quantship.zoo import SampleModel
from quantship.zoo.real import REAL_MODELS

REPO = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent


def pytest_ignore_collect(collection_path: Path, config: pytest.Config) -> bool | None:
    """Collect tests/real only when a command-line path points into it."""
    from_testpaths = config.args_source == pytest.Config.ArgsSource.TESTPATHS
    base = config.rootpath if from_testpaths else config.invocation_params.dir
    for arg in config.args:
        target = Path(base, arg.split("::")[0]).resolve()
        if target == HERE or HERE in target.parents:
            return None
    return True


@pytest.fixture(scope="session")
def real_zoo() -> Path:
    """build/zoo with the real models in it, built by the CLI when missing or stale."""
    zoo_dir = Path(os.environ.get("QUANTSHIP_REAL_ZOO", REPO / "build" / "zoo")).resolve()
    command = [sys.executable, "-m", "quantship", "zoo", "build", str(zoo_dir)]
    for name in REAL_MODELS:
        command += ["--model", name]
    # From the repository root: the build virtualenv is .venv-export/ there, as with `make real-models`.
    subprocess.run(command, cwd=REPO, check=True, timeout=1800)
    return zoo_dir


@pytest.fixture(scope="session")
def efficientnet(real_zoo: Path) -> SampleModel:
    """EfficientNet-Lite0: images float32[N, 3, 224, 224] -> logits float32[N, 1000]; no labels."""
    return SampleModel(real_zoo / "efficientnet-lite0")


@pytest.fixture(scope="session")
def minilm(real_zoo: Path) -> SampleModel:
    """all-MiniLM-L6-v2: input_ids, attention_mask, token_type_ids int64[N, 64]
    -> sentence_embedding float32[N, 384], unit norm; no labels."""
    return SampleModel(real_zoo / "minilm-l6")


@pytest.fixture(scope="session")
def gpt2_lm(real_zoo: Path) -> SampleModel:
    """A 2-layer GPT-2 trained on characters: input_ids, attention_mask int64[N, seq] (right-padded)
    -> logits float32[N, seq, 128]; evaluation_labels.npz holds the next characters."""
    return SampleModel(real_zoo / "gpt2-lm")
