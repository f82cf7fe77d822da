"""The ``gpio:`` config section: the status lamp, siren, test button and rain gauge on the gateway's GPIO header,
each optional, their pins checked as gpiozero names them. The devices themselves: agent.gateway.fieldio.

pydantic only; gpiozero is never imported here (the config loads on every ``denen run``).
"""

from __future__ import annotations

import re
from typing import Annotated, Any

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    field_validator,
    model_validator,
)

from drivers.settings import N_, problem

# Pin names gpiozero accepts (pins/data.py): GPIO17, BCM17, BOARD11, J8:11, WPI0; or a bare BCM number.
_PIN_NAME = re.compile(r"^(?:(?:GPIO|BCM|BOARD|WPI)\d{1,2}|J8:\d{1,2})$", re.IGNORECASE)


#: How to write a pin, and a rain gauge's node id, for each of their problems.
_PIN_HINT = N_("write a BCM number (17) or a name gpiozero knows: GPIO17, BCM17, BOARD11 or J8:11")
_NODE_HINT = N_("e.g. node_id: \"0000a001\", an id no radio node has")


def _check_pin(value: object) -> int | str:
    if isinstance(value, bool):
        raise problem(N_("pin must be a BCM number or a pin name, not true/false"), _PIN_HINT)
    if isinstance(value, int):
        if not 0 <= value <= 53:
            raise problem(N_("BCM pin number must be 0..53, got {value}"), _PIN_HINT, value=value)
        return value
    if isinstance(value, str):
        text = value.strip()
        if text.isdigit():
            return _check_pin(int(text))
        if _PIN_NAME.match(text):
            return text.upper()
        raise problem(N_("pin {value} is not a pin name gpiozero knows"), _PIN_HINT, value=repr(value))
    raise problem(N_("pin must be a BCM number or a pin name"), _PIN_HINT)


def _pin_key(pin: int | str) -> str:
    """A canonical spelling for spotting the same pin configured twice (BCM and BOARD numbers are not mapped)."""
    if isinstance(pin, int):
        return f"GPIO{pin}"
    text = pin.upper()
    for prefix, canon in (("BCM", "GPIO"), ("J8:", "BOARD")):
        if text.startswith(prefix):
            return canon + str(int(text[len(prefix):]))
    return re.sub(r"\d+$", lambda m: str(int(m.group())), text)


#: A GPIO pin as the config gives it, checked and written the way gpiozero names it (:func:`_check_pin`).
Pin = Annotated[int | str, BeforeValidator(_check_pin)]


class _GpioSection(BaseModel):
    # defer_build: as drivers.settings.Section (no validator in the long-running process).
    model_config = ConfigDict(extra="forbid", frozen=True, validate_default=True, defer_build=True)


class OutputPin(_GpioSection):
    """A GPIO output driving a lamp or relay."""

    pin: Pin = Field(
        description=N_("The output pin: a BCM GPIO number (17) or a name gpiozero accepts (GPIO17, BOARD11, J8:11).")
    )
    active_high: bool = Field(
        default=True,
        description=N_("true: the pin is driven high (3.3 V) to switch on; false for active-low relay boards."),
    )

class StatusLamp(OutputPin):
    """The status lamp: steady when all is well, slow blink without backhaul, fast blink on alarm."""

    slow_blink_s: float = Field(
        default=1.0, ge=0.1, le=10.0,
        description=N_("On-time and off-time of the slow blink (no backhaul), in seconds."),
    )
    fast_blink_s: float = Field(
        default=0.25, ge=0.05, le=5.0, description=N_("On-time and off-time of the fast blink (alarm), in seconds.")
    )


class SirenOutput(OutputPin):
    """The siren or relay output, sounded for SOS and flood stages even while the backhaul is down."""

    on_s: float = Field(default=1.0, gt=0, le=60.0, description=N_("Sounding time of each pulse, in seconds."))
    off_s: float = Field(
        default=1.0, ge=0, le=60.0,
        description=N_("Silence between pulses, in seconds; 0 sounds steadily (for sirens with their own pattern)."),
    )


class InputPin(_GpioSection):
    """A GPIO input wired to a switch (to ground with the pull-up on, or to 3.3 V with it off)."""

    pin: Pin = Field(
        description=N_("The input pin: a BCM GPIO number (27) or a name gpiozero accepts (GPIO27, BOARD13).")
    )
    pull_up: bool = Field(
        default=True,
        description=N_("true: internal pull-up, the switch connects the pin to ground (closed = low). false: "
        "pull-down, the switch connects the pin to 3.3 V."),
    )
    bounce_s: float = Field(
        default=0.05, ge=0.001, le=5.0,
        description=N_("Debounce time in seconds: a closing counts only after the line was quiet this long."),
    )

