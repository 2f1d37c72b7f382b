"""The `quantship` command as a person meets it: exit codes, one-line errors, nothing half-written."""

from __future__ import annotations

import contextlib
import io
import json
import os
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from gemm_models import build_gemm_mlp, rows
from onnx import TensorProto, helper, numpy_helper

from quantship import artifact, artifact_dirs, artifact_keys, zoo
from quantship.cli import main
from quantship.quantize import QuantizeConfig, engine_model, run
from quantship.quantize.errors import QuantizeInputError
from quantship.runtime import create_session


def _cli(*args: str | Path) -> tuple[int, str, str]:
    result = CliRunner().invoke(main, [str(a) for a in args])
    return result.exit_code, result.stdout, result.stderr


def _quantize(
    sample: zoo.SampleModel,
    out: Path,
    *extra: str | Path,
    model: Path | None = None,
    calibration: Path | None = None,
) -> tuple[int, str, str]:
    return _cli(
        "quantize",
        model or sample.model,
        "-o",
        out,
        "--calibration",
        calibration or sample.calibration,
        "--evaluation",
        sample.evaluation,
        "-q",
        *extra,
    )


_FAILING_GATE = ("--metric", "kl_divergence", "--threshold", "0")
"""A gate no quantized model passes: int8 always moves the softmax a little."""


def _assert_one_line_error(code: int, stderr: str, message: str) -> None:
    assert code == 3, stderr  # ExitCode.REFUSED
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, stderr
    assert lines[0].startswith("error: ") and message in lines[0], lines[0]


def _npz(path: Path, **arrays: np.ndarray) -> Path:
    np.savez(path, **arrays)
    return path


def test_quantize_writes_an_artifact_and_prints_the_summary(sample: zoo.SampleModel, tmp_path: Path) -> None:
    code, out, err = _quantize(sample, tmp_path / "a")
    assert code == 0, err
    assert "quantization summary" in out and "passed" in out
    written = artifact.load_artifact(tmp_path / "a")
    assert written.gate_passed
    # The gated number is the relative accuracy loss; "97.75%→98.00% | Δ -0.26%" read backwards.
    loss = written.manifest["validation"]["value"]
    assert f"accuracy {'gain' if loss < 0 else 'loss'} {abs(loss):.2%}" in out and "Δ" not in out


def test_a_gate_on_a_handful_of_rows_is_warned_of(sample: zoo.SampleModel, tmp_path: Path) -> None:
    """One EfficientNet-Lite0 image passed the gate at agreement 1.0, and nothing said how little
    that meant; the sample's own evaluation set is not warned of."""
    with np.load(sample.evaluation) as full:
        few = _npz(tmp_path / "few.npz", **{name: full[name][:5] for name in full.files})
    code, _, err = _cli("quantize", sample.model, "-o", tmp_path / "a", "--calibration", sample.calibration,
                        "--evaluation", few, "-q")  # fmt: skip
    assert code == 0, err
    said = "the gate judges only 5 evaluation rows of"
    assert said in " ".join(err.split())
    assert any(said in warning for warning in artifact.load_artifact(tmp_path / "a").manifest["warnings"])
    assert _quantize(sample, tmp_path / "b")[0] == 0
    assert not any(
        "the gate judges only" in w for w in artifact.load_artifact(tmp_path / "b").manifest["warnings"]
    )


def test_quantize_draws_nothing_so_imports_no_matplotlib(sample: zoo.SampleModel, tmp_path: Path) -> None:
    """Importing matplotlib's pyplot took 1.9 s of every quantize (hunt H5, a small GPT-2), which
    prints a table and draws nothing: only `report` draws."""
    code = (
        "import sys\n"
        "from quantship.cli import main\n"
        "main.main(sys.argv[1:], standalone_mode=False)\n"
        "print('matplotlib' in sys.modules)\n"
    )
    args = ["quantize", sample.model, "-o", tmp_path / "a", "-q"]
    args += ["--calibration", sample.calibration, "--evaluation", sample.evaluation]
    run = subprocess.run(
        [sys.executable, "-c", code, *map(str, args)], capture_output=True, text=True, timeout=300
    )
    assert run.returncode == 0, run.stderr
    assert "quantization summary" in run.stdout
    assert run.stdout.strip().splitlines()[-1] == "False"


def test_an_empty_directory_at_out_is_written_into_a_full_one_refused(
    sample: zoo.SampleModel, tmp_path: Path
) -> None:
    (tmp_path / "empty").mkdir()
    assert _quantize(sample, tmp_path / "empty")[0] == 0
    assert artifact.load_artifact(tmp_path / "empty").gate_passed
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "notes.txt").write_text("mine")
    code, _, err = _quantize(sample, tmp_path / "full")
    _assert_one_line_error(code, err, "exists and is not an artifact; refusing to overwrite it")
    assert [p.name for p in (tmp_path / "full").iterdir()] == ["notes.txt"]
    # a mount point (here /proc, one on every Linux): the artifact is renamed into place, never
    # across file systems; refused at once, not with EBUSY after the calibration and the trials
    code, _, err = _quantize(sample, Path("/proc"))
    _assert_one_line_error(code, err, "/proc is a mount point: write the artifact to a directory inside it")


def test_a_folder_of_the_users_where_the_older_artifact_goes_aside_is_refused_before_any_work(
    artifact_copy: Path, tmp_path: Path
) -> None:
    """Replacing an older artifact moves it aside to `.NAME.old` first, and a folder of the user's
    there is refused: but only by the rename, after the calibration and the trials (a missing model
    was the error here, named after the refusal it hid)."""
    aside = artifact_copy.with_name(f".{artifact_copy.name}.old")
    aside.mkdir()
    (aside / "notes.txt").write_text("mine")

    code, _, err = _cli("quantize", tmp_path / "missing.onnx", "-o", artifact_copy, "-q")

    _assert_one_line_error(code, err, f"{aside} exists and is not an artifact; refusing to overwrite it")
    assert [p.name for p in aside.iterdir()] == ["notes.txt"]


def test_a_failed_gate_exits_1_and_marks_the_artifact(sample: zoo.SampleModel, tmp_path: Path) -> None:
    with np.load(sample.calibration) as calibration:
        zeros = _npz(tmp_path / "zeros.npz", X=np.zeros_like(calibration["X"]))  # every range collapses
    recipe_only = ("--strategy", "fallback", "--max-trials", "0")
    code, _, err = _cli("quantize", sample.model, "-o", tmp_path / "a", "--calibration", zeros,
                        "--evaluation", sample.evaluation, *recipe_only, "-q")  # fmt: skip
    assert code == 1
    assert "accuracy gate failed" in err
    assert json.loads((tmp_path / "a" / "manifest.json").read_text())["validation"]["gate"] == "failed"
    assert _cli("report", tmp_path / "a", "-o", tmp_path / "r.html")[0] == 0
    page = (tmp_path / "r.html").read_text()
    assert "no trial passed the gate: the one that came closest to it" in page
    assert "most quantized passing trial" not in page
    manifest = json.loads((tmp_path / "a" / "manifest.json").read_text())
    advice = manifest["tuning"]["advice"]
    # static, with labels: calibration data is the suggestion, labels are not (they were given)
    assert "calibration data" in advice and "labelled" not in advice
    assert "no trial passed the gate" in err and advice in err  # said on the console
    assert not any(advice in warning for warning in manifest["warnings"])
    assert page.count("Next: ") == 1  # the report showed it twice, the second time as a warning
    # packed as it is, but said: it went silently, with exit 0, where verify exits 1
    code, out, err = _cli("pack", tmp_path / "a", tmp_path / "a.tar.gz")
    assert code == 0 and out.strip() == f"wrote {tmp_path / 'a.tar.gz'}", err
    assert err.splitlines() == [
        f"warning: {tmp_path / 'a'}: its accuracy gate failed (a best effort; `quantship verify` exits 1 "
        "on it): packing it as it is"
    ]


def test_a_rerun_whose_gate_fails_leaves_a_passing_artifact_and_writes_beside_it(
    sample: zoo.SampleModel, tmp_path: Path
) -> None:
    """A failed rerun into the `-o` of a passing artifact replaced it: `verify` then said ok and
    `serve` served the failed model."""
    out = tmp_path / "prod"
    assert _quantize(sample, out)[0] == 0
    passing = artifact.load_artifact(out).digest
    code, stdout, err = _quantize(sample, out, *_FAILING_GATE, "--max-trials", "0")
    assert code == 1, err
    assert artifact.load_artifact(out).digest == passing
    failed = artifact.load_artifact(artifact_dirs.gate_failed_path(out))
    assert failed.gate == "failed" and failed.root.name == "prod.gate-failed"
    message = " ".join(err.split())
    assert f"best effort written to {out}.gate-failed" in message and "is left as it was" in message
    assert "prod.gate-failed" in stdout
    code, stdout, _ = _cli("verify", failed.root)  # intact, but `verify && deploy` must not ship it
    assert code == 1 and stdout.startswith("gate failed: ") and "its accuracy gate failed" in stdout
    # kill -9 between a replacement's two renames hid the passing artifact in `.prod.old`: the
    # next run puts it back before judging what `-o` holds.
    out.rename(tmp_path / ".prod.old")
    assert _quantize(sample, out, *_FAILING_GATE, "--max-trials", "0")[0] == 1
    assert artifact.load_artifact(out).digest == passing
    assert not (tmp_path / ".prod.old").exists()
    # A failed best effort is no artifact to keep: the next failed run replaces it, in place.
    assert _quantize(sample, failed.root, *_FAILING_GATE, "--max-trials", "0")[0] == 1
    assert artifact.load_artifact(failed.root).digest != failed.digest
    assert not artifact_dirs.gate_failed_path(failed.root).exists()


def test_a_rerun_of_quantize_or_package_says_it_replaced_the_older_artifact_as_pull_and_pack_do(
    sample: zoo.SampleModel, tmp_path: Path
) -> None:
    """`quantize -o` (and `package -o`) onto an older artifact replaced it saying nothing, where
    `pull -o` and `pack` say so; quantize says it on stderr, as stdout is the summary table's alone.
    A failed rerun's best effort beside it replaces only an older best effort."""
    out = tmp_path / "prod"
    replaced = "(in place of the older artifact there)"
    code, stdout, err = _quantize(sample, out)
    assert code == 0 and replaced not in err, err
    code, stdout, err = _quantize(sample, out)
    assert code == 0 and replaced not in stdout
    assert f"wrote {out} {replaced}" in err.splitlines(), err
    code, _, err = _quantize(sample, out, *_FAILING_GATE, "--max-trials", "0")
    assert code == 1 and replaced not in err, err  # written beside it, where nothing was
    code, _, err = _quantize(sample, out, *_FAILING_GATE, "--max-trials", "0")
    assert code == 1 and f"wrote {artifact_dirs.gate_failed_path(out)} {replaced}" in err.splitlines(), err
    fp32 = tmp_path / "fp32"
    assert _cli("package", sample.model, "-o", fp32)[1].strip().endswith("bytes)")
    code, stdout, _ = _cli("package", sample.model, "-o", fp32)  # package's -o is the same option
    assert code == 0 and stdout.strip().endswith(f"bytes) {replaced}"), stdout


