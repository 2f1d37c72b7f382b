"""`quantship fetch` against a model server that misbehaves: a real HTTP server on loopback.

The init container downloads whatever an artifact URI points at. A redirect to another host is
refused unless asked for (a compromised object store must not bounce it across the cluster), a
download stops at --max-bytes whether or not the size is declared, and a hostile archive is
refused by the artifact checks. Every refusal leaves DEST absent and no scratch beside it.
"""

from __future__ import annotations

import contextlib
import gzip
import http.server
import io
import json
import re
import signal
import subprocess
import sys
import tarfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import ClassVar

import pytest
from click.testing import CliRunner
from quiet_http import QuietHTTPServer

from quantship import artifact
from quantship.cli import main


class Handler(http.server.BaseHTTPRequestHandler):
    """/NAME (with its length), /chunked/NAME (no length declared), /encoded/NAME (sent as
    `Content-Encoding: gzip`), /moved/PATH (302 to `redirect_to`/PATH) over the archives in `files`."""

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
        if self.path.startswith("/drip/"):  # a body that never ends, a byte every 0.1 s
            self.send_response(200)
            self.send_header("Content-Length", str(2**30))
            self.end_headers()
            with contextlib.suppress(OSError):
                for _ in range(600):
                    self.wfile.write(b"x")
                    self.wfile.flush()
                    time.sleep(0.1)
            return
        name = self.path.lstrip("/").removeprefix("chunked/").removeprefix("encoded/")
        body = self.files.get(name)
        if body is None:
            self.send_response(404)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        self.send_response(200)
        if self.path.startswith("/encoded/"):  # what an object store does with Content-Encoding set
            self.send_header("Content-Encoding", "gzip")
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
    bomb = gzip.compress(bytes(64 * 2**20))  # 64 KiB that a client inflating the encoding makes 64 MiB
    files = {"good.tar.gz": packed.read_bytes(), "bad.tar.gz": hostile.getvalue(), "bomb.tar.gz": bomb}
    handler = type("Serving", (Handler,), {"files": files})
    httpd = QuietHTTPServer(("127.0.0.1", 0), handler)
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


def test_the_quantize_job_refuses_a_redirect_to_another_host_naming_no_flag_it_lacks(
    server: str, tmp_path: Path
) -> None:
    """It said "allow with --cross-host-redirects", which neither quantize-job nor spec.quantize has
    (quantize-job passed the flag on to `quantship quantize`)."""
    result = CliRunner().invoke(
        main,
        [
            "quantize-job", "--model", f"{server}/moved/model.onnx", "--calibration", "file:///nowhere.npz",
            "--target", "pvc://models/digits", "--pvc-root", str(tmp_path / "pvc"),
            "--workdir", str(tmp_path / "work"), "--result-file", str(tmp_path / "result"),
        ],
    )  # fmt: skip

    assert result.exit_code == 3, result.output
    verdict = json.loads((tmp_path / "result").read_text())
    assert verdict["error"] == (
        f"{server}/moved/model.onnx: redirected to another host ({server.replace('127.0.0.1', 'localhost')}"
        "/model.onnx): refused (give the URL it redirects to)"
    )
    assert "--cross-host-redirects" not in result.output


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


@pytest.mark.timeout(120)  # the session's sample model may be built first
def test_a_download_that_drips_is_abandoned_by_the_speed_limit_and_nothing_is_installed(
    server: str, tmp_path: Path
) -> None:
    """A byte every 0.1 s, each well inside the read timeout, for a body declared 1 GiB: held to
    --speed-limit as an OCI pull is, it ends in about a second instead of running for a minute."""
    code, output = fetch(
        f"{server}/drip/slow.tar.gz",
        str(tmp_path / "out" / "model"),
        "--speed-limit",
        "1000",
        "--speed-time",
        "1",
    )
    assert code == 3, output
    assert re.search(
        r"slow\.tar\.gz: its answer moved \d+ bytes in [\d.]+ s .* under the minimum of 1000 bytes/s", output
    )
    assert nothing_installed(tmp_path / "out")


