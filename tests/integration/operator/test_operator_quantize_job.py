"""spec.quantize on kmock with the real kopf runtime: the operator creates the quantization Job;
the tests play the Job controller and the kubelet (a pod with the container's termination
message, the Job's status), as the API server would hold them. A passing gate starts the canary of
the produced artifact through the rollout path a change of spec.artifact.uri takes; a failing one
is phase GateFailed with the report's numbers, and no canary. The Job's own command line runs
for real in tests/unit/operator/test_quantize_job_command.py."""

from __future__ import annotations

import json
from typing import Any

import apiserver_rules as rules
import kmock
import kopf
import pytest
from kmock_cluster import Cluster
from kubernetes.aio import client
from operator_harness import (
    NAMESPACE,
    TESTS_USER_AGENT,
    Kubectl,
    ScriptedMetrics,
    StartOperator,
    eventually,
    revision,
    spec_of,
)
from test_operator_gateway_and_rbac import permission_of

from quantship.choices import DOMAIN_OF_METRIC
from quantship.operator import crd, crd_quantize, crd_uris, handlers, permissions, quantization
from quantship.operator.kube import MERGE_PATCH
from quantship.operator.quantize_job import Verdict
from quantship.operator.spec import InvalidSpec
from quantship.quantize.gate_metrics import METRICS, Metric

V1 = "https://models.example.com/digits-v1.tar.gz"
FIRST = revision(V1)
TARGET = "oci://registry.example.com/ml/digits:int8"
PRODUCED = "oci://registry.example.com/ml/digits@sha256:" + "ab" * 32
LAST_APPLIED = "kubectl.kubernetes.io/last-applied-configuration"
"""`kubectl apply`'s copy of what it applied (client-side)."""
INPUT_URI = crd_uris.INPUT_URI.message
TARGET_URI = crd_uris.TARGET_URI.message
"""What the API server answers a quantize input, or target, that the Job could not use."""
QUANTIZE = {
    "model": "https://models.example.com/digits-fp32.onnx",
    "calibration": "pvc://datasets/digits/calibration.npz",
    "evaluation": "pvc://datasets/digits/evaluation.npz",
    "options": {"mode": "static", "perChannel": True, "metric": "top1_agreement", "threshold": 0.99},
    "target": {"uri": TARGET, "pullSecret": "registry"},
}
TOKEN_MODEL_OPTIONS = {
    "task": "classification",
    "output": "logits",
    "maskInput": "attention_mask",
    "excludeNodes": ["/lm_head/MatMul", "/h.0/attn/MatMul"],
    "metric": "top1_agreement",
    "threshold": 0.9,
    "activationType": "uint8",
    "weightType": "int8",
    "calibrationMethod": "entropy",
    "numBins": 256,
    "batchSize": 2,
    "preProcess": False,
    "matmulConstBOnly": True,
    "reduceRange": False,
    "strategy": "fallback",
    "keepGoing": True,
    "maxTrials": 4,
}
"""A causal LM's spec.quantize.options: its logits gated per position without the padding, its head
kept in float, calibrated as its activations need."""


def status_of(kubectl: Kubectl) -> dict[str, Any]:
    return dict((kubectl.get() or {}).get("status") or {})


async def phase_is(kubectl: Kubectl, phase: str) -> dict[str, Any]:
    found: dict[str, Any] = await eventually(
        lambda: status_of(kubectl) if status_of(kubectl).get("phase") == phase else None,
        what=f"phase {phase}",
    )
    return found


async def serving(kubectl: Kubectl) -> None:
    await kubectl.apply(spec_of(V1))
    await eventually(lambda: kubectl.deployment(f"digits-{FIRST}"), what="the stable Deployment")
    await kubectl.make_ready(f"digits-{FIRST}", 2)
    await phase_is(kubectl, "Promoted")


def job_of(kubectl: Kubectl, name: str) -> dict[str, Any] | None:
    return kubectl.object(("batch/v1/jobs", NAMESPACE, name))


def events(kubectl: Kubectl, reason: str) -> list[dict[str, Any]]:
    return [event for event in kubectl.events() if event.get("reason") == reason]


async def finish(
    api: client.ApiClient, job: str, *, exit_code: int, message: str, reason: str | None = None
) -> None:
    """The kubelet and the Job controller: the pod ran and terminated with this message (and this
    container reason, e.g. OOMKilled)."""
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": f"{job}-x7k2p", "labels": {"job-name": job}},
        "spec": {"containers": [{"name": quantization.CONTAINER, "image": "quantship"}]},
    }
    core = client.CoreV1Api(api)
    await core.create_namespaced_pod(NAMESPACE, pod)
    terminated = {
        "exitCode": exit_code,
        "reason": reason or ("Completed" if exit_code == 0 else "Error"),
        "message": message,
    }
    await core.patch_namespaced_pod_status(
        pod["metadata"]["name"],
        NAMESPACE,
        {
            "status": {
                "containerStatuses": [
                    {
                        "name": quantization.CONTAINER,
                        "image": "quantship",
                        "imageID": "quantship@sha256:" + "cd" * 32,
                        "ready": False,
                        "restartCount": 0,
                        "state": {"terminated": terminated},
                    }
                ]
            }
        },
        _content_type=MERGE_PATCH,
    )
    done = "Complete" if exit_code == 0 else "Failed"
    counts = {"succeeded": 1} if exit_code == 0 else {"failed": 1}
    await client.BatchV1Api(api).patch_namespaced_job_status(
        job,
        NAMESPACE,
        {"status": {**counts, "conditions": [{"type": done, "status": "True"}]}},
        _content_type=MERGE_PATCH,
    )


async def quantizing(kubectl: Kubectl) -> dict[str, Any]:
    """Ask for spec.quantize on a serving model; the Job the operator creates."""
    await kubectl.patch({"spec": {"quantize": QUANTIZE}})
    expected = quantization.QuantizeSpec.from_spec({"quantize": QUANTIZE})
    assert expected is not None
    name = quantization.job_name("digits", expected.hash)
    job: dict[str, Any] = await eventually(lambda: job_of(kubectl, name), what="the quantization Job")
    return job


