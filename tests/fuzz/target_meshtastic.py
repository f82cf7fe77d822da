"""Fuzz target: bytes from a Meshtastic device's serial port through ``Meshtastic.feed`` (stream framing,
FromRadio protobufs, packet mapping), without a port.

The module adds its target to :data:`tests.fuzz.targets.TARGETS` when it is imported; targets.py imports it at its
end with a plain ``import`` (which, unlike ``from ... import``, also works while this module is still being
imported), so the target is there whichever of the two modules is imported first.
"""

from __future__ import annotations

import math
import random
import re
from functools import cached_property
from types import SimpleNamespace
from typing import Any

from drivers.codec import frame as nodeframe
from drivers.codec import kinds
from drivers.errors import CodecError
from drivers.meshtastic import Meshtastic, MeshtasticConfig, _protobufs
from drivers.meshtastic_stream import frame
from drivers.types import Uplink
from tests.fuzz.mutate import chunk, mutate_bytes, random_bytes
from tests.fuzz.targets import (
    ACCEPTED,
    IGNORED,
    T0_US,
    TARGETS,
    FakeLink,
    Outcome,
    Target,
    check,
    rejected,
)

__all__ = ["MeshtasticTarget"]

PB = _protobufs()
KNOWN = {0xA1B2C3D4: 0x3E000001, 0xA1B2C3D5: 0x3E000002}
STRANGER = 0x0BADF00D
FRAME_PORT = 256
SETTINGS = MeshtasticConfig.model_validate({
    "devices": [{"device": num, "node": f"{node:08x}", "environment": True} for num, node in KNOWN.items()],
    "alert_texts": ["SOS", "助けて"]})
TOKENS = (b"\x94\xc3", b"\x94\xc3\x00", b"\x94\xc3\x02\x00", b"\x94\xc3\xff\xff", b"\x94", b"\xc3" * 4, b"\x07",
          b"SOS", b"\x00", b"\xff", b"\r\n", b"INFO  | ", b"\x08\x01", b"\x12\x00", b"\xff\xff\xff\xff\x0f")
_SRC = re.compile(r"![0-9a-f]{8}")


def _packet(sender: int, portnum: int, payload: bytes, packet_id: int, rng: random.Random) -> bytes:
    m = PB.mesh
    p = m.MeshPacket(to=0xFFFFFFFF, id=packet_id, rx_rssi=rng.randint(-140, 0), rx_snr=rng.uniform(-20, 12),
                     decoded=m.Data(portnum=portnum, payload=payload))
    setattr(p, "from", sender)
    return frame(m.FromRadio(packet=p).SerializeToString())


