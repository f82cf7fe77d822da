"""Simulated Meshtastic device on a pty: the serial API of the firmware, in its real framing and protobufs.

What it models (meshtastic firmware ``StreamAPI``/``PhoneAPI`` as a client sees it over USB serial):

* boot: console log text (not framed) after ``boot_delay_s``, then (``announce_reboot``) a framed
  ``FromRadio{rebooted: true}`` (``SerialConsole`` emits it at every boot); the API is off, and packets are not
  forwarded, until the client sends ``want_config_id``;
* ``ToRadio{want_config_id}``: ``my_info``, ``metadata``, one ``node_info`` per node in its database (itself and
  :attr:`SimMeshtastic.node_db`), then ``config_complete_id`` with the client's id; packets flow from then on;
* ``ToRadio{packet}``: recorded (:attr:`transmitted` for the payload), answered with ``queueStatus``;
  ``heartbeat`` and ``disconnect`` recorded (``disconnect`` turns the API off);
* mesh packets heard over the air: :meth:`send_position`, :meth:`send_telemetry`, :meth:`send_text`,
  :meth:`inject_uplink` (a denen frame on PRIVATE_APP), :meth:`inject_encrypted`; refused (False) while the API
  is off, as the firmware only forwards packets to a client that has asked for its config;
* faults: :class:`drivers.sim.faults.ModuleFaults` per frame (garbage before it, cut short, duplicated,
  dropped, split writes), :meth:`inject_garbage`, :meth:`inject_truncated`, :meth:`inject_oversize`,
  :meth:`reboot`, :meth:`unplug`/:meth:`replug`.

The protobufs are the ``meshtastic`` package's own (the driver's dependency), so this twin checks the driver
against the real message definitions.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ConfigDict

from drivers.meshtastic import _protobufs
from drivers.meshtastic_stream import StreamParser, frame
from drivers.sim._pty import PtyPort
from drivers.sim._twin import PluggedModule
from drivers.sim.faults import ModuleFaults, noise_bytes

__all__ = ["NodeEntry", "Profile", "SimMeshtastic", "Simulator", "air_payload"]

log = logging.getLogger(__name__)

_BOOT_LOG = (b"\r\n//\\ E S H T /\\ S T / C\r\n\r\nINFO  | ??:??:?? 0 Booted, wake cause 0\r\n"
             b"INFO  | ??:??:?? 0 Region JP, channel 0\r\n")
_PRIVATE_APP = 256


@dataclass(frozen=True)
class NodeEntry:
    """A node in the simulated device's node database (sent in the config download).

    Attributes:
        num: Meshtastic node number.
        long_name: the user's name.
        lat_deg, lon_deg, alt_m: its last position, None if it never sent one.
        battery_v: its last battery voltage, None if unknown.
        last_heard_s: when it was last heard, in seconds since the Unix epoch (0: unknown).
    """

    num: int
    long_name: str = ""
    lat_deg: float | None = None
    lon_deg: float | None = None
    alt_m: int | None = None
    battery_v: float | None = None
    last_heard_s: int = 0


class SimMeshtastic(PluggedModule):
    """A Meshtastic device with the serial API, on a pty (module docstring).

    Args:
        name: label (also the radio name tests use).
        link: stable symlink path to the pty.
        boot_delay_s: seconds from power-on to the boot log.
        rng: random source for faults.
        node_num: the device's own node number.
        firmware: the firmware version it reports.
        node_db: other nodes in its database.
        announce_reboot: send ``rebooted`` at boot (older firmware; current firmware's console keeps its frames
            until a client has talked to it, so a host notices the restart only by its console text).

    Attributes:
        transmitted: payloads of the packets the host sent (on any port).
        to_radio: every ToRadio the host sent, in order (``want_config_id``, ``heartbeat`` ...).
        config_ids: the ``want_config_id`` values answered.
        boots: completed boots.
    """

    model = "meshtastic"

    def __init__(self, *, name: str = "mesh0", link: str | None = None, boot_delay_s: float = 1.0,
                 rng: random.Random | None = None, node_num: int = 0x0A0B0C0D, firmware: str = "2.6.11.60ec05e",
                 node_db: Iterable[NodeEntry] = (), announce_reboot: bool = True) -> None:
        self.name = name
        self.boot_delay_s = boot_delay_s
        self.node_num = node_num
        self.firmware = firmware
        self.node_db = list(node_db)
        self.announce_reboot = announce_reboot
        self._rng = rng or random.Random()
        self.faults = ModuleFaults(rng=self._rng)
        self.pb = _protobufs()
        self.port = PtyPort(self._on_bytes, link=link, name=name)
        self._parser: StreamParser[Any] = StreamParser(self._to_radio)
        self.transmitted: list[bytes] = []
        self.to_radio: list[Any] = []
        self.config_ids: list[int] = []
        self.queue_res = 0  # the queueStatus result for the host's next packets (0 = queued)
        self.boots = 0
        self._lock = threading.RLock()
        self._cond = threading.Condition(self._lock)
        self._powered = False
        self._booted = False
        self._api = False
        self._epoch = 0
        self._packet_id = 1

    # -- state and life cycle --------------------------------------------------------------------------
    @property
    def booted(self) -> bool:
        return self._booted

    @property
    def api_on(self) -> bool:
        """True once a client asked for the config (packets are forwarded to it)."""
        return self._api

    def start(self, *, wait: bool = True) -> None:
        """Create the pty, power on, and (by default) wait for the boot log."""
        self.port.start()
        with self._lock:
            self._power_on()
        if wait:
            self.wait_for(lambda: self._booted, timeout=self.boot_delay_s + 5.0)

    def stop(self) -> None:
        with self._lock:
            self._power_off()
        self.port.stop()

    def reboot(self, *, noise: bool = True) -> None:
        """An unexpected reset: optional noise, then a boot; the client must ask for the config again."""
        with self._lock:
            self._power_off()
            if noise:
                self._write(noise_bytes(self._rng))
            self._power_on()

    def _boot_after_replug(self) -> None:
        self._power_on()

    def _power_off(self) -> None:
        self._powered = self._booted = self._api = False
        self._epoch += 1
        self._parser.reset()
        self._cond.notify_all()

    def _power_on(self) -> None:
        self._powered = True
        epoch = self._epoch

        def boot() -> None:
            with self._lock:
                if self._epoch != epoch or not self._powered:
                    return
                self._write(_BOOT_LOG)
                if self.announce_reboot:
                    self._emit(self.pb.mesh.FromRadio(rebooted=True))
                self._booted = True
                self.boots += 1
                self._cond.notify_all()

        timer = threading.Timer(self.boot_delay_s, boot)
        timer.daemon = True
        timer.start()

    # -- host side ---------------------------------------------------------------------------------------
    def _to_radio(self, payload: bytes) -> Any:
        try:
            return self.pb.mesh.ToRadio.FromString(payload)
        except (self.pb.DecodeError, ValueError):
            return None

    def _on_bytes(self, data: bytes) -> None:
        with self._lock:
            if not self._booted:
                return  # a device that is still booting loses what it is sent
            for message in self._parser.feed(data, time.monotonic_ns() // 1000):
                self.to_radio.append(message)
                self._serve(message)
            self._parser.take_outside()  # the 0xC3 wake bytes and anything else outside frames
            self._cond.notify_all()

    def _serve(self, message: Any) -> None:
        which = message.WhichOneof("payload_variant")
        mesh = self.pb.mesh
        if which == "want_config_id":
            self.config_ids.append(message.want_config_id)
            self._emit(mesh.FromRadio(my_info=mesh.MyNodeInfo(my_node_num=self.node_num)))
            self._emit(mesh.FromRadio(metadata=mesh.DeviceMetadata(firmware_version=self.firmware)))
            for entry in [NodeEntry(self.node_num, "gateway radio"), *self.node_db]:
                self._emit(mesh.FromRadio(node_info=self._node_info(entry)))
            self._emit(mesh.FromRadio(config_complete_id=message.want_config_id))
            self._api = True
        elif which == "packet":
            packet = message.packet
            if packet.WhichOneof("payload_variant") == "decoded":
                self.transmitted.append(bytes(packet.decoded.payload))
            status = mesh.QueueStatus(res=self.queue_res, free=15, maxlen=16, mesh_packet_id=packet.id)
            self._emit(mesh.FromRadio(queueStatus=status))
        elif which == "disconnect":
            self._api = False

    def _node_info(self, entry: NodeEntry) -> Any:
        mesh = self.pb.mesh
        info = mesh.NodeInfo(num=entry.num, last_heard=entry.last_heard_s,
                             user=mesh.User(id=f"!{entry.num:08x}", long_name=entry.long_name))
        if entry.lat_deg is not None and entry.lon_deg is not None:
            info.position.CopyFrom(self._position(entry.lat_deg, entry.lon_deg, entry.alt_m))
        if entry.battery_v is not None:
            info.device_metrics.CopyFrom(self.pb.telemetry.DeviceMetrics(voltage=entry.battery_v))
        return info

    def _position(self, lat_deg: float, lon_deg: float, alt_m: int | None) -> Any:
        position = self.pb.mesh.Position(latitude_i=round(lat_deg * 1e7), longitude_i=round(lon_deg * 1e7))
        if alt_m is not None:
            position.altitude = alt_m
        return position

    # -- the air -------------------------------------------------------------------------------------------
    def send_packet(self, sender: int, portnum: int, payload: bytes, *, rssi: int = -90, snr: float = 6.5) -> bool:
        """A packet from ``sender`` heard on the channel; False while no client has asked for the config."""
        mesh = self.pb.mesh
        with self._lock:
            if not self._api:
                return False
            self._packet_id += 1
            packet = mesh.MeshPacket(to=0xFFFFFFFF, id=self._packet_id, rx_rssi=rssi, rx_snr=snr,
                                     rx_time=int(time.time()), hop_limit=3,
                                     decoded=mesh.Data(portnum=portnum, payload=bytes(payload)))
            setattr(packet, "from", sender)
            self._emit(mesh.FromRadio(packet=packet))
            return True

    def send_position(self, sender: int, lat_deg: float, lon_deg: float, alt_m: int | None = None) -> bool:
        """A POSITION_APP packet."""
        payload = self._position(lat_deg, lon_deg, alt_m).SerializeToString()
        return self.send_packet(sender, self.pb.ports.POSITION_APP, payload)

    def send_telemetry(self, sender: int, *, voltage: float | None = None, battery_level: int | None = None,
                       temperature: float | None = None, relative_humidity: float | None = None,
                       barometric_pressure: float | None = None) -> bool:
        """A TELEMETRY_APP packet: device metrics when ``voltage``/``battery_level`` is given, else environment."""
        t = self.pb.telemetry
        if voltage is not None or battery_level is not None:
            metrics = {k: v for k, v in (("voltage", voltage), ("battery_level", battery_level)) if v is not None}
            telemetry = t.Telemetry(time=int(time.time()), device_metrics=t.DeviceMetrics(**metrics))
        else:
            env = {k: v for k, v in (("temperature", temperature), ("relative_humidity", relative_humidity),
                                     ("barometric_pressure", barometric_pressure)) if v is not None}
            telemetry = t.Telemetry(time=int(time.time()), environment_metrics=t.EnvironmentMetrics(**env))
        return self.send_packet(sender, self.pb.ports.TELEMETRY_APP, telemetry.SerializeToString())

    def send_text(self, sender: int, text: str, *, alert_app: bool = False) -> bool:
        """A TEXT_MESSAGE_APP packet (ALERT_APP with ``alert_app``)."""
        port = self.pb.ports.ALERT_APP if alert_app else self.pb.ports.TEXT_MESSAGE_APP
        return self.send_packet(sender, port, text.encode())

    def inject_uplink(self, payload: bytes, *, rssi: int = -80, snr: float = 7.0, src: int | None = None) -> bool:
        """A denen frame sent over the mesh on PRIVATE_APP by node number ``src`` (default 0x42)."""
        return self.send_packet(src if src is not None else 0x42, _PRIVATE_APP, payload, rssi=rssi, snr=snr)

    def inject_encrypted(self, sender: int) -> bool:
        """A packet the device could not decrypt (a channel it does not have)."""
        mesh = self.pb.mesh
        with self._lock:
            if not self._api:
                return False
            packet = mesh.MeshPacket(to=0xFFFFFFFF, id=self._packet_id + 1, encrypted=b"\x13\x37" * 8)
            setattr(packet, "from", sender)
            self._emit(mesh.FromRadio(packet=packet))
            return True

    # -- raw faults ------------------------------------------------------------------------------------------
    def inject_garbage(self, data: bytes | None = None) -> None:
        """Raw bytes between frames (default: a typical noise burst)."""
        with self._lock:
            self._write(data if data is not None else noise_bytes(self._rng))

    def inject_truncated(self) -> None:
        """The first half of a frame, then nothing (a reset in the middle of a write)."""
        data = frame(self.pb.mesh.FromRadio(id=7, my_info=self.pb.mesh.MyNodeInfo(my_node_num=self.node_num))
                     .SerializeToString())
        with self._lock:
            self._write(data[: len(data) // 2])

    def inject_oversize(self) -> None:
        """A header whose length (0xFFFF) no frame can have, with bytes after it."""
        with self._lock:
            self._write(bytes((0x94, 0xC3, 0xFF, 0xFF)) + bytes(range(32)))

    # -- wire ----------------------------------------------------------------------------------------------
    def _emit(self, message: Any) -> None:
        self.faults.forward_to(self.port.faults)
        for chunk in self.faults.apply(frame(message.SerializeToString()), terminator=b""):
            self._write(chunk)

    def _write(self, data: bytes) -> None:
        if data and self.port.plugged:
            self.port.write(data)


class Profile(BaseModel):
    """The knobs a scenario file may set under a module's ``profile:`` (keyword arguments of the simulator)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    node_num: int = 0x0A0B0C0D
    firmware: str = "2.6.11.60ec05e"
    announce_reboot: bool = True


def air_payload(frame_bytes: bytes, settings: Any) -> bytes:
    """What a denen node sends over the mesh to deliver ``frame_bytes``: the frame as a PRIVATE_APP payload, and
    what :attr:`SimMeshtastic.transmitted` records for a frame the gateway sends."""
    return frame_bytes


#: The twin of drivers.meshtastic (scenario files: ``model: meshtastic``).
Simulator = SimMeshtastic