def test_package_through_a_link_says_it_replaced_the_artifact_the_link_names(
    sample: zoo.SampleModel, tmp_path: Path
) -> None:
    """`package -o current` (`current -> v1/`) replaces the artifact the link names, as the README
    says, but the link itself was judged (no artifact: a link), and the rerun said nothing of it,
    where `quantize` and `pull` through a link say "in place of the older artifact there"."""
    assert _cli("package", sample.model, "-o", tmp_path / "v1")[0] == 0
    (tmp_path / "current").symlink_to("v1")

    code, stdout, err = _cli("package", sample.model, "-o", tmp_path / "current")

    assert code == 0, err
    assert stdout.strip().startswith(f"wrote {tmp_path / 'v1'} "), stdout
    assert stdout.strip().endswith("bytes) (in place of the older artifact there)"), stdout


def test_a_failed_rerun_through_a_symlink_leaves_the_passing_artifact_behind_it(
    sample: zoo.SampleModel, tmp_path: Path
) -> None:
    """`current -> v3/`, the usual way to deploy: the link was judged (no artifact: a link), and the
    write then followed it over the passing v3."""
    real = tmp_path / "v3"
    assert _quantize(sample, real)[0] == 0
    passing = artifact.load_artifact(real).digest
    (tmp_path / "current").symlink_to("v3")

    code, _, err = _quantize(sample, tmp_path / "current", *_FAILING_GATE, "--max-trials", "0")

    assert code == 1, err
    assert artifact.load_artifact(real).digest == passing
    assert artifact.load_artifact(artifact_dirs.gate_failed_path(real)).gate == "failed"


BAD_INPUTS = {
    "not an onnx file": ("model", b"this is text, not protobuf", "is not an ONNX model"),
    # onnx parses these as JSON or text protobuf, by their suffix: a request given by mistake
    "a request given as the model": ("request.json", b'{"id": "x", "inputs": []}', "is not an ONNX model"),
    "a text file given as the model": ("notes.txt", b"not: [a model", "is not an ONNX model"),
    "model onnxruntime cannot load": ("broken-model", None, "onnxruntime cannot load"),
    "calibration missing an input": (
        "calibration",
        {"Y": np.zeros((4, 64), np.float32)},
        "match no model input",
    ),
    "calibration of the wrong shape": (
        "calibration",
        {"X": np.zeros((4, 63), np.float32)},
        "has shape [4, 63]",
    ),
    "calibration of the wrong dtype": ("calibration", {"X": np.zeros((4, 64), np.int32)}, "'X' is int32"),
    "empty calibration set": ("calibration", {"X": np.zeros((0, 64), np.float32)}, "holds 0 samples"),
    "labels that do not match": (
        "evaluation",
        {"X": np.zeros((4, 64), np.float32), "labels": np.arange(5)},
        "labels do not match",
    ),
}


@pytest.mark.parametrize("case", BAD_INPUTS, ids=list(BAD_INPUTS))
def test_bad_input_gets_one_line_exit_2_and_leaves_nothing(
    sample: zoo.SampleModel, tmp_path: Path, case: str
) -> None:
    kind, payload, message = BAD_INPUTS[case]
    model, calibration, evaluation = sample.model, sample.calibration, sample.evaluation
    if kind == "model" or "." in kind:
        model = tmp_path / ("model.onnx" if kind == "model" else kind)
        model.write_bytes(payload)  # type: ignore[arg-type]
    elif kind == "broken-model":
        broken = onnx.load(str(sample.model))
        broken.graph.node[1].input[0] = "no_such_tensor"
        model = tmp_path / "broken.onnx"
        onnx.save(broken, model)
    elif kind == "calibration":
        calibration = _npz(tmp_path / "calibration.npz", **payload)  # type: ignore[arg-type]
    else:
        evaluation = _npz(tmp_path / "evaluation.npz", **payload)  # type: ignore[arg-type]
    out = tmp_path / "out" / "artifact"
    code, _, err = _cli(
        "quantize", model, "-o", out, "--calibration", calibration, "--evaluation", evaluation, "-q"
    )
    _assert_one_line_error(code, err, message)
    assert not (tmp_path / "out").exists() or list((tmp_path / "out").iterdir()) == []


def test_an_unwritable_output_path_fails_before_any_work(sample: zoo.SampleModel, tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("I am a file, not a folder")
    code, _, err = _quantize(sample, blocker / "artifact")
    _assert_one_line_error(code, err, "not writable")
    assert blocker.read_text() == "I am a file, not a folder"


def test_refuses_to_overwrite_a_folder_that_is_not_an_artifact(
    sample: zoo.SampleModel, tmp_path: Path
) -> None:
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "notes.md").write_text("keep me")
    code, _, err = _quantize(sample, tmp_path / "docs")
    _assert_one_line_error(code, err, "exists and is not an artifact")
    assert (tmp_path / "docs" / "notes.md").read_text() == "keep me"


def test_excluding_a_node_that_does_not_exist(sample: zoo.SampleModel, tmp_path: Path) -> None:
    code, _, err = _quantize(sample, tmp_path / "a", "--exclude", "MatMul", "--exclude", "MatMull")
    _assert_one_line_error(code, err, "--exclude names no node of the model: MatMull")


def test_excluded_nodes_stay_in_float(sample: zoo.SampleModel, tmp_path: Path) -> None:
    code, _, err = _quantize(sample, tmp_path / "a", "--exclude", "MatMul")
    assert code == 0, err
    loaded = artifact.load_artifact(tmp_path / "a")
    assert loaded.quantization["excluded_nodes"] == ["MatMul"]
    matmul = next(n for n in onnx.load(str(loaded.model_path)).graph.node if n.name == "MatMul")
    assert matmul.op_type == "MatMul" and not any(
        name.endswith("DequantizeLinear_Output") for name in matmul.input
    )


def test_static_quantization_without_calibration_data(sample: zoo.SampleModel, tmp_path: Path) -> None:
    code, _, err = _cli("quantize", sample.model, "-o", tmp_path / "a", "-q")
    _assert_one_line_error(code, err, "needs calibration data")
    assert "--mode dynamic" in err  # the way on without calibration data


def test_sign_then_verify_and_tamper(sample: zoo.SampleModel, tmp_path: Path) -> None:
    private, public = tmp_path / "k.pem", tmp_path / "k.pub"
    assert _cli("keygen", "--private", private, "--public", public)[0] == 0
    code, _, err = _quantize(sample, tmp_path / "a", "--sign-key", private)
    assert code == 0, err
    code, out, _ = _cli("verify", tmp_path / "a", "--public-key", public)
    assert code == 0 and "signature valid" in out
    # a signature anyone could have added proves nothing until a key checks it: the report says which
    assert _cli("report", tmp_path / "a", "-o", tmp_path / "unchecked.html")[0] == 0
    assert "not checked: pass --public-key to check it" in (tmp_path / "unchecked.html").read_text()
    assert _cli("report", tmp_path / "a", "-o", tmp_path / "checked.html", "--public-key", public)[0] == 0
    assert "valid for the public key given" in (tmp_path / "checked.html").read_text()
    code, _, err = _cli("verify", tmp_path / "a", "--public-key", private)  # the wrong half of the pair
    _assert_one_line_error(code, err, "k.pem is not a public key (it holds a private key")

    model = tmp_path / "a" / artifact.MODEL_FILE
    model.write_bytes(model.read_bytes()[:-1] + b"\x00")
    code, _, err = _cli("verify", tmp_path / "a", "--public-key", public)
    _assert_one_line_error(code, err, "model.onnx does not match its sha256")


def test_keygen_never_replaces_a_key_and_keeps_the_private_one_to_its_owner(tmp_path: Path) -> None:
    private, public = tmp_path / "k.pem", tmp_path / "k.pub"
    assert _cli("keygen", "--private", private, "--public", public)[0] == 0
    assert private.stat().st_mode & 0o777 == 0o600
    kept = private.read_bytes()
    code, _, err = _cli("keygen", "--private", private, "--public", tmp_path / "other.pub")
    _assert_one_line_error(code, err, "k.pem exists; refusing to replace a key")
    assert private.read_bytes() == kept and not (tmp_path / "other.pub").exists()
    code, _, err = _cli(
        "keygen", "--private", tmp_path / "no" / "such" / "k.pem", "--public", tmp_path / "n.pub"
    )
    _assert_one_line_error(code, err, "cannot write the key pair")


def test_keygen_refuses_one_file_for_both_keys(tmp_path: Path) -> None:
    """Written in turn, the public key would replace the private one, and keygen said it wrote both."""
    code, _, err = _cli("keygen", "--private", tmp_path / "k.pem", "--public", tmp_path / "." / "k.pem")
    _assert_one_line_error(code, err, "the private and public keys need two files")
    assert not (tmp_path / "k.pem").exists()


def test_keygen_leaves_no_half_pair_when_the_public_key_cannot_be_written(tmp_path: Path) -> None:
    """A private key left alone would refuse every rerun, and its public half was never written."""
    private = tmp_path / "k.pem"
    code, _, err = _cli("keygen", "--private", private, "--public", tmp_path / "no" / "k.pub")
    _assert_one_line_error(code, err, "cannot write the key pair")
    assert not private.exists()
    (tmp_path / "taken.pub").write_text("someone's key")
    code, _, err = _cli("keygen", "--private", private, "--public", tmp_path / "taken.pub")
    _assert_one_line_error(code, err, "taken.pub exists; refusing to replace a key")
    assert not private.exists() and (tmp_path / "taken.pub").read_text() == "someone's key"
    assert _cli("keygen", "--private", private, "--public", tmp_path / "k.pub")[0] == 0


def test_verify_refuses_an_unsigned_artifact_when_a_key_is_required(
    good_artifact: artifact.Artifact, tmp_path: Path
) -> None:
    private, public = tmp_path / "k.pem", tmp_path / "k.pub"
    artifact_keys.generate_keypair(private, public)
    code, out, _ = _cli("verify", good_artifact.root)
    assert code == 0 and "unsigned" in out
    code, _, err = _cli("verify", good_artifact.root, "--public-key", public)
    _assert_one_line_error(code, err, "artifact is unsigned, but a public key is required")


def test_pack_writes_a_tarball_that_verifies_and_refuses_a_tampered_artifact(
    artifact_copy: Path, tmp_path: Path
) -> None:
    code, out, err = _cli("pack", artifact_copy, tmp_path / "digits.tar.gz")
    assert code == 0, err
    code, out, _ = _cli("verify", tmp_path / "digits.tar.gz")
    assert code == 0 and "2 files match their sha256" in out

    model = artifact_copy / artifact.MODEL_FILE
    model.write_bytes(model.read_bytes()[:-1] + b"\x01")
    code, _, err = _cli("pack", artifact_copy, tmp_path / "tampered.tar.gz")
    _assert_one_line_error(code, err, "does not match its sha256")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["artifact", "digits.tar.gz"]


