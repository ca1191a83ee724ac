"""A stand-in for a deployed bot's health endpoint: GET /health answers with the status `judge` gives the SHA
the deploy command last wrote to `state` ("" before any deploy), and that SHA as JSON `version`."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path


@contextmanager
def health_server(state: Path, judge: Callable[[str], int]) -> Iterator[str]:
    """Serve on a free loopback port; yields the /health URL."""

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            sha = state.read_text().strip() if state.exists() else ""
            body = json.dumps({"version": sha}).encode()
            self.send_response(judge(sha))
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}/health"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()
