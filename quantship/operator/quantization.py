"""spec.quantize: a Kubernetes Job that quantizes an FP32 model and gates it, then hands its
artifact to the rollout as if spec.artifact.uri had changed to it.

`QuantizeSpec.from_spec` reads the section; `job` builds the Job (pure), named by the hash of
the section, so creating it again is a no-op and a changed section is a new Job. `step` is what a
tick does before the rollout engine runs: create the Job when the section changed, or read its
verdict from its pod's termination message once it finished (`quantize_job` writes it). It
returns the new `status.quantize` and `status.quantizedArtifact` (the last passing Job's
artifact, which `ModelSpec.from_resource` serves instead of spec.artifact) and the Event to post.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
import signal
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import kopf

from quantship import UNIQUE_TAG_ENV, oci
from quantship.choices import (
    DOMAIN_OF_METRIC,
    MAX_NUM_BINS,
    METRICS_OF_TASK,
    MIN_NUM_BINS,
    Calibration,
    Metric,
    Task,
)
from quantship.operator import crd, crd_rules, crd_status, crd_uris, fetch, names, resources
from quantship.operator.kube import Kube
from quantship.operator.quantize_job import Verdict, read_result
from quantship.operator.spec import InvalidSpec, apply_defaults
from quantship.rollout import PortError
from quantship.rollout.state import to_timestamp

CONTAINER = "quantize"
WORK_DIR = "/work"
RESULT_FILE = "/dev/termination-log"
SIGNING_DIR = "/etc/quantship/signing"
SIGNING_FILE = "private.pem"
RUNNING, PASSED, GATE_FAILED, ERROR = crd_status.QUANTIZE_STATES

OPTION_FLAGS = {
    "mode": "--mode",
    "format": "--format",
    "activationType": "--activation-type",
    "weightType": "--weight-type",
    "calibrationMethod": "--calibration-method",
    "percentile": "--percentile",
    "numBins": "--num-bins",
    "batchSize": "--batch-size",
    "task": "--task",
    "output": "--output",
    "maskInput": "--mask-input",
    "metric": "--metric",
    "threshold": "--threshold",
    "maxAccuracyDelta": "--max-accuracy-delta",
    "minCosine": "--min-cosine",
    "strategy": "--strategy",
    "maxTrials": "--max-trials",
}
"""spec.quantize.options -> `quantship quantize` flags that take a value."""
OPTION_SWITCHES = {"perChannel": "--per-channel", "keepGoing": "--keep-going"}
"""Options that are a flag when true, and quantize's default (off) when false."""
OPTION_PAIRS = {
    "reduceRange": ("--reduce-range", "--no-reduce-range"),
    "preProcess": ("--pre-process", "--no-pre-process"),
    "matmulConstBOnly": ("--matmul-const-b-only", "--no-matmul-const-b-only"),
    "matmulsOnly": ("--matmuls-only", "--no-matmuls-only"),
}
"""Options whose true and false are each a flag: unset keeps quantize's default (reduceRange's
depends on the Job's CPU)."""
OPTION_LISTS = {"excludeNodes": "--exclude"}
"""Options that repeat their flag once per item."""


