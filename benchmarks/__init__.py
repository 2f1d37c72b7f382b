"""Benchmarks: `make bench` runs every module listed in `benchmarks.__main__.SUITES` and prints figures."""

# Before any benchmark imports onnxruntime: quantship turns its telemetry off (quantship/__init__.py),
# for these processes and the servers they start, peers included (they inherit the environment).
import quantship  # noqa: F401
