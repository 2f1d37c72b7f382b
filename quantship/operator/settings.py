"""The operator's settings: how often it ticks, where it serves metrics, how replicas peer.

Built by `quantship operator` from its flags (and by the tests); read by `main.run` and the handlers.
"""

from __future__ import annotations

from dataclasses import dataclass

SERVER_BIND_ADDRESS = "0.0.0.0"
"""What the model servers listen on by default: every IPv4 address of the pod, which a kernel
without IPv6 has too. An IPv6 cluster passes `::` (--server-bind-address)."""
RESYNC_INTERVAL = 60.0
"""Seconds between a model's reads of its Deployments from the API (OperatorSettings.resync_interval)."""

RETRY_BACKOFF_MAX_S = 60.0
"""The longest wait before a failed tick is retried, however often it failed in a row (and however
long an API server's Retry-After): an API server in trouble gets at most a tick a minute per model
from us, and a model whose trouble is fixed outside it (its HTTPRoute created) waits a minute at
most. client-go's controllers back off the same way, up to 1000 s."""

DAEMON_EXIT_GRACE_S = 4.0
"""How long kopf lets a daemon still in a tick when the operator exits finish it (kopf's
`cancellation_backoff`): without it kopf said at once "did not exit in time. Leaving it orphaned."
of a tick a few API calls from done, which then ended on its own. A tick is a few API calls; one
still running after this is left to kopf's 5 s wait for hung tasks and then cancelled: at most
~11 s with kopf's 2 s drain, within a pod's default 30 s termination grace."""


@dataclass(frozen=True)
class OperatorSettings:
    namespaces: tuple[str, ...] = ()
    """Namespaces to watch; empty watches the whole cluster."""
    tick_interval: float = 5.0
    """Seconds between ticks of an in-flight rollout. A judgement is due once per step interval
    (a minute by default); this only bounds how late after that it happens."""
    resync_interval: float = RESYNC_INTERVAL
    """Seconds between checks of a settled model's stable Deployment against its spec (replicas,
    resources, deleted by hand), and between an in-flight model's reads of its Deployments from the
    API: one GET each, since kopf keeps in its index what was deleted while a watch was away."""
    api_timeout: float = 30.0
    """Seconds one Kubernetes API call may take; past it the tick fails (Degraded) and is retried.
    Generous: an API server under load answers in seconds, one that hangs must not stall ticks."""
    retry_backoff: float = 10.0
    """Seconds before a failed tick (API error, missing HTTPRoute) is retried, or the API server's
    Retry-After where longer; doubled at each failure in a row, up to RETRY_BACKOFF_MAX_S."""
    bind_address: str = "127.0.0.1"
    """Address the metrics and health ports listen on. Loopback: run by hand, the operator shows
    nothing to the network; the chart passes 0.0.0.0 so the kubelet and Prometheus reach the pod."""
    server_bind_address: str = SERVER_BIND_ADDRESS
    """Address the model servers' HTTP and gRPC ports listen on (`quantship serve --host`)."""
    metrics_port: int = 8000
    """Port of the operator's own /metrics; 0 serves none."""
    health_port: int = 8081
    """Port of kopf's liveness endpoint (/healthz); 0 serves none."""
    standalone: bool = False
    """Skip peering: only one replica may run then."""
    peering: str = "quantship"
    """kopf peering object: of several replicas only the one with the highest priority works. It
    needs kopf's KopfPeering CRD; without it the operator warns and runs unpeered."""
    priority: int = 0
