"""Attack 1 of issue 10: one message with a lone surrogate stopped ingestion for everyone, for good.

A status document whose ``agent`` is ``"0.1.0\\ud800"`` (valid JSON, valid UTF-8 bytes, decodes to a lone
surrogate) made the bridge's writer raise ``UnicodeEncodeError`` at ``"\\n".join(lines).encode()``; the message was
never acknowledged and every restart died on it again. The same came from a reading's ``name``, a ``values`` key,
an alert ``message`` and an unknown batch key (through the dead letter's ``detail``).

Here each of those messages (and the same strings as raw surrogate bytes, and names with control characters and
backslashes) goes from a gateway login through a real Mosquitto to a real in-process
:class:`~agent.bridge.bridge.Bridge` writing to a real InfluxDB 1.6.7; then an SOS of another gateway follows. The
bridge must keep running, acknowledge everything, dead-letter each hostile message (or write it cleanly) and write
the SOS.
"""

from __future__ import annotations

import json
import re
import sqlite3
from collections.abc import Iterator
from contextlib import closing
from pathlib import Path
from typing import Any

import pytest

from agent.bridge import Bridge, DeadLetterStore, parse_bridge_config
from agent.dev.devbroker import Mosquitto
from tests.bridge._helpers import T0_US, Publisher, batch, bridge_config_text, reading, topic, v1_sink
from tests.support.polling import wait_until
from tests.support.servers import DB
from tests.support.influx import InfluxDB1

pytestmark = pytest.mark.broker

ATTACKER = "gw-okutama-01"
NEIGHBOUR = "gw-tanba-traps-01"
REGISTRY = "gateways:\n  gw-okutama-01:\n    site: okutama\n  gw-tanba-traps-01:\n    site: tanba\n"
LONE = "0.1.0\ud800"


def _status(agent: str) -> dict[str, Any]:
    return {"schema": "denen.status/1", "gateway": ATTACKER, "state": "online", "agent": agent, "ts_us": T0_US}


def _sos(fcnt: int, **changes: Any) -> dict[str, Any]:
    return reading(ATTACKER, 0x101, fcnt, "sos", {"pressed": 1.0}) | changes


def _alert(fcnt: int, message: str) -> dict[str, Any]:
    a = reading(ATTACKER, 0, fcnt, "alert", {"raised": 1.0}, name=ATTACKER, rssi=None, snr=None)
    a.update(node="gateway", id=f"{ATTACKER}/gateway/{fcnt}", lane="sos")
    a["alert"] = {"id": f"{ATTACKER}:sos#{fcnt}", "key": "sos:00000101", "type": "sos", "state": "raised",
                  "severity": "emergency", "node": "00000101", "name": "sos-1", "message": message}
    return a


def _batch_doc(*readings: dict[str, Any]) -> dict[str, Any]:
    return json.loads(batch(ATTACKER, list(readings), site="okutama"))


#: (what, topic, document, the dead-letter reason or None when it is written cleanly)
HOSTILE: list[tuple[str, str, dict[str, Any], str | None]] = [
    ("status agent", f"denen/v1/{ATTACKER}/status", _status(LONE), "invalid_text"),
    ("reading name", topic(ATTACKER, "sos"), _batch_doc(_sos(1, name=LONE)), "invalid_text"),
    ("values key", topic(ATTACKER, "sos"), _batch_doc(_sos(2, values={LONE: 1.0})), "invalid_text"),
    ("alert message", topic(ATTACKER, "sos"), _batch_doc(_alert(3, LONE)), "invalid_text"),
    ("unknown batch key", topic(ATTACKER, "sos"), _batch_doc(_sos(4)) | {LONE: 1}, "invalid_schema"),
    ("control characters in a name", topic(ATTACKER, "sos"), _batch_doc(_sos(5, name="a\nb\x00c\x1b[2J")), None),
    ("backslashes in a name", topic(ATTACKER, "sos"), _batch_doc(_sos(6, name="a\\,gateway\\=victim\\")), None),
]


