"""Meshtastic devices on USB serial: a hiker's radio pressing SOS becomes a denen SOS reading with its position.

Design
------
The gateway's Meshtastic radio (any device with the serial API: T-Echo, RAK4631, Heltec ...) is plugged in by
USB and runs its normal firmware on the hikers' channel. denen is one more client of that device's serial API,
as the Meshtastic app or ``meshtastic --port`` is::

    RadioWorker (drivers/radio.py)        Meshtastic driver (this module)          device (firmware)
      open port ──────────────────────>   configure_once: 32 x 0xC3 (wake),
                                          ToRadio{want_config_id = random}  ──>   my_info, metadata, node_info...,
                                                                              <── config_complete_id (= ours)
      pump -> feed(chunk) ─────────────>  FromRadio frames (drivers/meshtastic_stream.py: 0x94 0xC3, 2-byte
                                          big-endian length, protobuf); packet -> Uplink(s); rebooted ->
                                          module_reboot and configure again
      service() ───────────────────────>  ToRadio{heartbeat} every heartbeat_s (the firmware drops an idle
                                          serial API client after 15 minutes); want_config again after
                                          silence_s without a frame, or on console text after the config
      transmit(frame) ─────────────────>  ToRadio{packet: broadcast, portnum frame_port, payload frame};
                                      <── queueStatus{mesh_packet_id, res}

Framing and handshake as in meshtastic/python ``stream_interface.py`` (START1 0x94, START2 0xC3, HEADER_LEN 4,
MAX_TO_FROM_RADIO_SIZE 512, the 32-byte 0xC3 wake) and ``mesh_interface.py`` (``_startConfig``: a random
``want_config_id``, never 69420/69421, the firmware's "config only" and "nodes only" nonces; ``rebooted`` ->
start the config again), the firmware's ``StreamAPI.cpp`` (the same reader; ``emitRebooted``, which
``SerialConsole`` calls at every boot) and meshtastic/protobufs ``mesh.proto`` (FromRadio, ToRadio, MeshPacket,
QueueStatus).

What a packet becomes. Each Meshtastic device that may call for help is listed in the radio's ``meshtastic:``
section (``devices: [{device: "!a1b2c3d4", node: "0000a001"}]``), mapped to a denen node id that is configured
under ``nodes:`` with ``unauthenticated: flag`` (and usually ``kind: sos``). Its packets become denen node frames
(docs/protocols.md §9, built with drivers/codec/frame.py and LPP), so they take exactly the path of a LoRa
node's frames: FrameDecoder, journal, edge rules, MQTT, dashboards:

* POSITION_APP: remembered as the device's last position; sent on as a ``heartbeat`` reading (``battery_v`` from
  its last telemetry, position as ``ch2_gps_0..2``) once a battery voltage is known.
* TELEMETRY_APP device metrics: ``heartbeat`` (``battery_v``, ``battery_pct``, last position as ``ch2_gps``);
  environment metrics: ``weather`` (``temperature_c``, ``humidity_pct``, ``pressure_hpa``), for devices with
  ``environment: true`` only (a hiker's node is ``kind: sos``; weather from it would be a kind mismatch).
* TEXT_MESSAGE_APP with the alert bell (BEL, 0x07: what Meshtastic's canned "alert bell" messages carry) or one
  of ``alert_texts`` (default ``SOS``; width and case folded, so ``ＳＯＳ`` counts), and ALERT_APP: an ``sos``
  reading, ``pressed`` 1 with the device's last known position (``lat_deg``, ``lon_deg``, ``alt_m`` 0 when the
  device never sent one) and battery. A Meshtastic device has no "cancel": the operator clears the alert.
* ``frame_port`` (default 256, PRIVATE_APP): the payload is a denen node frame already, passed on unchanged
  from any device: a denen node that uses the mesh as its transport, with its own MIC. denen receipts go out
  the same way (:meth:`Meshtastic.transmit`).
* Anything else, and every packet of a device not in ``devices``: counted in :attr:`Meshtastic.stats`, logged
  once per device, and dropped. Packets the device could not decrypt (another channel) likewise, and a packet
  heard again (same sender and packet id, of the last 256).

Authenticity, honestly: a Meshtastic channel is protected by its pre-shared key only, so anyone who knows the
channel key (for the default channel: everyone) can send a packet claiming any node number. These frames carry
no MIC; the gateway accepts them only for nodes whose policy is ``unauthenticated: flag``, marks each reading
``"auth": "none"``, and dashboards show it as unauthenticated, like any unsigned LoRa frame. Nothing here
bypasses the node policy: a node with ``unauthenticated: reject`` gets its Meshtastic frames quarantined.

Frame counters. The gateway accepts an unsigned frame only above the node's last counter, which it keeps in its
journal across restarts. A Meshtastic packet has no such counter (packet ids are random), so the driver makes
one from the time the packet was read, as the Modbus driver does: the Unix time in seconds (uint32 until 2106), or
one above the last it gave that node in this process when packets come faster. Consequence: if the clock steps back
(a Pi without a real-time clock booting before NTP), that node's frames are quarantined as ``replay`` until the
clock has caught up (``denen node reset-counter`` clears the window at once).

What denen does not do: no mesh routing, relaying or store-and-forward (the device does that); no change to the
device's configuration (channels, keys, region, roles: set them with the Meshtastic app); no text replies to the
hiker; no decoding of PKI direct messages or channels the device does not have. It asks the device only for its
config download, which receiving needs.

The protobufs come from the ``meshtastic`` package, imported when a driver is made (not when this module is
imported: config validation and ``denen --help`` stay light).
"""

