"""The operator's composition root: `quantship operator` and the tests call `run`.

It builds every dependency once (the Kubernetes API client, the metrics registry and its HTTP
server, the handler registry) and runs kopf until `stop_flag`. Tests pass their own API configuration,
login and registry (kmock); production loads the in-cluster service account or a kubeconfig.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import kopf
import yaml
from kubernetes.aio import client, config
from prometheus_client import CollectorRegistry, start_http_server

from quantship.operator.handlers import register
from quantship.operator.kube import Kube
from quantship.operator.metrics import OperatorMetrics
from quantship.operator.reconcile import Context
from quantship.operator.settings import OperatorSettings
from quantship.operator.spec import ModelSpec
from quantship.rollout import MetricsSource, PrometheusSources

KUBECONFIG_MISTAKES = (yaml.YAMLError, OSError, TypeError, AttributeError, KeyError, ValueError)
"""What the kubernetes client's loader raises, beside its ConfigException, on a kubeconfig that is not
YAML, not a file, or not shaped as one (a list where a map goes, a number where a URL goes)."""


def _first_line(error: Exception) -> str:
    text = str(error).strip()
    return f"{type(error).__name__}: {text.splitlines()[0] if text else ''}"


class NoCredentials(Exception):
    """Neither a service account (in a pod) nor a kubeconfig: the operator cannot reach a cluster."""


async def load_api_config() -> client.Configuration:
    """The in-cluster service account, else the kubeconfig of whoever runs it."""
    configuration = client.Configuration()
    try:
        config.load_incluster_config(client_configuration=configuration)
    except config.ConfigException as in_cluster:
        try:
            await config.load_kube_config(client_configuration=configuration)
        except config.ConfigException as kubeconfig:
            raise NoCredentials(
                f"no Kubernetes credentials: not in a pod ({in_cluster}), "
                f"and no usable kubeconfig ({kubeconfig})"
            ) from kubeconfig
        except KUBECONFIG_MISTAKES as malformed:
            raise NoCredentials(
                f"not in a pod, and the kubeconfig {config.KUBE_CONFIG_DEFAULT_LOCATION} is malformed: "
                f"{_first_line(malformed)}"
            ) from malformed
    return configuration


def health_url(settings: OperatorSettings) -> str | None:
    """kopf's liveness endpoint on the settings' address (an IPv6 address in brackets)."""
    if not settings.health_port:
        return None
    host = settings.bind_address
    host = f"[{host}]" if ":" in host else host
    return f"http://{host}:{settings.health_port}/healthz"


async def run(
    settings: OperatorSettings,
    *,
    api_config: client.Configuration | None = None,
    login: Callable[..., kopf.ConnectionInfo | None] | None = None,
    registry: kopf.OperatorRegistry | None = None,
    metrics_registry: CollectorRegistry | None = None,
    stop_flag: Any = None,
    ready_flag: Any = None,
    clock: Callable[[], float] = time.time,
    metrics_source: Callable[[ModelSpec], MetricsSource] | None = None,
) -> None:
    """Run the operator until `stop_flag` (or a signal). Everything but `settings` is for tests and
    embedding: the API to talk to (`api_config`, and `login` for kopf's own client), a fresh kopf
    `registry`, the `metrics_registry` to serve, and the MetricsSource per resource (Prometheus at
    spec.analysis.prometheusUrl by default)."""
    api = client.ApiClient(api_config if api_config is not None else await load_api_config())
    metrics_registry = metrics_registry if metrics_registry is not None else CollectorRegistry()
    registry = registry if registry is not None else kopf.OperatorRegistry()
    ctx = Context(
        Kube(api, settings.api_timeout, fresh_interval=settings.resync_interval),
        OperatorMetrics(metrics_registry),
        settings.retry_backoff,
        clock,
        server_host=settings.server_bind_address,
    )
    if metrics_source is not None:
        ctx.metrics_source = metrics_source
    else:
        ctx.prometheus = PrometheusSources()
    register(registry, ctx, settings, login=login)
    metrics_server = None
    if settings.metrics_port:
        metrics_server, _ = start_http_server(
            settings.metrics_port, settings.bind_address, registry=metrics_registry
        )
    liveness = health_url(settings)
    try:
        await kopf.operator(
            registry=registry,
            clusterwide=not settings.namespaces,
            namespaces=list(settings.namespaces),
            liveness_endpoint=liveness,
            stop_flag=stop_flag,
            ready_flag=ready_flag,
        )
    finally:
        if metrics_server is not None:
            metrics_server.shutdown()
            metrics_server.server_close()
        if ctx.prometheus is not None:
            await ctx.prometheus.aclose()
        await api.close()
