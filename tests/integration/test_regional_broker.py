"""A regional Mosquitto that forwards a remote valley's gateways to the central broker with Mosquitto's own bridge
(deploy/backend/regional/mosquitto-regional.conf), the broker-to-broker link cut and restored under traffic.

Real parts: two Mosquitto processes, InfluxDB 1.6.7, `denen bridge` as its own process reading from the central
broker. The link runs through a TCP relay in the test, so "cut" is what a failed backhaul does: the connections
drop and new ones are refused, while both brokers and the bridge stay up. The connection sections are the shipped
file's, with the address pointed at the relay, the TLS and password lines left out (loopback, anonymous test
brokers) and a 1 s retry instead of 2..30 s (so the test stays short).
"""

from __future__ import annotations

import json
import re
import socket
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from agent.dev.devbroker import Mosquitto
from agent.errors import AgentError
from tests.bridge import _helpers as msgs
from tests.support.broker import Collector
from tests.support.fault_rig import BridgeProcess
from tests.support.influx import InfluxDB1
from tests.support.paths import REPO
from tests.support.polling import wait_until
from tests.support.servers import serving

pytestmark = pytest.mark.broker

REGIONAL_CONF = REPO / "deploy" / "backend" / "regional" / "mosquitto-regional.conf"
DB = "denen"
GATEWAYS = ("gw-valley-1", "gw-valley-2")
NODES = 8
#: Telemetry batches per gateway published while the link is down: enough that draining them over the backhaul
#: takes longer than one retry period of the link (the test checks it).
BACKLOG_ROUNDS = 400
#: Bytes per second each connection of the relayed link carries each way (a thin backhaul).
BACKHAUL_BYTES_S = 1_000_000
#: Lines of the shipped connection sections the loopback test leaves out (TLS and the central broker's login).
_LEFT_OUT = re.compile(r"^(bridge_cafile|bridge_certfile|bridge_keyfile|bridge_tls_version|bridge_insecure|"
                       r"remote_username|remote_password)\b")


def shipped_connections() -> dict[str, dict[str, list[str]]]:
    """The shipped file's bridge connections: name -> directive -> values (in order)."""
    out: dict[str, dict[str, list[str]]] = {}
    current: dict[str, list[str]] | None = None
    for line in REGIONAL_CONF.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        key, _, value = line.partition(" ")
        if key == "connection":
            current = out.setdefault(value, {})
        elif current is not None:
            current.setdefault(key, []).append(value)
    return out


def regional_bridge_sections(relay_port: int) -> str:
    text = REGIONAL_CONF.read_text()
    sections = text[text.index("\nconnection "):]
    lines = []
    for line in sections.splitlines():
        if _LEFT_OUT.match(line):
            continue
        if line.startswith("address "):
            line = f"address 127.0.0.1:{relay_port}"
        elif line.startswith("restart_timeout "):
            line = "restart_timeout 1"
        lines.append(line)
    return "\n".join(lines) + "\n"


class Relay:
    """A TCP relay 127.0.0.1:``port`` -> ``target`` standing for the valley's backhaul: each connection carries at
    most ``rate`` bytes/s each way, and :meth:`cut` drops every connection and refuses new ones until
    :meth:`restore` (accepted and closed at once, as a link that is down)."""

    def __init__(self, target: int, rate: float = BACKHAUL_BYTES_S) -> None:
        self.target = target
        self.rate = rate
        self.server = socket.create_server(("127.0.0.1", 0))
        self.port = self.server.getsockname()[1]
        self.up = True
        self._conns: list[socket.socket] = []
        self._lock = threading.Lock()
        self._closed = False
        threading.Thread(target=self._accept, name="relay", daemon=True).start()

    def _accept(self) -> None:
        while not self._closed:
            try:
                client, _ = self.server.accept()
            except OSError:
                return
            if not self.up:
                client.close()
                continue
            try:
                upstream = socket.create_connection(("127.0.0.1", self.target), timeout=2)
            except OSError:
                client.close()
                continue
            upstream.settimeout(None)
            with self._lock:
                self._conns += [client, upstream]
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(16384):
                dst.sendall(data)
                time.sleep(len(data) / self.rate)
        except OSError:
            pass
        for s in (src, dst):
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def links(self) -> int:
        """Connections relayed now."""
        with self._lock:
            return len(self._conns) // 2

    def cut(self) -> None:
        self.up = False
        with self._lock:
            conns, self._conns = self._conns, []
        for s in conns:
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            s.close()

    def restore(self) -> None:
        self.up = True

    def close(self) -> None:
        self._closed = True
        self.cut()
        self.server.close()


