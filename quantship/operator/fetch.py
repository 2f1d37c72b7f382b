"""`quantship fetch URI DIR`: put a verified artifact into DIR. The model servers' init container.

URI is file:///path (a directory or .tar.gz on a mounted file system), pvc://CLAIM/PATH (the
claim is mounted read-only under --pvc-root), http(s)://HOST/PATH.tar.gz, or
oci://REGISTRY/REPO:TAG|@DIGEST (pulled with `quantship.oci`, credentials from a Docker config
such as a mounted dockerconfigjson pull secret). The artifact lands
in a scratch directory next to DIR, is verified there with `artifact.load_artifact` (hashes, and
the signature when a public key is given), and only then renamed to DIR: a server never starts on
a half-copied or tampered artifact.

A download is hostile until checked: it stops at `max_bytes` (declared or not), follows redirects
only on the same scheme, host and port unless `cross_host_redirects` is set (a compromised or
misconfigured model server must not bounce the init container anywhere on the cluster network),
and its archive is unpacked within `archive.ArchiveLimits`. Refused, nothing stays on disk.
"""

from __future__ import annotations

import contextlib
import re
import urllib.parse
from pathlib import Path

import httpx

from quantship import archive, artifact, artifact_dirs, artifact_keys, oci, scratch, transfer_speed
from quantship.operator import names


class FetchError(Exception):
    """The artifact could not be fetched (bad URI, missing file, download failed)."""


class CrossHostRedirect(FetchError):
    """A download redirected to another host, which `cross_host_redirects` did not allow. Its
    message names no flag: `quantship fetch` has one, the quantize Job and the CRD have none."""


def source_path(uri: str, pvc_root: Path) -> Path | None:
    """The local path of a file:// or pvc:// URI; None for http(s)://."""
    try:
        parsed = urllib.parse.urlparse(uri)
    except ValueError as exc:  # an unclosed [ in the host
        raise FetchError(f"{uri}: not a URI: {exc}") from None
    match parsed.scheme:
        case "file":
            return Path(urllib.parse.unquote(parsed.netloc + parsed.path))
        case "pvc":
            if not re.fullmatch(names.SUBDOMAIN, parsed.netloc):
                raise FetchError(f"{uri}: write pvc://CLAIM/PATH (a claim's name is a DNS-1123 subdomain)")
            if "?" in uri or "#" in uri:  # urlparse would cut the path there: a shorter path, silently
                raise FetchError(f"{uri}: a pvc:// path has no ? or #")
            relative = urllib.parse.unquote(parsed.path).lstrip("/")
            if ".." in Path(relative).parts:
                raise FetchError(f"{uri}: the path must stay inside the claim")
            return pvc_root / parsed.netloc / relative
        case "http" | "https" | "oci":
            return None
    raise FetchError(
        f"{uri}: unsupported scheme {parsed.scheme!r} (use file://, pvc://, http(s):// or oci://)"
    )


def pvc_claim(uri: str) -> str:
    """The claim a pvc:// URI names, read as `source_path` reads it."""
    return urllib.parse.urlparse(uri).netloc


PVC_ROOT = Path("/mnt/pvc")
"""Where pvc://CLAIM/... claims are mounted: by the operator in its pods, read by fetch and the Job."""
MAX_REDIRECTS = 5


def download(
    url: str,
    target: Path,
    *,
    timeout: float,
    max_bytes: int = artifact.MAX_DOWNLOAD_BYTES,
    cross_host_redirects: bool = False,
    speed_limit: oci.SpeedLimit = oci.SPEED_LIMIT,
) -> None:
    """GET `url` into `target`: at most `max_bytes`, redirects only to the same origin unless told;
    a body that arrives slower than `speed_limit` is abandoned, as an OCI pull's."""
    origin = _origin(url)
    try:
        # identity: the body is the archive's own bytes. A server that sends it gzip-encoded anyway
        # (an object store's Content-Encoding on a .tar.gz) is read raw (`_save`), never inflated
        # past the archive's limits.
        headers = {"Accept-Encoding": "identity"}
        with httpx.Client(timeout=timeout, follow_redirects=False, headers=headers) as client:
            for _ in range(MAX_REDIRECTS + 1):
                with client.stream("GET", url) as response:
                    if response.is_redirect:
                        url = _redirect(url, response, origin, cross_host_redirects)
                        continue
                    if response.status_code != 200:
                        raise FetchError(f"{url}: HTTP {response.status_code}")
                    _save(url, response, target, max_bytes, speed_limit)
                    return
    except httpx.HTTPError as exc:
        raise FetchError(f"{url}: {type(exc).__name__}: {exc}") from exc
    raise FetchError(f"{url}: more than {MAX_REDIRECTS} redirects")


def _origin(url: str) -> tuple[str, str, int | None]:
    parsed = httpx.URL(url)
    return parsed.scheme, parsed.host, parsed.port


def _redirect(url: str, response: httpx.Response, origin: tuple[str, str, int | None], cross: bool) -> str:
    location = response.headers.get("location")
    if not location:
        raise FetchError(f"{url}: HTTP {response.status_code} without a Location")
    target = str(httpx.URL(url).join(location))
    scheme = httpx.URL(target).scheme
    if scheme not in ("http", "https") or (origin[0] == "https" and scheme != "https"):
        raise FetchError(f"{url}: redirected to {target}: refused (not http(s), or https downgraded)")
    if not cross and _origin(target) != origin:
        raise CrossHostRedirect(
            f"{url}: redirected to another host ({target}): refused (give the URL it redirects to)"
        )
    return target


