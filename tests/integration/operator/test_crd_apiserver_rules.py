"""The QuantizedModel CRD under the rules a real kube-apiserver applies (apiserver_rules.py): a
structural schema, defaults that validate and satisfy every CEL rule, rules that compile with a
real CEL implementation, examples admitted unchanged, invalid objects refused with one clear
message. The structural check itself is held to the real Gateway API CRDs, which API servers
accept, and to one violation per rule, which it must refuse."""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import apiserver_rules as rules
import cel_rules
import pytest
import yaml

from quantship import oci
from quantship.operator import crd, crd_rules, crd_uris, fetch, names, resources
from quantship.operator.spec import InvalidSpec, ModelSpec
from quantship.rollout import Track

ROOT = rules.REPOSITORY
SCHEMA = crd.schema()
ARTIFACT_URI = crd_uris.ARTIFACT_URI.message
"""What the API server answers a spec.artifact.uri that is no URI the servers can fetch."""
OLD_CRD_FRAGMENT = {  # the shape the API server refused (commit 1bdab33, manifests/crd.yaml)
    "type": "object",
    "properties": {
        "spec": {
            "type": "object",
            "properties": {"router": {"type": "string"}},
            "additionalProperties": False,
        }
    },
}


def with_defaults(node: Mapping[str, Any], path: str = "spec") -> Iterator[tuple[str, Mapping[str, Any]]]:
    if "default" in node:
        yield path, node
    for sub, sub_path in rules._children(node, path):
        yield from with_defaults(sub, sub_path)


def quantized_models() -> list[tuple[str, dict[str, Any]]]:
    """Every QuantizedModel the repository shows a user: manifests/examples/ and README.md."""
    found = []
    for path in sorted((ROOT / "manifests" / "examples").glob("*.yaml")):
        for document in yaml.safe_load_all(path.read_text()):
            if document and document.get("kind") == crd.KIND:
                found.append((path.name, document))
    for block in (ROOT / "README.md").read_text().split("```yaml\n")[1:]:
        document = yaml.safe_load(block.split("```")[0])
        if isinstance(document, dict) and document.get("kind") == crd.KIND:
            found.append(("README.md", document))
    return found


def minimal(**spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": crd.API_VERSION,
        "kind": crd.KIND,
        "metadata": {"name": "digits", "namespace": "ml"},
        "spec": {"artifact": {"uri": "https://models.example.com/digits.tar.gz"}, **spec},
    }


# -- structural -----------------------------------------------------------------------------------


def test_the_generated_crd_and_both_rendered_copies_are_structural() -> None:
    assert rules.structural_errors(SCHEMA) == []
    for path in (ROOT / "manifests" / "crd.yaml", ROOT / "helm" / "quantship" / "templates" / "crd.yaml"):
        text = path.read_text()
        body = "\n".join(line for line in text.splitlines() if not line.startswith("{{"))
        assert rules.structural_errors(rules.crd_schema(yaml.safe_load(body))) == [], path


def test_the_structural_check_accepts_the_gateway_api_crds_real_api_servers_accept() -> None:
    if not rules.GATEWAY_API.is_dir():
        pytest.skip(f"no Gateway API CRDs at {rules.GATEWAY_API} (data outside the repository)")
    definitions = rules.load_gateway_api()
    assert len(definitions) == 4, sorted(definitions)
    checked = 0
    for name, definition in definitions.items():
        for version in definition["spec"]["versions"]:
            assert rules.structural_errors(version["schema"]["openAPIV3Schema"]) == [], (
                name,
                version["name"],
            )
            checked += 1
    assert checked >= 8


def obj(**properties: Any) -> dict[str, Any]:
    return {"type": "object", "properties": properties}