async def test_a_quantize_section_runs_a_job_whose_passing_artifact_becomes_the_canary_and_is_promoted(
    cluster: Cluster, kubectl: Kubectl, api: client.ApiClient, start_operator: StartOperator
) -> None:
    operator = await start_operator(ScriptedMetrics(), namespaces=(NAMESPACE,))
    await serving(kubectl)
    job = await quantizing(kubectl)
    name = job["metadata"]["name"]
    await eventually(lambda: status_of(kubectl).get("quantize"), what="status.quantize")
    # a restart while the Job runs: the status says which Job to wait for
    await operator.shutdown()
    operator = await start_operator(ScriptedMetrics(), namespaces=(NAMESPACE,))

    # the Job: the server image running quantize-job with the section's flags, never retried,
    # owned by the model, its verdict in the termination message, the push secret mounted
    owner = kubectl.get()
    assert owner is not None
    assert job["metadata"]["ownerReferences"][0]["uid"] == owner["metadata"]["uid"]
    assert job["spec"]["backoffLimit"] == 0
    pod = job["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert container["image"] == owner["spec"].get("image", "ghcr.io/quantship/quantship:0.1.0")
    command = container["command"]
    assert command[:2] == ["quantship", "quantize-job"]
    assert command[command.index("--target") + 1] == TARGET
    assert command[command.index("--") :] == [
        "--",
        "--mode", "static", "--metric", "top1_agreement", "--threshold", "0.99", "--per-channel",
    ]  # fmt: skip
    assert command[command.index("--registry-config") + 1] == "/etc/quantship/registry/config.json"
    assert container["terminationMessagePath"] == command[command.index("--result-file") + 1]
    claims = [v["persistentVolumeClaim"] for v in pod["volumes"] if "persistentVolumeClaim" in v]
    assert claims == [{"claimName": "datasets", "readOnly": True}]
    running = status_of(kubectl)["quantize"]
    assert (running["job"], running["state"]) == (name, "Running")
    assert status_of(kubectl)["phase"] == "Promoted", "the stable serves on while the Job runs"
    assert not any(
        key[0].plural == "deployments" and key[2] != f"digits-{FIRST}" for key in kubectl.cluster.objects
    )
    assert events(kubectl, "QuantizeJobCreated")

    verdict = Verdict(passed=True, metric="top1_agreement", value=1.0, threshold=0.99, artifact=PRODUCED)
    await finish(api, name, exit_code=0, message=json.dumps(verdict.to_json()))

    progressing = await phase_is(kubectl, "Progressing")
    canary = progressing["canaryRevision"]
    assert canary and canary != FIRST
    assert progressing["quantizedArtifact"] == {
        "uri": PRODUCED,
        "job": name,
        "target": TARGET,
        "pullSecret": "registry",
    }
    assert progressing["quantize"]["state"] == "Passed"
    assert (progressing["quantize"]["metric"], progressing["quantize"]["value"]) == ("top1_agreement", 1.0)
    deployment = await eventually(
        lambda: kubectl.deployment(f"digits-{canary}"), what="the canary Deployment"
    )
    assert deployment["metadata"]["labels"]["track"] == "canary"
    fetch = deployment["spec"]["template"]["spec"]["initContainers"][0]["command"]
    assert fetch[2] == PRODUCED, "the canary serves the artifact the Job pushed, pinned by digest"
    assert "--registry-config" in fetch
    assert [
        e["message"] for e in await eventually(lambda: events(kubectl, "GatePassed"), what="GatePassed")
    ] == [f"accuracy gate passed: top1_agreement 1.0; threshold 0.99; {PRODUCED} becomes the canary"]

    assert [key[2] for key in kubectl.cluster.objects if key[0].plural == "jobs"] == [name], "one Job"
    await kubectl.make_ready(f"digits-{canary}", 1)
    promoted = await phase_is(kubectl, "Promoted")
    assert promoted["stableRevision"] == canary
    await operator.shutdown()

    # the calls, as the API recorded them: within the namespaced role, the Job's among them
    requests = [r for r in cluster if r.headers.get("User-Agent") != TESTS_USER_AGENT]
    used = {found for request in requests if (found := permission_of(request)) is not None}
    in_namespaces, _ = permissions.needed(clusterwide=False, peering=False)
    assert {scope for scope, _ in used} == {NAMESPACE}
    cancelling = {("batch", "jobs", "delete")}  # only a superseded Job's (tested below)
    assert permissions.QUANTIZE_JOB - cancelling <= {permission for _, permission in used} <= in_namespaces


async def test_a_failed_gate_is_phase_gatefailed_with_the_numbers_and_never_a_canary(
    kubectl: Kubectl, api: client.ApiClient, start_operator: StartOperator
) -> None:
    await start_operator(ScriptedMetrics())
    await serving(kubectl)
    job = await quantizing(kubectl)
    name = job["metadata"]["name"]

    # top1_accuracy's number is a relative loss: "top1_accuracy 0.02 against threshold 0.01" read
    # as an accuracy of 2%
    meaning = METRICS[Metric.TOP1_ACCURACY].meaning
    verdict = Verdict(False, "top1_accuracy", 0.02, 0.01, None, meaning=meaning, higher_is_better=False)
    await finish(api, name, exit_code=1, message=json.dumps(verdict.to_json()))

    failed = await phase_is(kubectl, "GateFailed")
    assert failed["quantize"] | {"state": "GateFailed", "metric": "top1_accuracy"} == failed["quantize"]
    assert (failed["quantize"]["value"], failed["quantize"]["threshold"]) == (0.02, 0.01)
    assert failed["quantize"]["rolloutPhase"] == "Promoted"
    assert failed["stableRevision"] == FIRST and failed.get("canaryRevision") is None
    assert "quantizedArtifact" not in failed
    (event,) = await eventually(lambda: events(kubectl, "GateFailed"), what="the GateFailed event")
    assert event["type"] == "Warning"
    assert (
        event["message"]
        == f"accuracy gate failed: top1_accuracy ({meaning}) 0.02; the gate allows at most 0.01; "
        "nothing rolled out"
    )
    deployments = [key[2] for key in kubectl.cluster.objects if key[0].plural == "deployments"]
    assert deployments == [f"digits-{FIRST}"], "no canary"

    # another section is another Job; the stable still serves, the phase is the rollout's again
    await kubectl.patch({"spec": {"quantize": {"options": {"threshold": 0.95}}}})
    await phase_is(kubectl, "Promoted")
    assert status_of(kubectl)["quantize"]["state"] == "Running"
    assert len([key for key in kubectl.cluster.objects if key[0].plural == "jobs"]) == 2


async def test_a_job_that_fails_without_a_verdict_is_an_error_and_the_stable_serves_on(
    kubectl: Kubectl, api: client.ApiClient, start_operator: StartOperator
) -> None:
    await start_operator(ScriptedMetrics())
    await serving(kubectl)
    name = (await quantizing(kubectl))["metadata"]["name"]
    await finish(
        api, name, exit_code=3, message='{"error": "https://models.example.com/digits-fp32.onnx: HTTP 404"}'
    )

    errored = await eventually(
        lambda: (
            status_of(kubectl) if status_of(kubectl).get("quantize", {}).get("state") == "Error" else None
        ),
        what="state Error",
    )
    assert (
        errored["quantize"]["message"]
        == f"Job {name} failed: https://models.example.com/digits-fp32.onnx: HTTP 404"
    )
    assert errored["phase"] == "Promoted" and errored.get("canaryRevision") is None
    assert await eventually(lambda: events(kubectl, "QuantizeJobFailed"), what="the QuantizeJobFailed event")


async def test_a_job_that_crashed_without_a_verdict_says_its_exit_code_and_signal(
    kubectl: Kubectl, api: client.ApiClient, start_operator: StartOperator
) -> None:
    """A segfault in a native library writes no verdict, and the kubelet's reason is a bare Error:
    the message said only "failed without a verdict"."""
    await start_operator(ScriptedMetrics())
    await serving(kubectl)
    name = (await quantizing(kubectl))["metadata"]["name"]
    await finish(api, name, exit_code=139, message="")

    errored = await eventually(
        lambda: (
            status_of(kubectl) if status_of(kubectl).get("quantize", {}).get("state") == "Error" else None
        ),
        what="state Error",
    )
    assert errored["quantize"]["message"] == (
        f"Job {name} failed: failed without a verdict (its container: exit code 139, SIGSEGV)"
    )


async def test_a_job_whose_pod_never_starts_says_why_while_it_waits_and_when_its_deadline_comes(
    cluster: Cluster, kubectl: Kubectl, api: client.ApiClient, start_operator: StartOperator
) -> None:
    """An image that cannot be pulled (a Secret or claim missing, no node that fits) read Running
    with no event until activeDeadlineSeconds, and then failed without the reason."""
    await start_operator(ScriptedMetrics())
    await serving(kubectl)
    name = (await quantizing(kubectl))["metadata"]["name"]
    core = client.CoreV1Api(api)
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": f"{name}-x7k2p", "labels": {"job-name": name}},
        "spec": {"containers": [{"name": quantization.CONTAINER, "image": "quantship"}]},
    }
    await core.create_namespaced_pod(NAMESPACE, pod)
    pulling = {"reason": "ImagePullBackOff", "message": 'Back-off pulling image "ghcr.io/quantship/typo"'}
    container = {
        "name": quantization.CONTAINER,
        "image": "quantship",
        "imageID": "",
        "ready": False,
        "restartCount": 0,
    }
    await core.patch_namespaced_pod_status(
        pod["metadata"]["name"],
        NAMESPACE,
        {"status": {"phase": "Pending", "containerStatuses": [{**container, "state": {"waiting": pulling}}]}},
        _content_type=MERGE_PATCH,
    )

    said = f'Job {name} has not started: ImagePullBackOff: Back-off pulling image "ghcr.io/quantship/typo"'
    (event,) = await eventually(lambda: events(kubectl, "QuantizeJobNotStarted"), what="the Warning")
    assert (event["type"], event["message"]) == ("Warning", said)
    waiting = status_of(kubectl)["quantize"]
    assert (waiting["state"], waiting["waiting"], waiting["message"]) == ("Running", "ImagePullBackOff", said)

    def pod_lists() -> int:
        return sum(
            1
            for request in cluster
            if request.headers.get("User-Agent") != TESTS_USER_AGENT
            and request.method == "GET"
            and getattr(request.resource, "plural", None) == "pods"
        )

    seen = pod_lists()
    await eventually(lambda: pod_lists() >= seen + 3, what="three more ticks")
    assert len(events(kubectl, "QuantizeJobNotStarted")) == 1, "once per reason, not every tick"

    # the deadline: the Job controller deletes the pod and fails the Job
    await core.delete_namespaced_pod(pod["metadata"]["name"], NAMESPACE)
    await client.BatchV1Api(api).patch_namespaced_job_status(
        name,
        NAMESPACE,
        {
            "status": {
                "failed": 1,
                "conditions": [
                    {
                        "type": "Failed",
                        "status": "True",
                        "reason": "DeadlineExceeded",
                        "message": "Job was active longer than specified deadline",
                    }
                ],
            }
        },
        _content_type=MERGE_PATCH,
    )
    failed = await eventually(
        lambda: (
            status_of(kubectl)["quantize"] if status_of(kubectl)["quantize"]["state"] == "Error" else None
        ),
        what="state Error",
    )
    assert failed["message"] == (
        f"Job {name} failed: failed without a verdict: Job was active longer than specified deadline "
        "(its pod never started: ImagePullBackOff)"
    )
    assert "waiting" not in failed