def test_pack_replaces_an_older_archive_in_one_rename_and_refuses_any_other_file(
    artifact_copy: Path, skewed_artifact: artifact.Artifact, tmp_path: Path
) -> None:
    """pack wrote over whatever TARBALL named, saying nothing, where `quantize -o` and `pull -o`
    refuse what is not their own earlier output: now it replaces an artifact archive, says so, and
    refuses anything else, untouched."""
    tarball = tmp_path / "digits.tar.gz"
    code, out, err = _cli("pack", artifact_copy, tarball)
    assert code == 0 and out.strip() == f"wrote {tarball}", err
    code, out, err = _cli("pack", skewed_artifact.root, tarball)
    assert code == 0 and out.strip() == f"wrote {tarball} (in place of the older archive there)", err
    with artifact.opened(tarball) as packed:
        assert packed.digest == skewed_artifact.digest
    before = tarball.read_bytes()
    model = artifact_copy / artifact.MODEL_FILE
    model.write_bytes(model.read_bytes()[:-1] + b"\x01")
    code, _, err = _cli("pack", artifact_copy, tarball)  # refused: the older archive stays as it was
    _assert_one_line_error(code, err, "does not match its sha256")
    assert tarball.read_bytes() == before

    theirs = tmp_path / "backup.tar.gz"
    with tarfile.open(theirs, "w:gz") as archive:
        archive.add(model, arcname="notes.txt")
    kept = theirs.read_bytes()
    code, _, err = _cli("pack", skewed_artifact.root, theirs)
    _assert_one_line_error(
        code, err, "backup.tar.gz exists and is not an artifact archive; refusing to replace it"
    )
    assert theirs.read_bytes() == kept
    assert sorted(p.name for p in tmp_path.iterdir()) == ["artifact", "backup.tar.gz", "digits.tar.gz"]


def test_pack_writes_beside_its_archive_in_a_folder_of_its_own(artifact_copy: Path, tmp_path: Path) -> None:
    """Every pack to one TARBALL wrote `.TARBALL.partial`: a second pack, started while the first
    wrote, truncated and wrote the same file, the first renamed it into place half-written by the
    second and said "wrote", and the second, its file gone, said "cannot write" (two packs of
    all-MiniLM-L6-v2's 110 MB artifacts to one name: the one that said "wrote" was not the one
    there). The file another pack is writing is left as it is."""
    tarball = tmp_path / "digits.tar.gz"
    in_flight = tmp_path / ".digits.tar.gz.partial"  # the name a pack in flight wrote
    in_flight.write_bytes(b"another pack's half-written archive")

    code, out, err = _cli("pack", artifact_copy, tarball)

    assert code == 0 and out.strip() == f"wrote {tarball}", err
    assert in_flight.read_bytes() == b"another pack's half-written archive"
    assert sorted(p.name for p in tmp_path.iterdir()) == [in_flight.name, "artifact", tarball.name]


def test_pack_refuses_an_archive_whose_manifest_json_is_not_an_artifacts(
    skewed_artifact: artifact.Artifact, tmp_path: Path
) -> None:
    """A file named manifest.json at an archive's top was taken for an artifact's: `docker save`
    writes one there, and pack replaced a gzipped image with the artifact, saying "in place of the
    older archive there"."""
    image = _docker_save_tarball(tmp_path / "image.tar.gz")
    kept = image.read_bytes()

    code, _, err = _cli("pack", skewed_artifact.root, image)

    _assert_one_line_error(
        code, err, "image.tar.gz exists and is not an artifact archive; refusing to replace it"
    )
    assert image.read_bytes() == kept


def _docker_save_tarball(path: Path) -> Path:
    """A gzipped `docker save` image: a manifest.json at its top that is not an artifact's."""
    docker_manifest = json.dumps([{"Config": "c.json", "RepoTags": ["app:1"], "Layers": []}]).encode()
    with tarfile.open(path, "w:gz") as archive:
        for name, data in (("manifest.json", docker_manifest), ("c.json", b"{}"), ("repositories", b"{}")):
            member = tarfile.TarInfo(name)
            member.size = len(data)
            archive.addfile(member, io.BytesIO(data))
    return path


def test_pack_through_a_link_replaces_the_archive_it_names_and_refuses_a_link_to_anything_else(
    good_artifact: artifact.Artifact, skewed_artifact: artifact.Artifact, tmp_path: Path
) -> None:
    """`pack ART current.tar.gz`, a link to an older archive, was refused ("exists and is not an
    artifact archive"), where `quantize -o current`, a link to an artifact, replaces the artifact it
    names: now pack replaces the archive the link names, and the link stays. A link to a `docker
    save` tarball, to nothing or to itself is refused in one line, and one to a folder as that folder
    is (click's usage error), all before any work and untouched."""
    older = tmp_path / "v1.tar.gz"
    assert _cli("pack", good_artifact.root, older)[0] == 0
    current = tmp_path / "current.tar.gz"
    current.symlink_to(older.name)

    code, out, err = _cli("pack", skewed_artifact.root, current)

    assert code == 0 and out.strip() == f"wrote {older.resolve()} (in place of the older archive there)", err
    assert current.is_symlink() and os.readlink(current) == older.name
    with artifact.opened(current) as packed:
        assert packed.digest == skewed_artifact.digest
    image = _docker_save_tarball(tmp_path / "image.tar.gz")
    kept = image.read_bytes()
    (tmp_path / "image-link.tar.gz").symlink_to(image.name)
    (tmp_path / "dangling.tar.gz").symlink_to("nowhere.tar.gz")
    (tmp_path / "loop.tar.gz").symlink_to("loop.tar.gz")
    (tmp_path / "folder").mkdir()
    (tmp_path / "folder-link.tar.gz").symlink_to("folder")
    refusals = {
        "image-link.tar.gz": f"(a link to {image.resolve()}) exists and is not an artifact archive; refusing",
        "dangling.tar.gz": f"is a link to {tmp_path.resolve() / 'nowhere.tar.gz'}, which does not exist",
        "loop.tar.gz": "is a link that cannot be followed",
    }
    for name, message in refusals.items():
        code, _, err = _cli("pack", skewed_artifact.root, tmp_path / name)
        _assert_one_line_error(code, err, f"{tmp_path / name} {message}")
    code, _, err = _cli("pack", skewed_artifact.root, tmp_path / "folder-link.tar.gz")
    assert code == 2 and "is a directory" in err, err

    assert image.read_bytes() == kept and list((tmp_path / "folder").iterdir()) == []
    links = [*refusals, "current.tar.gz", "folder-link.tar.gz"]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        [*links, "v1.tar.gz", "image.tar.gz", "folder"]
    )


def test_pack_refuses_a_name_that_verify_and_serve_would_not_take_for_an_archive(
    good_artifact: artifact.Artifact, tmp_path: Path
) -> None:
    """They tell an archive from a directory by its name: a digits.zip was written, then refused."""
    code, _, err = _cli("pack", good_artifact.root, tmp_path / "digits.zip")
    _assert_one_line_error(code, err, "an artifact archive's name ends in .tar.gz or .tgz")
    assert list(tmp_path.iterdir()) == []
    assert _cli("pack", good_artifact.root, tmp_path / "digits.tgz")[0] == 0
    assert _cli("verify", tmp_path / "digits.tgz")[0] == 0


def test_report_names_the_gated_number_as_the_relative_loss_it_is(
    good_artifact: artifact.Artifact, tmp_path: Path
) -> None:
    """The headline read `top1_accuracy 0  threshold 0.005` for a model at 97.75%: the number is the
    relative accuracy loss, and the threshold the most of it allowed."""
    assert _cli("report", good_artifact.root, "-o", tmp_path / "r.html")[0] == 0
    page = (tmp_path / "r.html").read_text()
    loss = good_artifact.manifest["validation"]["value"]
    assert f"relative accuracy loss<b>{loss:.2%}</b>" in page
    assert "top1_accuracy: relative accuracy loss &lt;= 0.50%" in page
    assert "top1_accuracy<b>" not in page and "threshold<b>" not in page
    assert "<td>relative top-1 accuracy loss against the labels (lower is better, 0 = identical)</td>" in page


def test_report_plots_a_regression_error_on_its_own_lower_is_better_axis(
    sample: zoo.SampleModel, tmp_path: Path
) -> None:
    """relative_error 0.0019 was a bar on a 0-1 axis titled `INT8 vs FP32 (1 = identical)`."""
    with np.load(sample.evaluation) as evaluation:
        unlabelled = _npz(tmp_path / "eval.npz", X=evaluation["X"])
    regression = ("--task", "regression", "--output", "probabilities", "--mode", "dynamic")
    code, _, err = _cli("quantize", sample.model, "-o", tmp_path / "a", "--evaluation", unlabelled,
                        "--strategy", "fallback", "--max-trials", "0", "-q", *regression)  # fmt: skip
    assert code == 0, err
    assert _cli("report", tmp_path / "a", "-o", tmp_path / "r.html")[0] == 0
    page = (tmp_path / "r.html").read_text()
    assert 'alt="INT8 vs FP32, lower is better (0 = identical): relative_error; model file size' in page
    assert "1 = identical" not in page