STRING = {"type": "string"}
ANY_OF_WITH_TYPE = {**obj(a=STRING), "anyOf": [{"type": "object", "required": ["a"]}]}
ANY_OF_UNKNOWN = {**obj(a=STRING), "anyOf": [{"properties": {"b": {"enum": ["x"]}}}]}
MAP_LIST_KEY_OPTIONAL = {
    "type": "array",
    "x-kubernetes-list-type": "map",
    "x-kubernetes-list-map-keys": ["k"],
    "items": obj(k=STRING),
}


@pytest.mark.parametrize(
    ("rule", "schema"),
    [
        ("S2", OLD_CRD_FRAGMENT),
        ("S1", obj(spec={"properties": {"a": STRING}})),
        ("S3", obj(s={"type": "array", "items": STRING, "uniqueItems": True})),
        ("S3", obj(s={"$ref": "#/definitions/x", "type": "object"})),
        ("S3", {"type": "object", "patternProperties": {"^a": STRING}}),
        ("S4", obj(s=ANY_OF_WITH_TYPE)),
        ("S4", obj(s=ANY_OF_UNKNOWN)),
        ("S4", obj(s={"anyOf": rules.INT_OR_STRING})),  # types in anyOf without the extension
        (
            "S4",
            obj(s={"x-kubernetes-int-or-string": True, "anyOf": [{"type": "integer"}, {"type": "boolean"}]}),
        ),
        ("S5", obj(s={"type": "object", "x-kubernetes-preserve-unknown-fields": False})),
        ("S6", obj(s={"type": "array"})),
        ("S6", obj(s=MAP_LIST_KEY_OPTIONAL)),
        ("S7", obj(metadata=obj(labels={"type": "object"}))),
        ("S8", obj(s={"type": "integer", "enum": [1, "two"]})),
        ("S9", obj(s={**obj(a=STRING), "default": {"b": 1}})),
        ("S9", obj(s={**obj(a=STRING), "required": ["a"], "default": {}})),
        ("S10", obj(s={"type": "object", "x-kubernetes-validations": [{"rule": " "}]})),
        ("S11", {"type": "object", "additionalProperties": STRING}),
    ],
)
def test_the_structural_check_refuses_each_violation(rule: str, schema: dict[str, Any]) -> None:
    errors = rules.structural_errors(schema)
    assert any(error.startswith(f"{rule} ") for error in errors), errors


def test_the_structural_check_allows_int_or_string_its_own_anyof() -> None:
    """What apiextensions allows with x-kubernetes-int-or-string (and controller-gen writes for a
    resource.Quantity): types in anyOf, directly or as allOf's first item."""
    direct = {"x-kubernetes-int-or-string": True, "anyOf": rules.INT_OR_STRING, "pattern": "^[0-9]+m?$"}
    nested = {"x-kubernetes-int-or-string": True, "allOf": [{"anyOf": rules.INT_OR_STRING}, {"maxLength": 8}]}
    assert rules.structural_errors(obj(a=direct, b=nested)) == []


# -- CEL --------------------------------------------------------------------------------------------


def test_every_validation_rule_compiles_with_a_real_cel_implementation() -> None:
    found = [rule["rule"] for _, rule, _ in rules.rules_at(SCHEMA, rules.apply_defaults(minimal(), SCHEMA))]
    assert {crd_rules.GATEWAY_NEEDS_ROUTE["rule"], crd_rules.WINDOWS_IN_ORDER["rule"]} <= set(found)
    for rule in found:
        cel_rules.compile_rule(rule)


def test_every_default_is_valid_and_holds_under_every_cel_rule_before_and_after_nested_defaults() -> None:
    checked = []
    for path, node in with_defaults(SCHEMA["properties"]["spec"]):
        default = node["default"]
        assert rules.first_error(node, default) is None, path
        assert rules.cel_errors(node, default) == [], path  # the API server checks the bare default
        assert rules.cel_errors(node, rules.apply_defaults(copy.deepcopy(default), node)) == [], path
        checked.append(path)
    assert {"spec.traffic", "spec.analysis", "spec.slos.latency"} <= set(checked)