async def test_a_job_killed_for_its_memory_says_so(
    kubectl: Kubectl, api: client.ApiClient, start_operator: StartOperator
) -> None:
    """The termination message then is whatever the container last wrote, if anything: no OOMKilled."""
    await start_operator(ScriptedMetrics())
    await serving(kubectl)
    job = await quantizing(kubectl)
    name = job["metadata"]["name"]
    await finish(api, name, exit_code=137, message="calibrating: 40%", reason="OOMKilled")

    def errored() -> dict[str, Any] | None:
        status = status_of(kubectl)
        return status if status.get("quantize", {}).get("state") == "Error" else None

    message = (await eventually(errored, what="state Error"))["quantize"]["message"]
    assert message.endswith("(container OOMKilled, exit code 137)")
    # a pod the cluster took away (drain, eviction) decides nothing: not counted against the Job
    rules = job["spec"]["podFailurePolicy"]["rules"]
    assert rules == [{"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget"}]}]


@pytest.mark.parametrize("recorded", ["ours, by an older name", "gone", "another model's"])
async def test_after_a_restart_the_job_status_names_is_followed_only_when_it_runs_this_section(
    kubectl: Kubectl, api: client.ApiClient, start_operator: StartOperator, recorded: str
) -> None:
    """Job names changed for long model names (a hash of the whole name): after an upgrade the
    operator follows the Job status.quantize.job names, and never starts the section twice; a
    name that runs nothing of this model's and this section's is not followed."""
    operator = await start_operator(ScriptedMetrics())
    await serving(kubectl)
    job = await quantizing(kubectl)
    own = job["metadata"]["name"]
    await eventually(lambda: status_of(kubectl).get("quantize"), what="status.quantize")
    await operator.shutdown()
    named = "digits-older-quantize-name"
    batch = client.BatchV1Api(api)
    kept = {key: job["metadata"][key] for key in ("labels", "ownerReferences")}
    if recorded == "ours, by an older name":  # what an older operator called it
        await batch.delete_namespaced_job(own, NAMESPACE)
        await batch.create_namespaced_job(NAMESPACE, {**job, "metadata": {**kept, "name": named}})
    elif recorded == "another model's":
        labels = {**kept["labels"], "app.kubernetes.io/instance": "other"}
        await batch.create_namespaced_job(NAMESPACE, {**job, "metadata": {"name": named, "labels": labels}})
    await kubectl.custom.patch_namespaced_custom_object_status(
        crd.GROUP, crd.VERSION, NAMESPACE, crd.PLURAL, "digits",
        {"status": {"quantize": {"job": named}}}, _content_type=MERGE_PATCH,
    )  # fmt: skip

    await start_operator(ScriptedMetrics())
    followed = named if recorded == "ours, by an older name" else own
    await eventually(lambda: job_of(kubectl, followed), what=f"the Job {followed}")
    await finish(api, followed, exit_code=3, message='{"error": "calibration.npz: HTTP 404"}')
    errored = await eventually(
        lambda: (
            status_of(kubectl)["quantize"] if status_of(kubectl)["quantize"]["state"] == "Error" else None
        ),
        what="state Error",
    )
    assert errored["message"] == f"Job {followed} failed: calibration.npz: HTTP 404"
    assert errored["job"] == followed
    jobs = [key[2] for key in kubectl.cluster.objects if key[0].plural == "jobs"]
    ran = [name for name in jobs if kubectl.object(("batch/v1/jobs", NAMESPACE, name))]
    assert (
        ran == {"ours, by an older name": [named], "gone": [own], "another model's": [own, named]}[recorded]
    )


