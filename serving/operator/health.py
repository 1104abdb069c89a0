"""The operator's `/healthz` and `/readyz`: a tiny HTTP server in a thread (the operator serves no
traffic, so nothing heavier is needed), answering from two callables the operator hands it."""

from __future__ import annotations

import http.server
import threading
from collections.abc import Callable
from typing import Any

__all__ = ["HealthServer"]

#: (ok, why) -> 200 or 503 with `why` as the body.
Check = Callable[[], tuple[bool, str]]


class HealthServer:
    """Listens on `host`:`port` (0: a free port) from construction on (OSError when it cannot) and
    answers in a thread until `close()`."""

    def __init__(self, host: str, port: int, live: Check, ready: Check) -> None:
        checks = {"/healthz": live, "/readyz": ready}

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                check = checks.get(self.path.split("?", 1)[0])
                ok, why = check() if check is not None else (False, "not found")
                body = (why + "\n").encode()
                self.send_response(200 if ok else (503 if check is not None else 404))
                self.send_header("Content-Type", "text/plain; charset=utf-8")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                pass  # probes every few seconds would drown the operator's own log

        self._server = http.server.ThreadingHTTPServer((host, port), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(
            target=self._server.serve_forever, args=(0.2,), name="health", daemon=True
        )
        self._thread.start()

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)
