"""A stolen gateway login against the broker as deploy/backend ships it: identity bound to the login, ACLs, limits.

Every test runs the shipped mosquitto.conf with the dynamic-security file and certificates that the shipped
make-credentials.sh made (paths, port and ``user root`` rewritten only: tests/support/shipped_broker.py), over TLS,
and plays one attack with one valid gateway login. Each also runs the same attack against a broker without the
defence under test (its control) and checks that there the attack works: the test can tell the difference.

* a) resuming the bridge's session (client id denen-bridge-1, clean_start=False) while the bridge is away;
* b) taking the bridge's session over and over while another gateway sends SOS, with the real bridge and InfluxDB;
* c) connecting with another gateway's client id (kick it off, publish its Last Will);
* d) subscribing to other gateways' topics, to the bridges' shared subscription, ``#`` and ``$SYS/#``; publishing
  into another gateway's tree or its commands;
* e) a packet above max_packet_size, and the largest legitimate batch;
* f) revoking a gateway (the README's procedure) while another keeps publishing.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.bridge import Bridge, parse_bridge_config
from tests.bridge._helpers import batch, reading, v1_sink
from tests.support.influx import InfluxDB1
from tests.support.polling import wait_until
from tests.support.shipped_broker import (
    Mqtt,
    ShippedBroker,
    copy_backend,
    largest_batch,
    make_credentials,
    password,
    with_acl_file,
    without_clientid_binding,
    without_max_packet_size,
)

pytestmark = pytest.mark.broker

BIG_GATEWAY = "g" * 63  # the longest gateway id, publisher of the largest batch
READINGS = "$share/denen-bridge/denen/v1/+/readings/#"
STATUS = "$share/denen-bridge/denen/v1/+/status"
SUCCESS, GRANTED_QOS1, NOT_AUTHORIZED = 0, 1, 135


@pytest.fixture(scope="module")
def backend(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """deploy/backend copied to a temp dir, make-credentials.sh run for three gateways, one bridge and two
    consumers."""
    backend = copy_backend(tmp_path_factory.mktemp("deploy"))
    proc = make_credentials(backend, "-n", "localhost", "-c", "2", "gw-a", "gw-b", "gw-c", BIG_GATEWAY)
    assert proc.returncode == 0, proc.stderr
    return backend


@pytest.fixture
def brokers() -> Iterator[list[ShippedBroker]]:
    """Brokers a test starts (each with its own data dir); all stopped at the end."""
    started: list[ShippedBroker] = []
    yield started
    for b in started:
        b.stop()


def _start(brokers: list[ShippedBroker], backend: Path, workdir: Path, **kwargs: object) -> ShippedBroker:
    broker = ShippedBroker(backend, workdir, **kwargs)  # type: ignore[arg-type]
    brokers.append(broker)
    broker.start()
    return broker


def _sos(gateway: str, i: int) -> bytes:
    return batch(gateway, [reading(gateway, 0x100 + i % 5, 1 + i, "sos", {"pressed": 1.0, "battery_v": 3.7})])


class Clients:
    """Closes every client a test opened, whatever happened."""

    def __init__(self) -> None:
        self.all: list[Mqtt] = []

    def __call__(self, *args: object, **kwargs: object) -> Mqtt:
        client = Mqtt(*args, **kwargs)  # type: ignore[arg-type]
        self.all.append(client)
        return client

    def close(self) -> None:
        for c in self.all:
            c.close()


@pytest.fixture
def clients() -> Iterator[Clients]:
    c = Clients()
    yield c
    c.close()


# ---- a) resuming the bridge's session while it is away ---------------------------------------------------------


def _queued_takeover(broker: ShippedBroker, clients: Clients) -> tuple[int, Mqtt]:
    """The bridge subscribes and goes away; gateway B sends 50 SOS (queued for the bridge); gateway A's login
    connects as denen-bridge-1 with clean_start=False; the bridge comes back. Returns what the bridge got."""
    bridge = clients(broker, "denen-bridge-1", "denen-bridge-1", clean_start=False, session_expiry_s=3600)
    assert bridge.connected() == SUCCESS
    assert bridge.subscribe(READINGS) == GRANTED_QOS1
    bridge.close()
    gw_b = clients(broker, "gw-b", "gw-b")
    assert gw_b.connected() == SUCCESS
    # Reason code 0, not 16 ("no matching subscribers"): the broker queued every one for the bridge's session.
    assert [gw_b.publish("denen/v1/gw-b/readings/sos", _sos("gw-b", i)) for i in range(50)] == [SUCCESS] * 50
    hostile = clients(broker, "gw-a", "denen-bridge-1", clean_start=False, session_expiry_s=3600)
    assert hostile.connected() == SUCCESS
    time.sleep(1.0)  # time to receive (and acknowledge) whatever the session it got holds
    hostile.close()
    back = clients(broker, "denen-bridge-1", "denen-bridge-1", clean_start=False, session_expiry_s=3600)
    assert back.connected() == SUCCESS
    wait_until(lambda: len(back.messages) >= 50, 5)
    time.sleep(0.3)  # and nothing more comes
    return len(back.messages), hostile


def test_a_gateway_login_cannot_resume_the_absent_bridges_session(backend: Path, brokers: list[ShippedBroker],
                                                                   clients: Clients, tmp_path: Path) -> None:
    shipped = _start(brokers, backend, tmp_path / "shipped")
    got, hostile = _queued_takeover(shipped, clients)
    assert got == 50, f"{got} of 50 queued SOS reached the bridge"
    assert hostile.session_present is False  # the broker gave gateway A a session of its own, not the bridge's
    assert "as gw-a (p5, c0" in shipped.read_log()  # connected as client id gw-a, whatever it asked for

    control = _start(brokers, backend, tmp_path / "control", variant=without_clientid_binding)
    got, hostile = _queued_takeover(control, clients)
    assert hostile.session_present is True and got == 0, (got, hostile.session_present)


# ---- b) taking the live bridge's session over and over ---------------------------------------------------------


def _bridge_config(broker: ShippedBroker, influx: InfluxDB1, db: str, dead_letter: Path) -> str:
    secrets = broker.backend / "secrets" / "bridge-1"
    return f"""