from __future__ import annotations

import importlib.util
import logging
import math
import random
import re
import time
from collections import Counter, OrderedDict
from collections.abc import Iterable
from types import SimpleNamespace
from typing import Any, ClassVar

from pydantic import Field, field_validator, model_validator

from drivers.codec import frame as nodeframe
from drivers.codec import kinds
from drivers.errors import CodecError, ModuleError, ModuleTimeout
from drivers.meshtastic_packets import (
    Fix,
    alert_matcher,
    battery_values,
    environment_values,
    position_fix,
)
from drivers.meshtastic_stream import WAKE, StreamParser, frame
from drivers.probe import FAIL, N_, OK, Finding, ProbeLink, Say, noise_hint
from drivers.radio import Link, ModuleDriver
from drivers.registry import DriverSpec
from drivers.settings import Problem, Section, Text, problem
from drivers.types import Uplink

__all__ = ["SPEC", "Meshtastic", "MeshtasticConfig", "MeshtasticDevice", "node_problems", "probe"]

log = logging.getLogger(__name__)

#: want_config_id values the firmware reads as "send the config only" / "send the node database only".
_SPECIAL_CONFIG_IDS = frozenset({69420, 69421})
_BROADCAST = 0xFFFF_FFFF
_UNKNOWN_LOGGED_MAX = 64  # distinct unknown devices logged by name; more are only counted
#: Console text: a run of printable ASCII that line noise hardly ever makes.
_CONSOLE_TEXT = re.compile(rb"[ -~]{12,}")
_RECENT_PACKETS = 256  # (sender, packet id) pairs remembered to drop a packet heard twice


def _protobufs() -> SimpleNamespace:
    """The meshtastic package's protobuf modules (importing it costs ~0.25 s and ~24 MiB: done once, lazily)."""
    from google.protobuf.message import DecodeError
    from meshtastic.protobuf import mesh_pb2, portnums_pb2, telemetry_pb2

    return SimpleNamespace(mesh=mesh_pb2, ports=portnums_pb2.PortNum, telemetry=telemetry_pb2, DecodeError=DecodeError)


