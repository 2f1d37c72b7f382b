"""`quantship fetch`, the init container: a verified artifact in DEST, or an error and nothing."""

from __future__ import annotations

import http.server
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import threading
from collections.abc import Iterator
from functools import partial
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from quiet_http import QuietHTTPServer

from quantship import artifact, artifact_keys, zoo
from quantship.cli import main
from quantship.quantize import package_fp32


@pytest.fixture
def http_root(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """A real HTTP server over a folder, on loopback."""
    root = tmp_path / "www"
    root.mkdir()
    handler = partial(http.server.SimpleHTTPRequestHandler, directory=str(root))
    server = QuietHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}", root
    server.shutdown()
    server.server_close()


def fetch(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(main, ["fetch", *args])
    return result.exit_code, result.output


def test_a_directory_on_a_file_uri_is_copied_and_verified(
    good_artifact: artifact.Artifact, tmp_path: Path
) -> None:
    code, output = fetch(f"file://{good_artifact.root}", str(tmp_path / "model"))

    assert code == 0, output
    assert artifact.load_artifact(tmp_path / "model").digest == good_artifact.digest
    assert [p.name for p in tmp_path.iterdir()] == ["model"], "no scratch left behind"


def test_its_line_counts_the_files_as_verify_does(
    sample: zoo.SampleModel, good_artifact: artifact.Artifact, tmp_path: Path
) -> None:
    """An FP32 baseline holds one file: fetch said "1 files verified"."""
    baseline = package_fp32(sample.model, tmp_path / "fp32")

    code, output = fetch(f"file://{baseline.root}", str(tmp_path / "a"))
    assert code == 0 and output.endswith(
        "-> " + str(tmp_path / "a") + ": its one file verified; unsigned\n"
    ), output
    code, output = fetch(f"file://{good_artifact.root}", str(tmp_path / "b"))
    assert code == 0 and ": 2 files verified; unsigned" in output, output


def test_dest_dot_is_the_folder_it_names(
    good_artifact: artifact.Artifact, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`fetch URI .` was a traceback (ValueError: PosixPath('.') has an empty name): DEST was
    judged unresolved, where `quantize -o .` resolves it first."""
    here = tmp_path / "here"
    here.mkdir()
    monkeypatch.chdir(here)

    code, output = fetch(f"file://{good_artifact.root}", ".")

    monkeypatch.chdir(tmp_path)  # `here` was replaced, as `quantize -o .` replaces it
    assert code == 0, output
    assert artifact.load_artifact(here).digest == good_artifact.digest
    assert [p.name for p in tmp_path.iterdir()] == ["here"], "no scratch left behind"


def external_data_model(folder: Path, weights: str) -> Path:
    """An artifact whose model.onnx keeps its one weight in the external file `weights`, which the
    manifest does not list: what onnxruntime reads from beside model.onnx, unverified."""
    from onnx import TensorProto, helper, numpy_helper, save_model

    weight = numpy_helper.from_array(np.arange(4, dtype=np.float32), "w")
    graph = helper.make_graph(
        [helper.make_node("Add", ["X", "w"], ["Y"])],
        "leaky",
        [helper.make_tensor_value_info("X", TensorProto.FLOAT, [4])],
        [helper.make_tensor_value_info("Y", TensorProto.FLOAT, [4])],
        [weight],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    built = folder / "built"
    built.mkdir()
    save_model(model, built / "model.onnx", save_as_external_data=True, location=weights, size_threshold=0)
    manifest = {"quantization": {"precision": "fp32", "mode": "none"}}
    return artifact.write_artifact(
        folder / "artifact", {artifact.MODEL_FILE: built / "model.onnx"}, manifest
    ).root


def test_an_unlisted_file_beside_the_model_never_reaches_the_server(tmp_path: Path) -> None:
    """A link named as the model's external data, to a secret on the fetching node: the artifact is
    refused where it lies, and a fetch copies only what the manifest lists."""
    secret = tmp_path / "secret"
    secret.write_bytes(np.full(4, 7, dtype=np.float32).tobytes())
    root = external_data_model(tmp_path, "weights.bin")
    (root / "weights.bin").symlink_to(secret)

    with pytest.raises(artifact.ArtifactError, match=r"holds what its manifest does not name: weights\.bin"):
        artifact.load_artifact(root)
    code, output = fetch(f"file://{root}", str(tmp_path / "model"))

    assert code == 0, output
    assert sorted(p.name for p in (tmp_path / "model").iterdir()) == ["manifest.json", "model.onnx"]


def test_a_claims_other_entries_are_not_copied(good_artifact: artifact.Artifact, tmp_path: Path) -> None:
    """An artifact at a claim's root shares it with lost+found; a link to /dev/zero is never read."""
    claim = tmp_path / "claim"
    shutil.copytree(good_artifact.root, claim)
    (claim / "lost+found").mkdir()
    (claim / "zeros").symlink_to("/dev/zero")

    code, output = fetch(f"file://{claim}", str(tmp_path / "model"))

    assert code == 0, output
    assert artifact.load_artifact(tmp_path / "model").digest == good_artifact.digest


@pytest.mark.parametrize("listed", ["/dev/zero", "fifo"])
def test_a_listed_file_that_is_not_a_regular_file_is_refused(
    artifact_copy: Path, tmp_path: Path, listed: str
) -> None:
    (artifact_copy / artifact.REFERENCE_FILE).unlink()
    if listed == "fifo":
        os.mkfifo(artifact_copy / artifact.REFERENCE_FILE)
    else:
        (artifact_copy / artifact.REFERENCE_FILE).symlink_to(listed)

    code, output = fetch(f"file://{artifact_copy}", str(tmp_path / "out" / "model"))

    assert code == 3 and "reference.onnx: not a regular file" in output, output
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def test_dest_holding_someones_data_is_refused_and_left_alone(
    good_artifact: artifact.Artifact, tmp_path: Path
) -> None:
    dest = tmp_path / "work"
    (dest / "src").mkdir(parents=True)
    (dest / "src" / "thesis.txt").write_text("my work")

    code, output = fetch(f"file://{good_artifact.root}", str(dest))

    assert code == 3 and "exists and is not an artifact; refusing to replace it" in output, output
    assert (dest / "src" / "thesis.txt").read_text() == "my work"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["work"], "no scratch left behind"


@pytest.mark.parametrize("listed", ["..", "sub"])
def test_a_listed_name_that_is_a_folder_is_a_one_line_error(
    good_artifact: artifact.Artifact, tmp_path: Path, listed: str
) -> None:
    source = tmp_path / "src" / "artifact"
    shutil.copytree(good_artifact.root, source)
    (source / "sub").mkdir()
    manifest = json.loads((source / artifact.MANIFEST_FILE).read_text())
    manifest["files"][listed] = {"sha256": "0" * 64, "size": 1}
    (source / artifact.MANIFEST_FILE).write_text(json.dumps(manifest))

    code, output = fetch(f"file://{source}", str(tmp_path / "out" / "model"))

    assert code == 3 and output.startswith("error: "), output
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def test_dest_may_be_an_empty_folder_or_an_older_artifact(
    good_artifact: artifact.Artifact, artifact_copy: Path, tmp_path: Path
) -> None:
    empty = tmp_path / "mount"
    empty.mkdir()
    assert fetch(f"file://{good_artifact.root}", str(empty))[0] == 0
    assert fetch(f"file://{artifact_copy}", str(empty))[0] == 0
    assert artifact.load_artifact(empty).digest == good_artifact.digest


@pytest.mark.parametrize(
    "dest", ["/proc/quantship-dest", "FILE/sub"], ids=["unwritable parent", "a file as parent"]
)
def test_a_dest_that_cannot_be_written_is_a_one_line_error(
    good_artifact: artifact.Artifact, tmp_path: Path, dest: str
) -> None:
    (tmp_path / "FILE").write_text("a file")
    code, output = fetch(f"file://{good_artifact.root}", dest.replace("FILE", str(tmp_path / "FILE")))

    assert code == 3 and "cannot write beside" in output and output.startswith("error: "), output


def test_a_tarball_over_http_is_downloaded_unpacked_and_verified(
    good_artifact: artifact.Artifact, http_root: tuple[str, Path], tmp_path: Path
) -> None:
    url, root = http_root
    artifact.pack(good_artifact.root, root / "digits.tar.gz")

    code, output = fetch(f"{url}/digits.tar.gz", str(tmp_path / "model"))

    assert code == 0, output
    assert artifact.load_artifact(tmp_path / "model").digest == good_artifact.digest


def test_a_pvc_uri_reads_the_claim_where_it_is_mounted(
    good_artifact: artifact.Artifact, tmp_path: Path
) -> None:
    mounted = tmp_path / "pvc" / "models" / "digits"
    shutil.copytree(good_artifact.root, mounted)

    code, output = fetch("pvc://models/digits", str(tmp_path / "model"), "--pvc-root", str(tmp_path / "pvc"))

    assert code == 0, output
    assert (tmp_path / "model" / "model.onnx").is_file()


def test_a_tampered_artifact_is_refused_and_nothing_is_installed(artifact_copy: Path, tmp_path: Path) -> None:
    with (artifact_copy / "model.onnx").open("r+b") as model:
        model.seek(100)
        model.write(b"\x00\x01\x02")

    code, output = fetch(f"file://{artifact_copy}", str(tmp_path / "model"))

    assert code == 3 and "does not match its sha256" in output
    assert not (tmp_path / "model").exists()


def test_a_tampered_tarball_over_http_is_named_by_its_url(
    artifact_copy: Path, http_root: tuple[str, Path], tmp_path: Path
) -> None:
    url, root = http_root
    artifact.pack(artifact_copy, root / "digits.tar.gz")
    with tarfile.open(root / "digits.tar.gz") as archive:  # repacked with one file changed
        archive.extractall(tmp_path / "unpacked", filter="data")
    with (tmp_path / "unpacked" / "model.onnx").open("r+b") as model:
        model.seek(100)
        model.write(b"\x00\x01\x02")
    with tarfile.open(root / "digits.tar.gz", "w:gz") as archive:
        for member in sorted((tmp_path / "unpacked").iterdir()):
            archive.add(member, arcname=member.name)

    code, output = fetch(f"{url}/digits.tar.gz", str(tmp_path / "model"))

    # the download and its unpacked copy lived in a scratch folder beside dest, gone by now
    assert code == 3 and f"{url}/digits.tar.gz: model.onnx does not match its sha256" in output, output
    assert ".fetch-" not in output
    assert not (tmp_path / "model").exists()


def test_an_unsigned_artifact_is_refused_when_a_key_is_required(
    good_artifact: artifact.Artifact, tmp_path: Path
) -> None:
    artifact_keys.generate_keypair(tmp_path / "private.pem", tmp_path / "public.pem")

    code, output = fetch(
        f"file://{good_artifact.root}", str(tmp_path / "model"), "--public-key", str(tmp_path / "public.pem")
    )

    assert code == 3 and "unsigned" in output
    assert not (tmp_path / "model").exists()


@pytest.mark.parametrize(
    ("uri", "complaint"),
    [
        ("s3://bucket/digits", "unsupported scheme 's3'"),
        ("https://127.0.0.1:9/digits", "over http(s) an artifact is a .tar.gz"),
        ("pvc://models/../../etc", "must stay inside the claim"),
        ("file:///nonexistent/digits", "does not exist"),
        ("http://[::1/digits.tar.gz", "not a URI"),
    ],
)
def test_a_uri_that_cannot_work_is_a_one_line_error(uri: str, complaint: str, tmp_path: Path) -> None:
    code, output = fetch(uri, str(tmp_path / "model"))

    assert code == 3 and complaint in output and output.startswith("error: ")


def test_a_server_that_does_not_answer_is_an_error(tmp_path: Path, http_root: tuple[str, Path]) -> None:
    url, _ = http_root
    code, output = fetch(f"{url}/missing.tar.gz", str(tmp_path / "model"), "--timeout", "5")

    assert code == 3 and "HTTP 404" in output


@pytest.mark.parametrize("scheme", ["file", "http", "oci"])
def test_a_dest_inside_an_artifact_is_refused_before_anything_is_made(
    good_artifact: artifact.Artifact, artifact_copy: Path, http_root: tuple[str, Path], scheme: str
) -> None:
    """A folder the artifact's manifest does not list left it unverifiable: every server refused it
    until someone removed the copy. oci:// was refused only by the pull's own check, naming its
    scratch folder; the registry here is never asked."""
    url, root = http_root
    artifact.pack(good_artifact.root, root / "digits.tar.gz")
    uri = {
        "file": f"file://{good_artifact.root}",
        "http": f"{url}/digits.tar.gz",
        "oci": "oci://127.0.0.1:9/quantship/digits:v1",
    }[scheme]
    dest = artifact_copy / "copy"

    code, output = fetch(uri, str(dest))

    assert code == 3, output
    assert output == (
        f"error: {dest} is inside the artifact {artifact_copy}: anything its manifest does not list makes "
        "it unverifiable; write it elsewhere\n"
    )
    assert artifact.load_artifact(artifact_copy).digest == good_artifact.digest, "nothing made inside"


def test_a_download_onto_a_full_disk_names_the_url_and_the_file(
    good_artifact: artifact.Artifact, http_root: tuple[str, Path], tmp_path: Path
) -> None:
    """The init container's emptyDir full, as a file size limit (RLIMIT_FSIZE) below the archive's
    size in a `quantship fetch` of its own: the message named neither ("[Errno 28] No space left on
    device")."""
    url, root = http_root
    artifact.pack(good_artifact.root, root / "digits.tar.gz")
    limit = (root / "digits.tar.gz").stat().st_size // 2
    command = (
        "import resource, signal\n"
        f"resource.setrlimit(resource.RLIMIT_FSIZE, ({limit}, {limit}))\n"
        "signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # EFBIG, not the signal's kill\n"
        "from quantship.cli import main\n"
        "main()\n"
    )
    out = tmp_path / "out"
    result = subprocess.run(
        [sys.executable, "-c", command, "fetch", f"{url}/digits.tar.gz", str(out / "model")],
        capture_output=True,
        text=True,
        timeout=120,
    )

    assert result.returncode == 3, result.stderr
    [line] = result.stderr.strip().splitlines()
    downloaded = rf"{re.escape(str(out))}/\.model\.fetch-\w+/digits\.tar\.gz"
    assert re.fullmatch(
        rf"error: {re.escape(url)}/digits\.tar\.gz: cannot write it to {downloaded}: File too large", line
    ), line
    assert list(out.iterdir()) == [], "nothing left behind"