mqtt:
  host: localhost
  port: {broker.port}
  username: denen-bridge-1
  password_file: {secrets / 'mqtt-password'}
  tls:
    ca_file: {secrets / 'ca.pem'}
  client_id: denen-bridge-1
  group: denen-bridge
  topic_prefix: denen/v1
  reconnect_min_s: 0.1
  reconnect_max_s: 0.5
sink:
{v1_sink(influx.url, db)}
batch:
  max_wait_ms: 50
dead_letter:
  path: {dead_letter}
log:
  level: info
"""


def _live_takeover(broker: ShippedBroker, influx: InfluxDB1, db: str, workdir: Path, clients: Clients) -> list[int]:
    """The real bridge writes to InfluxDB while gateway B sends 200 SOS and gateway A's login connects 7 times as
    denen-bridge-1 (clean_start=False). Returns gateway B's PUBACK reason codes."""
    influx.create_database(db)
    workdir.mkdir()
    bridge = Bridge(parse_bridge_config(_bridge_config(broker, influx, db, workdir / "dead.db")))
    bridge.start()
    codes: list[int] = []
    try:
        assert bridge.wait_subscribed(15), broker.read_log()
        gw_b = clients(broker, "gw-b", "gw-b")
        assert gw_b.connected() == SUCCESS

        def send() -> None:
            for i in range(200):
                codes.append(gw_b.publish("denen/v1/gw-b/readings/sos", _sos("gw-b", i)))  # type: ignore[arg-type]
                time.sleep(0.015)

        sender = threading.Thread(target=send)
        sender.start()
        for _ in range(7):
            hostile = clients(broker, "gw-a", "denen-bridge-1", clean_start=False, session_expiry_s=3600)
            hostile.connected()
            time.sleep(0.3)
            hostile.close()
            time.sleep(0.15)
        sender.join(30)
        wait_until(lambda: influx.count("sos", "pressed", db) >= 200, 10)
        time.sleep(0.5)
    finally:
        bridge.stop()
    return codes