@dataclass(frozen=True)
class QuantizeSpec:
    model: str
    calibration: str
    evaluation: str | None
    target: str
    pull_secret: str | None
    signing_key_secret: str | None
    options: Mapping[str, Any]
    resources: Mapping[str, Any]
    active_deadline_seconds: int
    hash: str
    """10 hex digits over the whole section: the Job's identity."""
    claims: tuple[str, ...] = field(default=())
    """The PersistentVolumeClaims the inputs and a pvc:// target name, in order."""

    @classmethod
    def from_spec(cls, spec: Mapping[str, Any]) -> QuantizeSpec | None:
        """spec.quantize read (None when absent). Raises InvalidSpec for what the schema lets by."""
        raw = spec.get("quantize")
        if raw is None:
            return None
        section = apply_defaults(crd.spec_schema()["properties"]["quantize"], dict(raw))
        for key in ("model", "calibration", "target"):
            if key not in section:
                raise InvalidSpec(f"spec.quantize.{key} is required")
        target = dict(section["target"])
        uri = str(target.get("uri", ""))
        _check_target(uri)
        if target.get("pullSecret") and not uri.startswith("oci://"):
            raise InvalidSpec(PULL_SECRET_MESSAGE)
        options = section.get("options") or {}
        _check_options(options)
        digest = hashlib.sha256(json.dumps(section, sort_keys=True).encode()).hexdigest()[:10]
        uris = [section["model"], section["calibration"], section.get("evaluation") or "", uri]
        claims: list[str] = []
        for value in uris:
            if value.startswith("pvc://"):
                claim = _claim_of(value)
                if claim not in claims:
                    claims.append(claim)
        return cls(
            model=section["model"],
            calibration=section["calibration"],
            evaluation=section.get("evaluation"),
            target=uri,
            pull_secret=target.get("pullSecret"),
            signing_key_secret=section.get("signingKeySecret"),
            options=dict(options),
            resources=_checked_resources(section.get("resources") or {}),
            active_deadline_seconds=int(section["activeDeadlineSeconds"]),
            hash=digest,
            claims=tuple(claims),
        )

    def output(self, owner: str) -> str:
        """Where the Job of the QuantizedModel `owner` publishes. A pvc:// target gets a folder per
        model and Job: a stable revision's pods may fetch the previous one again, and two models
        with the same section quantize side by side, never into one folder. An oci:// tag is
        pinned by digest afterwards."""
        if self.target.startswith("pvc://"):
            return f"{self.target.rstrip('/')}/{owner}/{self.hash}"
        return self.target

    def unique_tag(self, namespace: str, owner: str) -> str | None:
        """The oci:// target's tag the Job of the QuantizedModel `namespace`/`owner` pushes to
        first: `TAG-NAMESPACE_OWNER-HASH`, its own as a pvc:// target's folder is (a namespace and a
        name hold no '_', so no two models share one). Cut to the tag grammar's 128 characters, a
        hash of what was cut stands in for it and the section's hash stays whole. The target's tag
        moves on with every Job; the digest a stable pins keeps this one, so a registry's cleanup
        of untagged manifests spares it."""
        if not self.target.startswith(oci.SCHEME):
            return None
        tag = oci.Reference.parse(self.target).tag
        return oci.tag_with_suffix(f"{tag}-{namespace}_{owner}", self.hash)

    def environment(self, namespace: str, owner: str) -> dict[str, str]:
        """The Job container's environment for the QuantizedModel `namespace`/`owner`: the unique
        tag goes here, not on the command line, as an older quantship's quantize-job (the user's
        spec.image) hands options it does not know to `quantship quantize`, which refuses them;
        it ignores an environment variable."""
        unique = self.unique_tag(namespace, owner)
        return {"HOME": "/tmp", **({UNIQUE_TAG_ENV: unique} if unique is not None else {})}

    def quantize_args(self) -> list[str]:
        """spec.quantize.options as `quantship quantize` takes them: each value its own argument
        after its flag, which click reads as the value whatever it holds (a name starting with -)."""
        args: list[str] = []
        for key, flag in OPTION_FLAGS.items():
            if key in self.options:
                args += [flag, _argument(self.options[key])]
        args += [flag for key, flag in OPTION_SWITCHES.items() if self.options.get(key)]
        for key, (on, off) in OPTION_PAIRS.items():
            if key in self.options:
                args.append(on if self.options[key] else off)
        for key, flag in OPTION_LISTS.items():
            for item in self.options.get(key) or ():
                args += [flag, str(item)]
        if self.signing_key_secret:
            args += ["--sign-key", f"{SIGNING_DIR}/{SIGNING_FILE}"]
        return args

    def command(self, owner: str) -> list[str]:
        """The command line of the QuantizedModel `owner`'s Job container: `quantship quantize-job
        ... -- QUANTIZE FLAGS`."""
        command = ["quantship", "quantize-job", "--model", self.model, "--calibration", self.calibration]
        if self.evaluation:
            command += ["--evaluation", self.evaluation]
        command += [
            "--target", self.output(owner),
            "--workdir", WORK_DIR, "--result-file", RESULT_FILE, "--pvc-root", resources.PVC_ROOT,
        ]  # fmt: skip
        if self.pull_secret:
            command += ["--registry-config", f"{resources.REGISTRY_DIR}/config.json"]
        return [*command, "--", *self.quantize_args()]


PULL_SECRET_MESSAGE = crd_rules.PULL_SECRET_FOR_OCI["message"]