async def test_a_quantize_section_that_cannot_work_is_refused_and_the_stable_serves_on(
    cluster: Cluster, kubectl: Kubectl, start_operator: StartOperator
) -> None:
    """What the CRD's CEL rule refuses today, stored before it did, reaches the operator, which
    says so (its status writes pass: the API server ratchets what they leave unchanged)."""
    await start_operator(ScriptedMetrics())
    await serving(kubectl)
    section = {**QUANTIZE, "target": {"uri": "pvc://models/digits", "pullSecret": "registry"}}
    with pytest.raises(client.ApiException) as refused:
        await kubectl.patch({"spec": {"quantize": section}})
    assert refused.value.status == 422 and "pullSecret is for an oci:// target only" in str(
        refused.value.body
    )
    with cluster.older_crd():
        await kubectl.patch({"spec": {"quantize": section}})

    def degraded() -> dict[str, Any] | None:
        conditions = {c["type"]: c for c in status_of(kubectl).get("conditions") or []}
        found = conditions.get("Degraded", {})
        return found if found.get("reason") == "InvalidSpec" else None

    condition: dict[str, Any] = await eventually(degraded, what="Degraded: InvalidSpec")
    assert condition["message"] == "quantize.target.pullSecret is for an oci:// target only"
    assert status_of(kubectl)["phase"] == "Promoted" and "quantize" not in status_of(kubectl)
    assert not [key for key in kubectl.cluster.objects if key[0].plural == "jobs"]


async def test_a_token_models_options_become_the_jobs_quantize_flags_and_changing_one_runs_a_new_job(
    kubectl: Kubectl, start_operator: StartOperator
) -> None:
    """Options the CRD did not declare were pruned by the API server: the Job gated the first output,
    every position, padding too, and quantized the head it was asked to keep in float."""
    await start_operator(ScriptedMetrics())
    await serving(kubectl)
    section = {**QUANTIZE, "options": TOKEN_MODEL_OPTIONS}
    await kubectl.patch({"spec": {"quantize": section}})
    expected = quantization.QuantizeSpec.from_spec({"quantize": section})
    assert expected is not None
    first = quantization.job_name("digits", expected.hash)
    job = await eventually(lambda: job_of(kubectl, first), what="the quantization Job")

    stored = kubectl.get()
    assert stored is not None and stored["spec"]["quantize"]["options"] == TOKEN_MODEL_OPTIONS, (
        "nothing pruned"
    )
    (container,) = job["spec"]["template"]["spec"]["containers"]
    command = container["command"]
    assert command[command.index("--") :] == [
        "--",
        "--activation-type", "uint8", "--weight-type", "int8", "--calibration-method", "entropy",
        "--num-bins", "256", "--batch-size", "2", "--task", "classification", "--output", "logits",
        "--mask-input", "attention_mask", "--metric", "top1_agreement", "--threshold", "0.9",
        "--strategy", "fallback", "--max-trials", "4", "--keep-going",
        "--no-reduce-range", "--no-pre-process", "--matmul-const-b-only",
        "--exclude", "/lm_head/MatMul", "--exclude", "/h.0/attn/MatMul",
    ]  # fmt: skip

    # the section's hash covers its options: one node fewer kept in float is another Job
    await kubectl.patch({"spec": {"quantize": {"options": {"excludeNodes": ["/lm_head/MatMul"]}}}})
    await eventually(lambda: len(events(kubectl, "QuantizeJobCreated")) == 2, what="the second Job")
    second = status_of(kubectl)["quantize"]["job"]
    assert second != first
    (container,) = job_of(kubectl, second)["spec"]["template"]["spec"]["containers"]  # type: ignore[index]
    assert container["command"][-2:] == ["--exclude", "/lm_head/MatMul"]
    assert container["command"].count("--exclude") == 1