class MeshtasticDevice(Section):
    """One Meshtastic device whose packets become readings of a denen node."""

    device: str = Field(description=N_("The device's node id as Meshtastic shows it (`!a1b2c3d4`), or its node "
                        "number in decimal."))
    node: str = Field(description=N_("The denen node id (8 hex digits) its readings get; configure that node under "
                      "`nodes:` with `unauthenticated: flag`."))
    environment: bool = Field(False, description=N_("Also turn its environment telemetry into `weather` readings."))

    @field_validator("device", mode="before")
    @classmethod
    def _device_id(cls, value: object) -> str:
        hint = N_("write the id the Meshtastic app shows, e.g. \"!a1b2c3d4\", or the node number, e.g. 2712847316")
        if isinstance(value, int) and not isinstance(value, bool):
            num = value
        elif isinstance(value, str) and value.startswith("!") and len(value) == 9:
            try:
                num = int(value[1:], 16)
            except ValueError:
                raise problem(N_("{value} is not a Meshtastic node id"), hint, value=repr(value)) from None
        elif isinstance(value, str) and value.isdigit() and len(value) <= 10:
            num = int(value)
        else:
            raise problem(N_("{value} is not a Meshtastic node id"), hint, value=repr(value))
        if not 1 <= num < _BROADCAST:
            raise problem(N_("node number {num} is outside 1..4294967294"), hint, num=num)
        return f"!{num:08x}"

    @field_validator("node", mode="before")
    @classmethod
    def _node_id(cls, value: object) -> str:
        if not isinstance(value, str) or len(value) != 8 or any(c not in "0123456789abcdefABCDEF" for c in value):
            raise problem(N_("{value} is not a denen node id"), N_("8 hex digits, as under nodes: (\"0000a001\")"),
                          value=repr(value))
        return value.lower()

    @property
    def num(self) -> int:
        """The Meshtastic node number."""
        return int(self.device[1:], 16)


