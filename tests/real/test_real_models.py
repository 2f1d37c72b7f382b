"""The real zoo models as the quantizer and the server will read them: ONNX signatures, data files,
request bodies, and the FP32 outputs' basic properties."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from quantship.zoo import SampleModel
from quantship.zoo.real import STAMP, files_of

SPLITS = {"calibration": 200, "evaluation": 300, "requests": 200}
TEXT_INPUTS = ["input_ids", "attention_mask", "token_type_ids"]
LM_INPUTS = ["input_ids", "attention_mask"]
LM_SEQ, LM_VOCAB = 64, 128
OIP_TYPES = {"FP32": np.float32, "INT64": np.int64}


def session(model: Path) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = 2
    return ort.InferenceSession(str(model), options, providers=["CPUExecutionProvider"])


def signature(values: list) -> list[tuple[str, list, str]]:
    return [(value.name, value.shape, value.type) for value in values]


def load(path: Path) -> dict[str, np.ndarray]:
    with np.load(path, allow_pickle=False) as data:
        return {name: data[name] for name in data.files}


def check_splits(sample: SampleModel, inputs: dict[str, tuple[tuple[int, ...], type]]) -> None:
    for split, count in SPLITS.items():
        arrays = load(sample.root / f"{split}.npz")
        assert sorted(arrays) == sorted(inputs), f"{split}: unlabelled, keyed by input name"
        for name, (shape, dtype) in inputs.items():
            assert arrays[name].shape == (count, *shape), (split, name)
            assert arrays[name].dtype == dtype, (split, name)


def request_feeds(sample: SampleModel) -> dict[str, np.ndarray]:
    body = json.loads((sample.root / "request.json").read_text())
    assert body["id"]
    return {
        tensor["name"]: np.asarray(tensor["data"], OIP_TYPES[tensor["datatype"]]).reshape(tensor["shape"])
        for tensor in body["inputs"]
    }


def test_efficientnet_signature_data_and_request(efficientnet: SampleModel) -> None:
    model = session(efficientnet.model)
    assert signature(model.get_inputs()) == [("images", ["N", 3, 224, 224], "tensor(float)")]
    assert signature(model.get_outputs()) == [("logits", ["N", 1000], "tensor(float)")]
    check_splits(efficientnet, {"images": ((3, 224, 224), np.float32)})

    images = load(efficientnet.evaluation)["images"]
    assert images.min() >= (0 - 127) / 128 and images.max() <= (255 - 127) / 128  # (pixel - 127) / 128
    feeds = request_feeds(efficientnet)
    assert list(feeds) == ["images"] and feeds["images"].shape == (1, 3, 224, 224)
    (logits,) = model.run(None, feeds)
    assert logits.shape == (1, 1000) and np.isfinite(logits).all()


def test_efficientnet_batches_agree_with_single_rows(efficientnet: SampleModel) -> None:
    images = load(efficientnet.calibration)["images"][:5]
    model = session(efficientnet.model)
    (batched,) = model.run(None, {"images": images})
    single = np.concatenate([model.run(None, {"images": image[None]})[0] for image in images])
    np.testing.assert_allclose(batched, single, atol=1e-4)


def test_efficientnet_splits_hold_different_crops(efficientnet: SampleModel) -> None:
    digests = {
        split: {hash(image.tobytes()) for image in load(efficientnet.root / f"{split}.npz")["images"]}
        for split in SPLITS
    }
    assert all(len(found) == SPLITS[split] for split, found in digests.items())
    assert not digests["calibration"] & digests["evaluation"]
    assert not (digests["calibration"] | digests["evaluation"]) & digests["requests"]


def test_efficientnet_recognises_the_cat_and_the_coffee(efficientnet: SampleModel) -> None:
    """The weights are really ImageNet's: the crops' provenance lets us pick known pictures."""
    info = json.loads((efficientnet.root / "info.json").read_text())
    crops = info["crops"]
    images = np.concatenate([load(efficientnet.root / f"{split}.npz")["images"] for split in SPLITS])
    model = session(efficientnet.model)
    cats = range(281, 286)  # tabby, tiger cat, Persian, Siamese, Egyptian cat
    coffee = (504, 967, 968)  # coffee mug, espresso, cup
    for source, classes in (("chelsea", cats), ("coffee", coffee)):
        rows = [i for i, crop in enumerate(crops) if crop["image"] == source and crop["side"] > 250]
        assert rows, source
        (logits,) = model.run(None, {"images": images[rows[:8]]})
        hits = np.isin(logits.argmax(axis=1), classes).mean()
        assert hits >= 0.5, (source, logits.argmax(axis=1))


def test_minilm_signature_data_and_request(minilm: SampleModel) -> None:
    model = session(minilm.model)
    assert signature(model.get_inputs()) == [(name, ["N", 64], "tensor(int64)") for name in TEXT_INPUTS]
    assert signature(model.get_outputs()) == [("sentence_embedding", ["N", 384], "tensor(float)")]
    check_splits(minilm, {name: ((64,), np.int64) for name in TEXT_INPUTS})

    tokens = load(minilm.evaluation)
    assert (tokens["input_ids"][:, 0] == 101).all(), "every row starts with [CLS]"
    assert set(np.unique(tokens["attention_mask"])) == {0, 1}, "short sentences are padded"
    assert (tokens["token_type_ids"] == 0).all()
    assert (tokens["input_ids"][tokens["attention_mask"] == 0] == 0).all(), "padding is [PAD]"

    sentences = json.loads((minilm.root / "sentences.json").read_text())
    assert len(sentences) == sum(SPLITS.values()) == len(set(sentences))

    feeds = request_feeds(minilm)
    assert list(feeds) == TEXT_INPUTS and all(array.shape == (1, 64) for array in feeds.values())
    (embedding,) = model.run(None, feeds)
    assert embedding.shape == (1, 384) and embedding.dtype == np.float32


def test_minilm_fp32_embeddings_are_unit_norm_and_meaningful(minilm: SampleModel) -> None:
    tokens = load(minilm.evaluation)
    (embeddings,) = session(minilm.model).run(None, tokens)
    assert embeddings.shape == (300, 384)
    np.testing.assert_allclose(np.linalg.norm(embeddings, axis=1), 1.0, atol=1e-5)
    similarity = embeddings @ embeddings.T
    off_diagonal = similarity[~np.eye(len(similarity), dtype=bool)]
    assert off_diagonal.mean() < 0.5, "different sentences must not collapse onto one direction"
    # batch-independent: one row alone gives the same embedding as inside the batch
    (alone,) = session(minilm.model).run(None, {name: array[7:8] for name, array in tokens.items()})
    np.testing.assert_allclose(alone[0], embeddings[7], atol=1e-5)


def test_gpt2_lm_signature_data_and_request(gpt2_lm: SampleModel) -> None:
    model = session(gpt2_lm.model)
    assert signature(model.get_inputs()) == [(name, ["N", "seq"], "tensor(int64)") for name in LM_INPUTS]
    assert signature(model.get_outputs()) == [("logits", ["N", "seq", LM_VOCAB], "tensor(float)")]
    check_splits(gpt2_lm, {name: ((LM_SEQ,), np.int64) for name in LM_INPUTS})

    tokens = load(gpt2_lm.evaluation)
    ids, mask = tokens["input_ids"], tokens["attention_mask"]
    assert (mask == (ids != 0)).all(), "0 pads, and is never a character"
    assert (np.diff(mask, axis=1) <= 0).all(), "right-padded"
    lengths = mask.sum(axis=1)
    assert lengths.min() < LM_SEQ / 2 and np.mean(lengths < LM_SEQ) > 0.25, "sentences of varied length"
    sentences = json.loads((gpt2_lm.root / "sentences.json").read_text())
    begin = SPLITS["calibration"]
    assert "".join(map(chr, ids[0][: lengths[0]])) == sentences[begin][:LM_SEQ]

    labelled = load(gpt2_lm.root / "evaluation_labels.npz")
    assert sorted(labelled) == ["attention_mask", "input_ids", "labels"]
    assert all((labelled[name] == tokens[name]).all() for name in LM_INPUTS)
    labels = labelled["labels"]
    following = mask[:, 1:] == 1
    assert (labels[:, :-1][following] == ids[:, 1:][following]).all(), "the next character"
    assert (labels[:, :-1][~following] == -100).all() and (labels[:, -1] == -100).all()

    feeds = request_feeds(gpt2_lm)
    assert list(feeds) == LM_INPUTS and all(array.shape == (1, LM_SEQ) for array in feeds.values())
    (logits,) = model.run(None, feeds)
    assert logits.shape == (1, LM_SEQ, LM_VOCAB) and np.isfinite(logits).all()


def test_gpt2_lm_is_trained_causal_and_blind_to_its_padding(gpt2_lm: SampleModel) -> None:
    labelled = load(gpt2_lm.root / "evaluation_labels.npz")
    labels = labelled.pop("labels")
    model = session(gpt2_lm.model)
    (logits,) = model.run(None, labelled)
    known = labels >= 0
    # random weights guess 1 in 128 (all near-ties); this one is right on about half the characters
    assert np.mean(logits.argmax(axis=-1)[known] == labels[known]) > 0.35
    # a sentence alone, cut to its own length, gets the same scores as padded in the batch
    row = int(np.argmin(labelled["attention_mask"].sum(axis=1)))
    length = int(labelled["attention_mask"][row].sum())
    (alone,) = model.run(None, {name: array[row : row + 1, :length] for name, array in labelled.items()})
    np.testing.assert_allclose(alone[0], logits[row, :length], atol=1e-4)
    # causal: a position's scores do not read the characters after it
    cut = {name: array[row : row + 1, : length // 2] for name, array in labelled.items()}
    (prefix,) = model.run(None, cut)
    np.testing.assert_allclose(prefix[0], logits[row, : length // 2], atol=1e-4)


@pytest.mark.parametrize("name", ["efficientnet-lite0", "minilm-l6", "gpt2-lm"])
def test_a_second_build_skips_an_up_to_date_model(real_zoo: Path, name: str) -> None:
    root = real_zoo / name
    before = {file: (root / file).stat().st_mtime_ns for file in (*files_of(name), STAMP)}
    result = subprocess.run(
        [sys.executable, "-m", "quantship", "zoo", "build", str(real_zoo), "--model", name],
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    )
    assert "up to date" in result.stderr
    assert {file: (root / file).stat().st_mtime_ns for file in before} == before
