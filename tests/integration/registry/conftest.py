"""Registries for the OCI tests: one open, one behind basic auth, one behind token auth, each
started once per session; and a hostile copy of an artifact the open one serves, for each test
that bends it."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from hostile_registry import Served, serving_a_copy
from registry_harness import Registry, TokenServer, start, token_server

from quantship import artifact, oci


@pytest.fixture(scope="session")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Registry]:
    started = start(tmp_path_factory.mktemp("registry"), auth=False)
    yield started
    started.process.terminate()
    started.process.wait(10)


@pytest.fixture(scope="session")
def auth_registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Registry]:
    started = start(tmp_path_factory.mktemp("auth-registry"), auth=True)
    yield started
    started.process.terminate()
    started.process.wait(10)


@pytest.fixture(scope="session")
def token_registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Registry, TokenServer]]:
    """A registry behind token auth, with the token server it trusts."""
    with token_server() as tokens:
        started = start(tmp_path_factory.mktemp("token-registry"), auth=False, tokens=tokens)
        yield started, tokens
        started.process.terminate()
        started.process.wait(10)


@pytest.fixture(scope="session")
def pushed(registry: Registry, good_artifact: artifact.Artifact) -> str:
    """`good_artifact`, pushed to the real registry: what `served` copies."""
    uri = registry.uri("quantship/hostile-source:v1")
    oci.push(good_artifact.root, uri)
    return uri


@pytest.fixture
def served(pushed: str) -> Iterator[Served]:
    """A hostile registry serving a copy of `pushed`, to bend."""
    with serving_a_copy(pushed) as copy:
        yield copy
