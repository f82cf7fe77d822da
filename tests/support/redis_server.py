"""A real redis-server (Debian's) on a free loopback port, for the bridge's de-duplication tests.

Nothing is persisted (no RDB snapshot, no AOF) and its working directory is the test's own, so no file lands outside
``tmp_path``. ``stop()`` / ``start()`` take it away and bring it back on the same port (empty again: the claims were
in memory only, as a redis without persistence loses them on a restart). A missing binary fails the test with the
command that installs it; it is never a skip.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.dev.devbroker import free_port
from tests.support.influx import ServerMissing

__all__ = ["RedisServer", "redis_server"]


class RedisServer:
    """redis-server with its config, log and (unused) data dir under ``workdir``."""

    def __init__(self, workdir: Path) -> None:
        binary = shutil.which("redis-server") or "/usr/bin/redis-server"
        if not Path(binary).exists():
            raise ServerMissing("redis-server is not installed; the de-duplication tests need a real one. "
                                "Install it with: apt-get install -y redis-server")
        self.binary = binary
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.host = "127.0.0.1"
        self.port = free_port()
        self.log_path = self.workdir / "redis.log"
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://{self.host}:{self.port}/0"

    def _command(self) -> list[str]:
        return [self.binary, "--port", str(self.port), "--bind", self.host, "--dir", str(self.workdir),
                "--save", "", "--appendonly", "no", "--daemonize", "no", "--protected-mode", "yes",
                "--logfile", str(self.log_path), "--loglevel", "warning"]

    def start(self, timeout: float = 10.0) -> None:
        self.proc = subprocess.Popen(self._command(), stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.STDOUT, cwd=self.workdir)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                tail = self.log_path.read_text(errors="replace")[-2000:] if self.log_path.exists() else ""
                raise RuntimeError(f"redis-server exited with {self.proc.returncode}:\n{tail}")
            if self._ping():
                return
            time.sleep(0.02)
        self.stop()
        raise RuntimeError(f"redis-server did not answer on {self.url} within {timeout} s")

    def _ping(self) -> bool:
        try:
            with socket.create_connection((self.host, self.port), timeout=0.5) as s:
                s.sendall(b"PING\r\n")
                return s.recv(16).startswith(b"+PONG")
        except OSError:
            return False

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    """A running redis-server, stopped after the test."""
    server = RedisServer(tmp_path / "redis")
    server.start()
    try:
        yield server
    finally:
        server.stop()