def test_every_example_is_admitted_unchanged_and_reads_into_a_spec() -> None:
    found = quantized_models()
    assert {name for name, _ in found} >= {"digits-gateway.yaml", "digits-replicas.yaml", "README.md"}
    for name, example in found:
        assert rules.prune_resource(example, SCHEMA) == example, f"{name}: fields the API server would drop"
        stored, errors = rules.admit(SCHEMA, example)
        assert errors == [], name
        assert ModelSpec.from_resource(stored).model == "digits"


def test_server_side_defaults_are_the_ones_the_operator_fills_in_itself() -> None:
    stored, errors = rules.admit(SCHEMA, minimal())
    assert errors == []
    from quantship.operator.spec import apply_defaults

    assert stored["spec"] == apply_defaults(crd.spec_schema(), minimal()["spec"])
    assert stored["spec"]["placement"] == {"matchGateHardware": False}, "not pinned unless asked"
    assert ModelSpec.from_resource(stored) == ModelSpec.from_resource(minimal())


@pytest.mark.parametrize(
    ("spec", "complaint"),
    [
        ({"traffic": {"router": "gateway-api"}}, "traffic.httpRoute is required"),
        ({"analysis": {"shortWindow": "10m"}}, "longWindow must be longer than analysis.shortWindow"),
        ({"analysis": {"shortWindow": "1h", "longWindow": "30m"}}, "longWindow must be longer"),
        ({"traffic": {"router": "istio"}}, "'istio' is not one of"),
        ({"replicas": 0}, "less than the minimum of 1"),
        ({"rollout": {"steps": []}}, "should be non-empty"),
        ({"rollout": {"stepInterval": "1 minute"}}, "does not match"),
        ({"slos": {"latency": {"objective": 1}}}, "greater than or equal to the maximum"),
        ({"artifact": {"uri": "s3://bucket/model"}}, ARTIFACT_URI),
        ({"placement": {"matchGateHardware": "yes"}}, "'yes' is not of type 'boolean'"),
        # What the operator's children would carry, refused by Kubernetes after the resource was admitted:
        ({"modelName": "digits-"}, "does not match"),  # the pods' `model` label
        ({"modelName": "digits\n"}, "does not match"),  # Go's $ is the end of the text; Python's is not
        ({"resources": {"limits": {"cpu": "lots"}}}, "does not match"),  # not a resource.Quantity
        ({"resources": {"limits": {"cpu": "500m", "memory": 2**30}}, "replicas": "two"}, "is not of type"),
        ({"image": "ghcr.io/quantship/quantship:0.1.0 "}, "does not match"),  # the Pod refuses spaces
        ({"artifact": {"uri": "pvc://../models/digits"}}, ARTIFACT_URI),  # no such claim name
        ({"artifact": {"uri": "pvc://models/../secrets"}}, ARTIFACT_URI),  # out of the claim
        ({"artifact": {"uri": "oci://r/x:1", "pullSecret": "s" * 254}}, "is too long"),
        # a reference oras reads as naming another registry: the pull secret's credentials went there
        ({"artifact": {"uri": "oci://r.io//evil.example:5000/x:1"}}, ARTIFACT_URI),
        ({"artifact": {"uri": "oci://r.io/evil.example:5000/x:1"}}, ARTIFACT_URI),
        ({"artifact": {"uri": "oci://r.io/ml/digits:"}}, ARTIFACT_URI),
        # no tag nor digest: every pull of the servers' init container refuses it (no `latest` read in)
        ({"artifact": {"uri": "oci://r.io/ml/digits"}}, ARTIFACT_URI),
        ({"artifact": {"uri": "oci://r.io:5000/digits"}}, ARTIFACT_URI),
        ({"resources": {"requests": {"memory": "-1Gi"}}}, "does not match"),  # negative
        ({"resources": {"limits": {"cpu": -1}}}, "less than the minimum of 0"),
        ({"analysis": {"longWindow": "99999h"}}, "does not match"),  # past Prometheus' durations
        # admitted, the operator marked these InvalidSpec
        ({"rollout": {"steps": [50, 25, 100]}}, "rollout.steps must increase"),
        ({"rollout": {"steps": [25, 25, 100]}}, "rollout.steps must increase"),
        ({"rollout": {"steps": [*range(1, 19), 20, 19]}}, "rollout.steps must increase"),  # the last pair
        ({"rollout": {"stepInterval": "0s"}}, "rollout.stepInterval must be longer than 0s"),
        ({"rollout": {"progressDeadline": "0h0m"}}, "rollout.progressDeadline must be longer than 0s"),
        ({"analysis": {"shortWindow": "0m"}}, "analysis.shortWindow must be longer than 0s"),
        # spec.server.capture: the Deployment's volume names the claim; the bounds are the CLI's
        ({"server": {"capture": {"claimName": "captures/x"}}}, "does not match"),
        ({"server": {"capture": {"maxSamples": 10}}}, "'claimName' is a required property"),
        ({"server": {"capture": {"claimName": "captures", "maxBytes": 0}}}, "less than the minimum of 1"),
        ({"server": {"capture": {"claimName": "captures", "flushSeconds": -0.5}}}, "less than the minimum"),
        ({"server": {"perTensorMetrics": 1}}, "is not of type 'boolean'"),
    ],
)
def test_an_object_that_cannot_work_is_refused_with_one_clear_reason(
    spec: dict[str, Any], complaint: str
) -> None:
    resource = minimal()
    for key, value in spec.items():
        resource["spec"][key] = (
            {**resource["spec"].get(key, {}), **value} if isinstance(value, dict) else value
        )
    _, errors = rules.admit(SCHEMA, resource)
    assert len(errors) == 1 and complaint in errors[0], errors  # no anyOf noise beside it


