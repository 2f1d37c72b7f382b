"""Benchmarks: `make bench` runs every module listed in `benchmarks.__main__.SUITES` and prints figures."""
