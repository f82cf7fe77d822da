"""Meshtastic twin on a real pty -> RadioWorker with the Meshtastic driver -> the gateway's real FrameDecoder.

Proves the path a hiker's alert takes: a text with "SOS" from a known device becomes an SOS reading carrying the
device's last position, accepted only under the node's ``unauthenticated: flag`` policy and marked so.
"""

from __future__ import annotations

import json
import random
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import serial

from agent.config import parse_config
from agent.gateway.reading import SOS, TELEMETRY
from agent.gateway.readings import FrameDecoder
from drivers import registry
from drivers.codec import frame as nodeframe
from drivers.codec import kinds
from drivers.meshtastic import SPEC, MeshtasticConfig, probe
from drivers.radio import RadioWorker
from drivers.sim.meshtastic import NodeEntry as DbEntry
from drivers.sim.meshtastic import SimMeshtastic
from tests.drivers.recorder import Events, running
from tests.support.gateway_config import NodeEntry, gateway_yaml, node_key

WAIT_S = 20.0
HIKER, GUIDE, STRANGER = 0xA1B2C3D4, 0xA1B2C3D5, 0x0BADF00D
HIKER_NODE, GUIDE_NODE, BUTTON_NODE = 0x3E000001, 0x3E000002, 0x5E000001


@pytest.fixture(autouse=True)
def meshtastic_registered() -> Iterator[None]:
    """The driver under its name, as drivers/all.py registers it (registered here until it is listed there)."""
    added = "meshtastic" not in registry.names()
    if added:
        registry.register(SPEC)
    yield
    if added:
        registry.unregister("meshtastic")


class Rig:
    def __init__(self, tmp_path: Path) -> None:
        # The radio's own database knows where the hiker was last (seeds the position before any packet).
        self.sim = SimMeshtastic(name="mesh0", link=str(tmp_path / "mesh0"), boot_delay_s=0.05, rng=random.Random(5),
                                 node_db=[DbEntry(HIKER, "hiker", 36.2487, 137.6381, 1520, 3.9, 1_780_000_000)])
        settings = MeshtasticConfig.model_validate({"devices": [
            {"device": f"!{HIKER:08x}", "node": f"{HIKER_NODE:08x}"},
            {"device": f"!{GUIDE:08x}", "node": f"{GUIDE_NODE:08x}"},
        ]})
        radio = SimpleNamespace(name="mesh0", driver="meshtastic", port=self.sim.path, baudrate=115200,
                                meshtastic=settings)
        self.events = Events(wait_s=WAIT_S)
        self.worker = RadioWorker(radio, self.events, reopen_min_s=0.05, reopen_max_s=0.3, rng=random.Random(3))
        nodes = [NodeEntry(HIKER_NODE, "sos", "hiker-01", None, unauthenticated="flag"),
                 NodeEntry(GUIDE_NODE, "sos", "guide-01", node_key(GUIDE_NODE), unauthenticated="reject"),
                 NodeEntry(BUTTON_NODE, "sos", "button-01", node_key(BUTTON_NODE))]
        cfg = parse_config(gateway_yaml(port="loop://", mqtt_port=1883, journal=tmp_path / "j.db", nodes=nodes))
        self.decoder = FrameDecoder(cfg, {})

    def start(self) -> None:
        self.sim.start(wait=True)
        self.worker.start()
        self.events.wait(lambda: self.worker.state == "running" and self.sim.api_on)

    def stop(self) -> None:
        self.worker.stop()
        self.sim.stop()

    def decoded(self, count: int) -> list[Any]:
        self.events.wait(lambda: len(self.events.uplinks) >= count)
        return [self.decoder.decode(u) for u in self.events.uplinks[:count]]


@pytest.fixture
def rig(tmp_path: Path) -> Iterator[Rig]:
    yield from running(Rig(tmp_path))


