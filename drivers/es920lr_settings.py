"""The ``es920:`` settings of a radio with driver ``es920lr``: what the installer writes, and its checks.

The model is the section's schema and validation (pydantic only, no serial I/O); :mod:`drivers.es920lr` applies
it to the module (docs/protocols.md §2), and the registry entry there names it as the driver's settings.
"""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import Field, ValidationInfo, field_validator, model_validator

from drivers.settings import N_, Problem, Section, problem

__all__ = ["BW_CODES", "Es920Config"]

#: ``bw`` command values by bandwidth in kHz.
BW_CODES = {62.5: 3, 125.0: 4, 250.0: 5, 500.0: 6}

_HEX_DIGITS = frozenset("0123456789abcdefABCDEF")
# Highest channel number at each bandwidth in kHz: wider bandwidths bundle several 200 kHz channels.
_MAX_CHANNEL = {62.5: 15, 125: 15, 250: 7, 500: 5}


class Es920Config(Section):
    """EASEL ES920LR (Private LoRa) module settings; bandwidth, SF, channel and PAN id must match the nodes."""

    #: What the radio's ``es920:`` key holds, for the config reference.
    section_doc: ClassVar[str] = "Module settings"
    #: Keys written as hex digits, which YAML would read as numbers when unquoted (the loader keeps their text).
    hex_text_keys: ClassVar[tuple[str, ...]] = ("pan_id", "own_id")

    bandwidth_khz: Literal[62.5, 125, 250, 500] = Field(125, description=N_("LoRa bandwidth in kHz: 62.5, 125, 250 or "
                                                        "500."))
    spreading_factor: int = Field(default=10, ge=7, le=12, description=N_("LoRa spreading factor 7..12."))
    channel: int = Field(1, ge=1, le=15, description=N_("Channel number: 1..15 at 62.5/125 kHz, 1..7 at 250 kHz, 1..5 "
                         "at 500 kHz (channel 1 is 920.6 MHz, 200 kHz steps)."))
    pan_id: str = Field("0001", description=N_("PAN (network) id, 4 hex digits 0001..FFFE; all nodes of this network use "
                        "the same one. Write it in quotes."))
    own_id: str = Field("0000", description=N_("This module's own id, 4 hex digits 0000..FFFE. Write it in quotes."))
    format: Literal["ascii", "binary"] = Field("binary", description=N_("Module output format: binary (length-prefixed "
                                               "frames, safe for any payload) or ascii (CR LF terminated lines)."))
    payload_encoding: Literal["hex", "raw"] = Field("hex", description=N_("How nodes put the denen frame into the LoRa "
                                                    "payload: hex (as hex text, safe everywhere) or raw (bytes). With "
                                                    "format ascii, raw breaks on payloads containing CR LF."))
    power_dbm: int = Field(default=13, ge=-4, le=13, description=N_("Transmit power in dBm, -4..13 (13 dBm = 20 mW)."))
    node: Literal["coordinator", "end_device"] = Field("coordinator", description=N_("Module role: coordinator (the "
                                                      "gateway) or end_device."))

    def setting_warnings(self) -> list[Problem]:
        """Valid settings that are probably a mistake: raw payloads in ascii format (see drivers/es920lr.py)."""
        if self.format == "ascii" and self.payload_encoding == "raw":
            return [Problem.of(("payload_encoding",), N_("raw payloads in ascii format break when a payload contains CR "
                                                         "LF"), N_("use format: binary, or payload_encoding: hex"))]
        return []

    @field_validator("pan_id", "own_id", mode="before")
    @classmethod
    def _hex4(cls, value: object, info: ValidationInfo) -> str:
        low, high = (0x0001, 0xFFFE) if info.field_name == "pan_id" else (0x0000, 0xFFFE)
        hint = N_("write it as 4 hex digits in quotes, e.g. {key}: \"{low}\"")
        key = info.field_name
        if isinstance(value, bool) or not isinstance(value, int | str):
            raise problem(N_("{key} must be 4 hex digits"), hint, key=key, low=f"{low:04X}")
        if isinstance(value, int):
            number = value
        else:
            text = value.strip()
            if len(text) != 4 or not set(text) <= _HEX_DIGITS:
                raise problem(N_("{key} '{text}' is not 4 hex digits"), hint, key=key, text=text, low=f"{low:04X}")
            number = int(text, 16)
        if not low <= number <= high:
            raise problem(N_("{key} {number} is out of range {low}..{high}"), hint, key=key, number=f"{number:04X}",
                          low=f"{low:04X}", high=f"{high:04X}")
        return f"{number:04X}"

    @model_validator(mode="after")
    def _channel_fits_bandwidth(self) -> Es920Config:
        top = _MAX_CHANNEL[self.bandwidth_khz]
        if self.channel > top:
            raise problem(N_("channel {channel} does not exist at {khz} kHz bandwidth: channels 1..{top} only"),
                          N_("wider bandwidths bundle several 200 kHz channels: use channel 1..7 at 250 kHz and 1..5 at "
                             "500 kHz, or a narrower bandwidth_khz"), subloc=("channel",), channel=self.channel,
                          khz=f"{self.bandwidth_khz:g}", top=top)
        return self
