"""`quantship push` / `pull` against a real registry behind token auth (the scheme of Docker Hub,
GHCR, Harbor, Quay, GitLab and ACR): Debian's docker-registry trusting the tokens of a token server
in this process. The credentials go to the token realm, the registry sees only tokens."""

from __future__ import annotations

import base64
import json
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from click.testing import CliRunner
from hostile_registry import body, challenge, redirect, serving
from leaks import left_to_gc
from registry_harness import (
    IDENTITY_TOKEN,
    PUBLIC,
    SERVICE,
    TOKEN_PASSWORD,
    TOKEN_USER,
    Registry,
    TokenServer,
    relaying,
)

from quantship import artifact, oci, oci_auth
from quantship.cli import main

ALICE = oci.Credentials(TOKEN_USER, TOKEN_PASSWORD)
ACR_USER = "00000000-0000-0000-0000-000000000000"
"""The user `docker login` writes beside an identity token, with an empty password."""


def identity_config(path: Path, registry: str, identity_token: str = IDENTITY_TOKEN) -> oci.Credentials:
    """A Docker config as `docker login` to ACR writes it, at `path`, for `registry`."""
    auth = base64.b64encode(f"{ACR_USER}:".encode()).decode()
    path.write_text(json.dumps({"auths": {registry: {"auth": auth, "identitytoken": identity_token}}}))
    return oci.Credentials(docker_config=path)


@contextmanager
def answering_in(tokens: TokenServer, name: str) -> Iterator[None]:
    """The token server sends its tokens under `name` for a while."""
    tokens.answer_field = name
    try:
        yield
    finally:
        tokens.answer_field = "token"


def _cli(*args: str, password: str | None = None) -> tuple[int, str]:
    env = {"QUANTSHIP_REGISTRY_PASSWORD": password} if password is not None else {}
    result = CliRunner().invoke(main, list(args), env=env)
    return result.exit_code, result.output


@pytest.mark.parametrize("answer_field", ["token", "access_token"])
def test_a_public_repository_pulls_without_credentials_on_an_anonymous_token(
    token_registry: tuple[Registry, TokenServer],
    good_artifact: artifact.Artifact,
    tmp_path: Path,
    answer_field: str,
) -> None:
    registry, tokens = token_registry
    uri = registry.uri(f"{PUBLIC}digits:v1")
    oci.push(good_artifact.root, uri, credentials=ALICE)
    with answering_in(tokens, answer_field):
        code, output = _cli("pull", uri, "-o", str(tmp_path / "a"))
    assert code == 0, output
    assert artifact.load_artifact(tmp_path / "a").digest == good_artifact.digest
    assert tokens.authorizations[-1] is None  # asked anonymously


def test_a_private_repository_wants_credentials_when_the_anonymous_token_grants_nothing(
    token_registry: tuple[Registry, TokenServer], good_artifact: artifact.Artifact, tmp_path: Path
) -> None:
    registry, _ = token_registry
    uri = registry.uri("private/digits:v1")
    oci.push(good_artifact.root, uri, credentials=ALICE)
    with pytest.raises(oci.OciError, match=r"tag or digest: the registry wants credentials \(401\)"):
        oci.pull(uri, tmp_path / "a")
    with pytest.raises(oci.OciError, match="needs credentials"):
        oci.push(good_artifact.root, uri)
    assert list(tmp_path.iterdir()) == []


def test_push_and_pull_with_credentials_send_the_password_to_the_realm_only(
    token_registry: tuple[Registry, TokenServer], good_artifact: artifact.Artifact, tmp_path: Path
) -> None:
    """Everything the client sent the registry passes through a relay that keeps it: tokens, and
    never the password in any form."""
    registry, tokens = token_registry
    basic = "Basic " + base64.b64encode(f"{TOKEN_USER}:{TOKEN_PASSWORD}".encode()).decode()
    asked_before = len(tokens.authorizations)
    with relaying(registry.address) as relay:
        uri = relay.uri("models/digits:v1")
        code, output = _cli(
            "push", str(good_artifact.root), uri, "--username", TOKEN_USER, password=TOKEN_PASSWORD
        )
        assert code == 0, output
        digest = output.strip().rpartition("@")[2]
        pulled = oci.pull(relay.uri(f"models/digits@{digest}"), tmp_path / "a", credentials=ALICE)
        sent = bytes(relay.sent)
    assert pulled.digest == good_artifact.digest
    assert b"Authorization: Bearer " in sent
    for secret in (TOKEN_PASSWORD, basic.split()[1], "Basic "):
        assert secret.encode() not in sent
    assert tokens.authorizations[asked_before:] == [basic, basic]  # one token for the push, one for the pull