def _save(
    url: str, response: httpx.Response, target: Path, max_bytes: int, speed_limit: oci.SpeedLimit
) -> None:
    declared = response.headers.get("content-length")
    if declared is not None and declared.isdecimal() and int(declared) > max_bytes:
        raise FetchError(f"{url}: {declared} bytes, more than the limit of {max_bytes} (--max-bytes)")
    received = 0
    # iter_raw yields each piece as it arrives
    meter = transfer_speed.SpeedMeter(speed_limit, f"{url}: its answer")
    try:
        with target.open("wb") as out:
            for chunk in response.iter_raw():
                received += len(chunk)
                if received > max_bytes:
                    raise FetchError(f"{url}: more than the limit of {max_bytes} bytes (--max-bytes)")
                meter.moved(len(chunk))
                out.write(chunk)
    except transfer_speed.TooSlow as exc:
        raise FetchError(str(exc)) from None
    except OSError as exc:  # a full disk: the download's network errors are httpx's, not OSError
        raise FetchError(f"{url}: cannot write it to {target}: {exc.strerror or exc}") from exc


def fetch(
    uri: str,
    dest: Path,
    *,
    public_key: Path | None = None,
    pvc_root: Path = PVC_ROOT,
    timeout: float = oci.TIMEOUT_S,
    max_bytes: int = artifact.MAX_DOWNLOAD_BYTES,
    cross_host_redirects: bool = False,
    registry_config: Path | None = None,
    insecure: bool = False,
    speed_limit: oci.SpeedLimit = oci.SPEED_LIMIT,
) -> artifact.Artifact:
    """Fetch, verify and install the artifact at `uri` as `dest`, where nothing, an empty directory or
    an older artifact is (anything else there, or at `.DEST.old`, is refused before any download).
    Raises FetchError or ArtifactError.
    `max_bytes` caps the download (an OCI pull's layers together); a .tar.gz may unpack to twice
    that (`archive.ArchiveLimits`). `timeout` bounds each connect and read; an oci:// pull or an
    http(s) download that moves slower than `speed_limit` is abandoned (a FetchError).
    `registry_config`: a Docker config.json with the oci:// registry's credentials; `insecure`: plain
    HTTP to it."""
    dest = dest.resolve()  # as `quantize -o`: `.` is the folder it names (`fetch URI .` was a traceback)
    artifact.refuse_inside_an_artifact(dest)  # before anything is made there, whatever the scheme
    if (refused := artifact_dirs.in_the_way(dest)) is not None:  # before the download, as pull's
        raise FetchError(f"{refused} exists and is not an artifact; refusing to replace it")
    key = artifact_keys.load_public_key(public_key) if public_key else None
    # beside dest, so the rename is atomic; what a killed fetch (an OOM-killed init container,
    # restarted on the same emptyDir) left there is swept
    building = contextlib.ExitStack()
    try:
        folder = building.enter_context(scratch.beside(dest, "fetch"))
    except OSError as exc:
        raise FetchError(f"cannot write beside {dest}: {exc.strerror or exc}") from exc
    with building:
        return _fetch_into(
            folder,
            uri,
            dest,
            key,
            pvc_root,
            timeout,
            max_bytes,
            cross_host_redirects,
            registry_config,
            insecure,
            speed_limit,
        )


def _fetch_into(
    folder: Path,
    uri: str,
    dest: Path,
    key: artifact.Ed25519PublicKey | None,
    pvc_root: Path,
    timeout: float,
    max_bytes: int,
    cross_host_redirects: bool,
    registry_config: Path | None,
    insecure: bool,
    speed_limit: oci.SpeedLimit,
) -> artifact.Artifact:
    if uri.startswith(oci.SCHEME):
        credentials = oci.Credentials(docker_config=registry_config)
        try:
            pulled = oci.pull(
                uri, folder / "artifact", credentials=credentials, public_key=key, timeout=timeout,
                max_bytes=max_bytes, insecure=insecure, speed_limit=speed_limit,
            )  # fmt: skip
        except oci.OciError as exc:
            raise FetchError(str(exc)) from exc
        return _install(pulled, dest, key)
    source = source_path(uri, pvc_root)
    if source is None:
        name = Path(urllib.parse.urlparse(uri).path).name
        if not name.endswith(artifact.ARCHIVE_SUFFIXES):
            raise FetchError(f"{uri}: over http(s) an artifact is a .tar.gz")
        source = folder / name
        download(
            uri, source, timeout=timeout, max_bytes=max_bytes, cross_host_redirects=cross_host_redirects,
            speed_limit=speed_limit,
        )  # fmt: skip
    if not source.exists():
        raise FetchError(f"{uri}: {source} does not exist")
    unpacked = folder / "artifact"
    try:
        if source.is_dir():  # only what its manifest lists: not a claim's lost+found, nor an unlisted link
            loaded = artifact.copy_listed(source, unpacked, public_key=key, max_bytes=2 * max_bytes)
        else:
            limits = archive.ArchiveLimits(max_bytes=2 * max_bytes)
            loaded = artifact.load_artifact(source, public_key=key, extract_to=unpacked, limits=limits)
    except artifact.ArtifactError as exc:  # named by the URI: the scratch folder is gone when read
        raise exc.naming([unpacked, source], uri) from exc
    return _install(loaded, dest, key)


def _install(
    loaded: artifact.Artifact, dest: Path, key: artifact.Ed25519PublicKey | None
) -> artifact.Artifact:
    """Put the verified artifact in place as `dest`: where nothing is, an empty directory or an older
    artifact was. Anything else at `dest` is someone's data: refused, untouched."""
    try:
        artifact_dirs.replace_dir(loaded.root, dest)
    except OSError as exc:
        raise FetchError(f"cannot install the artifact as {dest}: {exc.strerror or exc}") from exc
    return artifact.load_artifact(dest, public_key=key)
