"""Attack 5, gateway side (issue 10): a flood of bad frames must not flood the log, and forged node ids must not
grow the gateway's state without bound.

Real parts: ``denen run`` in its own process, a simulated RAK3172 on a pty, a real Mosquitto. Each flood is counted
exactly (``denen status``) while the log holds a bounded number of lines: the first of each (reason, sender) in
full, then one summary line per minute (and at shutdown) with the number of frames it stands for.
"""

from __future__ import annotations

import random
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from agent.tools import status as agent_status
from agent.dev.devbroker import Mosquitto
from drivers.codec import frame as nodeframe
from drivers.codec import kinds
from tests.support.agentproc import AgentProcess
from tests.support.field import FieldNode, config_text, default_values, start_sim, wait_configured, write_config
from tests.support.polling import wait_until

pytestmark = pytest.mark.broker

BAD_MIC = 3000
FORGED_IDS = 2000
UNKNOWN_MAX = 50
RATE_HZ = 400  # frames a second offered to the module (a UART at 115200 baud carries about this many)


@pytest.fixture
def rig(tmp_path: Path, broker: Mosquitto) -> Iterator[dict[str, Any]]:
    node = FieldNode(0x00000201, "trap")
    sim = start_sim(tmp_path)
    journal = tmp_path / "journal.db"
    unknown = f"unknown_nodes: accept\nunknown_nodes_max: {UNKNOWN_MAX}"
    cfg = write_config(tmp_path / "gateway.yaml", config_text(port=sim.path, mqtt_port=broker.port, journal=journal,
                                                              nodes=[node], extra=unknown))
    agent = AgentProcess(cfg, tmp_path / "agent.log")
    agent.start()
    try:
        assert wait_configured(sim), agent.text()
        yield {"node": node, "sim": sim, "journal": journal, "agent": agent}
    finally:
        agent.stop()
        sim.stop()


def _paced(frames: list[bytes], sim: Any) -> None:
    next_at = time.monotonic()
    for f in frames:
        assert sim.inject_uplink(f), "the module was not listening"
        next_at += 1.0 / RATE_HZ
        delay = next_at - time.monotonic()
        if delay > 0:
            time.sleep(delay)


def _counters(journal: Path) -> dict[str, int]:
    return agent_status.collect(str(journal))["counters"]


def test_3000_bad_mic_frames_give_a_bounded_number_of_log_lines_with_a_summary(rig: dict[str, Any]) -> None:
    node, sim, journal, agent = rig["node"], rig["sim"], rig["journal"], rig["agent"]
    rng = random.Random(10)
    forged = [node.frame(default_values("trap", i), counter=1000 + i, key=rng.randbytes(16)) for i in range(BAD_MIC)]
    garbage = 300
    started = time.monotonic()
    _paced(forged, sim)
    for _ in range(garbage):  # a garbled module at rate: one incident per line
        sim.inject_garbage(b"\x00\xff#!garbage\r\n")
    assert wait_until(lambda: _counters(journal).get("frames.bad_mic", 0) == BAD_MIC, 60), _counters(journal)
    assert wait_until(lambda: _counters(journal).get("lora0.garbled_line", 0) >= garbage, 30), _counters(journal)
    # A genuine frame still gets through, and is not blamed.
    assert sim.inject_uplink(node.frame(default_values("trap", 1)))
    assert wait_until(lambda: _counters(journal).get("frames.ok", 0) == 1, 15)
    assert agent.stop() == 0
    elapsed = time.monotonic() - started

    log = agent.text()
    full = [line for line in log.splitlines() if "frame quarantined from 00000201" in line]
    summaries = [line for line in log.splitlines() if "more bad_mic frames from node 00000201" in line]
    windows = int(elapsed // 60) + 2  # one full line and one summary per minute at most, and the one at shutdown
    assert 1 <= len(full) <= windows and 1 <= len(summaries) <= windows, (len(full), len(summaries), log[-3000:])
    # The summary lines account for every frame not logged in full.
    summed = sum(int(re.search(r"\.\.\. ([\d,]+) more bad_mic", line).group(1).replace(",", ""))  # type: ignore[union-attr]
                 for line in summaries)
    assert summed + len(full) == BAD_MIC, (summed, len(full))
    if len(full) == 1:
        assert f"... {BAD_MIC - 1:,} more bad_mic frames from node 00000201 in the last" in summaries[0], summaries
    garbled = [line for line in log.splitlines() if "garbled_line" in line]
    assert 2 <= len(garbled) <= 2 * windows, garbled[:5]
    assert "incidents from radio lora0" in log
    assert len(log.splitlines()) < 100, "the flood reached the log"
    assert _counters(journal)["frames.bad_mic"] == BAD_MIC  # counted, every one


def test_forged_unknown_ids_under_accept_keep_the_state_bounded_and_the_configured_node(rig: dict[str, Any]) -> None:
    node, sim, journal, agent = rig["node"], rig["sim"], rig["journal"], rig["agent"]
    assert sim.inject_uplink(node.frame(default_values("trap", 1)))
    rng = random.Random(11)
    ids = rng.sample(range(0x1000_0000, 0x2000_0000), FORGED_IDS)
    body = kinds.encode_values("trap", default_values("trap", 0))
    _paced([nodeframe.build(nid, 1, kinds.KIND_CODES["trap"], body) for nid in ids], sim)
    assert wait_until(lambda: _counters(journal).get("frames.ok", 0) == FORGED_IDS + 1, 60), _counters(journal)
    assert sim.inject_uplink(node.frame(default_values("trap", 2)))
    assert wait_until(lambda: _counters(journal).get("frames.ok", 0) == FORGED_IDS + 2, 15)
    data = agent_status.collect(str(journal))
    held = {n["node"] for n in data["nodes"]}
    # The configured node, and the most recently heard unknown ones, nothing more.
    assert node.hex in held and len(held) == UNKNOWN_MAX + 1, len(held)
    assert held - {node.hex} == {f"{nid:08x}" for nid in ids[-UNKNOWN_MAX:]}
    assert data["counters"]["nodes.unknown_evicted"] == FORGED_IDS - UNKNOWN_MAX
    assert [n for n in data["nodes"] if n["node"] == node.hex][0]["fcnt_mic"] == 2
    assert agent.stop() == 0
    assert "Traceback" not in agent.text()
