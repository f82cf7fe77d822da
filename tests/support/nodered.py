"""A real Node-RED (from the npm registry) running a flow file, for the tests of the shipped example flows.

Node-RED is installed once per version into ``~/.cache/denen/node-red-<version>`` with the machine's npm (about
25 s and 120 MB); a machine without Node.js or npm fails the test with the command that installs them.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import urllib.request
from pathlib import Path
from typing import Any

from agent.dev.devbroker import free_port
from tests.support.polling import wait_until
from tests.support.process import end

__all__ = ["NODE_RED_VERSION", "NodeRed", "NodeRedMissing"]

#: The Node-RED the example flows are tested with (the 4.x line, Node.js 18 or later).
NODE_RED_VERSION = "4.1.15"


class NodeRedMissing(RuntimeError):
    """Node.js, npm or the Node-RED package cannot be had on this machine."""


def _installed() -> Path:
    home = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "denen" / f"node-red-{NODE_RED_VERSION}"
    exe = home / "node_modules" / ".bin" / "node-red"
    if exe.exists():
        return exe
    npm = shutil.which("npm")
    if npm is None or shutil.which("node") is None:
        raise NodeRedMissing("Node-RED needs Node.js and npm: apt-get install nodejs npm")
    home.mkdir(parents=True, exist_ok=True)
    done = subprocess.run([npm, "install", "--prefix", str(home), "--no-audit", "--no-fund", "--loglevel", "error",
                           f"node-red@{NODE_RED_VERSION}"], capture_output=True, text=True, timeout=600)
    if done.returncode != 0 or not exe.exists():
        raise NodeRedMissing(f"npm install node-red@{NODE_RED_VERSION} failed: {done.stderr[-2000:]}")
    return exe


class NodeRed:
    """Node-RED on a free loopback port running a copy of ``flow_file`` (the original is never written), with
    ``env`` in its environment (the flows' ``${VAR}`` properties)."""

    def __init__(self, workdir: Path, flow_file: Path, env: dict[str, str]) -> None:
        self.exe = _installed()
        self.workdir = workdir
        self.port = free_port()
        self.flow_file = workdir / "flows.json"
        self.env = env
        self.log_path = workdir / "node-red.log"
        self._proc: subprocess.Popen[bytes] | None = None
        workdir.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(flow_file, self.flow_file)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 60.0) -> None:
        settings = self.workdir / "settings.js"
        conf = {"uiPort": self.port, "uiHost": "127.0.0.1", "flowFile": str(self.flow_file),
                "credentialSecret": False, "logging": {"console": {"level": "info"}},
                "telemetry": {"enabled": False}, "diagnostics": {"enabled": False}, "runtimeState": {"enabled": False},
                "editorTheme": {"tours": False}}
        settings.write_text(f"module.exports = {json.dumps(conf)};\n")
        with open(self.log_path, "wb") as log:
            self._proc = subprocess.Popen(
                [str(self.exe), "-u", str(self.workdir / "user"), "-s", str(settings)],
                stdout=log, stderr=subprocess.STDOUT, env={**os.environ, **self.env})
        if not wait_until(lambda: "Started flows" in self.log() or self._proc.poll() is not None, timeout):
            raise NodeRedMissing(f"Node-RED did not start in {timeout} s: {self.log()[-2000:]}")
        if self._proc.poll() is not None:
            raise NodeRedMissing(f"Node-RED exited: {self.log()[-2000:]}")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def get_json(self, path: str) -> Any:
        with urllib.request.urlopen(self.url + path, timeout=5) as resp:
            return json.load(resp)

    def stop(self) -> None:
        end(self._proc)
        self._proc = None
