"""The QuantizedModel CRD: a valid apiextensions/v1 object whose schema accepts the examples,
rejects what cannot work, and whose defaults mean what the operator reads. jsonschema is not the
API server: its structural rules, pruning and CEL rules are tested in
tests/integration/operator/test_crd_apiserver_rules.py."""

from __future__ import annotations

import copy
import re
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml

from quantship import slo
from quantship.operator import crd, crd_uris
from quantship.operator.spec import InvalidSpec, ModelSpec, apply_defaults
from quantship.rollout import OnInconclusive
from quantship.rollout.analysis import MORE_SAMPLES
from quantship.server.settings import MAX_SLI_CPU_BUDGET

ROOT = Path(__file__).resolve().parents[3]
EXAMPLES = ROOT / "manifests" / "examples"
VALIDATOR = jsonschema.Draft4Validator(crd.schema())  # OpenAPI v3.0 schemas use draft 4's booleans


def examples() -> list[dict[str, Any]]:
    documents = []
    for path in sorted(EXAMPLES.glob("*.yaml")):
        documents += [doc for doc in yaml.safe_load_all(path.read_text()) if doc and doc["kind"] == crd.KIND]
    return documents


def readme_examples() -> list[dict[str, Any]]:
    """The QuantizedModels shown in README.md's yaml blocks."""
    blocks = (ROOT / "README.md").read_text().split("```yaml\n")[1:]
    documents = [yaml.safe_load(block.split("```")[0]) for block in blocks]
    return [doc for doc in documents if isinstance(doc, dict) and doc.get("kind") == crd.KIND]


def minimal() -> dict[str, Any]:
    return {
        "apiVersion": crd.API_VERSION,
        "kind": crd.KIND,
        "metadata": {"name": "digits", "namespace": "ml"},
        "spec": {"artifact": {"uri": "https://models.example.com/digits.tar.gz"}},
    }


def test_the_crd_is_a_valid_apiextensions_v1_object_with_status_and_short_name() -> None:
    definition = crd.definition()
    kubernetes_validate.validate(definition, "1.30", strict=True)
    version = definition["spec"]["versions"][0]
    assert version["subresources"] == {"status": {}}
    assert definition["spec"]["names"]["shortNames"] == ["qm"]
    columns = [column["jsonPath"] for column in version["additionalPrinterColumns"]]
    assert {".status.phase", ".status.weight", ".status.accuracyDelta", ".metadata.creationTimestamp"} <= set(
        columns
    )


def test_every_example_validates_and_reads_into_a_spec() -> None:
    found = examples()
    assert len(found) >= 2
    for example in found:
        VALIDATOR.validate(example)
        spec = ModelSpec.from_resource(example)
        assert spec.model == "digits" and len(spec.revision) == 10


def test_the_readme_shows_a_resource_the_crd_accepts() -> None:
    shown = readme_examples()
    assert shown, "README.md shows a QuantizedModel"
    for example in shown:
        VALIDATOR.validate(example)
        assert ModelSpec.from_resource(example).rollout.steps == (25, 50, 100)


def test_defaults_of_the_schema_are_what_the_operator_acts_on() -> None:
    spec = ModelSpec.from_resource(minimal())

    assert spec.replicas == 2 and spec.router == "replicas" and spec.port == 8080
    assert spec.rollout.steps == (5, 25, 50, 100)
    assert spec.rollout.step_interval == 60 and spec.rollout.progress_deadline == 600
    analysis = spec.rollout.analysis
    assert (analysis.short_window, analysis.long_window) == (60, 300)
    assert analysis.burn_rate_threshold == 1 and analysis.min_samples == 100
    assert analysis.on_inconclusive is OnInconclusive.ROLLBACK
    budgets = {objective.sli: objective.budget for objective in spec.rollout.objectives}
    assert budgets == {
        slo.SLI.ACCURACY_DELTA: 0.005,
        slo.SLI.LATENCY: 0.01,
        slo.SLI.ERRORS: 0.001,
        slo.SLI.CLIP_RATE: 0.001,
    }
    defaulted = apply_defaults(crd.spec_schema(), minimal()["spec"])
    VALIDATOR.validate({**minimal(), "spec": defaulted})


