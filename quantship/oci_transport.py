"""The registry client's HTTP transport: a requests adapter (`Timeouts`) that gives every request
a timeout (oras sets none) and holds its body, as it is sent, and its answer (status line and
headers through `paced_headers`, then body), as it is read, to a `SpeedLimit`; the bounded retries
of a push (`push_retries`: `RETRIED_STATUSES`, a registry's Retry-After up to `MAX_RETRY_AFTER_S`);
a session that follows no redirect itself (`OwnRedirects`); an answer's body read within a
limit (`capped`). Used by `quantship.oci` and `oci_auth`.
"""

from __future__ import annotations

import urllib.parse
from collections.abc import Iterator
from typing import Any, TypeVar

import requests
import requests.adapters
import urllib3.exceptions
import urllib3.util.retry

from quantship import paced_headers
from quantship.oci_reference import OciError
from quantship.printable import brief
from quantship.transfer_speed import (
    CHUNK_BYTES,
    PacedAnswer,
    PacedUpload,
    SlowHeaders,
    SpeedLimit,
    SpeedMeter,
    TooSlow,
)

S = TypeVar("S", bound=requests.Session)
RETRIED_STATUSES = frozenset({429, 502, 503, 504})
"""The answers a push's request is made again after, as crane and oras-go do: the registry is
busy, or a proxy in front of it is. Any other failure (a 500 included) is final at once."""
GATEWAY_GAVE_UP = frozenset({502, 504})
"""The answers to a blob upload's closing PUT that may come after the registry completed it: that PUT
is not made again (its session is closed), the blob is looked for instead. A 429 or 503 is the
registry's own refusal: that PUT is retried as any other."""
PUSH_RETRIES = 4
"""How many times a push's request is made again after a `RETRIED_STATUSES` answer, or a refused
connection: backing off 0, 1, 2, 4 s, or as long as the registry's Retry-After asks, up to
`MAX_RETRY_AFTER_S`. A timed-out read is final: the registry had `timeout` seconds."""
MAX_RETRY_AFTER_S = 30.0
"""The longest a push waits on a registry's Retry-After, so a push ends within minutes whatever
the registry asks."""


class OwnRedirects(requests.Session):
    """A session that leaves every redirect to its caller. requests reads a redirect's body whole
    when it follows one, and even when told not to (to fill in `Response.next`): a registry could
    send an endless one. With no redirect target, it never starts."""

    def get_redirect_target(self, response: requests.Response) -> None:
        return None


def _transfer_name(request: requests.PreparedRequest) -> str:
    """HOST: METHOD PATH of a request, and the digest an upload's PUT names (its path names only
    the upload session): what a `TooSlow` says it abandoned."""
    parts = urllib.parse.urlsplit(request.url or "")
    digest = urllib.parse.parse_qs(parts.query).get("digest", [""])[0]
    named = f" (blob {brief(digest, 80)})" if digest else ""
    return f"{brief(parts.netloc, 80)}: {request.method} {brief(parts.path, 160)}{named}"


