"""`check_port`: whether the server could listen on a port, asked by `quantship serve` before anything
loads (the CLI's one-line refusal, exit 3), for the HTTP port and the gRPC one."""

from __future__ import annotations

import socket


def check_port(host: str, port: int, transport: str) -> None:
    """Raise OSError, in one line, when `transport` (HTTP, gRPC) could not listen on `host:port`. Asked
    before uvicorn starts: the same failure there came after the model had loaded (or a .tar.gz had
    unpacked), as uvicorn's error among its startup and shutdown lines, or, for gRPC, inside the app's
    startup with a traceback. A port taken between this check and the bind still fails there."""
    if port == 0:
        return  # any free port
    try:
        for family, kind, proto, _, address in socket.getaddrinfo(
            host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        ):
            with socket.socket(family, kind, proto) as probe:
                probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn and grpc-core bind
                probe.bind(address)
    except OSError as exc:
        raise OSError(f"cannot listen for {transport} on {host}:{port}: {exc.strerror or exc}") from None
