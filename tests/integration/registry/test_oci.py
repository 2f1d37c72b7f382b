"""`quantship push` / `pull` against a real OCI registry on loopback (Debian's docker-registry)."""

from __future__ import annotations

import base64
import contextlib
import http.server
import json
import os
import shutil
import stat
import subprocess
import sys
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import ClassVar

import pytest
from click.testing import CliRunner
from quiet_http import QuietHTTPServer
from registry_harness import PASSWORD, USER, Registry

from quantship import artifact, artifact_keys, oci, scratch
from quantship.cli import main
from quantship.local.prometheus import free_port


def _same_files(a: Path, b: Path) -> bool:
    names = [artifact.MODEL_FILE, artifact.REFERENCE_FILE, artifact.MANIFEST_FILE]
    return all((a / n).read_bytes() == (b / n).read_bytes() for n in names)


def test_an_artifact_pushed_by_tag_pulls_back_identical_by_tag_and_by_digest(
    registry: Registry, good_artifact: artifact.Artifact, tmp_path: Path
) -> None:
    uri = registry.uri("quantship/digits:good")
    digest = oci.push(good_artifact.root, uri)
    assert digest.startswith("sha256:")
    by_tag = oci.pull(uri, tmp_path / "by-tag")
    by_digest = oci.pull(registry.uri(f"quantship/digits@{digest}"), tmp_path / "by-digest")
    assert by_tag.digest == by_digest.digest == good_artifact.digest
    assert _same_files(good_artifact.root, by_tag.root) and _same_files(good_artifact.root, by_digest.root)
    assert by_tag.gate_passed


def test_the_signature_travels_with_the_artifact(
    registry: Registry, good_artifact: artifact.Artifact, tmp_path: Path
) -> None:
    import shutil

    from quantship.quantize import package_fp32

    artifact_keys.generate_keypair(tmp_path / "key.pem", tmp_path / "key.pub")
    signed = package_fp32(
        good_artifact.reference_path,  # type: ignore[arg-type]
        tmp_path / "signed",
        sign_key=artifact_keys.load_private_key(tmp_path / "key.pem"),
    )
    oci.push(signed.root, registry.uri("quantship/signed:v1"))
    public = artifact_keys.load_public_key(tmp_path / "key.pub")
    pulled = oci.pull(registry.uri("quantship/signed:v1"), tmp_path / "pulled", public_key=public)
    assert pulled.signed
    shutil.rmtree(tmp_path / "pulled")
    artifact_keys.generate_keypair(tmp_path / "other.pem", tmp_path / "other.pub")
    with pytest.raises(artifact.ArtifactError):
        oci.pull(
            registry.uri("quantship/signed:v1"),
            tmp_path / "pulled",
            public_key=artifact_keys.load_public_key(tmp_path / "other.pub"),
        )
    assert not (tmp_path / "pulled").exists()


@pytest.mark.parametrize(
    ("path", "message"),
    [
        ("quantship/digits:no-such-tag", "no such tag or digest"),
        ("quantship/digits@sha256:" + "0" * 64, "no such tag or digest"),
        ("quantship/digits", "names no tag or digest"),
    ],
)
def test_a_missing_tag_or_digest_is_named(
    registry: Registry, good_artifact: artifact.Artifact, tmp_path: Path, path: str, message: str
) -> None:
    oci.push(good_artifact.root, registry.uri("quantship/digits:good"))
    with pytest.raises(oci.OciError, match=message):
        oci.pull(registry.uri(path), tmp_path / "a")
    assert list(tmp_path.iterdir()) == []


def test_an_artifact_no_oci_layer_can_carry_is_refused_by_name(
    registry: Registry, good_artifact: artifact.Artifact, tmp_path: Path
) -> None:
    """It verifies (its manifest lists and hashes notes.txt), but a pull could not put it back."""
    notes = tmp_path / "notes.txt"
    notes.write_text("trained on Tuesday")
    files = {artifact.MODEL_FILE: good_artifact.model_path, "notes.txt": notes}
    odd = artifact.write_artifact(tmp_path / "odd", files, {"quantization": {"precision": "fp32"}})
    with pytest.raises(oci.OciError, match=r"the manifest also lists notes\.txt"):
        oci.push(odd.root, registry.uri("quantship/digits:odd"))


