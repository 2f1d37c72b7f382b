"""What quantship.oci writes of a registry's words, and how it names Docker Hub: no registry
needed."""

from __future__ import annotations

import base64
import json
import logging
import re
from pathlib import Path

import cel_rules
import oras.logger
import pytest
from click.testing import CliRunner

from quantship import oci, oci_auth
from quantship.cli import main
from quantship.operator import crd, crd_uris

HOSTILE = "\x1b]0;owned title\x07\x1b[2J\x1b[31mFAKE: push ok\x1b[0m\n\u202eforged" + "x" * 5000


def test_what_oras_logs_of_a_registrys_answer_is_one_printable_short_line(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with caplog.at_level(logging.ERROR):
        oras.logger.logger.error(HOSTILE)  # as oras's _parse_response_errors logs an error body
    [record] = [r for r in caplog.records if r.name == oras.logger.logger.logger.name]
    said = record.getMessage()
    assert "\x1b" not in said and "\x07" not in said and "\n" not in said and "\u202e" not in said
    assert len(said) <= 201


@pytest.mark.parametrize(
    ("written", "read"),
    [
        ("oci://docker.io/bob/digits:v1", "oci://registry-1.docker.io/bob/digits:v1"),
        ("oci://index.docker.io/bob/digits:v1", "oci://registry-1.docker.io/bob/digits:v1"),
        (
            "oci://Docker.IO/bob/digits@sha256:" + "a" * 64,
            "oci://registry-1.docker.io/bob/digits@sha256:" + "a" * 64,
        ),
        ("oci://registry-1.docker.io/bob/digits:v1", "oci://registry-1.docker.io/bob/digits:v1"),
        ("oci://docker.io/digits:v1", "oci://registry-1.docker.io/library/digits:v1"),
        ("oci://ghcr.io/digits:v1", "oci://ghcr.io/digits:v1"),
    ],
)
def test_docker_hub_is_asked_where_its_api_answers(written: str, read: str) -> None:
    reference = oci.Reference.parse(written)
    assert str(reference) == read
    assert reference.container().registry == reference.registry, "oras sends every request there"


@pytest.mark.parametrize(
    "written",
    [
        "r.io/ml/digits:v1",
        "r.io:5000/digits:v1",
        "r.io/ml/digits@sha256:" + "a" * 64,
        "r.io/ml/digits:v1@sha256:" + "a" * 64,
        "r.io/ml/digits",  # neither: refused, not read as `latest`
        "r.io:5000/digits",
        "r.io/ml/digits:",
        "r.io/ml/digits@sha256:abc",
    ],
)
def test_the_crds_artifact_rule_admits_exactly_the_references_a_pull_takes(written: str) -> None:
    """The CRD admitted an untagged reference every pull of the servers' init container refused.
    Its rule is evaluated by a real CEL implementation (cel-python, RE2 as cel-go's matches())."""
    try:
        oci.Reference.parse(f"oci://{written}")
        pulls = True
    except oci.OciError:
        pulls = False
    assert bool(re.fullmatch(oci.PULL_REFERENCE_PATTERN, written)) == pulls
    assert bool(re.fullmatch(crd_uris.ARTIFACT_URI.pattern, f"oci://{written}")) == pulls
    [rule] = crd.spec_schema()["properties"]["artifact"]["properties"]["uri"]["x-kubernetes-validations"]
    assert cel_rules.evaluate(rule["rule"], f"oci://{written}") is pulls


@pytest.mark.parametrize(
    "key", ["https://index.docker.io/v1/", "index.docker.io", "docker.io", "registry-1.docker.io"]
)
@pytest.mark.parametrize("written", ["docker.io", "index.docker.io", "registry-1.docker.io"])
def test_a_docker_login_to_docker_hub_is_found_however_the_reference_names_it(
    key: str, written: str, tmp_path: Path
) -> None:
    config = tmp_path / "config.json"
    auth = base64.b64encode(b"bob:hub-pass").decode()
    config.write_text(
        json.dumps({"auths": {"https://other.example.com": {"auth": "eDp5"}, key: {"auth": auth}}})
    )
    reference = oci.Reference.parse(f"oci://{written}/bob/digits:v1")
    login = oci_auth.login_for(reference, oci.Credentials(docker_config=config))
    assert login is not None and login.basic == ("bob", "hub-pass")


def test_another_registrys_login_is_not_docker_hubs(tmp_path: Path) -> None:
    config = tmp_path / "config.json"
    config.write_text(json.dumps({"auths": {"https://index.docker.io/v1/": {"auth": "Ym9iOng="}}}))
    reference = oci.Reference.parse("oci://ghcr.io/bob/digits:v1")
    assert oci_auth.login_for(reference, oci.Credentials(docker_config=config)) is None


@pytest.mark.parametrize("command", ["pull", "push"])
def test_a_username_without_its_password_is_refused_before_the_registry_is_asked(
    command: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """It went unused: an open registry was pulled from anonymously, a closed one answered that
    credentials were needed (the registry here, on port 1, is down: it is never asked)."""
    monkeypatch.delenv("QUANTSHIP_REGISTRY_PASSWORD", raising=False)
    uri = "oci://127.0.0.1:1/ml/digits:v1"
    args = ["pull", uri, "-o", str(tmp_path / "out")] if command == "pull" else ["push", str(tmp_path), uri]
    result = CliRunner().invoke(main, [*args, "--username", "ci"])
    assert result.exit_code == 2, result.output
    assert "QUANTSHIP_REGISTRY_PASSWORD in the environment, which is not set" in result.stderr
    assert list(tmp_path.iterdir()) == []


def test_fetchs_help_does_not_say_the_speed_limit_holds_oci_alone() -> None:
    """fetch holds an http(s) .tar.gz to --speed-limit as it holds an oci:// pull; its help began
    `oci://:`, the mark its registry-only flags carry, so a user read that downloads were not held."""
    helps = {param.name: param.help or "" for param in main.commands["fetch"].params}
    assert helps["registry_config"].startswith("oci://:")  # the mark, where it fits
    assert not helps["speed_limit"].startswith("oci://") and "http(s)" in helps["speed_limit"]
    assert not helps["speed_time"].startswith("oci://")


@pytest.mark.parametrize("uri", ["oci://registry.example.com/ml/digits:v1", "https://example.com/a.tar.gz"])
def test_serve_refuses_a_uri_in_one_line_naming_pull_and_fetch(uri: str) -> None:
    served = CliRunner().invoke(main, ["serve", uri, "--model-name", "digits", "--revision", "1"])
    assert served.exit_code == 2
    said = served.stderr.strip().splitlines()[-1]
    assert uri in said and "directory or .tar.gz" in said and "pull" in said and "fetch" in said
