"""The Kubernetes operator: QuantizedModel resources rolled out by the rollout engine (kopf).

Public face: `run` and `OperatorSettings` (composition root, `quantship operator`), the CRD
(`crd`), `fetch` (the init container's `quantship fetch`). Inside: `spec` reads a resource,
`resources` builds its children, `kube` adapts the engine's ports to the API, `reconcile` ticks
one resource, `handlers` registers it all with kopf, `status` and `metrics` report.
"""

from quantship.operator.main import NoCredentials, run
from quantship.operator.settings import OperatorSettings

__all__ = ["NoCredentials", "OperatorSettings", "run"]
