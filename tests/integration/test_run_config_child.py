"""`denen run` loads its config in a short-lived child: the running agent (real process, real Mosquitto, a
simulated radio on a pty) holds no YAML parser and no built validator, reports a bad config as before, and a
SIGTERM while the config is being loaded ends both processes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from agent.dev.devbroker import Mosquitto
from agent.errors import ConfigError
from tests.support.broker import Collector
from tests.support.field import (
    NODES,
    FieldNode,
    config_text,
    default_values,
    readings_of,
    start_sim,
    wait_configured,
)
from tests.support.paths import REPO
from tests.support.polling import wait_until

pytestmark = pytest.mark.broker

# `denen run` as the CLI runs it, telling at its exit what the long-running process had loaded.
PROBE = """\
import atexit, json, runpy, sys

REPORT = sys.argv[1]


def report():
    from pydantic import BaseModel
    def subclasses(c):
        for s in c.__subclasses__():
            yield s
            yield from subclasses(s)
    models = list(subclasses(BaseModel))
    with open(REPORT, "w") as f:
        json.dump({"ruamel": sorted(m for m in sys.modules if "ruamel" in m),
                   "built": sorted({c.__module__ + "." + c.__qualname__ for c in models if c.__pydantic_complete__}),
                   "models": len(models)}, f)

atexit.register(report)
sys.argv = ["denen", "run", "-c", sys.argv[2]]
runpy.run_module("agent.cli", run_name="__main__", alter_sys=True)
"""


def test_the_running_agent_holds_no_yaml_parser_and_no_validator(tmp_path: Path, broker: Mosquitto) -> None:
    nodes = [FieldNode(n.node_id, n.kind) for n in NODES]
    sim = start_sim(tmp_path)
    cfg = tmp_path / "gateway.yaml"
    cfg.write_text(config_text(port=sim.path, mqtt_port=broker.port, journal=tmp_path / "journal.db", nodes=nodes))
    cfg.chmod(0o600)
    report = tmp_path / "report.json"
    log = tmp_path / "agent.log"
    col = Collector(broker, "denen/v1/+/readings/#", client_id="child-collector")
    try:
        with log.open("ab") as out:
            proc = subprocess.Popen([sys.executable, "-c", PROBE, str(report), str(cfg)], cwd=REPO, stdout=out,
                                    stderr=subprocess.STDOUT)
        try:
            assert wait_configured(sim), log.read_text()
            trap = next(n for n in nodes if n.kind == "trap")
            assert sim.inject_uplink(trap.frame(default_values("trap", 0)))
            # The reading went the whole way (decoded, MIC checked, journaled, published) in the running process.
            assert col.wait_for(lambda m: len(readings_of(m)) >= 1, 30), log.read_text()
        finally:
            proc.terminate()
            code = proc.wait(30)
    finally:
        col.close()
        sim.stop()
    assert code == 0, log.read_text()
    got = json.loads(report.read_text())
    assert got["models"] > 20  # the config's model classes are there, unbuilt
    assert got["ruamel"] == []
    assert got["built"] == []


def test_a_bad_config_is_reported_as_when_loaded_in_process(tmp_path: Path) -> None:
    cfg = tmp_path / "gateway.yaml"
    cfg.write_text("gateway: {id: gw-test, site: test}\n"
                   "radios:\n  - {name: lora0, driver: rak9999, port: /dev/null}\n"
                   "nodes:\n  - {id: \"00000101\", name: trap-1, kind: trap, key: \"00112233445566778899aabbccddeeff\"}\n")
    cfg.chmod(0o644)  # an inline key every user can read: refused too
    from agent.config import load_config

    with pytest.raises(ConfigError) as caught:
        load_config(cfg)
    out = subprocess.run([sys.executable, "-m", "agent.cli", "run", "-c", str(cfg)], cwd=REPO, capture_output=True,
                         text=True, timeout=60)
    assert out.returncode == 2
    assert str(caught.value) in out.stderr
    assert len(caught.value.issues) == 2


def test_a_missing_config_file_is_reported_as_before(tmp_path: Path) -> None:
    out = subprocess.run([sys.executable, "-m", "agent.cli", "run", "-c", str(tmp_path / "nope.yaml")], cwd=REPO,
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 1
    assert out.stderr.strip() == (f"denen: error: config file {tmp_path / 'nope.yaml'} does not exist "
                                  "(hint: check the path given with -c)")


def _children(pid: int) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            if int(stat.rpartition(")")[2].split()[1]) == pid:
                found.append(int(entry))
    return found


def test_sigterm_while_the_config_is_loaded_ends_both_processes(tmp_path: Path) -> None:
    # A config that is a FIFO with no writer: reading it blocks, so the child is still loading when SIGTERM comes.
    fifo = tmp_path / "gateway.yaml"
    os.mkfifo(fifo, 0o600)
    proc = subprocess.Popen([sys.executable, "-m", "agent.cli", "run", "-c", str(fifo)], cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        assert wait_until(lambda: len(_children(proc.pid)) == 1, 30), "the config child did not start"
        child = _children(proc.pid)[0]
        t0 = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(10)
        took = time.monotonic() - t0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
        out, err = proc.communicate()
    assert code == -signal.SIGTERM, err
    assert took < 5
    assert not Path(f"/proc/{child}").exists() or "zombie" in Path(f"/proc/{child}/status").read_text()
    assert b"Traceback" not in err
