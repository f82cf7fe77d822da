"""The de-duplication rule (agent/bridge/dedupe.py) against a real redis-server: one frame heard by several
gateways is one point, whichever copy claims first and whichever bridge writes it; off by default; redis down
loses nothing."""

from __future__ import annotations

import random
import threading
import time
from collections import Counter
from pathlib import Path

import pytest
import redis

from agent.bridge import Bridge, parse_bridge_config
from agent.bridge.dedupe import (
    SAME_EVENT_US,
    FrameClaims,
    alert_key,
    frame_key,
    redis_address,
    same_event,
)
from agent.bridge.lineproto import Serializer
from agent.bridge.receiving import InboxMessage
from agent.errors import ConfigError
from tests.bridge._helpers import T0_US, batch, reading, topic
from tests.support.redis_server import RedisServer, redis_server  # noqa: F401 - the fixture
from tests.support.registry import write_registry

PREFIX = "denen:frame:"
GATEWAYS = ("gw-dd-a", "gw-dd-b", "gw-dd-c")


def copies(node: int, fcnt: int, kind: str = "water_level", values: dict[str, float] | None = None
           ) -> list[tuple[str, bytes]]:
    """One frame as each of GATEWAYS publishes it: own identity, receive time, RSSI and SNR."""
    values = values if values is not None else {"level_cm": 120.5, "battery_v": 3.6}
    out = []
    for i, gw in enumerate(GATEWAYS):
        r = reading(gw, node, fcnt, kind, values, ts_us=T0_US + fcnt * 1_000_000 + i * 7_919, rssi=-90 - 5 * i,
                    snr=7.0 - i)
        out.append((topic(gw, r["lane"]), batch(gw, [r])))
    return out


def test_without_dedupe_the_lines_are_unchanged_and_no_link_points_are_made() -> None:
    plain, merged = Serializer(), Serializer(dedupe_prefix=PREFIX)
    for t, payload in copies(0x701, 5):
        a, b = plain.convert(t, payload), merged.convert(t, payload)
        assert a.claims == [] and not any(x.startswith("node_link,") for x in a.lines)
        assert len(a.lines) == 2 and b.lines[:2] == a.lines  # the reading's own points, byte for byte
        link = b.lines[2]
        gw = t.split("/")[2]
        assert link.startswith(f"node_link,gateway={gw},kind=water_level,") and " fcnt=5.0,rssi=" in link
        assert link.rsplit(" ", 1)[1] == a.lines[0].rsplit(" ", 1)[1]  # at this gateway's receive time
        assert b.claims == [(0, 2, frame_key(PREFIX, "00000701", 5, "water_level",
                                             {"level_cm": 120.5, "battery_v": 3.6}))]
        assert b.sources == [f"{gw}/00000701/5"] * 3


def test_the_identity_ignores_the_gateway_and_names_the_frame() -> None:
    keys = set()
    for t, payload in copies(0x702, 9):
        conv = Serializer(dedupe_prefix=PREFIX).convert(t, payload)
        keys.add(conv.claims[0][2])
    assert len(keys) == 1
    base = frame_key(PREFIX, "00000702", 9, "water_level", {"level_cm": 1.0})
    assert base == frame_key(PREFIX, "00000702", 9, "water_level", {"level_cm": 1.0})
    assert len({base, frame_key(PREFIX, "00000703", 9, "water_level", {"level_cm": 1.0}),
                frame_key(PREFIX, "00000702", 10, "water_level", {"level_cm": 1.0}),
                frame_key(PREFIX, "00000702", 9, "rain", {"level_cm": 1.0}),
                # a counter used again after a re-key, with other values: another frame
                frame_key(PREFIX, "00000702", 9, "water_level", {"level_cm": 2.0})}) == 5


def sos_alert(gw: str, seq: int, node: str, fcnt: int, *, state: str = "raised",
              reading_id: str | None = "auto") -> dict:
    """The SOS alert gateway ``gw`` raises for frame ``fcnt`` of ``node`` (its own alert id and sequence)."""
    r = reading(gw, 0, seq, "alert", {"raised": 1.0 if state == "raised" else 0.0}, ts_us=T0_US + seq, rssi=None,
                snr=None)
    r.update(id=f"{gw}/gateway/{seq}", node="gateway", lane="alarm", alert={
        "id": f"{gw}:sos:{node}#{seq}", "key": f"sos:{node}", "type": "sos", "state": state,
        "severity": "emergency", "node": node, "name": "hiker-1", "message": "SOS発信 hiker-1",
        "reading": f"{gw}/{node}/{fcnt}" if reading_id == "auto" else reading_id})
    return r


