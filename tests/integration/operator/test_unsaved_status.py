"""A tick that acted but whose status write the API server refused: its decision is saved as it was
taken, by the next ticks, which decide nothing meanwhile, and each retry waits longer (the API
server's Retry-After at least). Decided again, a rollback already carried out was followed by a
judgement that passed and the promotion of the revision just rejected, with no trace of the
rollback; and an API server throttling the status writes got a judgement and the step's Deployment
patches again at every tick. Real kopf runtime against kmock."""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import kmock
from kmock_cluster import Cluster
from operator_harness import Kubectl, ScriptedMetrics, StartOperator, eventually, spec_of
from test_operator_lifecycle import FIRST, SECOND, V1, V2, events, posted, serving
from test_retirement import ours

from quantship.rollout import GaugeMeasurement

UNAVAILABLE = kmock.KubernetesError(status=503, reason="ServiceUnavailable", message="etcd leader changed")
THROTTLED = kmock.KubernetesError(status=429, reason="TooManyRequests", message="too many requests")
STEPS = {"steps": [25, 50, 100], "stepInterval": "1s"}


@dataclass
class CountedMetrics(ScriptedMetrics):
    """ScriptedMetrics that count the judgements made with them."""

    judgements: int = 0

    async def fallback_ops(self, labels: Mapping[str, str]) -> GaugeMeasurement:
        self.judgements += 1  # `measure` asks once per judgement
        return await super().fallback_ops(labels)


def status_written(request: kmock.Request, **fields: Any) -> bool:
    """The operator's status write, carrying these `fields` (camelCase keys)."""
    data = request.data if isinstance(request.data, dict) else {}
    status = data.get("status") or {}
    return (
        ours(request)
        and request.method == "PATCH"
        and request.subresource == "status"
        and all(status.get(key) == value for key, value in fields.items())
    )


@dataclass
class FirstThree:
    """Picks the first three requests `which` picks, for `Cluster.refuse`, and lets the next
    through: when each came, and where the refused ones sit in the API's answers."""

    cluster: Cluster = field(repr=False)
    which: Callable[[kmock.Request], bool]
    then: Callable[[], None] = lambda: None
    """Called at the first refusal."""
    at: list[float] = field(default_factory=list)
    began: int = 0
    ended: int = 0

    def __call__(self, request: kmock.Request) -> bool:
        if not self.which(request):
            return False
        if len(self.at) == 3:
            self.ended = self.ended or len(self.cluster.answers)
            return False
        if not self.at:
            self.began = len(self.cluster.answers)
            self.then()
        self.at.append(time.monotonic())
        return True


def status(kubectl: Kubectl) -> dict[str, Any]:
    return (kubectl.get() or {}).get("status") or {}


async def settled(kubectl: Kubectl) -> dict[str, Any]:
    """The status once the rollout ended, however it ended."""
    ended: dict[str, Any] = await eventually(
        lambda: status(kubectl).get("phase") in ("Promoted", "RolledBack", "Failed") and status(kubectl),
        timeout=30,
        what="the rollout settled",
    )
    return ended


async def at_step_one(
    kubectl: Kubectl, start_operator: StartOperator, metrics: ScriptedMetrics, **spec: Any
) -> None:
    await start_operator(metrics)  # ticks every 0.2 s, retry_backoff 0.5 s
    await serving(kubectl, spec_of(V1, rollout=STEPS, **spec))
    await kubectl.patch({"spec": {"artifact": {"uri": V2}}})
    await eventually(lambda: kubectl.deployment(f"digits-{SECOND}"), what="the canary Deployment")
    await kubectl.make_ready(f"digits-{SECOND}", 1)
    await eventually(lambda: status(kubectl).get("step") == 0, what="step 1")


