"""`python -m benchmarks [NAME ...]`: run the benchmark suites (all by default) and print their figures.

Each suite is a module here with `run(workdir: Path) -> None` that prints its own tables. They build
what they need (sample models, artifacts, servers) under one temporary directory.

A SIGTERM (CI's cancel, `timeout`) stops a run as Ctrl-C does: the servers are stopped by the suites'
finally blocks and the temporary directory is removed. Without it Python dies on the signal at once,
leaving both behind.
"""

from __future__ import annotations

import importlib
import signal
import sys
import tempfile
from pathlib import Path

SUITES = [
    "quantize", "real_models", "server", "transport", "peers", "sli_cost", "canary_samples", "rollout",
    "operator_scale", "capture_writes",
]  # fmt: skip


def exit_on_sigterm() -> None:
    """SIGTERM raises SystemExit in the main thread, so that finally blocks and context managers run."""

    def exit_now(signum: int, frame: object) -> None:
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, exit_now)


def main(names: list[str]) -> None:
    exit_on_sigterm()
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