def test_an_alert_raised_by_a_nodes_frame_is_one_event_whichever_gateway_raised_it() -> None:
    keys = []
    for seq, gw in enumerate(GATEWAYS, start=40):
        conv = Serializer(dedupe_prefix=PREFIX).convert(topic(gw, "alarm"), batch(gw, [sos_alert(gw, seq,
                                                                                                 "00000a01", 77)]))
        assert not conv.rejects and len(conv.lines) == 1 and conv.lines[0].startswith("alert,")
        assert [(i, n) for i, n, _ in conv.claims] == [(0, 1)]
        keys.append(conv.claims[0][2])
    assert set(keys) == {f"{PREFIX}alert:sos:00000a01:77:raised"}
    assert alert_key(PREFIX, sos_alert("gw-dd-a", 1, "00000a01", 77, state="cleared")["alert"], "gw-dd-a") == \
        f"{PREFIX}alert:sos:00000a01:77:cleared"
    # The frame an alert names is one its publisher heard: an alert naming another gateway's reading is its own.
    assert alert_key(PREFIX, sos_alert("gw-dd-a", 1, "00000a01", 77)["alert"], "gw-dd-b") is None


@pytest.mark.parametrize("reading_id", [None, "gw-dd-a/00000a02/77", "gw-dd-a/00000a01/x7", "gw-dd-a/00000a01",
                                        "gw-dd-a/00000a01/" + "9" * 5000, "gw-dd-a/00000a01/７７"])
def test_an_alert_that_names_no_frame_of_its_node_is_the_gateways_own(reading_id: str | None) -> None:
    """A silent node or a gateway condition names no frame; a reading id of another node, a bad counter or a
    hostile one (5,000 digits, full-width digits) is never merged and never breaks the conversion."""
    conv = Serializer(dedupe_prefix=PREFIX).convert(topic("gw-dd-a", "alarm"), batch("gw-dd-a", [
        sos_alert("gw-dd-a", 5, "00000a01", 77, reading_id=reading_id)]))
    assert not conv.rejects and len(conv.lines) == 1 and conv.claims == []


def test_the_first_claim_fixes_the_points_and_every_copy_writes_them(redis_server: RedisServer) -> None:  # noqa: F811
    stats: Counter[str] = Counter()
    claims = FrameClaims(redis_server.url, window_s=60, stats=stats)
    try:
        key = frame_key(PREFIX, "00000704", 1, "sos", {"pressed": 1.0})
        first, second = "sos,gateway=gw-dd-b a=1.0 10\nnode_health,gateway=gw-dd-b rssi=-1.0 10", \
            "sos,gateway=gw-dd-a a=1.0 20\nnode_health,gateway=gw-dd-a rssi=-2.0 20"
        assert claims.resolve([(key, first)]) == [None]  # registered: its own lines stand
        assert claims.resolve([(key, second), (key, first)]) == [first, None]  # a later copy; a redelivery
        assert stats == {"frames_claimed": 2, "frames_merged": 1}
        with redis.Redis.from_url(redis_server.url) as r:
            assert 0 < r.pttl(key) <= 60_000  # bounded: the claim leaves redis after the window
            assert r.get(key) == first.encode()
    finally:
        claims.close()


