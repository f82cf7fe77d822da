"""Plain data passed between drivers and the agent."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Uplink:
    """One radio frame as the module delivered it, before any decoding.

    Immutable: it is made on a radio thread and read on the core thread.

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


# One Uplink is made per received frame, on the radio thread, which shares the interpreter with the core. The
# __init__ that dataclass writes for a frozen class calls object.__setattr__ once per field (about 0.5 µs for
# six); setting the slots through their descriptors does the same in half the time. Same signature, same
# result: the instance is as frozen as before (only __init__ sets fields), and eq, hash and repr are dataclass's.
_SET_RADIO = Uplink.radio.__set__  # type: ignore[attr-defined]
_SET_PAYLOAD = Uplink.payload.__set__  # type: ignore[attr-defined]
_SET_RSSI = Uplink.rssi.__set__  # type: ignore[attr-defined]
_SET_SNR = Uplink.snr.__set__  # type: ignore[attr-defined]
_SET_SRC = Uplink.src.__set__  # type: ignore[attr-defined]
_SET_RECEIVED_US = Uplink.received_us.__set__  # type: ignore[attr-defined]


def _uplink_init(self: Uplink, radio: str, payload: bytes, rssi: int | None, snr: float | None, src: str | None,
                 received_us: int) -> None:
    _SET_RADIO(self, radio)
    _SET_PAYLOAD(self, payload)
    _SET_RSSI(self, rssi)
    _SET_SNR(self, snr)
    _SET_SRC(self, src)
    _SET_RECEIVED_US(self, received_us)


_uplink_init.__qualname__ = "Uplink.__init__"
_uplink_init.__doc__ = Uplink.__init__.__doc__
Uplink.__init__ = _uplink_init  # type: ignore[method-assign]
