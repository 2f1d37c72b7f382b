"""Fixtures of the server's integration tests: a shared in-process server and real traffic."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from server_harness import LocalServer, settings_for

from quantship import artifact, zoo
from quantship.local.prometheus import free_port
from quantship.server import QualitySettings


@pytest.fixture(scope="session")
def local_server(good_artifact: artifact.Artifact) -> Iterator[LocalServer]:
    """One in-process server of the good artifact, every request shadowed and clip-checked, 1 MiB bodies,
    REST and gRPC."""
    server = LocalServer(
        settings_for(
            good_artifact,
            "good",
            max_body_bytes=1 << 20,
            grpc_port=free_port(),
            quality=QualitySettings(shadow_rate=1.0, clip_sample_rate=1.0, sli_cpu_budget=4.0),
        )
    ).start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def traffic(sample: zoo.SampleModel) -> tuple[np.ndarray, np.ndarray]:
    """Production-like requests with their true labels (the zoo's held-out requests.npz)."""
    data = np.load(sample.requests)
    return data[zoo.INPUT_NAME], data[zoo.LABELS_KEY]


@pytest.fixture
def tmpdir_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A private temporary directory for the processes this test starts."""
    folder = tmp_path / "tmp"
    folder.mkdir()
    monkeypatch.setenv("TMPDIR", str(folder))
    return folder
