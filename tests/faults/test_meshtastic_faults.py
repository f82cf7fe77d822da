"""Serial faults round for the Meshtastic driver: garbled bytes between frames, frames cut short, oversize lengths,
split/duplicated/dropped frames, reboots (the device wants its config asked for again) and unplugs.

The Meshtastic twin on a real pty, the driver in a RadioWorker, and the gateway's real FrameDecoder. Every
telemetry packet carries its own number as its battery voltage, so each reading names the packet it came from.
What counts as lost is decided on the device's side, frame by frame (:class:`FrameLog`): a packet is **expected**
when its frame went out whole (split into writes or not, sent twice or not) and nothing that could swallow it
went just before it (a frame cut short, noise holding a frame header). The test asserts that every expected
packet becomes exactly one reading, that nothing else does, and that the faults are counted.
"""

from __future__ import annotations

import json
import random
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from agent.config import parse_config
from agent.gateway.readings import FrameDecoder
from drivers import registry
from drivers.codec import frame as nodeframe
from drivers.codec import kinds
from drivers.meshtastic import SPEC, MeshtasticConfig
from drivers.radio import RadioWorker
from drivers.sim.meshtastic import SimMeshtastic
from tests.drivers.recorder import Events
from tests.support.fault_rig import sized
from tests.support.gateway_config import NodeEntry, gateway_yaml

pytestmark = [pytest.mark.faults]

ROUNDS = sized(4, 12)
PACKETS = sized(40, 200)  # telemetry packets per round
DEVICE, NODE = 0xA1B2C3D4, 0x3E000001
WAIT_S = 30.0


class FrameLog:
    """What the twin put on the wire for each frame it meant to send (wraps its ModuleFaults.apply)."""

    def __init__(self, sim: SimMeshtastic) -> None:
        self.outcomes: list[str] = []  # per frame: intact | cut | dropped | risky (after something that may swallow it)
        self._risk_next = False
        apply = sim.faults.apply

        def recording(data: bytes, *, terminator: bytes = b"") -> list[bytes]:
            chunks = apply(data, terminator=terminator)
            garbage = b"".join(c for c in chunks if c != data and not data.startswith(c))
            if not chunks:
                outcome = "dropped"
            elif data not in chunks:
                outcome = "cut"
            elif self._risk_next or b"\x94" in garbage:
                outcome = "risky"
            else:
                outcome = "intact"
            self.outcomes.append(outcome)
            self._risk_next = outcome == "cut"
            return chunks

        sim.faults.apply = recording  # type: ignore[method-assign]

    def risk_next(self) -> None:
        """Bytes that may swallow the next frame were written (a frame cut short by hand)."""
        self._risk_next = True


def test_garbled_cut_oversize_split_duplicated_frames_reboots_and_unplugs_lose_only_their_packets(
        tmp_path: Path, rng: random.Random, figures: dict[str, Any]) -> None:
    added = "meshtastic" not in registry.names()
    if added:
        registry.register(SPEC)
    sim = SimMeshtastic(name="mesh0", link=str(tmp_path / "mesh0"), boot_delay_s=0.05, rng=random.Random(rng.random()))
    log = FrameLog(sim)
    settings = MeshtasticConfig.model_validate({"devices": [{"device": DEVICE, "node": f"{NODE:08x}"}],
                                                "config_timeout_s": 1.0})
    radio = SimpleNamespace(name="mesh0", driver="meshtastic", port=sim.path, baudrate=115200, meshtastic=settings)
    events = Events(wait_s=WAIT_S)
    worker = RadioWorker(radio, events, reopen_min_s=0.05, reopen_max_s=0.3, rng=random.Random(rng.random()))
    cfg = parse_config(gateway_yaml(port="loop://", mqtt_port=1883, journal=tmp_path / "j.db",
                                    nodes=[NodeEntry(NODE, "sos", "hiker-01", None, unauthenticated="flag")]))
    decoder = FrameDecoder(cfg, {})
    expected: set[int] = set()
    sent: set[int] = set()
    refused = oversize = garbage = 0
    number = 0

    def send_round() -> None:
        nonlocal number, refused, oversize, garbage
        for _ in range(PACKETS):
            number += 1
            before = len(log.outcomes)
            if not sim.send_telemetry(DEVICE, voltage=number / 100, battery_level=50):
                refused += 1
                continue
            sent.add(number)
            if log.outcomes[before] == "intact":
                expected.add(number)
            roll = rng.random()
            if roll < 0.05:
                sim.inject_garbage()
                garbage += 1
            elif roll < 0.08:
                sim.inject_oversize()
                oversize += 1
            elif roll < 0.10:
                sim.inject_truncated()
                log.risk_next()

    def delivered() -> None:
        events.wait(lambda: expected <= {_volts(u) for u in list(events.uplinks)})

    def running() -> None:
        events.wait(lambda: worker.state == "running" and sim.api_on)

    started = time.monotonic()
    try:
        sim.start(wait=True)
        worker.start()
        running()
        sim.faults.split_probability = 0.3
        sim.faults.garbage_probability = 0.05
        sim.faults.truncate_probability = 0.03
        sim.faults.duplicate_probability = 0.05
        sim.faults.drop_probability = 0.02
        for r in range(ROUNDS):
            send_round()
            delivered()  # what was sent is read before the fault hits (an unplug loses the pty's unread bytes)
            if r % 2 == 0:
                sim.reboot(noise=True)
            else:
                sim.unplug()
                events.wait(lambda: events.count("port_lost") >= 1)
                sim.replug()
            send_round()  # while the device boots or the driver configures: refused, never half-delivered
            running()
            send_round()
        sim.faults.split_probability = sim.faults.garbage_probability = sim.faults.truncate_probability = 0.0
        sim.faults.duplicate_probability = sim.faults.drop_probability = 0.0
        number += 1
        assert sim.send_telemetry(DEVICE, voltage=number / 100, battery_level=50)  # a clean last packet
        sent.add(number)
        expected.add(number)
        delivered()
    finally:
        worker.stop()
        sim.stop()
        if added:
            registry.unregister("meshtastic")

    got: list[int] = []
    for up in events.uplinks:
        out = decoder.decode(up)
        assert out.entry is not None, out.quarantined  # every frame the driver made is accepted (flag policy)
        body = json.loads(out.entry.body)
        assert body["auth"] == "none" and body["kind"] == "heartbeat"
        got.append(round(body["values"]["battery_v"] * 100))
    assert len(got) == len(set(got)), "a packet became two readings"
    assert set(got) <= sent, set(got) - sent
    missing = expected - set(got)
    assert not missing, (sorted(missing), log.outcomes.count("cut"))
    assert events.count("module_reboot") >= (ROUNDS + 1) // 2
    assert events.count("line_overflow") >= oversize
    assert events.count("garbled_line") >= 1
    figures.update(packets_sent=len(sent), refused_while_down=refused, expected=len(expected), readings=len(got),
                   lost_to_faults=len(sent) - len(got), cut=log.outcomes.count("cut"),
                   dropped=log.outcomes.count("dropped"), oversize=oversize, garbage_bursts=garbage,
                   seconds=round(time.monotonic() - started, 1))


def _volts(up: Any) -> int | None:
    """The packet number of an uplink, read without the decoder (whose replay windows the test checks later)."""
    f = nodeframe.parse(up.payload)
    values = kinds.decode_body(kinds.kind_name(f.kind), f.body)
    return round(values["battery_v"] * 100) if "battery_v" in values else None
