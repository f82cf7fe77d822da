"""LoRa link margin: how far a frame was above what the radio can still decode, and its rating.

* **SNR margin** = SNR − the LoRa demodulation floor of the spreading factor: SF7 −7.5 dB, SF8 −10, SF9 −12.5,
  SF10 −15, SF11 −17.5, SF12 −20 (Semtech SX126x/SX127x datasheets).
* **RSSI margin** = RSSI − the receiver sensitivity, −174 dBm/Hz + 10·log10(bandwidth in Hz) + 6 dB noise figure +
  the SNR floor; at 125 kHz: SF7 −124.5 dBm, SF10 −132 dBm, SF12 −137 dBm.

The margin is the smaller of the two that are known; :data:`RATINGS` turns it into a word. ``denen monitor``
(agent/tools/monitor.py) shows them and says why the rating lines are where they are.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

__all__ = [
    "NOISE_FIGURE_DB",
    "POOR",
    "RATINGS",
    "RSSI_NEAR_LIMIT_DB",
    "SNR_FLOOR_DB",
    "LinkMargin",
    "link_margin",
    "rate",
    "sensitivity_dbm",
]

#: LoRa demodulation floor (lowest SNR still decoded), in dB, by spreading factor.
SNR_FLOOR_DB: dict[int, float] = {7: -7.5, 8: -10.0, 9: -12.5, 10: -15.0, 11: -17.5, 12: -20.0}
#: Receiver noise figure assumed for the sensitivity, in dB (SX126x/SX127x with a plain front end).
NOISE_FIGURE_DB = 6.0
#: Thermal noise density, dBm/Hz.
_THERMAL_DBM_HZ = -174.0
#: Rating by link margin: the first whose lower bound (dB) the margin reaches.
RATINGS: tuple[tuple[str, float], ...] = (("excellent", 10.0), ("good", 5.0), ("marginal", 0.0))
POOR = "poor"
#: RSSI closer than this to the sensitivity is flagged, in dB.
RSSI_NEAR_LIMIT_DB = 6.0


def sensitivity_dbm(spreading_factor: int, bandwidth_khz: float = 125.0) -> float:
    """Receiver sensitivity in dBm: thermal noise in the bandwidth, plus noise figure, plus the SNR floor.

    Args:
        spreading_factor: 7..12.
        bandwidth_khz: LoRa bandwidth in kHz.

    Raises:
        ValueError: an SF outside 7..12 or a bandwidth that is not positive.
    """
    if spreading_factor not in SNR_FLOOR_DB:
        raise ValueError(f"spreading factor must be 7..12, got {spreading_factor}")
    if bandwidth_khz <= 0:
        raise ValueError(f"bandwidth must be positive, got {bandwidth_khz} kHz")
    noise = _THERMAL_DBM_HZ + 10 * math.log10(bandwidth_khz * 1000)
    return noise + NOISE_FIGURE_DB + SNR_FLOOR_DB[spreading_factor]


@dataclass(frozen=True)
class LinkMargin:
    """How well one frame was heard.

    Attributes:
        margin_db: the smaller of the SNR and RSSI margins that are known, in dB; None with neither.
        snr_margin_db: SNR minus the demodulation floor, in dB.
        rssi_margin_db: RSSI minus the sensitivity, in dB.
        rating: ``excellent``, ``good``, ``marginal``, ``poor``, or ``unknown`` (no RSSI or SNR).
        rssi_near_limit: RSSI within :data:`RSSI_NEAR_LIMIT_DB` of the sensitivity.
    """

    margin_db: float | None
    snr_margin_db: float | None
    rssi_margin_db: float | None
    rating: str
    rssi_near_limit: bool


def rate(margin_db: float | None) -> str:
    """The rating of a link margin in dB (``unknown`` for None)."""
    if margin_db is None:
        return "unknown"
    for name, low in RATINGS:
        if margin_db >= low:
            return name
    return POOR


def link_margin(rssi_dbm: float | None, snr_db: float | None, spreading_factor: int,
                bandwidth_khz: float = 125.0) -> LinkMargin:
    """Link margin and rating of a frame heard with ``rssi_dbm`` and ``snr_db`` at this SF and bandwidth."""
    snr_margin = None if snr_db is None else snr_db - SNR_FLOOR_DB[spreading_factor]
    rssi_margin = None if rssi_dbm is None else rssi_dbm - sensitivity_dbm(spreading_factor, bandwidth_khz)
    known = [m for m in (snr_margin, rssi_margin) if m is not None]
    margin = min(known) if known else None
    near = rssi_margin is not None and rssi_margin < RSSI_NEAR_LIMIT_DB
    return LinkMargin(
        None if margin is None else round(margin, 1),
        None if snr_margin is None else round(snr_margin, 1),
        None if rssi_margin is None else round(rssi_margin, 1),
        rate(margin),
        near,
    )