def _argument(value: Any) -> str:
    """An option's value as quantize reads it: a whole number as an integer (the API server admits
    4.0 for an integer field, and click's IntRange refuses "4.0")."""
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def _check_options(options: Mapping[str, Any]) -> None:
    """The CRD's CEL rules over spec.quantize.options, for an object stored before they existed:
    what quantize refuses (too few bins, another task's metric, a threshold outside its metric's
    values) it refuses after the Job's downloads."""
    if "threshold" in options and "maxAccuracyDelta" in options:
        raise InvalidSpec(crd_rules.ONE_GATE_LIMIT["message"])
    method = str(options.get("calibrationMethod"))
    if options.get("numBins", 0) > MAX_NUM_BINS:
        raise InvalidSpec(f"quantize.options.numBins: at most {MAX_NUM_BINS}")
    if (
        method in crd_rules.ENOUGH_BINS
        and options.get("numBins", math.inf) < MIN_NUM_BINS[Calibration(method)]
    ):
        raise InvalidSpec(crd_rules.ENOUGH_BINS[method]["message"])
    task, metric = str(options.get("task")), options.get("metric")
    if task in crd_rules.METRIC_OF_TASK and metric is not None and metric not in METRICS_OF_TASK[Task(task)]:
        raise InvalidSpec(crd_rules.METRIC_OF_TASK[task]["message"])
    threshold = options.get("threshold")
    if metric in crd_rules.THRESHOLD_IN_DOMAIN and threshold is not None:
        low, high = DOMAIN_OF_METRIC[Metric(metric)]
        if not low <= threshold <= high:
            raise InvalidSpec(crd_rules.THRESHOLD_IN_DOMAIN[metric]["message"])


def _check_target(uri: str) -> None:
    """A target the CRD refuses, admitted before it did. A pvc:// one: `_claim_of` says what is
    wrong with it (in the claim's words)."""
    pushable = uri.startswith("oci://") and re.fullmatch(crd_uris.TARGET_URI.pattern, uri)
    if not (pushable or uri.startswith("pvc://")):
        raise InvalidSpec(
            f"spec.quantize.target.uri {uri!r}: write pvc://CLAIM/PATH or oci://REGISTRY/REPO:TAG "
            "(a tag to push to, no digest)"
        )


def _claim_of(uri: str) -> str:
    """The claim a pvc:// input or target of the Job names, read as the Job reads it (`fetch`):
    a path inside the claim, not the claim itself."""
    message = f"spec.quantize: {uri}: write pvc://CLAIM/PATH inside the claim"
    try:
        path = fetch.source_path(uri, fetch.PVC_ROOT)
    except fetch.FetchError as exc:
        raise InvalidSpec(f"{message} ({exc})") from exc
    if path is None or path.parent == fetch.PVC_ROOT:  # the claim itself
        raise InvalidSpec(message)
    return fetch.pvc_claim(uri)


def _checked_resources(requirements: Mapping[str, Any]) -> dict[str, Any]:
    errors = names.container_resource_errors(requirements)
    if errors:
        raise InvalidSpec(f"spec.quantize.resources: {'; '.join(errors)}")
    return dict(requirements)


_NAME_HASH_DIGITS = 6
"""Hex digits of a cut model name's hash in its Job's name."""


def job_name(model: str, digest: str) -> str:
    """MODEL-quantize-DIGEST, at most 63 characters: the Job controller puts it in its pods'
    `job-name` label. A name too long for that is cut, and what was cut stays as a hash of the
    whole name: two models sharing a long prefix (and a quantize section) do not share a Job."""
    name = f"{model}-quantize-{digest}"
    if len(name) <= names.MAX_LABEL_VALUE_LENGTH:
        return name
    whole = hashlib.sha256(model.encode()).hexdigest()[:_NAME_HASH_DIGITS]
    kept = names.MAX_LABEL_VALUE_LENGTH - len(f"-{whole}-quantize-{digest}")
    return f"{model[:kept].rstrip('-.')}-{whole}-quantize-{digest}"


