"""`quantship fetch`, the init container: a verified artifact in DEST, or an error and nothing."""

from __future__ import annotations

import http.server
import shutil
import threading
from collections.abc import Iterator
from functools import partial
from pathlib import Path

import pytest
from click.testing import CliRunner

from quantship import artifact
from quantship.cli import main


@pytest.fixture
def http_root(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """A real HTTP server over a folder, on loopback."""
    root = tmp_path / "www"
    root.mkdir()
    handler = partial(http.server.SimpleHTTPRequestHandler, directory=str(root))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
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


def test_an_unsigned_artifact_is_refused_when_a_key_is_required(
    good_artifact: artifact.Artifact, tmp_path: Path
) -> None:
    artifact.generate_keypair(tmp_path / "private.pem", tmp_path / "public.pem")

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
    ],
)
def test_a_uri_that_cannot_work_is_a_one_line_error(uri: str, complaint: str, tmp_path: Path) -> None:
    code, output = fetch(uri, str(tmp_path / "model"))

    assert code == 3 and complaint in output and output.startswith("error: ")


def test_a_server_that_does_not_answer_is_an_error(tmp_path: Path, http_root: tuple[str, Path]) -> None:
    url, _ = http_root
    code, output = fetch(f"{url}/missing.tar.gz", str(tmp_path / "model"), "--timeout", "5")

    assert code == 3 and "HTTP 404" in output
