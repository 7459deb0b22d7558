"""HTTP endpoints: /metrics, /healthz (liveness), /readyz (PostgreSQL and Kafka answer)."""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from purger.liveness import Liveness

log = logging.getLogger("purger.http")

Check = Callable[[], None]


class HealthServer:
    """A small threaded HTTP server on its own thread."""

    def __init__(
        self,
        host: str,
        port: int,
        registry: CollectorRegistry,
        readiness: dict[str, Check],
        liveness: Liveness | None = None,
    ) -> None:
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                path = self.path.split("?", 1)[0]
                if path == "/metrics":
                    self._send(200, generate_latest(server.registry), CONTENT_TYPE_LATEST)
                elif path == "/healthz":
                    stale = server.liveness.stale() if server.liveness is not None else []
                    body = {"alive": not stale, "stalled_workers": stale}
                    self._json(503 if stale else 200, body)
                elif path == "/readyz":
                    checks = server.check()
                    ok = all(v == "ok" for v in checks.values())
                    self._json(200 if ok else 503, {"ready": ok, "checks": checks})
                else:
                    self._json(404, {"error": "not found"})

            def _json(self, status: int, body: object) -> None:
                self._send(status, json.dumps(body).encode(), "application/json")

            def _send(self, status: int, body: bytes, ctype: str) -> None:
                self.send_response(status)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: object) -> None:
                return  # scrapes every few seconds would drown the log

        self.registry = registry
        self.readiness = readiness
        self.liveness = liveness
        self.httpd = ThreadingHTTPServer((host, port), Handler)
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(target=self.httpd.serve_forever, name="http", daemon=True)

    @property
    def port(self) -> int:
        """The bound port (useful with port 0)."""
        return int(self.httpd.server_address[1])

    def check(self) -> dict[str, str]:
        """Run every readiness check; 'ok' or the error class per check."""
        out: dict[str, str] = {}
        for name, check in self.readiness.items():
            try:
                check()
                out[name] = "ok"
            except Exception as exc:  # a failed check is a 503, never a crash
                out[name] = f"unavailable ({exc.__class__.__name__})"
        return out

    def start(self) -> None:
        """Serve in the background."""
        self.thread.start()

    def stop(self) -> None:
        """Stop serving."""
        self.httpd.shutdown()
        self.httpd.server_close()