class MeshtasticTarget(Target):
    """Byte chunks through ``Meshtastic.feed``, with the device's config download done (``running``) or not."""

    name = "meshtastic"
    error = "never raises (incidents)"
    specific = ("feed() never raises; every incident has a kind from INCIDENT_KINDS and a non-empty detail; a "
                "frame-port uplink's payload is in the input; any other uplink is a denen frame without MIC for a "
                "configured node, of kind sos/heartbeat/weather, whose body decodes; RSSI/SNR are finite; in a valid "
                "stream every alert packet from a known device gives exactly one sos uplink; the uplinks do not "
                "depend on how the stream was cut into reads")
    weight = 6.0
    unit = 600
    VARIANTS = ("running", "running", "running", "configuring")

    @cached_property
    def pool(self) -> list[bytes]:
        rng = random.Random(17)
        return [self._stream(rng)[0] for _ in range(100)]

    def _message(self, rng: random.Random, packet_id: int, *, valid: bool = False) -> tuple[bytes, bool]:
        """One frame (or console text) the device may send; whether it is an alert from a known device. ``valid``:
        only what a configured device sends while running (no console text, no reboot)."""
        m, ports, t = PB.mesh, PB.ports, PB.telemetry
        sender = rng.choice((*KNOWN, *KNOWN, STRANGER))
        r = rng.random()
        if r < 0.25:
            text = rng.choice(("SOS", "\a", "ＳＯＳ help", "hello", "助けてください", "isosceles", ""))
            alert = sender in KNOWN and text not in ("hello", "isosceles", "")
            return _packet(sender, ports.TEXT_MESSAGE_APP, text.encode(), packet_id, rng), alert
        if r < 0.3:
            return _packet(sender, ports.ALERT_APP, b"!", packet_id, rng), sender in KNOWN
        if r < 0.45:
            pos = m.Position(latitude_i=rng.randint(-900_000_000, 900_000_000),
                             longitude_i=rng.randint(-1_800_000_000, 1_800_000_000), altitude=rng.randint(-500, 9000))
            return _packet(sender, ports.POSITION_APP, pos.SerializeToString(), packet_id, rng), False
        if r < 0.6:
            tel = t.Telemetry(device_metrics=t.DeviceMetrics(voltage=rng.uniform(0, 5), battery_level=rng.randint(0, 101)))
            if rng.random() < 0.4:
                tel = t.Telemetry(environment_metrics=t.EnvironmentMetrics(
                    temperature=rng.uniform(-40, 60), relative_humidity=rng.uniform(0, 100),
                    barometric_pressure=rng.uniform(300, 1100)))
            return _packet(sender, ports.TELEMETRY_APP, tel.SerializeToString(), packet_id, rng), False
        if r < 0.7:
            return _packet(sender, FRAME_PORT, rng.randbytes(rng.randint(1, 40)), packet_id, rng), False
        if r < 0.8 and not valid:
            return rng.choice((b"INFO  | ??:??:?? 3 Booted\r\n", b"\x00\xff", b"\xc3" * 32)), False
        others = (
            m.FromRadio(my_info=m.MyNodeInfo(my_node_num=0x0A0B0C0D)),
            m.FromRadio(metadata=m.DeviceMetadata(firmware_version="2.6.11")),
            m.FromRadio(node_info=m.NodeInfo(num=sender, position=m.Position(latitude_i=35_0000000,
                                                                             longitude_i=138_0000000))),
            m.FromRadio(queueStatus=m.QueueStatus(res=0, mesh_packet_id=packet_id)),
            m.FromRadio(config_complete_id=rng.randrange(2**32)),
            m.FromRadio(rebooted=True),
        )
        return frame(rng.choice(others[:-1] if valid else others).SerializeToString()), False

    def _stream(self, rng: random.Random, *, valid: bool = False) -> tuple[bytes, int]:
        parts, alerts = [], 0
        for i in range(rng.choice((1, 2, 3, 5, 8))):
            data, alert = self._message(rng, 1000 + i, valid=valid)
            parts.append(data)
            alerts += alert
        return b"".join(parts), alerts

    def valid(self, rng: random.Random) -> tuple[str, tuple[bytes, ...], int]:
        """A running device's stream with at least one alert from a known device (so it must be accepted)."""
        stream, alerts = self._stream(rng, valid=True)
        sos = _packet(rng.choice(list(KNOWN)), PB.ports.TEXT_MESSAGE_APP, b"SOS", 999, rng)
        return "running", tuple(chunk(rng, stream + sos)), alerts + 1

    def generate(self, rng: random.Random) -> tuple[str, tuple[bytes, ...], int]:
        r = rng.random()
        if r < 0.05:
            stream = random_bytes(rng, 300)
        elif r < 0.2:
            return self.valid(rng)
        else:
            stream = mutate_bytes(rng, self._stream(rng)[0], tokens=TOKENS, pool=self.pool, max_len=6000)
        return rng.choice(self.VARIANTS), tuple(chunk(rng, stream)), -1

    @staticmethod
    def _driver(variant: str) -> tuple[Meshtastic, FakeLink]:
        link = FakeLink("mesh0")
        config = SimpleNamespace(name="mesh0", driver="meshtastic", port="fuzz", baudrate=115200, meshtastic=SETTINGS)
        d = Meshtastic(config, link)
        if variant == "running":
            # As after configure(): the config download is complete (reaching it needs a scripted device).
            d._config_id, d._config_done = 1, True
        return d, link

    def execute(self, data: tuple[str, tuple[bytes, ...], int]) -> Outcome:
        variant, chunks, alerts = data
        d, link = self._driver(variant)
        for i, c in enumerate(chunks):
            d.feed(c, T0_US + i)
        stream = b"".join(chunks)
        signature = [_check(u, stream) for u in link.uplinks]
        whole, link2 = self._driver(variant)
        whole.feed(stream, T0_US)
        check(signature == [_check(u, stream) for u in link2.uplinks],
              f"uplinks depend on the read boundaries: {len(link.uplinks)} vs {len(link2.uplinks)} in one read")
        if alerts >= 0:
            sos = sum(1 for s in signature if s[1] == "sos")
            check(sos == alerts, f"{alerts} alert packets from known devices gave {sos} sos uplinks")
        if link.uplinks:
            return ACCEPTED
        if link.incidents:
            return rejected(link.incidents[0][0])
        return IGNORED


def _check(u: Uplink, stream: bytes) -> tuple[Any, ...]:
    """Check one uplink; its identity without the frame counter (which depends on when it was read)."""
    check(isinstance(u, Uplink) and u.radio == "mesh0" and isinstance(u.payload, bytes) and u.payload,
          f"bad uplink {u!r}")
    check(u.src is not None and _SRC.fullmatch(u.src), f"uplink src {u.src!r}")
    check(u.rssi is None or type(u.rssi) is int, f"uplink RSSI {u.rssi!r}")
    check(u.snr is None or (type(u.snr) is float and math.isfinite(u.snr)), f"uplink SNR {u.snr!r}")
    try:
        flags, node_id, _counter, kind_code, body, mic, _signed = nodeframe.split(u.payload)
    except CodecError:
        flags = node_id = kind_code = -1
        body, mic = b"", None
    if node_id in KNOWN.values() and u.payload not in stream:
        kind = kinds.kind_name(kind_code)
        check(mic is None and flags == 0, "a Meshtastic reading carries a MIC or flags")
        check(kind in ("sos", "heartbeat", "weather"), f"a Meshtastic reading of kind {kind}")
        try:
            values = kinds.decode_body(kind, body)
        except CodecError as exc:
            raise AssertionError(f"a Meshtastic reading does not decode: {exc}") from None
        return node_id, kind, sorted(values.items()), u.rssi, repr(u.snr), u.src
    check(u.payload in stream, f"uplink payload {u.payload.hex()} is neither a reading nor in the input")
    return u.payload, "frame", u.rssi, repr(u.snr), u.src


TARGETS.setdefault(MeshtasticTarget.name, MeshtasticTarget())