def test_b_live_takeovers_lose_no_sos_with_the_real_bridge_and_influxdb(
        backend: Path, brokers: list[ShippedBroker], clients: Clients, influx: InfluxDB1, tmp_path: Path) -> None:
    shipped = _start(brokers, backend, tmp_path / "shipped")
    codes = _live_takeover(shipped, influx, "shipped", tmp_path / "bridge-shipped", clients)
    assert codes == [SUCCESS] * 200
    assert influx.count("sos", "pressed", "shipped") == 200
    assert "already connected, closing old connection" not in shipped.read_log()  # the bridge was never kicked

    control = _start(brokers, backend, tmp_path / "control", variant=without_clientid_binding)
    codes = _live_takeover(control, influx, "control", tmp_path / "bridge-control", clients)
    # Every SOS acknowledged to the gateway (which then deletes it from its journal), yet some never stored.
    assert codes == [SUCCESS] * 200
    assert influx.count("sos", "pressed", "control") < 200
    assert "Client denen-bridge-1 already connected, closing old connection" in control.read_log()


# ---- c) another gateway's client id ----------------------------------------------------------------------------


def _kick(broker: ShippedBroker, clients: Clients) -> tuple[Mqtt, Mqtt]:
    """Gateway B is online with its Last Will; gateway A's login connects with client id gw-b. Returns B and a
    bridge session that watches status messages."""
    watcher = clients(broker, "denen-bridge-1", "denen-bridge-1")
    assert watcher.connected() == SUCCESS and watcher.subscribe(STATUS) == GRANTED_QOS1
    assert watcher.subscribe(READINGS) == GRANTED_QOS1
    victim = clients(broker, "gw-b", "gw-b", will="denen/v1/gw-b/status")
    assert victim.connected() == SUCCESS
    assert victim.publish("denen/v1/gw-b/status", b'{"state":"online"}', retain=True) == SUCCESS
    watcher.wait(lambda: len(watcher.messages) == 1, "the online status")
    hostile = clients(broker, "gw-a", "gw-b")
    assert hostile.connected() == SUCCESS
    time.sleep(1.0)
    return victim, watcher


def test_c_another_gateways_client_id_neither_kicks_it_nor_fires_its_last_will(
        backend: Path, brokers: list[ShippedBroker], clients: Clients, tmp_path: Path) -> None:
    victim, watcher = _kick(_start(brokers, backend, tmp_path / "shipped"), clients)
    assert victim.disconnects == []
    assert watcher.messages == [("denen/v1/gw-b/status", b'{"state":"online"}')]
    assert victim.publish("denen/v1/gw-b/readings/sos", _sos("gw-b", 1)) == SUCCESS  # still connected

    victim, watcher = _kick(_start(brokers, backend, tmp_path / "control", variant=without_clientid_binding),
                            clients)
    assert victim.disconnects  # kicked off (Session taken over)
    assert ("denen/v1/gw-b/status", b'{"state":"offline"}') in watcher.messages


# ---- d) subscribing and publishing as someone else --------------------------------------------------------------


def test_d_a_gateway_can_neither_subscribe_nor_publish_outside_its_own_topics(
        backend: Path, brokers: list[ShippedBroker], clients: Clients, tmp_path: Path) -> None:
    broker = _start(brokers, backend, tmp_path / "shipped")
    bridge = clients(broker, "denen-bridge-1", "denen-bridge-1")
    assert bridge.connected() == SUCCESS
    assert bridge.subscribe(READINGS) == GRANTED_QOS1 and bridge.subscribe(STATUS) == GRANTED_QOS1
    gw_a = clients(broker, "gw-a", "gw-a")
    assert gw_a.connected() == SUCCESS
    refused = ["denen/v1/gw-b/readings/#", "denen/v1/gw-b/status", "denen/v1/+/status", "denen/v1/+/readings/sos",
               READINGS, STATUS, "$share/denen-bridge/denen/v1/gw-a/cmd/#", "$share/x/denen/v1/+/readings/#",
               "denen/v1/gw-b/cmd/#", "#", "$SYS/#", "$CONTROL/dynamic-security/#"]
    assert {t: gw_a.subscribe(t) for t in refused} == dict.fromkeys(refused, NOT_AUTHORIZED)
    assert gw_a.subscribe("denen/v1/gw-a/cmd/#") == GRANTED_QOS1  # what the agent subscribes to
    assert gw_a.publish("denen/v1/gw-a/readings/sos", _sos("gw-a", 1)) == SUCCESS
    assert gw_a.publish("denen/v1/gw-a/status", b'{"state":"online"}', retain=True) == SUCCESS
    # Mosquitto closes the connection after refusing a QoS 1 publish: one connection per attempt.
    for topic in ("denen/v1/gw-b/readings/sos", "denen/v1/gw-b/status", "denen/v1/gw-b/cmd/alert-ack",
                  "denen/v1/gw-a/cmd/alert-ack", "denen/v1/gw-a/readings/invented", "$CONTROL/dynamic-security/v1",
                  "denen/v1/gw-a/nodes/00000101/state"):  # node states are the bridge's view, not a gateway's
        probe = clients(broker, "gw-a", "gw-a")
        assert probe.connected() == SUCCESS
        assert probe.publish(topic, b"{}") == NOT_AUTHORIZED, topic
    # Gateway A's own messages reached the bridge, nothing else did.
    bridge.wait(lambda: len(bridge.messages) == 2, "gateway A's two messages")
    assert sorted(t for t, _ in bridge.messages) == ["denen/v1/gw-a/readings/sos", "denen/v1/gw-a/status"]
    # The bridge itself reads only through its group and publishes nothing but the retained node states.
    assert bridge.subscribe("denen/v1/#") == NOT_AUTHORIZED
    # 16: accepted, no matching subscribers (MQTT v5 PUBACK reason 0x10); only 135 would be a refusal.
    assert bridge.publish("denen/v1/gw-a/nodes/00000101/state", b"{}", retain=True) == 16
    assert bridge.publish("denen/v1/gw-a/readings/sos", b"{}") == NOT_AUTHORIZED


