"""Ed25519 signing keys for artifacts: a new pair written safely (`generate_keypair`), a key read
from a PEM file, a public key's id, and a manifest's signature checked against a public key."""

from __future__ import annotations

import base64
import hashlib
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from quantship.artifact_format import ArtifactError, canonical_bytes
from quantship.manifest_schema import SIGNATURE_KEY


def generate_keypair(private_path: Path, public_path: Path) -> None:
    """Write a new key pair. Refuses to replace either file: a signing key overwritten by mistake
    leaves every artifact it signed unverifiable. The private key is never readable by others, not
    even between its creation and a chmod; a pair that cannot be written whole leaves neither half."""
    if private_path.resolve() == public_path.resolve():
        raise ArtifactError(f"{private_path}: the private and public keys need two files", reason="key")
    key = Ed25519PrivateKey.generate()
    private = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    public = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    _write_new_key(private_path, private, 0o600)
    try:
        _write_new_key(public_path, public, 0o644)
    except ArtifactError:
        private_path.unlink()  # half a pair is useless, and would block the rerun
        raise


def _write_new_key(path: Path, content: bytes, mode: int) -> None:
    """`content` in a file created here: an existing one, even one made a moment ago, is kept; one
    made here and not written whole (a full disk) is removed, or it would refuse every rerun."""
    try:
        descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    except FileExistsError as exc:
        raise ArtifactError(
            f"{path} exists; refusing to replace a key (remove it first)", reason="key"
        ) from exc
    except OSError as exc:
        raise ArtifactError(
            f"cannot write the key pair: {path}: {exc.strerror or exc}", reason="key"
        ) from exc
    try:
        with os.fdopen(descriptor, "wb") as stream:
            stream.write(content)
    except OSError as exc:
        path.unlink()
        raise ArtifactError(
            f"cannot write the key pair: {path}: {exc.strerror or exc}", reason="key"
        ) from exc


def load_private_key(path: Path) -> Ed25519PrivateKey:
    try:
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    except (OSError, ValueError, TypeError) as exc:
        raise ArtifactError(f"cannot read private key {path}: {exc}", reason="key") from exc
    if not isinstance(key, Ed25519PrivateKey):
        raise ArtifactError(f"{path} is not an ed25519 private key", reason="key")
    return key


def load_public_key(path: Path) -> Ed25519PublicKey:
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ArtifactError(f"cannot read public key {path}: {exc.strerror or exc}", reason="key") from exc
    try:
        key = serialization.load_pem_public_key(data)
    except ValueError as exc:  # cryptography's own words ask "Are you sure this is a public key?"
        private = b"PRIVATE KEY-----" in data
        held = "a private key: pass the public key keygen wrote with it" if private else "no PEM public key"
        raise ArtifactError(f"{path} is not a public key (it holds {held})", reason="key") from exc
    if not isinstance(key, Ed25519PublicKey):
        raise ArtifactError(f"{path} is not an ed25519 public key", reason="key")
    return key


def public_key_id(key: Ed25519PublicKey) -> str:
    raw = key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:16]


def check_signature(root: Path, manifest: Mapping[str, Any], public_key: Ed25519PublicKey) -> None:
    signature = manifest.get(SIGNATURE_KEY)
    if not isinstance(signature, dict) or "value" not in signature:
        raise ArtifactError(f"{root}: artifact is unsigned, but a public key is required", reason="signature")
    if signature.get("algorithm") != "ed25519":
        raise ArtifactError(
            f"{root}: unsupported signature algorithm {signature.get('algorithm')!r}", reason="signature"
        )
    try:
        public_key.verify(base64.b64decode(signature["value"]), canonical_bytes(manifest))
    except (InvalidSignature, ValueError) as exc:
        raise ArtifactError(
            f"{root}: manifest signature does not verify with the given public key", reason="signature"
        ) from exc