URI_FIELDS = (
    "artifact.uri",
    "quantize.model",
    "quantize.calibration",
    "quantize.evaluation",
    "quantize.target.uri",
)


def spec_field(dotted: str) -> dict[str, Any]:
    node = SCHEMA["properties"]["spec"]
    for name in dotted.split("."):
        node = node["properties"][name]
    return dict(node)


@pytest.mark.parametrize(
    "uri",
    ["s3://bucket/model", "models/digits.tar.gz", "", "oci://r.io/ml/digits", "pvc://models/../secrets"],
)
def test_a_uri_the_servers_cannot_fetch_is_refused_in_words_not_with_a_regex(uri: str) -> None:
    """A `pattern` answered `spec.artifact.uri in body should match '^((file|http|https)://.+|...'`,
    500 characters of regex; the CEL rule's message says what is taken. The API server prints a
    field's pattern error beside its rules' messages: no URI field keeps one."""
    _, errors = rules.admit(SCHEMA, minimal(artifact={"uri": uri}))
    assert errors == [f"self.spec.artifact.uri: {ARTIFACT_URI}"]
    assert "^(" not in errors[0] and "[a-z0-9]" not in errors[0]
    assert not [field for field in URI_FIELDS if "pattern" in spec_field(field)]


@pytest.mark.parametrize(
    "uri",
    [
        "file:///models/digits",
        "file:///models/digits.tar.gz",
        "pvc://models",
        "pvc://models.v2/digits/..v2/./int8",
        "http://models.example.com/digits.tar.gz",
        "https://models.example.com:8443/digits.tar.gz?sig=x#y",
        "oci://r.io/ml/digits:v1",
        "oci://r.io:5000/ml/digits@sha256:" + "a" * 64,
        "oci://r.io/ml/digits:v1@sha256:" + "a" * 64,
        "oci://[::1]:5000/ml/digits:v1",
        "oci://docker.io/digits:v1",
    ],
)
def test_every_form_of_uri_the_servers_fetch_is_admitted(uri: str) -> None:
    """file://, pvc:// (a claim, or a path in it), http(s):// and oci:// with a tag, a digest or both."""
    _, errors = rules.admit(SCHEMA, minimal(artifact={"uri": uri}))
    assert errors == []
    if uri.startswith("oci://"):
        oci.Reference.parse(uri)
    else:
        fetch.source_path(uri, Path("/mnt/pvc"))