class Timeouts(requests.adapters.HTTPAdapter):
    """A transport adapter that gives every request a timeout (oras sets none) and holds its body,
    as it is sent, and its answer, as it is read (status line and headers, then body), to a
    `SpeedLimit`."""

    def __init__(
        self, timeout: float, speed_limit: SpeedLimit, retries: urllib3.util.retry.Retry | int = 0
    ) -> None:
        self.timeout = timeout
        self.speed_limit = speed_limit  # before the pool manager is made, which meters with it
        super().__init__(max_retries=retries)

    def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
        super().init_poolmanager(*args, **kwargs)
        paced_headers.meter_headers(self.poolmanager, self._header_meter)

    def proxy_manager_for(self, proxy: str, **proxy_kwargs: Any) -> urllib3.PoolManager:
        manager: urllib3.PoolManager = super().proxy_manager_for(proxy, **proxy_kwargs)
        paced_headers.meter_headers(manager, self._header_meter)
        return manager

    def _header_meter(self) -> SpeedMeter:
        return SpeedMeter(self.speed_limit, "its answer's status line and headers", error=SlowHeaders)

    @classmethod
    def on(cls, session: S, timeout: float, speed_limit: SpeedLimit) -> S:
        """`session`, every request of it now timing out and held to `speed_limit`."""
        for scheme in ("http://", "https://"):
            session.mount(scheme, cls(timeout, speed_limit))
        return session

    def send(self, request: requests.PreparedRequest, **kwargs: Any) -> requests.Response:  # type: ignore[override]
        if kwargs.get("timeout") is None:
            kwargs["timeout"] = self.timeout
        where = _transfer_name(request)
        sent = request
        if isinstance(request.body, bytes) and request.body:
            # a copy: the caller's request keeps its bytes, to send again (`BearerTo`) or to
            # digest (`oci._sent_digest`)
            sent = request.copy()
            sent.body = PacedUpload(request.body, SpeedMeter(self.speed_limit, f"{where}: its upload"))
        try:
            response = super().send(sent, **kwargs)
        except SlowHeaders as slow:
            raise TooSlow(f"{where}: {slow}") from None
        response.request = request
        response.raw = PacedAnswer(response.raw, SpeedMeter(self.speed_limit, f"{where}: its answer"))
        return response


class _BoundedRetry(urllib3.util.retry.Retry):
    """urllib3's Retry, a registry's Retry-After honoured up to MAX_RETRY_AFTER_S, and a blob
    upload's closing PUT never made again after a gateway's 502 or 504 (GATEWAY_GAVE_UP), which
    may come after the registry stored the blob and closed the upload session: the same PUT then
    meets 404 BLOB_UPLOAD_UNKNOWN. `oci._PushClient.put_upload` looks for the blob and uploads it anew."""

    def get_retry_after(self, response: Any) -> float | None:
        asked = super().get_retry_after(response)
        return None if asked is None else min(asked, MAX_RETRY_AFTER_S)

    def increment(  # type: ignore[override]
        self,
        method: str | None = None,
        url: str | None = None,
        response: Any = None,
        error: Exception | None = None,
        _pool: Any = None,
        _stacktrace: Any = None,
    ) -> urllib3.util.retry.Retry:
        if response is not None and response.status in GATEWAY_GAVE_UP and _closes_blob_upload(method, url):
            raise urllib3.exceptions.MaxRetryError(_pool, url or "", error)  # the answer stands
        return super().increment(method, url, response, error, _pool, _stacktrace)


def _closes_blob_upload(method: str | None, url: str | None) -> bool:
    """Whether this is the PUT that completes a blob upload (`.../blobs/uploads/SESSION?digest=`)."""
    parts = urllib.parse.urlsplit(url or "")
    query = urllib.parse.parse_qs(parts.query)
    return method == "PUT" and "/blobs/uploads/" in parts.path and "digest" in query


def push_retries() -> _BoundedRetry:
    """What a push's transport retries: RETRIED_STATUSES and refused connections, of any method
    (oras sends every body as bytes, which go again whole), PUSH_RETRIES times at most."""
    return _BoundedRetry(
        total=PUSH_RETRIES,
        connect=PUSH_RETRIES,
        read=False,
        status=PUSH_RETRIES,
        other=0,
        allowed_methods=None,
        status_forcelist=RETRIED_STATUSES,
        backoff_factor=0.5,
        respect_retry_after_header=True,
        raise_on_status=False,
    )


def capped(response: requests.Response, limit: int, too_long: str) -> Iterator[bytes]:
    """The body's chunks, refused once past `limit` bytes: a registry cannot fill memory or disk."""
    received = 0
    for chunk in response.iter_content(CHUNK_BYTES):
        received += len(chunk)
        if received > limit:
            raise OciError(too_long)
        yield chunk