class ValleyGateways:
    """Publishes to the regional broker as the valley's gateways do (QoS 1, one lane per message, waits for each
    PUBACK of the regional broker). Identities ``<gateway>/<node>/<fcnt>``; fcnt counts per gateway and lane kind."""

    def __init__(self, regional: Mosquitto) -> None:
        self.pub = msgs.Publisher(regional, client_id="valley-gateways")
        self.fcnt: Counter[tuple[str, str]] = Counter()
        self.sent: list[tuple[str, str, int]] = []

    def publish(self, kind: str, rounds: int) -> None:
        items = []
        for _ in range(rounds):
            for gw in GATEWAYS:
                self.fcnt[(gw, kind)] += 1
                fcnt = self.fcnt[(gw, kind)]
                base = 0x700 if kind == "sos" else 0x600
                values = {"button": 1.0, "battery_v": 3.5} if kind == "sos" else {"level_cm": 100.0 + fcnt % 89,
                                                                                 "battery_v": 3.6}
                rs = [msgs.reading(gw, base + n, fcnt, kind, values, ts_us=msgs.T0_US + fcnt * 1000 + n) for n in range(NODES)]
                items.append((msgs.topic(gw, rs[0]["lane"]), msgs.batch(gw, rs)))
                keys = [(gw, r["node"], fcnt) for r in rs]
                self.sent += keys
        self.pub.publish(items)

    def close(self) -> None:
        self.pub.close()


def arrivals(collector: Collector) -> list[tuple[str, str, int]]:
    """Reading identities in the order the central broker delivered them (first arrival only)."""
    seen: dict[tuple[str, str, int], None] = {}
    for t, payload, _ in list(collector.messages):
        if "/readings/" in t:
            doc = json.loads(payload)
            for r in doc["readings"]:
                seen.setdefault((doc["gateway"], r["node"], r["fcnt"]), None)
    return list(seen)


def first_arrivals(collector: Collector, arrived_at: list[float]) -> dict[tuple[str, str, int], float]:
    """Reading identity -> when the central broker first delivered it (monotonic seconds)."""
    seen: dict[tuple[str, str, int], float] = {}
    for (t, payload, _), at in zip(list(collector.messages), list(arrived_at), strict=False):
        if "/readings/" in t:
            doc = json.loads(payload)
            for r in doc["readings"]:
                seen.setdefault((doc["gateway"], r["node"], r["fcnt"]), at)
    return seen


def stored(influx: InfluxDB1) -> Counter[tuple[str, str, int]]:
    found: Counter[tuple[str, str, int]] = Counter()
    for row in influx.rows('SELECT "fcnt" FROM "water_level", "sos" GROUP BY "gateway", "node"', DB):
        found[(row["gateway"], row["node"], int(row["fcnt"]))] += 1
    return found


def test_shipped_regional_config_is_qos1_persistent_with_own_client_ids_and_sos_on_its_own_link() -> None:
    conns = shipped_connections()
    assert set(conns) == {"central-sos", "central-bulk"}
    for name, c in conns.items():
        assert c["cleansession"] == ["false"], name
        assert all(t.endswith(" 1") for t in c["topic"]), (name, c["topic"])  # QoS 1 everywhere
        assert c["local_clientid"] != c["remote_clientid"], name
        assert c["bridge_insecure"] == ["false"] and c["bridge_cafile"], name  # TLS to the centre, verified
    ids = [c[k][0] for c in conns.values() for k in ("local_clientid", "remote_clientid")]
    assert len(set(ids)) == 4  # a session of its own for each end of each connection
    sos_topics = {t.split()[0] for t in conns["central-sos"]["topic"]}
    assert sos_topics == {"denen/v1/+/readings/sos", "denen/v1/+/readings/alarm"}
    bulk = {t.split()[0]: t.split()[1] for t in conns["central-bulk"]["topic"]}
    assert not ({"denen/v1/+/readings/sos", "denen/v1/+/readings/alarm"} & set(bulk))
    assert bulk["denen/v1/+/cmd/#"] == "in"  # staff commands reach the valley's gateways
    # Every topic a gateway may publish (the central ACL) is forwarded by exactly one connection.
    acl = (REPO / "deploy" / "backend" / "mosquitto" / "acl").read_text()
    published = {ln.split()[2].replace("%u", "+") for ln in acl.splitlines()
                 if ln.startswith("gateway publishClientSend")}
    out = [t.split()[0] for c in conns.values() for t in c["topic"] if t.split()[1] == "out"]
    assert sorted(out) == sorted(published)
    conf = REGIONAL_CONF.read_text()
    # Same login and access-rule scheme as the central broker.
    for line in ("allow_anonymous false", "use_username_as_clientid true", "max_queued_messages 0",
                 "plugin /usr/lib/mosquitto_dynamic_security.so", "persistence true"):
        assert f"\n{line}\n" in conf, line


@pytest.fixture
def central(tmp_path: Path) -> Iterator[Mosquitto]:
    """The central broker (the one the bridges read from)."""
    yield from serving(lambda: Mosquitto(tmp_path / "central"), AgentError)


