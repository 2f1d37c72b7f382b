"""The Helm chart under the real helm binary: it lints strictly, and everything it renders (with the
default values and with every feature on) is valid Kubernetes: built-in kinds against the API
schemas (kubernetes-validate --strict, oldest and newest supported version), the example
QuantizedModel against the CRD's schema and CEL rules, the PrometheusRule's rules under promtool.
No schema of the Prometheus Operator's kinds installs offline here: ServiceMonitor and PodMonitor
get the field checks a review would make. RBAC is compared with the calls the operator's code
makes."""

from __future__ import annotations

import ipaddress
import json
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import cel_rules
import click
import jsonschema
import kubernetes_validate
import pytest
import yaml

from quantship import cli, generate
from quantship.local.prometheus import find_binary
from quantship.oncall import links, rules
from quantship.operator import OperatorSettings, names, permissions, resources
from quantship.operator.spec import InvalidSpec, ModelSpec
from quantship.rollout import Track

pytestmark = pytest.mark.helm

CHART = generate.ROOT / "helm" / "quantship"
NAMESPACE = "quantship"
KUBERNETES_VERSIONS = ("1.25", kubernetes_validate.latest_version())
MONITORING_APIS = ("ServiceMonitor", "PodMonitor", "PrometheusRule")
MONITORS = {
    "serviceMonitor": "ServiceMonitor",
    "podMonitor": "PodMonitor",
    "prometheusRule": "PrometheusRule",
}
ALL_FEATURES = {
    "monitoring": {value: {"enabled": True, "labels": {"release": "prometheus"}} for value in MONITORS},
    "operator": {"namespaces": ["ml", "prod"], "verbose": True},
    "grafana": {
        "url": "https://grafana.example.org/",
        "dashboards": {"annotations": {"grafana_folder": "quantship"}},
    },
    "alerts": {"runbookUrl": "https://wiki.example.org/quantship/runbooks"},
    "example": {"enabled": True, "namespace": "ml"},
}


@pytest.fixture(scope="module")
def helm() -> str:
    binary = find_binary("helm")
    assert binary, "helm is missing: run scripts/install-tools (make setup does)"
    return binary


