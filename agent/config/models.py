"""The gateway's config file: the whole :class:`Config`, its small sections, and :func:`load_config`."""

from __future__ import annotations

import copy
import functools
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pydantic import (
    ConfigDict,
    Field,
    PrivateAttr,
    ValidationInfo,
    create_model,
    field_validator,
    model_validator,
)

from agent.config.checks import _collection_problems, _warning_problems
from agent.config.mqtt import MqttConfig
from agent.config.nodes import NodeConfig
from agent.config.radio import (
    REMAKE_ATTR,
    RadioConfig,
    drivers_named,
    radio_model,
    section_hex_text_keys,
)
from agent.config.values import _CTX_LOADER, TopLevel, _resolve_path
from agent.errors import ConfigIssue
from agent.gateway.fieldio_config import GpioConfig
from agent.gateway.receipt_airtime import ReceiptsConfig
from agent.rules import RulesConfig
from agent.tools.status import DEFAULT_JOURNAL_PATH
from drivers.settings import N_, Problem, Problems, Section

if TYPE_CHECKING:
    from agent.config.loader import ModelFile

_NAME_ID = r"^[a-z0-9][a-z0-9_-]{0,62}$"


class GatewayConfig(Section):
    """Identity of this gateway."""

    id: str = Field(
        pattern=_NAME_ID,
        description=N_("Gateway id, unique across the deployment; used in MQTT topics. 1-63 characters: lowercase "
        "letters a-z, digits, '_' and '-', starting with a letter or digit (so never '/', '+' or '#')."),
        examples=["gw-okutama-01"],
    )
    site: str = Field(
        pattern=_NAME_ID,
        description=N_("Municipality or site tag, used to group gateways; same characters as gateway.id."),
        examples=["okutama"],
    )
    name: str | None = Field(
        default=None,
        max_length=200,
        description=N_("Free-text display name (Japanese allowed), e.g. for dashboards. Optional."),
        examples=["奥多摩 林道ゲートウェイ"],
    )


class JournalConfig(Section):
    """The durable on-disk journal (SQLite) that keeps every reading until the broker has it."""

    path: str = Field(
        default=DEFAULT_JOURNAL_PATH,
        min_length=1,
        description=N_("Path of the SQLite journal file; its directory is created if missing. Relative paths are "
        "resolved against the config file's directory."),
    )
    quota_mb: float = Field(
        default=256,
        gt=0,
        description=N_("Disk quota of the journal in megabytes (MB, 1 MB = 1048576 bytes). When full, the lowest "
        "priority readings are evicted first, oldest first; SOS and alarms never are."),
    )
    commit_window_ms: int = Field(
        default=250,
        ge=0,
        le=1000,
        description=N_("Milliseconds telemetry and diagnostics readings (and the deletion of readings the broker "
        "acknowledged) may wait in memory to share one commit (one fsync) with the next ones: at field rates "
        "this divides the bytes written to the SD card and the CPU per reading. A power cut loses at most the "
        "frames read in the last commit_window_ms; after one, readings acknowledged in the last commit_window_ms "
        "may be sent once more (same id, an overwrite at the backend). SOS and alarms never wait: each commits "
        "at once, together with everything waiting. 0 commits at every wake-up."),
    )

    @field_validator("path")
    @classmethod
    def _resolve(cls, value: str, info: ValidationInfo) -> str:
        return _resolve_path(value, info)


class HealthConfig(Section):
    """The gateway's own health reports."""

    interval_s: int = Field(
        default=60, ge=10, le=86400, description=N_("Seconds between health publications (10..86400).")
    )


class LogConfig(Section):
    """Logging."""

    level: Literal["debug", "info", "warning", "error"] = Field(
        default="info", description=N_("Log level: debug, info, warning or error.")
    )