def test_every_matches_rule_is_within_the_api_servers_cost_limits() -> None:
    """The API server refuses a CRD whose rule's estimated cost passes 10,000,000 (100,000,000 for
    all): a URI field's matches() would cost 39-55 million without its maxLength."""
    costs = rules.matches_costs(SCHEMA["properties"]["spec"], "spec")
    assert {f"spec.{field}" for field in URI_FIELDS} <= set(costs)
    assert max(costs.values()) <= rules.STATIC_ESTIMATED_COST_LIMIT, costs
    assert sum(costs.values()) <= rules.STATIC_ESTIMATED_CRD_COST_LIMIT, costs
    for field in URI_FIELDS:
        unbounded = {key: value for key, value in spec_field(field).items() if key != "maxLength"}
        assert rules.matches_costs(unbounded)[""] > rules.STATIC_ESTIMATED_COST_LIMIT, field


@pytest.mark.parametrize(
    "name",
    ["digits.v2", "Digits", "9digits", "digits-", "d" * (names.MAX_NAME_LENGTH + 1)],
)
def test_a_name_that_cannot_name_the_models_services_is_refused(name: str) -> None:
    """A custom resource's name may be any DNS-1123 subdomain; NAME and NAME-REVISION must also be
    Services' names (DNS-1035 labels)."""
    resource = minimal()
    resource["metadata"]["name"] = name
    _, errors = rules.admit(SCHEMA, resource)
    assert errors and all(repr(name) in error for error in errors), errors


def test_the_longest_name_admitted_names_services_kubernetes_admits() -> None:
    resource = minimal()
    resource["metadata"]["name"] = "d" * names.MAX_NAME_LENGTH
    stored, errors = rules.admit(SCHEMA, resource)
    assert errors == []
    spec = ModelSpec.from_resource(stored)
    for revision in (spec.revision, None):
        service = resources.service(
            spec, revision, {"apiVersion": "v1", "kind": "X", "metadata": {"name": "o", "uid": "1"}}
        )
        assert rules.object_errors(service) == []
    assert len(resources.child_name(spec, spec.revision)) == 63


@pytest.mark.parametrize("port", [1, 8080, 8082, 65535, names.GRPC_PORT])
def test_a_traffic_port_is_admitted_only_where_the_models_services_can_carry_it(port: int) -> None:
    """The Services carry spec.traffic.port and the gRPC port: one number twice is refused by the
    API server (ValidateService), so the CRD refuses it first, and the operator for a resource stored
    before it did."""
    owner = {"apiVersion": "v1", "kind": "X", "metadata": {"name": "o", "uid": "1"}}
    admitted, _ = rules.admit(SCHEMA, minimal())
    spec = dataclasses.replace(ModelSpec.from_resource(admitted), port=port)
    service_errors = rules.object_errors(resources.service(spec, None, owner))
    _, errors = rules.admit(SCHEMA, minimal(traffic={"port": port}))
    if port != names.GRPC_PORT:
        assert errors == [] and service_errors == []
        return
    assert any("spec.ports[1]: Duplicate value" in error for error in service_errors), service_errors
    assert any(crd_rules.PORT_NOT_GRPC["message"] in error for error in errors), errors
    stored_before_the_rule = copy.deepcopy(admitted)
    stored_before_the_rule["spec"]["traffic"]["port"] = port
    with pytest.raises(InvalidSpec, match=r"traffic\.port must not be 8081"):
        ModelSpec.from_resource(stored_before_the_rule)


