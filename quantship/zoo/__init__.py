"""Sample models with their data files, built on this machine from what pip installs: nothing else
is downloaded.

`quantship zoo build DIR` (`--model digits`, the default) writes one labelled classifier (an MLP on
the 8x8 digits images, exported with skl2onnx) and the data files the quantizer, the server and the
demo read:

    DIR/digits/model.onnx                FP32 model: input X float32[N, 64]; outputs label, probabilities
    DIR/digits/calibration.npz           256 training images of every digit: a good calibration set
    DIR/digits/calibration-skewed.npz    16 training images of one digit only: the classic root cause of
                                         an accuracy cliff, kept to build a badly calibrated artifact
    DIR/digits/evaluation.npz            held-out images with labels, for the accuracy gate
    DIR/digits/requests.npz              other held-out images with labels: production-like traffic
    DIR/digits/request.json              one Open Inference Protocol v2 request body

`--model efficientnet-lite0` and `--model minilm-l6` export two real pretrained models with PyTorch
in a build-only virtualenv, and `--model gpt2-lm` trains a small GPT-2 language model over
characters there and exports it (see quantship/zoo/real.py); `--model all` builds the four.

Everything is deterministic (fixed seeds, fixed splits).
"""

from __future__ import annotations

import json
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx

SEED = 0
SKEWED_DIGIT = 8
INPUT_NAME = "X"
LABELS_KEY = "labels"
MODELS = ("digits", "efficientnet-lite0", "minilm-l6", "gpt2-lm")


def resolve_names(requested: tuple[str, ...] | list[str]) -> list[str] | str:
    """The models to build, in MODELS order without repeats, or a one-line error naming a bad name."""
    unknown = [name for name in requested if name != "all" and name not in MODELS]
    if unknown:
        return f"unknown model {unknown[0]!r}: choose from {', '.join(MODELS)}, or all"
    wanted = set(MODELS) if "all" in requested else set(requested)
    return [name for name in MODELS if name in wanted]


@dataclass(frozen=True)
class SampleModel:
    root: Path

    @property
    def model(self) -> Path:
        return self.root / "model.onnx"

    @property
    def calibration(self) -> Path:
        return self.root / "calibration.npz"

    @property
    def calibration_skewed(self) -> Path:
        return self.root / "calibration-skewed.npz"

    @property
    def evaluation(self) -> Path:
        return self.root / "evaluation.npz"

    @property
    def requests(self) -> Path:
        return self.root / "requests.npz"


def build_digits(out_dir: Path) -> SampleModel:
    from skl2onnx import to_onnx
    from sklearn.datasets import load_digits
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.neural_network import MLPClassifier
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    images, labels = load_digits(return_X_y=True)
    images = images.astype(np.float32)
    labels = labels.astype(np.int64)
    order = np.random.default_rng(SEED).permutation(len(images))
    images, labels = images[order], labels[order]
    train, evaluation, traffic = slice(0, 1000), slice(1000, 1400), slice(1400, None)

    classifier = make_pipeline(StandardScaler(), MLPClassifier((512, 256), max_iter=300, random_state=SEED))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        classifier.fit(images[train], labels[train])
    mlp = classifier.steps[-1][1]
    model = to_onnx(
        classifier,
        images[:1],
        options={id(mlp): {"zipmap": False}},  # plain tensors, not a list of dicts
        target_opset={"": 17, "ai.onnx.ml": 3},
    )
    model.doc_string = "quantship sample: MLP(512, 256) on scikit-learn's digits"

    sample = SampleModel(out_dir / "digits")
    sample.root.mkdir(parents=True, exist_ok=True)
    onnx.save(model, sample.model)

    train_x, train_y = images[train], labels[train]
    np.savez(sample.calibration, **{INPUT_NAME: train_x[:256]})
    np.savez(sample.calibration_skewed, **{INPUT_NAME: train_x[train_y == SKEWED_DIGIT][:16]})
    np.savez(sample.evaluation, **{INPUT_NAME: images[evaluation], LABELS_KEY: labels[evaluation]})
    np.savez(sample.requests, **{INPUT_NAME: images[traffic], LABELS_KEY: labels[traffic]})
    request = {
        "id": "sample-0",
        "inputs": [
            {"name": INPUT_NAME, "shape": [1, 64], "datatype": "FP32", "data": images[traffic][0].tolist()}
        ],
    }
    (sample.root / "request.json").write_text(json.dumps(request) + "\n")
    return sample