def with_spec(path: str, value: Any) -> dict[str, Any]:
    resource = minimal()
    *parents, last = path.split(".")
    node = resource["spec"]
    for part in parents:
        node = node.setdefault(part, {})
    if value is DELETE:
        node.pop(last, None)
    else:
        node[last] = value
    return resource


DELETE = object()


@pytest.mark.parametrize(
    ("path", "value", "complaint"),
    [
        ("artifact", DELETE, "'artifact' is a required property"),
        # a URI the servers cannot fetch is a CEL rule's (test_crd_apiserver_rules.py); its length is not
        ("artifact.uri", "https://" + "m" * crd_uris.MAX_URI_CHARS, "is too long"),
        ("replicas", 0, "less than the minimum"),
        ("rollout.steps", [5, 150], "greater than the maximum"),
        ("rollout.steps", [], "should be non-empty"),
        ("rollout.stepInterval", "1 minute", "does not match"),
        ("traffic.router", "istio", "is not one of"),
        ("slos.maxAccuracyDelta", 0, "less than or equal to the minimum"),
        ("slos.maxClipRate", 1.5, "greater than the maximum"),
        ("slos.latency", {"thresholdSeconds": 0.3}, "is not one of"),
        ("slos.latency", {"objective": 1}, "greater than or equal to the maximum"),
        ("analysis.onInconclusive", "ignore", "is not one of"),
        ("analysis.failureLimit", 0, "less than the minimum"),
        ("analysis.prometheusUrl", "prometheus:9090", "does not match"),
        ("server.shadowRate", 2, "greater than the maximum"),
        ("server.sliCpuBudget", -1, "less than the minimum"),
        ("server.canarySliCpuBudget", -0.5, "less than the minimum"),
        ("server.canarySliCpuBudget", MAX_SLI_CPU_BUDGET + 1, "greater than the maximum"),
        ("server.perTensorMetrics", "yes", "is not of type 'boolean'"),
        ("server.capture", {}, "'claimName' is a required property"),
        ("server.capture", {"claimName": "Captures"}, "does not match"),  # a PVC's name: DNS-1123
        ("server.capture", {"claimName": "c" * 254}, "is too long"),
        ("server.capture", {"claimName": "captures", "maxSamples": 0}, "less than the minimum"),
        ("server.capture", {"claimName": "captures", "maxBytes": 0}, "less than the minimum"),
        ("server.capture", {"claimName": "captures", "maxSamples": 1.5}, "is not of type 'integer'"),
        ("server.capture", {"claimName": "captures", "flushSeconds": -1}, "less than the minimum"),
    ],
)
def test_the_schema_rejects_a_resource_that_cannot_work(path: str, value: Any, complaint: str) -> None:
    with pytest.raises(jsonschema.ValidationError) as caught:
        VALIDATOR.validate(with_spec(path, value))
    assert complaint in str(caught.value)