def test_package_o_dot_writes_the_folder_it_names(
    sample: zoo.SampleModel, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`package -o .` was a traceback (ValueError: PosixPath('.') has an empty name): its -o was
    judged unresolved, where `quantize -o .` resolves it first."""
    here = tmp_path / "here"
    here.mkdir()
    monkeypatch.chdir(here)

    code, out, err = _cli("package", sample.model, "-o", ".")

    monkeypatch.chdir(tmp_path)
    assert code == 0 and out.startswith(f"wrote {here} (fp32, "), err
    assert artifact.load_artifact(here).manifest["quantization"]["precision"] == "fp32"


def test_report_of_an_fp32_package_says_it_is_an_unquantized_baseline(
    sample: zoo.SampleModel, tmp_path: Path
) -> None:
    """It said `accuracy gate FAILED` and `? ... fused int8 kernels of onnxruntime ? on ?`."""
    assert _cli("package", sample.model, "-o", tmp_path / "fp32")[0] == 0
    code, _, err = _cli("report", tmp_path / "fp32", "-o", tmp_path / "r.html")
    assert code == 0, err
    page = (tmp_path / "r.html").read_text()
    assert "precision<b>fp32</b>" in page and "verdict<b>unquantized baseline, no gate</b>" in page
    assert "FAILED" not in page and "int8 kernels" not in page and "?" not in page
    code, out, _ = _cli("verify", tmp_path / "fp32")
    assert code == 0 and "its one file matches its sha256" in out, out
    assert "no gate (an unquantized baseline)" in out and "gate unknown" not in out


def test_report_is_one_self_contained_html_file_with_plots(
    good_artifact: artifact.Artifact, tmp_path: Path
) -> None:
    code, _, err = _cli("report", good_artifact.root, "-o", tmp_path / "r.html")
    assert code == 0, err
    page = (tmp_path / "r.html").read_text()
    for section in (
        "Verdict",
        "FP32 vs INT8",
        "Tuning trials",
        "Per-tensor SQNR",
        "Calibrated activation ranges",
    ):
        assert f"<h2>{section}</h2>" in page
    assert page.count("data:image/png;base64,") >= 4
    assert "http://" not in page and "https://" not in page  # no external assets


def test_the_installed_console_script_runs(tmp_path: Path) -> None:
    result = subprocess.run(
        [Path(sys.executable).parent / "quantship", "verify", tmp_path],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 3  # ExitCode.REFUSED
    assert result.stderr.strip() == f"error: {tmp_path}: not an artifact (no manifest.json)"


def test_a_bare_onnx_model_given_for_an_artifact_is_told_how_to_make_one(
    sample: zoo.SampleModel, tmp_path: Path
) -> None:
    """`serve` or `verify` of the model itself, as a KServe user would point at a model file: it said
    'not an artifact (no manifest.json)', naming nothing to run."""
    code, _, err = _cli("verify", sample.model)
    _assert_one_line_error(code, err, f"{sample.model}: an ONNX model, not an artifact")
    assert f"quantship package {sample.model} --out DIR" in err


def test_a_metric_of_another_task_is_refused_in_one_line(sample: zoo.SampleModel, tmp_path: Path) -> None:
    code, _, err = _quantize(sample, tmp_path / "a", "--metric", "cosine_p5")
    _assert_one_line_error(code, err, "--metric cosine_p5 is for embedding, but the task is classification")
    assert not (tmp_path / "a").exists()


def test_labels_for_an_embedding_task_are_refused_in_one_line(
    sample: zoo.SampleModel, tmp_path: Path
) -> None:
    code, _, err = _quantize(sample, tmp_path / "a", "--task", "embedding")
    _assert_one_line_error(code, err, "labels are class ids for a classifier")


def test_labels_the_fp32_model_never_gets_right_are_refused_not_judged(
    sample: zoo.SampleModel, tmp_path: Path
) -> None:
    """Shifted or foreign labels: FP32 accuracy 0 made every relative loss 0, so any model passed."""
    with np.load(sample.evaluation) as held_out:
        shifted = _npz(tmp_path / "shifted.npz", X=held_out["X"], labels=held_out["labels"] + 1000)
    code, _, err = _cli("quantize", sample.model, "-o", tmp_path / "a", "--calibration", sample.calibration,
                        "--evaluation", shifted, "-q")  # fmt: skip
    _assert_one_line_error(code, err, "the FP32 model gets none of its")
    assert "labels up to 1009 where output 'probabilities' has 10 classes" in err
    assert not (tmp_path / "a").exists()


def _save(graph: onnx.GraphProto, path: Path) -> Path:
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return path


def _autoencoder(path: Path, *, width: int = 64) -> Path:
    """Sigmoid(Relu(X W1) W2): the digits' 64 pixels through 12 numbers to `width` values in (0, 1),
    no value of a row far above the rest. At width 64 it is the input's shape: a reconstruction."""
    rng = np.random.default_rng(2)
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["X", "encode"], ["code"]),
         helper.make_node("Relu", ["code"], ["positive"]),
         helper.make_node("MatMul", ["positive", "decode"], ["decoded"]),
         helper.make_node("Sigmoid", ["decoded"], ["reconstruction"])],
        "autoencoder",
        [helper.make_tensor_value_info("X", TensorProto.FLOAT, ["N", 64])],
        [helper.make_tensor_value_info("reconstruction", TensorProto.FLOAT, ["N", width])],
        [numpy_helper.from_array(rng.normal(scale=0.3, size=(64, 12)).astype(np.float32), "encode"),
         numpy_helper.from_array(rng.normal(scale=0.3, size=(12, width)).astype(np.float32), "decode")],
    )  # fmt: skip
    return _save(graph, path)


def _unlabelled(sample: zoo.SampleModel, path: Path) -> Path:
    with np.load(sample.evaluation) as held_out:
        return _npz(path, X=held_out["X"])


def test_an_autoencoders_reconstruction_is_gated_on_relative_error_not_argmax(
    sample: zoo.SampleModel, tmp_path: Path
) -> None:
    """Its [N, 64] output was read as 64 class scores: gated on which pixel is brightest, with
    advice to label the data, and served with an argmax shadow rule."""
    model = _autoencoder(tmp_path / "autoencoder.onnx")
    code, _, err = _quantize(sample, tmp_path / "a", "--evaluation", _unlabelled(sample, tmp_path / "x.npz"),
                             model=model)  # fmt: skip
    assert code in (0, 1) and "labelled" not in err, err
    manifest = artifact.load_artifact(tmp_path / "a").manifest
    assert manifest["task"] == {
        "name": "regression",
        "why": "output 'reconstruction' has the shape of input 'X' (a reconstruction)",
    }
    assert manifest["validation"]["metric"] == "relative_error"
    assert manifest["validation"]["shadow_rule"]["kind"] == "relative_error"


def test_an_output_that_is_no_ones_class_scores_is_refused_with_the_tasks_to_choose_from(
    sample: zoo.SampleModel, tmp_path: Path
) -> None:
    """48 sigmoid values, none sure of a class and not the input's shape: argmax agreement would
    judge noise, so the task is asked for, not guessed; named, it quantizes."""
    model = _autoencoder(tmp_path / "decoder.onnx", width=48)
    unlabelled = _unlabelled(sample, tmp_path / "x.npz")
    code, _, err = _quantize(sample, tmp_path / "a", "--evaluation", unlabelled, model=model)
    _assert_one_line_error(code, err, "softmax is confident on only 0 of ")
    assert all(f"--task {task}" in err for task in ("regression", "embedding", "classification")), err
    assert not (tmp_path / "a").exists()
    code, _, err = _quantize(sample, tmp_path / "a", "--evaluation", unlabelled, "--task", "regression",
                             model=model)  # fmt: skip
    assert code in (0, 1), err
    assert artifact.load_artifact(tmp_path / "a").manifest["validation"]["metric"] == "relative_error"


def _embedding_and_logits(path: Path, evaluation: Path) -> Path:
    """Outputs [embedding, logits]: a random projection of the pixels, and a linear classifier of
    the digits fitted by least squares to the evaluation rows."""
    with np.load(evaluation) as held_out:
        pixels, labels = held_out["X"].astype(np.float64), held_out["labels"]
    features = np.hstack([pixels, np.ones((len(pixels), 1))])
    weights = np.linalg.lstsq(features, np.eye(10)[labels], rcond=None)[0].astype(np.float32)
    projection = np.random.default_rng(3).normal(size=(64, 32)).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["X", "projection"], ["embedding"]),
         helper.make_node("Gemm", ["X", "classes", "bias"], ["logits"])],
        "two_outputs",
        [helper.make_tensor_value_info("X", TensorProto.FLOAT, ["N", 64])],
        [helper.make_tensor_value_info("embedding", TensorProto.FLOAT, ["N", 32]),
         helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 10])],
        [numpy_helper.from_array(projection, "projection"),
         numpy_helper.from_array(weights[:64], "classes"),
         numpy_helper.from_array(weights[64], "bias")],
    )  # fmt: skip
    return _save(graph, path)


def test_labels_beside_an_embedding_name_the_models_other_outputs(
    sample: zoo.SampleModel, tmp_path: Path
) -> None:
    """The refusal said only `--task classification`, which gated the embedding's argmax (FP32
    right on 5.7% of 10 digits): the labels were the other output's."""
    model = _embedding_and_logits(tmp_path / "two.onnx", sample.evaluation)
    code, _, err = _quantize(sample, tmp_path / "a", model=model)
    _assert_one_line_error(code, err, "(drop them, pick another output with --output logits, or pass --task")
    code, _, err = _quantize(sample, tmp_path / "a", "--output", "logits", model=model)
    assert code == 0, err
    validation = artifact.load_artifact(tmp_path / "a").manifest["validation"]
    assert validation["metric"] == "top1_accuracy" and validation["fp32"] > 0.9


def test_labels_an_output_gets_right_no_more_than_chance_are_refused_not_judged(
    sample: zoo.SampleModel, tmp_path: Path
) -> None:
    """FP32 accuracy under 1 in 10: the relative loss of INT8 against it says nothing, and passed."""
    model = _embedding_and_logits(tmp_path / "two.onnx", sample.evaluation)
    fp32 = create_session(model).run(["embedding"], {"X": np.load(sample.evaluation)["X"]})[0]
    accuracy = float(np.mean(fp32.argmax(axis=1) == np.load(sample.evaluation)["labels"]))
    assert 0 < accuracy <= 0.1  # right on some rows: not the accuracy-0 refusal
    code, _, err = _quantize(sample, tmp_path / "a", "--task", "classification", model=model)
    _assert_one_line_error(code, err, "no better than a guess among their 10 classes")
    assert "is output 'embedding' their classifier? (another output: --output logits)" in err
    assert not (tmp_path / "a").exists()


def _digits_on_few_pixels(path: Path, evaluation: Path) -> Path:
    """One output, logits: a linear classifier of the 10 digits fitted by least squares on every
    5th pixel, right on about 70% of the evaluation rows and on far fewer of the 4s and 9s."""
    with np.load(evaluation) as held_out:
        pixels, labels = held_out["X"].astype(np.float64), held_out["labels"]
    features = np.hstack([pixels[:, ::5], np.ones((len(pixels), 1))])
    fitted = np.linalg.lstsq(features, np.eye(10)[labels], rcond=None)[0].astype(np.float32)
    weights = np.zeros((64, 10), np.float32)
    weights[::5] = fitted[:-1]
    graph = helper.make_graph(
        [helper.make_node("Gemm", ["X", "classes", "bias"], ["logits"])],
        "few_pixels",
        [helper.make_tensor_value_info("X", TensorProto.FLOAT, ["N", 64])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 10])],
        [numpy_helper.from_array(weights, "classes"), numpy_helper.from_array(fitted[-1], "bias")],
    )  # fmt: skip
    return _save(graph, path)