def test_an_sos_text_from_a_known_device_is_an_sos_reading_with_its_position_flagged_unauthenticated(rig: Rig) -> None:
    assert rig.worker.module_info["devices_in_radio_db"] == "1/2"
    assert rig.sim.send_text(HIKER, "滑落しました SOS")
    [out] = rig.decoded(1)
    assert out.entry is not None, out.quarantined
    assert out.kind == "sos" and out.entry.lane == SOS
    body = json.loads(out.entry.body)
    assert (body["node"], body["name"], body["auth"], body["radio"]) == (f"{HIKER_NODE:08x}", "hiker-01", "none",
                                                                          "mesh0")
    assert body["values"] == {"pressed": 1.0, "lat_deg": 36.2487, "lon_deg": 137.6381, "alt_m": 1520.0,
                              "battery_v": 3.9}

    # A fresher position from the air replaces the one from the radio's database.
    assert rig.sim.send_position(HIKER, 36.25, 137.64, 1600)
    assert rig.sim.send_text(HIKER, "\a")
    outs = rig.decoded(3)
    heartbeat, sos = outs[1], outs[2]
    assert heartbeat.entry is not None and heartbeat.entry.lane == TELEMETRY
    assert json.loads(heartbeat.entry.body)["values"]["ch2_gps_0"] == 36.25
    assert sos.entry is not None and json.loads(sos.entry.body)["values"]["lat_deg"] == 36.25


def test_no_bypass_a_node_that_rejects_unsigned_frames_gets_its_meshtastic_frames_quarantined(rig: Rig) -> None:
    assert rig.sim.send_text(GUIDE, "SOS")
    [out] = rig.decoded(1)
    assert out.entry is None and out.quarantined is not None and out.quarantined.reason == "mic_missing"


def test_unknown_devices_are_dropped_and_a_signed_denen_frame_over_the_mesh_keeps_its_mic(rig: Rig) -> None:
    assert rig.sim.send_text(STRANGER, "SOS")
    signed = nodeframe.build(BUTTON_NODE, 1, kinds.KIND_CODES["sos"], kinds.encode_values("sos", {"pressed": 1.0}),
                             key=node_key(BUTTON_NODE))
    assert rig.sim.inject_uplink(signed, src=STRANGER)
    [out] = rig.decoded(1)
    assert out.entry is not None and json.loads(out.entry.body)["auth"] == "mic"
    assert len(rig.events.uplinks) == 1


@pytest.mark.parametrize("announced", [True, False])
def test_a_reboot_of_the_radio_is_noticed_and_alerts_flow_again(rig: Rig, announced: bool) -> None:
    # Current firmware keeps its "rebooted" frame until a client talks to it: only the boot log tells.
    rig.sim.announce_reboot = announced
    rig.sim.reboot(noise=True)
    rig.events.wait(lambda: rig.events.count("configured") == 2 and rig.sim.api_on)
    assert rig.events.count("module_reboot") == 1 and len(rig.sim.config_ids) == 2
    assert rig.sim.send_text(HIKER, "SOS")
    [out] = rig.decoded(1)
    assert out.entry is not None and out.kind == "sos"


@pytest.mark.parametrize("boots", [True, False])
def test_doctor_probe_asks_for_the_config_download_only(tmp_path: Path, boots: bool) -> None:
    sim = SimMeshtastic(name="mesh0", link=str(tmp_path / "mesh0"), boot_delay_s=0.05 if boots else 60.0,
                        node_db=[DbEntry(HIKER)])
    radio = SimpleNamespace(name="mesh0", driver="meshtastic", port=sim.path, baudrate=115200,
                            meshtastic=MeshtasticConfig.model_validate({"devices": [{"device": HIKER, "node": "3e000001"}]}))
    sim.start(wait=boots)
    try:
        with serial.Serial(sim.path, 115200, timeout=0.05) as port:
            finding = probe(port, radio, 1.0, lambda text: text)
    finally:
        sim.stop()
    if boots:
        assert finding.status == "ok", finding
        assert "!0a0b0c0d" in finding.summary and "2.6.11" in finding.summary and "1/1" in finding.summary
        assert [m.WhichOneof("payload_variant") for m in sim.to_radio] == ["want_config_id"]
    else:
        assert finding.status == "fail" and finding.hint, finding