def test_an_identity_token_is_exchanged_at_the_realm_and_only_the_access_token_reaches_the_registry(
    token_registry: tuple[Registry, TokenServer], good_artifact: artifact.Artifact, tmp_path: Path
) -> None:
    registry, tokens = token_registry
    asked_before = len(tokens.authorizations)
    with relaying(registry.address) as relay:
        config = identity_config(tmp_path / "config.json", relay.address)
        digest = oci.push(good_artifact.root, relay.uri("acr/digits:v1"), credentials=config)
        pulled = oci.pull(relay.uri(f"acr/digits@{digest}"), tmp_path / "a", credentials=config)
        sent = bytes(relay.sent)
    assert pulled.digest == good_artifact.digest
    assert b"Authorization: Bearer " in sent
    for secret in (IDENTITY_TOKEN, ACR_USER, "Basic "):
        assert secret.encode() not in sent
    assert tokens.authorizations[asked_before:] == [None, None]  # no basic auth to the realm either
    assert tokens.forms[-2:] == [
        {
            "grant_type": ["refresh_token"],
            "refresh_token": [IDENTITY_TOKEN],
            "client_id": [oci_auth.CLIENT_ID],
            "service": [SERVICE],
            "scope": [f"repository:acr/digits:{actions}"],
        }
        for actions in (oci_auth.PUSH, oci_auth.PULL)
    ]


def test_a_refused_identity_token_is_named_in_one_line(
    token_registry: tuple[Registry, TokenServer], good_artifact: artifact.Artifact, tmp_path: Path
) -> None:
    registry, tokens = token_registry
    uri = registry.uri("acr/digits:v1")
    oci.push(good_artifact.root, uri, credentials=ALICE)
    config = identity_config(tmp_path / "config.json", registry.address, "revoked")
    refused = (
        f"the token realm {tokens.address} of {registry.address} refused the Docker config's identity token"
    )
    for command in (["pull", uri, "-o", str(tmp_path / "a")], ["push", str(good_artifact.root), uri]):
        code, output = _cli(*command, "--docker-config", str(config.docker_config))
        assert code == 3 and output.count("\n") == 1, output
        assert refused in output
    assert not (tmp_path / "a").exists()


def test_a_wrong_password_is_named_as_refused_by_the_realm(
    token_registry: tuple[Registry, TokenServer], good_artifact: artifact.Artifact, tmp_path: Path
) -> None:
    registry, tokens = token_registry
    uri = registry.uri("models/digits:v1")
    oci.push(good_artifact.root, uri, credentials=ALICE)
    refused = f"the token realm {tokens.address} of {registry.address} refused the credentials of 'alice'"
    for command in (["pull", uri, "-o", str(tmp_path / "a")], ["push", str(good_artifact.root), uri]):
        code, output = _cli(*command, "--username", TOKEN_USER, password="wrong")
        assert code == 3 and output.count("\n") == 1, output
        assert refused in output
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    ("header", "message"),
    [
        (
            'Negotiate realm="corp"',
            "asks for 'negotiate' authentication: quantship speaks basic auth and bearer",
        ),
        ('Bearer realm="ftp://{address}/token"', "names the token realm 'ftp://.*': refused"),
        ('Bearer service="registry"', "names the token realm '': refused"),
    ],
)
def test_a_challenge_quantship_cannot_answer_is_named_and_nothing_is_sent(
    good_artifact: artifact.Artifact, tmp_path: Path, header: str, message: str
) -> None:
    with serving() as registry:
        registry.answers["/v2/"] = challenge(header.format(address=registry.address))
        for attempt in (
            lambda: oci.pull(registry.uri("models/digits"), tmp_path / "a", credentials=ALICE),
            lambda: oci.push(good_artifact.root, registry.uri("models/digits"), credentials=ALICE),
        ):
            with pytest.raises(oci.OciError, match=message):
                attempt()
    assert registry.requested == ["/v2/", "/v2/"] and not any(registry.authorized)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("identity", [False, True], ids=["password", "identity-token"])
