"""The model server's pod shuts down within its grace period: preStop, then a drain budget that fits;
and it exposes the gRPC port beside HTTP, in the Deployment and the Service."""

from __future__ import annotations

from typing import Any

import pytest

from quantship.operator import resources
from quantship.operator.spec import ModelSpec
from quantship.rollout import Track

OWNER = {
    "apiVersion": "serving.quantship.io/v1alpha1",
    "kind": "QuantizedModel",
    "metadata": {"name": "digits", "namespace": "ml", "uid": "0b3c-uid"},
}


@pytest.fixture
def spec() -> ModelSpec:
    return ModelSpec.from_resource({**OWNER, "spec": {"artifact": {"uri": "https://example.com/d.tar.gz"}}})


@pytest.fixture
def deployment(spec: ModelSpec) -> dict[str, Any]:
    return resources.deployment(spec, spec.revision, Track.CANARY, 1, OWNER)


@pytest.fixture
def service(spec: ModelSpec) -> dict[str, Any]:
    return resources.service(spec, spec.revision, OWNER)


def server_container(deployment: dict[str, Any]) -> dict[str, Any]:
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    return container


def test_prestop_plus_drain_budget_fits_the_grace_period(deployment: dict[str, Any]) -> None:
    pod = deployment["spec"]["template"]["spec"]
    container = server_container(deployment)
    sleep = int(container["lifecycle"]["preStop"]["exec"]["command"][1])
    args = container["args"]
    drain = float(args[args.index("--drain-timeout-s") + 1])
    assert sleep > 0 and drain > 0
    assert sleep + drain < pod["terminationGracePeriodSeconds"]


def test_the_grpc_port_is_served_and_exposed(deployment: dict[str, Any], service: dict[str, Any]) -> None:
    container = server_container(deployment)
    args = container["args"]
    grpc_port = int(args[args.index("--grpc-port") + 1])
    assert {"name": "grpc", "containerPort": grpc_port, "protocol": "TCP"} in container["ports"]
    exposed = {"name": "grpc", "port": grpc_port, "targetPort": "grpc", "protocol": "TCP"}
    assert exposed in service["spec"]["ports"]
    assert grpc_port == resources.GRPC_PORT
