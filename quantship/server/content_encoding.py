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
    """The body as sent before `coding` (a Content-Encoding value; "" or identity: as it is). A gzip
    body may be several members one after another (RFC 1952; gzip -d, Go and Python read them all):
    they inflate to one body, and `max_bytes` bounds them together, so a bomb split into members is
    a 413 as a single one is."""
    coding = coding.strip().lower()
    if coding in ("", "identity"):
        return body
    wbits = _WBITS.get(coding)
    if wbits is None:
        raise UnsupportedMediaType(
            f"Content-Encoding {coding!r} is not supported: send gzip, deflate or none"
        )
    view, pieces, size, offset = memoryview(body), [], 0, 0
    while True:  # one member a round
        inflater = zlib.decompressobj(wbits)
        feed = _FIRST_FEED
        while not inflater.eof:
            if offset == len(view):
                raise InvalidInput(f"the body ends inside its {coding} data")
            chunk = view[offset : offset + feed]
            offset, feed = offset + len(chunk), feed * 2
            try:  # past max_bytes + 1 bytes out it stops, and the body is refused whatever follows
                piece = inflater.decompress(chunk, max_bytes - size + 1)
            except zlib.error as exc:
                raise InvalidInput(f"the body is not valid {coding} data: {exc}") from None
            size += len(piece)
            if size > max_bytes:
                raise PayloadTooLarge(
                    f"the body inflates to over {max_bytes} bytes, the most this server takes "
                    "(--max-body-bytes)"
                )
            pieces.append(piece)
        offset -= len(inflater.unused_data)
        if offset == len(view):
            return pieces[0] if len(pieces) == 1 else b"".join(pieces)
        if coding != "gzip" or view[offset : offset + 2] != _GZIP_MAGIC:
            raise InvalidInput(f"the body has {len(view) - offset} bytes after its {coding} data")


_GZIP_MAGIC = b"\x1f\x8b"
"""The first bytes of a gzip member (RFC 1952): what tells another member from trailing garbage."""

_FIRST_FEED = 512
"""Bytes of a member fed to zlib first, doubling while it has not ended: what follows a member's end
in the piece fed is copied (zlib's unused_data), so feeding the whole rest would copy the body once
a member, quadratic in a body of many tiny members; this way each member costs about its own size."""
