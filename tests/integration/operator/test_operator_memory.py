"""What the operator keeps in memory per model goes with the model. Real kopf runtime on kmock."""

from __future__ import annotations

import pytest
from operator_harness import Kubectl, ScriptedMetrics, StartOperator, eventually, spec_of
from test_operator_lifecycle import FIRST, V1, serving

from quantship.operator import kube


@pytest.fixture
def kubes(monkeypatch: pytest.MonkeyPatch) -> list[kube.Kube]:
    """Every Kube the operator makes (ours, not a client library's: recorded, not changed)."""
    made: list[kube.Kube] = []
    init = kube.Kube.__init__

    def recording(self: kube.Kube, *args: object, **kwargs: object) -> None:
        init(self, *args, **kwargs)  # type: ignore[arg-type]
        made.append(self)

    monkeypatch.setattr(kube.Kube, "__init__", recording)
    return made


async def test_a_deleted_models_deployments_leave_the_last_seen_memory(
    kubectl: Kubectl, start_operator: StartOperator, kubes: list[kube.Kube]
) -> None:
    """Only a retired revision's entry was dropped: a deleted model's stayed for the operator's life."""
    await start_operator(ScriptedMetrics(), resync_interval=0.5)
    await serving(kubectl, spec_of(V1))
    [ours] = kubes
    assert any(name == f"digits-{FIRST}" for _, name in ours.last_seen)

    await kubectl.delete()
    await eventually(lambda: kubectl.get() is None, what="the model gone")
    await eventually(lambda: not ours.last_seen or None, what="its Deployments forgotten")
