"""Local adapters for the embedded demo: processes instead of Deployments, direct scrapes instead
of Prometheus when none runs. `demo.run` is the entry point of `quantship demo`."""
