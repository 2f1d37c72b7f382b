"""`python -m benchmarks [NAME ...]`: run the benchmark suites (all by default) and print their figures.

Each suite is a module here with `run(workdir: Path) -> None` that prints its own tables. They build
what they need (sample models, artifacts, servers) under one temporary directory.
"""

from __future__ import annotations

import importlib
import sys
import tempfile
from pathlib import Path

SUITES = [
    "quantize", "real_models", "server", "transport", "peers", "sli_cost", "canary_samples", "rollout",
    "operator_scale",
]  # fmt: skip


def main(names: list[str]) -> None:
    chosen = names or SUITES
    unknown = set(chosen) - set(SUITES)
    if unknown:
        raise SystemExit(f"unknown suites {sorted(unknown)}; known: {', '.join(SUITES)}")
    with tempfile.TemporaryDirectory(prefix="quantship-bench-") as tmp:
        for name in chosen:
            print(f"\n=== benchmark: {name} ===", flush=True)
            importlib.import_module(f"benchmarks.{name}").run(Path(tmp))


if __name__ == "__main__":
    main(sys.argv[1:])
