"""Three `denen bridge` processes on one MQTT v5 shared subscription, restarted one by one while gateways publish:
no reading is lost and none is stored twice (docs/capacity.md, "What the bridge relies on").

Real parts only: Mosquitto, InfluxDB 1.6.7, the bridges as their own processes (SIGTERM and SIGKILL are real). The
publisher follows the gateway's contract (README "MQTT topics", "Payload schema"): QoS 1 reading batches under
``denen/v1/<gateway>/readings/<lane>``, and a batch whose PUBACK says 0x10 (no matching subscribers) is offered
again, as the gateway's outbox does.
"""

from __future__ import annotations

import re
import threading
import time
from collections import Counter
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion

from agent.dev.devbroker import Mosquitto
from tests.bridge._helpers import batch, reading, topic, write_v1_bridge_config
from tests.support.fault_rig import BridgeProcess
from tests.support.influx import InfluxDB1
from tests.support.polling import wait_until

pytestmark = pytest.mark.broker

DB = "denen"
GATEWAYS = ("gw-roll-a", "gw-roll-b", "gw-roll-c")
NODES = 12  # per gateway
PER_BATCH = 12  # one reading of every node of a gateway per batch
NO_MATCHING_SUBSCRIBERS = 0x10
BATCH_RE = re.compile(r"bridge: batch of \d+ messages \((\d+) redelivered\)")


class GatewayLoad:
    """Publishes reading batches of :data:`GATEWAYS` from a thread, paced, until :meth:`stop`.

    Every 10th batch of a gateway is an SOS batch (lane ``sos``, kind ``sos``), the others telemetry. Each reading
    has the identity ``<gateway>/<node>/<fcnt>`` and a fixed ``ts_us``. ``sent`` lists every reading identity whose
    batch the broker acknowledged with success; a 0x10 PUBACK puts the batch back in front of the queue.
    """

    def __init__(self, broker: Mosquitto, interval_s: float) -> None:
        self.interval_s = interval_s
        self.sent: list[tuple[str, str, int]] = []  # (gateway, node hex, fcnt) acknowledged
        self.no_subscribers = 0
        self.refused = 0
        self.batches = 0
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._pending: dict[int, tuple[str, bytes, list[tuple[str, str, int]]]] = {}
        self._retry: list[tuple[str, bytes, list[tuple[str, str, int]]]] = []
        self._early: dict[int, mqtt.ReasonCode] = {}
        self.client = mqtt.Client(callback_api_version=CallbackAPIVersion.VERSION2, client_id="roll-gateways",
                                  protocol=MQTTProtocolVersion.MQTTv5)
        self.client.on_publish = self._on_publish
        self.client.connect(broker.host, broker.port)
        self.client.loop_start()
        self.thread = threading.Thread(target=self._run, name="gateway-load", daemon=True)
        self.error: BaseException | None = None
        self.thread.start()

    def _next(self, round_: int, gw: str) -> tuple[str, bytes, list[tuple[str, str, int]]]:
        fcnt = round_ + 1
        kind = "sos" if round_ % 10 == 9 else "water_level"
        values = {"button": 1.0, "battery_v": 3.5} if kind == "sos" else {"level_cm": 100.0 + round_ % 97,
                                                                         "battery_v": 3.6}
        rs = [reading(gw, 0x500 + n, fcnt, kind, values) for n in range(NODES)]
        keys = [(gw, r["node"], fcnt) for r in rs]
        return topic(gw, rs[0]["lane"]), batch(gw, rs), keys

    def _send(self, item: tuple[str, bytes, list[tuple[str, str, int]]]) -> None:
        # Not under self._lock: paho calls on_publish holding its own lock (lock order). A PUBACK that comes before
        # publish() returns is parked in _early and settled here.
        info = self.client.publish(item[0], item[1], qos=1)
        with self._lock:
            self.batches += 1
            rc = self._early.pop(info.mid, None)
            if rc is None:
                self._pending[info.mid] = item
            else:
                self._settle(item, rc)

    def _settle(self, item: tuple[str, bytes, list[tuple[str, str, int]]], rc: mqtt.ReasonCode) -> None:
        if rc.value == NO_MATCHING_SUBSCRIBERS:
            self.no_subscribers += 1
            self._retry.append(item)
        elif rc.is_failure:
            self.refused += 1
        else:
            self.sent.extend(item[2])

    def _on_publish(self, client: mqtt.Client, userdata: object, mid: int, rc: mqtt.ReasonCode,
                    props: object) -> None:
        with self._lock:
            item = self._pending.pop(mid, None)
            if item is None:
                self._early[mid] = rc
            else:
                self._settle(item, rc)

    def _run(self) -> None:
        try:
            round_ = 0
            while not self._stop.is_set():
                with self._lock:
                    retry, self._retry = self._retry, []
                for item in retry:
                    self._send(item)
                for gw in GATEWAYS:
                    self._send(self._next(round_, gw))
                round_ += 1
                time.sleep(self.interval_s)
        except BaseException as exc:  # thread top level: the test reads it  # noqa: BLE001
            self.error = exc

    def stop(self) -> None:
        """Stop publishing and wait until every batch is acknowledged (re-offering 0x10 ones)."""
        self._stop.set()
        self.thread.join(10)
        assert self.error is None, self.error
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            with self._lock:
                retry, self._retry = self._retry, []
                pending = len(self._pending)
            for item in retry:
                self._send(item)
            if not pending and not retry:
                return
            time.sleep(0.05)
        raise AssertionError(f"{len(self._pending)} batches never acknowledged")

    def close(self) -> None:
        self._stop.set()
        self.thread.join(10)
        self.client.disconnect()
        self.client.loop_stop()