def test_a_realm_that_redirects_the_token_request_is_refused_before_the_credentials_follow(
    tmp_path: Path, identity: bool
) -> None:
    stop = threading.Event()
    with serving() as registry, serving() as elsewhere:
        registry.answers["/v2/"] = challenge(f'Bearer realm="http://{registry.address}/token"')
        registry.answers["/token"] = redirect(f"http://{elsewhere.address}/token", stop=stop)
        elsewhere.answers["/token"] = body(b'{"token": "t"}', "application/json")
        credentials = identity_config(tmp_path / "config.json", registry.address) if identity else ALICE
        try:
            with pytest.raises(oci.OciError, match="redirected the token request: refused"):
                oci.pull(registry.uri("models/digits"), tmp_path / "a", credentials=credentials)
        finally:
            stop.set()
    assert elsewhere.requested == []


@pytest.mark.parametrize("identity", [False, True], ids=["password", "identity-token"])
@pytest.mark.parametrize("elsewhere_on", ["127.0.0.2", "127.0.0.1"], ids=["another-host", "another-port"])
def test_a_later_challenge_naming_another_realm_is_refused_and_nothing_goes_there(
    good_artifact: artifact.Artifact, tmp_path: Path, identity: bool, elsewhere_on: str
) -> None:
    """The first challenge's realm is asked for a token; every later request (a push's first
    blob, a pull's manifest) is answered with a 401 naming a realm elsewhere, which would hand out
    a token too. The credentials went to the first realm, and go nowhere else half-way."""
    with serving() as registry, serving(elsewhere_on) as elsewhere:
        registry.answers["/v2/"] = challenge(f'Bearer realm="http://{registry.address}/token"')
        registry.answers["/token"] = body(b'{"token": "first"}', "application/json")
        registry.otherwise = challenge(f'Bearer realm="http://{elsewhere.address}/token",service="s"')
        elsewhere.answers["/token"] = body(b'{"token": "elsewhere"}', "application/json")
        config = identity_config(tmp_path / "config.json", registry.address)
        login = ["--docker-config", str(config.docker_config)] if identity else ["--username", TOKEN_USER]
        uri = registry.uri("models/digits")
        refused = (
            f"{registry.address} named the token realm http://{registry.address}, "
            f"then http://{elsewhere.address}: refused"
        )
        for command in (["push", str(good_artifact.root), uri], ["pull", uri, "-o", str(tmp_path / "a")]):
            with left_to_gc() as left:
                code, output = _cli(*command, *login, password=TOKEN_PASSWORD)
            assert elsewhere.requested == [], command[0]
            assert code == 3 and output.count("\n") == 1, output
            assert refused in output
            assert left == [], f"{command[0]} left its connections to the garbage collector"
    # the first realm was asked once for the push, once for the pull
    assert sum(path.partition("?")[0] == "/token" for path in registry.requested) == 2
    assert not (tmp_path / "a").exists()


def test_a_realm_is_asked_over_https_unless_the_registry_itself_is_plain_http() -> None:
    asked = oci_auth.Challenge("bearer", {"realm": "http://auth.example/token"})
    with pytest.raises(oci.OciError, match="over https only"):
        oci_auth._realm(
            asked, oci.Reference.parse("oci://registry.example/models/digits:v1"), plain_http=False
        )
    assert oci_auth._realm(
        asked, oci.Reference.parse("oci://127.0.0.1:5000/models/digits:v1"), plain_http=True
    )
