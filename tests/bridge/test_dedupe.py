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
from agent.bridge.dedupe import FrameClaims, alert_key, frame_key, redis_address
from agent.bridge.lineproto import Serializer
from agent.bridge.receiving import InboxMessage
from agent.errors import ConfigError
from tests.bridge._helpers import T0_US, batch, reading, topic
from tests.support.redis_server import RedisServer, redis_server  # noqa: F401 - the fixture

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
    assert alert_key(PREFIX, sos_alert("gw-dd-a", 1, "00000a01", 77, state="cleared")["alert"]) == \
        f"{PREFIX}alert:sos:00000a01:77:cleared"


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
        assert claims.resolve([(key, "a\nb"), (key, "c\nd")]) == [None, "a\nb"]
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
