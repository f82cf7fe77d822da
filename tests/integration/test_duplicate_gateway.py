"""Two gateways with one copy-pasted gateway.id on a real Mosquitto: each connect kicks the other off (same client
id). Mosquitto 2.0.11 closes the old connection without a DISCONNECT, so the agents see only a closed socket; they
must still name the cause in one line, back off instead of flapping, and the one holding the session must still
get its readings through."""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.dev.devbroker import Mosquitto
from tests.support.agentproc import AgentProcess
from tests.support.broker import Collector
from tests.support.field import FieldNode, config_text, default_values, readings_of, start_sim, wait_configured, \
    write_config

pytestmark = pytest.mark.broker

WINDOW_S = 15.0
CAUSE = "two gateways share gateway.id or MQTT credentials"


@pytest.fixture
def pair(tmp_path: Path, broker: Mosquitto) -> Iterator[list[dict]]:
    """Two `denen run` agents, each with its own radio and journal, both configured as gw-test-01."""
    gateways = []
    try:
        for name, node_id in (("a", 0x00000201), ("b", 0x00000202)):
            home = tmp_path / name
            home.mkdir()
            node = FieldNode(node_id, "trap")
            sim = start_sim(home)
            cfg = write_config(home / "gateway.yaml", config_text(
                port=sim.path, mqtt_port=broker.port, journal=home / "journal.db", nodes=[node]))
            agent = AgentProcess(cfg, home / "agent.log")
            gateways.append({"name": name, "sim": sim, "agent": agent, "node": node, "log": home / "agent.log"})
            agent.start()
            assert wait_configured(sim, timeout=30), agent.text()
        yield gateways
    finally:
        for g in gateways:
            g["agent"].stop()
            g["sim"].stop()


def _connects(text: str) -> int:
    return len(re.findall(r"MQTT: connected to ", text))


def test_two_gateways_with_one_id_back_off_name_the_cause_and_still_deliver(
        pair: list[dict], broker: Mosquitto) -> None:
    status = Collector(broker, "denen/v1/gw-test-01/status", client_id="dup-status")
    readings = Collector(broker, "denen/v1/+/readings/#", client_id="dup-readings", persistent=True)
    try:
        # Both are up now: the second one's connect has kicked the first off. Count over the next WINDOW_S.
        before = [_connects(g["agent"].text()) for g in pair]
        status_before = len(status.messages)
        t0 = time.monotonic()
        time.sleep(5.0)
        # A reading on each gateway: the one holding the session publishes it at once, the other when its turn
        # comes (its journal keeps it meanwhile).
        sent = []
        for g in pair:
            assert g["sim"].inject_uplink(g["node"].frame(default_values("trap", 1)))
            sent.append(f"gw-test-01/{g['node'].hex}/{g['node'].sent[-1]['fcnt']}")
        first = readings.wait_for(lambda m: any(r["id"] in sent for r in readings_of(m)), 10)
        time.sleep(max(0.0, WINDOW_S - (time.monotonic() - t0)))
        connects = [_connects(g["agent"].text()) - b for g, b in zip(pair, before)]
        status_msgs = len(status.messages) - status_before
        texts = [g["agent"].text() for g in pair]

        # Reconnecting at once (mqtt.reconnect_min_s 0.2 s here) the pair made ~2 connects a second; backing off
        # from 5 s doubling, a handful in 15 s.
        assert sum(connects) <= 8, (connects, texts)
        # Each connect publishes "online" and kicks the other, whose Last Will publishes "offline".
        assert status_msgs <= 2 * 8, status_msgs
        docs = [json.loads(p) for _, p, _ in status.messages]
        assert {d["gateway"] for d in docs} == {"gw-test-01"}

        # One line naming the cause and the fix, in the log of the gateway(s) that got kicked; not once per kick.
        lines = [[line for line in t.splitlines() if CAUSE in line] for t in texts]
        assert any(lines), texts
        assert all(len(ls) <= 1 for ls in lines), lines
        line = next(ls[0] for ls in lines if ls)
        assert "client id 'denen-gw-test-01'" in line and "before reconnecting" in line

        # The gateway holding the session got its reading through at once; both get through in time.
        assert first, readings_of(readings.messages)
        assert readings.wait_for(lambda m: set(sent) <= {r["id"] for r in readings_of(m)}, 60), \
            (sent, readings_of(readings.messages))
    finally:
        status.close()
        readings.close()
    for g in pair:
        assert g["agent"].alive
