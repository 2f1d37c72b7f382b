"""`quantship operator` outside a cluster, without a kubeconfig or with a malformed one: one line
saying so, exit 3."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from quantship.cli import main


def test_the_operator_without_credentials_says_so_in_one_line(tmp_path: Path) -> None:
    result = CliRunner().invoke(
        main,
        ["operator", "--metrics-port", "0", "--health-port", "0"],
        env={"KUBECONFIG": str(tmp_path / "missing"), "KUBERNETES_SERVICE_HOST": None},
    )

    assert result.exit_code == 3  # ExitCode.REFUSED
    assert result.output.startswith("error: no Kubernetes credentials: not in a pod")


def test_one_port_for_metrics_and_health_is_a_usage_error_not_a_crash() -> None:
    result = CliRunner().invoke(main, ["operator", "--metrics-port", "9000", "--health-port", "9000"])

    assert result.exit_code == 2
    assert "Invalid value for --health-port: 9000 is --metrics-port too" in result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)


def test_a_server_bind_address_that_is_no_ip_address_is_a_usage_error() -> None:
    """Every model server would otherwise crash-loop on it, pod after pod."""
    result = CliRunner().invoke(main, ["operator", "--server-bind-address", "localhost6"])

    assert result.exit_code == 2
    assert "'localhost6' is not an IPv4 or IPv6 address" in result.output

    scoped = CliRunner().invoke(main, ["operator", "--server-bind-address", "fe80::1%eth0"])
    assert scoped.exit_code == 2 and "names an interface's scope" in scoped.output  # as the chart refuses it


MALFORMED_KUBECONFIGS = {
    "not yaml": "clusters: [unclosed\n",
    "not a map": "just a sentence\n",
    "a number where a list goes": "clusters: 5\n",
    "a number where a url goes": (
        "current-context: x\ncontexts: [{name: x, context: {cluster: c, user: u}}]\n"
        "clusters: [{name: c, cluster: {server: 5}}]\nusers: [{name: u, user: {}}]\n"
    ),
}


@pytest.mark.parametrize("content", MALFORMED_KUBECONFIGS.values(), ids=list(MALFORMED_KUBECONFIGS))
def test_a_malformed_kubeconfig_is_one_line_naming_it(tmp_path: Path, content: str) -> None:
    """The client's loader raises YAML, type and attribute errors beside its own: each was a traceback.
    A process of its own: the client reads KUBECONFIG once, when first imported."""
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(content)
    environment = {name: value for name, value in os.environ.items() if name != "KUBERNETES_SERVICE_HOST"}
    run = subprocess.run(
        [sys.executable, "-m", "quantship", "operator", "--metrics-port", "0", "--health-port", "0"],
        capture_output=True, text=True, timeout=60, env={**environment, "KUBECONFIG": str(kubeconfig)},
    )  # fmt: skip

    assert run.returncode == 3, run.stderr
    lines = run.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(
        f"error: not in a pod, and the kubeconfig {kubeconfig} is malformed"
    )