def test_a_registry_that_is_down_is_named_at_once(good_artifact: artifact.Artifact, tmp_path: Path) -> None:
    uri = f"oci://127.0.0.1:{free_port()}/quantship/digits:v1"
    down = r"cannot reach the registry 127\.0\.0\.1:\d+: ConnectionError \(Connection refused\)$"
    with pytest.raises(oci.OciError, match=down):  # what the system said, not only the exception's name
        oci.push(good_artifact.root, uri)
    with pytest.raises(oci.OciError, match=down):
        oci.pull(uri, tmp_path / "a")


def test_basic_auth_refuses_strangers_and_admits_credentials_and_docker_configs(
    auth_registry: Registry, good_artifact: artifact.Artifact, tmp_path: Path
) -> None:
    uri = auth_registry.uri("quantship/digits:v1")
    with pytest.raises(oci.OciError, match="needs credentials"):
        oci.push(good_artifact.root, uri)
    with pytest.raises(oci.OciError, match="refused the credentials"):
        oci.push(good_artifact.root, uri, credentials=oci.Credentials(USER, "wrong"))
    oci.push(good_artifact.root, uri, credentials=oci.Credentials(USER, PASSWORD))
    # A dockerconfigjson pull secret, as the operator mounts it.
    config = tmp_path / "config.json"
    token = base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()
    config.write_text(json.dumps({"auths": {auth_registry.address: {"auth": token}}}))
    pulled = oci.pull(uri, tmp_path / "a", credentials=oci.Credentials(docker_config=config))
    assert pulled.digest == good_artifact.digest


def _blob_path(registry_root: Path, digest: str) -> Path:
    hexdigest = digest.removeprefix("sha256:")
    return registry_root / "data/docker/registry/v2/blobs/sha256" / hexdigest[:2] / hexdigest / "data"


def test_a_tampered_layer_is_refused_and_nothing_is_left_on_disk(
    registry: Registry, good_artifact: artifact.Artifact, tmp_path: Path
) -> None:
    uri = registry.uri("quantship/tampered:v1")
    oci.push(good_artifact.root, uri)
    with (
        _tampered_model(registry, good_artifact),
        pytest.raises(oci.OciError, match="does not match its digest"),
    ):
        oci.pull(uri, tmp_path / "a")
    assert list(tmp_path.iterdir()) == []


@contextlib.contextmanager
def _tampered_model(registry: Registry, pushed: artifact.Artifact) -> Iterator[None]:
    """The registry's copy of `pushed`'s model blob with its last 16 bytes zeroed, put back after."""
    blob = _blob_path(registry.root, "sha256:" + pushed.manifest["files"][artifact.MODEL_FILE]["sha256"])
    original = blob.read_bytes()
    blob.write_bytes(original[:-16] + bytes(16))
    try:
        yield
    finally:
        blob.write_bytes(original)


def test_a_pull_replaces_an_older_artifact_in_one_rename_and_refuses_other_data(
    registry: Registry, good_artifact: artifact.Artifact, skewed_artifact: artifact.Artifact, tmp_path: Path
) -> None:
    """`pull -o` refused any folder that existed, where `quantize -o` replaces an older artifact: a
    revision pulled again to update it needed an rm -rf first. Other data stays refused, untouched,
    and a pull that fails leaves the older artifact as it was."""
    v1, v2 = registry.uri("quantship/replaced:v1"), registry.uri("quantship/replaced:v2")
    oci.push(good_artifact.root, v1)
    oci.push(skewed_artifact.root, v2)
    out = tmp_path / "pulled"
    first = CliRunner().invoke(main, ["pull", v1, "-o", str(out)])
    assert first.exit_code == 0 and "in place of" not in first.stdout, first.stderr
    second = CliRunner().invoke(main, ["pull", v2, "-o", str(out)])
    assert second.exit_code == 0, second.stderr
    assert f"into {out} (in place of the older artifact there):" in second.stdout
    assert artifact.load_artifact(out).digest == skewed_artifact.digest
    assert stat.S_IMODE(out.stat().st_mode) == 0o755

    with (
        _tampered_model(registry, good_artifact),
        pytest.raises(oci.OciError, match="does not match its digest"),
    ):
        oci.pull(v1, out)
    assert artifact.load_artifact(out).digest == skewed_artifact.digest
    assert [p.name for p in tmp_path.iterdir()] == ["pulled"]  # no staging, no artifact moved aside

    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("a user's")
    refused = CliRunner().invoke(main, ["pull", v1, "-o", str(mine)])
    assert refused.exit_code == 3, refused.stderr
    assert "mine exists and is not an artifact; refusing to replace it" in refused.stderr
    assert [p.name for p in mine.iterdir()] == ["notes.txt"]


