"""Radio modules: ``radios[]``, with each registered driver's own settings section (``p2p:``, ``es920:`` ...).

Nothing here names a driver: the driver names, their settings sections and summaries come from the driver
registry's listings (:func:`drivers.registry.listings`), which load no driver, so a new driver's section is a key
of ``radios[]`` without a change here. A section's model lives in its driver's module and is imported only for a
config whose radios use that driver: :data:`RadioConfig` holds every section as a loose optional key and
validates each radio as :func:`radio_model` of its own driver, so a gateway with RAK3172 radios never imports the
Modbus or Meshtastic drivers. ``radio_model(BUILTIN_DRIVERS)`` types every section (the JSON Schema and the key
reference). A driver registered after this module was imported is accepted by name, but takes no section.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, Literal

from pydantic import (
    Field,
    ValidationInfo,
    create_model,
    field_validator,
    model_validator,
)

from agent.config.values import _CTX_LOADER, Found, _get
from drivers import registry
from drivers.settings import N_, Problem, Problems, Section, Text, choices_hint, problem

_LISTINGS = registry.listings()

#: The drivers this schema has a settings section for (the built-in ones), in drivers/all.py's order.
BUILTIN_DRIVERS: tuple[str, ...] = tuple(listing.name for listing in _LISTINGS)

#: Which settings section belongs to which driver. A driver not listed here takes no section.
SECTION_FOR_DRIVER: dict[str, str] = {ls.name: ls.section for ls in _LISTINGS if ls.section is not None}

_OWNER_OF_SECTION = {section: driver for driver, section in SECTION_FOR_DRIVER.items()}

_NAME_RADIO = r"^[a-z0-9_-]{1,32}$"


def __getattr__(name: str) -> Any:
    """The drivers' settings models by class name (``ModbusConfig`` ...); loads every driver, so only for names
    that can be one (import machinery and type checkers probe other names)."""
    if name.endswith("Config"):
        for s in registry.specs():
            if s.settings is not None and s.settings.__name__ == name:
                return s.settings
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def driver_names() -> tuple[str, ...]:
    """Return the radio driver names accepted in ``radios[].driver``, sorted: every name in the driver registry.

    Not cached, so drivers registered later are seen.
    """
    return registry.names()


def _driver_enum_schema(schema: dict[str, Any]) -> None:
    schema["enum"] = list(driver_names())


def _listing(words: list[str]) -> str:
    """``a``, ``a or b``, ``a, b or c``."""
    return " or ".join(words) if len(words) < 3 else ", ".join(words[:-1]) + " or " + words[-1]


class _Radio(Section):
    """One radio module on a serial port."""

    name: str = Field(
        pattern=_NAME_RADIO,
        description=N_("Radio name, unique in this file: 1-32 of a-z, 0-9, '_' and '-'. Nodes may refer to it."),
        examples=["lora0"],
    )
    driver: str = Field(
        description=f"Module driver: {_listing([f'{ls.name} ({ls.summary})' for ls in _LISTINGS])}.",
        json_schema_extra=_driver_enum_schema,
    )
    port: str = Field(
        min_length=1,
        description=N_("Serial port, anything pyserial's serial_for_url opens: a device path (/dev/ttyUSB0, a udev "
        "symlink such as /dev/lora0, a pty), socket://host:port, loop://. Not checked at load time, so a config "
        "can be validated on a laptop."),
    )
    baudrate: Literal[9600, 19200, 38400, 57600, 115200, 230400] = Field(
        default=115200, description=N_("Serial speed in baud: 9600, 19200, 38400, 57600, 115200 or 230400.")
    )

    @field_validator("driver")
    @classmethod
    def _known_driver(cls, value: str) -> str:
        names = driver_names()
        if value not in names:
            raise problem(N_("unknown radio driver '{value}'"), choices_hint(value, names, Text(N_("valid drivers"))),
                          value=value)
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
    def _section_matches_driver(self, info: ValidationInfo) -> _Radio:
        # The loader runs this check itself on the raw data, so that it is reported even when other keys of the
        # radio are invalid (pydantic skips this validator then).
        if not (info.context or {}).get(_CTX_LOADER):
            problems = _section_problems(self)
            if problems:
                raise Problems(problems)
        return self

    @model_validator(mode="wrap")
    @classmethod
    def _as_own_driver(cls, data: Any, handler: Callable[[Any], Any], info: ValidationInfo) -> Any:
        # RadioConfig holds every section loosely; a radio is validated as the model of its own driver, whose
        # section is typed (imported now), so a radio built in Python gets its settings model as the loader's do.
        if cls is RadioConfig and isinstance(data, Mapping):
            driver = data.get("driver")
            if isinstance(driver, str) and driver in SECTION_FOR_DRIVER:
                return radio_model((driver,)).model_validate(data, context=info.context)
        return handler(data)


def _section_field(driver: str, typed: bool) -> tuple[Any, Any]:
    if not typed:
        return (Any, Field(default=None, description=f"Settings for driver {driver} only."))
    settings = registry.spec(driver).settings
    doc = getattr(settings, "section_doc", "Settings")
    return (settings | None, Field(  # type: ignore[operator]
        default=None,
        description=f"{doc} for driver {driver} only; the defaults apply when the section is absent.",
    ))


#: Class attribute of a model made by create_model: how to make the same class again in another process
#: (agent.config.handoff), since pickle finds classes by name and these share their base's name.
REMAKE_ATTR = "denen_remake"


def _make_radio_model(typed: tuple[str, ...], base: type[_Radio]) -> type[_Radio]:
    model = create_model(  # type: ignore[call-overload]
        "RadioConfig",
        __base__=base,
        __doc__=_Radio.__doc__,
        __module__=__name__,
        **{section: _section_field(driver, driver in typed) for driver, section in SECTION_FOR_DRIVER.items()},
    )
    setattr(model, REMAKE_ATTR, ("radio", typed))
    return model  # type: ignore[no-any-return]


#: One radio module on a serial port: the common keys, then one optional settings section per driver that has one.
#: Validating one returns a :func:`radio_model` of its own driver (a subclass), with that driver's section typed.
RadioConfig = _make_radio_model((), _Radio)


@functools.lru_cache(maxsize=64)
def _typed_radio_model(typed: tuple[str, ...]) -> type[_Radio]:
    return _make_radio_model(typed, RadioConfig)


def radio_model(drivers: Iterable[str]) -> type[_Radio]:
    """The radio model whose sections of ``drivers`` are typed by their drivers' settings models (those drivers'
    modules are imported); the other sections stay loose keys, so a section given to the wrong driver is still
    reported (:func:`_section_problems`). Built once per set of drivers. Names without a section are ignored."""
    wanted = set(drivers)
    return _typed_radio_model(tuple(d for d in SECTION_FOR_DRIVER if d in wanted))


def drivers_named(radios: object) -> tuple[str, ...]:
    """The known drivers named by ``radios[].driver`` in raw data (anything: invalid entries are skipped), in
    registry order."""
    items = radios if isinstance(radios, Sequence) and not isinstance(radios, str) else ()
    named = {r.get("driver") for r in items if isinstance(r, Mapping) and isinstance(r.get("driver"), str)}
    return tuple(d for d in BUILTIN_DRIVERS if d in named)


def section_hex_text_keys(drivers: Iterable[str]) -> tuple[tuple[object, ...], ...]:
    """Where the sections of ``drivers`` hold hex text (``("radios", int, section, key)``), for the YAML loader
    (those drivers' modules are imported)."""
    wanted = set(drivers)
    return tuple(("radios", int, section, key) for driver, section in SECTION_FOR_DRIVER.items() if driver in wanted
                 for key in getattr(registry.spec(driver).settings, "hex_text_keys", ()))


def section_warnings(radios: Sequence[Any]) -> list[Found]:
    """Each radio's driver settings that are valid but probably a mistake (the section's ``setting_warnings()``)."""
    found: list[Found] = []
    for i, radio in enumerate(radios):
        section = SECTION_FOR_DRIVER.get(radio.driver)
        settings = getattr(radio, section, None) if section is not None else None
        if isinstance(settings, Section):
            found.extend((("radios", i, section, *p.subloc), p.message, p.hint) for p in settings.setting_warnings())
    return found


def _section_problems(radio: object) -> list[Problem]:
    """A driver's settings section given for a radio of another driver (raw data or a model)."""
    driver = _get(radio, "driver")
    if not isinstance(driver, str) or driver not in driver_names():
        return []  # an unknown driver is reported by itself; which section it would take is unknowable
    own = SECTION_FOR_DRIVER.get(driver)
    problems = []
    for section, owner in _OWNER_OF_SECTION.items():
        if _get(radio, section) is not None and section != own:
            hint = (N_("remove '{section}:' and put this radio's settings under '{own}:', or change the driver") if own
                    else N_("remove '{section}:', or change the driver"))
            problems.append(
                Problem.of(
                    (section,),
                    N_("the '{section}:' section is only for driver {owner}, but this radio uses driver '{driver}'"),
                    hint, section=section, owner=owner, driver=driver, own=own,
                )
            )
    return problems