# -- the CRD, under the rules a real API server applies (apiserver_rules.py) -----------------------


def resource(quantize: dict[str, Any]) -> dict[str, Any]:
    return {
        "apiVersion": crd.API_VERSION,
        "kind": crd.KIND,
        "metadata": {"name": "digits", "namespace": NAMESPACE},
        "spec": {"artifact": {"uri": V1}, "quantize": quantize},
    }


def test_a_quantize_section_is_admitted_with_its_defaults_and_reads_into_the_same_job() -> None:
    stored, errors = rules.admit(crd.schema(), resource(QUANTIZE))
    assert errors == []
    assert stored["spec"]["quantize"]["activeDeadlineSeconds"] == 3600
    assert quantization.QuantizeSpec.from_spec(stored["spec"]) == quantization.QuantizeSpec.from_spec(
        {"quantize": QUANTIZE}
    )


def test_every_option_is_admitted_as_given_and_reads_into_the_job() -> None:
    options = {**TOKEN_MODEL_OPTIONS, "mode": "static", "format": "QDQ", "perChannel": True, "minCosine": 0.9}
    for every in (options, {**options, "calibrationMethod": "percentile", "percentile": 99.9}):
        section = {**QUANTIZE, "options": every}
        stored, errors = rules.admit(crd.schema(), resource(section))
        assert errors == []
        assert stored["spec"]["quantize"]["options"] == every, "nothing pruned, nothing defaulted"
        assert quantization.QuantizeSpec.from_spec(stored["spec"]) == quantization.QuantizeSpec.from_spec(
            {"quantize": section}
        )
    _, errors = rules.admit(crd.schema(), resource({**QUANTIZE, "options": _longest_names("n")}))
    assert errors == []


def _longest_names(character: str) -> dict[str, Any]:
    """The most and longest names spec.quantize.options admits, of one `character`."""
    name = character * crd_quantize.MAX_OPTION_NAME_CHARS
    return {"output": name, "maskInput": name, "excludeNodes": [name] * crd_quantize.MAX_EXCLUDED_NODES}


def _annotations_size(applied: dict[str, Any]) -> int:
    """The bytes of kopf's and `kubectl apply`'s copies of the spec, once admitted."""
    stored, errors = rules.admit(crd.schema(), applied)
    assert errors == []
    storage, body, patch = handlers.diffbase_storage(), kopf.Body(stored), kopf.Patch()
    storage.store(body=body, patch=patch, essence=storage.build(body=body))
    kopfs = {key: value.encode() for key, value in patch["metadata"]["annotations"].items()}
    kubectls = {LAST_APPLIED: json.dumps(applied, ensure_ascii=False, separators=(",", ":")).encode()}
    return sum(len(key) + len(value) for key, value in {**kopfs, **kubectls}.items())


def test_the_largest_names_admitted_keep_both_copies_of_the_spec_well_within_the_annotations_limit() -> None:
    """kopf keeps the spec it handled in an annotation, JSON escaped to ASCII (an astral character
    takes 12 bytes), and `kubectl apply` another (4 bytes). Past 256 KiB of annotations in all, the
    API server refused kopf's patch (422) after every handling: 256 names of 4096 made 1 MiB."""
    size = _annotations_size(resource({**QUANTIZE, "options": _longest_names("\U0001f600")}))
    limit = crd_quantize.ANNOTATIONS_LIMIT_BYTES
    assert 0.5 * limit < size < 0.6 * limit, size


def test_the_longest_uris_admitted_beside_the_largest_names_keep_within_the_annotations_limit() -> None:
    """crd_uris.MAX_URI_CHARS: five URIs as long as admitted, of the characters that take the most bytes
    escaped, and the largest option names, still fit both copies of the spec in the annotations."""
    astral = "\U0001f600"

    def longest(prefix: str) -> str:
        return prefix + astral * (crd_uris.MAX_URI_CHARS - len(prefix))

    quantize = {
        **QUANTIZE,
        "model": longest("file:///"),
        "calibration": longest("pvc://datasets/"),
        "evaluation": longest("https://"),
        "target": {"uri": longest("pvc://models/")},
        "options": _longest_names(astral),
    }
    applied = resource(quantize)
    applied["spec"]["artifact"]["uri"] = longest("pvc://models/")
    assert _annotations_size(applied) < crd_quantize.ANNOTATIONS_LIMIT_BYTES
    applied["spec"]["artifact"]["uri"] += "x"
    _, errors = rules.admit(crd.schema(), applied)
    assert len(errors) == 1 and "is too long" in errors[0], errors


