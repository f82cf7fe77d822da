"""Simulated denen sensor nodes: they build real node frames (docs/protocols.md §9) with plausible readings.

A :class:`SimNode` knows its id, kind, optional key and frame counter, and produces the frames a field device of
that kind would send: SOS buttons (a press with a GPS fix in the hills west of Tokyo), wildlife traps (fired /
armed, daily heartbeats), river level gauges (a random walk that can be scripted to rise), tipping-bucket rain
gauges, tilt sensors on slopes and small weather stations. Every frame is recorded in :attr:`SimNode.sent` so a
test can compare what the agent stored with what was sent.

Nodes do not talk to radio modules themselves; :class:`drivers.sim.scenario.Scenario` carries their frames to a
simulated module (``inject_uplink``) and their downlinks back (:meth:`SimNode.receive_downlink`).

Values are rounded to the resolution of their LPP type before encoding, so ``sent[i].values`` is what a correct
decoder returns (up to float representation).
"""

from __future__ import annotations

import logging
import math
import random
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from drivers.codec import frame as node_frame
from drivers.codec import kinds as node_kinds
from drivers.errors import FrameError

log = logging.getLogger(__name__)

__all__ = ["DEFAULT_INTERVAL_S", "NODE_KINDS", "TIP_MM", "SentFrame", "SimNode", "plausibility_problems"]

#: Node kinds a SimNode can be (the sensor it carries).
NODE_KINDS = ("sos", "trap", "water_level", "rain", "tilt", "weather", "heartbeat")

#: Default interval between periodic frames, in seconds. SOS buttons and traps only send a daily heartbeat
#: unless something happens; environmental sensors report every 10 minutes.
DEFAULT_INTERVAL_S: Mapping[str, float] = {
    "sos": 86_400.0, "trap": 86_400.0, "water_level": 600.0, "rain": 600.0, "tilt": 600.0, "weather": 600.0,
    "heartbeat": 3_600.0,
}

#: Rain per bucket tip, in mm (a common tipping-bucket size).
TIP_MM = 0.2

_UINT32_MAX = 0xFFFF_FFFF
# Where the SOS buttons are: hills around Okutama / Hinohara, about 35.8 N 139.1 E.
_HOME_LAT, _HOME_LON, _HOME_ALT = 35.8, 139.1, 450.0


@dataclass
class SentFrame:
    """One frame a node put on the air.

    Attributes:
        node_id: the sending node.
        counter: the frame counter it carries.
        kind: kind name (``sos``, ``trap`` ... ``heartbeat``).
        values: the values encoded in the body, already rounded to their LPP resolution.
        payload: the complete frame bytes.
        t: wall-clock time it was built, in seconds since the Unix epoch.
        module: name of the module it was injected into (set by the scenario), or None.
        delivered: whether that module passed it to the host (its radio was listening), set by the scenario.
        rssi: signal strength it was heard with, in dBm (set by the scenario).
        snr: signal-to-noise ratio it was heard with, in dB (set by the scenario).
    """

    node_id: int
    counter: int
    kind: str
    values: dict[str, float]
    payload: bytes
    t: float
    module: str | None = None
    delivered: bool = False
    rssi: int | None = None
    snr: float | None = None


@dataclass
class _Ramp:
    """A value moving linearly from ``start`` to ``end`` between two clock times (seconds)."""

    start: float
    end: float
    t0: float
    t1: float

    def value(self, now: float) -> float:
        if now >= self.t1 or self.t1 <= self.t0:
            return self.end
        if now <= self.t0:
            return self.start
        return self.start + (self.end - self.start) * (now - self.t0) / (self.t1 - self.t0)


