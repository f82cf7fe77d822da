"""Attack 4 (issue 10): one frame without MIC must not silence a node whose policy is ``unauthenticated: flag``.

Real parts: ``denen run`` in its own process, a simulated RAK3172 on a pty, a real Mosquitto and a persistent
subscriber. The node has a key and the ``flag`` policy (frames without MIC accepted, marked ``"auth": "none"``).

The attacker, who has no key, sends one frame without MIC carrying counter 0xFFFFFFFF. With one shared window every
later genuine (signed) frame was a ``replay``, across restarts, with no way back. Here the genuine frames must keep
arriving, before and after a restart, and the operator's ``denen node reset-counter`` (for a re-flashed node that
counts from 0 again) must work with the agent running, be audited in the log and the journal, and take effect.
"""

from __future__ import annotations

import getpass
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from agent.tools import status as agent_status
from agent.dev.devbroker import Mosquitto
from drivers.codec import frame as nodeframe
from drivers.codec import kinds
from tests.support.agentproc import AgentProcess
from tests.support.broker import Collector
from tests.support.field import (FieldNode, config_text, default_values, readings_of, start_sim, wait_configured,
                                 write_config)
from tests.support.polling import wait_until

pytestmark = pytest.mark.broker

REPO = Path(__file__).resolve().parents[2]
TOP = 0xFFFF_FFFF
FORGED_BATTERY_V = 9.99  # only the attacker's frame carries it


def _unsigned(node: FieldNode, counter: int, values: dict[str, float]) -> bytes:
    """What anyone can send in the node's name without its key: a frame without MIC."""
    return nodeframe.build(node.node_id, counter, kinds.KIND_CODES[node.kind], kinds.encode_values(node.kind, values))


def _cli(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "agent.cli", *args], cwd=REPO, capture_output=True, text=True,
                          timeout=timeout)


@pytest.fixture
def field(tmp_path: Path, broker: Mosquitto) -> Iterator[dict[str, Any]]:
    node = FieldNode(0x00000201, "trap")
    sim = start_sim(tmp_path)
    journal = tmp_path / "journal.db"
    cfg = write_config(tmp_path / "gateway.yaml", config_text(port=sim.path, mqtt_port=broker.port, journal=journal,
                                                              nodes=[node], unauthenticated="flag"))
    col = Collector(broker, "denen/v1/+/readings/#", client_id="window-collector", persistent=True)
    agent = AgentProcess(cfg, tmp_path / "agent.log")
    try:
        yield {"node": node, "sim": sim, "cfg": cfg, "journal": journal, "col": col, "agent": agent}
    finally:
        agent.stop()
        col.close()
        sim.stop()


def _node_status(journal: Path) -> dict[str, Any]:
    """The node's row as `denen status` shows it ({} before the agent has written one)."""
    nodes = agent_status.collect(str(journal))["nodes"] if journal.exists() else []
    assert len(nodes) <= 1, nodes
    return nodes[0] if nodes else {}


def _arrived(col: Collector) -> list[tuple[int, str, float]]:
    """(fcnt, auth, battery_v) of every trap reading the subscriber got, in order."""
    return [(r["fcnt"], r["auth"], r["values"]["battery_v"]) for r in readings_of(col.messages)]