def test_racing_bridges_agree_on_one_registration_per_frame(redis_server: RedisServer) -> None:  # noqa: F811
    """Six clients (bridges) claim the same 300 frames, each copy with its own lines, in shuffled order at once:
    per frame exactly one copy registers, and every copy is told that copy's lines."""
    frames = [frame_key(PREFIX, f"{0x800 + n:08x}", n, "rain", {"rain_mm": float(n)}) for n in range(300)]
    results: dict[int, list[tuple[str, str, str | None]]] = {}
    start = threading.Barrier(6)

    def bridge(b: int) -> None:
        c = FrameClaims(redis_server.url, window_s=60)
        try:
            order = list(frames)
            random.Random(b).shuffle(order)
            start.wait()
            out = []
            for i in range(0, len(order), 25):  # batches, as the writer makes them
                part = [(k, f"rain,gateway=gw{b} x=1.0 {b}\nnode_health,gateway=gw{b} rssi=1.0 {b}")
                        for k in order[i:i + 25]]
                out += [(k, own, got) for (k, own), got in zip(part, c.resolve(part), strict=True)]
            results[b] = out
        finally:
            c.close()

    threads = [threading.Thread(target=bridge, args=(b,)) for b in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert len(results) == 6
    written: dict[str, set[str]] = {}
    registered: Counter[str] = Counter()
    for out in results.values():
        for key, own, got in out:
            written.setdefault(key, set()).add(own if got is None else got)
            registered[key] += got is None
    assert set(written) == set(frames)
    assert all(len(v) == 1 for v in written.values())  # every copy writes the same points
    assert set(registered.values()) == {1}  # and exactly one copy's lines are those


def test_redis_down_writes_each_copy_as_its_own_and_merges_again_when_it_is_back(
        redis_server: RedisServer, caplog: pytest.LogCaptureFixture) -> None:  # noqa: F811
    stats: Counter[str] = Counter()
    claims = FrameClaims(redis_server.url, window_s=60, timeout_s=0.5, stats=stats)
    key = frame_key(PREFIX, "00000705", 3, "sos", {"pressed": 1.0})
    try:
        redis_server.stop()
        t0 = time.monotonic()
        assert claims.resolve([(key, "a\nb"), (key, "c\nd")]) == [None, None]  # written, not held back
        assert claims.resolve([(key, "e\nf")]) == [None]  # in the back-off: redis is not even asked
        assert time.monotonic() - t0 < 3
        assert stats["frames_unclaimed"] == 3 and stats["dedupe_failures"] == 1
        assert "redis at redis://127.0.0.1" in caplog.text and "several points" in caplog.text
        redis_server.start()
        time.sleep(1.1)  # the first back-off
        first, second = "sos,gateway=gw-dd-a pressed=1.0 5\nnode_health,gateway=gw-dd-a rssi=-1.0 5", \
            "sos,gateway=gw-dd-b pressed=1.0 9\nnode_health,gateway=gw-dd-b rssi=-7.0 9"
        assert claims.resolve([(key, first), (key, second)]) == [None, first]
        assert "answers again" in caplog.text
    finally:
        claims.close()


def test_redis_address_hides_the_password() -> None:
    assert redis_address("redis://:s3cret@db.example:6380/2") == "redis://db.example:6380/2"
    assert redis_address("unix:///run/redis/redis.sock") == "unix:/run/redis/redis.sock"
    assert redis_address("rediss://user:pw@db.example/0") == "rediss://db.example:6379/0"


def _config(tmp_path: Path, dedupe: str) -> str:
    return f"""
mqtt: {{host: 127.0.0.1, port: 1883, client_id: b1}}
sink: {{type: v1, url: "http://127.0.0.1:8086", database: denen}}
dead_letter: {{path: {tmp_path / 'dl.db'}}}
health: {{enabled: false}}
{dedupe}
"""


def test_the_config_section_is_off_by_default_and_checked(tmp_path: Path) -> None:
    assert parse_bridge_config(_config(tmp_path, "")).dedupe is None
    cfg = parse_bridge_config(_config(tmp_path, "dedupe: {redis_url: 'redis://127.0.0.1:6379/0', window_s: 600}"))
    assert cfg.dedupe is not None and cfg.dedupe.window_s == 600 and cfg.dedupe.key_prefix == PREFIX
    for bad in ("dedupe: {redis_url: 'http://x'}", "dedupe: {redis_url: 'redis://x', window_s: 1}",
                "dedupe: {redis_url: 'redis://x:notaport/0'}", "dedupe: {redis_url: 'redis://x:99999/0'}",
                "dedupe: {redis_url: 'redis://x', key_prefix: 'a b'}",
                "dedupe: {}"):
        with pytest.raises(ConfigError) as exc:
            parse_bridge_config(_config(tmp_path, bad))
        assert "dedupe" in str(exc.value)


class Recording:
    target = "recording"

    def __init__(self) -> None:
        self.bodies: list[bytes] = []

    def write(self, body: bytes) -> None:
        self.bodies.append(body)

    def close(self) -> None:
        pass


def test_two_bridges_write_one_point_per_frame_and_a_link_per_reception(
        tmp_path: Path, redis_server: RedisServer) -> None:  # noqa: F811
    """Bridge 1 handles the copies of gateways c and a, bridge 2 the copy of b (which reached redis first): every
    measurement and node_health line written is b's; three node_link lines, one per gateway."""
    text = _config(tmp_path, f"dedupe: {{redis_url: '{redis_server.url}'}}")
    sinks = [Recording(), Recording()]
    bridges = [Bridge(parse_bridge_config(text.replace("dl.db", f"dl{i}.db")), sink=s) for i, s in enumerate(sinks)]
    try:
        (ta, pa), (tb, pb), (tc, pc) = copies(0x706, 11, "sos", {"pressed": 1.0, "battery_v": 3.4})

        def message(b: Bridge, t: str, p: bytes) -> InboxMessage:
            conv, body = b._convert(t, p)
            return InboxMessage(-1, 0, 0, t, conv, False, body)

        bridges[1]._write([message(bridges[1], tb, pb)])
        bridges[0]._write([message(bridges[0], tc, pc), message(bridges[0], ta, pa)])
        lines = [x for s in sinks for body in s.bodies for x in body.decode().split("\n")]
        b_lines = Serializer().convert(tb, pb).lines
        assert sorted(x for x in lines if not x.startswith("node_link,")) == sorted(b_lines * 3)
        links = [x for x in lines if x.startswith("node_link,")]
        assert sorted(x.split(",", 2)[1] for x in links) == [f"gateway={g}" for g in GATEWAYS]
        assert bridges[0].stats["frames_merged"] == 2 and bridges[1].stats["frames_claimed"] == 1
    finally:
        for b in bridges:
            b.close()


def test_a_bridge_whose_redis_is_down_writes_every_copy_and_its_link(tmp_path: Path) -> None:
    """Nothing waits for redis: each copy is written as its own reading (a duplicate point, never a lost one)."""
    down = RedisServer(tmp_path / "never-started")  # a free port nobody listens on
    sink = Recording()
    bridge = Bridge(parse_bridge_config(_config(tmp_path, f"dedupe: {{redis_url: '{down.url}', timeout_s: 0.5}}")),
                    sink=sink)
    try:
        msgs = []
        for t, p in copies(0x707, 2, "sos", {"pressed": 1.0}):
            conv, body = bridge._convert(t, p)
            msgs.append(InboxMessage(-1, 0, 0, t, conv, False, body))
        assert bridge._write(msgs) == [[], [], []]
        lines = b"\n".join(sink.bodies).decode().split("\n")
        assert sorted(lines) == sorted(x for t, p in copies(0x707, 2, "sos", {"pressed": 1.0})
                                       for x in Serializer(dedupe_prefix=PREFIX).convert(t, p).lines)
        assert bridge.stats["frames_unclaimed"] == 3
    finally:
        bridge.close()


# --- A hostile or misconfigured gateway that claims first: never a substitution, at worst a duplicate ---------

VICTIM, EVIL = "gw-dd-a", "gw-evil"
SITES = {VICTIM: "okutama", "gw-dd-b": "okutama", EVIL: "okutama", "gw-dd-x": "hinohara"}


def _bridges(tmp_path: Path, url: str) -> tuple[list[Bridge], list[Recording]]:
    registry = write_registry(tmp_path / "gateways.yaml", SITES)
    text = _config(tmp_path, f"dedupe: {{redis_url: '{url}'}}\ngateways: {{file: '{registry}'}}")
    sinks = [Recording(), Recording()]
    return [Bridge(parse_bridge_config(text.replace("dl.db", f"dl{i}.db")), sink=s) for i, s in enumerate(sinks)], \
        sinks


def _claim_first_then_write(tmp_path: Path, url: str, first: tuple[str, dict], copy: tuple[str, dict]
                            ) -> tuple[list[str], list[str], Bridge]:
    """``first`` (gateway, reading) is written through bridge 0, then ``copy`` through bridge 1: (the lines bridge 1
    wrote, the copy's own lines, bridge 1) — bridge 1 is closed by then; its stats stay readable."""
    bridges, sinks = _bridges(tmp_path, url)
    try:
        for b, (gw, r) in zip(bridges, (first, copy), strict=True):
            t = topic(gw, r["lane"])
            conv, body = b._convert(t, batch(gw, [r]))
            own = list(conv.lines)
            assert not conv.rejects and conv.claims
            assert b._write([InboxMessage(-1, 0, 0, t, conv, False, body)]) == [[]]
        return b"\n".join(sinks[1].bodies).decode().split("\n"), own, bridges[1]
    finally:
        for b in bridges:
            b.close()


def _node_reading(gw: str, **kw: object) -> dict:
    args: dict = {"ts_us": T0_US + 42_000_000, "rssi": -90, "snr": 7.0, "name": "river-1"}
    args.update(kw)
    return reading(gw, 0x301, 42, "water_level", {"level_cm": 120.5, "battery_v": 3.6}, **args)


@pytest.mark.parametrize("evil", [
    pytest.param(("gw-dd-x", {}), id="same-values-another-site"),
    pytest.param((EVIL, {"auth": "none"}), id="auth-not-checked"),
    pytest.param((EVIL, {"clock": "unsynced"}), id="clock-unsynced"),
    pytest.param((EVIL, {"ts_us": T0_US + 42_000_000 - 3600_000_000}), id="an-hour-earlier"),
])
def test_a_reading_claimed_first_with_other_content_never_replaces_the_copy(
        evil: tuple[str, dict], tmp_path: Path, redis_server: RedisServer,  # noqa: F811
        caplog: pytest.LogCaptureFixture) -> None:
    """A gateway guesses a frame's values and claims it first, from another site, unauthenticated, with an
    unsynced clock or an old time: the victim's copy is written as its own points (a duplicate at worst)."""
    gw, change = evil
    written, own, victim = _claim_first_then_write(tmp_path, redis_server.url, (gw, _node_reading(gw, **change)),
                                                   (VICTIM, _node_reading(VICTIM)))
    assert written == own and all(f"gateway={VICTIM}," in x and ",site=okutama " in x for x in written)
    assert victim.stats["dedupe_conflicts"] == 1 and victim.stats["frames_merged"] == 0
    assert f"gateway {gw} registered claim {PREFIX}00000301:42:water_level:" in caplog.text
    assert f"as gateway {VICTIM}'s copy" in caplog.text


def _sos(gw: str, seq: int, *, raised: float = 1.0, severity: str = "emergency", message: str = "SOS発信 hiker-1",
         name: str = "hiker-1", ts_us: int | None = None) -> dict:
    r = sos_alert(gw, seq, "00000301", 42)
    r["values"] = {"raised": raised}
    r["alert"].update(severity=severity, message=message, name=name)
    r["ts_us"] = ts_us if ts_us is not None else T0_US + 42_000_000 + seq
    return r


@pytest.mark.parametrize("evil", [
    pytest.param((EVIL, {"raised": 0.0, "severity": "info", "message": "test - ignore", "ts_us": T0_US}),
                 id="the-reviews-replacement"),
    pytest.param((EVIL, {"raised": 0.0}), id="not-raised"),
    pytest.param((EVIL, {"severity": "info"}), id="severity"),
    pytest.param((EVIL, {"message": "test - ignore"}), id="message"),
    pytest.param(("gw-dd-x", {}), id="same-alert-another-site"),
    pytest.param((EVIL, {"ts_us": T0_US + 42_000_000 + SAME_EVENT_US + 1_000}), id="a-minute-later"),
])
def test_an_sos_alert_claimed_first_by_another_login_is_still_written_as_raised(
        evil: tuple[str, dict], tmp_path: Path, redis_server: RedisServer) -> None:  # noqa: F811
    """The review's attack: gw-evil pre-claims fcnt 42 of node 00000301; the real SOS alert of the victim gateway
    is written as its own line (raised, emergency, its message, site and time)."""
    gw, change = evil
    written, own, victim = _claim_first_then_write(tmp_path, redis_server.url, (gw, _sos(gw, 7, **change)),
                                                   (VICTIM, _sos(VICTIM, 40)))
    assert written == own and len(own) == 1
    assert own[0].startswith(f"alert,gateway={VICTIM},name=hiker-1,node=00000301,severity=emergency,site=okutama,"
                             "type=sos raised=1.0,message=")
    assert victim.stats["dedupe_conflicts"] == 1 and victim.stats["frames_merged"] == 0


def test_an_alert_naming_another_gateways_reading_claims_nothing(tmp_path: Path,
                                                                 redis_server: RedisServer) -> None:  # noqa: F811
    hostile = _sos(EVIL, 7, raised=0.0)
    hostile["alert"]["reading"] = f"{VICTIM}/00000301/42"
    written, own, victim = _claim_first_then_write(tmp_path, redis_server.url, ("gw-dd-b", _sos("gw-dd-b", 8)),
                                                   (VICTIM, _sos(VICTIM, 40)))
    assert written != own and "gateway=gw-dd-b," in written[0]  # honest copies still merge
    conv = Serializer(dedupe_prefix=PREFIX).convert(topic(EVIL, "alarm"), batch(EVIL, [hostile]))
    assert not conv.rejects and conv.claims == []


def test_honest_copies_merge_whatever_their_gateway_name_rssi_snr_and_receive_time(
        tmp_path: Path, redis_server: RedisServer) -> None:  # noqa: F811
    first = _node_reading("gw-dd-b", name="川の水位", rssi=-118, snr=-9.5, ts_us=T0_US + 42_000_000 + 59_000_000)
    written, own, victim = _claim_first_then_write(tmp_path, redis_server.url, ("gw-dd-b", first),
                                                   (VICTIM, _node_reading(VICTIM, name=None, snr=None)))
    registered = Serializer(registry=victim.registry, dedupe_prefix=PREFIX).convert(
        topic("gw-dd-b"), batch("gw-dd-b", [first])).lines
    assert written[:2] == registered[:2] and written[2] == own[2]  # b's points; the victim's own node_link
    assert victim.stats["frames_merged"] == 1 and victim.stats["dedupe_conflicts"] == 0
    written, own, victim = _claim_first_then_write(tmp_path / "alert", redis_server.url,
                                                   ("gw-dd-b", _sos("gw-dd-b", 9, name="山のハイカー")),
                                                   (VICTIM, _sos(VICTIM, 41)))
    assert written != own and written[0].startswith("alert,gateway=gw-dd-b,name=山のハイカー,node=00000301,")
    assert victim.stats["frames_merged"] == 1 and victim.stats["dedupe_conflicts"] == 0


OWN = ("water_level,gateway=gw-dd-a,kind=water_level,name=river\\ 1,node=00000301,site=okutama "
       "level_cm=120.5,battery_v=3.6,fcnt=42.0,rssi=-90.0,snr=7.0,auth_ok=1.0,clock_ok=1.0 1767225642000000\n"
       "node_health,gateway=gw-dd-a,kind=water_level,name=river\\ 1,node=00000301,site=okutama "
       "rssi=-90.0,snr=7.0,battery_v=3.6,fcnt=42.0 1767225642000000")


def _edit(text: str, old: str, new: str) -> str:
    assert old in text
    return text.replace(old, new)


@pytest.mark.parametrize("registered", [
    _edit(OWN, "gateway=gw-dd-a", "gateway=gw-dd-b"),
    _edit(_edit(OWN, "gateway=gw-dd-a", "gateway=gw-dd-b"), "name=river\\ 1,", ""),
    _edit(_edit(OWN, "name=river\\ 1", "name=川\\,\\=\\ 2"), "rssi=-90.0,snr=7.0", "rssi=-120.0,snr=-1.5e-05"),
    _edit(OWN, ",snr=7.0", ""),
    _edit(OWN, "1767225642000000", str(1767225642000000 + SAME_EVENT_US)),
    _edit(OWN, "1767225642000000", str(1767225642000000 - SAME_EVENT_US)),
    _edit(OWN, "level_cm=120.5,battery_v=3.6", "battery_v=3.6,level_cm=120.5"),  # the gateway's key order
])
def test_the_same_event_differs_only_in_who_heard_it_how_well_and_when(registered: str) -> None:
    assert same_event(registered, OWN) == ("gw-dd-b" if "gw-dd-b" in registered else "gw-dd-a")


@pytest.mark.parametrize("registered", [
    _edit(OWN, "site=okutama", "site=hinohara"),
    _edit(OWN, "node=00000301", "node=00000302"),
    _edit(OWN, "water_level,gateway", "rain,gateway"),
    _edit(OWN, "level_cm=120.5", "level_cm=12.5"),
    _edit(OWN, "fcnt=42.0,rssi", "fcnt=43.0,rssi"),
    _edit(OWN, "auth_ok=1.0", "auth_ok=0.0"),
    _edit(OWN, ",auth_ok=1.0", ""),
    _edit(OWN, "clock_ok=1.0", "clock_ok=0.0"),
    _edit(OWN, "clock_ok=1.0", "clock_ok=1.0,extra=1.0"),
    _edit(OWN, "1767225642000000", str(1767225642000000 + SAME_EVENT_US + 1)),
    _edit(OWN, "rssi=-90.0,snr=7.0,auth", "rssi=-90.0,snr=7.0,rssi=-1.0,auth"),  # a key twice
    _edit(OWN, "rssi=-90.0,snr=7.0,auth", 'rssi="strong",snr=7.0,auth'),  # InfluxDB would refuse the line
    _edit(OWN, "rssi=-90.0,snr=7.0,auth", "rssi=nan,snr=7.0,auth"),
    _edit(OWN, "site=okutama ", "site=okutama,site=hinohara "),
    _edit(OWN, "gateway=gw-dd-a,", ""),
    OWN.split("\n")[0],
    OWN + "\n" + OWN.split("\n")[1],
    OWN.replace(" 1767225642000000", " -1"),
    OWN.replace(" level_cm", "  level_cm"),
    "", "\n", "garbage\ngarbage", "\\" * 5000 + "\n" + "x," * 5000,
])
def test_anything_else_is_not_the_same_event(registered: str) -> None:
    assert same_event(registered, OWN) is None


def test_lines_registered_by_another_gateway_with_other_values_are_not_written(
        redis_server: RedisServer) -> None:  # noqa: F811
    """What redis returns is checked again: lines that are not the same event (as a hostile client of redis could
    put there) are counted, reported with their gateway, and the copy's own lines are written."""
    stats: Counter[str] = Counter()
    key = frame_key(PREFIX, "00000301", 42, "water_level", {"level_cm": 120.5, "battery_v": 3.6})
    hostile = _edit(_edit(OWN, "gateway=gw-dd-a", "gateway=gw-evil"), "level_cm=120.5", "level_cm=0.0")
    claims = FrameClaims(redis_server.url, window_s=60, stats=stats)
    conflicts: list[tuple[int, str]] = []
    try:
        with redis.Redis.from_url(redis_server.url) as r:
            r.set(key, hostile.encode())
            r.set(key + "x", b"\xff\xfe")
        assert claims.resolve([(key, OWN), (key + "x", OWN), (key, _edit(OWN, "gw-dd-a", "gw-dd-b"))],
                              lambda k, gw: conflicts.append((k, gw))) == [None, None, None]
        assert conflicts == [(0, "gw-evil"), (1, "?"), (2, "gw-evil")]
        assert stats == {"dedupe_conflicts": 3}
    finally:
        claims.close()


def test_a_black_holed_redis_costs_a_batch_half_a_second_and_is_asked_again_after_the_back_off(
        tmp_path: Path) -> None:
    """A redis that accepts nothing and answers nothing (a listening socket that never accepts): the default
    timeout bounds the wait; later batches in the back-off do not wait at all."""
    import socket

    from agent.bridge.dedupe_config import DedupeConfig

    with socket.socket() as hole:
        hole.bind(("127.0.0.1", 0))
        hole.listen(1)  # connects complete in the kernel; nothing is ever read or answered
        cfg = DedupeConfig(redis_url=f"redis://127.0.0.1:{hole.getsockname()[1]}/0")
        assert cfg.timeout_s == 0.5
        stats: Counter[str] = Counter()
        claims = FrameClaims(cfg.redis_url, window_s=60, timeout_s=cfg.timeout_s, stats=stats)
        try:
            t0 = time.monotonic()
            assert claims.resolve([("k", OWN)]) == [None]
            first = time.monotonic() - t0
            t0 = time.monotonic()
            assert claims.resolve([("k", OWN)]) == [None]
            assert time.monotonic() - t0 < 0.05  # in the back-off: not asked
            assert 0.4 < first < 1.5, first
            assert stats["dedupe_failures"] == 1 and stats["frames_unclaimed"] == 2
        finally:
            claims.close()


@pytest.mark.parametrize("registered", [
    _edit(OWN, "gateway=gw-dd-a", "gateway="), _edit(OWN, "name=river\\ 1", "name="), _edit(OWN, "rssi=-90.0", "rssi="),
    _edit(OWN, "water_level,gateway", ",gateway"), _edit(OWN, "rssi=-90.0", "=-90.0"),
])
def test_a_line_influxdb_would_refuse_is_not_the_same_event(registered: str) -> None:
    assert same_event(registered, OWN) is None