class RainGauge(InputPin):
    """A tipping-bucket rain gauge's reed switch: one debounced closing per bucket tip."""

    bounce_s: float = Field(
        default=0.1, ge=0.001, le=5.0,
        description=N_("Debounce time in seconds: a tip counts only after the line was quiet this long (reed "
        "switches bounce for a few ms; buckets tip at most a few times a second)."),
    )
    mm_per_tip: float = Field(
        default=0.2, gt=0, le=10.0, description=N_("Rainfall per bucket tip, in millimetres (mm).")
    )
    node_id: str = Field(
        description=N_("Node id the gauge's readings carry (uint32), as 8 hex digits in quotes, e.g. \"0000a001\". "
        "Must not clash with a radio node's id."),
    )
    report_interval_s: float = Field(
        default=600.0, ge=10.0, le=86_400.0,
        description=N_("How often the rainfall since the previous report is journaled, in seconds."),
    )

    @field_validator("node_id", mode="before")
    @classmethod
    def _node_id(cls, value: object) -> str:
        if isinstance(value, bool):
            raise problem(N_("node_id must be 8 hex digits in quotes, not true/false"), _NODE_HINT)
        if isinstance(value, int):
            if not 0 <= value <= 0xFFFF_FFFF:
                raise problem(N_("node_id must fit in 32 bits (8 hex digits)"), _NODE_HINT)
            return f"{value:08x}"
        if not isinstance(value, str) or not re.fullmatch(r"[0-9a-fA-F]{8}", value.strip()):
            raise problem(N_("node_id must be 8 hex digits in quotes, not {value}"), _NODE_HINT, value=repr(value))
        return value.strip().lower()

    @property
    def node_uint(self) -> int:
        """The node id as a uint32."""
        return int(self.node_id, 16)

    def tips_to_mm(self, tips: int) -> float:
        """Rainfall of ``tips`` bucket tips, in millimetres (rounded to 0.0001 mm against float noise)."""
        return round(tips * self.mm_per_tip, 4)


class GpioConfig(_GpioSection):
    """The ``gpio:`` section. Every device is optional; without any, no GPIO is touched at all."""

    pin_factory: str | None = Field(
        default=None,
        description=N_("gpiozero pin factory: null for gpiozero's default (lgpio on current Raspberry Pi OS), "
        "'mock' for simulated pins (demo and tests), or a factory name: lgpio, rpigpio, pigpio, native."),
    )
    status_lamp: StatusLamp | None = Field(default=None, description=N_("Status lamp output. Optional."))
    siren: SirenOutput | None = Field(default=None, description=N_("Siren or relay output. Optional."))
    test_button: InputPin | None = Field(
        default=None, description=N_("Installer test button: a press makes the lamp and siren chirp. Optional.")
    )
    rain_gauge: RainGauge | None = Field(default=None, description=N_("Tipping-bucket rain gauge input. Optional."))

    @field_validator("pin_factory")
    @classmethod
    def _factory_name(cls, value: str | None) -> str | None:
        if value is None or value == "mock":
            return value
        names = _factory_names()
        if value not in names and value.lower() not in names:
            raise problem(N_("unknown gpiozero pin factory {value}"), N_("installed: {names}"), value=repr(value),
                          names=", ".join(sorted(names)) or "-")
        return value

    @model_validator(mode="after")
    def _distinct_pins(self) -> GpioConfig:
        seen: dict[str, str] = {}
        for key in ("status_lamp", "siren", "test_button", "rain_gauge"):
            section = getattr(self, key)
            if section is None:
                continue
            canon = _pin_key(section.pin)
            if canon in seen:
                raise problem(N_("{key}.pin {pin} is the same pin as {other}.pin"), N_("give each device its own pin"),
                              key=key, pin=repr(section.pin), other=seen[canon])
            seen[canon] = key
        return self

    @property
    def any_device(self) -> bool:
        """True when at least one device is configured."""
        return any(getattr(self, k) is not None for k in ("status_lamp", "siren", "test_button", "rain_gauge"))


def entry_points(*, group: str) -> Any:
    """``importlib.metadata.entry_points``, imported on first use (gpiozero's own lookup costs RAM only a gateway with GPIO should pay)."""
    from importlib.metadata import entry_points as installed  # noqa: PLC0415

    return installed(group=group)


def _factory_names() -> set[str]:
    return {ep.name for ep in entry_points(group="gpiozero_pin_factories")}