@pytest.fixture
def relay(central: Mosquitto) -> Iterator[Relay]:
    """The broker-to-broker link, to be cut."""
    link = Relay(central.port)
    yield link
    link.close()


@pytest.fixture
def regional(tmp_path: Path, relay: Relay) -> Iterator[Mosquitto]:
    """The regional broker, bridged to the central one through :func:`relay` with the shipped connections."""
    yield from serving(lambda: Mosquitto(tmp_path / "regional", extra=regional_bridge_sections(relay.port)),
                       AgentError)


def test_cut_regional_link_under_traffic_loses_and_duplicates_nothing_and_sos_skips_the_backlog(
        tmp_path: Path, central: Mosquitto, relay: Relay, regional: Mosquitto, influx: InfluxDB1) -> None:
    cfg = msgs.write_v1_bridge_config(tmp_path, central, influx.url, "bridge-central-1",
                                 sites=dict.fromkeys(GATEWAYS, "valley"), max_wait_ms=100)
    bridge = BridgeProcess(cfg, tmp_path / "bridge.log")
    bridge.start()
    # Watches the order in which the central broker receives readings (a persistent session of its own).
    watcher = Collector(central, "denen/v1/+/readings/#", client_id="central-watcher", persistent=True)
    arrived_at: list[float] = []  # monotonic time of each message, same index as watcher.messages
    on_message = watcher.client.on_message

    def timed(client: Any, userdata: Any, msg: Any) -> None:
        arrived_at.append(time.monotonic())
        on_message(client, userdata, msg)

    watcher.client.on_message = timed
    gateways = ValleyGateways(regional)
    try:
        assert wait_until(lambda: relay.links() >= 2, 10), "the regional link did not come up"
        gateways.publish("water_level", 50)
        assert wait_until(lambda: len(arrivals(watcher)) >= len(gateways.sent), 15)
        relay.cut()
        # While the link is down: a telemetry backlog, then SOS readings, then more telemetry.
        before = len(gateways.sent)
        gateways.publish("water_level", BACKLOG_ROUNDS)
        backlog = gateways.sent[before:]
        gateways.publish("sos", 5)
        sos_cut = gateways.sent[before + len(backlog):]
        gateways.publish("water_level", 50)
        time.sleep(1.0)
        assert not (set(gateways.sent[before:]) & set(arrivals(watcher))), "readings crossed a cut link"
        relay.restore()
        restored = time.monotonic()
        gateways.publish("water_level", 50)  # traffic also right after the restore
        expected = Counter(gateways.sent)
        assert wait_until(lambda: len(arrivals(watcher)) >= len(expected), 30), \
            (len(arrivals(watcher)), len(expected))
        assert wait_until(lambda: sum(stored(influx).values()) >= len(expected), 30)
        time.sleep(0.3)  # anything still on its way would show up as an extra point
        order = arrivals(watcher)
        first_at = first_arrivals(watcher, arrived_at)
        assert bridge.terminate() == 0, bridge.run_log()[-2000:]
    finally:
        gateways.close()
        watcher.close()
        bridge.stop()
    got = stored(influx)
    assert max(expected.values()) == 1
    lost = sorted(set(expected) - set(got))
    extra = sorted(set(got) - set(expected))
    doubled = sorted(k for k, n in got.items() if n > 1)
    assert not lost and not extra and not doubled, (lost[:10], extra[:10], doubled[:10])
    assert len(sos_cut) == 5 * len(GATEWAYS) * NODES and len(backlog) == BACKLOG_ROUNDS * len(GATEWAYS) * NODES
    # Each connection is first in, first out: the backlog arrives in the order it was published.
    position = {k: i for i, k in enumerate(order)}
    assert [position[k] for k in backlog] == sorted(position[k] for k in backlog)
    # SOS first: the SOS published during the cut did not wait for the telemetry backlog queued before it (its own
    # connection): every one of them is at the centre before the last reading of that backlog. Each connection
    # retries on its own timer (1 s here), so this holds whenever the backlog takes longer than that to drain once
    # its link is back, as a real valley's hours of telemetry do; a shorter one would prove nothing, hence the first
    # assertion.
    backlog_at = [first_at[k] for k in backlog]
    drain_s = max(backlog_at) - min(backlog_at)
    assert drain_s > 1.5, f"the telemetry backlog drained in {drain_s:.2f} s: too small to tell"
    last_backlog = max(position[k] for k in backlog)
    late = [k for k in sos_cut if position[k] > last_backlog]
    assert not late, f"{len(late)} of {len(sos_cut)} SOS readings arrived after the telemetry backlog"
    # Both connections came back (the link is restored in the test's hands, so this bounds the retry timers).
    assert max(first_at[k] for k in sos_cut) - restored < 10 and min(backlog_at) - restored < 10