def test_a_single_output_classifier_judged_on_a_few_of_its_classes_is_warned_of_and_gated(
    sample: zoo.SampleModel, tmp_path: Path
) -> None:
    """Right on under half of the rows labelled 4 or 9, yet far above a guess among its 10 classes:
    it classifies them, and with no other output to point at, refusing it helped no one."""
    model = _digits_on_few_pixels(tmp_path / "few.onnx", sample.evaluation)
    with np.load(sample.evaluation) as held_out:
        keep = np.isin(held_out["labels"], [4, 9])
        pixels, labels = held_out["X"][keep], held_out["labels"][keep]
    evaluation = _npz(tmp_path / "four_nine.npz", X=pixels, labels=labels)
    fp32 = create_session(model).run(["logits"], {"X": pixels})[0]
    accuracy = float(np.mean(fp32.argmax(axis=1) == labels))
    assert 0.1 < accuracy <= 0.5  # at or below a guess between 2 labels, above one among 10 classes
    code, _, err = _quantize(sample, tmp_path / "a", "--evaluation", evaluation, model=model)
    assert code in (0, 1) and "Traceback" not in err, err
    assert "no better than a guess among their 2 classes; gating on them as asked" in err
    manifest = artifact.load_artifact(tmp_path / "a").manifest
    assert any("no better than a guess among their 2 classes" in line for line in manifest["warnings"])
    assert manifest["validation"]["metric"] == "top1_accuracy"
    assert manifest["validation"]["fp32"] == pytest.approx(accuracy)


@pytest.mark.parametrize("batch", [1, 4])
def test_a_fixed_batch_model_is_evaluated_and_timed_in_its_own_batches(tmp_path: Path, batch: int) -> None:
    model = _fixed_batch_model(tmp_path / "fixed.onnx", batch=batch)
    calibration = _npz(tmp_path / "cal.npz", X=_rows(64))
    code, _, err = _cli("quantize", model, "-o", tmp_path / "a", "--calibration", calibration, "-q")
    assert code == 0 and "Traceback" not in err, err
    trials = json.loads((tmp_path / "a" / "manifest.json").read_text())["trials"]
    assert any(trial.get("latency_ms") for trial in trials), trials


def test_data_the_fp32_model_cannot_run_is_refused_in_one_line(tmp_path: Path) -> None:
    """Token ids past a Gather's table fit every shape check: onnxruntime refuses them."""
    table = numpy_helper.from_array(np.arange(30, dtype=np.float32).reshape(10, 3), "table")
    graph = helper.make_graph(
        [helper.make_node("Gather", ["table", "ids"], ["embedded"]),
         helper.make_node("MatMul", ["embedded", "table_t"], ["scores"])],
        "tokens",
        [helper.make_tensor_value_info("ids", TensorProto.INT64, ["N", 4])],
        [helper.make_tensor_value_info("scores", TensorProto.FLOAT, ["N", 4, 10])],
        [table, numpy_helper.from_array(np.arange(30, dtype=np.float32).reshape(3, 10), "table_t")],
    )  # fmt: skip
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(tmp_path / "tokens.onnx"))
    calibration = _npz(tmp_path / "cal.npz", ids=np.full((8, 4), 105, np.int64))
    code, _, err = _cli(
        "quantize", tmp_path / "tokens.onnx", "-o", tmp_path / "a", "--calibration", calibration
    )
    assert code == 3 and "Traceback" not in err, err
    assert "error: the FP32 model fails on the evaluation data" in err and "idx=105" in err, err


def _rows(count: int) -> np.ndarray:
    return np.random.default_rng(0).normal(size=(count, 16)).astype(np.float32)


def _save_with_external_data(model: Path, path: Path, location: str) -> None:
    onnx.save(
        onnx.load(str(model)), str(path), save_as_external_data=True, location=location, size_threshold=0
    )


def _fixed_batch_model(path: Path, *, batch: int) -> Path:
    """Y = MatMul(X, W), X float32[batch, 16]: a batch size fixed in the graph, as exporters leave it."""
    weight = numpy_helper.from_array(np.random.default_rng(1).normal(size=(16, 4)).astype(np.float32), "W")
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["X", "W"], ["Y"])],
        "fixed",
        [helper.make_tensor_value_info("X", TensorProto.FLOAT, [batch, 16])],
        [helper.make_tensor_value_info("Y", TensorProto.FLOAT, [batch, 4])],
        [weight],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, path)
    return path


def test_a_model_no_recipe_can_quantize_ends_in_a_refusal_not_a_traceback(tmp_path: Path) -> None:
    """A model importing the ONNX domain twice (as skl2onnx's classifiers without ZipMap do) fails in
    onnxruntime's quantizer: every trial, then the per-tensor sensitivity the node search wants (that
    was a traceback)."""
    model = onnx.load(str(_fixed_batch_model(tmp_path / "mm.onnx", batch=1)))
    model.graph.input[0].type.tensor_type.shape.dim[0].dim_param = "N"
    model.graph.output[0].type.tensor_type.shape.dim[0].dim_param = "N"
    model.opset_import.append(helper.make_opsetid("ai.onnx", 17))
    onnx.save(model, str(tmp_path / "twice.onnx"))
    data = _npz(tmp_path / "data.npz", X=_rows(64))
    code, _, err = _cli(
        "quantize", tmp_path / "twice.onnx", "-o", tmp_path / "a", "--calibration", data, "-q"
    )
    assert code == 3 and "Traceback" not in err, err
    assert "per-tensor sensitivity of static U8S8 minmax per-tensor failed in onnxruntime" in err
    assert err.strip().splitlines()[-1].startswith("error: onnxruntime could not quantize")
    assert not (tmp_path / "a").exists()