class Config(TopLevel):
    """The whole agent configuration (one YAML file)."""

    model_config = ConfigDict(
        title="denen agent configuration",
        json_schema_extra={"$schema": "https://json-schema.org/draft/2020-12/schema"},
    )

    gateway: GatewayConfig = Field(description=N_("Identity of this gateway (required)."))
    journal: JournalConfig = Field(default_factory=JournalConfig, description=N_("The durable reading journal."))
    mqtt: MqttConfig = Field(default_factory=MqttConfig, description=N_("The MQTT broker connection."))
    radios: list[RadioConfig] = Field(
        min_length=1, description=N_("Radio modules on serial ports; at least one, names unique.")
    )
    nodes: list[NodeConfig] = Field(
        default_factory=list, description=N_("Sensor nodes this gateway expects; ids and names unique.")
    )
    unknown_nodes: Literal["quarantine", "accept"] = Field(
        default="quarantine",
        description=N_("Frames from nodes not listed in nodes: quarantine (keep aside for inspection) or accept."),
    )
    unknown_nodes_max: int = Field(
        default=1000,
        ge=1,
        le=100_000,
        description=N_("With unknown_nodes: accept, the most nodes not listed in nodes: whose state (replay window, "
        "last seen) is kept (1..100000); the least recently heard is dropped to make room for a new one. Listed "
        "nodes are never dropped."),
    )
    unknown_nodes_forget_after_s: int = Field(
        default=7 * 86400,
        ge=60,
        le=10 * 366 * 86400,
        description=N_("The state of a node not listed in nodes: is dropped when it has not been heard for this "
        "long, in seconds (default 604800, 7 days). Listed nodes are never dropped."),
    )
    health: HealthConfig = Field(default_factory=HealthConfig, description=N_("Gateway health publishing."))
    rules: RulesConfig = Field(
        default_factory=RulesConfig,
        description=N_("Edge alert rules, evaluated on the gateway even while the backhaul is down (agent/rules/)."),
    )
    gpio: GpioConfig | None = Field(
        default=None, description=N_("Status lamp, siren, installer test button and rain gauge on GPIO; none when absent."),
    )
    receipts: ReceiptsConfig = Field(
        default_factory=ReceiptsConfig,
        description=N_("SOS receipts sent back to the caller's node, within ARIB STD-T108 airtime rules."),
    )
    log: LogConfig = Field(default_factory=LogConfig, description=N_("Logging."))

    EMPTY_MEANS_DEFAULTS = ("journal", "mqtt", "nodes", "health", "log", "unknown_nodes", "rules", "gpio", "receipts")

    _node_by_id: dict[int, NodeConfig] = PrivateAttr(default_factory=dict)
    _radio_by_name: dict[str, RadioConfig] = PrivateAttr(default_factory=dict)
    _warnings: tuple[ConfigIssue, ...] = PrivateAttr(default=())

    @model_validator(mode="after")
    def _collections(self, info: ValidationInfo) -> Config:
        # The loader runs these checks itself on the raw data (so they are reported even when other keys fail).
        if not (info.context or {}).get(_CTX_LOADER):
            found = _collection_problems(self.radios, self.nodes)
            if found:
                raise Problems(Problem(loc, msg, hint) for loc, msg, hint in found)
        return self

    def model_post_init(self, context: Any, /) -> None:  # noqa: D102 - pydantic hook
        self._node_by_id = {node.node_id: node for node in self.nodes}
        self._radio_by_name = {radio.name: radio for radio in self.radios}

    @property
    def node_by_id(self) -> dict[int, NodeConfig]:
        """Configured nodes keyed by their uint32 node id (built once; do not modify)."""
        return self._node_by_id

    @property
    def radio_by_name(self) -> dict[str, RadioConfig]:
        """Configured radios keyed by name (built once; do not modify)."""
        return self._radio_by_name

    @property
    def warnings(self) -> tuple[ConfigIssue, ...]:
        """Things that are valid but probably not intended, found by the loader (also logged as warnings)."""
        return self._warnings


def config_model(drivers: Iterable[str]) -> type[Config]:
    """:class:`Config` with the settings sections of ``drivers`` typed (see :func:`radio_model`; those drivers'
    modules are imported): what the loader validates a file with (the drivers its radios name), and with every
    driver the JSON Schema and the key reference. Built once per set of drivers."""
    return _config_with_radios(radio_model(drivers))


