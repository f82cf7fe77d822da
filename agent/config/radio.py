"""Radio modules: ``radios[]`` and the settings sections of the built-in drivers (``p2p:``, ``es920:``)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

from pydantic import Field, ValidationInfo, field_validator, model_validator

from agent.config.values import _CTX_LOADER, _HEX, _get
from drivers.settings import Problem, Problems, Section, choices_hint, problem


#: Driver names always accepted, whether or not the registry ``drivers.radio.DRIVERS`` can be imported.
BUILTIN_DRIVERS: tuple[str, ...] = ("rak3172", "es920lr")

#: Which settings section belongs to which driver. A driver not listed here takes neither section.
SECTION_FOR_DRIVER: dict[str, str] = {"rak3172": "p2p", "es920lr": "es920"}


# Japan 920 MHz band for LoRa under ARIB STD-T108 (PROTOCOLS.md §6): unit channels 24..38, 200 kHz apart.
JP_FREQ_MIN_HZ = 920_600_000
JP_FREQ_MAX_HZ = 923_400_000
JP_FREQ_STEP_HZ = 200_000


_NAME_RADIO = r"^[a-z0-9_-]{1,32}$"


def driver_names() -> tuple[str, ...]:
    """Return the radio driver names accepted in ``radios[].driver``, sorted.

    The built-in names :data:`BUILTIN_DRIVERS` plus every name in the driver registry ``drivers.radio.DRIVERS``
    when that module can be imported. The built-in names are always included because this schema knows their
    settings sections, and because a registry filled by import side effects may not be complete yet when a config
    is validated (e.g. by ``denen config validate``). Not cached, so drivers registered later are seen.
    """
    try:
        from drivers.radio import DRIVERS  # noqa: PLC0415  # imported late: optional, and avoids import cycles
    except ImportError:
        return tuple(sorted(BUILTIN_DRIVERS))
    return tuple(sorted({*BUILTIN_DRIVERS, *(str(name) for name in DRIVERS)}))


def _driver_enum_schema(schema: dict[str, Any]) -> None:
    schema["enum"] = list(driver_names())


class P2pConfig(Section):
    """RAK3172 (RUI3) LoRa P2P radio settings; they must match the nodes' settings exactly."""

    frequency_hz: int = Field(
        default=920_600_000,
        description="Centre frequency in Hz: Japan's 920 MHz band for LoRa, 920600000..923400000 in 200 kHz "
        "steps (ARIB STD-T108 channels 24..38).",
    )
    spreading_factor: int = Field(
        default=10, ge=7, le=12, description="LoRa spreading factor 7..12; higher reaches further but each frame "
        "takes longer on air (SF10: ~0.37 s for 20 bytes; SF12: ~1.3 s)."
    )
    bandwidth_khz: Literal[125, 250, 500] = Field(default=125, description="LoRa bandwidth in kHz: 125, 250 or 500.")
    coding_rate: int = Field(default=0, ge=0, le=3, description="LoRa coding rate: 0..3 meaning 4/5..4/8.")
    preamble: int = Field(default=8, ge=5, le=65535, description="Preamble length in symbols (5..65535).")
    tx_power_dbm: int = Field(
        default=13,
        ge=5,
        le=13,
        description="Transmit power in dBm, 5..13: 13 dBm (20 mW) is the limit for specified low-power radio "
        "stations in Japan's 920 MHz band.",
    )

    @field_validator("frequency_hz")
    @classmethod
    def _japan_band(cls, value: int) -> int:
        hint = (
            "ARIB STD-T108 allows LoRa at 920600000..923400000 Hz in 200 kHz steps "
            "(920600000, 920800000, ... 923400000)"
        )
        if not JP_FREQ_MIN_HZ <= value <= JP_FREQ_MAX_HZ:
            raise problem(
                f"{value} Hz ({(f'{value / 1e6:g} MHz' if abs(value) < 10**15 else 'not a radio frequency')}) is outside Japan's 920 MHz LoRa band "
                f"(920.6..923.4 MHz)",
                hint,
            )
        offset = (value - JP_FREQ_MIN_HZ) % JP_FREQ_STEP_HZ
        if offset:
            below = value - offset
            above = below + JP_FREQ_STEP_HZ
            nearest = below if offset < JP_FREQ_STEP_HZ // 2 or above > JP_FREQ_MAX_HZ else above
            raise problem(
                f"{value} Hz is not on the 200 kHz channel grid; nearest channel: {nearest} Hz", hint
            )
        return value


_ES920_MAX_CHANNEL = {62.5: 15, 125: 15, 250: 7, 500: 5}


