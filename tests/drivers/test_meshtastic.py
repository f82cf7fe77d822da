"""Unit tests of the Meshtastic driver: stream framing, the want_config handshake, packets to denen frames.

The driver runs over a fake Link whose "device" answers from the real protobufs (meshtastic package); the pty
twin and the real FrameDecoder are in test_meshtastic_pty.py.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from typing import Any

import pytest
from pydantic import ValidationError

from drivers.codec import frame as nodeframe
from drivers.codec import kinds
from drivers.codec.frame import clock_counter_floor
from drivers.errors import ModuleError, ModuleTimeout
from drivers.meshtastic import (
    Meshtastic,
    MeshtasticConfig,
    _protobufs,
    node_problems,
)
from drivers.meshtastic_stream import MAX_PAYLOAD, WAKE, StreamParser, frame
from drivers.types import Uplink

PB = _protobufs()
HIKER = 0xA1B2C3D4
STRANGER = 0x0BADF00D
NODE = 0x3E000001
T0_US = 1_780_000_000_000_000


class Radio:
    """A fake Link with a scripted device behind it: answers want_config and packets like the firmware."""

    radio = "mesh0"

    def __init__(self, *, answer: bool = True, node_db: tuple[Any, ...] = (), queue_res: int = 0,
                 reboots: int = 0) -> None:
        self.answer = answer
        self.reboots = reboots  # want_config requests answered by a reboot instead
        self.node_db = node_db
        self.queue_res = queue_res
        self.written = bytearray()
        self.to_radio: list[Any] = []
        self.incoming: list[bytes] = []
        self.uplinks: list[Uplink] = []
        self.incidents: list[tuple[str, str]] = []
        self.feed: Callable[[bytes, int], None] | None = None
        self._parser: StreamParser[Any] = StreamParser(lambda b: PB.mesh.ToRadio.FromString(b))

    def write(self, data: bytes) -> None:
        self.written += data
        for message in self._parser.feed(data, time.monotonic_ns() // 1000):
            self.to_radio.append(message)
            if self.answer:
                self._serve(message)

    def _serve(self, message: Any) -> None:
        m = PB.mesh
        which = message.WhichOneof("payload_variant")
        if which == "want_config_id" and self.reboots:
            self.reboots -= 1
            self.send(m.FromRadio(rebooted=True))
        elif which == "want_config_id":
            self.send(m.FromRadio(my_info=m.MyNodeInfo(my_node_num=0x0A0B0C0D)))
            self.send(m.FromRadio(metadata=m.DeviceMetadata(firmware_version="2.6.11")))
            for info in self.node_db:
                self.send(m.FromRadio(node_info=info))
            self.send(m.FromRadio(config_complete_id=message.want_config_id))
        elif which == "packet":
            self.send(m.FromRadio(queueStatus=m.QueueStatus(res=self.queue_res, mesh_packet_id=message.packet.id)))

    def send(self, message: Any) -> None:
        self.incoming.append(frame(message.SerializeToString()))

    def pump(self, timeout: float) -> bool:
        if not self.incoming:
            time.sleep(min(timeout, 0.01))
            return False
        data, self.incoming = b"".join(self.incoming), []
        assert self.feed is not None
        self.feed(data, T0_US)
        return True

    def deliver(self, uplinks: list[Uplink]) -> None:
        self.uplinks.extend(uplinks)

    def incident(self, kind: str, detail: str) -> None:
        self.incidents.append((kind, detail))

    def kinds(self) -> list[str]:
        return [k for k, _d in self.incidents]


def settings(**overrides: Any) -> MeshtasticConfig:
    data: dict[str, Any] = {"devices": [{"device": f"!{HIKER:08x}", "node": f"{NODE:08x}"}], "config_timeout_s": 0.5}
    return MeshtasticConfig.model_validate(data | overrides)


def driver(link: Radio, **overrides: Any) -> Meshtastic:
    from types import SimpleNamespace

    config = SimpleNamespace(name="mesh0", driver="meshtastic", port="/dev/null", baudrate=115200,
                             meshtastic=settings(**overrides))
    d = Meshtastic(config, link)
    link.feed = d.feed
    return d


def configured(link: Radio | None = None, **overrides: Any) -> tuple[Meshtastic, Radio]:
    link = link or Radio()
    d = driver(link, **overrides)
    d.configure()
    return d, link


def packet(sender: int, portnum: int, payload: bytes, *, packet_id: int | None = None) -> bytes:
    m = PB.mesh
    p = m.MeshPacket(to=0xFFFFFFFF, id=packet_id if packet_id is not None else random.randrange(1, 2**32),
                     rx_rssi=-97, rx_snr=4.25, decoded=m.Data(portnum=portnum, payload=payload))
    setattr(p, "from", sender)
    return frame(m.FromRadio(packet=p).SerializeToString())


def position(sender: int, lat: float, lon: float, alt: int | None = None) -> bytes:
    pos = PB.mesh.Position(latitude_i=round(lat * 1e7), longitude_i=round(lon * 1e7))
    if alt is not None:
        pos.altitude = alt
    return packet(sender, PB.ports.POSITION_APP, pos.SerializeToString())


def battery(sender: int, volts: float, level: int = 80) -> bytes:
    t = PB.telemetry
    return packet(sender, PB.ports.TELEMETRY_APP,
                  t.Telemetry(device_metrics=t.DeviceMetrics(voltage=volts, battery_level=level)).SerializeToString())


def text(sender: int, words: str) -> bytes:
    return packet(sender, PB.ports.TEXT_MESSAGE_APP, words.encode())


def readings(link: Radio) -> list[tuple[int, int, str, dict[str, float], bool]]:
    """(node id, counter, kind, values, has MIC) of every uplink."""
    out = []
    for u in link.uplinks:
        f = nodeframe.parse(u.payload)
        kind = kinds.kind_name(f.kind)
        out.append((f.node_id, f.counter, kind, kinds.decode_body(kind, f.body), f.has_mic))
    return out


# -- the stream -------------------------------------------------------------------------------------------
def test_frames_are_found_whatever_pieces_they_arrive_in() -> None:
    frames = [frame(bytes([i % 256]) * i) for i in (0, 1, 5, 200, MAX_PAYLOAD)]
    stream = b"boot log\r\n" + b"".join(f + b"\x00\xff" for f in frames)
    for step in (1, 3, 7, 64, len(stream)):
        parser: StreamParser[bytes] = StreamParser(bytes)
        got = [m for i in range(0, len(stream), step) for m in parser.feed(stream[i:i + step], 0)]
        assert got == [bytes([i % 256]) * i for i in (0, 1, 5, 200, MAX_PAYLOAD)], step
        assert parser.take_outside()[0] == len(b"boot log\r\n") + 2 * len(frames)


def test_an_oversize_header_or_a_rejected_frame_does_not_hide_the_frame_behind_it() -> None:
    problems: list[str] = []
    good = frame(b"good")
    parser: StreamParser[bytes] = StreamParser(lambda b: b if b == b"good" else None,
                                               lambda kind, detail: problems.append(kind))
    assert parser.feed(b"\x94\xc3\xff\xff" + good, 0) == [b"good"]
    cut = frame(b"x" * 10)[:8]  # a frame cut short, and a good one right after it inside its length
    assert parser.feed(cut + good + b"\x00" * 10, 0) == [b"good"]
    assert problems == ["oversize", "rejected"]


def test_a_partial_frame_left_for_a_second_is_given_up() -> None:
    problems: list[str] = []
    parser: StreamParser[bytes] = StreamParser(bytes, lambda kind, detail: problems.append(kind))
    assert parser.feed(frame(b"y" * 100)[:30], 0) == []
    assert parser.feed(frame(b"next"), 2_000_000) == [b"next"]
    assert problems == ["stale"]
    with pytest.raises(ValueError):
        frame(b"z" * (MAX_PAYLOAD + 1))


# -- configuration ------------------------------------------------------------------------------------------
def test_configure_wakes_the_device_and_asks_for_its_config_with_a_fresh_id() -> None:
    info = PB.mesh.NodeInfo(num=HIKER, position=PB.mesh.Position(latitude_i=362_000_000, longitude_i=1_376_000_000))
    d, link = configured(Radio(node_db=(info,)))
    assert link.written.startswith(WAKE)
    asked = [m.want_config_id for m in link.to_radio if m.WhichOneof("payload_variant") == "want_config_id"]
    assert len(asked) == 1 and asked[0] not in (0, 69420, 69421)
    assert d.module_info == {"node": "!0a0b0c0d", "firmware": "2.6.11", "devices_in_radio_db": "1/1"}
    d.configure()
    again = [m.want_config_id for m in link.to_radio if m.WhichOneof("payload_variant") == "want_config_id"]
    assert len(again) == 2 and again[0] != again[1]


def test_a_reboot_in_the_middle_of_the_config_download_means_asking_again_not_an_incident() -> None:
    d, link = configured(Radio(reboots=2))
    assert len([m for m in link.to_radio if m.HasField("want_config_id")]) == 3
    assert link.incidents == [] and d.module_info["firmware"] == "2.6.11"


def test_a_device_that_never_completes_its_config_is_a_timeout() -> None:
    link = Radio(answer=False)
    with pytest.raises(ModuleTimeout):
        driver(link).configure()
    assert link.kinds() == ["module_timeout"]


def test_rebooted_means_configure_again() -> None:
    d, link = configured()
    link.send(PB.mesh.FromRadio(rebooted=True))
    link.pump(0)
    assert d.reboot_detected and link.kinds() == ["module_reboot"]


def test_console_text_after_the_config_is_a_reboot_and_noise_is_not() -> None:
    d, link = configured()
    d.feed(b"\x00\xff\xfc\xfc" + frame(PB.mesh.FromRadio(rebooted=False).SerializeToString()), T0_US)
    assert link.kinds() == ["garbled_line"] and not d.reboot_detected
    d.feed(b"INFO  | 00:00:01 1 Booted, wake cause 0\r\n", T0_US)  # restarted without saying so
    d.feed(frame(PB.mesh.FromRadio(rebooted=True).SerializeToString()), T0_US)  # and then said so: told once
    assert link.kinds() == ["garbled_line", "module_reboot"] and d.reboot_detected


def test_a_silent_device_is_asked_for_its_config_again() -> None:
    d, link = configured(silence_s=300)
    d.service()
    assert not d.reboot_detected
    d._last_frame -= 301
    d.service()
    assert d.reboot_detected and link.kinds() == ["module_timeout"]


def test_a_heartbeat_goes_out_when_it_is_due() -> None:
    d, link = configured(heartbeat_s=30)
    d.service()
    assert not any(m.HasField("heartbeat") for m in link.to_radio)
    d._last_heartbeat -= 31
    d.service()
    assert [m.WhichOneof("payload_variant") for m in link.to_radio][-1] == "heartbeat"


# -- packets --------------------------------------------------------------------------------------------------
def test_an_alert_text_becomes_an_sos_with_the_last_position_and_no_mic() -> None:
    d, link = configured()
    d.feed(position(HIKER, 36.2487, 137.6381, 1520), T0_US)
    assert link.uplinks == [] and d.stats["position_held"] == 1  # no battery voltage yet: nothing to send
    d.feed(text(HIKER, "足をくじいた SOS"), T0_US + 1)
    [(node, counter, kind, values, mic)] = readings(link)
    assert (node, kind, mic) == (NODE, "sos", False)
    assert values == {"pressed": 1.0, "lat_deg": 36.2487, "lon_deg": 137.6381, "alt_m": 1520.0}
    assert counter >= clock_counter_floor(T0_US)  # the floor, or above it when an earlier test used that second
    u = link.uplinks[0]
    assert (u.radio, u.rssi, u.snr, u.src, u.received_us) == ("mesh0", -97, 4.25, f"!{HIKER:08x}", T0_US + 1)


@pytest.mark.parametrize("words", ["\a", "Alert Bell Character! \a", "sos", "ＳＯＳ", "help SOS!"])
def test_the_bell_and_the_alert_texts_are_alerts(words: str) -> None:
    d, link = configured()
    d.feed(text(HIKER, words), T0_US)
    assert [r[2:4] for r in readings(link)] == [("sos", {"pressed": 1.0})]


def test_alert_app_is_an_alert_and_other_texts_are_not() -> None:
    d, link = configured(alert_texts=["助けて"])
    d.feed(text(HIKER, "isosceles SOS? no: only 助け"), T0_US)
    assert link.uplinks == [] and d.stats["ignored_text"] == 1
    d.feed(text(HIKER, "助けてください"), T0_US)
    d.feed(packet(HIKER, PB.ports.ALERT_APP, b"anything"), T0_US)
    assert [r[2] for r in readings(link)] == ["sos", "sos"]


def test_telemetry_is_a_heartbeat_carrying_the_last_position() -> None:
    d, link = configured()
    d.feed(battery(HIKER, 3.91, 57), T0_US)
    d.feed(position(HIKER, 35.0, 138.5), T0_US + 1_000_000)
    got = readings(link)
    assert [(r[2], r[3]) for r in got] == [
        ("heartbeat", {"battery_v": 3.91, "battery_pct": 57.0}),
        ("heartbeat", {"battery_v": 3.91, "battery_pct": 57.0, "ch2_gps_0": 35.0, "ch2_gps_1": 138.5,
                       "ch2_gps_2": 0.0}),
    ]
    d.feed(text(HIKER, "SOS"), T0_US + 2 * 1_000_000)
    assert readings(link)[-1][3] == {"pressed": 1.0, "lat_deg": 35.0, "lon_deg": 138.5, "alt_m": 0.0,
                                     "battery_v": 3.91}


def test_environment_telemetry_only_for_devices_that_ask_for_it() -> None:
    t = PB.telemetry
    env = t.Telemetry(environment_metrics=t.EnvironmentMetrics(temperature=4.5, relative_humidity=91.0,
                                                               barometric_pressure=845.2)).SerializeToString()
    d, link = configured()
    d.feed(packet(HIKER, PB.ports.TELEMETRY_APP, env), T0_US)
    assert link.uplinks == [] and d.stats["ignored_telemetry"] == 1
    d, link = configured(devices=[{"device": HIKER, "node": f"{NODE:08x}", "environment": True}])
    d.feed(packet(HIKER, PB.ports.TELEMETRY_APP, env), T0_US)
    assert [(r[2], r[3]) for r in readings(link)] == [
        ("weather", {"temperature_c": 4.5, "humidity_pct": 91.0, "pressure_hpa": 845.2})]


def test_the_node_database_seeds_the_position_of_an_sos() -> None:
    m = PB.mesh
    info = m.NodeInfo(num=HIKER, last_heard=1_779_999_000,
                      position=m.Position(latitude_i=362_487_000, longitude_i=1_376_381_000, altitude=2100))
    d, link = configured(Radio(node_db=(info, m.NodeInfo(num=STRANGER))))
    d.feed(text(HIKER, "\a"), T0_US)
    assert readings(link)[0][3] == {"pressed": 1.0, "lat_deg": 36.2487, "lon_deg": 137.6381, "alt_m": 2100.0}


def test_unknown_devices_undecryptable_and_repeated_packets_are_counted_and_dropped() -> None:
    d, link = configured()
    d.feed(text(STRANGER, "SOS") + position(STRANGER, 35.0, 138.0), T0_US)
    p = PB.mesh.MeshPacket(id=5, encrypted=b"\x01" * 16)
    setattr(p, "from", HIKER)
    d.feed(frame(PB.mesh.FromRadio(packet=p).SerializeToString()), T0_US)
    twice = text(HIKER, "SOS")
    d.feed(twice + twice, T0_US)
    assert len(link.uplinks) == 1
    assert (d.stats["unknown_device"], d.stats["undecryptable"], d.stats["duplicate"]) == (2, 1, 1)


def test_counters_increase_within_one_second_and_never_repeat() -> None:
    d, link = configured()
    for i in range(5):
        d.feed(text(HIKER, "SOS"), T0_US + i)
    counters = [r[1] for r in readings(link)]
    assert counters == sorted(set(counters)) and len(counters) == 5
    again, link2 = configured()  # a new driver for the same radio (port reopened) goes on from there
    again.feed(text(HIKER, "SOS"), T0_US)
    assert readings(link2)[0][1] == counters[-1] + 1


def test_a_wild_value_is_left_out_not_the_reading() -> None:
    d, link = configured()
    d.feed(battery(HIKER, float("nan"), 101), T0_US)  # NaN volts and "on USB power"
    d.feed(position(HIKER, 0.0, 0.0), T0_US)  # no fix yet
    d.feed(text(HIKER, "SOS"), T0_US)
    assert [r[3] for r in readings(link)] == [{"pressed": 1.0}]
    assert d.stats["no_fix"] == 1


def test_a_denen_frame_on_the_frame_port_passes_unchanged() -> None:
    d, link = configured()
    signed = nodeframe.build(0x5E000001, 9, kinds.KIND_CODES["sos"], kinds.encode_values("sos", {"pressed": 1.0}),
                             key=bytes(16))
    d.feed(packet(STRANGER, 256, signed), T0_US)
    assert [u.payload for u in link.uplinks] == [signed]


# -- transmit -----------------------------------------------------------------------------------------------
def test_transmit_broadcasts_on_the_frame_port_and_waits_for_the_queue_status() -> None:
    d, link = configured()
    d.transmit(b"\x17receipt", timeout=1.0)
    sent = link.to_radio[-1].packet
    assert (sent.to, sent.decoded.portnum, sent.decoded.payload) == (0xFFFFFFFF, 256, b"\x17receipt")
    with pytest.raises(ValueError):
        d.transmit(b"", timeout=1.0)
    with pytest.raises(ValueError):
        d.transmit(b"x" * 234, timeout=1.0)


def test_a_refused_or_unanswered_transmit_is_reported() -> None:
    d, link = configured(Radio(queue_res=3))
    with pytest.raises(ModuleError):
        d.transmit(b"frame", timeout=1.0)
    link.answer = False
    with pytest.raises(ModuleTimeout):
        d.transmit(b"frame", timeout=0.2)
    assert link.kinds() == ["module_error", "module_timeout"]


# -- settings -------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(("data", "message"), [
    ({"devices": [{"device": "!xyz", "node": "0000a001"}]}, "not a Meshtastic node id"),
    ({"devices": [{"device": 0xFFFFFFFF, "node": "0000a001"}]}, "outside"),
    ({"devices": [{"device": "!a1b2c3d4", "node": "a001"}]}, "not a denen node id"),
    ({"devices": [{"device": "!a1b2c3d4", "node": "0000a001"}, {"device": 2712847316, "node": "0000a002"}]},
     "listed twice"),
    ({"devices": [{"device": "!a1b2c3d4", "node": "0000a001"}, {"device": "!a1b2c3d5", "node": "0000A001"}]},
     "two devices"),
    ({"alert_texts": ["  "]}, "1..40 characters"),
    ({"frame_port": 3}, "greater than or equal to 256"),
])
def test_settings_problems_are_named(data: dict[str, Any], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        MeshtasticConfig.model_validate(data)


def test_default_settings_are_valid() -> None:
    s = MeshtasticConfig.model_validate({})
    assert s.devices == () and s.alert_texts == ("SOS",) and s.frame_port == 256


def test_node_problems_name_a_missing_node_and_a_node_that_would_refuse_every_frame() -> None:
    s = settings(devices=[{"device": HIKER, "node": "3e000001"}, {"device": STRANGER, "node": "3e000002"},
                          {"device": 7, "node": "3e000003"}])
    nodes = [{"id": "3E000001", "unauthenticated": "flag"}, {"id": 0x3E000002}, {"id": ["bad"]}]
    found = node_problems(s, nodes)
    assert [(p.subloc, p.message.split(" ")[1]) for p in found] == [
        (("devices", 1, "node"), "3e000002"), (("devices", 2, "node"), "3e000003")]
    assert "quarantined" in found[0].message and "not under nodes" in found[1].message
    assert node_problems(s, [{"id": f"3e00000{i}", "unauthenticated": "flag"} for i in (1, 2, 3)]) == []
