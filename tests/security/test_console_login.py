"""The console's MQTT logins (denen-console, and denen-console-cli for ``denen ack``) against the broker as
deploy/backend ships it.

The console (acknowledgement page, ``denen ack``) may publish exactly ``denen/v1/+/cmd/alert-ack``,
``.../cmd/siren-silence`` and ``.../cmd/test-chirp``, and subscribe to exactly ``denen/v1/+/state`` and
``denen/v1/+/results``: nothing else. A gateway may publish its own state and results, and no command to anyone.

Every test runs the shipped mosquitto.conf with the dynamic-security file, logins and certificates the shipped
make-credentials.sh made (tests/support/shipped_broker.py), over TLS, and reads the MQTT v5 reason codes: 0 (granted,
delivered), 1 (subscription granted at QoS 1), 135 (not authorized). Deliveries are checked at the receiving end: a
command reaches the gateway it names, a state reaches the console and the bridges' group. The control runs the same
probes against a console role with a wider rule, and there they pass: the probes can tell the difference.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from tests.support.shipped_broker import Mqtt, ShippedBroker, copy_backend, make_credentials

pytestmark = pytest.mark.broker

SUCCESS, GRANTED_QOS1, NOT_AUTHORIZED = 0, 1, 135
CONSOLE = "denen-console"
#: The operators' login for ``denen ack``: the console's rights under a client id of its own.
CLI = "denen-console-cli"
COMMANDS = ("alert-ack", "siren-silence", "test-chirp")
#: Filters the console may not subscribe to: readings, status, one gateway's state (only the + filter is granted),
#: commands, every wildcard, the bridges' shared subscriptions, the broker's own trees.
REFUSED_FILTERS = (
    "denen/v1/+/readings/#", "denen/v1/gw-a/readings/sos", "denen/v1/+/status", "denen/v1/gw-a/status",
    "denen/v1/gw-a/state", "denen/v1/gw-a/results", "denen/v1/+/+", "denen/v1/+/cmd/#", "denen/v1/gw-a/cmd/alert-ack",
    "denen/v1/#", "#", "+/+/+/state", "$SYS/#", "$share/denen-bridge/denen/v1/+/state",
    "$share/denen-bridge/denen/v1/+/results", "$share/denen-bridge/denen/v1/+/readings/#",
    "$share/console/denen/v1/+/state", "$CONTROL/dynamic-security/#",
)
#: Topics the console may not publish to: other command names (present and invented), commands below or above the
#: three, readings, status, state and results (forging a gateway), the dynamic-security plugin's control topic.
REFUSED_TOPICS = (
    "denen/v1/gw-a/cmd/reset-counter", "denen/v1/gw-a/cmd/reboot", "denen/v1/gw-a/cmd/Alert-ack",
    "denen/v1/gw-a/cmd/alert-ack/x", "denen/v1/gw-a/cmd", "denen/v1/gw-a/readings/sos", "denen/v1/gw-a/status",
    "denen/v1/gw-a/state", "denen/v1/gw-a/results", "denen/v2/gw-a/cmd/alert-ack", "gw-a/cmd/alert-ack",
    "$CONTROL/dynamic-security/v1",
)
ACK = json.dumps({"keys": ["sos:00a1b2c3"], "request_id": "req-1", "by": "山田 太郎", "via": "console"},
                 separators=(",", ":")).encode()


@pytest.fixture(scope="module")
def backend(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """deploy/backend copied to a temp dir, make-credentials.sh run for three gateways (and so the console logins)."""
    backend = copy_backend(tmp_path_factory.mktemp("deploy"))
    proc = make_credentials(backend, "-n", "localhost", "gw-a", "gw-b", "gw-c")
    assert proc.returncode == 0, proc.stderr
    for login in ("console", "console-cli"):
        folder = backend / "secrets" / login
        assert (folder / "mqtt-password").stat().st_mode & 0o077 == 0
        assert (folder / "ca.pem").read_bytes() == (backend / "secrets" / "ca" / "ca.crt").read_bytes()
    return backend


class Clients:
    """Opens :class:`Mqtt` clients and closes every one at the end, whatever happened."""

    def __init__(self, broker: ShippedBroker) -> None:
        self.broker = broker
        self.all: list[Mqtt] = []

    def __call__(self, user: str, client_id: str | None = None) -> Mqtt:
        client = Mqtt(self.broker, user, client_id or user)
        self.all.append(client)
        assert client.connected() == SUCCESS, f"{user} could not connect"
        return client

    def close(self) -> None:
        for c in self.all:
            c.close()


@contextmanager
def _clients(backend: Path, workdir: Path, **kwargs: object) -> Iterator[Clients]:
    broker = ShippedBroker(backend, workdir, **kwargs)  # type: ignore[arg-type]
    broker.start()
    clients = Clients(broker)
    try:
        yield clients
    finally:
        clients.close()
        broker.stop()


@pytest.fixture
def clients(backend: Path, tmp_path: Path) -> Iterator[Clients]:
    """A client factory on a fresh shipped broker."""
    with _clients(backend, tmp_path / "shipped") as c:
        yield c


def _listener(clients: Clients, gateway: str) -> Mqtt:
    """Gateway ``gateway`` as the agent connects: subscribed to its own commands."""
    gw = clients(gateway)
    assert gw.subscribe(f"denen/v1/{gateway}/cmd/#") == GRANTED_QOS1
    return gw


def _refused_publishes(clients: Clients, user: str, topics: tuple[str, ...]) -> dict[str, int | None]:
    """PUBACK reason code per topic. Mosquitto closes a connection after refusing a QoS 1 publish, and the login's
    client id is its name (a second connection would take the first one's place): one connection at a time."""
    codes = {}
    for topic in topics:
        probe = clients(user)
        codes[topic] = probe.publish(topic, ACK)
        probe.close()
    return codes


def test_the_console_sends_the_three_commands_to_the_gateway_they_name(clients: Clients) -> None:
    gw_a, gw_b = _listener(clients, "gw-a"), _listener(clients, "gw-b")
    console = clients(CONSOLE)
    sent = [(f"denen/v1/{gw}/cmd/{c}", ACK) for gw in ("gw-a", "gw-b") for c in COMMANDS]
    assert [console.publish(t, p) for t, p in sent] == [SUCCESS] * len(sent)
    gw_a.wait(lambda: len(gw_a.messages) == 3, "gateway A's three commands")
    gw_b.wait(lambda: len(gw_b.messages) == 3, "gateway B's three commands")
    assert gw_a.messages == [m for m in sent if "/gw-a/" in m[0]]
    assert gw_b.messages == [m for m in sent if "/gw-b/" in m[0]]


def test_the_console_and_the_bridges_read_every_gateways_state_and_results(clients: Clients) -> None:
    bridge = clients("denen-bridge-1")
    for sub in ("$share/denen-bridge/denen/v1/+/state", "$share/denen-bridge/denen/v1/+/results"):
        assert bridge.subscribe(sub) == GRANTED_QOS1
    console = clients(CONSOLE)
    assert console.subscribe("denen/v1/+/state") == GRANTED_QOS1
    assert console.subscribe("denen/v1/+/results") == GRANTED_QOS1
    gw_c = clients("gw-c")
    state = (b'{"schema":"denen.state/1","gateway":"gw-c"}', b'{"schema":"denen.result/1","gateway":"gw-c"}')
    assert gw_c.publish("denen/v1/gw-c/state", state[0], retain=True) == SUCCESS
    assert gw_c.publish("denen/v1/gw-c/results", state[1]) == SUCCESS
    expected = [("denen/v1/gw-c/state", state[0]), ("denen/v1/gw-c/results", state[1])]
    for who in (console, bridge):
        who.wait(lambda w=who: len(w.messages) == 2, f"{who.user}: the state and the result")
        assert who.messages == expected
    console.close()
    # A console that starts later gets every gateway's last state at once: it is retained.
    later = clients(CONSOLE)
    assert later.subscribe("denen/v1/+/state") == GRANTED_QOS1
    later.wait(lambda: len(later.messages) == 1, "the retained state")
    assert later.messages == expected[:1]


def test_the_console_may_subscribe_to_nothing_else(clients: Clients) -> None:
    console = clients(CONSOLE)
    assert {f: console.subscribe(f) for f in REFUSED_FILTERS} == dict.fromkeys(REFUSED_FILTERS, NOT_AUTHORIZED)
    assert console.subscribe("denen/v1/+/state") == GRANTED_QOS1  # the same connection, still granted its own


def test_the_console_may_publish_nothing_else(clients: Clients) -> None:
    gw_a = _listener(clients, "gw-a")
    codes = _refused_publishes(clients, CONSOLE, REFUSED_TOPICS)
    assert codes == dict.fromkeys(REFUSED_TOPICS, NOT_AUTHORIZED)
    # None of them reached the gateway: once a command sent after them is in, they cannot come any more.
    last = clients(CONSOLE)
    assert last.publish("denen/v1/gw-a/cmd/test-chirp", b"{}") == SUCCESS
    gw_a.wait(lambda: bool(gw_a.messages), "the test chirp")
    assert gw_a.messages == [("denen/v1/gw-a/cmd/test-chirp", b"{}")]


def test_a_gateway_publishes_its_own_state_and_results_and_commands_nobody(clients: Clients) -> None:
    gw_a = _listener(clients, "gw-a")
    console = clients(CONSOLE)
    assert console.subscribe("denen/v1/+/state") == GRANTED_QOS1
    assert console.subscribe("denen/v1/+/results") == GRANTED_QOS1
    forged = ("denen/v1/gw-a/cmd/alert-ack", "denen/v1/gw-a/cmd/siren-silence", "denen/v1/gw-a/cmd/test-chirp",
              "denen/v1/gw-c/cmd/alert-ack", "denen/v1/gw-a/state", "denen/v1/gw-a/results")
    assert _refused_publishes(clients, "gw-c", forged) == dict.fromkeys(forged, NOT_AUTHORIZED)
    gw_c = clients("gw-c")
    for f in ("denen/v1/+/state", "denen/v1/gw-a/state", "denen/v1/+/results", "denen/v1/+/cmd/#",
              "$share/denen-bridge/denen/v1/+/state"):
        assert gw_c.subscribe(f) == NOT_AUTHORIZED, f
    assert gw_c.publish("denen/v1/gw-c/state", b'{"own":1}', retain=True) == SUCCESS
    assert gw_c.publish("denen/v1/gw-c/results", b'{"own":2}') == SUCCESS
    console.wait(lambda: len(console.messages) == 2, "gateway C's own state and result")
    # And not the forged state or result of gateway A.
    assert console.messages == [("denen/v1/gw-c/state", b'{"own":1}'), ("denen/v1/gw-c/results", b'{"own":2}')]
    assert console.publish("denen/v1/gw-a/cmd/alert-ack", ACK) == SUCCESS
    gw_a.wait(lambda: bool(gw_a.messages), "the console's command")
    assert gw_a.messages == [("denen/v1/gw-a/cmd/alert-ack", ACK)]


def test_denen_ack_has_its_own_login_with_the_consoles_rights_beside_the_running_console(clients: Clients) -> None:
    gw_a = _listener(clients, "gw-a")
    console = clients(CONSOLE)
    assert console.subscribe("denen/v1/+/results") == GRANTED_QOS1
    cli = clients(CLI)
    assert cli.subscribe("denen/v1/+/results") == GRANTED_QOS1 and cli.subscribe("denen/v1/+/state") == GRANTED_QOS1
    assert cli.publish("denen/v1/gw-a/cmd/siren-silence", ACK) == SUCCESS
    gw_a.wait(lambda: bool(gw_a.messages), "the command line's silence")
    assert gw_a.messages == [("denen/v1/gw-a/cmd/siren-silence", ACK)]
    assert console.disconnects == [] and cli.disconnects == []  # two client ids: neither takes the other's place
    assert {f: cli.subscribe(f) for f in REFUSED_FILTERS} == dict.fromkeys(REFUSED_FILTERS, NOT_AUTHORIZED)
    cli.close()
    assert _refused_publishes(clients, CLI, REFUSED_TOPICS) == dict.fromkeys(REFUSED_TOPICS, NOT_AUTHORIZED)


# ---- control: a console role with wider rules ---------------------------------------------------------------------


def _wide_console(text: str, workdir: Path) -> str:
    """The console role of the shipped dynamic-security file, plus every command and every subscription."""
    found = re.search(r"^plugin_opt_config_file (.*)$", text, flags=re.M)
    assert found is not None
    doc = json.loads(Path(found.group(1)).read_text())
    [role] = [r for r in doc["roles"] if r["rolename"] == CONSOLE]
    role["acls"] += [{"acltype": "publishClientSend", "topic": "denen/v1/+/cmd/#", "allow": True},
                     {"acltype": "subscribePattern", "topic": "#", "allow": True}]
    wide = workdir / "dynamic-security-wide.json"
    wide.write_text(json.dumps(doc))
    return text.replace(found.group(0), f"plugin_opt_config_file {wide}")


def test_control_a_wider_console_role_lets_the_same_probes_through(backend: Path, tmp_path: Path) -> None:
    with _clients(backend, tmp_path / "control", variant=_wide_console) as clients:
        gw_a = _listener(clients, "gw-a")
        codes = _refused_publishes(clients, CONSOLE, ("denen/v1/gw-a/cmd/reset-counter", "denen/v1/gw-a/cmd/reboot"))
        assert codes == dict.fromkeys(codes, SUCCESS)
        gw_a.wait(lambda: len(gw_a.messages) == 2, "the two commands the shipped rules refuse")
        console = clients(CONSOLE)
        assert console.subscribe("#") == GRANTED_QOS1 and console.subscribe("denen/v1/+/readings/#") == GRANTED_QOS1
