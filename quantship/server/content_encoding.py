"""Request bodies sent compressed (`Content-Encoding: gzip` or `deflate`), as Triton takes them.

tritonclient's `request_compression_algorithm` compresses the whole body, JSON header and binary
tensors alike, and Inference-Header-Content-Length counts the header before compression. A body
inflates only up to --max-body-bytes: a gzip bomb is a 413 after that many bytes, not a full heap.
Responses go uncompressed whatever Accept-Encoding asks (HTTP's identity is always acceptable).
"""

from __future__ import annotations

import zlib

from quantship.server.errors import InvalidInput, PayloadTooLarge, UnsupportedMediaType

_WBITS = {"gzip": 16 + zlib.MAX_WBITS, "deflate": zlib.MAX_WBITS}
"""zlib's window bits per coding: gzip's header and trailer, or zlib's (what HTTP's deflate means)."""


def decoded(body: bytes, coding: str, max_bytes: int) -> bytes:
    """The body as sent before `coding` (a Content-Encoding value; "" or identity: as it is)."""
    coding = coding.strip().lower()
    if coding in ("", "identity"):
        return body
    wbits = _WBITS.get(coding)
    if wbits is None:
        raise UnsupportedMediaType(
            f"Content-Encoding {coding!r} is not supported: send gzip, deflate or none"
        )
    inflater = zlib.decompressobj(wbits)
    try:
        inflated = inflater.decompress(body, max_bytes + 1)
    except zlib.error as exc:
        raise InvalidInput(f"the body is not valid {coding} data: {exc}") from None
    if len(inflated) > max_bytes:
        raise PayloadTooLarge(
            f"the body inflates to over {max_bytes} bytes, the most this server takes (--max-body-bytes)"
        )
    if not inflater.eof:
        raise InvalidInput(f"the body ends inside its {coding} data")
    if inflater.unused_data:
        raise InvalidInput(f"the body has {len(inflater.unused_data)} bytes after its {coding} data")
    return inflated