def _share_theft(broker: ShippedBroker, clients: Clients) -> tuple[int, int]:
    """Gateway A tries to join the bridges' shared subscription; gateway B sends 20 SOS. Returns (gateway A's
    SUBACK reason code, SOS the bridge received)."""
    bridge = clients(broker, "denen-bridge-1", "denen-bridge-1")
    assert bridge.connected() == SUCCESS and bridge.subscribe(READINGS) == GRANTED_QOS1
    thief = clients(broker, "gw-a", "gw-a")
    assert thief.connected() == SUCCESS
    code = thief.subscribe(READINGS)
    gw_b = clients(broker, "gw-b", "gw-b")
    assert gw_b.connected() == SUCCESS
    assert [gw_b.publish("denen/v1/gw-b/readings/sos", _sos("gw-b", i)) for i in range(20)] == [SUCCESS] * 20
    wait_until(lambda: len(bridge.messages) >= 20, 3)
    return code, len(bridge.messages)


def test_d_a_consumer_reads_node_states_and_nothing_else(
        backend: Path, brokers: list[ShippedBroker], clients: Clients, tmp_path: Path) -> None:
    """Each consumer login (Node-RED, a town's dashboard) follows the retained node states the bridge publishes, all
    of them or one node's, beside the other consumers (a login of its own: no session taken over); it reads no
    readings, status, state or commands, and publishes nothing."""
    broker = _start(brokers, backend, tmp_path / "shipped")
    bridge = clients(broker, "denen-bridge-1", "denen-bridge-1")
    assert bridge.connected() == SUCCESS
    assert bridge.publish("denen/v1/gw-a/nodes/00000101/state", b'{"ts_us":1}', retain=True) in (SUCCESS, 16)
    consumers = [clients(broker, f"denen-consumer-{n}", f"denen-consumer-{n}") for n in (1, 2)]
    assert [c.connected() for c in consumers] == [SUCCESS, SUCCESS]
    consumer = consumers[0]
    refused = [READINGS, STATUS, "denen/v1/+/readings/#", "denen/v1/gw-a/status", "denen/v1/+/state",
               "denen/v1/gw-a/cmd/#", "$share/denen-bridge/denen/v1/+/nodes/+/state", "#"]
    assert {t: consumer.subscribe(t) for t in refused} == dict.fromkeys(refused, NOT_AUTHORIZED)
    assert consumer.subscribe("denen/v1/+/nodes/+/state") == GRANTED_QOS1
    assert consumers[1].subscribe("denen/v1/gw-a/nodes/00000101/state") == GRANTED_QOS1
    for c in consumers:
        c.wait(lambda c=c: any(t == "denen/v1/gw-a/nodes/00000101/state" for t, _ in c.messages),
               "the retained node state")
    assert [c.disconnects for c in consumers] == [[], []]
    # A login is its client id, whatever the client asks for: a second connection of consumer 1 takes consumer 1's
    # session over, never consumer 2's.
    assert clients(broker, "denen-consumer-1", "denen-consumer-2").connected() == SUCCESS
    consumers[0].wait(lambda: bool(consumers[0].disconnects), "consumer 1's session taken over")
    assert consumers[1].disconnects == []
    for topic in ("denen/v1/gw-a/nodes/00000101/state", "denen/v1/gw-a/cmd/alert-ack", "denen/v1/gw-a/status"):
        probe = clients(broker, "denen-consumer-2", "denen-consumer-2")
        assert probe.connected() == SUCCESS
        assert probe.publish(topic, b"{}") == NOT_AUTHORIZED, topic