def job(
    spec: QuantizeSpec, *, name: str, namespace: str, image: str, owner: Mapping[str, Any]
) -> dict[str, Any]:
    """The Job of `spec` for the QuantizedModel `name` (pure)."""
    labels = {
        "app.kubernetes.io/name": "quantship-quantize",
        "app.kubernetes.io/instance": name,
        **resources.MANAGED_BY,
        f"{crd.GROUP}/quantize": spec.hash,
    }
    volumes: list[dict[str, Any]] = [{"name": "work", "emptyDir": {}}, {"name": "tmp", "emptyDir": {}}]
    mounts: list[dict[str, Any]] = [
        {"name": "work", "mountPath": WORK_DIR},
        {"name": "tmp", "mountPath": "/tmp"},
    ]
    target_claim = fetch.pvc_claim(spec.target) if spec.target.startswith("pvc://") else None
    for index, claim in enumerate(spec.claims):
        read_only = claim != target_claim
        volumes.append(
            {"name": f"claim-{index}", "persistentVolumeClaim": {"claimName": claim, "readOnly": read_only}}
        )
        mounts.append(
            {"name": f"claim-{index}", "mountPath": f"{resources.PVC_ROOT}/{claim}", "readOnly": read_only}
        )
    if spec.pull_secret:
        items = [{"key": ".dockerconfigjson", "path": "config.json"}]
        volumes.append({"name": "registry", "secret": {"secretName": spec.pull_secret, "items": items}})
        mounts.append({"name": "registry", "mountPath": resources.REGISTRY_DIR, "readOnly": True})
    if spec.signing_key_secret:
        items = [{"key": SIGNING_FILE, "path": SIGNING_FILE}]
        volumes.append({"name": "signing", "secret": {"secretName": spec.signing_key_secret, "items": items}})
        mounts.append({"name": "signing", "mountPath": SIGNING_DIR, "readOnly": True})
    body: dict[str, Any] = {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": job_name(name, spec.hash), "namespace": namespace, "labels": labels},
        "spec": {
            "backoffLimit": 0,  # a gate verdict does not change on a retry; an error waits for a new spec
            # but a pod the cluster took away (a drained node, an eviction, preemption) decided
            # nothing: run it again rather than fail the section for good (Kubernetes 1.26+)
            "podFailurePolicy": {
                "rules": [{"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget"}]}]
            },
            "activeDeadlineSeconds": spec.active_deadline_seconds,
            "template": {
                "metadata": {"labels": labels},
                "spec": {
                    "restartPolicy": "Never",
                    "automountServiceAccountToken": False,
                    "securityContext": {
                        "runAsNonRoot": True,
                        "runAsUser": resources.RUN_AS,
                        "runAsGroup": resources.RUN_AS,
                        "fsGroup": resources.RUN_AS,
                        "seccompProfile": {"type": "RuntimeDefault"},
                    },
                    "containers": [
                        {
                            "name": CONTAINER,
                            "image": image,
                            "command": spec.command(name),
                            "env": [
                                {"name": key, "value": value}
                                for key, value in spec.environment(namespace, name).items()
                            ],
                            "terminationMessagePath": RESULT_FILE,
                            "terminationMessagePolicy": "File",
                            "resources": resources.container_resources(spec.resources),
                            "securityContext": resources.CONTAINER_SECURITY,
                            "volumeMounts": mounts,
                        }
                    ],
                    "volumes": volumes,
                },
            },
        },
    }
    kopf.append_owner_reference(body, owner=dict(owner))  # type: ignore[arg-type]
    return body


def finished(job_body: Mapping[str, Any]) -> str | None:
    """'Complete' or 'Failed' once the Job finished, else None."""
    status = job_body.get("status") or {}
    for condition in status.get("conditions") or []:
        if condition.get("type") in ("Complete", "Failed") and condition.get("status") == "True":
            return str(condition["type"])
    if int(status.get("succeeded") or 0) > 0:
        return "Complete"
    if int(status.get("failed") or 0) > 0:
        return "Failed"
    return None