def test_unknown_fields_are_pruned_by_the_server_and_maps_are_kept() -> None:
    resource = minimal(replica=3, traffic={"router": "replicas", "weight": 5})
    stored, errors = rules.admit(SCHEMA, resource)
    assert errors == []
    assert "replica" not in stored["spec"] and "weight" not in stored["spec"]["traffic"]
    labelled = minimal(analysis={"labels": {"namespace": "prod"}}, resources={"limits": {"cpu": "1"}})
    stored, errors = rules.admit(SCHEMA, labelled)
    assert errors == []
    assert stored["spec"]["analysis"]["labels"] == {"namespace": "prod"}
    assert stored["spec"]["resources"] == {"limits": {"cpu": "1"}}


def test_the_chart_template_and_the_manifest_carry_the_same_crd() -> None:
    manifest = yaml.safe_load((ROOT / "manifests" / "crd.yaml").read_text())
    template = (ROOT / "helm" / "quantship" / "templates" / "crd.yaml").read_text()
    lines = template.splitlines()
    assert lines[1] == "{{- if .Values.crds.enabled }}" and lines[-1] == "{{- end }}"
    chart = yaml.safe_load("\n".join(lines[2:-1]))
    assert chart["metadata"].pop("annotations") == crd.KEEP_POLICY
    assert chart == manifest == crd.definition()


def test_paths_are_read_from_the_repository() -> None:
    assert (Path(rules.__file__).parents[3] / "pyproject.toml").is_file()


# -- the pod rules themselves -----------------------------------------------------------------------


def capturing_pod() -> dict[str, Any]:
    """The pod of a Deployment the operator makes, with a capture and a pvc:// artifact."""
    resource = minimal(
        artifact={"uri": "pvc://models/digits/v2"}, server={"capture": {"claimName": "captures"}}
    )
    spec = ModelSpec.from_resource(resource)
    owner = {"apiVersion": crd.API_VERSION, "kind": crd.KIND, "metadata": {"name": "digits", "uid": "u"}}
    body = resources.deployment(spec, spec.revision, Track.STABLE, 1, owner)
    return copy.deepcopy(body["spec"]["template"]["spec"])


@pytest.mark.parametrize(
    ("mount", "complaints"),
    [
        ({"name": "nowhere", "mountPath": "/elsewhere"}, ["volumeMount 'nowhere': Not found"]),
        # one report, at the later mount, as ValidateVolumeMounts' set of seen paths gives
        ({"name": "tmp", "mountPath": "/tmp"}, ["mountPath '/tmp' must be unique"]),
        ({"name": "tmp", "mountPath": "/x/../etc"}, ["mountPath '/x/../etc' must not contain '..'"]),
        (
            {"name": "tmp", "mountPath": "/x", "subPath": "a", "subPathExpr": "$(POD_NAME)"},
            ["subPathExpr and subPath are mutually exclusive"],
        ),
        ({"name": "tmp", "mountPath": "/x", "subPath": "", "subPathExpr": "$(POD_NAME)"}, []),  # len(...) > 0
        ({"name": "tmp", "mountPath": "/x", "subPath": "/abs"}, ["subPath '/abs' must be a relative path"]),
        (
            {"name": "tmp", "mountPath": "/x", "subPathExpr": "/abs/$(POD_NAME)"},
            ["subPathExpr '/abs/$(POD_NAME)' must be a relative path"],
        ),
        (
            {"name": "tmp", "mountPath": "/x", "subPathExpr": "../../$(POD_NAME)"},
            ["subPathExpr '../../$(POD_NAME)' must not contain '..'"],
        ),
        ({"name": "tmp", "mountPath": "/x", "subPath": "a/..b/c"}, []),  # a name, not a step up
    ],
)
def test_the_pod_rules_refuse_each_bad_mount_as_the_api_server_does(
    mount: dict[str, Any], complaints: list[str]
) -> None:
    pod = capturing_pod()
    assert rules.pod_spec_errors(pod) == [], "the operator's own pod is admitted"
    pod["containers"][0]["volumeMounts"].append(mount)
    assert rules.pod_spec_errors(pod) == [f"container server: {complaint}" for complaint in complaints]
