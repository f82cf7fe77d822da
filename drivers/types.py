"""Plain data passed between drivers and the agent."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Uplink:
    """One radio frame as the module delivered it, before any decoding.

    Attributes:
        radio: configured name of the radio module that heard it (``lora0``).
        payload: the frame bytes (hex already decoded for RAK3172 lines).
        rssi: received signal strength in dBm, or None when the module did not report it.
        snr: signal-to-noise ratio in dB, or None when the module did not report it.
        src: module-level source address (ES920LR SRC id as 4 hex digits), None when the module has none.
        received_us: wall-clock time the line was read from the port, in microseconds since the Unix epoch.
    """

    radio: str
    payload: bytes
    rssi: int | None
    snr: float | None
    src: str | None
    received_us: int