def test_an_unsigned_frame_at_the_top_of_the_counter_space_does_not_silence_the_node_and_reset_counter_works(
        field: dict[str, Any]) -> None:
    node, sim, cfg, journal, col, agent = (field[k] for k in ("node", "sim", "cfg", "journal", "col", "agent"))
    signed = lambda i: node.frame(default_values("trap", i))  # noqa: E731 - the node's firmware: next counter, MIC
    agent.start()
    assert wait_configured(sim), agent.text()

    for i in range(1, 4):
        assert sim.inject_uplink(signed(i))
    forged = dict(default_values("trap", 0), battery_v=FORGED_BATTERY_V)
    assert sim.inject_uplink(_unsigned(node, TOP, forged))
    for i in range(4, 7):
        assert sim.inject_uplink(signed(i))
    # Every genuine frame arrives signed; the attacker's one is accepted only as what it is: unauthenticated.
    assert col.wait_for(lambda m: len(readings_of(m)) >= 7, 30), (_arrived(col), agent.text()[-3000:])
    got = _arrived(col)
    assert [(f, a) for f, a, _ in got] == [(1, "mic"), (2, "mic"), (3, "mic"), (TOP, "none"), (4, "mic"),
                                         (5, "mic"), (6, "mic")]
    assert [b for f, a, b in got if a == "none"] == [FORGED_BATTERY_V]
    st = _node_status(journal)
    assert (st["fcnt_mic"], st["fcnt_unsigned"], st["frames_bad"]) == (6, TOP, 0)

    # Across a SIGKILL and a restart: the windows come back from the journal as they were.
    assert wait_until(lambda: agent_status.collect(str(journal))["journal"]["unsent"] == 0, 30)
    agent.kill9()
    since = len(sim.commands)
    agent.start()
    assert wait_configured(sim, since), agent.text()[-3000:]
    for i in range(7, 9):
        assert sim.inject_uplink(signed(i))
    assert sim.inject_uplink(_unsigned(node, 100, forged))  # under the unsigned window: refused
    assert col.wait_for(lambda m: [f for f, *_ in _arrived_from(m)][-2:] == [7, 8], 30), agent.text()[-3000:]
    assert wait_until(lambda: _node_status(journal)["frames_bad"] == 1, 15)
    # Counters reach the journal with a commit at most COUNTERS_EVERY_S (10 s) after they change.
    assert wait_until(lambda: agent_status.collect(str(journal))["counters"].get("frames.replay") == 1, 15)
    assert "frames.duplicate" not in agent_status.collect(str(journal))["counters"]

    # The node is re-flashed and counts from 1 again: refused until the operator resets its windows.
    reflashed = FieldNode(node.node_id, "trap")
    assert sim.inject_uplink(reflashed.frame(default_values("trap", 1)))
    assert wait_until(lambda: _node_status(journal)["frames_bad"] == 2, 15)
    out = _cli("node", "reset-counter", "trap-1", "-c", str(cfg))
    assert out.returncode == 0, (out.stdout, out.stderr, agent.text()[-2000:])
    assert "windows reset: with MIC 8 -> none, without MIC 4294967295 -> none" in out.stdout, out.stdout
    user = getpass.getuser()
    # The audit line, in the agent's log and in the journal: who, when, node, old and new windows.
    log_lines = [line for line in agent.text().splitlines() if "audit: reset-counter" in line]
    assert len(log_lines) == 1, agent.text()[-3000:]
    assert f"by user {user}" in log_lines[0] and "node 00000201 (trap-1)" in log_lines[0]
    assert "with MIC 8 -> none, without MIC 4294967295 -> none" in log_lines[0]
    [audit] = agent_status.collect(str(journal))["audit_recent"]
    assert (audit["user"], audit["action"], audit["node"]) == (user, "reset_counter", "00000201")
    assert "with MIC 8 -> none" in audit["detail"] and audit["ts_us"] > 0
    st = _node_status(journal)
    assert (st["fcnt_mic"], st["fcnt_unsigned"]) == (None, None)
    for i in range(2, 4):
        assert sim.inject_uplink(reflashed.frame(default_values("trap", i)))
    assert col.wait_for(lambda m: [f for f, *_ in _arrived_from(m)][-2:] == [2, 3], 30), agent.text()[-3000:]
    assert _node_status(journal)["fcnt_mic"] == 3
    assert "Traceback" not in agent.text()


def _arrived_from(messages: list[tuple[str, bytes, bool]]) -> list[tuple[int, str, float]]:
    return [(r["fcnt"], r["auth"], r["values"]["battery_v"]) for r in readings_of(messages)]


def test_reset_counter_while_the_agent_is_stopped_is_queued_and_carried_out_at_start(field: dict[str, Any]) -> None:
    node, sim, cfg, journal, col, agent = (field[k] for k in ("node", "sim", "cfg", "journal", "col", "agent"))
    agent.start()
    assert wait_configured(sim), agent.text()
    for i in range(1, 4):
        assert sim.inject_uplink(node.frame(default_values("trap", i), counter=40 + i))
    assert wait_until(lambda: _node_status(journal).get("fcnt_mic") == 43, 15), agent.text()[-2000:]
    agent.stop()

    out = _cli("node", "reset-counter", "0x00000201", "-c", str(cfg))
    assert out.returncode == 0, out.stderr
    assert "queued" in out.stdout and "not running" in out.stdout
    assert _node_status(journal)["fcnt_mic"] == 43  # nothing changes behind the agent's back
    [pending] = agent_status.collect(str(journal))["requests_pending"]
    assert (pending["action"], pending["node"]) == ("reset_counter", "00000201")

    since = len(sim.commands)
    agent.start()
    assert wait_configured(sim, since), agent.text()[-2000:]
    assert wait_until(lambda: "audit: reset-counter" in agent.text(), 15), agent.text()[-2000:]
    assert sim.inject_uplink(FieldNode(node.node_id, "trap").frame(default_values("trap", 1)))
    assert col.wait_for(lambda m: [f for f, *_ in _arrived_from(m)][-1:] == [1], 30), agent.text()[-2000:]
    data = agent_status.collect(str(journal))
    assert data["requests_pending"] == [] and len(data["audit_recent"]) == 1


def test_reset_counter_refuses_what_it_cannot_do_with_a_clear_message(field: dict[str, Any], tmp_path: Path) -> None:
    cfg, journal, agent, sim = field["cfg"], field["journal"], field["agent"], field["sim"]
    out = _cli("node", "reset-counter", "trap-1", "-c", str(cfg))
    assert out.returncode == 1 and "no journal at" in out.stderr, out.stderr
    agent.start()
    assert wait_configured(sim), agent.text()
    assert wait_until(journal.exists, 10)
    out = _cli("node", "reset-counter", "no-such-node", "-c", str(cfg))
    assert out.returncode == 1 and "neither a node name" in out.stderr, out.stderr
    out = _cli("node", "reset-counter", "0000beef", "-c", str(cfg))
    assert out.returncode == 1 and "keeps no state for it" in out.stderr, out.stderr
    assert "audit:" not in agent.text()
