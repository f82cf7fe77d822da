"""LoRa time on air and Japan's 920 MHz transmission rules (ARIB STD-T108), for everything the gateway sends.

Public API::

    time_on_air_ms(payload_len, sf, bw_khz, cr=0, preamble=8, *, crc=True, explicit_header=True) -> float
    channel_rules(frequency_hz, *, bw_khz=125.0, carrier_sense=True) -> ChannelRules

The airtime formula is LoRaMac-node's (docs/protocols.md §8). The rules are docs/protocols.md §6; where that text leaves
two readings open, :func:`channel_rules` applies the stricter value of each limit, so that a gateway following
them is inside the rules under either reading. Each such choice is marked [U] below.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Final

__all__ = [
    "JP_LORA_MAX_HZ",
    "JP_LORA_MIN_HZ",
    "SHORT_LBT_GROUP_MIN_HZ",
    "ChannelRules",
    "channel_rules",
    "time_on_air_ms",
]

#: Lowest and highest LoRa channel centre in Japan's 920 MHz band (unit channels 24..38; docs/protocols.md §6).
JP_LORA_MIN_HZ: Final = 920_600_000
JP_LORA_MAX_HZ: Final = 923_400_000
#: Lowest centre of the 922.4–923.4 MHz group (ch33 and up), where the short-LBT regime and its hourly budget
#: may apply.
SHORT_LBT_GROUP_MIN_HZ: Final = 922_400_000
#: Upper edge of ch32 (922.2 MHz + 100 kHz): a signal reaching above it occupies the 922.4 MHz group.
_LONG_LBT_GROUP_TOP_HZ: Final = 922_300_000

# Nominal narrow bandwidths (as RUI3 prints them) -> the exact SX126x bandwidth in Hz, used for airtime.
_EXACT_BW_HZ: Final[dict[float, float]] = {
    125.0: 125_000.0, 250.0: 250_000.0, 500.0: 500_000.0, 7.8: 7_812.5, 10.4: 10_416.7, 15.63: 15_625.0,
    20.83: 20_833.3, 31.25: 31_250.0, 41.67: 41_666.7, 62.5: 62_500.0,
}

# -- the limits of docs/protocols.md §6, in seconds ----------------------------------------------------------------
_LBT_LONG_S: Final = 0.005  # carrier sense >= 5 ms
_MAX_TX_LONG_S: Final = 4.0  # one transmission <= 4 s
_PAUSE_LONG_S: Final = 0.050  # pause after a transmission >= 50 ms
_MAX_TX_SHORT_S: Final = 0.400  # short-LBT regime: one transmission <= 400 ms
_PER_HOUR_SHORT_S: Final = 360.0  # short-LBT regime: <= 360 s of transmission per hour
_MAX_TX_NO_LBT_S: Final = 0.100  # no carrier sense: <= 100 ms per transmission [U]
_PER_HOUR_NO_LBT_S: Final = 3.6  # no carrier sense: <= 3.6 s per hour [U]


def time_on_air_ms(payload_len: int, sf: int, bw_khz: float, cr: int = 0, preamble: int = 8, *,
                   crc: bool = True, explicit_header: bool = True) -> float:
    """LoRa time on air of one packet, as LoRaMac-node ``sx126x/radio.c`` computes it.

    This is ``RadioGetLoRaTimeOnAirNumerator`` divided by the bandwidth, without its final rounding up to whole
    milliseconds, so that it matches the docs/protocols.md §8 table. Low data rate optimisation is switched on when a
    symbol lasts 16.38 ms or more, which is exactly the driver's rule (BW125 at SF11/12, BW250 at SF12) and
    extends it to the narrow bandwidths.

    Args:
        payload_len: PHY payload length in bytes (0–255).
        sf: spreading factor, 5–12.
        bw_khz: bandwidth in kHz (125, 250, 500, or a narrow one such as 62.5 or 7.8).
        cr: coding rate as RUI3 numbers it, 0–3 for 4/5…4/8 (not LoRaMac-node's 1–4).
        preamble: preamble length in symbols (raised to 12 at SF5/6, as the radio does).
        crc: whether the payload CRC is on (RUI3 P2P: on).
        explicit_header: whether the LoRa header is sent (RUI3 P2P: yes).

    Returns:
        The time on air in milliseconds.

    Raises:
        ValueError: a parameter is out of range.
    """
    if not 5 <= sf <= 12:
        raise ValueError(f"sf must be 5..12, got {sf}")
    if not 0 <= cr <= 3:
        raise ValueError(f"cr must be the RUI3 code 0..3 (4/5..4/8), got {cr}")
    if not 0 <= payload_len <= 255:
        raise ValueError(f"payload_len must be 0..255, got {payload_len}")
    if bw_khz <= 0:
        raise ValueError(f"bw_khz must be positive, got {bw_khz}")
    if preamble < 0:
        raise ValueError(f"preamble must be >= 0 symbols, got {preamble}")
    bw_hz = bw_khz * 1000.0
    # Nominal narrow bandwidths (7.8, 10.4 ...) stand for 7.8125, 10.4167 ... kHz.
    for nominal, exact_hz in _EXACT_BW_HZ.items():
        if math.isclose(bw_khz, nominal, rel_tol=1e-3):
            bw_hz = exact_hz
    cr_denom = cr + 5  # LoRaMac-node: coderate (1..4) + 4
    if sf in (5, 6) and preamble < 12:
        preamble = 12
    ldro = (2**sf) / bw_hz >= 0.01638
    numerator = payload_len * 8 + (16 if crc else 0) - 4 * sf + (20 if explicit_header else 0)
    if sf <= 6:
        denominator = 4 * sf
    else:
        numerator += 8
        denominator = 4 * (sf - 2) if ldro else 4 * sf
    numerator = max(numerator, 0)
    symbols = -(-numerator // denominator) * cr_denom + preamble + 12
    if sf <= 6:
        symbols += 2
    toa_numerator = (4 * symbols + 1) * (1 << (sf - 2))
    return toa_numerator / bw_hz * 1000.0


@dataclass(frozen=True, slots=True)
class ChannelRules:
    """The limits one channel puts on each of the gateway's transmissions.

    Attributes:
        frequency_hz: the channel's centre frequency, in Hz.
        regime: ``lbt`` (920.6–922.2 MHz), ``lbt_strictest`` (922.4–923.4 MHz, the stricter value of each limit
            of its two regimes), or ``no_lbt`` (no carrier sense is assumed).
        lbt_min_s: carrier sense the radio must do before each transmission, in seconds; None when no carrier
            sense is assumed. The radio module does it, not this code (docs/protocols.md §6 [U]).
        max_tx_s: longest single transmission, in seconds.
        min_pause_s: shortest pause after the end of a transmission before the next may start, in seconds.
        max_per_hour_s: most transmission time in any sliding hour on this channel, in seconds; None when the
            channel has no hourly limit.
    """

    frequency_hz: int
    regime: str
    lbt_min_s: float | None
    max_tx_s: float
    min_pause_s: float
    max_per_hour_s: float | None

    def describe(self) -> str:
        """One line for logs and ``denen doctor``, e.g. ``922.4 MHz: LBT >= 5 ms, TX <= 400 ms, ...``."""
        parts = [f"{self.frequency_hz / 1e6:.1f} MHz ({self.regime}):"]
        parts.append(f"LBT >= {self.lbt_min_s * 1000:g} ms," if self.lbt_min_s is not None else "no LBT,")
        parts.append(f"TX <= {self.max_tx_s * 1000:g} ms, pause >= {self.min_pause_s * 1000:g} ms")
        if self.max_per_hour_s is not None:
            parts[-1] += ","
            parts.append(f"<= {self.max_per_hour_s:g} s TX per hour")
        return " ".join(parts)


def channel_rules(frequency_hz: int, *, bw_khz: float = 125.0, carrier_sense: bool = True) -> ChannelRules:
    """The ARIB STD-T108 limits (docs/protocols.md §6) for a 20 mW LoRa transmission on one channel.

    * 920.6–922.2 MHz (ch24–32): LBT >= 5 ms, TX <= 4 s, pause >= 50 ms, no hourly limit.
    * 922.4–923.4 MHz (ch33 and up): the same, *or* LBT >= 128 µs with TX <= 400 ms, pause >= 2 ms and at most
      360 s of TX per hour. Which regime a gateway falls under depends on the carrier sense its module really
      does, which this code cannot know (RUI3 ``AT+PSEND`` does only the optional CAD [V]; compliance rests on
      the module's certification [U]). The conservative reading is taken: the stricter value of every limit,
      i.e. LBT >= 5 ms, TX <= 400 ms, pause >= 50 ms, and <= 360 s of TX per hour [U: assumed reading].
      A signal wider than one unit channel that reaches above 922.3 MHz (the top of ch32) is in this group too.
    * Notice H31-123 eases the rules for answers sent within about 2 ms of a request; the gateway never answers
      that fast (receipts wait for the broker), so that easing is not used.
    * ``carrier_sense=False``: the no-LBT limits, TX <= 100 ms and <= 3.6 s per hour [U: a user summary, not the
      standard's text], with the 50 ms pause kept (no source gives a pause for this regime, so the long-LBT pause
      is assumed).

    Args:
        frequency_hz: channel centre frequency, in Hz; must be a LoRa channel of the Japanese band, 920.6–923.4
            MHz.
        bw_khz: LoRa bandwidth, in kHz: decides which unit channels the signal occupies.
        carrier_sense: whether the radio module listens before it talks (LBT); see above.

    Returns:
        The limits that apply.

    Raises:
        ValueError: the frequency is outside 920.6–923.4 MHz, or the bandwidth is not positive.
    """
    if not JP_LORA_MIN_HZ <= frequency_hz <= JP_LORA_MAX_HZ:
        raise ValueError(
            f"{frequency_hz} Hz is outside Japan's 920 MHz LoRa channels ({JP_LORA_MIN_HZ / 1e6:.1f}–"
            f"{JP_LORA_MAX_HZ / 1e6:.1f} MHz, ARIB STD-T108); the gateway will not transmit there"
        )
    if bw_khz <= 0:
        raise ValueError(f"bw_khz must be positive, got {bw_khz}")
    top_hz = frequency_hz + bw_khz * 500.0  # centre + half the bandwidth
    short_group = frequency_hz >= SHORT_LBT_GROUP_MIN_HZ or top_hz > _LONG_LBT_GROUP_TOP_HZ
    if not carrier_sense:
        return ChannelRules(frequency_hz, "no_lbt", None, _MAX_TX_NO_LBT_S, _PAUSE_LONG_S, _PER_HOUR_NO_LBT_S)
    if short_group:
        return ChannelRules(frequency_hz, "lbt_strictest", _LBT_LONG_S, _MAX_TX_SHORT_S, _PAUSE_LONG_S,
                            _PER_HOUR_SHORT_S)
    return ChannelRules(frequency_hz, "lbt", _LBT_LONG_S, _MAX_TX_LONG_S, _PAUSE_LONG_S, None)