@pytest.mark.parametrize(
    ("change", "complaint"),
    [
        ({"target": {"uri": "pvc://models/digits", "pullSecret": "registry"}}, "pullSecret is for an oci://"),
        ({"target": {"uri": "https://models.example.com/out"}}, TARGET_URI),
        ({"model": "oci://registry.example.com/ml/fp32:1"}, INPUT_URI),
        ({"options": {"mode": "int4"}}, "'int4' is not one of"),
        ({"options": {"maxAccuracyDelta": 2}}, "greater than the maximum"),
        # quantize refuses both (a usage error): the Job would fail at once
        (
            {"options": {"threshold": 0.9, "maxAccuracyDelta": 0.01}},
            "threshold or maxAccuracyDelta, not both",
        ),
        # what quantize refuses as a usage error: the Job would fail at once, after its downloads
        ({"options": {"activationType": "int4"}}, "'int4' is not one of"),
        ({"options": {"task": "detection"}}, "'detection' is not one of"),
        ({"options": {"strategy": "greedy"}}, "'greedy' is not one of"),
        ({"options": {"percentile": 0}}, "less than or equal to the minimum of 0"),
        ({"options": {"percentile": 100.5}}, "greater than the maximum of 100"),
        ({"options": {"numBins": 1}}, "less than the minimum of 2"),
        ({"options": {"numBins": 2049}}, "greater than the maximum of 2048"),
        ({"options": {"batchSize": 0}}, "less than the minimum of 1"),
        ({"options": {"minCosine": 1.5}}, "greater than the maximum of 1"),
        (
            {"options": {"calibrationMethod": "entropy", "numBins": 127}},
            "entropy calibration needs at least 128",
        ),
        (
            {"options": {"calibrationMethod": "distribution", "numBins": 256}},
            "distribution calibration needs at least 512",
        ),
        (
            {"options": {"task": "embedding", "metric": "top1_agreement"}},
            "task embedding is gated by one of cosine_agreement, cosine_mean",
        ),
        # quantize refuses a threshold outside its metric's values (it passes every model or none)
        ({"options": {"metric": "kl_divergence", "threshold": -1}}, "kl_divergence is at least 0"),
        ({"options": {"metric": "cosine_mean", "threshold": 2}}, "cosine_mean is between -1 and 1"),
        ({"options": {"metric": "cosine_p5", "threshold": -1.5}}, "cosine_p5 is between -1 and 1"),
        ({"options": {"metric": "top1_agreement", "threshold": 1.01}}, "top1_agreement is between 0 and 1"),
        ({"options": {"keepGoing": "yes"}}, "is not of type 'boolean'"),
        # names as long and as many as the annotations' limit allows (crd_quantize.OPTION_NAMES_BUDGET_BYTES)
        ({"options": {"output": ""}}, "should be non-empty"),
        ({"options": {"maskInput": "m" * (crd_quantize.MAX_OPTION_NAME_CHARS + 1)}}, "is too long"),
        ({"options": {"excludeNodes": ["n" * (crd_quantize.MAX_OPTION_NAME_CHARS + 1)]}}, "is too long"),
        ({"options": {"excludeNodes": ["n"] * (crd_quantize.MAX_EXCLUDED_NODES + 1)}}, "is too long"),
        # a NUL cannot be passed in a process argument: the Job's command line carries the names
        ({"options": {"output": "logits\x00"}}, "does not match"),
        ({"options": {"maskInput": "\x00"}}, "does not match"),
        ({"options": {"excludeNodes": ["/MatMul", "/lm_head\x00/MatMul"]}}, "does not match"),
        ({"options": {"excludeNodes": "MatMul2"}}, "is not of type 'array'"),
        # the Job mounts the claim and reads or writes a path inside it
        ({"target": {"uri": "pvc://models"}}, TARGET_URI),
        ({"target": {"uri": "pvc://models/"}}, TARGET_URI),
        ({"calibration": "pvc://datasets/../secrets/key"}, INPUT_URI),
        ({"evaluation": "pvc://datasets/digits/.."}, INPUT_URI),
        # the Job pushes to a tag: without one, or to a digest, it fails after the whole quantization
        ({"target": {"uri": "oci://registry.example.com/ml/digits"}}, TARGET_URI),
        ({"target": {"uri": f"oci://registry.example.com/ml/digits@sha256:{'ab' * 32}"}}, TARGET_URI),
        (
            {"target": {"uri": f"oci://registry.example.com/ml/digits:int8@sha256:{'ab' * 32}"}},
            TARGET_URI,
        ),
    ],
)
def test_a_quantize_section_that_cannot_work_is_refused_by_the_api_server(
    change: dict[str, Any], complaint: str
) -> None:
    _, errors = rules.admit(crd.schema(), resource({**QUANTIZE, **change}))
    assert len(errors) == 1 and complaint in errors[0], errors


@pytest.mark.parametrize("tail", ["", f"@sha256:{'ab' * 32}", f":int8@sha256:{'ab' * 32}"])
def test_an_oci_target_admitted_before_it_needed_a_tag_is_an_invalid_spec(tail: str) -> None:
    uri = f"oci://registry.example.com/ml/digits{tail}"
    with pytest.raises(InvalidSpec, match="a tag to push to, no digest"):
        quantization.QuantizeSpec.from_spec({"quantize": {**QUANTIZE, "target": {"uri": uri}}})


def test_both_gate_limits_stored_before_the_rule_are_an_invalid_spec() -> None:
    """quantize refuses --threshold with --max-accuracy-delta: the Job would fail at once, exit 2."""
    options = {"threshold": 0.9, "maxAccuracyDelta": 0.01}
    with pytest.raises(InvalidSpec, match="threshold or maxAccuracyDelta, not both"):
        quantization.QuantizeSpec.from_spec({"quantize": {**QUANTIZE, "options": options}})


@pytest.mark.parametrize("method", ["entropy", "distribution"])
def test_too_few_bins_stored_before_the_rule_are_an_invalid_spec(method: str) -> None:
    """quantize refuses them (exit 2): the Job would fail at once."""
    options = {"calibrationMethod": method, "numBins": 64}
    with pytest.raises(InvalidSpec, match=f"{method} calibration needs at least"):
        quantization.QuantizeSpec.from_spec({"quantize": {**QUANTIZE, "options": options}})
    enough = {"calibrationMethod": method, "numBins": 512}
    assert quantization.QuantizeSpec.from_spec({"quantize": {**QUANTIZE, "options": enough}}) is not None


def test_more_bins_than_the_maximum_stored_before_it_are_an_invalid_spec() -> None:
    """quantize refuses them (exit 2): gpt2-lm's entropy calibration took 800 s at 8192 bins."""
    with pytest.raises(InvalidSpec, match="numBins: at most 2048"):
        quantization.QuantizeSpec.from_spec({"quantize": {**QUANTIZE, "options": {"numBins": 8192}}})


def test_another_tasks_metric_stored_before_the_rule_is_an_invalid_spec() -> None:
    """quantize refuses it once it has read the evaluation data: after the Job's downloads."""
    options = {"task": "regression", "metric": "top1_agreement"}
    with pytest.raises(InvalidSpec, match="task regression is gated by one of relative_error"):
        quantization.QuantizeSpec.from_spec({"quantize": {**QUANTIZE, "options": options}})
    for task, metric in (("regression", "relative_error"), ("embedding", "nn_agreement")):
        options = {"task": task, "metric": metric}
        assert quantization.QuantizeSpec.from_spec({"quantize": {**QUANTIZE, "options": options}}) is not None


def test_thresholds_at_the_ends_of_each_metrics_values_are_admitted() -> None:
    for metric, (low, high) in DOMAIN_OF_METRIC.items():
        for threshold in (low, min(high, 1e9)):
            options = {"metric": metric.value, "threshold": threshold}
            _, errors = rules.admit(crd.schema(), resource({**QUANTIZE, "options": options}))
            assert errors == [], (metric, threshold)


