"""A test's own HTTP server (a hostile registry, a token realm, an archive host) whose clients hang up
as the test means them to: socketserver prints each such hang-up's traceback to stderr, which lands in
the output of a CLI under CliRunner (a test counting its lines fails), or between tests, where pytest
shows it (with xdist, in the middle of the progress line) though nothing failed."""

from __future__ import annotations

import sys
from http.server import ThreadingHTTPServer


class QuietHTTPServer(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request: object, client_address: object) -> None:
        """A client that hung up is not an error here; anything else still prints its traceback."""
        if not isinstance(sys.exc_info()[1], ConnectionError):
            super().handle_error(request, client_address)  # type: ignore[arg-type]