def stored(influx: InfluxDB1) -> Counter[tuple[str, str, int]]:
    """Points per reading identity (gateway, node, fcnt) in the node measurements the test writes."""
    found: Counter[tuple[str, str, int]] = Counter()
    for row in influx.rows('SELECT "fcnt" FROM "water_level", "sos" GROUP BY "gateway", "node"', DB):
        found[(row["gateway"], row["node"], int(row["fcnt"]))] += 1
    return found


def points(influx: InfluxDB1) -> int:
    return influx.count("water_level", "fcnt", DB) + influx.count("sos", "fcnt", DB)


def start_all(bridges: list[BridgeProcess]) -> None:
    threads = [threading.Thread(target=b.start) for b in bridges]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert all(b.alive for b in bridges), [b.run_log()[-1500:] for b in bridges]


def rolling_restart(tmp_path: Path, broker: Mosquitto, influx: InfluxDB1, *, kill: bool) -> None:
    registry_gateways = {gw: "testville" for gw in GATEWAYS}
    bridges = []
    for i in range(1, 4):
        cid = f"bridge-roll-{i}"
        cfg = write_v1_bridge_config(tmp_path, broker, influx.url, cid, sites=registry_gateways, max_wait_ms=100)
        bridges.append(BridgeProcess(cfg, tmp_path / f"{cid}.log"))
    start_all(bridges)
    load = GatewayLoad(broker, interval_s=0.02)
    try:
        for bridge in bridges:
            floor = points(influx)
            # Restart while readings flow: some written and unacknowledged, some queued in the broker.
            assert wait_until(lambda f=floor: points(influx) >= f + 300, 20), (floor, points(influx))
            if kill:
                bridge.kill9()
            else:
                assert bridge.terminate() == 0, bridge.run_log()[-2000:]
            time.sleep(0.3)  # away for a moment: the broker queues its share for its session meanwhile
            bridge.start()
            assert load.thread.is_alive(), "the load ended before the restart; the test proved nothing"
        floor = points(influx)
        assert wait_until(lambda: points(influx) >= floor + 300, 20)
        load.stop()
        expected = Counter(load.sent)
        assert wait_until(lambda: points(influx) >= len(expected), 30), (points(influx), len(expected))
        time.sleep(0.3)  # anything still on its way would show up as an extra point
        for bridge in bridges:
            assert bridge.terminate() == 0, bridge.run_log()[-2000:]
    finally:
        load.close()
        for bridge in bridges:
            bridge.stop()
    got = stored(influx)
    assert load.refused == 0
    assert len(expected) > 2000 and max(expected.values()) == 1  # every identity published once
    lost = sorted(set(expected) - set(got))
    extra = sorted(set(got) - set(expected))
    doubled = sorted(k for k, n in got.items() if n > 1)
    assert not lost and not extra and not doubled, (lost[:10], extra[:10], doubled[:10])
    # Every bridge took a share after its restart (the group had all three members again).
    for bridge in bridges:
        assert "bridge: batch of" in bridge.run_log(), bridge.run_log()[-2000:]
    # Mosquitto keeps giving an away member's persistent session its share, so no publish found nobody.
    assert load.no_subscribers == 0
    if kill:  # what the killed processes had not acknowledged came again, and overwrote itself
        redelivered = sum(int(n) for b in bridges for n in BATCH_RE.findall(b.full_log()))
        assert redelivered > 0


