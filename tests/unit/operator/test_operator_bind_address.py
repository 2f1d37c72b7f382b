"""The operator's metrics and health ports: loopback when run by hand, the address the chart
passes in a pod (0.0.0.0), an IPv6 address in brackets in kopf's liveness URL."""

from __future__ import annotations

import dataclasses

from quantship.operator import OperatorSettings
from quantship.operator.main import health_url


def test_by_hand_the_ports_listen_on_loopback_only() -> None:
    settings = OperatorSettings()
    assert settings.bind_address == "127.0.0.1"
    assert health_url(settings) == f"http://127.0.0.1:{settings.health_port}/healthz"


def test_the_address_given_is_the_one_kopf_listens_on() -> None:
    settings = dataclasses.replace(OperatorSettings(), bind_address="0.0.0.0", health_port=9000)
    assert health_url(settings) == "http://0.0.0.0:9000/healthz"
    assert health_url(dataclasses.replace(settings, bind_address="::")) == "http://[::]:9000/healthz"
    assert health_url(dataclasses.replace(settings, health_port=0)) is None