def test_a_model_none_of_whose_ops_onnxruntime_quantizes_is_refused_at_once(tmp_path: Path) -> None:
    graph = helper.make_graph(
        [helper.make_node("Abs", ["X"], ["Y"])],
        "abs",
        [helper.make_tensor_value_info("X", TensorProto.FLOAT, ["N", 16])],
        [helper.make_tensor_value_info("Y", TensorProto.FLOAT, ["N", 16])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(tmp_path / "abs.onnx"))
    data = _npz(tmp_path / "data.npz", X=_rows(16))
    code, _, err = _cli("quantize", tmp_path / "abs.onnx", "-o", tmp_path / "a", "--calibration", data, "-q")
    assert code == 3 and err.strip().splitlines()[-1].endswith(
        "onnxruntime quantizes none of the model's ops (Abs)"
    )


def _in_half_floats(model: Path, dtype: int) -> Path:
    """`model` as torch's model.half() exports it: every weight, input and output in `dtype`."""
    proto = onnx.load(str(model))
    for index, weight in enumerate(proto.graph.initializer):
        values = numpy_helper.to_array(weight)
        proto.graph.initializer[index].CopyFrom(
            helper.make_tensor(weight.name, dtype, values.shape, values.flatten().tolist())
        )
    for value in (*proto.graph.input, *proto.graph.output):
        value.type.tensor_type.elem_type = dtype
    half = model.with_name(f"{TensorProto.DataType.Name(dtype).lower()}.onnx")
    onnx.save(proto, str(half))
    return half


@pytest.mark.parametrize(
    ("dtype", "mode"),
    [(TensorProto.FLOAT16, "static"), (TensorProto.FLOAT16, "dynamic"), (TensorProto.BFLOAT16, "static")],
)
def test_a_model_with_half_float_weights_is_refused_at_once(tmp_path: Path, dtype: int, mode: str) -> None:
    """A float16 ResNet (torch's model.half()) "quantized": pre-processing wrapped its ops in Casts to
    float32 and onnxruntime quantized the weights at run time as the Casts' outputs, into an artifact
    larger than the model with no int8 weight, and the gate passed; dynamic, every trial failed on a
    tensor the model does not have. Here the float16 MLP failed its gate. A bfloat16 model was refused
    as one onnxruntime cannot load, with no word of why."""
    model = _in_half_floats(build_gemm_mlp(tmp_path / "mlp.onnx"), dtype)
    data = _npz(tmp_path / "data.npz", X=rows(64).astype(np.float16))
    code, _, err = _cli(
        "quantize", model, "-o", tmp_path / "a", "--mode", mode, "--calibration", data,
        "--evaluation", data, "--task", "regression", "-q",
    )  # fmt: skip
    kind = TensorProto.DataType.Name(dtype).lower()
    _assert_one_line_error(code, err, f"4 of its 4 float weights are {kind} ('fc1.weight' first)")
    assert err.rstrip().endswith("quantship quantizes float32 models: export the model in float32 (from "
                                 "torch: without model.half()) and quantize that")  # fmt: skip
    assert not (tmp_path / "a").exists()
    code, _, err = _cli("package", model, "-o", tmp_path / "baseline")  # an "fp32" baseline it is not
    _assert_one_line_error(code, err, f"float weights are {kind}")


def _with_a_half_float_cast_chain(model: Path) -> Path:
    """`model` with its hidden layer scaled in float16 between two Casts, by a float16 Constant of
    1.0, as some exporters emit an op they run in half precision: a float32 model all the same."""
    proto = onnx.load(str(model))
    (relu,) = [node for node in proto.graph.node if node.op_type == "Relu"]
    relu.input[0] = "h_back"
    chain = [
        helper.make_node("Cast", ["h"], ["h_half"], to=TensorProto.FLOAT16, name="to_half"),
        helper.make_node(
            "Constant", [], ["one_half"], value=numpy_helper.from_array(np.array(1.0, np.float16)), name="one"
        ),
        helper.make_node("Mul", ["h_half", "one_half"], ["h_scaled"], name="scale_half"),
        helper.make_node("Cast", ["h_scaled"], ["h_back"], to=TensorProto.FLOAT, name="to_float"),
    ]
    nodes = list(proto.graph.node)
    at = nodes.index(relu)
    del proto.graph.node[:]
    proto.graph.node.extend([*nodes[:at], *chain, *nodes[at:]])
    chained = model.with_name("cast-chain.onnx")
    onnx.save(proto, str(chained))
    return chained


def test_a_float32_model_with_a_float16_constant_is_quantized(tmp_path: Path) -> None:
    """One float16 Constant (a Cast chain's scalar) among a float32 model's weights: the whole model
    was refused as a float16 export. A model is refused when most of its float weight values are half
    floats (the float16 MLP above); this one quantizes."""
    model = _with_a_half_float_cast_chain(build_gemm_mlp(tmp_path / "mlp.onnx"))
    data = _npz(tmp_path / "data.npz", X=rows(64))
    code, _, err = _cli(
        "quantize", model, "-o", tmp_path / "a", "--calibration", data, "--evaluation", data,
        "--task", "regression", "--max-accuracy-delta", "0.05", "-q",
    )  # fmt: skip
    assert code == 0, err
    written = artifact.load_artifact(tmp_path / "a")
    assert written.gate_passed and written.manifest["model"]["quantized_nodes"] == 2  # fc1 and fc2


def _one_node_model(path: Path, nodes: list[onnx.NodeProto], dtype: int = TensorProto.FLOAT) -> Path:
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("X", dtype, ["N", 16])],
        [helper.make_tensor_value_info("Y", dtype, ["N", 16])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return path


@pytest.mark.parametrize(
    ("nodes", "dtype", "why"),
    [
        ([helper.make_node("Relu", ["X"], ["Y"])], TensorProto.FLOAT, "Relu only after an op it quantized"),
        (
            [
                helper.make_node("Relu", ["X"], ["T"]),
                helper.make_node("Transpose", ["T"], ["Y"], perm=[0, 1]),
            ],
            TensorProto.FLOAT,
            "Relu, Transpose only after an op it quantized",
        ),
        ([helper.make_node("Add", ["X", "X"], ["Y"])], TensorProto.INT64, "Add only on float inputs"),
    ],
)
def test_a_model_whose_ops_onnxruntime_never_quantizes_there_is_refused_at_once(
    tmp_path: Path, nodes: list[onnx.NodeProto], dtype: int, why: str
) -> None:
    """Ops in onnxruntime's registries that it quantizes only after a quantized op, or only on float
    inputs: 8 trials quantized 0 nodes and the gate "failed" with advice about calibration data."""
    model = _one_node_model(tmp_path / "m.onnx", nodes, dtype)
    rows = _rows(16) if dtype == TensorProto.FLOAT else np.arange(16 * 16).reshape(16, 16)
    data = _npz(tmp_path / "data.npz", X=rows)
    code, _, err = _cli(
        "quantize", model, "-o", tmp_path / "a", "--calibration", data, "--evaluation", data, "-q"
    )
    _assert_one_line_error(code, err, f"onnxruntime quantizes none of the model's ops ({nodes[0].op_type}")
    assert err.strip().splitlines()[-1].endswith(f"it quantizes {why}")
    assert not (tmp_path / "a").exists()


def test_trials_that_all_quantized_nothing_are_refused_not_a_failed_gate(tmp_path: Path) -> None:
    """A float Add quantizes in static mode, never in dynamic: every trial is the FP32 model."""
    model = _one_node_model(tmp_path / "add.onnx", [helper.make_node("Add", ["X", "X"], ["Y"])])
    data = _npz(tmp_path / "data.npz", X=_rows(16))
    code, _, err = _cli(
        "quantize", model, "-o", tmp_path / "a", "--mode", "dynamic", "--evaluation", data, "-q"
    )
    assert code == 3, err  # ExitCode.REFUSED
    last = err.strip().splitlines()[-1]
    assert last.startswith("error: ") and "onnxruntime quantized no node of the model in any of" in last
    assert "dynamic quantization covers only" in last and "accuracy gate" not in err
    assert not (tmp_path / "a").exists()


def test_dynamic_mode_on_a_gemm_model_writes_what_it_quantized_not_a_refusal(tmp_path: Path) -> None:
    """Every nn.Linear exports as a Gemm, which dynamic quantization runs as MatMulInteger under a new
    name: `--mode dynamic` refused such a model as "quantized no node"."""
    model = build_gemm_mlp(tmp_path / "mlp.onnx")
    data = _npz(tmp_path / "data.npz", X=rows(64))
    code, _, err = _cli(
        "quantize", model, "-o", tmp_path / "a", "--mode", "dynamic", "--evaluation", data,
        "--task", "regression", "--threshold", "0.05", "-q",
    )  # fmt: skip
    assert code == 0, err
    manifest = json.loads((tmp_path / "a" / artifact.MANIFEST_FILE).read_text())
    assert manifest["validation"]["gate"] == "passed"
    assert manifest["model"]["quantized_nodes"] == 2 and manifest["model"]["quantized_share"] > 0


def test_a_model_with_external_data_ships_self_contained(tmp_path: Path) -> None:
    """Weights beside the model (as a model over 2 GB must keep them) are inlined into the artifact:
    copied as it was, its model.onnx or reference.onnx would be a stub no server can load."""
    model = _fixed_batch_model(tmp_path / "b1.onnx", batch=1)
    external = tmp_path / "ext" / "model.onnx"
    external.parent.mkdir()
    onnx.save(
        onnx.load(str(model)), str(external), save_as_external_data=True, location="w.data", size_threshold=0
    )
    calibration = _npz(
        tmp_path / "cal.npz", X=np.random.default_rng(0).normal(size=(32, 16)).astype(np.float32)
    )
    assert _cli("package", external, "-o", tmp_path / "fp32")[0] == 0
    code, _, err = _cli("quantize", external, "-o", tmp_path / "int8", "--calibration", calibration, "-q")
    assert code in (0, 1), err
    for path in (tmp_path / "fp32" / artifact.MODEL_FILE, tmp_path / "int8" / artifact.REFERENCE_FILE):
        (output,) = create_session(path).run(None, {"X": np.ones((1, 16), np.float32)})
        assert output.shape == (1, 4)
        assert artifact.load_artifact(path.parent).root == path.parent


def test_external_data_in_a_constant_is_inlined_too(tmp_path: Path) -> None:
    weight = numpy_helper.from_array(np.ones((16, 4), np.float32), "w")
    graph = helper.make_graph(
        [
            helper.make_node("Constant", [], ["W"], value=weight),
            helper.make_node("MatMul", ["X", "W"], ["Y"]),
        ],
        "constant",
        [helper.make_tensor_value_info("X", TensorProto.FLOAT, ["N", 16])],
        [helper.make_tensor_value_info("Y", TensorProto.FLOAT, ["N", 4])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(tmp_path / "c.onnx"), save_as_external_data=True, location="c.data",
              size_threshold=0, convert_attribute=True)  # fmt: skip
    (tmp_path / "work").mkdir()
    inlined = engine_model.self_contained(tmp_path / "c.onnx", tmp_path / "work")
    assert inlined != tmp_path / "c.onnx" and not list(inlined.parent.glob("*.data"))
    (output,) = create_session(inlined).run(None, {"X": np.ones((1, 16), np.float32)})
    np.testing.assert_array_equal(output, np.full((1, 4), 16, np.float32))


def test_a_model_whose_external_data_is_missing_is_refused_in_one_line(tmp_path: Path) -> None:
    model = _fixed_batch_model(tmp_path / "b1.onnx", batch=1)
    loaded = onnx.load(str(model))
    onnx.save(
        loaded, str(tmp_path / "ext.onnx"), save_as_external_data=True, location="ext.data", size_threshold=0
    )
    (tmp_path / "ext.data").unlink()
    calibration = _npz(tmp_path / "cal.npz", X=np.zeros((4, 16), np.float32))
    code, _, err = _cli(
        "quantize", tmp_path / "ext.onnx", "-o", tmp_path / "a", "--calibration", calibration, "-q"
    )
    _assert_one_line_error(code, err, "ext.data")


def test_calibration_data_that_nothing_uses_is_named_in_a_warning(
    sample: zoo.SampleModel, tmp_path: Path
) -> None:
    code, _, err = _quantize(sample, tmp_path / "a", "--mode", "dynamic", "--strategy", "fallback")
    assert code == 0, err
    assert "warning: --calibration is not used" in err
    manifest = json.loads((tmp_path / "a" / "manifest.json").read_text())
    assert any("--calibration is not used" in w for w in manifest["warnings"])


def test_a_quantization_killed_outright_takes_its_pre_processing_child_with_it(
    sample: zoo.SampleModel, tmp_path: Path
) -> None:
    """onnxruntime's pre-processing runs in a child process: a kill -9 of the quantization left it
    running, for minutes on a large model, writing into a scratch directory being swept. The child
    is stopped once found, so that it cannot finish on its own before its parent is killed."""
    quantize = subprocess.Popen(
        [sys.executable, "-m", "quantship", "quantize", str(sample.model), "-o", str(tmp_path / "a"),
         "--calibration", str(sample.calibration), "-q"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    child = None
    try:
        child = _wait_for_child(quantize.pid, b"onnxruntime.quantization.preprocess")
        os.kill(child, signal.SIGSTOP)
        quantize.kill()
        quantize.wait(timeout=30)
        deadline = time.monotonic() + 10
        while _running(child) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not _running(child), "pre-processing outlived a kill -9 of its quantization"
    finally:
        quantize.kill()
        if child is not None and _running(child):
            os.kill(child, signal.SIGKILL)


def _wait_for_child(parent: int, marker: bytes, timeout: float = 60) -> int:
    """A child of `parent` whose command line holds `marker`, once it runs Python itself (past any
    launcher that exec's it)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for entry in Path("/proc").iterdir():
            with contextlib.suppress(OSError, IndexError, ValueError):
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
                ours = int(fields[1]) == parent and marker in (entry / "cmdline").read_bytes()
                if ours and Path(os.readlink(entry / "exe")).name.startswith("python"):
                    return int(entry.name)
        time.sleep(0.005)
    raise AssertionError(f"no child of {parent} ran {marker!r} within {timeout} s")


def _running(pid: int) -> bool:
    """Alive, stopped included; a zombie that its new parent has not reaped yet has ended."""
    try:
        return (Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]) != "Z"
    except (OSError, IndexError):
        return False


WRITES_INTO = {
    "report": lambda art, sample: ["report", art, "-o", art / "report.html"],
    "quantize": lambda art, sample: [
        "quantize", sample.model, "-o", art / "v2", "--calibration", sample.calibration, "-q",
    ],
    "pack": lambda art, sample: ["pack", art, art / "digits.tar.gz"],
    "keygen": lambda art, sample: ["keygen", "--private", art / "k.pem", "--public", art.parent / "k.pub"],
    "pull": lambda art, sample: ["pull", "oci://127.0.0.1:1/ml/digits:v1", "-o", art / "pulled"],
}  # fmt: skip


@pytest.mark.parametrize("command", WRITES_INTO, ids=list(WRITES_INTO))
def test_nothing_is_written_inside_an_artifact(
    artifact_copy: Path, sample: zoo.SampleModel, command: str
) -> None:
    """A file its manifest does not list makes an artifact unverifiable, and every server refuses it:
    `report -o ART/report.html` exited 0 and broke ART."""
    code, _, err = _cli(*WRITES_INTO[command](artifact_copy, sample))
    _assert_one_line_error(code, err, f"is inside the artifact {artifact_copy}")
    assert _cli("verify", artifact_copy)[0] == 0


def _assert_usage_error(code: int, stderr: str, message: str) -> None:
    assert code == 2, stderr  # ExitCode.USAGE
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], stderr


def test_a_dynamic_manifest_records_only_settings_that_applied_and_says_which_were_ignored(
    sample: zoo.SampleModel, tmp_path: Path
) -> None:
    """It recorded activation_type int8, calibration entropy, num_bins 300 and format QDQ for a
    MatMulInteger model with uint8 activations and no calibration, and said nothing."""
    code, _, err = _cli("quantize", sample.model, "-o", tmp_path / "a", "--evaluation", sample.evaluation,
                        "--mode", "dynamic", "--activation-type", "int8", "--calibration-method", "entropy",
                        "--num-bins", "300", "--format", "QDQ", "--weight-type", "int8", "-q")  # fmt: skip
    assert code == 0, err
    quantization = artifact.load_artifact(tmp_path / "a").quantization
    assert quantization["mode"] == "dynamic" and quantization["weight_type"] == "int8"
    for unused in ("format", "activation_type", "calibration", "num_bins", "calibration_params"):
        assert quantization[unused] is None, unused
    ignored = [line for line in err.splitlines() if line.startswith("warning: ignored")]
    assert len(ignored) == 1, err
    assert ignored[0].endswith(": --format, --activation-type, --calibration-method, --num-bins"), err


@pytest.mark.parametrize(
    "switches",
    [("--no-matmul-const-b-only", "--matmuls-only"), ("--matmul-const-b-only", "--no-matmuls-only")],
)
def test_a_dynamic_run_names_an_ignored_switch_as_it_was_given(
    sample: zoo.SampleModel, tmp_path: Path, switches: tuple[str, str]
) -> None:
    """`--mode dynamic --no-matmuls-only` was warned that "--matmuls-only" is ignored: the name of
    the switch turned on, to someone who had turned it off."""
    code, _, err = _cli("quantize", sample.model, "-o", tmp_path / "a", "--evaluation", sample.evaluation,
                        "--mode", "dynamic", *switches, "-q")  # fmt: skip
    assert code == 0, err
    ignored = [line for line in err.splitlines() if line.startswith("warning: ignored")]
    assert len(ignored) == 1 and ignored[0].endswith(f"does not use them: {', '.join(switches)}"), err


def test_a_static_manifest_records_no_calibration_parameter_its_method_ignored(
    sample: zoo.SampleModel, tmp_path: Path
) -> None:
    """min-max reads neither --percentile nor --num-bins: quantize said so, and the manifest still
    recorded percentile 99.0 (and the default 99.999 when none was given) as a setting that applied."""
    code, _, err = _quantize(sample, tmp_path / "a", "--percentile", "99", "--num-bins", "256")
    assert code == 0, err
    assert (
        "warning: ignored, static U8S8 minmax per-tensor does not use them: --percentile, --num-bins" in err
    )
    quantization = artifact.load_artifact(tmp_path / "a").quantization
    assert quantization["calibration"] == "minmax"
    assert (quantization["percentile"], quantization["num_bins"], quantization["calibration_params"]) == (
        None,
        None,
        {},
    )
    code, _, err = _quantize(
        sample, tmp_path / "b", "--calibration-method", "percentile", "--max-trials", "0"
    )
    assert code in (0, 1), err
    quantization = artifact.load_artifact(tmp_path / "b").quantization
    assert quantization["percentile"] == 99.999 and quantization["num_bins"] is None  # onnxruntime's default


@pytest.mark.parametrize(("method", "bins", "least"), [("entropy", "127", 128), ("distribution", "500", 512)])
def test_too_few_histogram_bins_for_the_method_are_refused_before_calibrating(
    sample: zoo.SampleModel, tmp_path: Path, method: str, bins: str, least: int
) -> None:
    """Entropy with 100 bins calibrated for minutes, then failed with numpy's 'negative dimensions'."""
    code, _, err = _quantize(sample, tmp_path / "a", "--calibration-method", method, "--num-bins", bins)
    _assert_usage_error(code, err, f"--num-bins {bins}: {method} calibration needs at least {least}")
    assert not (tmp_path / "a").exists()


def test_the_manifest_records_the_calibration_batch_used_and_says_once_why_it_is_not_the_one_asked(
    sample: zoo.SampleModel, tmp_path: Path
) -> None:
    """EfficientNet-Lite0 with --batch-size 200 calibrated 5 images per batch (the 4 MiB cap) and its
    manifest read 200, silently."""
    code, _, err = _quantize(sample, tmp_path / "a", "--batch-size", "48", "--max-trials", "0")
    assert code == 0, err
    assert artifact.load_artifact(tmp_path / "a").quantization["batch_size"] == 32
    said = [line for line in err.splitlines() if "--batch-size" in line]
    assert said == ["warning: --batch-size 48: calibrating 32 rows per batch (the largest batch that "
                    "divides the 256 samples)"], err  # fmt: skip
    code, _, err = _quantize(sample, tmp_path / "b", "--max-trials", "0")
    assert code == 0 and "--batch-size" not in err, "the default, lowered, is no news"


def test_distribution_calibration_is_warned_of_once_as_the_float8_method_it_is(
    sample: zoo.SampleModel, tmp_path: Path
) -> None:
    """It ruined EfficientNet-Lite0 (0% agreement with FP32) and nothing said what it was for."""
    code, _, err = _quantize(
        sample, tmp_path / "a", "--calibration-method", "distribution", "--max-trials", "0"
    )
    assert code in (0, 1), err
    cautions = [line for line in err.splitlines() if "onnxruntime's method for float8 types" in line]
    assert len(cautions) == 1 and cautions[0].startswith("warning: --calibration-method distribution"), err
    _, _, err = _quantize(sample, tmp_path / "b", "--calibration-method", "entropy", "--max-trials", "0")
    assert "float8" not in err


def test_more_histogram_bins_than_the_maximum_are_refused_before_calibrating(
    sample: zoo.SampleModel, tmp_path: Path
) -> None:
    """gpt2-lm entropy with --num-bins 8192 took 13:27 against 24.6 s at the default (800 s calibrating)."""
    code, _, err = _quantize(sample, tmp_path / "a", "--calibration-method", "entropy", "--num-bins", "8192")
    assert code == 2 and "'--num-bins': 8192 is not in the range 2<=x<=2048" in err, err  # click's own
    assert not (tmp_path / "a").exists()
    with pytest.raises(QuantizeInputError, match="--num-bins 8192: at most 2048"):
        run(sample.model, tmp_path / "b", QuantizeConfig(num_bins=8192), calibration=sample.calibration)


@pytest.mark.parametrize(
    ("gate", "verdict"),
    [
        (("--threshold", "-1"), "top1_accuracy is between 0 and 1, so the gate would pass no model"),
        (("--threshold", "2"), "top1_accuracy is between 0 and 1, so the gate would pass every model"),
        (("--metric", "top1_agreement", "--threshold", "-1"), "so the gate would pass every model"),
        (("--metric", "kl_divergence", "--threshold", "-0.1"), "kl_divergence is at least 0"),
    ],
)
def test_a_threshold_outside_the_metrics_range_is_refused(
    sample: zoo.SampleModel, tmp_path: Path, gate: tuple[str, ...], verdict: str
) -> None:
    code, _, err = _quantize(sample, tmp_path / "a", *gate)
    _assert_one_line_error(code, err, verdict)


def test_max_accuracy_delta_with_a_metric_that_has_its_own_limit_is_named_as_ignored(
    sample: zoo.SampleModel, tmp_path: Path
) -> None:
    """kl_divergence gates at 0.05 nats: --max-accuracy-delta 0.01 was taken and silently never
    applied. A warning, not a refusal: a QuantizedModel's Job passing both must not fail."""
    code, _, err = _quantize(
        sample, tmp_path / "a", "--metric", "kl_divergence", "--max-accuracy-delta", "0.01"
    )
    assert code in (0, 1), err
    warned = [line for line in err.splitlines() if "--max-accuracy-delta ignored" in line]
    assert warned == [
        "warning: --max-accuracy-delta ignored: the gate's limit is --metric kl_divergence's own default"
    ], err


def test_quiet_prints_the_summary_alone_even_with_a_histogram_calibration(
    sample: zoo.SampleModel, tmp_path: Path
) -> None:
    """-q printed onnxruntime's 'Collecting tensor data and making histogram ...' once a batch,
    'Finding optimal threshold ...' and the gate line, mixed into the summary table."""
    code, out, err = _quantize(sample, tmp_path / "a", "--calibration-method", "entropy", "--max-trials", "0")
    assert code in (0, 1), err
    assert "Collecting tensor data" not in out and "optimal threshold" not in out
    assert "gate:" not in out
    assert out.lstrip().startswith("quantization summary"), out[:200]


def test_a_matmul_computing_in_float16_refuses_a_mostly_float32_model(tmp_path: Path) -> None:
    """43% of its weight values in one float16 MatMul (review): under half, so it passed the majority
    rule, and became a larger model with nothing of that MatMul quantized."""
    rng = np.random.default_rng(0)
    nodes = [
        helper.make_node("MatMul", ["X", "w1"], ["h"]),
        helper.make_node("Cast", ["h"], ["h16"], to=TensorProto.FLOAT16),
        helper.make_node("MatMul", ["h16", "w2"], ["y16"]),
        helper.make_node("Cast", ["y16"], ["Y"], to=TensorProto.FLOAT),
    ]
    weights = [
        numpy_helper.from_array(rng.normal(size=(16, 64)).astype(np.float32), "w1"),
        numpy_helper.from_array(rng.normal(size=(64, 12)).astype(np.float16), "w2"),
    ]
    graph = helper.make_graph(
        nodes,
        "mixed",
        [helper.make_tensor_value_info("X", TensorProto.FLOAT, ["N", 16])],
        [helper.make_tensor_value_info("Y", TensorProto.FLOAT, ["N", 12])],
        weights,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    mixed, data = tmp_path / "mixed.onnx", _npz(tmp_path / "data.npz", X=rows(64))
    onnx.save(model, str(mixed))
    code, _, err = _cli(
        "quantize", mixed, "-o", tmp_path / "a", "--calibration", data, "--evaluation", data, "-q",
    )  # fmt: skip
    _assert_one_line_error(code, err, "1 of its 2 float weights are float16 ('w2' first), 1 of them a MatMul")


def _sentence_encoder(path: Path) -> Path:
    """LpNormalization(X P): the digits' pixels projected to 32 numbers, each row of length 1."""
    projection = np.random.default_rng(5).normal(size=(64, 32)).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["X", "projection"], ["projected"]),
         helper.make_node("LpNormalization", ["projected"], ["embedding"], axis=1, p=2)],
        "encoder",
        [helper.make_tensor_value_info("X", TensorProto.FLOAT, ["N", 64])],
        [helper.make_tensor_value_info("embedding", TensorProto.FLOAT, ["N", 32])],
        [numpy_helper.from_array(projection, "projection")],
    )  # fmt: skip
    return _save(graph, path)


def test_classification_asked_of_an_embedding_is_doubted_before_any_trial(
    sample: zoo.SampleModel, tmp_path: Path
) -> None:
    """MiniLM-L6 with --task classification ran 17 trials (7:12) before its gate failed on the argmax
    of unit vectors, and said nothing of it: the warning comes before the first trial, in the
    manifest too. The user's word stands (a classifier's L2-normalised logits look the same); as an
    embedding it quantizes, with no such warning."""
    model = _sentence_encoder(tmp_path / "encoder.onnx")
    unlabelled = _unlabelled(sample, tmp_path / "x.npz")
    code, _, err = _quantize(sample, tmp_path / "a", "--evaluation", unlabelled, "--task", "classification",
                             "--strategy", "fallback", "--max-trials", "0", model=model)  # fmt: skip
    assert code in (0, 1), err
    said = "--task classification: output 'embedding' rows are unit vectors"
    assert f"warning: {said}" in err and "pass --task embedding" in err
    manifest = artifact.load_artifact(tmp_path / "a").manifest
    assert manifest["validation"]["metric"] != "cosine_agreement"
    assert any(warning.startswith(said) for warning in manifest["warnings"])
    code, _, err = _quantize(sample, tmp_path / "b", "--evaluation", unlabelled, "--task", "embedding",
                             model=model)  # fmt: skip
    assert code in (0, 1), err
    assert said not in err
    assert artifact.load_artifact(tmp_path / "b").manifest["validation"]["metric"] == "cosine_agreement"


def _unnormalised_encoder(path: Path) -> Path:
    """X P: the digits' pixels projected to 32 numbers, rows of lengths far from 1, named as a
    sentence encoder without its L2 normalisation names its output."""
    projection = np.random.default_rng(5).normal(size=(64, 32)).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["X", "projection"], ["sentence_embedding"])],
        "encoder",
        [helper.make_tensor_value_info("X", TensorProto.FLOAT, ["N", 64])],
        [helper.make_tensor_value_info("sentence_embedding", TensorProto.FLOAT, ["N", 32])],
        [numpy_helper.from_array(projection, "projection")],
    )
    return _save(graph, path)