class Es920Config(Section):
    """EASEL ES920LR (Private LoRa) module settings; bandwidth, SF, channel and PAN id must match the nodes."""

    bandwidth_khz: Literal[62.5, 125, 250, 500] = Field(
        default=125, description="LoRa bandwidth in kHz: 62.5, 125, 250 or 500."
    )
    spreading_factor: int = Field(default=10, ge=7, le=12, description="LoRa spreading factor 7..12.")
    channel: int = Field(
        default=1,
        ge=1,
        le=15,
        description="Channel number: 1..15 at 62.5/125 kHz, 1..7 at 250 kHz, 1..5 at 500 kHz (channel 1 is "
        "920.6 MHz, 200 kHz steps).",
    )
    pan_id: str = Field(
        default="0001",
        description="PAN (network) id, 4 hex digits 0001..FFFE; all nodes of this network use the same one. "
        "Write it in quotes.",
    )
    own_id: str = Field(
        default="0000", description="This module's own id, 4 hex digits 0000..FFFE. Write it in quotes."
    )
    format: Literal["ascii", "binary"] = Field(
        default="binary",
        description="Module output format: binary (length-prefixed frames, safe for any payload) or ascii "
        "(CR LF terminated lines).",
    )
    payload_encoding: Literal["hex", "raw"] = Field(
        default="hex",
        description="How nodes put the denen frame into the LoRa payload: hex (as hex text, safe everywhere) or "
        "raw (bytes). With format ascii, raw breaks on payloads containing CR LF.",
    )
    power_dbm: int = Field(default=13, ge=-4, le=13, description="Transmit power in dBm, -4..13 (13 dBm = 20 mW).")
    node: Literal["coordinator", "end_device"] = Field(
        default="coordinator", description="Module role: coordinator (the gateway) or end_device."
    )

    @field_validator("pan_id", "own_id", mode="before")
    @classmethod
    def _hex4(cls, value: object, info: ValidationInfo) -> str:
        low, high = (0x0001, 0xFFFE) if info.field_name == "pan_id" else (0x0000, 0xFFFE)
        hint = f"write it as 4 hex digits in quotes, e.g. {info.field_name}: \"{low:04X}\""
        if isinstance(value, bool) or not isinstance(value, int | str):
            raise problem(f"{info.field_name} must be 4 hex digits", hint)
        if isinstance(value, int):
            number = value
        else:
            text = value.strip()
            if len(text) != 4 or not set(text) <= _HEX:
                raise problem(f"{info.field_name} '{text}' is not 4 hex digits", hint)
            number = int(text, 16)
        if not low <= number <= high:
            raise problem(f"{info.field_name} {number:04X} is out of range {low:04X}..{high:04X}", hint)
        return f"{number:04X}"

    @model_validator(mode="after")
    def _channel_fits_bandwidth(self) -> Es920Config:
        top = _ES920_MAX_CHANNEL[self.bandwidth_khz]
        if self.channel > top:
            raise problem(
                f"channel {self.channel} does not exist at {self.bandwidth_khz:g} kHz bandwidth: channels 1..{top} "
                f"only",
                "wider bandwidths bundle several 200 kHz channels: use channel 1..7 at 250 kHz and 1..5 at 500 kHz, "
                "or a narrower bandwidth_khz",
                subloc=("channel",),
            )
        return self


class RadioConfig(Section):
    """One radio module on a serial port."""

    name: str = Field(
        pattern=_NAME_RADIO,
        description="Radio name, unique in this file: 1-32 of a-z, 0-9, '_' and '-'. Nodes may refer to it.",
        examples=["lora0"],
    )
    driver: str = Field(
        description="Module driver: rak3172 (RAK3172, RUI3 LoRa P2P) or es920lr (EASEL ES920LR).",
        json_schema_extra=_driver_enum_schema,
    )
    port: str = Field(
        min_length=1,
        description="Serial port, anything pyserial's serial_for_url opens: a device path (/dev/ttyUSB0, a udev "
        "symlink such as /dev/lora0, a pty), socket://host:port, loop://. Not checked at load time, so a config "
        "can be validated on a laptop.",
    )
    baudrate: Literal[9600, 19200, 38400, 57600, 115200, 230400] = Field(
        default=115200, description="Serial speed in baud: 9600, 19200, 38400, 57600, 115200 or 230400."
    )
    p2p: P2pConfig | None = Field(
        default=None,
        description="LoRa settings for driver rak3172 only; the defaults apply when the section is absent.",
    )
    es920: Es920Config | None = Field(
        default=None,
        description="Module settings for driver es920lr only; the defaults apply when the section is absent.",
    )

    @field_validator("driver")
    @classmethod
    def _known_driver(cls, value: str) -> str:
        names = driver_names()
        if value not in names:
            raise problem(f"unknown radio driver '{value}'", choices_hint(value, names, "valid drivers"))
        return value

    @model_validator(mode="before")
    @classmethod
    def _default_section(cls, data: object) -> object:
        # Fill the driver's own section with its defaults when it is absent (or written as an empty key), so the
        # drivers always get complete settings. Done before validation so the filled section is itself validated.
        if isinstance(data, Mapping):
            driver = data.get("driver")
            section = SECTION_FOR_DRIVER.get(driver) if isinstance(driver, str) else None
            if section is not None and data.get(section) is None:
                return {**data, section: {}}
        return data

    @model_validator(mode="after")
    def _section_matches_driver(self, info: ValidationInfo) -> RadioConfig:
        # The loader runs this check itself on the raw data, so that it is reported even when other keys of the
        # radio are invalid (pydantic skips this validator then).
        if not (info.context or {}).get(_CTX_LOADER):
            problems = _section_problems(self)
            if problems:
                raise Problems(problems)
        return self


def _section_problems(radio: object) -> list[Problem]:
    """A ``p2p:`` or ``es920:`` section given for a driver it does not belong to (raw data or a model)."""
    driver = _get(radio, "driver")
    if not isinstance(driver, str) or driver not in driver_names():
        return []  # an unknown driver is reported by itself; which section it would take is unknowable
    own = SECTION_FOR_DRIVER.get(driver)
    problems = []
    for section, owner in (("p2p", "rak3172"), ("es920", "es920lr")):
        if _get(radio, section) is not None and section != own:
            fix = f"remove '{section}:'" + (f" and put this radio's settings under '{own}:'" if own else "")
            problems.append(
                Problem(
                    (section,),
                    f"the '{section}:' section is only for driver {owner}, but this radio uses driver '{driver}'",
                    f"{fix}, or change the driver",
                )
            )
    return problems
