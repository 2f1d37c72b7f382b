"""Registries for the OCI tests: one open, one behind basic auth, one behind token auth, each
started once per session."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from registry_harness import Registry, TokenServer, start, token_server


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