@pytest.mark.parametrize(
    ("metric", "threshold"), [("kl_divergence", -1), ("cosine_mean", 2), ("relative_error", -0.1)]
)
def test_a_threshold_outside_its_metric_stored_before_the_rule_is_an_invalid_spec(
    metric: str, threshold: float
) -> None:
    """quantize refuses it once it has read the evaluation data: after the Job's downloads."""
    options = {"metric": metric, "threshold": threshold}
    with pytest.raises(InvalidSpec, match=f"threshold: {metric} is "):
        quantization.QuantizeSpec.from_spec({"quantize": {**QUANTIZE, "options": options}})
    inside = {"metric": metric, "threshold": 0}
    assert quantization.QuantizeSpec.from_spec({"quantize": {**QUANTIZE, "options": inside}}) is not None


def test_a_missing_input_is_refused_by_the_api_server() -> None:
    section = {key: value for key, value in QUANTIZE.items() if key != "calibration"}
    _, errors = rules.admit(crd.schema(), resource(section))
    assert len(errors) == 1 and "'calibration' is a required property" in errors[0], errors


async def test_a_job_the_api_refuses_leaves_the_rollout_going_and_degraded_says_why(
    cluster: Cluster, kubectl: Kubectl, start_operator: StartOperator
) -> None:
    """A quota or an admission policy refusing the Job used to stop every tick of the model: a
    canary burning its budget kept its traffic, and nothing said why."""
    second = "https://models.example.com/digits-v2.tar.gz"
    canary = revision(second)
    await start_operator(ScriptedMetrics(bad={canary}))
    await kubectl.apply(spec_of(V1, rollout={"steps": [25, 50, 100], "stepInterval": "2s"}))
    await eventually(lambda: kubectl.deployment(f"digits-{FIRST}"), what="the stable Deployment")
    await kubectl.make_ready(f"digits-{FIRST}", 2)
    await phase_is(kubectl, "Promoted")
    quota = "exceeded quota: jobs, requested: count/jobs.batch=1, used: count/jobs.batch=50"

    def job_created(request: Any) -> bool:
        ours = request.headers.get("User-Agent") != TESTS_USER_AGENT
        return ours and request.method == "POST" and getattr(request.resource, "plural", None) == "jobs"

    cluster.refuse(job_created, kmock.KubernetesError(status=403, reason="Forbidden", message=quota))
    await kubectl.patch({"spec": {"artifact": {"uri": second}, "quantize": QUANTIZE}})
    await eventually(lambda: kubectl.deployment(f"digits-{canary}"), what="the canary Deployment")
    await kubectl.make_ready(f"digits-{canary}", 2)

    status = await phase_is(kubectl, "RolledBack")  # judged as ever: the canary burns its clip budget
    degraded = next(c for c in status["conditions"] if c["type"] == "Degraded")
    assert degraded["status"] == "True" and degraded["reason"] == "QuantizeJobError"
    assert quota in degraded["message"] and "spec.quantize" in degraded["message"]
    assert "quantize" not in status, "no Job ran: nothing to report of one"


async def test_a_section_reverted_to_follows_its_job_and_says_no_job_was_created(
    kubectl: Kubectl, api: client.ApiClient, start_operator: StartOperator
) -> None:
    """A Job's name is its section's hash: going back to a section finds its Job, done long ago. The
    operator said "QuantizeJobCreated" of it, and then replayed its old outcome as news."""
    await start_operator(ScriptedMetrics())
    await serving(kubectl)
    first = (await quantizing(kubectl))["metadata"]["name"]
    await finish(api, first, exit_code=3, message='{"error": "the registry answered 503"}')
    await eventually(lambda: status_of(kubectl).get("quantize", {}).get("state") == "Error", what="Error")
    other = {**QUANTIZE, "options": {**QUANTIZE["options"], "threshold": 0.98}}
    await kubectl.patch({"spec": {"quantize": other}})
    await eventually(lambda: len(events(kubectl, "QuantizeJobCreated")) == 2, what="the second Job")

    await kubectl.patch({"spec": {"quantize": QUANTIZE}})

    (found,) = await eventually(lambda: events(kubectl, "QuantizeJobFound"), what="the first Job found")
    assert found["message"].startswith(f"Job {first} of this section exists already")
    await eventually(
        lambda: status_of(kubectl).get("quantize", {}).get("state") == "Error", what="its outcome"
    )
    assert len(events(kubectl, "QuantizeJobCreated")) == 2, "no Job was created"
    assert len(events(kubectl, "QuantizeJobFailed")) == 1, "its old outcome is no news"
    assert "found" not in status_of(kubectl)["quantize"]


async def test_a_promoted_artifact_keeps_its_pull_secret_when_the_target_moves(
    kubectl: Kubectl, api: client.ApiClient, start_operator: StartOperator
) -> None:
    """The artifact serves with the credentials of the registry it was pushed to. Moving the target
    to another registry (with its own push secret) runs a new Job; it gave the old artifact the
    new secret, which is a new revision: a canary whose fetch the old registry refuses (401)."""
    await start_operator(ScriptedMetrics())
    await serving(kubectl)
    name = (await quantizing(kubectl))["metadata"]["name"]
    verdict = Verdict(passed=True, metric="top1_agreement", value=1.0, threshold=0.99, artifact=PRODUCED)
    await finish(api, name, exit_code=0, message=json.dumps(verdict.to_json()))
    canary = (await phase_is(kubectl, "Progressing"))["canaryRevision"]
    await eventually(lambda: kubectl.deployment(f"digits-{canary}"), what="the canary Deployment")
    await kubectl.make_ready(f"digits-{canary}", 1)
    await phase_is(kubectl, "Promoted")

    moved = {**QUANTIZE, "target": {"uri": "oci://other.example.com/ml/digits:int8", "pullSecret": "other"}}
    await kubectl.patch({"spec": {"quantize": moved}})
    expected = quantization.QuantizeSpec.from_spec({"quantize": moved})
    assert expected is not None
    await eventually(
        lambda: status_of(kubectl).get("quantize", {}).get("hash") == expected.hash, what="the new Job"
    )

    status = status_of(kubectl)
    assert (status["phase"], status["stableRevision"], status.get("canaryRevision")) == (
        "Promoted",
        canary,
        None,
    ), "no canary until the new Job passes"
    assert status["quantizedArtifact"]["pullSecret"] == "registry"
    stable = kubectl.deployment(f"digits-{canary}")
    assert stable is not None
    secrets = [
        v["secret"]["secretName"] for v in stable["spec"]["template"]["spec"]["volumes"] if "secret" in v
    ]
    assert secrets == ["registry"]


