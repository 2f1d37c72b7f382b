"""`quantship fetch` against a model server that misbehaves: a real HTTP server on loopback.

The init container downloads whatever an artifact URI points at. A redirect to another host is
refused unless asked for (a compromised object store must not bounce it across the cluster), a
download stops at --max-bytes whether or not the size is declared, and a hostile archive is
refused by the artifact checks. Every refusal leaves DEST absent and no scratch beside it.
"""

from __future__ import annotations

import http.server
import io
import tarfile
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import ClassVar

import pytest
from click.testing import CliRunner

from quantship import artifact
from quantship.cli import main


class Handler(http.server.BaseHTTPRequestHandler):
    """/NAME (with its length), /chunked/NAME (no length declared), /moved/PATH (302 to
    `redirect_to`/PATH) over the archives in `files`."""

    protocol_version = "HTTP/1.1"
    files: ClassVar[dict[str, bytes]] = {}
    redirect_to: str = ""

    def do_GET(self) -> None:
        if self.path.startswith("/moved/"):
            self.send_response(302)
            self.send_header("Location", f"{self.redirect_to}/{self.path.removeprefix('/moved/')}")
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        name = self.path.lstrip("/").removeprefix("chunked/")
        body = self.files.get(name)
        if body is None:
            self.send_response(404)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        self.send_response(200)
        if self.path.startswith("/chunked/"):
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            for start in range(0, len(body), 4096):
                chunk = body[start : start + 4096]
                self.wfile.write(f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n")
            self.wfile.write(b"0\r\n\r\n")
            return
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def server(good_artifact: artifact.Artifact, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """http://127.0.0.1:PORT, whose redirects go to http://localhost:PORT: the same server under
    another host name, which is all it takes to be another origin."""
    packed = tmp_path_factory.mktemp("www") / "good.tar.gz"
    artifact.pack(good_artifact.root, packed)
    hostile = io.BytesIO()
    with tarfile.open(fileobj=hostile, mode="w:gz") as archive:
        for file in sorted(good_artifact.root.iterdir()):
            archive.add(file, arcname=file.name)
        link = tarfile.TarInfo("escape")
        link.type, link.linkname = tarfile.SYMTYPE, "/etc/passwd"
        archive.addfile(link)
    files = {"good.tar.gz": packed.read_bytes(), "bad.tar.gz": hostile.getvalue()}
    handler = type("Serving", (Handler,), {"files": files})
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    port = httpd.server_address[1]
    handler.redirect_to = f"http://localhost:{port}"
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{port}"
    httpd.shutdown()
    httpd.server_close()


def fetch(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(main, ["fetch", *args])
    return result.exit_code, result.output


def nothing_installed(parent: Path) -> bool:
    return not parent.exists() or not any(parent.iterdir())


def test_a_redirect_on_the_same_host_is_followed(server: str, tmp_path: Path) -> None:
    same_host = server.replace("127.0.0.1", "localhost")
    code, output = fetch(f"{same_host}/moved/good.tar.gz", str(tmp_path / "out" / "model"))

    assert code == 0, output
    assert (tmp_path / "out" / "model" / "model.onnx").is_file()


def test_a_redirect_to_another_host_is_refused(server: str, tmp_path: Path) -> None:
    code, output = fetch(f"{server}/moved/good.tar.gz", str(tmp_path / "out" / "model"))

    assert code == 3 and output.startswith("error: ")
    assert "redirected to another host (http://localhost:" in output and "--cross-host-redirects" in output
    assert nothing_installed(tmp_path / "out")


def test_a_redirect_to_another_host_is_followed_when_allowed(server: str, tmp_path: Path) -> None:
    code, output = fetch(f"{server}/moved/good.tar.gz", str(tmp_path / "model"), "--cross-host-redirects")

    assert code == 0, output


@pytest.mark.parametrize("path", ["good.tar.gz", "chunked/good.tar.gz"], ids=["declared", "chunked"])
def test_a_download_over_max_bytes_is_refused(server: str, tmp_path: Path, path: str) -> None:
    code, output = fetch(f"{server}/{path}", str(tmp_path / "out" / "model"), "--max-bytes", "10000")

    assert code == 3 and "the limit of 10000" in output, output
    assert nothing_installed(tmp_path / "out")


def test_a_chunked_download_within_the_cap_is_fine(server: str, tmp_path: Path) -> None:
    code, output = fetch(f"{server}/chunked/good.tar.gz", str(tmp_path / "model"))

    assert code == 0, output


def test_a_hostile_archive_is_refused_and_nothing_is_installed(server: str, tmp_path: Path) -> None:
    code, output = fetch(f"{server}/bad.tar.gz", str(tmp_path / "out" / "model"))

    assert code == 3 and "symbolic link to '/etc/passwd'" in output, output
    assert nothing_installed(tmp_path / "out")
