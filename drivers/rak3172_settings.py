"""The ``p2p:`` settings of a radio with driver ``rak3172``: what the installer writes, and its checks.

The model is the section's schema and validation (pydantic only, no serial I/O); :mod:`drivers.rak3172` applies
it to the module (docs/protocols.md §1), and the registry entry there names it as the driver's settings.
"""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import Field, field_validator

from drivers.airtime import JP_LORA_MAX_HZ, JP_LORA_MIN_HZ
from drivers.settings import N_, Section, Text, problem

__all__ = ["P2pConfig"]

_JP_STEP_HZ = 200_000  # the channel grid of Japan's 920 MHz band (docs/protocols.md §6)


class P2pConfig(Section):
    """RAK3172 (RUI3) LoRa P2P radio settings; they must match the nodes' settings exactly."""

    #: What the radio's ``p2p:`` key holds, for the config reference.
    section_doc: ClassVar[str] = "LoRa settings"

    frequency_hz: int = Field(920_600_000, description=N_("Centre frequency in Hz: Japan's 920 MHz band for LoRa, "
                              "920600000..923400000 in 200 kHz steps (ARIB STD-T108 channels 24..38)."))
    spreading_factor: int = Field(10, ge=7, le=12, description=N_("LoRa spreading factor 7..12; higher reaches further "
                                  "but each frame takes longer on air (SF10: ~0.37 s for 20 bytes; SF12: ~1.3 s)."))
    bandwidth_khz: Literal[125, 250, 500] = Field(default=125, description=N_("LoRa bandwidth in kHz: 125, 250 or 500."))
    coding_rate: int = Field(default=0, ge=0, le=3, description=N_("LoRa coding rate: 0..3 meaning 4/5..4/8."))
    preamble: int = Field(default=8, ge=5, le=65535, description=N_("Preamble length in symbols (5..65535)."))
    tx_power_dbm: int = Field(13, ge=5, le=13, description=N_("Transmit power in dBm, 5..13: 13 dBm (20 mW) is the "
                              "limit for specified low-power radio stations in Japan's 920 MHz band."))

    @field_validator("frequency_hz")
    @classmethod
    def _japan_band(cls, value: int) -> int:
        hint = N_("ARIB STD-T108 allows LoRa at 920600000..923400000 Hz in 200 kHz steps "
                  "(920600000, 920800000, ... 923400000)")
        if not JP_LORA_MIN_HZ <= value <= JP_LORA_MAX_HZ:
            mhz = f"{value / 1e6:g} MHz" if abs(value) < 10**15 else Text(N_("not a radio frequency"))
            raise problem(N_("{hz} Hz ({mhz}) is outside Japan's 920 MHz LoRa band (920.6..923.4 MHz)"), hint,
                          hz=value, mhz=mhz)
        offset = (value - JP_LORA_MIN_HZ) % _JP_STEP_HZ
        if offset:
            below = value - offset
            above = below + _JP_STEP_HZ
            nearest = below if offset < _JP_STEP_HZ // 2 or above > JP_LORA_MAX_HZ else above
            raise problem(N_("{hz} Hz is not on the 200 kHz channel grid; nearest channel: {nearest} Hz"), hint,
                          hz=value, nearest=nearest)
        return value
