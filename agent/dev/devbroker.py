"""A Mosquitto broker started on a free loopback port: for the demo, the tests and the benchmarks.

Not for production (deploy/backend has the real broker config with TLS, passwords and ACLs).
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from pathlib import Path

from agent.errors import AgentError

def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Mosquitto:
    """Starts ``mosquitto`` on 127.0.0.1:``port``; ``stop()`` / ``start()`` simulate a broker outage.

    The config follows what these machines need: ``user root`` when running as root, no queue limit for slow
    subscribers (the default 1000 silently drops QoS 1 messages), TCP_NODELAY (no 40 ms stalls) and persistence
    in a temporary folder so a restart keeps sessions.
    """

    def __init__(self, workdir: Path, *, port: int | None = None, extra: str = "") -> None:
        self.binary = shutil.which("mosquitto") or ("/usr/sbin/mosquitto" if os.path.exists("/usr/sbin/mosquitto") else None)
        if self.binary is None:
            raise AgentError(
                "mosquitto is not installed; the integration tests need a real broker. "
                "Install it with: apt-get install -y mosquitto (deploy/dev.sh test does this when run as root)"
            )
        self.host = "127.0.0.1"
        self.port = port or free_port()
        self.workdir = Path(workdir)
        (self.workdir / "persist").mkdir(parents=True, exist_ok=True)
        self.conf = self.workdir / "mosquitto.conf"
        lines = [
            f"listener {self.port} 127.0.0.1",
            "allow_anonymous true",
            "max_queued_messages 0",
            "max_inflight_messages 0",
            "set_tcp_nodelay true",
            "persistence true",
            f"persistence_location {self.workdir / 'persist'}/",
            "log_type error",
            "log_type warning",
            f"log_dest file {self.workdir / 'mosquitto.log'}",
        ]
        if os.geteuid() == 0:
            lines.insert(0, "user root")
        self.conf.write_text("\n".join(lines) + "\n" + extra)
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 10.0) -> None:
        self.proc = subprocess.Popen([self.binary, "-c", str(self.conf)], stdout=subprocess.DEVNULL,
                                     stderr=subprocess.PIPE)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                err = self.proc.stderr.read().decode(errors="replace") if self.proc.stderr else ""
                raise AgentError(f"mosquitto exited with {self.proc.returncode}: {err}")
            try:
                with socket.create_connection((self.host, self.port), timeout=0.2):
                    return
            except OSError:
                time.sleep(0.02)
        raise AgentError(f"mosquitto did not listen on {self.port} within {timeout} s")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.proc is not None and self.proc.stderr is not None:
            self.proc.stderr.close()
        self.proc = None