def test_regression_asked_of_an_unnormalised_embedding_is_doubted_before_any_trial(
    sample: zoo.SampleModel, tmp_path: Path
) -> None:
    """Unit rows were the only sign: all-MiniLM-L6-v2's pooled output before its L2 normalisation
    (lengths 3 to 6) ran its gate at relative error 0.27 against 0.005 (cosine 0.96) and nothing
    named --task embedding. Relative error divides the length out: the same chord as a unit
    vector's. Told before the first trial, in the manifest too; as an embedding, nothing is said."""
    model = _unnormalised_encoder(tmp_path / "encoder.onnx")
    unlabelled = _unlabelled(sample, tmp_path / "x.npz")
    with np.load(unlabelled) as data:
        lengths = np.linalg.norm(create_session(model).run(None, {"X": data["X"]})[0], axis=1)
    assert lengths.min() > 2  # no unit rows to tell by
    code, _, err = _quantize(sample, tmp_path / "a", "--evaluation", unlabelled, "--task", "regression",
                             "--max-trials", "0", model=model)  # fmt: skip
    assert code in (0, 1), err
    said = "--task regression: output 'sentence_embedding' is named like an embedding: an embedding's look"
    assert f"warning: {said}" in err and "pass --task embedding (judged by cosine)" in err, err
    manifest = artifact.load_artifact(tmp_path / "a").manifest
    assert manifest["task"]["name"] == "regression"
    assert any(warning.startswith(said) for warning in manifest["warnings"])
    code, _, err = _quantize(sample, tmp_path / "b", "--evaluation", unlabelled, "--task", "embedding",
                             "--max-trials", "0", model=model)  # fmt: skip
    assert code in (0, 1), err
    assert "--task" not in err, err


