"""`quantship fetch URI DIR`: put a verified artifact into DIR. The model servers' init container.

URI is file:///path (a directory or .tar.gz on a mounted file system), pvc://CLAIM/PATH (the
claim is mounted read-only under --pvc-root) or http(s)://HOST/PATH.tar.gz. The artifact lands
in a scratch directory next to DIR, is verified there with `artifact.load_artifact` (hashes, and
the signature when a public key is given), and only then renamed to DIR: a server never starts on
a half-copied or tampered artifact.
"""

from __future__ import annotations

import shutil
import tempfile
import urllib.parse
from pathlib import Path

import httpx

from quantship import artifact


class FetchError(Exception):
    """The artifact could not be fetched (bad URI, missing file, download failed)."""


def source_path(uri: str, pvc_root: Path) -> Path | None:
    """The local path of a file:// or pvc:// URI; None for http(s)://."""
    parsed = urllib.parse.urlparse(uri)
    match parsed.scheme:
        case "file":
            return Path(urllib.parse.unquote(parsed.netloc + parsed.path))
        case "pvc":
            if not parsed.netloc:
                raise FetchError(f"{uri}: write pvc://CLAIM/PATH")
            relative = urllib.parse.unquote(parsed.path).lstrip("/")
            if ".." in Path(relative).parts:
                raise FetchError(f"{uri}: the path must stay inside the claim")
            return pvc_root / parsed.netloc / relative
        case "http" | "https":
            return None
    raise FetchError(f"{uri}: unsupported scheme {parsed.scheme!r} (use file://, pvc:// or http(s)://)")


def download(url: str, target: Path, *, timeout: float) -> None:
    try:
        with httpx.stream("GET", url, timeout=timeout, follow_redirects=True) as response:
            if response.status_code != 200:
                raise FetchError(f"{url}: HTTP {response.status_code}")
            with target.open("wb") as out:
                for chunk in response.iter_bytes():
                    out.write(chunk)
    except httpx.HTTPError as exc:
        raise FetchError(f"{url}: {type(exc).__name__}: {exc}") from exc


def fetch(
    uri: str,
    dest: Path,
    *,
    public_key: Path | None = None,
    pvc_root: Path = Path("/mnt/pvc"),
    timeout: float = 120.0,
) -> artifact.Artifact:
    """Fetch, verify and install the artifact at `uri` as `dest`. Raises FetchError or ArtifactError."""
    key = artifact.load_public_key(public_key) if public_key else None
    dest.parent.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix=f".{dest.name}-", dir=dest.parent))
    try:
        source = source_path(uri, pvc_root)
        if source is None:
            name = Path(urllib.parse.urlparse(uri).path).name
            if not name.endswith((".tar.gz", ".tgz")):
                raise FetchError(f"{uri}: over http(s) an artifact is a .tar.gz")
            source = scratch / name
            download(uri, source, timeout=timeout)
        if not source.exists():
            raise FetchError(f"{uri}: {source} does not exist")
        if source.is_dir():
            copied = scratch / "artifact"
            shutil.copytree(source, copied)
            loaded = artifact.load_artifact(copied, public_key=key)
        else:
            loaded = artifact.load_artifact(source, public_key=key, extract_to=scratch / "artifact")
        shutil.rmtree(dest, ignore_errors=True)
        loaded.root.rename(dest)
        return artifact.load_artifact(dest, public_key=key)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
