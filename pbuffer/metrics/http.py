"""``/metrics`` and ``/healthz`` over HTTP from a daemon thread: :func:`serve` and its :class:`MetricsServer`."""

from __future__ import annotations

import logging
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING, Any

from ..aio import AsyncBuffer
from ..buffer import Buffer
from ..errors import ConfigurationError
from ..relay.drain import Relay
from .prometheus import Instrumentation, instrument, prometheus_module

if TYPE_CHECKING:
    from prometheus_client.registry import CollectorRegistry

__all__ = ["MetricsServer", "serve"]

_log = logging.getLogger("pbuffer.metrics")


class _IPv6Server(ThreadingHTTPServer):
    address_family = socket.AF_INET6


class MetricsServer:
    """An HTTP server in a daemon thread: ``GET /metrics`` (Prometheus text) and ``GET /healthz`` (200 or 503 with
    the reason as text; see :func:`check_health`). ``port`` is the bound port (useful with ``port=0``)."""

    def __init__(self, instrumentation: Instrumentation, addr: str, port: int, stall_after: float) -> None:
        self.instrumentation = instrumentation
        self.stall_after = stall_after
        handler = type("_Handler", (_Handler,), {"server_owner": self})
        # An IPv6 address (``::1``, ``::``, or ``[::1]`` as in a URL) needs an IPv6 socket; the standard library's
        # server makes IPv4 ones only. A host name stays IPv4, as before.
        bare = addr[1:-1] if addr.startswith("[") and addr.endswith("]") else addr
        server_class = _IPv6Server if ":" in bare else ThreadingHTTPServer
        try:
            self._httpd = server_class((bare, port), handler)
        except OSError as exc:
            instrumentation.close()
            raise ConfigurationError(f"cannot serve metrics on {addr}:{port}: {exc}") from exc
        self._httpd.daemon_threads = True
        self.addr = bare
        self.port: int = self._httpd.server_address[1]
        self._thread = threading.Thread(target=self._httpd.serve_forever, name="pbuffer-metrics", daemon=True)
        self._thread.start()

    @property
    def url(self) -> str:
        host = f"[{self.addr}]" if ":" in self.addr else self.addr
        return f"http://{host}:{self.port}"

    def close(self) -> None:
        """Stop serving and detach the metrics from the relay. Idempotent."""
        if self._thread.is_alive():
            self._httpd.shutdown()
            self._httpd.server_close()
            self._thread.join()
            self.instrumentation.close()

    def __enter__(self) -> MetricsServer:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


class _Handler(BaseHTTPRequestHandler):
    server_owner: MetricsServer

    def do_GET(self) -> None:
        owner = self.server_owner
        path = self.path.split("?", 1)[0]
        if path == "/metrics":
            from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
            try:
                body, status, kind = generate_latest(owner.instrumentation.registry), 200, CONTENT_TYPE_LATEST
            except Exception as exc:  # a buffer that cannot be read: say so, do not kill the server thread
                _log.exception("collecting metrics failed")
                body, status, kind = f"cannot collect metrics: {exc}\n".encode(), 500, "text/plain; charset=utf-8"
        elif path == "/healthz":
            health = owner.instrumentation.health(owner.stall_after)
            body, status, kind = f"{health.reason}\n".encode(), 200 if health.ok else 503, "text/plain; charset=utf-8"
        else:
            body, status, kind = b"not found: try /metrics or /healthz\n", 404, "text/plain; charset=utf-8"
        self.send_response(status)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        _log.debug("%s " + format, self.address_string(), *args)


def serve(buffer: Buffer | AsyncBuffer, relay: Relay | None, port: int, addr: str = "127.0.0.1", *,
          registry: CollectorRegistry | None = None, max_subjects: int = 100,
          stall_after: float = 60.0) -> MetricsServer:
    """Serve ``/metrics`` and ``/healthz`` for ``buffer`` and ``relay`` on ``addr:port`` (``port=0``: any free
    port) from a daemon thread; ``close()`` the result to stop. Metrics go to their own registry unless
    ``registry`` is given (pass ``prometheus_client.REGISTRY`` to serve the process's other metrics too).

    ``/healthz`` answers 200 while the relay is connected and making progress, else 503 with the reason: not
    connected, or messages pending for over ``stall_after`` seconds with no publish acknowledged in that time.
    """
    prometheus_client = prometheus_module()
    if isinstance(port, bool) or not isinstance(port, int) or not 0 <= port <= 65535:
        raise ConfigurationError(f"port must be an int from 0 to 65535, not {port!r}")
    if isinstance(stall_after, bool) or not isinstance(stall_after, (int, float)) or not 0 < stall_after < 1e9:
        raise ConfigurationError(f"stall_after must be a number of seconds above 0, not {stall_after!r}")
    instrumentation = instrument(buffer, relay, registry=registry if registry is not None
                                 else prometheus_client.CollectorRegistry(), max_subjects=max_subjects)
    return MetricsServer(instrumentation, addr, port, float(stall_after))
