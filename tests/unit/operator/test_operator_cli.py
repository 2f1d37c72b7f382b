"""`quantship operator` outside a cluster and without a kubeconfig: one line saying so, exit 2."""

from __future__ import annotations

from pathlib import Path

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
