"""The gateways' state and result documents as the console takes them: hostile input refused with a reason."""

from __future__ import annotations

import json
from typing import Any

import pytest

from agent.console.state import (ALERTS_MAX, STATE_MAX_BYTES, BadMessage, StateBook, gateway_of, parse_result,
                                 parse_state)
from tests.console._rig import sos_alert


def state(**over: Any) -> dict[str, Any]:
    doc = {"schema": "denen.state/1", "gateway": "gw-a", "ts_us": 1_800_000_000_000_000,
           "siren": {"configured": True, "on": True, "why": "alert", "alert": "sos:00a1b2c3", "silenced": []},
           "alerts": [sos_alert()]}
    doc.update(over)
    return doc


def enc(doc: Any) -> bytes:
    return json.dumps(doc).encode()


def test_a_good_state() -> None:
    got = parse_state("gw-a", enc(state()))
    alert = got.alerts["sos:00a1b2c3"]
    assert (alert.id, alert.node, alert.lat_deg, alert.repeating) == ("sos:00a1b2c3#7", "00a1b2c3", 35.8123, True)
    assert got.siren_on and got.siren_alert == "sos:00a1b2c3"


@pytest.mark.parametrize(("payload", "reason"), [
    (b"\xff", "invalid_json"), (b"[" * 100_000, "invalid_json"), (b"[]", "invalid_schema"),
    (enc(state(schema="denen.state/2")), "invalid_schema"), (enc(state(gateway="gw-b")), "wrong_gateway"),
    (enc(state(ts_us="now")), "invalid_schema"), (enc(state(alerts={})), "invalid_schema"),
    (enc(state(alerts=[{}] * (ALERTS_MAX + 1))), "invalid_schema"),
    (enc(state(alerts=[{**sos_alert(), "key": "sos 1"}])), "invalid_schema"),
    (enc(state(alerts=[{**sos_alert(), "lat_deg": 91}])), "invalid_schema"),
    (enc(state(alerts=[{**sos_alert(), "value": float("nan")}])), "invalid_schema"),
    (enc(state(alerts=[{**sos_alert(), "since_us": True}])), "invalid_schema"),
    (enc(state(siren={"alert": "<b>"})), "invalid_schema"),
    (b" " * (STATE_MAX_BYTES + 1), "too_large"),
])
def test_hostile_states_are_refused_with_a_reason(payload: bytes, reason: str) -> None:
    with pytest.raises(BadMessage) as exc:
        parse_state("gw-a", payload)
    assert exc.value.reason == reason


def test_free_text_is_made_printable_and_cut() -> None:
    got = parse_state("gw-a", enc(state(alerts=[sos_alert(name="a\nb\ud800" + "x" * 300, message="m" * 5000)])))
    alert = got.alerts["sos:00a1b2c3"]
    assert alert.name is not None and alert.name.startswith("a b\ufffd") and len(alert.name) == 200
    assert len(alert.message) == 1000


def test_results() -> None:
    doc = {"schema": "denen.result/1", "gateway": "gw-a", "ts_us": 1, "command": "alert-ack", "request_id": "r-1",
           "by": "x", "via": "console", "results": [{"target": "sos:1", "outcome": "stopped"}]}
    assert parse_result("gw-a", enc(doc)).summary() == "sos:1 stopped"
    for bad in ({"command": "reboot"}, {"request_id": "a b"}, {"results": [{"outcome": "<x>"}]},
                {"results": "stopped"}):
        with pytest.raises(BadMessage):
            parse_result("gw-a", enc({**doc, **bad}))


def test_topics_and_a_bounded_book() -> None:
    assert gateway_of("denen/v1/gw-a/state", "denen/v1", "state") == "gw-a"
    for topic in ("denen/v1/GW/state", "denen/v1/a/b/state", "other/gw-a/state", "denen/v1/gw-a/results"):
        assert gateway_of(topic, "denen/v1", "state") is None
    book = StateBook(max_gateways=2)
    for gw in ("gw-a", "gw-b"):
        assert book.put(parse_state(gw, enc(state(gateway=gw))))
    assert not book.put(parse_state("gw-c", enc(state(gateway="gw-c"))))
    assert book.put(parse_state("gw-a", enc(state())))  # a known gateway is always updated
    assert len(book) == 2
