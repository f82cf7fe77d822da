"""What a Meshtastic packet from a known device says, as denen values (the units of drivers.codec.kinds).

Pure functions over decoded protobuf messages (``meshtastic.protobuf``), no I/O, so the driver, its tests and
the fuzz target share them. A value that a protobuf carries but an LPP record cannot (NaN, out of its range) is
left out here rather than failing the whole reading later.

==============  ==========================================  =================================================
Meshtastic      field                                       denen value
==============  ==========================================  =================================================
Position        latitude_i, longitude_i (1e-7 °)            lat_deg, lon_deg (0/0 = no fix: ignored)
                altitude (m, optional)                      alt_m
DeviceMetrics   voltage (V), battery_level (%; 101 = USB)   battery_v, battery_pct (101 left out)
EnvironmentM.   temperature (°C), relative_humidity (%),    temperature_c, humidity_pct, pressure_hpa
                barometric_pressure (hPa)
text message    BEL (0x07) anywhere, or an alert text       an alert
                (NFKC, case-insensitive: ＳＯＳ, sos)
==============  ==========================================  =================================================
"""

from __future__ import annotations

import math
import re
import unicodedata
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

__all__ = ["BELL", "Fix", "alert_matcher", "battery_values", "environment_values", "position_fix"]

BELL = "\a"

# The LPP range of each value (drivers/codec/lpp.py), so that one wild field is dropped, not the reading.
_RANGES = {
    "lat_deg": (-90.0, 90.0), "lon_deg": (-180.0, 180.0), "alt_m": (-83_886.08, 83_886.07),
    "battery_v": (0.0, 655.35), "battery_pct": (0, 100), "temperature_c": (-3276.8, 3276.7),
    "humidity_pct": (0.0, 127.5), "pressure_hpa": (0.0, 6553.5),
}


@dataclass(frozen=True, slots=True)
class Fix:
    """A device's position.

    Attributes:
        lat_deg: latitude in degrees.
        lon_deg: longitude in degrees.
        alt_m: altitude in metres above mean sea level, None when the device did not send one.
        heard_us: when it was heard, in microseconds since the Unix epoch.
    """

    lat_deg: float
    lon_deg: float
    alt_m: float | None
    heard_us: int

    def values(self) -> dict[str, float]:
        """``lat_deg``, ``lon_deg``, ``alt_m`` (0.0 when unknown: the sos kind carries the three together)."""
        return {"lat_deg": self.lat_deg, "lon_deg": self.lon_deg, "alt_m": self.alt_m if self.alt_m is not None else 0.0}


def _fits(key: str, value: object) -> bool:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return False
    low, high = _RANGES[key]
    return low <= value <= high


def _has(message: Any, name: str) -> bool:
    try:
        return bool(message.HasField(name))
    except ValueError:  # a field without presence: nonzero means set
        return bool(getattr(message, name, 0))


def position_fix(position: Any, heard_us: int) -> Fix | None:
    """A :class:`Fix` from a ``mesh_pb2.Position``, or None when it holds no usable fix."""
    if not (_has(position, "latitude_i") and _has(position, "longitude_i")):
        return None
    lat, lon = position.latitude_i / 1e7, position.longitude_i / 1e7
    if (lat == 0.0 and lon == 0.0) or not (_fits("lat_deg", lat) and _fits("lon_deg", lon)):
        return None  # firmware sends 0/0 before its first fix
    alt: float | None = float(position.altitude) if _has(position, "altitude") else None
    if alt is not None and not _fits("alt_m", alt):
        alt = None
    return Fix(round(lat, 7), round(lon, 7), alt, heard_us)


def battery_values(metrics: Any) -> dict[str, float]:
    """``battery_v`` and ``battery_pct`` from a ``telemetry_pb2.DeviceMetrics`` (what it carries of them)."""
    out: dict[str, float] = {}
    if _has(metrics, "voltage") and metrics.voltage > 0 and _fits("battery_v", metrics.voltage):
        out["battery_v"] = round(float(metrics.voltage), 2)
    if _has(metrics, "battery_level") and _fits("battery_pct", metrics.battery_level):
        out["battery_pct"] = float(metrics.battery_level)  # 101 means "on external power": not a percentage
    return out


def environment_values(metrics: Any) -> dict[str, float]:
    """``temperature_c``, ``humidity_pct``, ``pressure_hpa`` from a ``telemetry_pb2.EnvironmentMetrics``."""
    out: dict[str, float] = {}
    for field, key, ndigits in (("temperature", "temperature_c", 1), ("relative_humidity", "humidity_pct", 1),
                                ("barometric_pressure", "pressure_hpa", 1)):
        if _has(metrics, field):
            value = float(getattr(metrics, field))
            if _fits(key, value):
                out[key] = round(value, ndigits)
    return out


def _fold(text: str) -> str:
    return unicodedata.normalize("NFKC", text).casefold()


def _word(word: str) -> str:
    # Latin words need a boundary ("SOS" is not in "isosceles"); Japanese is written without spaces, so "助けて"
    # must match inside "助けてください".
    head = r"(?<![a-z0-9])" if word[0].isascii() and word[0].isalnum() else ""
    tail = r"(?![a-z0-9])" if word[-1].isascii() and word[-1].isalnum() else ""
    return head + re.escape(word) + tail


def alert_matcher(alert_texts: Iterable[str]) -> Any:
    """A test ``is_alert(text) -> bool``: the bell character anywhere, or one of ``alert_texts`` as a word.

    Matching folds width and case (NFKC, casefold), so ``SOS``, ``sos`` and full-width ``ＳＯＳ`` all match an
    alert text ``SOS``; a Latin text must stand as a word (``SOS`` is not in ``isosceles``, but is in ``SOS!``),
    a Japanese one may stand anywhere (``助けて`` in ``助けてください``).
    """
    words = [_fold(t).strip() for t in alert_texts if _fold(t).strip()]
    pattern = re.compile("|".join(map(_word, words))) if words else None

    def is_alert(text: str) -> bool:
        if BELL in text:
            return True
        return pattern is not None and pattern.search(_fold(text)) is not None

    return is_alert