def test_d_a_gateway_cannot_join_the_bridges_shared_subscription(
        backend: Path, brokers: list[ShippedBroker], clients: Clients, tmp_path: Path) -> None:
    assert _share_theft(_start(brokers, backend, tmp_path / "shipped"), clients) == (NOT_AUTHORIZED, 20)
    # Control: Mosquitto's acl_file with the same rules grants the SUBSCRIBE and checks only each delivery, after
    # the shared subscription picked gateway A for every other message: those are dropped, acknowledged to B.
    code, got = _share_theft(_start(brokers, backend, tmp_path / "control", variant=with_acl_file), clients)
    assert code == GRANTED_QOS1 and got < 20, (code, got)


# ---- e) packet size ---------------------------------------------------------------------------------------------


def _max_packet_size(broker: ShippedBroker) -> int:
    return int(next(line.split()[1] for line in broker.shipped_text().splitlines()
                    if line.startswith("max_packet_size ")))


def _oversize(broker: ShippedBroker, clients: Clients, size: int) -> tuple[int | None, Mqtt, Mqtt]:
    """Gateway A sends a batch of ``size`` bytes. Returns its PUBACK code (None: connection closed), the sender,
    and the bridge session (after a small SOS from gateway B has gone through)."""
    bridge = clients(broker, "denen-bridge-1", "denen-bridge-1")
    assert bridge.connected() == SUCCESS and bridge.subscribe(READINGS) == GRANTED_QOS1
    gw_a = clients(broker, "gw-a", "gw-a")
    assert gw_a.connected() == SUCCESS
    code = gw_a.publish("denen/v1/gw-a/readings/telemetry", b"x" * size)
    gw_b = clients(broker, "gw-b", "gw-b")
    assert gw_b.connected() == SUCCESS and gw_b.publish("denen/v1/gw-b/readings/sos", _sos("gw-b", 1)) == SUCCESS
    bridge.wait(lambda: any(t == "denen/v1/gw-b/readings/sos" for t, _ in bridge.messages), "gateway B's SOS")
    return code, gw_a, bridge


def test_e_a_packet_above_max_packet_size_is_refused_and_the_largest_batch_passes(
        backend: Path, brokers: list[ShippedBroker], clients: Clients, tmp_path: Path) -> None:
    broker = _start(brokers, backend, tmp_path / "shipped")
    limit = _max_packet_size(broker)
    topic, payload = largest_batch()
    packet = 1 + 4 + 2 + len(topic) + 2 + 1 + len(payload)  # header, topic, packet id, properties, payload
    assert packet < limit, (packet, limit)
    # 1024 KiB of the longest readings: the most a gateway puts in one message.
    assert len(json.loads(payload)["readings"]) == 1024 * 1024 // 3293
    big = clients(broker, BIG_GATEWAY, BIG_GATEWAY)
    bridge = clients(broker, "denen-bridge-1", "denen-bridge-1")
    assert big.connected() == SUCCESS and bridge.connected() == SUCCESS
    assert bridge.subscribe(READINGS) == GRANTED_QOS1
    assert big.publish(topic, payload) == SUCCESS
    bridge.wait(lambda: len(bridge.messages) == 1, "the largest batch", timeout=30)
    assert bridge.messages == [(topic, payload)]
    bridge.close()

    code, sender, bridge = _oversize(broker, clients, limit)  # the packet is the payload plus its header
    assert code is None and sender.disconnects, "the broker took a packet above max_packet_size"
    assert [t for t, _ in bridge.messages] == ["denen/v1/gw-b/readings/sos"]

    control = _start(brokers, backend, tmp_path / "control", variant=without_max_packet_size)
    code, sender, bridge = _oversize(control, clients, limit)
    assert code == SUCCESS and sender.disconnects == []
    bridge.wait(lambda: len(bridge.messages) == 2, "both messages")
    assert sorted(len(p) for _, p in bridge.messages)[-1] == limit