async def test_a_job_whose_status_write_was_lost_is_followed_as_the_one_just_created(
    cluster: Cluster, kubectl: Kubectl, api: client.ApiClient, start_operator: StartOperator
) -> None:
    """The status write after the Job's creation fails once (an API blip, a restart between the two
    calls): the next tick's create answers 409. It called its own new Job "found", a reverted-to
    section's, and posted none of its verdict's events."""
    await start_operator(ScriptedMetrics())
    await serving(kubectl)
    blipped: list[Any] = []

    def first_quantize_status_write(request: Any) -> bool:
        if request.headers.get("User-Agent") == TESTS_USER_AGENT or blipped:
            return False
        data = request.data if isinstance(request.data, dict) else {}
        writing = request.method == "PATCH" and getattr(request.resource, "plural", None) == crd.PLURAL
        if writing and "quantize" in (data.get("status") or {}):
            blipped.append(request)
            return True
        return False

    cluster.refuse(
        first_quantize_status_write,
        kmock.KubernetesError(status=503, reason="ServiceUnavailable", message="etcd blip"),
    )
    name = (await quantizing(kubectl))["metadata"]["name"]
    running = await eventually(lambda: status_of(kubectl).get("quantize"), what="status.quantize")
    assert blipped, "the first write was refused"
    assert "found" not in running
    assert running["message"].startswith(f"Job {name} quantizes ")
    assert not events(kubectl, "QuantizeJobFound")
    verdict = Verdict(passed=True, metric="top1_agreement", value=1.0, threshold=0.99, artifact=PRODUCED)
    await finish(api, name, exit_code=0, message=json.dumps(verdict.to_json()))

    await eventually(lambda: events(kubectl, "GatePassed"), what="the verdict's event")
    assert len(events(kubectl, "QuantizeJobCreated")) == 1


@pytest.mark.parametrize("change", ["changed", "removed"])
async def test_a_job_whose_section_changes_or_goes_while_it_runs_is_deleted_with_its_pods(
    kubectl: Kubectl, start_operator: StartOperator, change: str
) -> None:
    """No one reads a superseded Job's verdict, and a quantization holds its CPU and memory for
    minutes: it is deleted (Background: its pods go too), as Argo Rollouts aborts a replaced
    revision's analysis. A Job that finished stays (a section reverted to finds its outcome)."""
    await start_operator(ScriptedMetrics())
    await serving(kubectl)
    first = (await quantizing(kubectl))["metadata"]["name"]
    await eventually(lambda: status_of(kubectl).get("quantize"), what="status.quantize")

    if change == "changed":
        other = {**QUANTIZE, "options": {**QUANTIZE["options"], "threshold": 0.98}}
        await kubectl.patch({"spec": {"quantize": other}})
        await eventually(lambda: len(events(kubectl, "QuantizeJobCreated")) == 2, what="the second Job")
    else:
        await kubectl.patch({"spec": {"quantize": None}})
        await eventually(lambda: "quantize" not in status_of(kubectl), what="status.quantize removed")
    (cancelled,) = await eventually(lambda: events(kubectl, "QuantizeJobCancelled"), what="the event")
    assert cancelled["message"] == f"Job {first} of the previous section was cancelled"
    assert cancelled["type"] == "Normal"

    await eventually(lambda: job_of(kubectl, first) is None, what="the first Job deleted")
    (deletion,) = [
        request
        for request, _ in kubectl.cluster.answers
        if request.action == kmock.action.DELETE and request.resource.plural == "jobs"
    ]
    assert deletion.name == first
    assert permission_of(deletion) == (NAMESPACE, ("batch", "jobs", "delete"))
    assert ("batch", "jobs", "delete") in permissions.QUANTIZE_JOB
    assert deletion.data["propagationPolicy"] == "Background"


async def test_a_finished_job_is_not_deleted_when_its_section_changes(
    kubectl: Kubectl, api: client.ApiClient, start_operator: StartOperator
) -> None:
    await start_operator(ScriptedMetrics())
    await serving(kubectl)
    first = (await quantizing(kubectl))["metadata"]["name"]
    await finish(api, first, exit_code=3, message='{"error": "the registry answered 503"}')
    await eventually(lambda: status_of(kubectl).get("quantize", {}).get("state") == "Error", what="Error")

    await kubectl.patch({"spec": {"quantize": None}})

    await eventually(lambda: "quantize" not in status_of(kubectl), what="status.quantize removed")
    assert job_of(kubectl, first) is not None
    assert not events(kubectl, "QuantizeJobCancelled")


async def test_a_job_the_api_will_not_let_us_delete_runs_on_and_a_warning_says_so(
    cluster: Cluster, kubectl: Kubectl, start_operator: StartOperator
) -> None:
    """The RBAC of an older chart has no jobs delete: the Job runs to its end, unread, and a Normal
    event said it was "cancelled ... could not be cancelled"."""
    await start_operator(ScriptedMetrics())
    await serving(kubectl)
    first = (await quantizing(kubectl))["metadata"]["name"]
    await eventually(lambda: status_of(kubectl).get("quantize"), what="status.quantize")
    forbidden = kmock.KubernetesError(status=403, reason="Forbidden", message="jobs.batch is forbidden")
    cluster.refuse(
        lambda request: request.action == kmock.action.DELETE and request.resource.plural == "jobs", forbidden
    )

    await kubectl.patch({"spec": {"quantize": None}})

    (warning,) = await eventually(lambda: events(kubectl, "QuantizeJobNotCancelled"), what="the warning")
    assert (
        warning["type"] == "Warning"
        and f"Job {first} of the previous section could not be cancelled" in warning["message"]
    )
    assert "403" in warning["message"] and job_of(kubectl, first) is not None
    assert not events(kubectl, "QuantizeJobCancelled")
