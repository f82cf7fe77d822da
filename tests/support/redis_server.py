"""A real redis-server (Debian's) on a free loopback port, for the bridge's de-duplication tests.

Nothing is persisted (no RDB snapshot, no AOF) and its working directory is the test's own, so no file lands outside
``tmp_path``. ``stop()`` / ``start()`` take it away and bring it back on the same port (empty again: the claims were
in memory only, as a redis without persistence loses them on a restart). A missing binary fails the test with the
command that installs it; it is never a skip.
"""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.influx import ServerMissing, _binary, _Server
from tests.support.servers import serving

__all__ = ["RedisServer", "redis_server"]


class RedisServer(_Server):
    """redis-server with its log (and nothing else) under ``workdir``."""

    name = "redis-server"

    def __init__(self, workdir: Path) -> None:
        self.binary = _binary("redis-server", "/usr/bin/redis-server")
        super().__init__(workdir)

    @property
    def url(self) -> str:
        return f"redis://{self.host}:{self.port}/0"

    def _command(self) -> list[str]:
        return [self.binary, "--port", str(self.port), "--bind", self.host, "--dir", str(self.workdir),
                "--save", "", "--appendonly", "no", "--daemonize", "no", "--loglevel", "warning"]

    def _ready(self) -> bool:
        try:
            with socket.create_connection((self.host, self.port), timeout=0.5) as s:
                s.sendall(b"PING\r\n")
                return s.recv(16).startswith(b"+PONG")
        except OSError:
            return False


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    """A running redis-server, stopped after the test."""
    yield from serving(lambda: RedisServer(tmp_path / "redis"), ServerMissing)