@pytest.fixture
def bridge(tmp_path: Path, broker: Mosquitto, influx: InfluxDB1) -> Iterator[Bridge]:
    text = bridge_config_text(broker=broker, sink=v1_sink(influx.url), dead_letter=tmp_path / "dead.db")
    text = re.sub(r"^gateways:\n(?:[ #].*\n)*", "", text, flags=re.M)
    registry = tmp_path / "hostile-gateways.yaml"
    registry.write_text(REGISTRY, encoding="utf-8")
    b = Bridge(parse_bridge_config(text + f"gateways:\n  file: {registry}\n  unknown: refuse\n"))
    b.start()
    assert b.wait_subscribed(10), "the bridge did not subscribe"
    yield b
    b.stop()  # raises BridgeError if the writer had died


@pytest.mark.parametrize("encoding", ["escape", "raw bytes"])
def test_hostile_strings_never_stop_the_bridge_and_the_next_sos_arrives(bridge: Bridge, broker: Mosquitto,
                                                                         influx: InfluxDB1, encoding: str) -> None:
    messages = []
    for _, t, doc, _ in HOSTILE:
        if encoding == "escape":
            payload = json.dumps(doc).encode()
            assert payload.isascii()  # a lone surrogate as the JSON escape "\ud800": valid JSON, valid UTF-8
        else:
            payload = json.dumps(doc, ensure_ascii=False).encode("utf-8", "surrogatepass")  # not UTF-8 at all
        messages.append((t, payload))
    sos = reading(NEIGHBOUR, 0x201, 1, "sos", {"pressed": 1.0})
    messages.append((topic(NEIGHBOUR, "sos"), batch(NEIGHBOUR, [sos], site="tanba")))

    pub = Publisher(broker, client_id="hostile-gateway")
    try:
        pub.publish(messages)
    finally:
        pub.close()

    # The SOS published after every hostile message is in the database, and every message was acknowledged.
    assert wait_until(lambda: influx.count("sos", "pressed", DB, f"\"gateway\" = '{NEIGHBOUR}'") == 1, 20), \
        bridge.counters()
    assert wait_until(lambda: bridge.counters().get("messages_acked", 0) == len(messages), 10), bridge.counters()
    assert bridge.counters().get("messages_redelivered", 0) == 0  # nothing had to come again

    # Each hostile message was dead-lettered with its reason, or written cleanly.
    dead = DeadLetterStore(bridge.config.dead_letter.path)
    try:
        items = dead.items()
    finally:
        dead.close()
    reasons = sorted(i.reason for i in items)
    if encoding == "escape":
        assert reasons == sorted(r for _, _, _, r in HOSTILE if r is not None)
    else:  # a surrogate as raw bytes makes the payload not UTF-8: the whole message is invalid JSON
        with_surrogate = sum("\ud800" in json.dumps(d, ensure_ascii=False) for _, _, d, _ in HOSTILE)
        assert reasons == ["invalid_json"] * with_surrogate
    for item in items:
        assert item.topic.split("/")[2] == ATTACKER and item.content
        assert "\ud800" not in item.detail and not re.search("[\x00-\x1f]", item.detail)
    # Every text column of the store is valid UTF-8 (sqlite3 would raise on reading it back otherwise).
    with closing(sqlite3.connect(bridge.config.dead_letter.path)) as db:
        rows = db.execute("SELECT reason, detail, topic, reading_id FROM dead_letter").fetchall()
    assert len(rows) == len(items) and all(isinstance(r[1], str) for r in rows)

    written = {r["fcnt"]: r["name"] for r in influx.rows(
        f"SELECT pressed, fcnt FROM sos WHERE \"gateway\" = '{ATTACKER}' GROUP BY \"name\"", DB)}
    assert written == {5.0: "a b c [2J", 6.0: "a＼,gateway＼=victim＼"}
    assert [r["site"] for r in influx.rows(f"SELECT pressed FROM sos WHERE \"gateway\" = '{NEIGHBOUR}' GROUP BY *",
                                           DB)] == ["tanba"]