@pytest.fixture(scope="module")
def all_features(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("values") / "all-features.yaml"
    path.write_text(yaml.safe_dump(ALL_FEATURES))
    return path


def run_helm(helm: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([helm, *args], capture_output=True, text=True, timeout=60)


def render(helm: str, *args: str) -> list[dict[str, Any]]:
    result = run_helm(
        helm, "template", "quantship", str(CHART), "--namespace", NAMESPACE, "--include-crds", *args
    )
    assert result.returncode == 0, result.stderr
    return [document for document in yaml.safe_load_all(result.stdout) if document]


def kinds(documents: list[dict[str, Any]]) -> list[str]:
    return sorted(document["kind"] for document in documents)


def one(documents: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    found = [document for document in documents if document["kind"] == kind]
    assert len(found) == 1, f"{len(found)} {kind}s"
    return found[0]


def assert_valid(documents: list[dict[str, Any]]) -> None:
    """Built-in kinds: kubernetes-validate --strict. QuantizedModel: the CRD's schema and CEL rules.
    Prometheus Operator kinds: the fields their v1 API has, with valid durations."""
    crd = one(documents, "CustomResourceDefinition")
    for document in documents:
        if document["apiVersion"] == "monitoring.coreos.com/v1":
            assert_monitoring_fields(document)
        elif document["kind"] == "QuantizedModel":
            schema = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
            jsonschema.Draft4Validator(schema).validate(document)
            assert all(_cel_rules_hold(schema, document)), document["spec"]
        else:
            for version in KUBERNETES_VERSIONS:
                kubernetes_validate.validate(document, version, strict=True)


ENDPOINT = {"port", "path", "interval", "honorLabels"}
MONITORING_FIELDS = {
    "ServiceMonitor": ({"selector", "namespaceSelector", "endpoints"}, "endpoints", ENDPOINT),
    "PodMonitor": ({"selector", "namespaceSelector", "podMetricsEndpoints"}, "podMetricsEndpoints", ENDPOINT),
    "PrometheusRule": ({"groups"}, "groups", {"name", "rules"}),
}
DURATION = re.compile(r"^(([0-9]+)h)?(([0-9]+)m)?(([0-9]+)s)?$")


def assert_monitoring_fields(document: dict[str, Any]) -> None:
    spec_fields, list_field, item_fields = MONITORING_FIELDS[document["kind"]]
    assert set(document) == {"apiVersion", "kind", "metadata", "spec"}
    assert set(document["spec"]) <= spec_fields and list_field in document["spec"], document["spec"].keys()
    for item in document["spec"][list_field]:
        assert set(item) <= item_fields, item.keys()
        assert DURATION.match(item.get("interval", "1m")), item


# -- lint and validity ---------------------------------------------------------------------------


def test_chart_lints_strictly_with_default_and_all_feature_values(helm: str, all_features: Path) -> None:
    for args in ((), ("--values", str(all_features))):
        result = run_helm(helm, "lint", "--strict", str(CHART), *args)
        assert result.returncode == 0, result.stdout + result.stderr


def test_default_render_is_valid_and_leaves_out_what_the_cluster_cannot_serve(helm: str) -> None:
    documents = render(helm)
    assert_valid(documents)
    assert kinds(documents) == sorted(
        ["CustomResourceDefinition", "ServiceAccount", "ClusterRole", "ClusterRole", "ClusterRoleBinding",
         "ClusterRoleBinding", "Deployment", "Service", "ConfigMap", "ConfigMap", "ConfigMap"]
    )  # fmt: skip


def test_all_features_render_is_valid(helm: str, all_features: Path) -> None:
    documents = render(helm, "--values", str(all_features))
    assert_valid(documents)
    for kind in (*MONITORING_APIS, "QuantizedModel"):
        one(documents, kind)
    bindings = [document for document in documents if document["kind"] == "RoleBinding"]
    assert sorted(binding["metadata"]["namespace"] for binding in bindings) == ["ml", "prod"]


def test_monitoring_objects_follow_the_api_the_cluster_serves(helm: str) -> None:
    apis = [arg for kind in MONITORING_APIS for arg in ("--api-versions", f"monitoring.coreos.com/v1/{kind}")]
    assert set(kinds(render(helm, *apis))) >= set(MONITORING_APIS)
    off = [
        arg
        for kind in ("serviceMonitor", "podMonitor", "prometheusRule")
        for arg in ("--set", f"monitoring.{kind}.enabled=false")
    ]
    assert not set(kinds(render(helm, *apis, *off))) & set(MONITORING_APIS)


def test_values_schema_refuses_a_root_or_writable_operator(helm: str) -> None:
    for setting in ("podSecurityContext.runAsNonRoot=false", "securityContext.readOnlyRootFilesystem=false"):
        result = run_helm(helm, "template", "quantship", str(CHART), "--set", setting)
        assert (
            result.returncode != 0 and "values don't meet the specifications of the schema" in result.stderr
        )


# -- what the objects say ------------------------------------------------------------------------


def test_operator_runs_as_non_root_on_a_read_only_root_with_resources_probes_and_metrics(helm: str) -> None:
    deployment = one(render(helm), "Deployment")
    pod = deployment["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert pod["securityContext"]["runAsNonRoot"] and pod["securityContext"]["runAsUser"] > 0
    assert container["securityContext"]["readOnlyRootFilesystem"]
    assert not container["securityContext"]["allowPrivilegeEscalation"]
    assert container["securityContext"]["capabilities"]["drop"] == ["ALL"]
    assert container["resources"]["requests"] and container["resources"]["limits"]["memory"]
    ports = {port["name"]: port["containerPort"] for port in container["ports"]}
    for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
        assert container[probe]["httpGet"]["port"] in ports
    assert {volume["name"]: volume for volume in pod["volumes"]}["tmp"]["emptyDir"]
    assert deployment["spec"]["replicas"] == 1 and deployment["spec"]["strategy"]["type"] == "Recreate"
    # every flag the chart passes is one `quantship operator` takes
    options = {opt for param in cli.main.commands["operator"].params for opt in param.opts}
    assert "--standalone" in container["args"]
    for arg in container["args"]:
        assert arg.split("=", 1)[0] in options, arg
    service = one(render(helm), "Service")
    assert service["spec"]["ports"][0]["targetPort"] == "metrics"


def test_dashboards_ship_as_sidecar_configmaps_with_the_generated_json(helm: str, all_features: Path) -> None:
    maps = [
        document
        for document in render(helm, "--values", str(all_features))
        if document["kind"] == "ConfigMap"
    ]
    assert len(maps) == 3
    for config_map in maps:
        assert config_map["metadata"]["labels"]["grafana_dashboard"] == "1"
        assert config_map["metadata"]["annotations"] == {"grafana_folder": "quantship"}
        ((key, text),) = config_map["data"].items()
        name = key.removeprefix("quantship-").removesuffix(".json")
        assert json.loads(text) == json.loads((generate.ROOT / "dashboards" / f"{name}.json").read_text())


def test_prometheusrule_holds_the_generated_rules_with_this_installs_links(
    helm: str, all_features: Path, tmp_path: Path
) -> None:
    rule = one(render(helm, "--values", str(all_features)), "PrometheusRule")
    assert rule["metadata"]["labels"]["release"] == "prometheus"
    expected = (generate.ROOT / "manifests" / "prometheus-rules.yaml").read_text()
    expected = expected.replace(links.GRAFANA_URL, "https://grafana.example.org")
    expected = expected.replace(links.RUNBOOK_URL, "https://wiki.example.org/quantship/runbooks")
    assert rule["spec"] == yaml.safe_load(expected)
    promtool = find_binary("promtool")
    assert promtool, "promtool is missing: run scripts/install-tools"
    spec = tmp_path / "spec.yaml"
    spec.write_text(yaml.safe_dump(rule["spec"]))
    result = subprocess.run(
        [promtool, "check", "rules", str(spec)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_per_model_drift_thresholds_render_as_the_rules_module_writes_them(
    helm: str, all_features: Path, tmp_path: Path
) -> None:
    own = {"digits": {"overall": 0.08}, "effnet": {"overall": 0.01, "tensor": 0.2}}
    rule = one(
        render(
            helm, "--values", str(all_features), "--set-json", f"alerts.driftThresholds={json.dumps(own)}"
        ),
        "PrometheusRule",
    )
    groups = {group["name"]: group["rules"] for group in rule["spec"]["groups"]}
    assert groups[rules.THRESHOLD_GROUP] == rules.threshold_rules(own)
    spec = tmp_path / "spec.yaml"
    spec.write_text(yaml.safe_dump(rule["spec"]))
    promtool = find_binary("promtool")
    assert promtool, "promtool is missing: run scripts/install-tools"
    checked = subprocess.run(
        [promtool, "check", "rules", str(spec)], capture_output=True, text=True, timeout=60
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr
    refused = run_helm(helm, "template", "q", str(generate.ROOT / "helm" / "quantship"),
                       "--set-json", 'alerts.driftThresholds={"digits": {"overall": "high"}}')  # fmt: skip
    assert refused.returncode != 0 and "driftThresholds" in refused.stderr


def test_podmonitor_scrapes_the_servers_the_operator_creates(helm: str, all_features: Path) -> None:
    from quantship.operator import resources

    pod_monitor = one(render(helm, "--values", str(all_features)), "PodMonitor")
    selector = pod_monitor["spec"]["selector"]["matchLabels"]
    # labels the operator puts on every model server pod (quantship/operator/resources.py)
    server_labels = {"app.kubernetes.io/name": "quantship-server", **resources.MANAGED_BY}
    assert selector.items() <= server_labels.items()
    assert pod_monitor["spec"]["podMetricsEndpoints"][0]["port"] == "http"
    assert pod_monitor["spec"]["namespaceSelector"] == {"matchNames": ["ml", "prod"]}


def test_servicemonitor_keeps_the_namespace_the_operator_labels_its_series_with(
    helm: str, all_features: Path
) -> None:
    """Without honorLabels, the scrape's `namespace` (the operator's own) replaces each model's."""
    service_monitor = one(render(helm, "--values", str(all_features)), "ServiceMonitor")
    (endpoint,) = service_monitor["spec"]["endpoints"]
    assert endpoint["honorLabels"] is True and endpoint["port"] == "metrics"


# -- least privilege -----------------------------------------------------------------------------

VERBS = {
    "read": "get",
    "get": "get",
    "create": "create",
    "patch": "patch",
    "delete": "delete",
    "list": "list",
    "replace": "update",
}
BUILTIN = {
    ("apps", "deployment"): ("apps", "deployments"),
    ("core", "service"): ("", "services"),
    ("core", "pod"): ("", "pods"),
    ("batch", "job"): ("batch", "jobs"),
}


def operator_calls() -> Iterator[tuple[str, str, str]]:
    """(group, resource, verb) of each Kubernetes API call in quantship/operator/."""
    call = re.compile(
        r"\b(apps|core|batch|custom)\.(read|get|create|patch|delete|list|replace)_namespaced_(\w+?)"
        r"(_status)?(?:_without_preload_content)?\((.{0,120})",
        re.DOTALL,
    )
    for source in sorted((generate.ROOT / "quantship" / "operator").glob("*.py")):
        for api, verb, kind, status, args in call.findall(source.read_text()):
            if api == "custom":
                group, resource = (
                    ("gateway.networking.k8s.io", "httproutes")
                    if "GATEWAY" in args
                    else ("serving.quantship.io", "quantizedmodels")
                )
            else:
                group, resource = BUILTIN[(api, kind)]
            yield group, resource + ("/status" if status else ""), VERBS[verb]


def test_the_operator_code_makes_exactly_the_calls_its_permissions_list() -> None:
    found = set(operator_calls())
    assert found, "found no API calls in quantship/operator"
    assert found == set(permissions.OPERATOR)


def granted(documents: list[dict[str, Any]]) -> dict[str | None, set[permissions.Permission]]:
    """What the operator's ServiceAccount may do, per scope: None for cluster-wide (a
    ClusterRoleBinding), else the namespace of a RoleBinding."""
    roles = {
        document["metadata"]["name"]: {
            (group, resource, verb)
            for rule in document["rules"]
            for group in rule["apiGroups"]
            for resource in rule["resources"]
            for verb in rule["verbs"]
        }
        for document in documents
        if document["kind"] in ("ClusterRole", "Role")
    }
    scopes: dict[str | None, set[permissions.Permission]] = {}
    for document in documents:
        if document["kind"] not in ("ClusterRoleBinding", "RoleBinding"):
            continue
        assert [subject["name"] for subject in document["subjects"]] == ["quantship-operator"]
        scope = document["metadata"]["namespace"] if document["kind"] == "RoleBinding" else None
        scopes.setdefault(scope, set()).update(roles[document["roleRef"]["name"]])
    return scopes


def chart_args(documents: list[dict[str, Any]]) -> list[str]:
    (container,) = one(documents, "Deployment")["spec"]["template"]["spec"]["containers"]
    return list(container["args"])


def test_cluster_wide_rbac_grants_exactly_what_the_operator_and_kopf_call(helm: str) -> None:
    documents = render(helm)
    assert "--standalone" in chart_args(documents)  # so no peering
    in_namespaces, cluster_scope = permissions.needed(clusterwide=True, peering=False)
    assert granted(documents) == {None: set(in_namespaces | cluster_scope)}


def test_namespaced_rbac_grants_nothing_cluster_wide_and_no_namespaces(helm: str) -> None:
    documents = render(helm, "--set", "operator.namespaces={ml,prod}")
    args = chart_args(documents)
    assert "--standalone" in args and {"--namespace=ml", "--namespace=prod"} <= set(args)
    in_namespaces, cluster_scope = permissions.needed(clusterwide=False, peering=False)
    assert cluster_scope == frozenset()
    assert granted(documents) == {"ml": set(in_namespaces), "prod": set(in_namespaces)}
    assert not any(resource == "namespaces" for _, resource, _ in in_namespaces)


def test_the_owner_of_every_child_that_blocks_its_deletion_grants_updating_its_finalizers(helm: str) -> None:
    """OwnerReferencesPermissionEnforcement refuses a blockOwnerDeletion reference to an owner whose
    finalizers the client may not update: every create of a child would be 403 there."""
    owner = {"apiVersion": "serving.quantship.io/v1alpha1", "kind": "QuantizedModel",
             "metadata": {"name": "digits", "namespace": "ml", "uid": "1"}}  # fmt: skip
    spec = ModelSpec.from_resource({**owner, "spec": {"artifact": {"uri": "file:///models/digits"}}})
    children = [
        resources.service(spec, None, owner),
        resources.deployment(spec, spec.revision, Track.STABLE, 1, owner),
    ]
    assert all(child["metadata"]["ownerReferences"][0]["blockOwnerDeletion"] for child in children)
    for scopes in (granted(render(helm)), granted(render(helm, "--set", "operator.namespaces={ml}"))):
        for grants in scopes.values():
            assert ("serving.quantship.io", "quantizedmodels/finalizers", "update") in grants


def test_peering_needs_its_own_grants_which_the_standalone_chart_leaves_out() -> None:
    for clusterwide in (True, False):
        alone = permissions.needed(clusterwide=clusterwide, peering=False)
        peered = permissions.needed(clusterwide=clusterwide, peering=True)
        extra = (peered[0] - alone[0]) | (peered[1] - alone[1])
        assert {resource for _, resource, _ in extra} == (
            {"clusterkopfpeerings"} if clusterwide else {"kopfpeerings"}
        )


# -- the CRD: a template, upgraded and kept --------------------------------------------------------


def test_the_crd_is_a_template_in_install_and_upgrade_and_survives_uninstall(helm: str) -> None:
    """Helm installs files under crds/ once and never upgrades them: the CRD is a template, so
    `helm upgrade` applies schema changes; resource-policy keep leaves it (and every
    QuantizedModel) in place on `helm uninstall`."""
    from quantship.operator import crd

    assert not (CHART / "crds").exists()
    expected = crd.definition()
    expected["metadata"]["annotations"] = dict(crd.KEEP_POLICY)
    for mode in ("--install", "--is-upgrade"):
        args = () if mode == "--install" else (mode,)
        result = run_helm(helm, "template", "quantship", str(CHART), "--namespace", NAMESPACE, *args)
        assert result.returncode == 0, result.stderr
        documents = [document for document in yaml.safe_load_all(result.stdout) if document]
        assert one(documents, "CustomResourceDefinition") == expected, mode
    off = render(helm, "--set", "crds.enabled=false")
    assert "CustomResourceDefinition" not in kinds(off)


def test_the_example_model_is_created_after_the_crd_by_a_hook(helm: str, all_features: Path) -> None:
    example = one(render(helm, "--values", str(all_features)), "QuantizedModel")
    assert example["metadata"]["annotations"]["helm.sh/hook"] == "post-install"  # an upgrade re-creating
    # it would delete its Deployments with it, and any edit of its artifact


def test_values_the_operator_or_the_crd_would_refuse_are_refused_by_the_chart(helm: str) -> None:
    """What `helm install` admits must not crash-loop the operator or fail the example's hook."""
    tick = next(param for param in cli.main.commands["operator"].params if param.name == "tick_interval")
    assert isinstance(tick.type, click.FloatRange)
    schema = json.loads((CHART / "values.schema.json").read_text())
    assert schema["properties"]["operator"]["properties"]["tickInterval"]["minimum"] == tick.type.min
    model_name = schema["definitions"]["modelName"]
    assert model_name == {
        "type": "string",
        "pattern": names.DNS_1035_LABEL,
        "maxLength": names.MAX_NAME_LENGTH,
    }
    refused = [
        ("--set-json", "operator.tickInterval=0.05"),
        ("--set-string", "example.name=9digits"),
        ("--set-string", f"example.name={'d' * (names.MAX_NAME_LENGTH + 1)}"),
        *EXAMPLES_THE_CRD_REFUSES,
    ]
    for flag, setting in refused:
        result = run_helm(helm, "template", "quantship", str(CHART), flag, setting)
        assert result.returncode != 0 and "don't meet the specifications of the schema" in result.stderr, (
            setting
        )


def test_extra_env_takes_string_values_and_value_from_and_refuses_a_number(helm: str) -> None:
    """`--set operator.extraEnv[0].value=4` rendered `value: 4`, which the API server refuses (an
    EnvVar's value is a string) after Helm created the rest of the release."""
    name = ("--set", "operator.extraEnv[0].name=WORKERS")
    result = run_helm(
        helm, "template", "quantship", str(CHART), *name, "--set", "operator.extraEnv[0].value=4"
    )
    assert result.returncode != 0 and "operator.extraEnv.0.value: Invalid type" in result.stderr, (
        result.stderr
    )
    documents = render(
        helm, *name, "--set-string", "operator.extraEnv[0].value=4",
        "--set", "operator.extraEnv[1].name=POD",
        "--set", "operator.extraEnv[1].valueFrom.fieldRef.fieldPath=metadata.name",
    )  # fmt: skip
    assert_valid(documents)
    container = one(documents, "Deployment")["spec"]["template"]["spec"]["containers"][0]
    assert container["env"] == [
        {"name": "WORKERS", "value": "4"},
        {"name": "POD", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
    ]


@pytest.mark.parametrize(
    ("setting", "refusal"),
    [
        (("--set", "operator.extraEnv[0].valueFrom.fieldRef.fieldPath=metadata.name",
          "--set-string", "operator.extraEnv[0].value=x"), "extraEnv.0.value: String length"),
        (("--set", "operator.extraEnv[0].valueFrom.other=x"), "Additional property other"),
        (("--set-string", "operator.serverBindAddress=localhost"), "serverBindAddress"),
    ],
)  # fmt: skip
def test_settings_the_api_server_or_the_operator_refuse_are_refused_at_render(
    helm: str, setting: tuple[str, ...], refusal: str
) -> None:
    """An EnvVar with a value beside its valueFrom, or a valueFrom of no known source, is refused by
    the API server after the rest of the release is made; a bind address that is no IP address makes
    the operator exit at start (crash loop)."""
    result = run_helm(
        helm, "template", "quantship", str(CHART), "--set", "operator.extraEnv[0].name=A", *setting
    )
    assert result.returncode != 0 and refusal in result.stderr, result.stderr


@pytest.mark.parametrize(
    "address",
    ["::", "::1", "fd00::1", "::ffff:10.0.0.1", "0.0.0.0", "10.0.0.1", "localhost", "10.0.0.1.5",
     "999.999.999.999", "10.0.0.1:80", ":", ":::", "1:2:3:4:5:6:7:8:9", "fe80::1%eth0"],
)  # fmt: skip
def test_the_chart_takes_a_server_bind_address_exactly_when_the_operator_does(
    helm: str, address: str
) -> None:
    result = run_helm(
        helm, "template", "quantship", str(CHART), "--set-string", f"operator.serverBindAddress={address}"
    )
    if _operator_takes(address):
        assert result.returncode == 0, result.stderr
    else:
        assert result.returncode != 0 and "serverBindAddress" in result.stderr, result.stderr


def _operator_takes(address: str) -> bool:
    """What --server-bind-address takes: an IP address, unscoped."""
    try:
        ipaddress.ip_address(address)
    except ValueError:
        return False
    return "%" not in address


EXAMPLES_THE_CRD_REFUSES = [
    ("--set", "example.replicas=101"),
    ("--set-string", "example.stepInterval=99999h"),
    ("--set-string", "example.image=my image:1"),
    ("--set-json", f"example.steps={list(range(1, 22))}"),
    ("--set-string", "example.prometheusUrl=http://"),
]


def test_example_values_the_crd_refuses_are_refused_by_the_chart_and_the_crd_agrees(helm: str) -> None:
    """example.* becomes the example model's spec: a value the chart admitted and the API server
    refused failed `helm install` in its post-install hook, after everything else was created."""
    documents = render(helm, "--set", "example.enabled=true")
    schema = one(documents, "CustomResourceDefinition")["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    for flag, setting in EXAMPLES_THE_CRD_REFUSES:
        result = run_helm(helm, "template", "quantship", str(CHART), flag, setting)
        assert "don't meet the specifications of the schema" in result.stderr, setting
        example = one(documents, "QuantizedModel")
        field, _, value = setting.partition("=")
        model = {
            **example,
            "spec": {**example["spec"], **example_spec(field.removeprefix("example."), value)},
        }
        assert crd_admits(schema, example)
        assert not crd_admits(schema, model), f"the CRD admits {setting}"


@pytest.mark.parametrize(
    ("uri", "admitted"),
    [
        ("ftp://models.example.com/digits.tar.gz", False),
        ("pvc://Models/digits", False),  # a claim's name is lower-case
        ("oci://registry.example.com/ml/digits", False),  # no tag nor digest
        ("", False),
        ("file:///models/digits", True),
        ("pvc://models/digits/v1", True),
        ("https://models.example.com/digits/int8-v2.tar.gz", True),
        ("oci://registry.example.com/ml/digits:v2", True),
    ],
)
def test_an_example_artifact_uri_is_refused_in_the_crds_words_exactly_when_the_crd_refuses_it(
    helm: str, uri: str, admitted: bool
) -> None:
    """The values schema's `pattern` printed the CRD's 500-character regex (JSON Schema has no
    messages); the template says what `kubectl apply` would, from the rendered CRD's own rule."""
    documents = render(helm, "--set", "example.enabled=true")
    schema = one(documents, "CustomResourceDefinition")["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    (rule,) = schema["properties"]["spec"]["properties"]["artifact"]["properties"]["uri"][
        "x-kubernetes-validations"
    ]
    example = one(documents, "QuantizedModel")
    model = {**example, "spec": {**example["spec"], **example_spec("artifactUri", uri)}}
    assert crd_admits(schema, model) == admitted
    result = run_helm(
        helm, "template", "quantship", str(CHART), "--namespace", NAMESPACE, "--include-crds",
        "--set", "example.enabled=true", "--set-string", f"example.artifactUri={uri}",
    )  # fmt: skip
    if admitted:
        assert result.returncode == 0, result.stderr
        rendered = [document for document in yaml.safe_load_all(result.stdout) if document]
        assert one(rendered, "QuantizedModel")["spec"]["artifact"]["uri"] == uri
        assert_valid(rendered)
    else:
        assert result.returncode != 0
        assert f'example.artifactUri "{uri}" {rule["message"]}\n' in result.stderr, result.stderr
        assert "pattern" not in result.stderr


def crd_admits(schema: dict[str, Any], model: dict[str, Any]) -> bool:
    """The CRD's schema (jsonschema) and CEL rules (cel-python) hold on `model`, defaults left out
    (the API server's every check, defaults included: tests/integration/operator/apiserver_rules.py)."""
    return jsonschema.Draft4Validator(schema).is_valid(model) and all(_cel_rules_hold(schema, model))


def _cel_rules_hold(node: dict[str, Any], value: Any) -> Iterator[bool]:
    for rule in node.get("x-kubernetes-validations") or []:
        yield cel_rules.evaluate(rule["rule"], value) is True  # not False, nor an evaluation error
    properties = node.get("properties") or {}
    if isinstance(value, dict):
        for key, item in value.items():
            if key in properties:
                yield from _cel_rules_hold(properties[key], item)


def example_spec(value_name: str, value: str) -> dict[str, Any]:
    """The spec fields an example value becomes (templates/example-quantizedmodel.yaml)."""
    parsed = json.loads(value) if value_name in ("replicas", "steps") else value
    return {
        "replicas": {"replicas": parsed},
        "image": {"image": parsed},
        "artifactUri": {"artifact": {"uri": parsed}},
        "steps": {"rollout": {"steps": parsed}},
        "stepInterval": {"rollout": {"stepInterval": parsed}},
        "prometheusUrl": {"analysis": {"prometheusUrl": parsed}},
    }[value_name]


def test_an_example_from_a_private_registry_takes_its_pull_secret(helm: str) -> None:
    """A user trying the chart with their own oci:// artifact in a private registry could not give
    the example its pull secret (example.pullSecret was refused as an unknown value)."""
    uri = ("--set-string", "example.artifactUri=oci://registry.example.com/ml/digits:v2")
    documents = render(
        helm, "--set", "example.enabled=true", *uri, "--set-string", "example.pullSecret=regcred"
    )
    assert one(documents, "QuantizedModel")["spec"]["artifact"] == {
        "uri": "oci://registry.example.com/ml/digits:v2",
        "pullSecret": "regcred",
    }
    assert_valid(documents)
    without = one(render(helm, "--set", "example.enabled=true", *uri), "QuantizedModel")
    assert "pullSecret" not in without["spec"]["artifact"]
    refused = run_helm(
        helm, "template", "quantship", str(CHART), "--set", "example.enabled=true", *uri,
        "--set-string", "example.pullSecret=Reg_Cred",
    )  # fmt: skip
    assert refused.returncode != 0 and "example.pullSecret" in refused.stderr, refused.stderr


@pytest.mark.parametrize(
    ("setting", "refusal"),
    [
        ("example.steps={50,25}", "example.steps [50,25] must increase"),
        ("example.steps={25,25,100}", "example.steps [25,25,100] must increase"),
        ("example.stepInterval=0s", "example.stepInterval 0s must be longer than zero"),
        ("example.stepInterval=0h00m", "example.stepInterval 0h00m must be longer than zero"),
    ],
)
def test_example_values_the_operator_would_mark_invalid_are_refused_by_the_chart(
    helm: str, setting: str, refusal: str
) -> None:
    """The CRD admits them; the operator's ModelSpec refuses them (InvalidSpec), as checked here."""
    result = run_helm(
        helm, "template", "quantship", str(CHART), "--set", "example.enabled=true", "--set", setting
    )
    assert result.returncode != 0 and refusal in result.stderr, result.stderr
    model = one(render(helm, "--set", "example.enabled=true"), "QuantizedModel")
    field, _, value = setting.partition("=")
    value = value.replace("{", "[").replace("}", "]") if field == "example.steps" else value
    model["spec"] = {**model["spec"], **example_spec(field.removeprefix("example."), value)}
    with pytest.raises(InvalidSpec):
        ModelSpec.from_resource(model)


@pytest.mark.parametrize(
    ("settings", "refusal"),
    [
        (["--set", "operator.metricsPort=8081"], "operator.metricsPort and operator.healthPort must differ"),
        (
            ["--set", "operator.namespaces={ml}", "--set", "example.enabled=true"],
            "example.namespace quantship is not in operator.namespaces",
        ),
    ],
)
def test_values_that_would_leave_the_operator_crashing_or_the_example_unserved_are_refused(
    helm: str, settings: list[str], refusal: str
) -> None:
    """The operator would crash-loop on one port bound twice; an example model outside the served
    namespaces would never get a status, and nothing would say why."""
    result = run_helm(helm, "template", "quantship", str(CHART), "--namespace", NAMESPACE, *settings)
    assert result.returncode != 0
    assert refusal in result.stderr


LONGEST_RELEASE = "q" * 53  # helm's limit for a release name
DNS_1123_LABEL = "[a-z0-9]([-a-z0-9]*[a-z0-9])?"
DNS_1123_SUBDOMAIN = re.compile(rf"{DNS_1123_LABEL}(\.{DNS_1123_LABEL})*")
DNS_1035_LABEL = re.compile("[a-z]([-a-z0-9]*[a-z0-9])?")
RBAC_KINDS = {"ClusterRole", "ClusterRoleBinding", "Role", "RoleBinding"}


def name_error(document: dict[str, Any]) -> str | None:
    """What the API server says of an object's name (apimachinery's rule for its kind): a Service's
    is a DNS-1035 label, RBAC's a path segment, every other a DNS-1123 subdomain."""
    kind, name = document["kind"], document["metadata"]["name"]
    if kind == "Service":
        valid = len(name) <= 63 and DNS_1035_LABEL.fullmatch(name) is not None
    elif kind in RBAC_KINDS:
        valid = name not in ("", ".", "..") and not any(c in name for c in "/%")
    else:
        valid = len(name) <= 253 and DNS_1123_SUBDOMAIN.fullmatch(name) is not None
    return None if valid else f"{kind} {name!r}"


def assert_names_unique_and_valid(documents: list[dict[str, Any]]) -> None:
    keys = [(d["kind"], d["metadata"].get("namespace"), d["metadata"]["name"]) for d in documents]
    assert len(set(keys)) == len(keys), sorted(key for key in keys if keys.count(key) > 1)
    assert [error for document in documents if (error := name_error(document))] == []


@pytest.mark.parametrize(
    "mode", [["--set-json", "operator.namespaces=[]"], ["--set", "operator.namespaces={ml,prod}"]]
)
def test_every_object_has_its_own_valid_name_under_the_longest_release_name(
    helm: str, all_features: Path, mode: list[str]
) -> None:
    """A suffix cut off the name made `<53 chars>-operator-crds` the ClusterRole `<53 chars>-operator`."""
    result = run_helm(
        helm, "template", LONGEST_RELEASE, str(CHART), "--namespace", NAMESPACE, "--include-crds",
        "-f", str(all_features), *mode, "--set", "example.enabled=false",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    documents = [document for document in yaml.safe_load_all(result.stdout) if document]
    assert {"ClusterRole", "Service", "PodMonitor"} <= set(kinds(documents))
    assert_names_unique_and_valid(documents)


def test_a_dotted_release_name_gives_the_metrics_service_a_dns_1035_name(
    helm: str, all_features: Path
) -> None:
    """Helm takes `rel.v1` as a release name; a Service's name takes no dot."""
    result = run_helm(
        helm, "template", "rel.v1", str(CHART), "--namespace", NAMESPACE, "--include-crds",
        "-f", str(all_features), "--set", "example.enabled=false",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    documents = [document for document in yaml.safe_load_all(result.stdout) if document]
    assert one(documents, "Service")["metadata"]["name"] == "rel-v1-operator-metrics"
    assert_names_unique_and_valid(documents)


def test_a_release_name_a_service_cannot_take_is_refused_in_one_line(helm: str) -> None:
    result = run_helm(helm, "template", "1rel", str(CHART), "--namespace", NAMESPACE)
    assert result.returncode != 0
    assert "release name 1rel starts with a digit, which a Service's name cannot" in result.stderr


def test_dashboards_keep_three_names_under_the_longest_release_name_and_render_without_the_sidecar_label(
    helm: str,
) -> None:
    longest = LONGEST_RELEASE
    result = run_helm(
        helm, "template", longest, str(CHART), "--namespace", NAMESPACE,
        "--set", "grafana.dashboards.labels.grafana_dashboard=null",
        "--set", "grafana.dashboards.labels.dashboards=quantship",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    maps = [doc for doc in yaml.safe_load_all(result.stdout) if doc and doc["kind"] == "ConfigMap"]
    names = {config_map["metadata"]["name"] for config_map in maps}
    assert len(names) == 3 and all(len(name) <= 63 for name in names), names
    assert all(config_map["metadata"]["labels"]["dashboards"] == "quantship" for config_map in maps)
    assert all("grafana_dashboard" not in config_map["metadata"]["labels"] for config_map in maps)


def test_an_ipv6_bind_address_renders_as_an_argument(helm: str) -> None:
    documents = render(
        helm,
        "--set-string", "operator.bindAddress=::",
        "--set-string", "operator.serverBindAddress=::",
        "--set", "operator.namespaces={ml}",
    )  # fmt: skip
    assert_valid(documents)
    assert {"--bind-address=::", "--server-bind-address=::", "--namespace=ml"} <= set(chart_args(documents))


def test_metrics_and_health_listen_on_every_address_of_the_pod(helm: str) -> None:
    args = chart_args(render(helm))
    assert "--bind-address=0.0.0.0" in args
    assert f"--server-bind-address={OperatorSettings.server_bind_address}" in args, "IPv4-only kernels too"


# -- NOTES.txt -----------------------------------------------------------------------------------

NOTES_PROBE = """apiVersion: v1
kind: ConfigMap
metadata:
  name: notes
data:
  notes: {{ tpl (.Files.Get "notes-source.txt") . | quote }}
"""


def render_notes(helm: str, tmp_path: Path, *args: str) -> str:
    """NOTES.txt as `helm install` would print it: helm template leaves it out, so a copy of the
    chart renders it through `tpl` inside a ConfigMap."""
    import shutil

    chart = tmp_path / "chart"
    shutil.copytree(CHART, chart)
    shutil.copy(chart / "templates" / "NOTES.txt", chart / "notes-source.txt")
    (chart / "templates" / "notes-probe.yaml").write_text(NOTES_PROBE)
    result = run_helm(
        helm, "template", "quantship", str(chart), "--show-only", "templates/notes-probe.yaml", *args
    )
    assert result.returncode == 0, result.stderr
    return str(yaml.safe_load(result.stdout)["data"]["notes"])


def test_notes_say_how_to_roll_back_and_where_dashboards_and_alerts_appear(helm: str, tmp_path: Path) -> None:
    from quantship.operator import crd

    notes = render_notes(helm, tmp_path, "--set", "monitoring.prometheusRule.enabled=true")
    assert f"{crd.ABORT_ANNOTATION}=now" in notes and f"{crd.PROMOTE_ANNOTATION}=now" in notes
    for name in ("executive", "oncall", "debug"):
        title = json.loads((generate.ROOT / "dashboards" / f"{name}.json").read_text())["title"]
        assert f'"{title}"' in notes
    assert "PrometheusRule quantship:" in notes and "No PodMonitor" in notes
    assert (generate.ROOT / "manifests" / "examples" / "digits-replicas.yaml").is_file()
    assert "manifests/examples/digits-replicas.yaml" in notes
    assert "No PrometheusRule: load manifests/prometheus-rules.yaml" in render_notes(
        helm, tmp_path / "default"
    )
