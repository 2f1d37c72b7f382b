"""A gRPC client in a few HTTP/2 frames, for what no well-behaved client does: send one unary call,
answer pings until its answer begins, then grant no flow-control window and acknowledge no ping, as
a client whose process stopped does.

Only what such a call needs: the preface, SETTINGS and its ack, HEADERS as HPACK literals (no
indexing, no Huffman), DATA, PING acks, and reading frames to see what the server did (RFC 9113)."""

from __future__ import annotations

import socket
import struct

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
DATA, HEADERS, SETTINGS, PING, GOAWAY = 0x0, 0x1, 0x4, 0x6, 0x7
END_STREAM, END_HEADERS, ACK = 0x1, 0x4, 0x1
MAX_FRAME = 16384
"""SETTINGS_MAX_FRAME_SIZE's initial value: the largest DATA frame a peer must take."""


def frame(kind: int, flags: int, stream: int, payload: bytes = b"") -> bytes:
    return len(payload).to_bytes(3, "big") + bytes((kind, flags)) + struct.pack(">I", stream) + payload


def _literal(name: str, value: str) -> bytes:
    """A header field as an HPACK literal without indexing, new name, neither Huffman-coded."""
    encoded = [part.encode() for part in (name, value)]
    assert all(len(part) < 127 for part in encoded)  # one-byte lengths
    return b"\x00" + b"".join(bytes((len(part),)) + part for part in encoded)


def answer_pings_until_the_answer_begins(sock: socket.socket) -> list[int]:
    """Acknowledge the server's pings (grpc core sends one to probe the bandwidth once a request's
    data comes, and closes a connection that leaves it unanswered a minute) until the answer's
    HEADERS arrive, as a live client does; the types of the frames read."""
    seen: list[int] = []
    while (read := read_frame(sock)) is not None:
        kind, flags, payload = read
        seen.append(kind)
        if kind == PING and not flags & ACK:
            sock.sendall(frame(PING, ACK, 0, payload))
        elif kind == HEADERS:
            break
    return seen


def read_frame(sock: socket.socket) -> tuple[int, int, bytes] | None:
    """The next frame's type, flags and payload; None once the server has closed the connection."""
    head = _read(sock, 9)
    if head is None:
        return None
    payload = _read(sock, int.from_bytes(head[:3], "big"))
    return None if payload is None else (head[3], head[4], payload)


def _read(sock: socket.socket, size: int) -> bytes | None:
    data = b""
    while len(data) < size:
        try:
            chunk = sock.recv(size - len(data))
        except ConnectionResetError:
            return None
        if not chunk:
            return None
        data += chunk
    return data


def start_unary_call(port: int, path: str, message: bytes) -> socket.socket:
    """A connection to 127.0.0.1:`port` with one call of `path` sent whole, its window left at
    HTTP/2's initial 65,535 bytes: the server can send no more of its answer than that."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=60)
    sock.sendall(PREFACE + frame(SETTINGS, 0, 0))
    kind, _, _ = read_frame(sock) or (None, 0, b"")
    assert kind == SETTINGS, "the server's first frame is its SETTINGS"
    sock.sendall(frame(SETTINGS, ACK, 0))
    fields = [(":method", "POST"), (":scheme", "http"), (":path", path), (":authority", f"127.0.0.1:{port}"),
              ("content-type", "application/grpc"), ("te", "trailers")]  # fmt: skip
    sock.sendall(frame(HEADERS, END_HEADERS, 1, b"".join(_literal(*field) for field in fields)))
    body = b"\x00" + struct.pack(">I", len(message)) + message  # uncompressed, length-prefixed
    for start in range(0, len(body), MAX_FRAME):
        last = start + MAX_FRAME >= len(body)
        sock.sendall(frame(DATA, END_STREAM if last else 0, 1, body[start : start + MAX_FRAME]))
    return sock