def test_a_folder_of_the_users_where_the_older_artifact_goes_aside_is_refused_before_any_download(
    registry: Registry, good_artifact: artifact.Artifact, tmp_path: Path
) -> None:
    """A pull moves the older artifact at -o aside to `.NAME.old` before its own takes the place,
    and refused a folder of the user's there only then, after the download (MiniLM's 110 MB):
    now before it, naming that folder (a repository the registry never had: no download to fail)."""
    out = tmp_path / "pulled"
    shutil.copytree(good_artifact.root, out)
    aside = tmp_path / ".pulled.old"
    aside.mkdir()
    (aside / "notes.txt").write_text("a user's")

    refused = CliRunner().invoke(main, ["pull", registry.uri("quantship/never-pushed:v1"), "-o", str(out)])

    assert refused.exit_code == 3, refused.stderr
    assert refused.stderr == f"error: {aside} exists and is not an artifact; refusing to replace it\n"
    assert [p.name for p in aside.iterdir()] == ["notes.txt"]
    assert artifact.load_artifact(out).digest == good_artifact.digest


def test_fetch_refuses_a_folder_of_the_users_at_dest_or_beside_it_before_any_download(
    registry: Registry, good_artifact: artifact.Artifact, tmp_path: Path
) -> None:
    """`quantship fetch URI DEST` refused a folder of the user's at `.DEST.old` (where the older
    artifact at DEST goes aside), or at DEST itself, only after the whole download, as pull did
    before session 47: now before it, naming that folder (a repository the registry never had: no
    download to fail, where the download said "no such tag or digest")."""
    uri = registry.uri("quantship/never-fetched:v1")
    dest = tmp_path / "fetched"
    shutil.copytree(good_artifact.root, dest)
    aside = tmp_path / ".fetched.old"
    aside.mkdir()
    (aside / "notes.txt").write_text("a user's")
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("a user's")

    for into, refused in ((dest, aside), (mine, mine)):
        fetched = CliRunner().invoke(main, ["fetch", uri, str(into)])

        assert fetched.exit_code == 3, fetched.stderr
        assert fetched.stderr == f"error: {refused} exists and is not an artifact; refusing to replace it\n"
        assert [p.name for p in refused.iterdir()] == ["notes.txt"]
    assert artifact.load_artifact(dest).digest == good_artifact.digest
    assert sorted(p.name for p in tmp_path.iterdir()) == [aside.name, dest.name, mine.name]