class MeshtasticConfig(Section):
    """Meshtastic devices heard through a Meshtastic radio on USB serial, and how their packets are read."""

    #: What the radio's ``meshtastic:`` key holds, for the config reference.
    section_doc: ClassVar[str] = "Meshtastic devices"

    devices: tuple[MeshtasticDevice, ...] = Field((), max_length=1000, description=N_("The devices whose packets "
                                                  "become readings; packets of any other device are counted and "
                                                  "dropped."))
    alert_texts: tuple[str, ...] = Field(("SOS",), max_length=16, description=N_("A text message containing one of "
                                         "these as a word (any case or width) is an SOS; so is the alert bell."))
    frame_port: int = Field(256, ge=256, le=511, description=N_("Meshtastic port number whose payloads are denen node "
                            "frames (256 = PRIVATE_APP)."))
    heartbeat_s: int = Field(300, ge=30, le=840, description=N_("Seconds between heartbeats to the device (its serial "
                             "API drops a silent client after 15 minutes)."))
    config_timeout_s: float = Field(15.0, gt=0, le=120, description=N_("Seconds to wait for the device's config "
                                    "download."))
    silence_s: int = Field(3600, ge=300, le=86400, description=N_("Seconds without any frame from the device after "
                           "which its config is asked for again (a device that restarted without saying so sends "
                           "nothing until asked; its own telemetry comes every 30 minutes by default)."))

    @field_validator("alert_texts")
    @classmethod
    def _texts(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for i, text in enumerate(value):
            if not text.strip() or len(text) > 40:
                raise problem(N_("alert text {text} must be 1..40 characters, not only spaces"), subloc=(i,),
                              text=repr(text))
        return value

    @model_validator(mode="after")
    def _unique(self) -> MeshtasticConfig:
        seen: dict[str, int] = {}
        nodes: dict[str, int] = {}
        for i, d in enumerate(self.devices):
            if d.device in seen:
                raise problem(N_("device {device} is listed twice (entries {first} and {second})"),
                              subloc=("devices", i, "device"), device=d.device, first=seen[d.device], second=i)
            if d.node in nodes:
                raise problem(N_("node {node} is given to two devices (entries {first} and {second})"),
                              N_("one denen node per device"), subloc=("devices", i, "node"), node=d.node,
                              first=nodes[d.node], second=i)
            seen[d.device], nodes[d.node] = i, i
        if importlib.util.find_spec("meshtastic") is None:
            raise problem(N_("the meshtastic package is not installed"), N_("pip install 'denen-agent[meshtastic]'"))
        return self


def node_problems(settings: MeshtasticConfig, nodes: Iterable[object]) -> list[Problem]:
    """The gateway's ``nodes:`` checked against the devices of one radio's ``meshtastic:`` section.

    Each device's node must be configured, and not with ``unauthenticated: reject`` (the config's default): its
    frames carry no MIC, so the gateway would quarantine every one, its SOS included. Works on raw data (dicts)
    as well as on models; a node entry that is itself invalid is skipped (its own error is reported elsewhere).

    Returns:
        Problems located below the section (``("devices", i, "node")``), for the config loader.
    """
    policies: dict[str, object] = {}
    for node in nodes:
        get = node.get if isinstance(node, dict) else (lambda key, n=node: getattr(n, key, None))
        node_id = get("id")
        if isinstance(node_id, int) and not isinstance(node_id, bool):
            node_id = f"{node_id:08x}"
        if isinstance(node_id, str):
            policies[node_id.lower()] = get("unauthenticated") or "reject"
    found = []
    for i, device in enumerate(settings.devices):
        policy = policies.get(device.node)
        if policy is None:
            found.append(Problem.of(("devices", i, "node"), N_("node {node} (device {device}) is not under nodes:"),
                                    N_('add it: - {{id: "{node}", kind: sos, unauthenticated: flag, ...}}'),
                                    node=device.node, device=device.device))
        elif policy == "reject":
            found.append(Problem.of(("devices", i, "node"), N_("node {node} has unauthenticated: reject, but "
                                                                "Meshtastic frames carry no MIC: every one, SOS "
                                                                "included, would be quarantined"),
                                    N_("set unauthenticated: flag on that node (readings are then marked "
                                       "unauthenticated)"), node=device.node))
    return found


class Meshtastic(ModuleDriver):
    """A Meshtastic device's serial API (module docstring).

    Attributes:
        stats: what was dropped and why: ``unknown_device``, ``undecryptable``, ``duplicate``, ``ignored_port``,
            ``ignored_text``, ``ignored_telemetry``, ``bad_payload``, ``no_fix``, ``position_held``,
            ``unencodable``, ``counter_exhausted``; ``alerts`` counts SOS readings.
    """

    # Per (radio, denen node), for the process's lifetime: a reopened port never repeats a counter.
    _counters: ClassVar[nodeframe.ClockCounters] = nodeframe.ClockCounters()

    def __init__(self, config: Any, link: Link) -> None:
        super().__init__(config, link)
        settings = getattr(config, "meshtastic", None)
        self.settings: MeshtasticConfig = settings if settings is not None else MeshtasticConfig()
        self.pb = _protobufs()
        self._devices = {d.num: d for d in self.settings.devices}
        self._is_alert = alert_matcher(self.settings.alert_texts)
        self._parser: StreamParser[Any] = StreamParser(self._from_radio, self._stream_problem)
        self._config_id = 0
        self._config_done = False
        self._last_heartbeat = self._last_frame = time.monotonic()
        self._queue_status: dict[int, int] = {}  # mesh packet id -> res, for transmit()
        self._fixes: dict[int, Fix] = {}  # device number -> last position
        self._battery: dict[int, dict[str, float]] = {}  # device number -> battery_v/battery_pct
        self._unknown_logged: set[int] = set()
        self._recent: OrderedDict[tuple[int, int], None] = OrderedDict()
        self._known_in_db = 0  # configured devices in the radio's node database (config download)
        self._received_us = 0
        self._rng = random.SystemRandom()
        self.stats: Counter[str] = Counter()

    # -- configure and keep alive ------------------------------------------------------------------------
    def configure(self) -> None:
        self._config_done = False
        super().configure()

    def configure_once(self) -> None:
        self.check_not_rebooted("want_config")
        self._config_done = False
        self._config_id = self._new_id(_SPECIAL_CONFIG_IDS)
        self.link.write(WAKE)
        self.pause(0.1)  # meshtastic python waits 100 ms for a sleeping device to wake
        self.check_not_rebooted("want_config")
        self._send(self.pb.mesh.ToRadio(want_config_id=self._config_id))
        timeout = self.settings.config_timeout_s
        try:
            self.wait_until(lambda: self._config_done or self._rebooted_while_configuring, timeout, "want_config")
        except ModuleTimeout as exc:
            self.link.incident("module_timeout", f"no config download from the device within {timeout:g} s")
            raise ModuleTimeout(str(exc)) from None
        self.check_not_rebooted("want_config")
        self.module_info.setdefault("firmware", "unknown")
        self.module_info["devices_in_radio_db"] = f"{self._known_in_db}/{len(self._devices)}"
        self._last_heartbeat = self._last_frame = time.monotonic()

    def service(self) -> None:
        now = time.monotonic()
        if now - self._last_frame >= self.settings.silence_s:
            self.link.incident("module_timeout", f"no frame from the device for {now - self._last_frame:.0f} s; "
                               "asking for its config again")
            self._last_frame = now
            self.reboot_detected = True  # the worker configures it again
            return
        if now - self._last_heartbeat >= self.settings.heartbeat_s:
            self._send(self.pb.mesh.ToRadio(heartbeat=self.pb.mesh.Heartbeat()))
            self._last_heartbeat = now

    def transmit(self, payload: bytes, timeout: float) -> None:
        """Broadcast a denen frame on the primary channel at ``frame_port``; waits for the device's queue status."""
        limit = self.pb.mesh.Constants.DATA_PAYLOAD_LEN
        if not payload or len(payload) > limit:
            raise ValueError(f"a Meshtastic payload holds 1..{limit} bytes, got {len(payload)}")
        packet_id = self._new_id(frozenset())
        data = self.pb.mesh.Data(portnum=self.settings.frame_port, payload=bytes(payload))
        self._queue_status.clear()
        self._send(self.pb.mesh.ToRadio(packet=self.pb.mesh.MeshPacket(to=_BROADCAST, id=packet_id, decoded=data)))
        try:
            self.wait_until(lambda: packet_id in self._queue_status, timeout, "transmit")
        except ModuleTimeout:
            self.link.incident("module_timeout", f"no queue status for packet {packet_id:08x}")
            raise
        res = self._queue_status.pop(packet_id)
        if res != 0:
            self.link.incident("module_error", f"device refused the packet (queue status {res})")
            raise ModuleError("transmit", f"device refused the packet (queue status {res})")

    def _new_id(self, avoid: frozenset[int]) -> int:
        while True:
            value = self._rng.randrange(1, _BROADCAST)
            if value not in avoid:
                return value

    def _send(self, message: Any) -> None:
        self.link.write(frame(message.SerializeToString()))

    # -- bytes in -------------------------------------------------------------------------------------------
    def feed(self, chunk: bytes, received_us: int) -> None:
        self._received_us = received_us
        uplinks: list[Uplink] = []
        messages = self._parser.feed(chunk, received_us)
        if messages:
            self._last_frame = time.monotonic()
        for message in messages:
            self._handle(message, uplinks)
        count, sample = self._parser.take_outside()
        # Console text is expected until the device has sent its config (its boot log). After that the firmware
        # writes frames only (SerialConsole drops raw text once a client has talked to it) until it restarts,
        # and a restarted device forwards nothing until asked again: text then means a reboot, even one that
        # sent no "rebooted" frame. Anything else outside frames is noise on the line.
        if count and self._config_done:
            if _CONSOLE_TEXT.search(sample):
                self.link.incident("module_reboot", f"console text from the device: {sample[-40:]!r}")
                self._config_done = False
                self.module_rebooted()
            else:
                self.link.incident("garbled_line", f"{count} bytes outside frames: {sample[-32:]!r}")
        if uplinks:
            self.link.deliver(uplinks)

    def _from_radio(self, payload: bytes) -> Any:
        try:
            return self.pb.mesh.FromRadio.FromString(payload)
        except (self.pb.DecodeError, ValueError):
            return None

    def _stream_problem(self, kind: str, detail: str) -> None:
        self.link.incident("line_overflow" if kind == "oversize" else "garbled_line", detail)

    def _handle(self, message: Any, uplinks: list[Uplink]) -> None:
        which = message.WhichOneof("payload_variant")
        if which == "packet":
            self._packet(message.packet, uplinks)
        elif which == "config_complete_id":
            if message.config_complete_id == self._config_id and self._config_id:
                self._config_done = True
        elif which == "rebooted" and message.rebooted:
            # The firmware's serial console sends this at every boot. While configuring it only means "ask
            # again" (module_rebooted() restarts the attempt); after that, the device restarted under us (told
            # once: its console text may have told already).
            if self._config_done and not self.configuring:
                self.link.incident("module_reboot", "the device says it rebooted")
            self._config_done = False
            self.module_rebooted()
        elif which == "my_info":
            self.module_info["node"] = f"!{message.my_info.my_node_num:08x}"
            self._known_in_db = 0
        elif which == "metadata":
            self.module_info["firmware"] = message.metadata.firmware_version or "unknown"
        elif which == "node_info":
            self._node_info(message.node_info)
        elif which == "queueStatus" and len(self._queue_status) < 64:
            self._queue_status[message.queueStatus.mesh_packet_id] = message.queueStatus.res

    def _node_info(self, info: Any) -> None:
        """A device from the radio's node database: seeds the last position and battery of a known device."""
        if info.num not in self._devices:
            return
        self._known_in_db += 1
        heard_us = info.last_heard * 1_000_000 if info.last_heard else 0
        if info.HasField("position"):
            fix = position_fix(info.position, heard_us)
            old = self._fixes.get(info.num)
            if fix is not None and (old is None or old.heard_us < fix.heard_us):
                self._fixes[info.num] = fix
        if info.HasField("device_metrics") and info.num not in self._battery:
            battery = battery_values(info.device_metrics)
            if battery:
                self._battery[info.num] = battery

    # -- packets --------------------------------------------------------------------------------------------
    def _packet(self, packet: Any, uplinks: list[Uplink]) -> None:
        if packet.WhichOneof("payload_variant") != "decoded":
            self.stats["undecryptable"] += 1
            return
        sender = getattr(packet, "from")  # a Python keyword, so not packet.from
        if packet.id:
            # The same packet twice (a frame repeated on the line, a second copy via another relay): one reading.
            seen = (sender, packet.id)
            if seen in self._recent:
                self.stats["duplicate"] += 1
                return
            self._recent[seen] = None
            if len(self._recent) > _RECENT_PACKETS:
                self._recent.popitem(last=False)
        port, payload = packet.decoded.portnum, packet.decoded.payload
        # rx_snr is a float32 from the air side: 0 means "not reported", and NaN or inf cannot go into a reading.
        snr = float(packet.rx_snr) if packet.rx_snr and math.isfinite(packet.rx_snr) else None
        heard = (packet.rx_rssi or None, snr, f"!{sender:08x}")
        if port == self.settings.frame_port:
            if payload:
                uplinks.append(Uplink(self.link.radio, bytes(payload), *heard, self._received_us))
            return
        device = self._devices.get(sender)
        if device is None:
            self._unknown(sender)
            return
        ports = self.pb.ports
        try:
            if port == ports.POSITION_APP:
                self._position(device, self.pb.mesh.Position.FromString(payload), heard, uplinks)
            elif port == ports.TELEMETRY_APP:
                self._telemetry(device, self.pb.telemetry.Telemetry.FromString(payload), heard, uplinks)
            elif port in (ports.TEXT_MESSAGE_APP, ports.ALERT_APP):
                text = payload.decode("utf-8", "replace")
                if port == ports.ALERT_APP or self._is_alert(text):
                    self._sos(device, text, heard, uplinks)
                else:
                    self.stats["ignored_text"] += 1
            else:
                self.stats["ignored_port"] += 1
        except (self.pb.DecodeError, ValueError):
            self.stats["bad_payload"] += 1

    def _unknown(self, sender: int) -> None:
        self.stats["unknown_device"] += 1
        if sender not in self._unknown_logged and len(self._unknown_logged) < _UNKNOWN_LOGGED_MAX:
            self._unknown_logged.add(sender)
            log.info("%s", Text(N_("radio {radio}: Meshtastic device {device} is not in meshtastic.devices; its "
                                   "packets are dropped"), radio=self.link.radio, device=f"!{sender:08x}"))

    def _gps(self, num: int) -> dict[str, float]:
        fix = self._fixes.get(num)
        if fix is None:
            return {}
        v = fix.values()
        return {"ch2_gps_0": v["lat_deg"], "ch2_gps_1": v["lon_deg"], "ch2_gps_2": v["alt_m"]}

    def _position(self, device: MeshtasticDevice, position: Any, heard: tuple, uplinks: list[Uplink]) -> None:
        fix = position_fix(position, self._received_us)
        if fix is None:
            self.stats["no_fix"] += 1
            return
        self._fixes[device.num] = fix
        battery = self._battery.get(device.num, {})
        if "battery_v" not in battery:
            self.stats["position_held"] += 1  # a heartbeat needs a voltage; the fix waits for the next one
            return
        self._emit(device, "heartbeat", {**battery, **self._gps(device.num)}, heard, uplinks)

    def _telemetry(self, device: MeshtasticDevice, telemetry: Any, heard: tuple, uplinks: list[Uplink]) -> None:
        which = telemetry.WhichOneof("variant")
        if which == "device_metrics":
            battery = battery_values(telemetry.device_metrics)
            if battery:
                self._battery[device.num] = battery
            if "battery_v" in battery:
                self._emit(device, "heartbeat", {**battery, **self._gps(device.num)}, heard, uplinks)
                return
        elif which == "environment_metrics" and device.environment:
            weather = environment_values(telemetry.environment_metrics)
            if weather:
                battery_v = self._battery.get(device.num, {}).get("battery_v")
                self._emit(device, "weather", weather | ({"battery_v": battery_v} if battery_v else {}), heard,
                           uplinks)
                return
        self.stats["ignored_telemetry"] += 1

    def _sos(self, device: MeshtasticDevice, text: str, heard: tuple, uplinks: list[Uplink]) -> None:
        fix = self._fixes.get(device.num)
        values = {"pressed": 1.0, **(fix.values() if fix is not None else {})}
        battery_v = self._battery.get(device.num, {}).get("battery_v")
        if battery_v is not None:
            values["battery_v"] = battery_v
        age = (Text(N_("position {seconds} s old"), seconds=f"{(self._received_us - fix.heard_us) / 1e6:.0f}")
               if fix is not None else Text(N_("no position")))
        log.warning("%s", Text(N_("radio {radio}: SOS from Meshtastic device {device} (node {node}), {position}: "
                                  "{text}"), radio=self.link.radio, device=device.device, node=device.node,
                               position=age, text=repr(text[:80])))
        self.stats["alerts"] += 1
        self._emit(device, "sos", values, heard, uplinks, fallback={"pressed": 1.0})

    def _emit(self, device: MeshtasticDevice, kind: str, values: dict[str, float], heard: tuple,
              uplinks: list[Uplink], fallback: dict[str, float] | None = None) -> None:
        """One denen node frame for ``device``: no MIC (module docstring, "Authenticity")."""
        try:
            body = kinds.encode_values(kind, values)
        except CodecError:  # LppError is a CodecError; packets_values keeps values in range, so this is rare
            if fallback is None:
                self.stats["unencodable"] += 1
                return
            body = kinds.encode_values(kind, fallback)
        node_id = int(device.node, 16)
        key = (self.link.radio, node_id)
        counter = self._counters.next(key, self._received_us)
        if counter is None:
            self.stats["counter_exhausted"] += 1
            return
        payload = nodeframe.build(node_id, counter, kinds.KIND_CODES[kind], body)
        uplinks.append(Uplink(self.link.radio, payload, *heard, self._received_us))


def probe(port: Any, radio: Any, timeout_s: float, say: Say) -> Finding:
    """Ask for the device's config download (it changes nothing on the device); see :mod:`drivers.probe`."""
    settings = getattr(radio, "meshtastic", None) or MeshtasticConfig()
    asked = SimpleNamespace(name=radio.name, port=radio.port, baudrate=radio.baudrate,
                            meshtastic=settings.model_copy(update={"config_timeout_s": timeout_s}))
    driver, link = ProbeLink.driver(Meshtastic, port, asked)
    try:
        driver.configure_once()
    except (ModuleError, ModuleTimeout):
        text = say(N_("{port}: no Meshtastic config download (is it a Meshtastic device with the serial API on?)"))
        return Finding(FAIL, text.format(port=radio.port), noise_hint(bytes(link.raw), radio.baudrate, say),
                       {"received": bytes(link.raw)[:64].hex()})
    info = driver.module_info
    summary = say(N_("{port}: Meshtastic device {node} answers, firmware {firmware}; configured devices in its "
                     "node database: {devices}")).format(port=radio.port, node=info.get("node", "?"),
                                                         firmware=info.get("firmware"),
                                                         devices=info.get("devices_in_radio_db"))
    return Finding(OK, summary, None, {"module": "Meshtastic", **info})


#: This driver in the registry (drivers/all.py registers it).
SPEC = DriverSpec(
    name="meshtastic", driver=Meshtastic, section="meshtastic", settings=MeshtasticConfig, probe=probe,
    twin="meshtastic", summary="Meshtastic device, serial API (protobuf stream)")
