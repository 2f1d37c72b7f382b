"""/feedback for an answer the shadow lane never saw runs the reference while its client waits. That
run must not sit behind the SLI lanes on their thread, which runs SCHED_IDLE so that a saturated core
starves it on purpose (background.lower_priority): it gets a thread of its own at normal priority."""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator

import httpx
import numpy as np
import pytest
import tritonclient.http as triton
from server_harness import MODEL, LocalServer, settings_for

from quantship import artifact
from quantship.server import QualitySettings


@pytest.fixture
def unshadowed_server(good_artifact: artifact.Artifact) -> Iterator[LocalServer]:
    quality = QualitySettings(shadow_rate=0.0, clip_sample_rate=0.0)
    server = LocalServer(settings_for(good_artifact, "unshadowed", quality=quality)).start()
    yield server
    server.stop()


def _feedback_threads() -> set[threading.Thread]:
    return {thread for thread in threading.enumerate() if thread.name.startswith("quantship-feedback")}


def test_the_reference_for_feedback_runs_at_normal_priority_off_the_sli_thread(
    unshadowed_server: LocalServer, traffic: tuple[np.ndarray, np.ndarray]
) -> None:
    images, labels = traffic
    client = triton.InferenceServerClient(unshadowed_server.address)
    try:
        tensor = triton.InferInput("X", [2, images.shape[1]], "FP32")
        tensor.set_data_from_numpy(images[:2].astype(np.float32))
        client.infer(MODEL, [tensor], request_id="unshadowed-1")
    finally:
        client.close()

    before = _feedback_threads()
    reply = httpx.post(
        f"{unshadowed_server.url}/v2/models/{MODEL}/feedback",
        json={"id": "unshadowed-1", "label": [int(labels[0]), int(labels[1])]},
    )
    assert reply.status_code == 200, reply.text
    assert reply.json()["reference_correct"] is not None  # the reference ran for this feedback

    ran_it = _feedback_threads() - before  # started on first use: this server's, not another test's
    assert len(ran_it) == 1, [thread.name for thread in threading.enumerate()]
    (thread,) = ran_it
    assert thread.native_id is not None
    assert os.sched_getscheduler(thread.native_id) == os.SCHED_OTHER
    assert os.getpriority(os.PRIO_PROCESS, thread.native_id) == 0  # Linux: a thread's own nice value