@pytest.mark.parametrize(
    ("path", "value", "complaint"),
    [
        ("analysis.shortWindow", "10m", "windows must satisfy 0 < short < long"),
        ("rollout.steps", [50, 25], "step weights must increase"),
        ("traffic.router", "gateway-api", "httpRoute is required"),
        # label names are not checked by the CRD (a CEL rule over a map's keys would cost too much)
        ("analysis.labels", {"k8s-namespace": "prod"}, "is not a Prometheus label name"),
        ("analysis.labels", {"__name__": "up"}, "names starting with __ are Prometheus' own"),
        ("analysis.labels", {"model": "digits"}, "is set by the operator"),
        ("resources", {"limits": {"gpu": 1}}, "'gpu' is not a container resource"),
        ("resources", {"limits": {"cpu": "1"}, "requests": {"cpu": "1500m"}}, "the request 1500m is more"),
        ("resources", {"limits": {"nvidia.com/gpu": "500m"}}, "an extended resource is a whole number"),
        ("resources", {"requests": {"nvidia.com/gpu": 1}}, "an extended resource's request needs an equal"),
        ("resources", {"limits": {"hugepages-2Mi": "4Mi"}}, "hugepages need a cpu or memory"),
        (
            "resources",
            {"limits": {"hugepages-2Mi": "3Mi", "memory": "1Gi"}},
            "3Mi is not a whole number of pages",
        ),
        ("resources", {"limits": {"node.kubernetes.io/x": 1}}, "is not a container resource"),
    ],
)
def test_a_spec_the_schema_cannot_catch_is_refused_with_the_reason(
    path: str, value: Any, complaint: str
) -> None:
    with pytest.raises(InvalidSpec, match=complaint):
        ModelSpec.from_resource(with_spec(path, value))


def test_a_resource_admitted_before_the_crd_checked_its_name_is_refused_with_the_reason() -> None:
    """The CRD now refuses such names; an object stored before that must not loop on the API
    server's refusal of its Services."""
    resource = minimal()
    resource["metadata"]["name"] = "digits.v2"
    with pytest.raises(
        InvalidSpec, match=re.escape("metadata.name 'digits.v2' cannot name the model's Services")
    ):
        ModelSpec.from_resource(resource)


def test_the_revision_follows_what_the_servers_run_not_the_rollout_settings() -> None:
    """Each field that makes a new revision is one the schema declares: the API server prunes any
    other, and the revision, hashed over what it kept, could never follow it."""
    base = ModelSpec.from_resource(minimal()).revision
    same = [
        with_spec("replicas", 5),
        with_spec("rollout.steps", [50, 100]),
        with_spec("slos.maxClipRate", 0.01),
    ]
    different = {
        "artifact.uri": "https://models.example.com/digits-v2.tar.gz",
        "image": "ghcr.io/quantship/quantship:0.2.0",
        "server.maxBatchSize": 8,
        "server.perTensorMetrics": True,
        "server.capture": {"claimName": "captures"},
    }
    assert {ModelSpec.from_resource(resource).revision for resource in same} == {base}
    for path, value in different.items():
        node = crd.spec_schema()
        for part in path.split("."):
            assert part in node.get("properties", {}), f"{path}: pruned by the API server"
            node = node["properties"][part]
        assert ModelSpec.from_resource(with_spec(path, value)).revision != base, path


def test_the_manifest_carries_the_generated_crd() -> None:
    assert (EXAMPLES.parents[1] / "manifests" / "crd.yaml").read_text() == crd.render()
    assert yaml.safe_load(crd.render()) == copy.deepcopy(crd.definition())


def test_every_spec_field_a_verdicts_hint_names_is_in_the_crd() -> None:
    """A verdict with too few samples tells the deployer which fields give more: they must exist."""
    named = {path for hint in MORE_SAMPLES.values() for path in re.findall(r"spec(?:\.\w+)+", hint)}
    assert {"spec.server.canarySliCpuBudget", "spec.replicas"} <= named
    for path in named:
        node = crd.spec_schema()
        for part in path.split(".")[1:]:
            assert part in node.get("properties", {}), path
            node = node["properties"][part]


@pytest.mark.parametrize("pattern", ["^it's$", "^a\nb$", "^a\rb$"])
def test_a_pattern_a_cel_raw_string_cannot_hold_is_refused_when_the_crd_is_built(pattern: str) -> None:
    """cel-go's raw string ends at the first quote and holds no line break (CEL.g4); cel-python reads
    \\' inside one as an escape. Either would turn the rule into another one, or none."""
    with pytest.raises(ValueError, match="a CEL raw string cannot hold"):
        crd_uris.matches_rule(pattern)
