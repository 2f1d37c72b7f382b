"""The zoo's parts that need no torch: model names, the stdlib sentences, the build's stamp, staging
and error reporting (with a stand-in for the export script and the build virtualenv)."""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

import quantship
from quantship import zoo
from quantship.cli import main
from quantship.zoo import real, sentences

FAKE_EXPORT = """
import json, sys
from pathlib import Path
name, out = sys.argv[1], Path(sys.argv[2])
print("step: pretending to export", name, flush=True)
if name in ("minilm-l6", "gpt2-lm"):
    assert len(json.loads(Path(sys.argv[4]).read_text())) == {"minilm-l6": 700, "gpt2-lm": 2000}[name]
if Path(out.parent, "fail").exists():
    print("Traceback: something broke in the export", flush=True)
    sys.exit(3)
files = ["model.onnx", "calibration.npz", "evaluation.npz", "requests.npz", "request.json", "info.json"]
for file in files + (["evaluation_labels.npz"] if name == "gpt2-lm" else []):
    (out / file).write_text(name + file)
"""


def test_an_unknown_model_is_refused_in_one_line(tmp_path: Path) -> None:
    result = CliRunner().invoke(main, ["zoo", "build", str(tmp_path), "--model", "resnet50"])
    assert result.exit_code == 2
    assert result.stderr.strip().splitlines() == [
        "error: unknown model 'resnet50': choose from digits, efficientnet-lite0, minilm-l6, gpt2-lm, or all"
    ]
    assert not any(tmp_path.iterdir()), "nothing is built before the names are checked"


def test_model_names_resolve_in_a_fixed_order_without_repeats() -> None:
    assert zoo.resolve_names(("digits",)) == ["digits"]
    assert zoo.resolve_names(("minilm-l6", "digits", "minilm-l6")) == ["digits", "minilm-l6"]
    assert zoo.resolve_names(("all",)) == ["digits", "efficientnet-lite0", "minilm-l6", "gpt2-lm"]
    assert zoo.resolve_names(("all", "nope")) == (
        "unknown model 'nope': choose from digits, efficientnet-lite0, minilm-l6, gpt2-lm, or all"
    )


def test_stdlib_sentences_are_prose_distinct_and_deterministic() -> None:
    found = sentences.stdlib_sentences(700)
    assert len(found) == len(set(found)) == 700
    assert all(sentences.MIN_WORDS <= len(s.split()) <= sentences.MAX_WORDS for s in found)
    assert all(s[0].isupper() and s[-1] in ".!?" and ">>>" not in s for s in found)
    assert sentences.stdlib_sentences(50) == found[:50]
    # another interpreter, another hash seed: the same sentences in the same order
    code = (
        "import json; from quantship.zoo import sentences; print(json.dumps(sentences.stdlib_sentences(700)))"
    )
    env = {**os.environ, "PYTHONHASHSEED": "12345"}
    other = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env)
    assert json.loads(other.stdout) == found


def test_torch_stays_out_of_the_runtime() -> None:
    """export_torch.py is a script for the build virtualenv: no runtime module imports it, and
    importing the CLI and the zoo loads no torch."""
    package = Path(quantship.__file__).parent
    for source in package.rglob("*.py"):
        tree = ast.parse(source.read_text())
        for node in ast.walk(tree):
            names = (
                [alias.name for alias in node.names] if isinstance(node, ast.Import | ast.ImportFrom) else []
            )
            module = (node.module or "") if isinstance(node, ast.ImportFrom) else ""
            assert "export_torch" not in module and "export_torch" not in names, source
            if source.name != "export_torch.py":
                assert not module.startswith("torch") and not any(n.startswith("torch") for n in names), (
                    source
                )
    code = "import sys, quantship.cli, quantship.zoo.real; print('torch' in sys.modules)"
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert loaded.stdout.strip() == "False"


@pytest.fixture
def fake_build(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A build virtualenv that is already installed (this interpreter) and an export that writes
    placeholder files: exercises the orchestration without torch."""
    env = tmp_path / "venv-export"
    (env / "bin").mkdir(parents=True)
    (env / "bin" / "python").symlink_to(sys.executable)
    (env / real.ENV_STAMP).write_text("\n".join(real.BUILD_REQUIREMENTS) + "\n")
    script = tmp_path / "export_torch.py"
    script.write_text(FAKE_EXPORT)
    monkeypatch.setattr(real, "EXPORT_SCRIPT", script)
    return env


@pytest.mark.parametrize("name", real.REAL_MODELS)
def test_a_build_is_stamped_and_not_repeated(fake_build: Path, tmp_path: Path, name: str) -> None:
    out = tmp_path / "zoo"
    messages: list[str] = []
    sample = real.build(name, out, build_env=fake_build, report=messages.append)
    assert messages == [f"pretending to export {name}", "built"]
    assert sorted(p.name for p in sample.root.iterdir()) == sorted([*real.files_of(name), real.STAMP])
    assert not list(out.glob(".*partial")), "the staging folder was swapped in"

    messages.clear()
    real.build(name, out, build_env=fake_build, report=messages.append)
    assert messages == ["up to date"]

    sample.evaluation.write_text("truncated")  # a damaged file is rebuilt
    real.build(name, out, build_env=fake_build, report=messages.append)
    assert messages[-1] == "built" and sample.evaluation.read_text() == name + "evaluation.npz"


def test_a_new_recipe_rebuilds(fake_build: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "zoo"
    real.build("efficientnet-lite0", out, build_env=fake_build, report=lambda _: None)
    requirements = (*real.BUILD_REQUIREMENTS[:-1], "onnxruntime==0.0.1")
    monkeypatch.setattr(real, "BUILD_REQUIREMENTS", requirements)
    stale = real.recipe("efficientnet-lite0")
    assert not real.up_to_date(out / "efficientnet-lite0", "efficientnet-lite0", stale)


def test_a_failed_export_keeps_the_old_model_and_says_why(
    fake_build: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "zoo"
    sample = real.build("efficientnet-lite0", out, build_env=fake_build, report=lambda _: None)
    (out / "fail").touch()
    sample.model.write_text("the previous model")
    (sample.root / real.STAMP).unlink()  # stale: a rebuild is due

    result = CliRunner().invoke(
        main, ["zoo", "build", str(out), "--model", "efficientnet-lite0", "--build-env", str(fake_build)]
    )
    assert result.exit_code == 3  # ExitCode.REFUSED: a build that failed (an unknown name is usage: 2)
    assert "error: building efficientnet-lite0 failed: exporting efficientnet-lite0 failed (exit 3):" in (
        result.stderr
    )
    assert "Traceback: something broke in the export" in result.stderr
    assert sample.model.read_text() == "the previous model"