def test_a_hostile_archive_is_refused_and_nothing_is_installed(server: str, tmp_path: Path) -> None:
    code, output = fetch(f"{server}/bad.tar.gz", str(tmp_path / "out" / "model"))

    assert code == 3 and "symbolic link to '/etc/passwd'" in output, output
    assert nothing_installed(tmp_path / "out")


def test_a_tarball_sent_gzip_encoded_is_saved_as_sent_not_inflated(server: str, tmp_path: Path) -> None:
    """An object store labels a .tar.gz `Content-Encoding: gzip`: the body is the archive itself."""
    code, output = fetch(f"{server}/encoded/good.tar.gz", str(tmp_path / "model"))
    assert code == 0, output


def test_an_encoded_body_is_held_to_max_bytes_as_sent(server: str, tmp_path: Path) -> None:
    """64 KiB sent, 64 MiB inflated: saved as sent, it is within 1 MB and the archive checks refuse
    it (zeros hold no manifest); inflated, it would have been written out to the limit first."""
    code, output = fetch(
        f"{server}/encoded/bomb.tar.gz", str(tmp_path / "out" / "model"), "--max-bytes", "1000000"
    )
    assert code == 3 and "archive holds no manifest.json" in output, output
    assert nothing_installed(tmp_path / "out")


# `quantship` as a terminal starts it, whatever this test runs under: a runner started in the
# background by a non-interactive shell ignores SIGINT, and its children inherit that (Python keeps an
# inherited SIG_IGN), so a Ctrl-C never reached the fetch (CI, twice).
AS_FROM_A_TERMINAL = (
    "import runpy, signal; signal.signal(signal.SIGINT, signal.default_int_handler); "
    "runpy.run_module('quantship', run_name='__main__')"
)


def downloading(server: str, out: Path) -> subprocess.Popen[bytes]:
    """`quantship fetch` of a body that never ends, once its download has begun."""
    fetching = subprocess.Popen(
        # faulthandler: a fetch that outlives its signal is ended by `ended` with its threads' stacks
        [
            sys.executable,
            "-X",
            "faulthandler",
            "-c",
            AS_FROM_A_TERMINAL,
            "fetch",
            f"{server}/drip/slow.tar.gz",
            str(out / "model"),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    deadline = time.monotonic() + 30
    while not (out.exists() and any(out.glob(".model.fetch-*/slow.tar.gz"))):
        assert time.monotonic() < deadline and fetching.poll() is None, fetching.communicate()
        time.sleep(0.05)
    return fetching


def ended(fetching: subprocess.Popen[bytes], timeout: float = 30) -> tuple[int, bytes]:
    """The fetch's exit code and output; one still running after `timeout` fails the test with the
    stacks it was stuck in."""
    try:
        output, _ = fetching.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        fetching.send_signal(signal.SIGABRT)
        pytest.fail(f"still running {timeout} s after its signal:\n{fetching.communicate()[0].decode()}")
    return fetching.returncode, output


def test_a_fetch_ended_by_sigterm_leaves_no_scratch_behind(server: str, tmp_path: Path) -> None:
    """An init container deleted mid-download (SIGTERM) cleans up as Ctrl-C would."""
    fetching = downloading(server, tmp_path / "out")
    fetching.send_signal(signal.SIGTERM)
    assert ended(fetching)[0] == -signal.SIGTERM  # ended by the signal, once cleaned up
    assert nothing_installed(tmp_path / "out")


def test_a_fetch_ended_by_ctrl_c_exits_130_and_leaves_no_scratch_behind(server: str, tmp_path: Path) -> None:
    """click's own answer to Ctrl-C is "Aborted!" and 1: the code of a failed accuracy gate."""
    fetching = downloading(server, tmp_path / "out")
    fetching.send_signal(signal.SIGINT)
    code, output = ended(fetching)
    assert code == 130 and b"interrupted" in output, output
    assert nothing_installed(tmp_path / "out")