class SimNode:
    """A simulated sensor node.

    Args:
        node_id: uint32 node id.
        kind: one of :data:`NODE_KINDS`.
        key: the node's 16-byte AES key; frames carry a MIC when given.
        counter_start: counter of the first frame; each frame uses the next value (strictly increasing).
        interval_s: time between periodic frames, in seconds (scenario time); None takes
            :data:`DEFAULT_INTERVAL_S` for the kind.
        rssi: mean received signal strength at the gateway, in dBm.
        snr: mean signal-to-noise ratio at the gateway, in dB.
        rssi_jitter: standard deviation of the RSSI, in dB.
        snr_jitter: standard deviation of the SNR, in dB.
        rng: random source; seed it for reproducible values.
        clock: returns the current time in seconds (scenario time); drives ramps, rain accumulation and the
            weather's daily cycle. Defaults to ``time.monotonic``.
        battery_v: battery voltage at the start, in volts (drains slowly with every frame).
        receipt: whether SOS presses ask the gateway for a receipt (flag bit1).
        lat_deg: latitude of the node, in degrees (default: near 35.8 N).
        lon_deg: longitude of the node, in degrees (default: near 139.1 E).
        level_cm: starting river level above the gauge zero, in cm (water_level nodes).
        rain_mm_per_h: starting rain rate, in mm per hour (rain nodes).
    """

    def __init__(self, node_id: int, kind: str, *, key: bytes | None = None, counter_start: int = 1,
                 interval_s: float | None = None, rssi: float = -85.0, snr: float = 6.0, rssi_jitter: float = 3.0,
                 snr_jitter: float = 1.5, rng: random.Random | None = None,
                 clock: Callable[[], float] = time.monotonic, battery_v: float = 3.6, receipt: bool = True,
                 lat_deg: float | None = None, lon_deg: float | None = None, level_cm: float = 60.0,
                 rain_mm_per_h: float = 0.0) -> None:
        if isinstance(node_id, bool) or not isinstance(node_id, int) or not 0 <= node_id <= _UINT32_MAX:
            raise ValueError(f"node_id must be a uint32, got {node_id!r}")
        if kind not in NODE_KINDS:
            raise ValueError(f"kind must be one of {', '.join(NODE_KINDS)}, got {kind!r}")
        if key is not None and len(key) != node_frame.KEY_SIZE:
            raise ValueError(f"key must be {node_frame.KEY_SIZE} bytes, got {len(key)}")
        if not 0 <= counter_start <= _UINT32_MAX:
            raise ValueError(f"counter_start must be a uint32, got {counter_start}")
        interval = DEFAULT_INTERVAL_S[kind] if interval_s is None else interval_s
        if interval <= 0:
            raise ValueError(f"interval_s must be positive, got {interval}")
        self.node_id = node_id
        self.kind = kind
        self.key = key
        self.interval_s = float(interval)
        self.rssi = rssi
        self.snr = snr
        self.rssi_jitter = rssi_jitter
        self.snr_jitter = snr_jitter
        self.receipt = receipt
        self.rng = rng or random.Random(node_id)
        self.clock = clock
        self.sent: list[SentFrame] = []
        self.receipts: list[int] = []  # counters the gateway acknowledged with a receipt downlink
        self.downlinks: list[bytes] = []  # every downlink addressed to this node
        self._lock = threading.Lock()
        self._next_counter = counter_start
        self._battery_v = battery_v
        rng = self.rng
        self.lat_deg = lat_deg if lat_deg is not None else _HOME_LAT + rng.uniform(-0.05, 0.05)
        self.lon_deg = lon_deg if lon_deg is not None else _HOME_LON + rng.uniform(-0.05, 0.05)
        self.alt_m = _HOME_ALT + rng.uniform(-150, 250)
        # River gauge state.
        self._level_base = level_cm
        self._level = level_cm
        self._level_ramp: _Ramp | None = None
        # Rain gauge state.
        self.rain_mm_per_h = rain_mm_per_h
        self.tips = 0
        self._rain_last = clock()
        self._rain_carry = 0.0  # expected tips not yet "tipped"
        # Tilt sensor state (a slope sensor is never mounted exactly level).
        self._tilt_base = (round(rng.uniform(-2, 2), 2), round(rng.uniform(-2, 2), 2))
        self._tilt_ramp: tuple[_Ramp, _Ramp] | None = None
        # Weather station state.
        self._pressure = rng.uniform(1005, 1018)
        self._start_hour = rng.uniform(0, 24)
        self._clock0 = clock()
        self._trap_fired = False

    # -- state ---------------------------------------------------------------------------------------------
    @property
    def next_counter(self) -> int:
        """The counter the next frame will carry."""
        return self._next_counter

    @property
    def battery_v(self) -> float:
        return round(self._battery_v, 2)

    @property
    def level_cm(self) -> float:
        """The true river level now (before the gauge's noise), in cm."""
        now = self.clock()
        return self._level_ramp.value(now) if self._level_ramp else self._level

    def link_quality(self) -> tuple[int, float]:
        """RSSI (dBm, integer) and SNR (dB, one decimal) of one reception, with jitter."""
        rssi = int(round(min(-20.0, max(-140.0, self.rng.gauss(self.rssi, self.rssi_jitter)))))
        snr = round(min(15.0, max(-20.0, self.rng.gauss(self.snr, self.snr_jitter))), 1)
        return rssi, snr

    # -- scripted changes ----------------------------------------------------------------------------------
    def set_level(self, level_cm: float, *, over_s: float = 0.0) -> None:
        """Move the river to ``level_cm`` (cm), at once or linearly over ``over_s`` seconds of clock time."""
        now = self.clock()
        current = self.level_cm
        if over_s > 0:
            self._level_ramp = _Ramp(current, level_cm, now, now + over_s)
        else:
            self._level_ramp = None
        self._level = level_cm
        self._level_base = level_cm

    def set_rain(self, mm_per_h: float) -> None:
        """Set the rain rate, in mm per hour (rain that fell so far at the old rate is kept)."""
        self._accumulate_rain()
        self.rain_mm_per_h = max(0.0, mm_per_h)

    def set_tilt(self, x_deg: float, y_deg: float, *, over_s: float = 0.0) -> None:
        """Move the slope sensor to the given tilt (degrees), at once or over ``over_s`` seconds."""
        now = self.clock()
        cur_x, cur_y = self._tilt_now()
        self._tilt_ramp = (_Ramp(cur_x, x_deg, now, now + over_s), _Ramp(cur_y, y_deg, now, now + over_s))

    # -- frames --------------------------------------------------------------------------------------------
    def periodic(self) -> SentFrame:
        """The frame the node sends on its own schedule: a reading, or a heartbeat for SOS buttons and traps."""
        if self.kind in ("sos", "trap", "heartbeat"):
            return self.heartbeat()
        if self.kind == "water_level":
            return self.send("water_level", self._water_values())
        if self.kind == "rain":
            return self.send("rain", self._rain_values())
        if self.kind == "tilt":
            return self.send("tilt", self._tilt_values())
        return self.send("weather", self._weather_values())

    def heartbeat(self) -> SentFrame:
        """A heartbeat: battery voltage and percentage."""
        v = self._drain()
        pct = float(max(0, min(100, round((v - 3.0) / 0.6 * 100))))
        return self.send("heartbeat", {"battery_v": v, "battery_pct": pct})

    def press_sos(self, *, pressed: bool = True) -> SentFrame:
        """The SOS button is pressed (or the alarm cancelled): state, GPS fix and battery, receipt requested."""
        # A consumer GPS fix wanders by some tens of metres between presses.
        lat = round(self.lat_deg + self.rng.gauss(0, 0.0002), 4)
        lon = round(self.lon_deg + self.rng.gauss(0, 0.0002), 4)
        alt = round(self.alt_m + self.rng.gauss(0, 5), 2)
        values = {"pressed": 1.0 if pressed else 0.0, "lat_deg": lat, "lon_deg": lon, "alt_m": alt,
                  "battery_v": self._drain()}
        return self.send("sos", values, receipt=self.receipt and pressed)

    def fire_trap(self) -> SentFrame:
        """The trap's door falls."""
        self._trap_fired = True
        return self.send("trap", {"fired": 1.0, "battery_v": self._drain()})

    def arm_trap(self) -> SentFrame:
        """The trap was reset by a hunter."""
        self._trap_fired = False
        return self.send("trap", {"fired": 0.0, "battery_v": self._drain()})

    def send(self, kind: str, values: Mapping[str, float], *, receipt: bool = False) -> SentFrame:
        """Build, record and return one frame with the next counter.

        Args:
            kind: kind name for byte 9.
            values: the values to encode (keys as in :mod:`drivers.codec.kinds`).
            receipt: set flag bit1 (ask for a receipt).

        Raises:
            FrameError: the counter would pass 2**32 - 1 (a node must never reuse one under its key).
        """
        body = node_kinds.encode_values(kind, values)
        with self._lock:
            counter = self._next_counter
            if counter > _UINT32_MAX:
                raise FrameError("frame_bad_field", f"node {self.node_id:08X}: frame counter exhausted")
            payload = node_frame.build(self.node_id, counter, node_kinds.KIND_CODES[kind], body, key=self.key,
                                       receipt=receipt)
            self._next_counter = counter + 1
            sent = SentFrame(self.node_id, counter, kind, dict(values), payload, time.time())
            self.sent.append(sent)
        log.debug("node %08X: %s #%d %s", self.node_id, kind, counter, values)
        return sent

    def receive_downlink(self, payload: bytes) -> bool:
        """A frame heard from the gateway; receipts for this node are recorded in :attr:`receipts`.

        Returns:
            True when it was a valid downlink for this node (right id, downlink flag, MIC if we have a key).
        """
        try:
            parsed = node_frame.parse(payload)
        except FrameError:
            return False
        if parsed.node_id != self.node_id or not parsed.downlink:
            return False
        if self.key is not None and not (parsed.has_mic and node_frame.verify(parsed, self.key)):
            log.debug("node %08X: downlink with a bad or missing MIC ignored", self.node_id)
            return False
        self.downlinks.append(bytes(payload))
        if parsed.kind == node_frame.KIND_RECEIPT:
            self.receipts.append(parsed.counter)
        return True

    # -- value generators ------------------------------------------------------------------------------------
    def _drain(self) -> float:
        # A few hundred µV per transmission, plus ADC noise: years of frames on a lithium cell.
        self._battery_v = max(2.9, self._battery_v - 0.0002)
        return round(self._battery_v + self.rng.gauss(0, 0.004), 2)

    def _water_values(self) -> dict[str, float]:
        now = self.clock()
        if self._level_ramp is not None:
            level = self._level_ramp.value(now)
            if now >= self._level_ramp.t1:
                self._level, self._level_ramp = self._level_ramp.end, None
        else:
            # Random walk with a pull back to the base level: a river does not drift away by itself.
            self._level += self.rng.gauss(0, 0.6) + 0.1 * (self._level_base - self._level)
            level = self._level
        measured = max(0.0, level + self.rng.gauss(0, 0.3))  # gauge noise
        return {"level_cm": round(measured, 1), "battery_v": self._drain()}

    def _accumulate_rain(self) -> None:
        now = self.clock()
        dt = max(0.0, now - self._rain_last)
        self._rain_last = now
        self._rain_carry += self.rain_mm_per_h * dt / 3600.0 / TIP_MM

    def _rain_values(self) -> dict[str, float]:
        before = self.tips
        self._accumulate_rain()
        # The bucket tips once per TIP_MM; what has not filled a bucket yet stays for the next frame.
        new = int(self._rain_carry)
        self._rain_carry -= new
        self.tips += new
        return {"rain_mm": round((self.tips - before) * TIP_MM, 2), "tips": float(self.tips),
                "battery_v": self._drain()}

    def _tilt_now(self) -> tuple[float, float]:
        if self._tilt_ramp is None:
            return self._tilt_base
        now = self.clock()
        return self._tilt_ramp[0].value(now), self._tilt_ramp[1].value(now)

    def _tilt_values(self) -> dict[str, float]:
        x, y = self._tilt_now()
        return {"tilt_x_deg": round(x + self.rng.gauss(0, 0.03), 2),
                "tilt_y_deg": round(y + self.rng.gauss(0, 0.03), 2), "battery_v": self._drain()}

    def _weather_values(self) -> dict[str, float]:
        hour = (self._start_hour + (self.clock() - self._clock0) / 3600.0) % 24
        # Warmest mid-afternoon, coldest before dawn; humid when cool.
        temp = 14.0 + 7.0 * math.sin(2 * math.pi * (hour - 9.0) / 24.0) + self.rng.gauss(0, 0.3)
        humidity = min(100.0, max(20.0, 78.0 - 2.5 * (temp - 14.0) + self.rng.gauss(0, 2.0)))
        self._pressure = min(1040.0, max(960.0, self._pressure + self.rng.gauss(0, 0.15)))
        return {"temperature_c": round(temp, 1), "humidity_pct": round(humidity * 2) / 2,
                "pressure_hpa": round(self._pressure, 1), "battery_v": self._drain()}

    def __repr__(self) -> str:
        return f"SimNode({self.node_id:08X}, {self.kind!r}, next_counter={self._next_counter})"  # never the key


def plausibility_problems(kind: str, values: Mapping[str, float]) -> list[str]:
    """Values outside physical sanity limits, as readable strings (empty when all are plausible).

    Args:
        kind: kind name, for the messages.
        values: values by key (units as the key names).
    """
    limits: dict[str, tuple[float, float]] = {
        "battery_v": (2.5, 4.3), "battery_pct": (0, 100), "lat_deg": (20.0, 46.0), "lon_deg": (122.0, 154.0),
        "alt_m": (-10, 3800), "pressed": (0, 1), "fired": (0, 1), "level_cm": (0, 2000), "rain_mm": (0, 200),
        "tips": (0, _UINT32_MAX), "tilt_x_deg": (-90, 90), "tilt_y_deg": (-90, 90), "temperature_c": (-30, 45),
        "humidity_pct": (0, 100), "pressure_hpa": (900, 1100),
    }
    problems = []
    for key, value in values.items():
        lo, hi = limits.get(key, (-math.inf, math.inf))
        if not lo <= value <= hi:
            problems.append(f"{kind}.{key}={value} outside {lo}..{hi}")
    return problems