@pytest.mark.parametrize("task", ["embedding", "regression"])
def test_embedding_or_regression_asked_of_a_classifiers_probabilities_is_doubted_before_any_trial(
    sample: zoo.SampleModel, tmp_path: Path, task: str
) -> None:
    """Judged by cosine, a character LM's INT8 that flipped 48% of its confident tokens passed; by
    relative error, EfficientNet-Lite0's INT8 that kept every confident answer failed at 0.19; and
    nothing said that the output looks like a classifier's. Told before the first trial, in the
    manifest too; the user's task stands."""
    unlabelled = _unlabelled(sample, tmp_path / "x.npz")
    code, _, err = _quantize(sample, tmp_path / "a", "--evaluation", unlabelled, "--task", task, "--output",
                             "probabilities", "--strategy", "fallback", "--max-trials", "0")  # fmt: skip
    assert code in (0, 1), err
    said = f"--task {task}: output 'probabilities' rows are probabilities (sum to 1): a classifier's look"
    assert f"warning: {said}" in err and "pass --task classification" in err
    manifest = artifact.load_artifact(tmp_path / "a").manifest
    assert manifest["task"]["name"] == task
    assert any(warning.startswith(said) for warning in manifest["warnings"])


def test_a_mask_input_for_an_output_without_positions_is_warned_of_and_ignored(
    sample: zoo.SampleModel, tmp_path: Path
) -> None:
    """It was refused (exit 3), where options that do not apply are named and ignored: the
    operator's Job passes what a QuantizedModel sets, and a run that would work must not fail."""
    code, _, err = _quantize(sample, tmp_path / "a", "--mask-input", "attention_mask", "--max-trials", "0")
    assert code == 0, err
    said = "--mask-input attention_mask ignored: output 'label' of shape [400] gives no answer per position"
    assert f"warning: {said}" in err
    manifest = artifact.load_artifact(tmp_path / "a").manifest
    assert any(line.startswith(said) for line in manifest["warnings"]), manifest["warnings"]
    assert "mask_input" not in manifest["validation"]["shadow_rule"]


def test_a_min_cosine_for_a_gate_that_judges_no_cosine_is_warned_of_and_ignored(
    sample: zoo.SampleModel, tmp_path: Path
) -> None:
    """--min-cosine on a classifier changed nothing and said nothing, where options that do not apply
    are named (--mask-input above, a recipe's unread flags)."""
    code, _, err = _quantize(sample, tmp_path / "a", "--min-cosine", "0.9", "--max-trials", "0")
    assert code == 0, err
    said = "--min-cosine 0.9 ignored: the gate judges output 'label' as classification (by top-1)"
    assert f"warning: {said}" in " ".join(err.split()), err
    manifest = artifact.load_artifact(tmp_path / "a").manifest
    assert any(line.startswith(said) for line in manifest["warnings"]), manifest["warnings"]


def test_keep_going_under_the_fallback_strategy_is_warned_of_and_ignored(
    sample: zoo.SampleModel, tmp_path: Path
) -> None:
    """--strategy fallback tries the user's recipe alone in stage 1: --keep-going has no recipes to
    run on to, and changed nothing, saying nothing (the CRD admits both, keepGoing and strategy)."""
    code, _, err = _quantize(sample, tmp_path / "a", "--strategy", "fallback", "--keep-going")
    assert code == 0, err
    said = (
        "warning: --keep-going ignored: --strategy fallback runs your recipe alone, with no recipes to "
        "go on to"
    )
    assert said in " ".join(err.split()), err


def _small_cnn(path: Path) -> Path:
    """Gemm(GlobalAveragePool(Conv(the digits' 8x8 pixels))): one Conv and a head."""
    rng = np.random.default_rng(4)
    graph = helper.make_graph(
        [helper.make_node("Reshape", ["X", "image_shape"], ["image"]),
         helper.make_node("Conv", ["image", "filters"], ["maps"], name="conv"),
         helper.make_node("GlobalAveragePool", ["maps"], ["pooled"]),
         helper.make_node("Flatten", ["pooled"], ["features"]),
         helper.make_node("Gemm", ["features", "classes"], ["logits"], name="head")],
        "cnn",
        [helper.make_tensor_value_info("X", TensorProto.FLOAT, ["N", 64])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 10])],
        [numpy_helper.from_array(np.array([-1, 1, 8, 8], dtype=np.int64), "image_shape"),
         numpy_helper.from_array(rng.normal(scale=0.3, size=(8, 1, 3, 3)).astype(np.float32), "filters"),
         numpy_helper.from_array(rng.normal(size=(8, 10)).astype(np.float32), "classes")],
    )  # fmt: skip
    return _save(graph, path)


def _two_conv_cnn(path: Path) -> Path:
    """Gemm(Concat(Conv(pixels), Conv(pixels))), each Conv an 8x8 filter over the whole digit. Each of
    conv_blank's filters weighs the top-left pixel, blank in every digit, at 1000: FP32 reads nothing
    there, and int8 weights scaled to 1000 round the rest to 0, so its ConvInteger fails the gate and
    the tuner keeps it in float."""
    rng = np.random.default_rng(4)
    blank = rng.normal(scale=0.3, size=(4, 1, 8, 8)).astype(np.float32)
    blank[:, 0, 0, 0] = 1000.0
    plain = rng.normal(scale=0.3, size=(4, 1, 8, 8)).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("Reshape", ["X", "image_shape"], ["image"]),
         helper.make_node("Conv", ["image", "blank_filters"], ["blank_maps"], name="conv_blank"),
         helper.make_node("Conv", ["image", "plain_filters"], ["plain_maps"], name="conv_plain"),
         helper.make_node("Concat", ["blank_maps", "plain_maps"], ["maps"], axis=1),
         helper.make_node("Flatten", ["maps"], ["features"]),
         helper.make_node("Gemm", ["features", "classes"], ["logits"], name="head")],
        "cnn",
        [helper.make_tensor_value_info("X", TensorProto.FLOAT, ["N", 64])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 10])],
        [numpy_helper.from_array(np.array([-1, 1, 8, 8], dtype=np.int64), "image_shape"),
         numpy_helper.from_array(blank, "blank_filters"),
         numpy_helper.from_array(plain, "plain_filters"),
         numpy_helper.from_array(rng.normal(size=(8, 10)).astype(np.float32), "classes")],
    )  # fmt: skip
    return _save(graph, path)


def test_a_dynamic_pass_with_its_convs_in_float_says_static_quantizes_them(
    sample: zoo.SampleModel, tmp_path: Path
) -> None:
    """EfficientNet-Lite0 --mode dynamic passed with every Conv in float (1.3x smaller, 4:59) and
    nothing said that static quantization is what quantizes a CNN's Convs. Only the Convs dynamic
    quantization kept in float count, not those the user's --exclude keeps: with both of them
    excluded, the hint said 'keeps 2 of the model's 2 Convs in float' of the user's own choice.
    Quantized (a ConvInteger), nothing is said. The Gemm's dynamic int8 flips 1% of the rows: a
    gate of 5% passes it."""
    unlabelled = _unlabelled(sample, tmp_path / "x.npz")
    dynamic = (
        "--evaluation",
        unlabelled,
        "--mode",
        "dynamic",
        "--max-trials",
        "3",
        "--max-accuracy-delta",
        "0.05",
    )
    model = _two_conv_cnn(tmp_path / "cnn.onnx")
    code, _, err = _quantize(sample, tmp_path / "a", *dynamic, "--exclude", "conv_plain", model=model)
    assert code == 0, err
    said = (
        "--exclude keeps 1 of the model's 2 Convs in float, and the passing dynamic trial 1 of the other 1: "
        "static quantization, with calibration data, is what quantizes a CNN's Convs; try --mode static on "
        "the calibration data given"
    )
    assert f"warning: {said}" in err
    assert said in artifact.load_artifact(tmp_path / "a").manifest["warnings"]
    code, _, err = _quantize(sample, tmp_path / "b", *dynamic, "--exclude", "conv_plain", "--exclude",
                             "conv_blank", model=model)  # fmt: skip
    assert code == 0 and "Convs in float" not in err, err
    code, _, err = _quantize(sample, tmp_path / "c", *dynamic, model=_small_cnn(tmp_path / "small.onnx"))
    assert code == 0 and "Convs in float" not in err, err