def test_pull_o_names_the_folder_quantize_o_does(
    registry: Registry, good_artifact: artifact.Artifact, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`pull -o .` and `pull -o /` were tracebacks (ValueError: PosixPath('.') has an empty name)
    once pull looked for an older artifact beside its destination; and `-o current`, a link to an
    artifact, was refused, where `quantize -o` replaces the artifact the link names."""
    uri = registry.uri("quantship/dot:v1")
    oci.push(good_artifact.root, uri)
    here = tmp_path / "here"
    here.mkdir()
    monkeypatch.chdir(here)

    into_dot = CliRunner().invoke(main, ["pull", uri, "-o", "."])

    monkeypatch.chdir(tmp_path)  # `here` was replaced, as `quantize -o .` replaces it
    assert into_dot.exit_code == 0, into_dot.stderr
    assert artifact.load_artifact(here).digest == good_artifact.digest
    (tmp_path / "current").symlink_to("here")
    through_link = CliRunner().invoke(main, ["pull", uri, "-o", "current"])
    assert through_link.exit_code == 0, through_link.stderr
    assert f"into {here} (in place of the older artifact there)" in through_link.stdout
    assert (tmp_path / "current").is_symlink() and artifact.load_artifact(here).digest == good_artifact.digest
    into_root = CliRunner().invoke(main, ["pull", uri, "-o", "/"])
    assert (
        into_root.exit_code == 3
        and into_root.stderr == "error: / is a mount point: pull into a directory inside it\n"
    )


def test_the_cli_pushes_and_pulls(
    registry: Registry, good_artifact: artifact.Artifact, tmp_path: Path
) -> None:
    uri = registry.uri("quantship/cli:v1")
    pushed = CliRunner().invoke(main, ["push", str(good_artifact.root), uri])
    assert pushed.exit_code == 0, pushed.stderr
    assert "@sha256:" in pushed.stdout
    pulled = CliRunner().invoke(main, ["pull", uri, "-o", str(tmp_path / "a")])
    assert pulled.exit_code == 0, pulled.stderr
    # the digest push printed, which a pin by digest names: not the artifact's own manifest.json hash
    image_digest = "sha256:" + pushed.stdout.split("@sha256:")[1].split()[0]
    assert f"({image_digest})" in pulled.stdout, pulled.stdout
    assert artifact.load_artifact(tmp_path / "a").digest == good_artifact.digest
    nope = registry.uri("quantship/cli:nope")
    missing = CliRunner().invoke(main, ["pull", nope, "-o", str(tmp_path / "b")])
    assert missing.exit_code != 0 and len(missing.stderr.strip().splitlines()) == 1
    assert "no such tag or digest" in missing.stderr


def test_pushing_an_artifact_whose_gate_failed_says_so_before_it_goes(
    registry: Registry, good_artifact: artifact.Artifact, tmp_path: Path
) -> None:
    """A best effort (what quantize writes to OUT.gate-failed) was pushed with exit 0 and not a word,
    where verify exits 1 on it: a rollout would have judged it by its canary alone. It still goes."""
    failed = tmp_path / "digits.gate-failed"
    shutil.copytree(good_artifact.root, failed)
    manifest = json.loads((failed / artifact.MANIFEST_FILE).read_text())
    manifest["validation"]["gate"] = "failed"
    (failed / artifact.MANIFEST_FILE).write_text(json.dumps(manifest))
    uri = registry.uri("quantship/best-effort:v1")

    pushed = CliRunner().invoke(main, ["push", str(failed), uri])

    assert pushed.exit_code == 0 and "@sha256:" in pushed.stdout, pushed.stderr
    assert pushed.stderr.splitlines() == [
        f"warning: {failed}: its accuracy gate failed (a best effort; `quantship verify` exits 1 on it): "
        "pushing it as it is"
    ]
    passed = CliRunner().invoke(main, ["push", str(good_artifact.root), registry.uri("quantship/passed:v1")])
    assert passed.exit_code == 0 and passed.stderr == "", passed.stderr


def test_a_plain_http_registry_not_on_loopback_is_hinted_at_and_fetched_from_with_insecure(
    registry: Registry, good_artifact: artifact.Artifact, tmp_path: Path
) -> None:
    oci.push(good_artifact.root, registry.uri("quantship/plain:v1"))
    port = registry.address.rpartition(":")[2]
    uri = f"oci://0.0.0.0:{port}/quantship/plain:v1"  # this host, but not a loopback name: https first
    pulled = CliRunner().invoke(main, ["pull", uri, "-o", str(tmp_path / "a")])
    assert pulled.exit_code == 3 and len(pulled.stderr.strip().splitlines()) == 1, pulled.stderr
    assert "SSLError ([SSL: WRONG_VERSION_NUMBER]" in pulled.stderr  # the TLS failure, as ssl says it
    assert pulled.stderr.rstrip().endswith("(plain HTTP? --insecure)")
    fetched = CliRunner().invoke(main, ["fetch", "--insecure", uri, str(tmp_path / "b")])
    assert fetched.exit_code == 0, fetched.stderr
    assert artifact.load_artifact(tmp_path / "b").digest == good_artifact.digest


def test_the_operators_fetch_installs_an_oci_artifact_by_tag_and_digest_with_a_pull_secret(
    auth_registry: Registry, good_artifact: artifact.Artifact, tmp_path: Path
) -> None:
    from quantship.operator import fetch

    uri = auth_registry.uri("quantship/fetched:v1")
    digest = oci.push(good_artifact.root, uri, credentials=oci.Credentials(USER, PASSWORD))
    config = tmp_path / "config.json"  # the dockerconfigjson Secret's content, as mounted
    token = base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()
    config.write_text(json.dumps({"auths": {auth_registry.address: {"auth": token}}}))
    by_tag = fetch.fetch(uri, tmp_path / "model", registry_config=config)
    pinned = auth_registry.uri(f"quantship/fetched@{digest}")
    by_digest = fetch.fetch(pinned, tmp_path / "pinned", registry_config=config)
    assert by_tag.digest == by_digest.digest == good_artifact.digest
    # the command line takes the file under push's and pull's name for it too
    command = ["fetch", uri, str(tmp_path / "by-cli"), "--docker-config", str(config)]
    by_cli = CliRunner().invoke(main, command)
    assert by_cli.exit_code == 0, by_cli.output
    with pytest.raises(fetch.FetchError, match="needs credentials"):
        fetch.fetch(uri, tmp_path / "anonymous")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["by-cli", "config.json", "model", "pinned"]


def test_a_refusal_for_want_of_credentials_names_an_option_every_registry_command_takes(
    auth_registry: Registry, good_artifact: artifact.Artifact, tmp_path: Path
) -> None:
    """fetch (the init container's) and quantize-job take credentials as a Docker config only: the
    refusal told them to give `--username with QUANTSHIP_REGISTRY_PASSWORD, or --docker-config`,
    and fetch refuses --username as no such option."""
    uri = auth_registry.uri("quantship/anonymous:v1")
    oci.push(good_artifact.root, uri, credentials=oci.Credentials(USER, PASSWORD))
    for command in (["fetch", uri, str(tmp_path / "fetched")], ["pull", uri, "-o", str(tmp_path / "pulled")]):
        refused = CliRunner().invoke(main, command)
        assert refused.exit_code == 3, refused.output
        said = " ".join(refused.stderr.split())
        assert f"error: {auth_registry.address} needs credentials: --docker-config " in said, said
        assert "push and pull, --username with QUANTSHIP_REGISTRY_PASSWORD" in said, said


class _Recorder(http.server.BaseHTTPRequestHandler):
    seen: ClassVar[list[tuple[str, str | None]]] = []

    def do_GET(self) -> None:
        self.seen.append((self.path, self.headers.get("Authorization")))
        self.send_response(401)
        self.send_header("WWW-Authenticate", 'Basic realm="x"')
        self.send_header("Content-Length", "0")
        self.end_headers()

    do_HEAD = do_POST = do_PUT = do_GET

    def log_message(self, *args: object) -> None:
        pass


@pytest.mark.parametrize(
    "hostile",
    ["{registry}//{other}/stolen:v1", "{registry}/{other}/stolen:v1", "{registry}/x/{other}/stolen:v1"],
)
def test_a_reference_that_could_name_another_host_is_refused_before_any_request(
    auth_registry: Registry, good_artifact: artifact.Artifact, tmp_path: Path, hostile: str
) -> None:
    """oras reads the registry as the first part of a reference that looks like a host: these sent
    the credentials for the registry named first (and the model) to the other."""
    recorder = QuietHTTPServer(("127.0.0.1", 0), _Recorder)
    threading.Thread(target=recorder.serve_forever, daemon=True).start()
    other = f"127.0.0.1:{recorder.server_address[1]}"
    uri = "oci://" + hostile.format(registry=auth_registry.address, other=other)
    try:
        with pytest.raises(oci.OciError, match="is not an OCI reference"):
            oci.push(good_artifact.root, uri, credentials=oci.Credentials(USER, PASSWORD))
        with pytest.raises(oci.OciError, match="is not an OCI reference"):
            oci.pull(uri, tmp_path / "a", credentials=oci.Credentials(USER, PASSWORD))
        result = CliRunner().invoke(
            main, ["pull", uri.replace("stolen:v1", "stolen:"), "-o", str(tmp_path / "b")]
        )
        assert result.exit_code == 3 and result.output.count("\n") == 1, result.output
    finally:
        recorder.shutdown()
        recorder.server_close()
    assert _Recorder.seen == []
    assert list(tmp_path.iterdir()) == []


def _my_scratch() -> set[str]:
    """This process's artifact scratch directories in the system's temporary directory."""
    mine = set()
    for folder in Path(tempfile.gettempdir()).glob(f"{scratch.ARTIFACT_PREFIX}*"):
        with contextlib.suppress(OSError, ValueError):
            if json.loads((folder / scratch.OWNER_FILE).read_text())["pid"] == os.getpid():
                mine.add(folder.name)
    return mine


def test_a_tarball_pushed_leaves_nothing_unpacked_and_pulls_back_readable_by_all(
    registry: Registry, good_artifact: artifact.Artifact, tmp_path: Path
) -> None:
    """A CI runner pushes and goes: the unpacked copy went with it. A pulled artifact is 0755 like
    one written by `quantize`, for a server running as another user."""
    tarball = tmp_path / "digits.tar.gz"
    artifact.pack(good_artifact.root, tarball)
    before = _my_scratch()
    oci.push(tarball, registry.uri("quantship/tarball:v1"))
    assert _my_scratch() == before
    pulled = oci.pull(registry.uri("quantship/tarball:v1"), tmp_path / "pulled")
    assert stat.S_IMODE(pulled.root.stat().st_mode) == 0o755


def test_a_push_killed_mid_way_is_swept_by_the_next_push(
    registry: Registry, good_artifact: artifact.Artifact
) -> None:
    """A push's scratch (its config blob) was a plain temporary directory: after a kill -9 it stayed
    for ever, since no sweep knew its prefix."""
    killed = scratch.create(scratch.PUSH_PREFIX)
    owner = json.loads((killed / scratch.OWNER_FILE).read_text())
    (killed / scratch.OWNER_FILE).write_text(json.dumps({**owner, "pid": _dead_pid()}))
    oci.push(good_artifact.root, registry.uri("quantship/swept:v1"))
    assert not killed.exists()
    owners = [
        folder / scratch.OWNER_FILE for folder in Path(tempfile.gettempdir()).glob(f"{scratch.PUSH_PREFIX}*")
    ]
    # the push left none of its own (others' may be there, even unmarked ones a kill left mid-removal)
    assert not any(json.loads(owner.read_text())["pid"] == os.getpid() for owner in owners if owner.exists())


def _dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def test_a_registry_host_written_in_capitals_is_the_same_host(
    auth_registry: Registry, good_artifact: artifact.Artifact, tmp_path: Path
) -> None:
    """requests writes a host in lower case: the credentials, kept for `LocalHost`, were withheld
    from `localhost`, and the push failed."""
    port = auth_registry.address.rsplit(":", 1)[1]
    uri = f"oci://LocalHost:{port}/quantship/capitals:v1"
    credentials = oci.Credentials(USER, PASSWORD)
    oci.push(good_artifact.root, uri, credentials=credentials)
    pulled = oci.pull(uri, tmp_path / "a", credentials=credentials)
    assert pulled.digest == good_artifact.digest
    assert str(oci.Reference.parse(uri)) == f"oci://localhost:{port}/quantship/capitals:v1"
    # a pull secret made with `kubectl create secret docker-registry --docker-server=https://LocalHost:…/`
    config = tmp_path / "config.json"
    token = base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()
    config.write_text(json.dumps({"auths": {f"https://LocalHost:{port}/v1/": {"auth": token}}}))
    again = oci.pull(uri, tmp_path / "b", credentials=oci.Credentials(docker_config=config))
    assert again.digest == good_artifact.digest


class _HostileRealm(http.server.BaseHTTPRequestHandler):
    realm: ClassVar[str] = ""

    def do_GET(self) -> None:
        self.send_response(401)
        self.send_header("WWW-Authenticate", f'Bearer realm="{self.realm}",service="s"')
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


@pytest.mark.parametrize(
    "realm",
    ["http://evil\x1bc\x07.example/token", "http://[evil/token", "http://a..b/t", f"http://{'a' * 64}.b/t"],
    ids=["escapes", "bracket", "empty-label", "long-label"],
)
def test_a_token_realm_the_registry_names_reaches_the_terminal_printable_or_is_refused(
    tmp_path: Path, realm: str
) -> None:
    """The realm's host went raw into 'cannot reach the token realm ...' (ESC c resets a terminal),
    and a '[' in it raised a ValueError from urlsplit."""
    _HostileRealm.realm = realm
    server = QuietHTTPServer(("127.0.0.1", 0), _HostileRealm)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    uri = f"oci://127.0.0.1:{server.server_address[1]}/x/y:1"
    try:
        result = CliRunner().invoke(main, ["pull", uri, "-o", str(tmp_path / "pulled")])
    finally:
        server.shutdown()
        server.server_close()
    assert result.exit_code == 3 and result.output.count("\n") == 1, result.output
    assert not any(ch in result.output for ch in "\x1b\x07"), repr(result.output)