def test_rolling_sigterm_restart_of_three_bridges_loses_and_duplicates_nothing(
        tmp_path: Path, broker: Mosquitto, influx: InfluxDB1) -> None:
    rolling_restart(tmp_path, broker, influx, kill=False)


def test_rolling_sigkill_restart_of_three_bridges_loses_and_duplicates_nothing(
        tmp_path: Path, broker: Mosquitto, influx: InfluxDB1) -> None:
    rolling_restart(tmp_path, broker, influx, kill=True)


def test_mosquitto_forgets_shared_subscriptions_on_restart_and_the_bridge_subscribes_again(
        tmp_path: Path, broker: Mosquitto, influx: InfluxDB1) -> None:
    """What the bridge relies on when the broker restarts (docs/capacity.md): Mosquitto 2.0 keeps a persistent
    session's queued messages across a restart but not its shared subscriptions, so until a bridge connects and
    subscribes again the broker answers a gateway's publish with PUBACK 0x10 (no matching subscribers) and keeps
    nothing; the gateway keeps such readings and offers them again. The bridge subscribes on every connect."""
    cid = "bridge-restore"
    cfg = write_v1_bridge_config(tmp_path, broker, influx.url, cid, sites={GATEWAYS[0]: "testville"})
    bridge = BridgeProcess(cfg, tmp_path / f"{cid}.log")
    bridge.start()
    codes: list[int] = []
    client = mqtt.Client(callback_api_version=CallbackAPIVersion.VERSION2, client_id="restore-gateway",
                         protocol=MQTTProtocolVersion.MQTTv5)
    done = threading.Event()
    client.on_publish = lambda c, u, mid, rc, p: (codes.append(rc.value), done.set())
    client.reconnect_delay_set(0.05, 0.2)

    def publish(fcnt: int) -> int:
        done.clear()
        rs = [reading(GATEWAYS[0], 0x900, fcnt, "water_level", {"level_cm": 1.0 * fcnt, "battery_v": 3.6})]
        client.publish(topic(GATEWAYS[0]), batch(GATEWAYS[0], rs), qos=1)
        assert done.wait(10), "no PUBACK"
        return codes[-1]

    client.connect(broker.host, broker.port)
    client.loop_start()
    try:
        assert publish(1) == 0
        assert bridge.terminate() == 0
        assert publish(2) == 0  # the away bridge's session holds the subscription: the broker queues its share
        broker.stop()
        broker.start()
        assert wait_until(lambda: client.is_connected(), 10)
        # The session (and reading 2 queued in it) survived the restart; its shared subscription did not.
        assert publish(3) == NO_MATCHING_SUBSCRIBERS
        bridge.start()  # returns once the bridge has subscribed again
        assert publish(4) == 0
        assert wait_until(lambda: influx.count("water_level", "level_cm", DB) == 3, 10)
        assert bridge.terminate() == 0
    finally:
        client.loop_stop()
        client.disconnect()
        bridge.stop()
    fcnts = sorted(int(r["fcnt"]) for r in influx.rows('SELECT "fcnt" FROM "water_level"', DB))
    assert fcnts == [1, 2, 4]  # 3 was refused with 0x10: a gateway keeps it and offers it again