# ---- f) revoking a gateway --------------------------------------------------------------------------------------


class JournalSender:
    """Gateway B as the agent behaves: every SOS is kept until the broker acknowledged it, sent again after a
    reconnect; runs in its own thread."""

    def __init__(self, broker: ShippedBroker, count: int) -> None:
        self.broker = broker
        self.pending = list(range(count))
        self.connections = 0
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while self.pending and not self.stop.is_set():
            try:
                client = Mqtt(self.broker, "gw-b", "gw-b")
            except OSError:
                time.sleep(0.2)  # the broker is restarting
                continue
            try:
                if client.connected() != SUCCESS:
                    continue
                self.connections += 1
                while self.pending and not client.disconnects and not self.stop.is_set():
                    try:
                        code = client.publish("denen/v1/gw-b/readings/sos", _sos("gw-b", self.pending[0]))
                    except AssertionError:
                        break
                    if code == SUCCESS:
                        self.pending.pop(0)
                    time.sleep(0.01)
            except AssertionError:
                pass
            finally:
                client.close()
            time.sleep(0.2)

    def join(self, timeout: float) -> None:
        self.thread.join(timeout)
        self.stop.set()


def test_f_revoking_a_stolen_gateway_locks_it_out_while_another_loses_nothing(
        brokers: list[ShippedBroker], clients: Clients, tmp_path: Path) -> None:
    backend = copy_backend(tmp_path / "deploy")
    proc = make_credentials(backend, "-n", "localhost", "gw-a", "gw-b")
    assert proc.returncode == 0, proc.stderr
    stolen_password = password(backend, "gw-a")
    broker = _start(brokers, backend, tmp_path / "broker")

    def bridge_session() -> Mqtt:
        b = clients(broker, "denen-bridge-1", "denen-bridge-1", clean_start=False, session_expiry_s=3600)
        assert b.connected() == SUCCESS and b.subscribe(READINGS) == GRANTED_QOS1
        return b

    bridge_session()  # a bridge with a persistent session, held by clients
    stolen = clients(broker, "gw-a", "gw-a")
    assert stolen.connected() == SUCCESS
    sender = JournalSender(broker, 300)
    try:
        # The procedure (README "Revoking a gateway"), step 1: remove the login.
        proc = make_credentials(backend, "-X", "gw-a")
        assert proc.returncode == 0, proc.stderr
        assert "gw-a:" not in (backend / "secrets" / "mosquitto" / "passwd").read_text()
        dynsec = json.loads((backend / "secrets" / "mosquitto" / "dynamic-security.json").read_text())
        assert [c["username"] for c in dynsec["clients"]] == ["denen-bridge-1", "denen-console", "denen-console-cli",
                                                              "denen-consumer-1", "gw-b"]
        assert not (backend / "secrets" / "gateways" / "gw-a").exists()

        # A reload (SIGHUP) is not enough: Mosquitto 2.0.11's dynamic-security plugin does not re-read its file,
        # the stolen connection stays and a new one with the old password is accepted.
        broker.reload()
        assert stolen.disconnects == [] and stolen.publish("denen/v1/gw-a/readings/sos", _sos("gw-a", 1)) == SUCCESS
        again = clients(broker, "gw-a", "gw-a-2", secret=stolen_password)
        assert again.connected() == SUCCESS

        # Step 2: restart the broker. The stolen card is out, for good.
        wait_until(lambda: len(sender.pending) < 200, 10)  # the restart lands mid-stream
        broker.restart()
        assert again.disconnects
        bridge_session()  # the bridges come back after the restart
        assert clients(broker, "gw-a", "gw-a", secret=stolen_password).connected() == NOT_AUTHORIZED
        sender.join(60)
    finally:
        sender.stop.set()
    assert sender.pending == [] and sender.connections >= 2
    # Every SOS of gateway B reached the bridge's session, before or after the restart.
    def received() -> set[str]:
        return {json.loads(p)["readings"][0]["id"] for c in clients.all if c.user == "denen-bridge-1"
                for t, p in list(c.messages) if t == "denen/v1/gw-b/readings/sos"}

    wait_until(lambda: len(received()) >= 300, 10)
    assert len(received()) == 300, f"{len(received())} of 300 SOS reached the bridge"