async def test_a_rollback_whose_status_write_was_refused_is_saved_and_announced_not_judged_again(
    cluster: Cluster, kubectl: Kubectl, start_operator: StartOperator
) -> None:
    metrics = CountedMetrics()
    # the canary's metrics recover as the rollback is carried out (a blip, or the traffic it lost):
    # judged again, it would pass
    rollback_write = FirstThree(cluster, lambda r: status_written(r, phase="RolledBack"), metrics.bad.clear)
    cluster.refuse(rollback_write, UNAVAILABLE)
    await at_step_one(kubectl, start_operator, metrics)

    metrics.bad.add(SECOND)  # the canary burns its clip budget: the judgement rolls it back
    await eventually(lambda: rollback_write.at, what="the rollback's status write refused")
    judged = metrics.judgements
    ended = await settled(kubectl)

    assert ended["phase"] == "RolledBack", ended["message"]
    assert len(rollback_write.at) == 3, "saved once the API server took it"
    assert ended["rejectedRevision"] == SECOND and ended["stableRevision"] == FIRST
    actions = [entry["action"] for entry in ended["history"]]
    assert actions[-2:] == ["SetWeight", "RollBack"]
    assert metrics.judgements == judged, "nothing judged while the rollback waited for its write"
    (event,) = await posted(kubectl, "RollBack")
    assert event["type"] == "Warning" and event["message"].startswith("clip_rate burn rate above 1")
    assert events(kubectl, "Promote") == []
    await eventually(
        lambda: kubectl.deployment(f"digits-{SECOND}") is None, what="the rejected canary removed"
    )


async def test_a_failed_judgement_whose_status_write_was_refused_still_counts(
    cluster: Cluster, kubectl: Kubectl, start_operator: StartOperator
) -> None:
    """failureLimit 2: the first failure is saved, though the metrics pass the judgements after it."""
    metrics = CountedMetrics()
    judged_write = FirstThree(cluster, lambda r: status_written(r, failures=1), metrics.bad.clear)
    cluster.refuse(judged_write, UNAVAILABLE)
    analysis = {"shortWindow": "1m", "longWindow": "5m", "minSamples": 10, "failureLimit": 2}
    await at_step_one(kubectl, start_operator, metrics, analysis=analysis)

    metrics.bad.add(SECOND)
    await eventually(lambda: judged_write.at, what="the failed judgement's status write refused")
    ended = await settled(kubectl)

    assert len(judged_write.at) == 3, "saved once the API server took it"
    assert ended["phase"] == "Promoted"
    judgement = next(entry for entry in ended["history"] if entry["action"] == "Judged")
    assert judgement["reason"].startswith("failed judgement 1 of 2 at step 1 of 3")
    (event,) = await posted(kubectl, "Judged")
    assert event["message"] == judgement["reason"]


async def test_a_throttled_status_write_is_retried_alone_and_later_each_time(
    cluster: Cluster, kubectl: Kubectl, start_operator: StartOperator
) -> None:
    """The step to 50% is judged and routed once, and only its status write is sent again: after
    the 429's Retry-After (1 s, twice retry_backoff), then after twice that."""
    metrics = CountedMetrics()
    step_write = FirstThree(cluster, lambda r: status_written(r, step=1))
    cluster.refuse(step_write, THROTTLED, headers={"Retry-After": "1"})
    await at_step_one(kubectl, start_operator, metrics)

    ended = await settled(kubectl)

    assert ended["phase"] == "Promoted"
    assert len(step_write.at) == 3, "saved once the API server took it"
    assert metrics.judgements == 3, "one judgement a step, none again at a retry"
    throttled = [
        request for request, _ in cluster.answers[step_write.began : step_write.ended] if ours(request)
    ]
    patched = [request.url.path.rsplit("/", 2)[-2:] for request in throttled if request.method == "PATCH"]
    assert patched == [["digits", "status"]] * 3, "no Deployment scaled again meanwhile"
    assert step_write.at[1] - step_write.at[0] >= 0.95, "the API server's Retry-After, not retry_backoff"
    assert step_write.at[2] - step_write.at[1] >= 1.9, "twice that after a second failure in a row"
    actions = [entry["action"] for entry in ended["history"]]
    assert actions[-5:] == ["StartCanary", "SetWeight", "SetWeight", "SetWeight", "Promote"]
