"""An SOS heard by two gateways of overlapping valleys (agent/gateway/receipt_backup.py), each on its own simulated
RAK3172 and a real broker:

* both gateways are online: both publish the SOS, but only the node's answering gateway (``receipt: send``) puts a
  receipt on air; the backup (``receipt: backup``) stays silent, so the two cannot collide at the caller's device;
* the answering gateway goes down: the device sends its SOS again, and the backup answers that resend, 3-8 s
  after its broker acknowledged it.

The backup has been running longer than RESEND_WINDOW_S (a backup that just started answers every SOS: it cannot
know whether the device is already resending; tests/unit/test_edge_receipts.py).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.config import parse_config
from agent.dev.devbroker import Mosquitto
from agent.gateway.core import Gateway
from agent.gateway.receipt_backup import (
    BACKUP_DELAY_S,
    BACKUP_JITTER_S,
    RESEND_WINDOW_S,
    BackupReceipts,
)
from drivers.codec.frame import build_receipt
from drivers.sim.rak3172 import SimRak3172
from tests.support.field import start_sim
from tests.support.gateway_config import NodeEntry, node_key
from tests.support.polling import wait_until
from tests.support.scenario_rig import (
    PREFIX,
    ScenarioNode,
    TimedCollector,
    gateway_yaml,
)

pytestmark = pytest.mark.broker

SOS = {"pressed": 1.0, "lat_deg": 35.7861, "lon_deg": 139.0402, "alt_m": 642.0, "battery_v": 3.7}


class Valley:
    """One gateway and its module."""

    def __init__(self, tmp: Path, broker: Mosquitto, gateway: str, receipt: str) -> None:
        tmp.mkdir()
        self.sim: SimRak3172 = start_sim(tmp)
        node = NodeEntry(0x101, "sos", "sos-forester-1", node_key(0x101), 3600, receipt=receipt)
        text = gateway_yaml(port=self.sim.path, mqtt_port=broker.port, journal=tmp / "journal.db", nodes=[node],
                            gateway=gateway)
        self.gw = Gateway(parse_config(text))
        # As if started long ago: the first SOS is then not taken for a resend the backup missed while down.
        self.gw.edge._backup = BackupReceipts(started=time.monotonic() - RESEND_WINDOW_S - 1)
        self.acked: list[float] = []
        self.handled = 0
        on_sos_acked = self.gw.edge.on_sos_acked

        def noted(readings: list[dict]) -> None:
            self.acked.append(time.monotonic())
            on_sos_acked(readings)
            self.handled += 1

        self.gw.edge.on_sos_acked = noted  # type: ignore[method-assign]
        self.gw.start()
        assert self.sim.wait_for(lambda: self.sim.rx_mode == "continuous_tx", timeout=15), self.sim.commands
        assert wait_until(lambda: self.gw.link.connected, 15), f"{gateway} never connected"
        self.stopped = False

    def hear(self, payload: bytes) -> None:
        assert self.sim.inject_uplink(payload, rssi=-118, snr=-9.0), "the module was not listening"

    def stop(self) -> None:
        if not self.stopped:
            self.stopped = True
            self.gw.stop()
            self.sim.stop()


@pytest.fixture
def valleys(tmp_path: Path, broker: Mosquitto) -> Iterator[tuple[Valley, Valley]]:
    made: list[Valley] = []
    backend = TimedCollector(broker, f"{PREFIX}/#", client_id="scenario-backend", persistent=True)
    try:
        made.append(Valley(tmp_path / "a", broker, "gw-valley-a", "send"))
        made.append(Valley(tmp_path / "b", broker, "gw-valley-b", "backup"))
        yield made[0], made[1]
    finally:
        for v in made:
            v.stop()
        backend.close()


def test_one_receipt_per_sos_while_both_gateways_are_up_and_the_backup_answers_a_resend(
        valleys: tuple[Valley, Valley]) -> None:
    answering, backup = valleys
    caller = ScenarioNode(0x101, "sos", "sos-forester-1", interval_s=3600)

    first = caller.frame(SOS, receipt=True)
    answering.hear(first)
    backup.hear(first)
    receipt_1 = build_receipt(0x101, 1, caller.key)
    assert answering.sim.wait_for(lambda: receipt_1 in answering.sim.transmitted, 10), answering.sim.transmitted
    # The backup published the SOS too (its broker acknowledged it), and sent nothing on air, even after its delay.
    assert wait_until(lambda: backup.handled == 1, 10), "the backup's broker never acknowledged the SOS"
    assert backup.gw.edge._senders["lora0"].pending == 0  # nothing queued, so nothing can go later either
    time.sleep(BACKUP_DELAY_S + 1.0)
    assert backup.sim.transmitted == []
    assert answering.sim.transmitted == [receipt_1]

    # The answering gateway goes down; the caller's device got no receipt this time and sends the SOS again.
    answering.stop()
    resend = caller.frame(SOS, receipt=True)
    backup.hear(resend)
    receipt_2 = build_receipt(0x101, 2, caller.key)
    assert backup.sim.wait_for(lambda: receipt_2 in backup.sim.transmitted, 15), backup.sim.transmitted
    sent_at = time.monotonic()
    assert backup.sim.transmitted == [receipt_2]
    # It waited its delay after the acknowledgement, leaving the air to the answering gateway's receipt first.
    assert len(backup.acked) == 2 and BACKUP_DELAY_S - 0.1 <= sent_at - backup.acked[1]
    assert sent_at - backup.acked[1] <= BACKUP_DELAY_S + BACKUP_JITTER_S + 2.0  # within the jitter (and polling)
