"""The three Grafana dashboards, built with grafana-foundation-sdk from quantship/slo.py.

`make generate` (quantship/generate.py) writes dashboards/{executive,oncall,debug}.json and their
copies in helm/quantship/files/dashboards/, which the chart ships as ConfigMaps for Grafana's
dashboard sidecar. Every SLI query comes from `slo.ratio` / `slo.recording_rule` / `slo.counters`,
so a panel shows the number the alerts and the rollout engine judge.

  executive  accuracy delta per model, latency p95, error budget spent, size saving of INT8 over
             FP32, rollout status and history
  oncall     burn rate per SLO and window, the four SLIs by track, p95/p99 latency, fallback ops,
             SLI samples dropped as behind, requests shed (429),
             activation drift against its alert threshold, hardware mismatch and info,
             nondeterministic outputs, canary weight and the operator's judgements; promotions and
             rollbacks as annotations
  debug      per-tensor clip rates and activation drift, fallback ops by type, batch size and
             queue time, shadow volume, per-pod latency, load time and failures, model info
             (quantization config, calibration hash)

Each dashboard has a `datasource` variable (never a hard-coded uid) and a multi-value `model`
variable; queries match models with `=~"$model"`. Needs the dev extras (grafana-foundation-sdk).

Here: the boards by name. Each board is a module (dashboard_executive, dashboard_oncall,
dashboard_debug) over dashboard_board (a dashboard under construction, its panels' pieces) and
dashboard_promql (the PromQL, label sets and legends of the panels).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from quantship.oncall.dashboard_board import Board
from quantship.oncall.dashboard_debug import debug
from quantship.oncall.dashboard_executive import executive
from quantship.oncall.dashboard_oncall import oncall

DASHBOARDS: dict[str, Callable[[], Board]] = {"executive": executive, "oncall": oncall, "debug": debug}


def render(name: str) -> str:
    """dashboards/<name>.json."""
    return DASHBOARDS[name]().render()


def build(name: str) -> dict[str, Any]:
    return dict(json.loads(render(name)))
