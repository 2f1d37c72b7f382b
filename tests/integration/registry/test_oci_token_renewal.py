"""Bearer tokens renewed in the middle of a push or pull, against the real docker-registry behind
token auth: a token that expired (the registry's clock decides) is renewed once and the request
sent again; a second refusal is final, in one line."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import requests
from click.testing import CliRunner
from registry_harness import SERVICE, TOKEN_PASSWORD, TOKEN_USER, Registry, TokenServer

from quantship import artifact, oci, oci_auth
from quantship.cli import main

ALICE = oci.Credentials(TOKEN_USER, TOKEN_PASSWORD)


@contextmanager
def spoiling(tokens: TokenServer, *, expired: int = 0, pull_only: int = 0) -> Iterator[None]:
    """The token server's next tokens expired or narrowed to pull, as many as named; the rest of
    the session gets good ones again."""
    tokens.expired, tokens.pull_only = expired, pull_only
    try:
        yield
    finally:
        tokens.expired = tokens.pull_only = 0


def _cli(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(
        main, [*args, "--username", TOKEN_USER], env={"QUANTSHIP_REGISTRY_PASSWORD": TOKEN_PASSWORD}
    )
    return result.exit_code, result.output


def _bearer(
    registry: Registry, tokens: TokenServer, path: str, actions: str, **clock: object
) -> oci_auth.Bearer:
    return oci_auth.Bearer(
        oci_auth.Challenge("bearer", {"realm": tokens.realm, "service": SERVICE}),
        oci.Reference.parse(registry.uri(path)),
        actions,
        oci_auth.Login(TOKEN_USER, TOKEN_PASSWORD),
        plain_http=True,
        timeout=10,
        speed_limit=oci.SpeedLimit(),
        **clock,  # type: ignore[arg-type]
    )


def test_a_push_and_a_pull_renew_a_token_the_registry_refuses_as_expired(
    token_registry: tuple[Registry, TokenServer], good_artifact: artifact.Artifact, tmp_path: Path
) -> None:
    registry, tokens = token_registry
    before = len(tokens.authorizations)
    with spoiling(tokens, expired=1):
        digest = oci.push(good_artifact.root, registry.uri("renewed/digits:v1"), credentials=ALICE)
    assert len(tokens.authorizations) == before + 2  # the expired token, and its renewal
    with spoiling(tokens, expired=1):
        pulled = oci.pull(registry.uri(f"renewed/digits@{digest}"), tmp_path / "a", credentials=ALICE)
    assert pulled.digest == good_artifact.digest
    assert len(tokens.authorizations) == before + 4


def test_a_push_refused_half_way_renews_its_token_and_sends_the_manifest_again(
    token_registry: tuple[Registry, TokenServer], good_artifact: artifact.Artifact
) -> None:
    """The blobs are there already: the reads pass on a pull-only token, and the manifest's PUT,
    a request with a body, is refused, then sent again with the renewed token."""
    registry, tokens = token_registry
    first = oci.push(good_artifact.root, registry.uri("halfway/digits:v1"), credentials=ALICE)
    before = len(tokens.authorizations)
    with spoiling(tokens, pull_only=1):
        again = oci.push(good_artifact.root, registry.uri("halfway/digits:v2"), credentials=ALICE)
    assert again == first
    assert len(tokens.authorizations) == before + 2


def test_a_token_refused_right_after_its_renewal_fails_in_one_line(
    token_registry: tuple[Registry, TokenServer], good_artifact: artifact.Artifact, tmp_path: Path
) -> None:
    registry, tokens = token_registry
    uri = registry.uri("refused/digits:v1")
    oci.push(good_artifact.root, uri, credentials=ALICE)
    for command, refused in (
        (["push", str(good_artifact.root), uri], "the registry refused the token its realm had just renewed"),
        (
            ["pull", uri, "-o", str(tmp_path / "a")],
            "the registry refused the token its realm issued for the credentials of 'alice'",
        ),
    ):
        before = len(tokens.authorizations)
        with spoiling(tokens, expired=2):
            code, output = _cli(*command)
        assert code == 3 and output.count("\n") == 1, output
        assert refused in output
        assert len(tokens.authorizations) == before + 2  # one renewal, no loop
    assert list(tmp_path.iterdir()) == []


def test_a_token_is_renewed_before_a_request_once_its_expires_in_has_passed(
    token_registry: tuple[Registry, TokenServer],
) -> None:
    """The token server says `expires_in: 300`."""
    registry, tokens = token_registry
    now = [0.0]
    bearer = _bearer(registry, tokens, "clock/digits:v1", oci_auth.PULL, clock=lambda: now[0])
    before = len(tokens.authorizations)
    first = bearer.current()
    now[0] = 299.0
    assert bearer.current() == first
    assert len(tokens.authorizations) == before + 1
    now[0] = 300.0
    bearer.current()
    assert len(tokens.authorizations) == before + 2


def test_a_refused_upload_whose_body_was_a_stream_is_not_sent_again(
    token_registry: tuple[Registry, TokenServer],
) -> None:
    registry, tokens = token_registry
    origin = f"http://{registry.address}"
    bearer = _bearer(registry, tokens, "stream/digits:v1", oci_auth.PUSH)
    before = len(tokens.authorizations)
    with (
        spoiling(tokens, expired=1),
        oci_auth.BearerTo.carrying(requests.Session(), 10, oci.SpeedLimit(), origin, bearer) as session,
        pytest.raises(oci_auth.Refused, match="in the middle of an upload it cannot resend"),
    ):
        session.post(f"{origin}/v2/stream/digits/blobs/uploads/", data=iter([b"streamed"]))
    assert len(tokens.authorizations) == before + 1  # the expired token, and no renewal
