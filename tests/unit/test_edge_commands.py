"""Commands from the backend (cmd/alert-ack, cmd/siren-silence, cmd/test-chirp), their results, and the state
document, on the edge logic and the gateway core without a broker (gpiozero MockFactory pins for lamp and siren).

The river gauge 00000301 has stages 100 / 150 / 250 / 300 cm; the default ``rules.siren`` sounds the siren from
the evacuation stage (250 cm). Wall time is a fake that tests move forward.
"""

from __future__ import annotations

import json
import logging
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agent.config import parse_config
from agent.gateway import clock, statedoc
from agent.gateway.core import Gateway
from agent.gateway.edge import Edge
from agent.gateway.edge_commands import CMD_MAX_BYTES, CMD_MAX_TARGETS
from agent.gateway.events import Command
from agent.gateway.readings import FrameDecoder
from tests.support.gateway_config import SIREN_PIN, mock_gpio, river, rules_yaml
from tests.support.publisher import FakePublisher
from tests.support.scenario_rig import GATEWAY, PREFIX, ScenarioNode, gateway_yaml

T0 = 1_764_000_000_000_000  # µs since the epoch
S = 1_000_000
RIVER = ScenarioNode(0x301, "water_level", "river-kawa")
SOS = ScenarioNode(0x101, "sos", "sos-1")
RULES = rules_yaml(river("00000301"), repeat_s=60, silence_kinds=[])
GPIO = mock_gpio()
LAMP_ONLY = mock_gpio(siren=False)
RIVER_KEY = "river_stage:00000301"
OUTCOMES = {
    "alert-ack": {"stopped", "already_acknowledged", "not_active", "invalid"},
    "siren-silence": {"silenced", "not_sounding", "no_siren", "invalid"},
    "test-chirp": {"chirped", "no_outputs", "invalid"},
}


