"""The rollout engine: canary steps judged by SLO burn rates. Knows nothing of Kubernetes.

What other parts use: the spec and status types, `decide`/`tick`/`retire`/`run_rollout`, the three ports
(`Workloads`, `TrafficRouter`, `MetricsSource`) with their measurement types, and
`PrometheusSource`, the production MetricsSource. The operator (`quantship.operator`) and the
local demo (`quantship.local`) supply the adapters.
"""

from quantship.rollout.analysis import (
    Analysis,
    Fault,
    Measurements,
    Verdict,
    judge,
    measure,
    short_window_ratio,
)
from quantship.rollout.engine import (
    Action,
    Decision,
    Intervention,
    Observations,
    apply,
    decide,
    needs,
    retire,
    run_rollout,
    tick,
)
from quantship.rollout.ports import (
    Counts,
    GaugeMeasurement,
    Measurement,
    MetricsSource,
    Misconfigured,
    NoData,
    PortError,
    Track,
    TrafficRouter,
    Unreachable,
    Value,
    Workloads,
)
from quantship.rollout.prometheus import PrometheusSource, PrometheusSources
from quantship.rollout.spec import AnalysisSpec, OnInconclusive, RolloutSpec, format_duration, parse_duration
from quantship.rollout.state import Phase, RolloutStatus

__all__ = [
    "Action",
    "Analysis",
    "AnalysisSpec",
    "Counts",
    "Decision",
    "Fault",
    "GaugeMeasurement",
    "Intervention",
    "Measurement",
    "Measurements",
    "MetricsSource",
    "Misconfigured",
    "NoData",
    "Observations",
    "OnInconclusive",
    "Phase",
    "PortError",
    "PrometheusSource",
    "PrometheusSources",
    "RolloutSpec",
    "RolloutStatus",
    "Track",
    "TrafficRouter",
    "Unreachable",
    "Value",
    "Verdict",
    "Workloads",
    "apply",
    "decide",
    "format_duration",
    "judge",
    "measure",
    "needs",
    "parse_duration",
    "retire",
    "run_rollout",
    "short_window_ratio",
    "tick",
]