def _by_age(pods: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Oldest first, by creation time (the API lists pods by name, whose suffix is random)."""
    return sorted(pods, key=lambda pod: str((pod.get("metadata") or {}).get("creationTimestamp") or ""))


def _disrupted(pod: dict[str, Any]) -> bool:
    """Taken away by the cluster (eviction, drain, preemption): the podFailurePolicy ignores it."""
    conditions = (pod.get("status") or {}).get("conditions") or []
    return any(c.get("type") == "DisruptionTarget" and c.get("status") == "True" for c in conditions)


def pod_trouble(pods: list[dict[str, Any]]) -> str | None:
    """What befell the Job's last pod (evicted, OOMKilled), for a Job that ended without a verdict:
    its termination message then is the kubelet's, if any, and names neither. Pods the cluster took
    away are not the Job's failure (podFailurePolicy): the newest other one says."""
    counted = [pod for pod in _by_age(pods) if not _disrupted(pod)]
    for pod in counted[-1:]:
        status = pod.get("status") or {}
        said = (
            [f"pod {status['reason']}: {status.get('message') or ''}".rstrip(": ")]
            if status.get("reason")
            else []
        )
        for container in status.get("containerStatuses") or []:
            terminated = (container.get("state") or {}).get("terminated") or {}
            if container.get("name") == CONTAINER and terminated.get("reason") not in (
                None,
                "Completed",
                "Error",
            ):
                said.append(f"container {terminated['reason']}, exit code {terminated.get('exitCode')}")
        if said:
            return "; ".join(said)
    return None


_STARTING = ("ContainerCreating", "PodInitializing")
"""A container's waiting reasons on its way to start: not trouble."""
_MAX_WAITING_MESSAGE = 300
"""Characters of the kubelet's or the scheduler's message kept (an image pull's can be long)."""


def pod_waiting(pods: list[dict[str, Any]]) -> tuple[str, str] | None:
    """Why the Job's newest pod has not started, as the scheduler (PodScheduled False:
    Unschedulable, a claim that does not exist) or the kubelet (the quantize container waiting:
    ImagePullBackOff, CreateContainerConfigError for a missing Secret) says: (reason, message)."""
    for pod in _by_age(pods)[-1:]:
        status = pod.get("status") or {}
        for condition in status.get("conditions") or []:
            if condition.get("type") == "PodScheduled" and condition.get("status") == "False":
                message = str(condition.get("message") or "")[:_MAX_WAITING_MESSAGE]
                return str(condition.get("reason") or "Unschedulable"), message
        for container in status.get("containerStatuses") or []:
            waiting = (container.get("state") or {}).get("waiting") or {}
            if container.get("name") == CONTAINER and waiting.get("reason") not in (None, *_STARTING):
                return str(waiting["reason"]), str(waiting.get("message") or "")[:_MAX_WAITING_MESSAGE]
    return None


def exit_status(pods: list[dict[str, Any]]) -> str | None:
    """How the quantize container of the Job's last pod (not one the cluster took away) exited with
    an error, for a Job without a verdict: a crash (a segfault: exit code 139, SIGSEGV) writes none.
    Other reasons (OOMKilled) `pod_trouble` says."""
    counted = [pod for pod in _by_age(pods) if not _disrupted(pod)]
    for pod in counted[-1:]:
        for container in (pod.get("status") or {}).get("containerStatuses") or []:
            terminated = (container.get("state") or {}).get("terminated") or {}
            code = terminated.get("exitCode")
            if container.get("name") == CONTAINER and terminated.get("reason") == "Error" and code:
                named = _signal_name(code)
                return f"exit code {code}" + (f", {named}" if named else "")
    return None


def _signal_name(exit_code: int) -> str | None:
    """The signal a shell-style exit code above 128 stands for (137: SIGKILL)."""
    try:
        return signal.Signals(int(exit_code) - 128).name if int(exit_code) > 128 else None
    except ValueError:
        return None


def termination_message(pods: list[dict[str, Any]]) -> str | None:
    """The quantize container's termination message in the newest pod that has one."""
    for pod in reversed(_by_age(pods)):
        for container in (pod.get("status") or {}).get("containerStatuses") or []:
            terminated = (container.get("state") or {}).get("terminated") or {}
            if container.get("name") == CONTAINER and terminated.get("message"):
                return str(terminated["message"])
    return None


Event = tuple[str, str, bool]
"""(reason, message, warning)."""


@dataclass(frozen=True)
class Outcome:
    status: dict[str, Any] | None
    """status.quantize to write (None: remove it)."""
    produced: dict[str, Any] | None
    """status.quantizedArtifact to write (None: remove it)."""
    event: Event | None = None
    """(reason, message, warning) to post, once, on a change."""
    cancelled: Event | None = None
    """The Job of the section this one replaced: deleted, or (a Warning) left running."""


def published(uri: str, job_id: str, quantize: QuantizeSpec) -> dict[str, Any]:
    """status.quantizedArtifact of a passing Job: its artifact, with the target it was published to
    and that target's pull secret. The servers fetch it with that secret until another Job passes,
    whatever spec.quantize.target says meanwhile (a new target's secret may not read the old
    registry)."""
    produced: dict[str, Any] = {"uri": uri, "job": job_id, "target": quantize.target}
    if quantize.pull_secret:
        produced["pullSecret"] = quantize.pull_secret
    return produced


async def _owned_job(
    kube: Kube, body: Mapping[str, Any], job_id: str, section_hash: str
) -> dict[str, Any] | None:
    """The Job `job_id`, if it runs the section `section_hash` for this model (its labels and owner
    say so). Any other Job of that name is not this model's business."""
    metadata = body["metadata"]
    found = await kube.get_job(metadata.get("namespace", "default"), job_id)
    labels = ((found or {}).get("metadata") or {}).get("labels") or {}
    owners = ((found or {}).get("metadata") or {}).get("ownerReferences") or []
    ours = (
        labels.get("app.kubernetes.io/instance") == metadata["name"]
        and labels.get(f"{crd.GROUP}/quantize") == section_hash
        and any(owner.get("uid") == metadata.get("uid") for owner in owners)
    )
    return found if ours else None


async def _cancel_superseded(
    kube: Kube, body: Mapping[str, Any], previous: Mapping[str, Any] | None
) -> Event | None:
    """Delete the Job of a section changed or removed while it ran, as Argo Rollouts aborts the
    analysis of a replaced revision: its verdict would be read by no one, and a quantization holds
    its CPU and memory for minutes. The event that says so (None when nothing ran)."""
    if not previous or previous.get("state") != RUNNING or not previous.get("job"):
        return None
    job_id = str(previous["job"])
    try:
        running = await _owned_job(kube, body, job_id, str(previous.get("hash")))
        if running is None:
            return None
        namespace = body["metadata"].get("namespace", "default")
        await kube.delete_job(namespace, job_id, str(running["metadata"]["uid"]))
    except PortError as exc:  # RBAC from an older chart, the API down: it runs to its end, unread
        return (
            "QuantizeJobNotCancelled",
            f"Job {job_id} of the previous section could not be cancelled and runs on ({exc})",
            True,
        )
    return ("QuantizeJobCancelled", f"Job {job_id} of the previous section was cancelled", False)


def _started_message(job_id: str, quantize: QuantizeSpec, name: str) -> str:
    return f"Job {job_id} quantizes {quantize.model} into {quantize.output(name)}"


def _while_running(
    previous: dict[str, Any],
    produced: dict[str, Any] | None,
    waiting: tuple[str, str] | None,
    started: str,
) -> Outcome:
    """A running Job whose pod has not started (an image that cannot be pulled, a Secret or claim
    missing, no node fits) would read Running until its deadline: status.quantize says why (and
    `waiting` the reason), and a Warning posts once per reason; once the pod starts, it says so no
    more."""
    reason = waiting[0] if waiting else None
    if reason == previous.get("waiting"):
        return Outcome(previous, produced)
    if waiting is None:
        return Outcome(
            {**{k: v for k, v in previous.items() if k != "waiting"}, "message": started}, produced
        )
    said = f"Job {previous['job']} has not started: {reason}" + (f": {waiting[1]}" if waiting[1] else "")
    return Outcome(
        {**previous, "waiting": reason, "message": said}, produced, ("QuantizeJobNotStarted", said, True)
    )


async def _finished_already(kube: Kube, namespace: str, job_id: str) -> bool:
    """Whether the Job of this name, there before we created it, had finished: a section reverted to,
    whose outcome is old news. One still running is the Job this operator created on a tick whose
    status write was lost (or its own, left running when the section changed): its verdict is news."""
    existing = await kube.get_job(namespace, job_id)
    return existing is not None and finished(existing) is not None


async def step(kube: Kube, body: Mapping[str, Any], now: float) -> Outcome:
    """What spec.quantize asks of this tick (see the module docstring). Raises InvalidSpec and
    PortError; the status is then left as it was."""
    metadata, status = body["metadata"], body.get("status") or {}
    spec_section = dict(body.get("spec") or {})
    previous: dict[str, Any] | None = status.get("quantize")
    produced: dict[str, Any] | None = status.get("quantizedArtifact")
    quantize = QuantizeSpec.from_spec(spec_section)
    if quantize is None:
        return Outcome(None, None, cancelled=await _cancel_superseded(kube, body, previous))
    name, namespace = metadata["name"], metadata.get("namespace", "default")
    job_id = job_name(name, quantize.hash)
    if previous is None or previous.get("hash") != quantize.hash:
        image = apply_defaults(crd.spec_schema(), spec_section)["image"]
        created = await kube.create_job(
            namespace, job(quantize, name=name, namespace=namespace, image=image, owner=body)
        )
        found = not created and await _finished_already(kube, namespace, job_id)
        message = _started_message(job_id, quantize, name)
        if found:  # the section was reverted to, or removed and added again: its Job stands
            message = (
                f"Job {job_id} of this section exists already: followed, not run again "
                "(change the section to run another)"
            )
        cancelled = await _cancel_superseded(kube, body, previous)
        started: dict[str, Any] = {"job": job_id, "hash": quantize.hash, "state": RUNNING, "message": message}
        if found:
            started["found"] = True  # its outcome, read next, is recorded without an event: no news
        started["startedAt"] = to_timestamp(now)
        return Outcome(
            started,
            produced,
            ("QuantizeJobFound" if found else "QuantizeJobCreated", message, False),
            cancelled,
        )
    if previous.get("state") != RUNNING:
        return Outcome(previous, produced)
    recorded = str(previous.get("job") or job_id)
    # after an upgrade that named Jobs otherwise, the one still running is followed, not started again
    current = await _owned_job(kube, body, recorded, quantize.hash) if recorded != job_id else None
    if current is not None:
        job_id = recorded  # the name an older operator gave it
    else:
        current = await kube.get_job(namespace, job_id)
    previous = {**previous, "job": job_id}
    if current is None:  # deleted while it ran: run it again
        image = apply_defaults(crd.spec_schema(), spec_section)["image"]
        await kube.create_job(
            namespace, job(quantize, name=name, namespace=namespace, image=image, owner=body)
        )
        return Outcome(previous, produced)
    outcome = finished(current)
    pods = await kube.job_pods(namespace, job_id)
    if outcome is None:
        return _while_running(previous, produced, pod_waiting(pods), _started_message(job_id, quantize, name))
    text = termination_message(pods)
    done = {
        **{k: v for k, v in previous.items() if k not in ("found", "waiting")},
        "finishedAt": to_timestamp(now),
    }
    found = bool(previous.get("found"))  # a reverted-to section's Job: its outcome is no news
    result: Verdict | str
    if text is None:
        conditions = (current.get("status") or {}).get("conditions") or []
        why = next(
            (c.get("message") or c.get("reason") for c in conditions if c.get("type") == "Failed"), None
        )
        crashed = exit_status(pods)
        result = (
            f"{outcome.lower()} without a verdict"
            + (f": {why}" if why else "")
            + (f" (its container: {crashed})" if crashed else "")
            # the deadline came for a pod that never started (the Job controller deleted it)
            + (f" (its pod never started: {previous['waiting']})" if previous.get("waiting") else "")
        )
    else:
        result = read_result(text)
    if isinstance(result, str):
        trouble = pod_trouble(pods)
        done.update(
            state=ERROR, message=f"Job {job_id} failed: {result}" + (f" ({trouble})" if trouble else "")
        )
        return Outcome(done, produced, None if found else ("QuantizeJobFailed", done["message"], True))
    done.update(metric=result.metric, value=result.value, threshold=result.threshold)
    if not result.passed:
        done.update(
            state=GATE_FAILED, message=f"accuracy gate failed: {result.describe()}; nothing rolled out"
        )
        return Outcome(done, produced, None if found else (GATE_FAILED, done["message"], True))
    done.update(state=PASSED, artifact=result.artifact)
    done["message"] = f"accuracy gate passed: {result.describe()}; {result.artifact} becomes the canary"
    produced = published(str(result.artifact), job_id, quantize)
    if result.int8_flags is not None:  # for spec.placement.matchGateHardware
        produced["int8Flags"] = list(result.int8_flags)
    if result.shadow_disagreement is not None:  # the burn its canary should read (spec.shadow_disagreement)
        produced["shadowDisagreement"] = result.shadow_disagreement
    return Outcome(done, produced, None if found else ("GatePassed", done["message"], False))
