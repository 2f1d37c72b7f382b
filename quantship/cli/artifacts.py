"""The commands on an artifact on disk: `package` (an FP32 model as one), `pack` (as a .tar.gz),
`verify`, `report` (HTML), and `keygen` (the ed25519 key pair that signs them)."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from quantship import artifact, artifact_keys, artifact_manifest, scratch
from quantship.cli.errors import ExitCode, Refused, user_errors
from quantship.cli.options import artifact_out
from quantship.cli.output import signature_in_words, warn_of_a_failed_gate


@click.command()
@click.argument("model", type=click.Path(path_type=Path))
@artifact_out
@click.option("--sign-key", type=click.Path(path_type=Path), help="ed25519 private key (PEM) to sign with.")
@user_errors
def package(model: Path, out: Path, sign_key: Path | None) -> None:
    """Wrap an FP32 MODEL as an artifact, unquantized: a baseline to serve and to canary against."""
    from quantship.quantize import package_fp32

    key = artifact_keys.load_private_key(sign_key) if sign_key else None
    # `-o current` (a link to the artifact it replaces) is judged by what it names, as the write is
    replaced = (
        " (in place of the older artifact there)" if artifact_manifest.is_artifact_dir(out.resolve()) else ""
    )
    written = package_fp32(model, out, sign_key=key)
    size = written.manifest["files"][artifact.MODEL_FILE]["size"]
    click.echo(f"wrote {written.root} (fp32, {size} bytes){replaced}")


@click.command()
@click.argument("path", type=click.Path(path_type=Path))
@click.argument("tarball", type=click.Path(dir_okay=False, path_type=Path))
@user_errors
def pack(path: Path, tarball: Path) -> None:
    """Verify the artifact at PATH and write it as TARBALL (.tar.gz), for an http(s):// artifact URI.
    An older artifact archive at TARBALL is replaced in one rename, never half-written, and a link to
    one replaces the archive it names (the link stays); any other file there, or that a link names,
    is refused."""
    artifact.refuse_inside_an_artifact(tarball)
    try:
        packed = artifact.pack(
            path, tarball, verified=lambda loaded: warn_of_a_failed_gate(loaded, path, "packing")
        )
    except OSError as exc:
        raise Refused(f"cannot write {tarball}: {exc.strerror or exc}") from exc
    click.echo(f"wrote {packed.path}" + (" (in place of the older archive there)" if packed.replaced else ""))


@click.command()
@click.argument("path", type=click.Path(path_type=Path))
@click.option("--public-key", type=click.Path(path_type=Path), help="Require a valid ed25519 signature.")
@click.option(
    "--reference",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Check this FP32 model as `serve --reference FILE` would, not the artifact's reference.onnx.",
)
@click.option(
    "--require-gate-hardware",
    is_flag=True,
    help="Refuse, as `serve --require-gate-hardware` would, an artifact whose gate ran on other CPU int8 "
    "features, onnxruntime or provider than this machine's.",
)
@user_errors
def verify(path: Path, public_key: Path | None, reference: Path | None, require_gate_hardware: bool) -> None:
    """Check an artifact's file hashes (and its signature when --public-key is given), and that a
    server's load would take it: its model opens, its manifest fits the model, and its reference takes
    the model's inputs. An intact artifact whose accuracy gate failed (a best effort) exits 1.

    A server started with options verify was not given decides otherwise: `serve --reference FILE`
    checks FILE, not the artifact's reference.onnx (pass the same --reference here), and `serve
    --require-gate-hardware` refuses an artifact gated on other hardware than its node's, which verify
    checks only with --require-gate-hardware, against the machine it runs on."""
    from quantship.server.load_checks import LoadRefused, check_loadable

    key = artifact_keys.load_public_key(public_key) if public_key else None
    scratch.sweep()  # what verifies and servers killed before us left behind
    with artifact.opened(path, public_key=key) as loaded:  # a .tar.gz unpacked, then removed
        try:  # hashes, signature and archive checks passed on opening; then the load's own
            check_loadable(loaded, reference=reference, require_gate_hardware=require_gate_hardware)
        except LoadRefused as exc:
            raise Refused(f"{path}: a server refuses to load it: {exc}") from exc
    signature = signature_in_words(loaded, checked=key is not None)
    files = len(loaded.manifest["files"])
    matched = f"{files} files match their sha256" if files > 1 else "its one file matches its sha256"
    if loaded.gate == "failed":  # intact, but a best effort: `verify && deploy` must not ship it
        click.echo(f"gate failed: {path}: {matched}; {signature}; its accuracy gate failed (exit code 1)")
        sys.exit(ExitCode.VERDICT)
    click.echo(f"ok: {path}: {matched}; {signature}; {loaded.gate_in_words()}")


@click.command()
@click.argument("path", type=click.Path(path_type=Path))
@click.option("-o", "--out", required=True, type=click.Path(dir_okay=False, path_type=Path))
@click.option(
    "--public-key",
    type=click.Path(path_type=Path),
    help="Require a valid ed25519 signature; the report then says it was checked.",
)
@user_errors
def report(path: Path, out: Path, public_key: Path | None) -> None:
    """Write a self-contained HTML report (plots embedded) for an artifact."""
    from quantship.quantize import report as report_module

    artifact.refuse_inside_an_artifact(out)
    key = artifact_keys.load_public_key(public_key) if public_key else None
    with artifact.opened(path, public_key=key) as loaded:
        html = report_module.render(loaded, given=path, signature_checked=key is not None)
    try:
        out.write_text(html)
    except OSError as exc:
        raise Refused(f"cannot write {out}: {exc.strerror or exc}") from exc
    click.echo(f"wrote {out}")


@click.command()
@click.option("--private", "private_path", required=True, type=click.Path(dir_okay=False, path_type=Path))
@click.option("--public", "public_path", required=True, type=click.Path(dir_okay=False, path_type=Path))
@user_errors
def keygen(private_path: Path, public_path: Path) -> None:
    """Create an ed25519 key pair for signing artifacts (PEM files)."""
    for path in (private_path, public_path):  # a private key there would ship with the artifact
        artifact.refuse_inside_an_artifact(path)
    artifact_keys.generate_keypair(private_path, public_path)
    click.echo(f"wrote {private_path} (keep it secret) and {public_path}")
