"""The CRD's CEL rules across fields (x-kubernetes-validations), each with the message the API
server answers with. The operator checks them again (spec.py, quantization.py, the rollout engine's
specs), most in the same words, for objects stored before a rule existed.
"""

from __future__ import annotations

import math

from quantship import choices
from quantship.operator import names

GATEWAY_NEEDS_ROUTE = {
    "rule": "!has(self.router) || self.router != 'gateway-api' || has(self.httpRoute)",
    "message": "traffic.httpRoute is required when traffic.router is gateway-api",
}
PORT_NOT_GRPC = {
    "rule": f"!has(self.port) || self.port != {names.GRPC_PORT}",
    "message": f"traffic.port must not be {names.GRPC_PORT}, the model Services' gRPC port",
}
"""spec.traffic's CEL rules. `has()` guards: the API server checks them against `default: {}` as well."""
WINDOWS_IN_ORDER = {
    "rule": "!has(self.shortWindow) || !has(self.longWindow) "
    "|| duration(self.shortWindow) < duration(self.longWindow)",
    "message": "analysis.longWindow must be longer than analysis.shortWindow",
}
"""spec.analysis's CEL rule (the operator checks it again for objects stored before it existed)."""
MAX_STEPS = 20
STEPS_INCREASE = {
    "rule": f"{list(range(MAX_STEPS - 1))}.all(i, i + 1 >= self.size() || self[i] < self[i + 1])",
    "message": "rollout.steps must increase",
}
"""spec.rollout.steps' CEL rule, each step against the next (CEL's macros give no index; the list
of every index but the last stands for one). The operator checks it again for older objects."""

ONE_GATE_LIMIT = {
    "rule": "!has(self.threshold) || !has(self.maxAccuracyDelta)",
    "message": "quantize.options: threshold or maxAccuracyDelta, not both (each sets the gate's limit)",
}
ENOUGH_BINS = {
    method.value: {
        "rule": f"!has(self.numBins) || !has(self.calibrationMethod) "
        f"|| self.calibrationMethod != '{method.value}' || self.numBins >= {least}",
        "message": f"quantize.options.numBins: {method.value} calibration needs at least {least}",
    }
    for method, least in choices.MIN_NUM_BINS.items()
}
"""By calibration method, what `quantship quantize --num-bins` refuses (a usage error): the Job
would fail at once, after its downloads."""
METRIC_OF_TASK = {
    task.value: {
        "rule": f"!has(self.task) || !has(self.metric) || self.task != '{task.value}' "
        f"|| self.metric in {[metric.value for metric in metrics]}",
        "message": f"quantize.options.metric: task {task.value} is gated by one of "
        f"{', '.join(metric.value for metric in metrics)}",
    }
    for task, metrics in choices.METRICS_OF_TASK.items()
}
"""By task, the metrics quantize gates its outputs by: it refuses another task's (after the Job's
downloads, as soon as it reads the evaluation data)."""


def _in_domain(metric: choices.Metric) -> str:
    """The CEL condition that spec.quantize.options.threshold is among the metric's values; double()
    compares it as one, whether it arrived as 2 or 2.0."""
    low, high = choices.DOMAIN_OF_METRIC[metric]
    if math.isinf(high):
        return f"double(self.threshold) >= {low!r}"
    return f"(double(self.threshold) >= {low!r} && double(self.threshold) <= {high!r})"


THRESHOLD_IN_DOMAIN = {
    metric.value: {
        "rule": f"!has(self.threshold) || !has(self.metric) || self.metric != '{metric.value}' "
        f"|| {_in_domain(metric)}",
        "message": f"quantize.options.threshold: {metric.value} is {choices.domain_in_words(metric)}",
    }
    for metric in choices.Metric
}
"""By metric, the thresholds quantize takes: outside the metric's values, which would pass every
model or none, it refuses them (after the Job's downloads)."""
PULL_SECRET_FOR_OCI = {
    "rule": "!has(self.pullSecret) || self.uri.startsWith('oci://')",
    "message": "quantize.target.pullSecret is for an oci:// target only",
}