@functools.lru_cache(maxsize=64)
def _config_with_radios(radio: type[RadioConfig]) -> type[Config]:
    model = create_model(  # type: ignore[call-overload]
        "Config", __base__=Config, __doc__=Config.__doc__, __module__=__name__,
        radios=(list[radio], copy.copy(Config.model_fields["radios"])),  # type: ignore[valid-type]
    )
    # The radio model's drivers name this one too (agent.config.handoff makes it again from them).
    setattr(model, REMAKE_ATTR, ("config", getattr(radio, REMAKE_ATTR)[1]))
    return model  # type: ignore[no-any-return]


# Keys whose values are hex text. YAML reads an unquoted all-digit value such as 00000101 as the decimal number
# 101, which would silently become a different node id or key. ruamel keeps the digit count of such numbers, so
# they are turned back into the text the installer wrote. Numbers written in YAML hex (0x...) stay numbers. The
# drivers' sections add theirs (section_hex_text_keys), for the drivers a file names.
_HEX_TEXT_KEYS: tuple[tuple[object, ...], ...] = (
    ("nodes", int, "id"),
    ("nodes", int, "key"),
    ("rules", "rivers", int, "node"),
    ("rules", "slopes", int, "node"),
    ("gpio", "rain_gauge", "node_id"),
)


def load_config(path: str | os.PathLike[str], *, check_modes: bool = True,
                parsed_cache: str | os.PathLike[str] | None = None) -> Config:
    """Read, parse and validate a config file.

    Relative paths inside the file are resolved against the file's directory.

    Args:
        path: The YAML file.
        check_modes: Refuse secrets that other users can read: inline secrets in a config file they can read, and
            secret files (key_file, password_file, tls.key_file) they can read. False only to check a copy on a
            medium whose file system has no modes (a FAT card written by ``denen flash``, where every file looks
            readable by all); the gateway runs a mode-600 copy of it, which is checked.
        parsed_cache: a file in the gateway's state directory where the parsed YAML is kept between starts
            (:mod:`agent.config.parsed`): a restart with the same text validates that instead of parsing again.

    Returns:
        The validated configuration; ``Config.warnings`` lists things that are valid but suspicious.

    Raises:
        ConfigError: listing every problem found, each with file, line, column, key and hint.
    """
    cache = Path(parsed_cache) if parsed_cache is not None else None
    return _with_warnings(*config_file().load(path, check_modes=check_modes, parsed_cache=cache))


def parse_config(text: str, *, source: str = "<string>", base_dir: str | os.PathLike[str] | None = None) -> Config:
    """Parse and validate config text.

    The text comes from no file, so there is no file mode to check for inline secrets (see :func:`load_config`);
    secret files it names are checked.

    Args:
        text: The YAML document.
        source: Name used as the file in error messages.
        base_dir: Directory that relative paths are resolved against; default: the directory of ``source`` when
            it names a file (not ``<...>``), otherwise the current directory.

    Raises:
        ConfigError: listing every problem found.
    """
    return _with_warnings(*config_file().parse(text, source=source, base_dir=base_dir))


def _hex_text_keys(data: object) -> tuple[tuple[object, ...], ...]:
    """:data:`_HEX_TEXT_KEYS` and those of the settings sections of the drivers the raw data names."""
    radios = data.get("radios") if isinstance(data, Mapping) else None
    return (*_HEX_TEXT_KEYS, *section_hex_text_keys(drivers_named(radios)))


def _model_for(plain: object) -> type[Config]:
    """The Config model for the raw data: typed sections for the drivers its radios name, no other driver loaded."""
    return config_model(drivers_named(plain.get("radios") if isinstance(plain, Mapping) else None))


@functools.cache
def config_file() -> ModelFile[Config]:
    """The gateway's config file, for the generic loader. Made on first use: the loader imports the YAML parser,
    which the long-running ``denen run`` never needs (it receives its config validated, agent.config.handoff)."""
    from agent.config.loader import ModelFile  # noqa: PLC0415

    return ModelFile(
        Config,
        checks=lambda plain: _collection_problems(plain.get("radios"), plain.get("nodes")),
        warnings=_warning_problems, hex_text_keys=_hex_text_keys, model_for=_model_for, example="config/demo.yaml",
        sections=("gateway", "radios"), service_user="the agent's user",
    )


def _with_warnings(config: Config, found: tuple[ConfigIssue, ...]) -> Config:
    config._warnings = found
    return config