class Now:
    """The wall clock the edge reads (``agent.gateway.clock.wall_us``), moved by the test."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.us = T0
        monkeypatch.setattr(clock, "wall_us", lambda: self.us)

    def advance(self, seconds: float) -> None:
        self.us += round(seconds * S)


class Rig:
    """One Edge with its counters, fed readings as the core would."""

    def __init__(self, tmp: Path, now: Now, *, gpio: str = GPIO, meta: dict[str, str] | None = None) -> None:
        text = gateway_yaml(port="loop://", mqtt_port=9, journal=tmp / "j.db", nodes=[RIVER, SOS], rules=RULES,
                            gpio=gpio)
        self.config = parse_config(text)
        self.now = now
        self.counts: Counter[str] = Counter()
        self.posted: list[tuple] = []
        self.seq = iter(range(1, 10**9))
        self.fcnt: Counter[str] = Counter()
        self.edge = Edge(self.config, FrameDecoder(self.config, {}), next_seq=self.seq.__next__,
                         count=lambda name, n=1: self.counts.update({name: n}), post=self.posted.append,
                         meta=meta or {})
        self.edge.update_outputs(connected=True)

    def reading(self, node: ScenarioNode, values: dict[str, float]) -> list[Any]:
        self.now.advance(10)
        self.fcnt[node.hex] += 1
        n = self.fcnt[node.hex]
        body = {"id": f"{GATEWAY}/{node.hex}/{n}", "node": node.hex, "name": node.name, "fcnt": n, "kind": node.kind,
                "ts_us": self.now.us, "values": values}
        entries = self.edge.on_reading(body)
        self.edge.update_outputs(connected=True)
        return entries

    def level(self, cm: float) -> list[Any]:
        return self.reading(RIVER, {"level_cm": cm})

    def command(self, name: str, doc: Any) -> dict[str, Any] | None:
        payload = doc if isinstance(doc, bytes) else json.dumps(doc).encode()
        out = self.edge.on_command(f"{PREFIX}/{GATEWAY}/cmd/{name}", payload)
        self.edge.update_outputs(connected=True)
        return out

    def siren_pin(self) -> bool:
        assert self.edge.io is not None
        return bool(self.edge.io.pin_factory.pin(SIREN_PIN).state)

    def state(self) -> dict[str, Any]:
        return self.edge.state(held={"active": False, "reason": None, "count": 0, "until_us": None})

    def close(self) -> None:
        self.edge.close()


@pytest.fixture
def now(monkeypatch: pytest.MonkeyPatch) -> Now:
    return Now(monkeypatch)


@pytest.fixture
def rig(tmp_path: Path, now: Now) -> Iterator[Rig]:
    r = Rig(tmp_path, now)
    yield r
    r.close()


def outcomes(result: dict[str, Any] | None) -> list[tuple[str | None, str]]:
    assert result is not None
    return [(r["target"], r["outcome"]) for r in result["results"]]


def repeats_due(rig: Rig, seconds: float) -> list[str]:
    """Alert ids the edge re-sends when ``seconds`` have passed."""
    rig.now.advance(seconds)
    return [json.loads(e.body)["alert"]["id"] for e in rig.edge.due(connected=True)]


# -- alert-ack ---------------------------------------------------------------------------------------------------


def test_ack_by_key_stops_the_repeats_of_every_stage_of_that_river(rig: Rig) -> None:
    rig.level(160)  # standby and caution
    assert len(repeats_due(rig, 61)) == 2
    result = rig.command("alert-ack", {"keys": [RIVER_KEY], "request_id": "r-1", "by": "山田 (town office)",
                                       "via": "console"})
    assert result is not None
    assert {k: result[k] for k in ("schema", "gateway", "command", "request_id", "by", "via")} == {
        "schema": "denen.result/1", "gateway": GATEWAY, "command": "alert-ack", "request_id": "r-1",
        "by": "山田 (town office)", "via": "console"}
    assert result["ts_us"] == rig.now.us
    assert outcomes(result) == [(RIVER_KEY, "stopped")]
    assert repeats_due(rig, 61) == [] and repeats_due(rig, 3600) == []
    [alert] = rig.state()["alerts"]
    assert alert["key"] == RIVER_KEY and alert["repeating"] is False
    assert alert["acknowledged_by"] == "山田 (town office)"
    assert rig.counts["alerts.confirmed"] == 2 and rig.counts["cmd.alert_ack"] == 1


def test_ack_again_is_already_acknowledged_and_changes_nothing(rig: Rig) -> None:
    rig.level(160)
    rig.command("alert-ack", {"keys": [RIVER_KEY], "by": "first"})
    before = (rig.edge.tracker.snapshot(), rig.state())
    rig.edge.snapshot_meta()
    result = rig.command("alert-ack", {"keys": [RIVER_KEY], "by": "second"})
    assert outcomes(result) == [(RIVER_KEY, "already_acknowledged")]
    assert (rig.edge.tracker.snapshot(), rig.state()) == before  # still acknowledged by "first"


def test_ack_of_an_unknown_or_cleared_alert_is_not_active_and_changes_nothing(rig: Rig) -> None:
    rig.level(110)  # standby raised
    rig.level(50)  # and cleared: its clear event repeats until confirmed
    rig.edge.snapshot_meta()
    tracked = rig.edge.tracker.snapshot()
    result = rig.command("alert-ack", {"keys": [RIVER_KEY, "sos:00000101", "sos:0badc0de"], "request_id": "x"})
    assert outcomes(result) == [(RIVER_KEY, "not_active"), ("sos:00000101", "not_active"),
                                ("sos:0badc0de", "not_active")]
    assert rig.edge.tracker.snapshot() == tracked
    assert rig.edge.snapshot_meta() is None  # nothing to save: nothing changed
    assert rig.counts["alerts.confirmed"] == 0


def test_ack_by_alert_id_with_or_without_the_gateway_and_of_a_clear(rig: Rig) -> None:
    sos_entries = rig.reading(SOS, {"pressed": 1})
    published = json.loads(sos_entries[0].body)["alert"]["id"]
    assert published.startswith(f"{GATEWAY}:sos:00000101#")
    local = published.split(":", 1)[1]  # the key holds a ':' too
    result = rig.command("alert-ack", {"alert_ids": [local]})
    assert outcomes(result) == [(local, "stopped")]
    assert rig.command("alert-ack", {"alert_id": published}) is not None
    assert outcomes(rig.command("alert-ack", {"alert_id": published})) == [(published, "already_acknowledged")]
    cleared = rig.reading(SOS, {"pressed": 0})
    clear_id = json.loads(cleared[0].body)["alert"]["id"]
    assert outcomes(rig.command("alert-ack", {"alert_ids": [clear_id]})) == [(clear_id, "stopped")]
    assert repeats_due(rig, 3600) == []
    assert outcomes(rig.command("alert-ack", {"alert_ids": [f"gw-other:{local}"]})) == [
        (f"gw-other:{local}", "not_active")]


def test_a_new_stage_after_an_ack_repeats_until_it_is_acknowledged_too(rig: Rig) -> None:
    rig.level(160)
    rig.command("alert-ack", {"keys": [RIVER_KEY], "by": "a"})
    rig.level(260)  # evacuation: a new raise
    [alert] = rig.state()["alerts"]
    assert alert["severity"] == "emergency" and alert["repeating"] and alert["acknowledged_by"] is None
    assert len(repeats_due(rig, 61)) == 1
    assert outcomes(rig.command("alert-ack", {"keys": [RIVER_KEY], "by": "b"})) == [(RIVER_KEY, "stopped")]
    assert repeats_due(rig, 61) == []


# -- siren-silence -----------------------------------------------------------------------------------------------


def test_silence_stops_the_siren_for_that_alert_and_a_higher_stage_sounds_it_again(rig: Rig, caplog) -> None:
    caplog.set_level(logging.INFO, logger="agent.gateway.edge")
    rig.level(260)  # evacuation: the siren sounds
    assert rig.siren_pin()
    siren = rig.state()["siren"]
    assert siren == {"configured": True, "on": True, "why": "alert", "alert": RIVER_KEY, "silenced": []}
    assert "siren on: alert river_stage:00000301" in caplog.text
    result = rig.command("siren-silence", {"key": RIVER_KEY, "by": "staff", "request_id": "s1"})
    assert outcomes(result) == [(RIVER_KEY, "silenced")]
    assert not rig.siren_pin()
    assert rig.state()["siren"] == {"configured": True, "on": False, "why": None, "alert": None,
                                    "silenced": [RIVER_KEY]}
    assert "siren off: silenced for alert river_stage:00000301 by 'staff'" in caplog.text
    assert outcomes(rig.command("siren-silence", {"key": RIVER_KEY})) == [(RIVER_KEY, "not_sounding")]
    rig.level(270)  # still evacuation: nothing new
    assert not rig.siren_pin()
    rig.level(310)  # danger: a new, higher alert
    assert rig.siren_pin()
    assert rig.state()["siren"]["on"] and rig.state()["siren"]["alert"] == RIVER_KEY
    assert rig.counts["siren.silenced"] == 1


def test_silenced_siren_sounds_again_for_another_key_and_for_the_same_key_raised_again(rig: Rig) -> None:
    rig.reading(SOS, {"pressed": 1})
    assert rig.siren_pin()
    assert outcomes(rig.command("siren-silence", {"key": "sos:00000101"})) == [("sos:00000101", "silenced")]
    assert not rig.siren_pin()
    rig.level(260)  # another key
    assert rig.siren_pin() and rig.state()["siren"]["alert"] == RIVER_KEY
    assert rig.state()["siren"]["silenced"] == ["sos:00000101"]
    rig.command("siren-silence", {"key": RIVER_KEY})
    assert not rig.siren_pin()
    rig.reading(SOS, {"pressed": 0})  # cancelled ...
    assert rig.state()["siren"]["silenced"] == [RIVER_KEY]
    rig.reading(SOS, {"pressed": 1})  # ... and pressed again later: a new alert
    assert rig.siren_pin() and rig.state()["siren"]["alert"] == "sos:00000101"


def test_silence_for_a_key_that_is_not_sounding_changes_nothing(rig: Rig) -> None:
    rig.level(160)  # caution does not sound the siren
    result = rig.command("siren-silence", {"key": RIVER_KEY})
    assert outcomes(result) == [(RIVER_KEY, "not_sounding")]
    rig.level(260)
    assert outcomes(rig.command("siren-silence", {"key": "sos:00000101"})) == [("sos:00000101", "not_sounding")]
    assert rig.siren_pin() and rig.state()["siren"]["silenced"] == []


def test_silence_without_a_siren_is_no_siren(tmp_path: Path, now: Now) -> None:
    for gpio in (LAMP_ONLY, ""):
        r = Rig(tmp_path, now, gpio=gpio)
        try:
            r.level(260)
            assert outcomes(r.command("siren-silence", {"key": RIVER_KEY})) == [(RIVER_KEY, "no_siren")]
            assert r.state()["siren"] == {"configured": False, "on": False, "why": None, "alert": None,
                                          "silenced": []}
            assert r.state()["lamp"] == {"configured": gpio != "", "state": "alarm"}
        finally:
            r.close()


def test_silence_and_acknowledgement_survive_a_restart(tmp_path: Path, now: Now) -> None:
    r = Rig(tmp_path, now)
    r.level(260)
    r.command("siren-silence", {"key": RIVER_KEY, "by": "staff"})
    r.command("alert-ack", {"keys": [RIVER_KEY], "by": "staff"})
    meta = r.edge.snapshot_meta()
    r.close()
    assert meta is not None and json.loads(meta["edge_outputs"])["silenced"]
    again = Rig(tmp_path, now, meta=meta)
    try:
        assert not again.siren_pin()
        state = again.state()
        assert state["siren"]["silenced"] == [RIVER_KEY] and state["alerts"][0]["acknowledged_by"] == "staff"
    finally:
        again.close()


@pytest.mark.parametrize("bad", ["{", '{"silenced": [], "acked_by": {}}', '{"silenced": {"a": 1}, "acked_by": {}}',
                                 "[]", '{"acked_by": {}}'])
def test_a_damaged_silence_snapshot_is_logged_counted_and_ignored(tmp_path: Path, now: Now, bad: str,
                                                                  caplog) -> None:
    r = Rig(tmp_path, now, meta={"edge_outputs": bad})
    try:
        assert r.counts["edge.restore_failed"] == 1
        assert "could not restore which alerts were silenced" in caplog.text
        r.level(260)
        assert r.siren_pin()  # the siren works as if nothing had been silenced
    finally:
        r.close()


# -- test-chirp --------------------------------------------------------------------------------------------------


def test_test_chirp_chirps_the_siren_without_blocking_and_the_state_shows_it(rig: Rig) -> None:
    pin = rig.edge.io.pin_factory.pin(SIREN_PIN)  # type: ignore[union-attr]
    start = len(pin.states)
    t = time.monotonic()
    result = rig.command("test-chirp", {"request_id": "t-1", "via": "cli"})
    assert time.monotonic() - t < 0.3  # the core does not wait for the 0.6 s self test
    assert outcomes(result) == [(None, "chirped")]
    assert rig.state()["siren"]["why"] == "test"
    deadline = time.monotonic() + 3
    while not any(s.state for s in pin.states[start:]) and time.monotonic() < deadline:
        time.sleep(0.02)
    assert any(s.state for s in pin.states[start:])  # it chirped
    while rig.edge.io.testing and time.monotonic() < deadline:  # type: ignore[union-attr]
        time.sleep(0.02)
    assert rig.edge.next_deadline() is not None  # the core looks at the state again when the test is over
    rig.now.advance(1)
    time.sleep(max(0.0, rig.edge.next_deadline() - time.monotonic()))  # type: ignore[operator]
    rig.edge.due(connected=True)
    assert not pin.state and rig.state()["siren"] == {"configured": True, "on": False, "why": None, "alert": None,
                                                      "silenced": []}


def test_test_chirp_without_outputs_is_no_outputs(tmp_path: Path, now: Now) -> None:
    r = Rig(tmp_path, now, gpio="")
    try:
        assert outcomes(r.command("test-chirp", {})) == [(None, "no_outputs")]
    finally:
        r.close()


def test_the_test_button_does_not_block_the_core(rig: Rig) -> None:
    t = time.monotonic()
    rig.edge.test_button()
    assert time.monotonic() - t < 0.1


# -- hostile commands --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("payload", "why"), [
    (b"\xff\xfe", "not UTF-8"),
    (b"not json", "not JSON"),
    (b"[" * 5000, "over the 4096-byte limit"),
    (b"[" * 2000 + b"]" * 2000, "nested too deeply"),
    (b'"a string"', "not a JSON object"),
    (b"null", "not a JSON object"),
])
def test_unparseable_commands_are_counted_logged_and_not_answered(rig: Rig, payload: bytes, why: str,
                                                                  caplog) -> None:
    for name in OUTCOMES:
        assert rig.edge.on_command(f"{PREFIX}/{GATEWAY}/cmd/{name}", payload) is None
    assert rig.counts["cmd.bad"] == 3
    assert why in caplog.text


def test_an_oversized_command_is_not_read_even_with_a_request_id(rig: Rig) -> None:
    rig.level(160)
    doc = {"keys": [RIVER_KEY], "request_id": "big", "pad": "x" * CMD_MAX_BYTES}
    assert rig.command("alert-ack", doc) is None
    assert rig.counts["cmd.bad"] == 1 and len(repeats_due(rig, 61)) == 2


@pytest.mark.parametrize(("name", "doc", "detail"), [
    ("alert-ack", {}, "no target"),
    ("alert-ack", {"keys": RIVER_KEY}, "keys must be a list"),
    ("alert-ack", {"keys": [RIVER_KEY, 5]}, "keys must be a list"),
    ("alert-ack", {"keys": ["SOS:00000101"]}, "keys must be a list"),
    ("alert-ack", {"keys": [RIVER_KEY + "\n"]}, "keys must be a list"),
    ("alert-ack", {"keys": ["k"] * (CMD_MAX_TARGETS + 1)}, "at most"),
    ("alert-ack", {"keys": ["k"] * CMD_MAX_TARGETS, "alert_id": "a#1"}, "at most"),
    ("alert-ack", {"alert_id": 7}, "alert_id must be"),
    ("alert-ack", {"keys": [RIVER_KEY], "by": "a\u202eb"}, "by must be"),
    ("alert-ack", {"keys": [RIVER_KEY], "by": "x" * 101}, "by must be"),
    ("alert-ack", {"keys": [RIVER_KEY], "by": ""}, "by must be"),
    ("alert-ack", {"keys": [RIVER_KEY], "via": "grafana"}, "via must be"),
    ("siren-silence", {}, "key must be"),
    ("siren-silence", {"key": ["sos:00000101"]}, "key must be"),
])
def test_malformed_commands_with_a_request_id_are_answered_invalid_and_change_nothing(
        rig: Rig, name: str, doc: dict[str, Any], detail: str) -> None:
    rig.level(260)
    rig.edge.snapshot_meta()
    before = (rig.edge.tracker.snapshot(), rig.state(), rig.siren_pin())
    result = rig.command(name, {**doc, "request_id": "req-9"})
    assert result is not None and result["request_id"] == "req-9" and result["command"] == name
    [entry] = result["results"]
    assert entry["outcome"] == "invalid" and entry["target"] is None and detail in entry["detail"]
    assert result["by"] is None and result["via"] is None  # nothing unchecked is echoed
    assert (rig.edge.tracker.snapshot(), rig.state(), rig.siren_pin()) == before
    assert rig.edge.snapshot_meta() is None
    assert rig.counts["cmd.bad"] == 1


@pytest.mark.parametrize("rid", ["", "a" * 65, "a b", "ä", 5, ["x"]])
def test_a_command_with_an_unusable_request_id_is_not_carried_out_nor_answered(rig: Rig, rid: Any) -> None:
    rig.level(160)
    assert rig.command("alert-ack", {"keys": [RIVER_KEY], "request_id": rid}) is None
    assert rig.counts["cmd.bad"] == 1 and len(repeats_due(rig, 61)) == 2


@pytest.mark.parametrize("topic", [f"{PREFIX}/{GATEWAY}/cmd/reboot", f"{PREFIX}/{GATEWAY}/cmd/alert-ack/x",
                                   f"{PREFIX}/{GATEWAY}/cmd/", f"{PREFIX}/gw-other/cmd/alert-ack", "\udcff"])
def test_unknown_commands_are_counted_and_ignored(rig: Rig, topic: str) -> None:
    rig.level(160)
    assert rig.edge.on_command(topic, json.dumps({"keys": [RIVER_KEY], "request_id": "u"}).encode()) is None
    assert rig.counts["cmd.unknown"] == 1 and len(repeats_due(rig, 61)) == 2


def test_bad_commands_are_logged_rate_limited(rig: Rig, caplog) -> None:
    caplog.set_level(logging.WARNING, logger="agent.gateway.edge")
    for _ in range(500):
        rig.command("alert-ack", b"{")
    assert rig.counts["cmd.bad"] == 500
    assert len([r for r in caplog.records if "refused" in r.getMessage()]) == 1


def _check_result(result: dict[str, Any] | None, name: str) -> None:
    if result is None:
        return
    text = json.dumps(result, ensure_ascii=False, allow_nan=False).encode("utf-8")  # storable as it is
    assert len(text) < 64 * 1024
    assert result["schema"] == "denen.result/1" and result["command"] == name
    assert {r["outcome"] for r in result["results"]} <= OUTCOMES[name]


_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=30),
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=10), inner, max_size=5),
    max_leaves=20,
)
_field = st.sampled_from(["keys", "alert_ids", "alert_id", "key", "request_id", "by", "via"])
_command_doc = st.dictionaries(_field, _json | st.lists(st.sampled_from(
    [RIVER_KEY, "sos:00000101", f"{GATEWAY}:sos:00000101#1", "x", "", "river_stage:00000301:3"]), max_size=5) |
    st.sampled_from(["r-1", "console", "cli", RIVER_KEY, "a" * 65]), max_size=6)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(name=st.sampled_from(sorted(OUTCOMES)), payload=st.binary(max_size=CMD_MAX_BYTES + 100))
def test_any_bytes_on_a_command_topic_never_raise(rig: Rig, name: str, payload: bytes) -> None:
    bad = rig.counts["cmd.bad"]
    result = rig.edge.on_command(f"{PREFIX}/{GATEWAY}/cmd/{name}", payload)
    _check_result(result, name)
    assert rig.counts["cmd.bad"] == bad + 1 or result is not None


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(name=st.sampled_from(sorted(OUTCOMES)), doc=_command_doc | _json)
def test_any_json_on_a_command_topic_never_raises_and_an_invalid_one_changes_nothing(
        rig: Rig, name: str, doc: Any) -> None:
    if not rig.edge.rules.active():
        rig.level(260)
    rig.edge.snapshot_meta()
    before = (rig.edge.tracker.snapshot(), rig.edge._silenced.copy(), rig.edge._acked_by.copy())
    payload = json.dumps(doc).encode()
    result = rig.edge.on_command(f"{PREFIX}/{GATEWAY}/cmd/{name}", payload)
    _check_result(result, name)
    if result is None or result["results"][0]["outcome"] == "invalid":
        assert (rig.edge.tracker.snapshot(), rig.edge._silenced, rig.edge._acked_by) == before


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(topic=st.text(max_size=80), payload=st.binary(max_size=200))
def test_any_topic_never_raises(rig: Rig, topic: str, payload: bytes) -> None:
    result = rig.edge.on_command(topic, payload)
    if result is not None:
        _check_result(result, result["command"])


# -- receipts across restarts ------------------------------------------------------------------------------------


class _Sender:
    """A receipt sender with the snapshot/restore pair (agent.gateway.receipts), or without it."""

    def __init__(self, snap: Any = None, *, fail: bool = False) -> None:
        self.snap = snap
        self.fail = fail
        self.restored: list[Any] = []

    def snapshot(self) -> Any:
        if self.fail:
            raise RuntimeError("boom")
        return self.snap

    def restore(self, snap: Any) -> None:
        if self.fail:
            raise ValueError("bad snapshot")
        self.restored.append(snap)


class _OldSender:
    def request(self, *a: Any) -> None:
        pass


def test_receipt_state_is_saved_after_receipt_work_and_restored_at_start(tmp_path: Path, now: Now) -> None:
    r = Rig(tmp_path, now)
    sender = _Sender({"used": [[1.5, 0.2]], "queue": []})
    r.edge._senders["lora0"] = sender
    assert r.edge.snapshot_meta() is None  # no receipt work yet
    r.edge._receipts_dirty = True  # what the receipts thread and on_sos_acked set
    meta = r.edge.snapshot_meta()
    assert meta is not None and json.loads(meta["receipts_snapshot"]) == {"lora0": sender.snap}
    r.edge._receipts_dirty = True
    assert r.edge.snapshot_meta() is None  # unchanged: not written again
    r.close()
    again = Rig(tmp_path, now, meta=meta)
    fresh = _Sender()
    again.edge._senders["lora0"] = fresh
    again.edge._restore_receipts()
    assert fresh.restored == [{"used": [[1.5, 0.2]], "queue": []}]
    again.close()


def test_receipt_senders_without_snapshot_or_with_a_bad_one_are_logged_and_ignored(
        tmp_path: Path, now: Now, caplog) -> None:
    r = Rig(tmp_path, now, meta={"receipts_snapshot": '{"lora0": {"x": 1}, "lora1": {"y": 2}}'})
    try:
        r.edge._senders.update(lora0=_OldSender(), lora1=_Sender(fail=True))
        r.edge._restore_receipts()  # no restore on lora0; lora1 raises
        assert r.counts["receipts.restore_failed"] == 1 and "could not restore the airtime" in caplog.text
        r.edge._receipts_dirty = True
        assert r.edge.snapshot_meta() is None and r.counts["receipts.snapshot_failed"] == 1
        r.edge._senders["lora1"] = _Sender({1, 2})  # not JSON-able
        r.edge._receipts_dirty = True
        assert r.edge.snapshot_meta() is None and r.counts["receipts.snapshot_failed"] == 2
    finally:
        r.close()
    broken = Rig(tmp_path, now, meta={"receipts_snapshot": "{not json"})
    try:
        broken.edge._senders["lora0"] = _Sender()
        broken.edge._restore_receipts()
        assert broken.counts["receipts.restore_failed"] == 1
    finally:
        broken.close()


# -- the gateway core: state and results over the link -----------------------------------------------------------


def _documents(link: FakePublisher) -> list[tuple[str, bool]]:
    """(last topic level, retained) of each document published best effort (the state, results), in order."""
    return [(m.kind, m.retain) for m in link.messages if m.mid is None]


@pytest.fixture
def core(tmp_path: Path) -> Iterator[tuple[Gateway, FakePublisher]]:
    text = gateway_yaml(port="loop://", mqtt_port=9, journal=tmp_path / "j.db", nodes=[RIVER, SOS], rules=RULES,
                        gpio=GPIO, commit_window_ms=0)
    link = FakePublisher(gateway=GATEWAY, prefix=PREFIX)
    gw = Gateway(parse_config(text), publisher=link, radios=[])
    link.connect()
    try:
        yield gw, link
    finally:
        gw.edge.close()
        gw.journal.close()


def _uplink(node: ScenarioNode, values: dict[str, float]) -> Any:
    from drivers.types import Uplink

    return Uplink("lora0", node.frame(values), -90, 5.0, None, clock.wall_us())


def test_state_is_published_retained_at_connect_and_on_change_at_most_once_a_second(core, monkeypatch) -> None:
    gw, link = core
    monkeypatch.setattr(statedoc, "STATE_MIN_S", 0.2)  # the limit, shortened for the test
    gw.step()
    [first] = link.of("state")
    assert _documents(link)[0] == ("state", True)  # retained
    assert first["schema"] == "denen.state/1" and first["gateway"] == GATEWAY and first["alerts"] == []
    assert first["siren"]["on"] is False and first["lamp"] == {"configured": True, "state": "ok"}
    assert first["held"] == {"active": False, "reason": None, "count": 0, "until_us": None}
    gw.on_uplinks([_uplink(RIVER, {"level_cm": 160, "battery_v": 3.9})])
    gw.step()
    assert len(link.of("state")) == 1  # within the limit: not yet ...
    assert gw.wait_s() <= 0.2  # ... but the core wakes for it
    time.sleep(0.2)
    gw.step()
    [_, second] = link.of("state")
    assert [a["key"] for a in second["alerts"]] == [RIVER_KEY] and second["lamp"]["state"] == "alarm"
    time.sleep(0.2)
    gw.step()
    assert len(link.of("state")) == 2  # unchanged: not published again
    # The copy in the journal is what `denen status` shows.
    assert json.loads(gw.journal.meta()["gateway_state"])["alerts"] == second["alerts"]
    link.connect()  # a new session gets the state whatever the limit
    gw.step()
    assert len(link.of("state")) == 3


def test_an_sos_change_is_published_at_once(core) -> None:
    gw, link = core
    gw.step()
    gw.on_uplinks([_uplink(SOS, {"pressed": 1, "battery_v": 3.9})])
    gw.step()
    last = link.of("state")[-1]
    assert last["siren"] == {"configured": True, "on": True, "why": "alert", "alert": "sos:00000101",
                             "silenced": []}
    assert gw.edge.siren_sounding and gw.health_reading().body.count('"siren_on":1.0') == 1


def test_a_command_result_follows_the_state_it_changed(core) -> None:
    gw, link = core
    gw.on_uplinks([_uplink(SOS, {"pressed": 1, "battery_v": 3.9})])
    gw.step()
    gw.inbox.put(Command(f"{PREFIX}/{GATEWAY}/cmd/siren-silence",
                  json.dumps({"key": "sos:00000101", "request_id": "q1", "by": "duty officer"}).encode()))
    gw.step()
    topics = [t for t, _ in _documents(link)]
    assert topics[-2:] == ["state", "results"]
    assert link.of("state")[-1]["siren"]["silenced"] == ["sos:00000101"]
    [result] = link.of("results")
    assert result["request_id"] == "q1" and result["results"] == [{"target": "sos:00000101",
                                                                   "outcome": "silenced"}]
    assert [r for t, r in _documents(link) if t == "results"] == [False]  # results are not retained
    assert gw.stats.counters["cmd.results_sent"] == 1


def test_results_are_dropped_and_counted_while_offline(core) -> None:
    gw, link = core
    gw.step()
    link.disconnect(tell=False)  # the link is down; the core learns it later
    gw.inbox.put(Command(f"{PREFIX}/{GATEWAY}/cmd/test-chirp", b'{"request_id":"t"}'))
    gw.step()
    assert link.of("results") == [] and gw.stats.counters["cmd.results_dropped"] == 1
    assert gw.state.results == []


def test_held_readings_show_in_the_state_health_and_log(tmp_path: Path, monkeypatch, caplog) -> None:
    caplog.set_level(logging.INFO, logger="agent.gateway.clockwatch")
    monkeypatch.setattr(statedoc, "STATE_MIN_S", 0.0)  # the state document is looked at on every wake-up
    behind = 5 * 365 * 86_400 * S
    monkeypatch.setattr(clock, "wall_us", lambda: time.time_ns() // 1000 - behind)
    monkeypatch.setattr(clock, "kernel_synced", lambda: False)
    monkeypatch.setattr(clock, "_CHECK_EVERY_S", -1.0)
    monkeypatch.setattr(clock._state, "assume_synced", False)
    text = gateway_yaml(port="loop://", mqtt_port=9, journal=tmp_path / "j.db", nodes=[RIVER, SOS], rules=RULES,
                        gpio=GPIO)
    link = FakePublisher(gateway=GATEWAY, prefix=PREFIX)
    gw = Gateway(parse_config(text), publisher=link, radios=[])
    try:
        link.connect()
        for level in (40, 41, 42):
            gw.on_uplinks([_uplink(RIVER, {"level_cm": level, "battery_v": 3.9})])
            gw.step()
        held = link.of("state")[-1]["held"]
        assert held["active"] is True and held["reason"] == "clock_unsynced" and held["count"] == 3
        assert held["until_us"] == gw.clockwatch.hold_until_us
        assert json.loads(gw.health_reading().body)["values"]["held_readings"] == 3.0
        assert "readings held: 1 stamped before the clock synchronised" in caplog.text
        monkeypatch.setattr(clock, "wall_us", lambda: time.time_ns() // 1000)
        monkeypatch.setattr(clock, "kernel_synced", lambda: True)
        for _ in range(3):
            gw.step()
        assert link.of("state")[-1]["held"] == {"active": False, "reason": None, "count": 0, "until_us": None}
        assert "readings no longer held: the clock synchronised" in caplog.text
    finally:
        gw.edge.close()
        gw.journal.close()
