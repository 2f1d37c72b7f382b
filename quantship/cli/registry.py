"""`quantship push` and `pull`: an artifact to and from an OCI registry (`quantship.oci`), with the
registry's options (credentials, plain HTTP, the speed limit)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click

from quantship import artifact_keys
from quantship.cli.errors import Refused, user_errors
from quantship.cli.options import artifact_out, speed_limit_of, speed_options
from quantship.cli.output import warn_of_a_failed_gate

F = TypeVar("F", bound=Callable[..., Any])


def _registry_options(func: F) -> F:
    """Credentials and transport for an OCI registry; the password only from the environment."""
    func = speed_options(func)
    func = click.option("--insecure", is_flag=True, help="Plain HTTP (loopback registries always use it).")(
        func
    )
    func = click.option(
        "--docker-config",
        type=click.Path(dir_okay=False, path_type=Path),
        help="A Docker config.json with credentials (a dockerconfigjson Secret).",
    )(func)
    func = click.option(
        "--username",
        envvar="QUANTSHIP_REGISTRY_USER",
        help="Registry user [env QUANTSHIP_REGISTRY_USER]; the password comes from "
        "QUANTSHIP_REGISTRY_PASSWORD.",
    )(func)
    return func


def _credentials(username: str | None, docker_config: Path | None) -> Any:
    import os

    from quantship import oci

    password = os.environ.get("QUANTSHIP_REGISTRY_PASSWORD")
    if username is not None and password is None and docker_config is None:
        # else the user went unused: an open registry was asked anonymously, a closed one said
        # "needs credentials" to someone who had given some
        raise click.UsageError(
            f"--username {username!r} (or QUANTSHIP_REGISTRY_USER) needs QUANTSHIP_REGISTRY_PASSWORD "
            "in the environment, which is not set"
        )
    return oci.Credentials(username, password, docker_config)


@click.command()
@click.argument("path", type=click.Path(path_type=Path))
@click.argument("uri")
@_registry_options
@user_errors
def push(
    path: Path,
    uri: str,
    username: str | None,
    docker_config: Path | None,
    insecure: bool,
    speed_limit: float | None,
    speed_time: float | None,
) -> None:
    """Verify the artifact at PATH and push it to URI (oci://REGISTRY/REPO:TAG); prints the digest."""
    from quantship import oci

    try:
        digest = oci.push(
            path,
            uri,
            credentials=_credentials(username, docker_config),
            insecure=insecure,
            speed_limit=speed_limit_of(speed_limit, speed_time),
            verified=lambda loaded: warn_of_a_failed_gate(loaded, path, "pushing"),
        )
    except oci.OciError as exc:
        raise Refused(str(exc)) from exc
    reference = oci.Reference.parse(uri)
    click.echo(f"pushed {uri}: oci://{reference.registry}/{reference.repository}@{digest}")


@click.command()
@click.argument("uri")
@artifact_out
@click.option("--public-key", type=click.Path(path_type=Path), help="Require a valid ed25519 signature.")
@_registry_options
@user_errors
def pull(
    uri: str,
    out: Path,
    public_key: Path | None,
    username: str | None,
    docker_config: Path | None,
    insecure: bool,
    speed_limit: float | None,
    speed_time: float | None,
) -> None:
    """Pull the artifact at URI (oci://REGISTRY/REPO:TAG or @sha256:DIGEST) into OUT, verified."""
    from quantship import oci

    key = artifact_keys.load_public_key(public_key) if public_key else None
    try:
        pulled = oci.pull(
            uri,
            out,
            credentials=_credentials(username, docker_config),
            insecure=insecure,
            public_key=key,
            speed_limit=speed_limit_of(speed_limit, speed_time),
        )
    except oci.OciError as exc:
        raise Refused(str(exc)) from exc
    replaced = " (in place of the older artifact there)" if pulled.replaced else ""
    click.echo(
        f"pulled {uri} ({pulled.image_digest}) into {pulled.root}{replaced}: {pulled.gate_in_words()}, "
        f"its manifest.json sha256 {pulled.digest[:12]}"
    )
