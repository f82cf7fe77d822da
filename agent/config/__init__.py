"""The agent's configuration: one YAML file, validated by pydantic, with errors that point at the bad line.

Public API::

    load_config(path, *, check_modes=True) -> Config   read, parse and validate a file
    parse_config(text, *, source=...) -> Config  the same for text already in memory
    config_json_schema() -> dict                 JSON Schema for editor completion
    write_json_schema(path)                      writes it (``denen config schema``)
    config_reference() -> str                    the Markdown key reference kept in config/README.md
    driver_names() -> tuple[str, ...]            radio driver names accepted in ``radios[].driver``

The generic loader, shared with other config files (``agent.bridge.config``)::

    read_config_file(path) -> (str, int)                        read a file and its mode (errors as ConfigError)
    read_config_text(path) -> str                               the same, text only
    parse_yaml_model(text, model, *, source, base_dir, checks, warnings, file_mode, ...) -> (model, warnings)
    ConfigSection, config_problem(), config_problems()          base class and validator errors
    resolve_config_path(), check_readable_file()                path helpers for validators
    SECRET_FILE, env_secret_name(), read_env_secret(),          the three ways to give a secret (inline, file,
    secret_source_problems()                                    environment variable) and their checks

Every problem found is collected, then raised together as one :class:`~agent.errors.ConfigError` whose issues
each carry the file, the 1-based line and column of the offending key or list item, the dotted key
(``radios[0].p2p.spreading_factor``), a plain-English message with units, and a hint.

How the line numbers are kept: ruamel.yaml's round-trip loader records the position of every mapping key
(``CommentedMap.lc.key(k)``) and sequence item (``CommentedSeq.lc.item(i)``). The loaded tree is converted to
plain dicts and lists for pydantic, and each error's ``loc`` tuple is walked back through the ruamel tree to find
the line. Problems pydantic cannot see (YAML syntax, tabs, duplicate keys, an empty file, a top level that is not
a mapping) are found before validation, also with line numbers.

Rules that span several keys are checked where their data lives, and raise :class:`_Problems` carrying the exact
sub-key, so that they too point at the right line:

* inside one section (key vs key_file, p2p section vs driver, channel vs bandwidth, reconnect bounds) by a
  ``model_validator`` of that section, which pydantic runs for every section whose own keys are valid;
* across list items (unique radio names, unique node ids and names, ``nodes[].radio`` naming a radio) by
  :func:`_collection_problems`. The loader runs it on the raw data even when other keys failed, so that one run
  reports everything; a :class:`Config` built in Python runs it from its own validator.

Relative paths (``journal.path``, ``mqtt.password_file``, ``mqtt.tls.*_file``, ``nodes[].key_file``) are
resolved against the directory of the config file (as given, without following symlinks), so a config and its
key files can be copied together onto a gateway's SD card. ``radios[].port`` is not a path but a pyserial URL
and is passed through untouched.

Secrets (``mqtt.password``, ``nodes[].key``; the bridge's passwords and token) can be given three ways: inline
(``key:``), in a file (``key_file:``) or in an environment variable (``key_env:``, the variable's *name*; its
value is read and checked when the config is loaded, never logged). At most one of the three per secret. Who may
read them is checked by the loader (:func:`_secret_mode_problems`), from the fields' types, so every config
loaded through :func:`parse_yaml_model` gets the same rule: a secret field of type ``SecretStr`` written inline in
a config *file* that other users can read (``S_IROTH``), or a file named by a field marked :data:`SECRET_FILE`
that other users can read, is an error at that key's line; readable by the group only is a warning (a ``denen``
group is a legitimate setup). Text that does not come from a file (:func:`parse_config`) has no mode to check;
the secret files it names still are.
"""

from __future__ import annotations

import ipaddress
import json
import logging
import os
import re
import stat
import types
import typing
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    SecretStr,
    ValidationError,
    ValidationInfo,
    WithJsonSchema,
    field_validator,
    model_validator,
)
from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined
from ruamel.yaml import YAML
from ruamel.yaml.comments import CommentedMap, CommentedSeq
from ruamel.yaml.error import MarkedYAMLError, YAMLError
from ruamel.yaml.reader import ReaderError
from ruamel.yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode
from ruamel.yaml.scalarint import BinaryInt, HexCapsInt, HexInt, OctalInt

from agent.errors import ConfigError, ConfigIssue
from drivers.settings import Loc, Problem, Problems, Section, choices_hint, did_you_mean, problem
from agent.gateway.fieldio import GpioConfig
from agent.gateway.receipts import ReceiptsConfig
from agent.rules import RulesConfig
from agent.tools.status import DEFAULT_JOURNAL_PATH

__all__ = [
    "NODE_KINDS",
    "SECRET_FILE",
    "Config",
    "Es920Config",
    "GatewayConfig",
    "HealthConfig",
    "JournalConfig",
    "LocationConfig",
    "LogConfig",
    "MqttConfig",
    "NodeConfig",
    "P2pConfig",
    "RadioConfig",
    "ConfigSection",
    "TlsConfig",
    "SecretFile",
    "check_readable_file",
    "config_json_schema",
    "config_problem",
    "config_problems",
    "config_reference",
    "driver_names",
    "is_loopback_host",
    "env_secret_name",
    "load_config",
    "normalise_node_id",
    "parse_config",
    "parse_yaml_model",
    "read_config_file",
    "read_config_text",
    "read_env_secret",
    "resolve_config_path",
    "secret_source_problems",
    "tls_insecure_warning",
    "write_json_schema",
    "write_reference",
]

log = logging.getLogger(__name__)

_M = TypeVar("_M", bound=BaseModel)

#: Driver names always accepted, whether or not the registry ``drivers.radio.DRIVERS`` can be imported.
BUILTIN_DRIVERS: tuple[str, ...] = ("rak3172", "es920lr")

#: Which settings section belongs to which driver. A driver not listed here takes neither section.
SECTION_FOR_DRIVER: dict[str, str] = {"rak3172": "p2p", "es920lr": "es920"}

NodeKind = Literal["sos", "trap", "water_level", "rain", "tilt", "weather", "heartbeat"]
#: The node kinds of ``nodes[].kind`` (PROTOCOLS.md §9 kinds; receipt and vendor kinds are not node kinds).
NODE_KINDS: tuple[str, ...] = typing.get_args(NodeKind)

# Japan 920 MHz band for LoRa under ARIB STD-T108 (PROTOCOLS.md §6): unit channels 24..38, 200 kHz apart.
JP_FREQ_MIN_HZ = 920_600_000
JP_FREQ_MAX_HZ = 923_400_000
JP_FREQ_STEP_HZ = 200_000

# Validation context keys (pydantic ``context=``).
_CTX_BASE_DIR = "base_dir"
_CTX_LOADER = "denen_loader"  # set by the loader, which runs the collection checks itself on the raw data

_NAME_ID = r"^[a-z0-9][a-z0-9_-]{0,62}$"
_NAME_RADIO = r"^[a-z0-9_-]{1,32}$"
_NAME_NODE = r"^[a-z0-9_-]{1,64}$"
_HEX = frozenset("0123456789abcdefABCDEF")

# Units shown in range errors, found from the key's suffix so each field states it once, in its name.
_UNIT_BY_SUFFIX: tuple[tuple[str, str], ...] = (
    ("_khz", " kHz"),
    ("_hz", " Hz"),
    ("_dbm", " dBm"),
    ("_mb", " MB"),
    ("_s", " s"),
    ("baudrate", " baud"),
)

# Keys whose values are never shown in messages: the secrets, and the *_env keys, in case a secret was written
# where its variable's name belongs.
_SECRET_KEYS = frozenset({"key", "password", "token", "key_env", "password_env", "token_env"})

# Names accepted in key_env / password_env / token_env. Upper case only: the convention for environment variables,
# and a guard against a secret pasted where a name belongs, which would then be echoed as "variable ... not set".
_ENV_NAME_RE = re.compile(r"^[A-Z_][A-Z0-9_]{0,127}$")
_ENV_EXAMPLES = {"key": "DENEN_KEY_TRAP_NORTH_3", "password": "DENEN_MQTT_PASSWORD", "token": "DENEN_INFLUX_TOKEN"}


@dataclass(frozen=True)
class SecretFile:
    """Marks a config field whose value names a file holding a secret (``Annotated[str | None, SECRET_FILE]``).

    The loader refuses such a file when other users can read it, and warns when its group can.
    """


#: The marker instance put in the ``Annotated`` metadata of secret-file fields.
SECRET_FILE = SecretFile()


# ---------------------------------------------------------------------------------------------------------------
# Problems raised from validators


_Problem = Problem
_Problems = Problems
_problem = problem
_did_you_mean = did_you_mean
_choices_hint = choices_hint


# ---------------------------------------------------------------------------------------------------------------
# Value helpers


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


def normalise_node_id(value: object) -> str:
    """Normalise a node id to 8 lowercase hex digits.

    Args:
        value: 8 hex digits as text (``"00A1B2C3"``), or the id as an integer 0..0xFFFFFFFF.

    Raises:
        ValueError: the value is not a node id; the message is plain English (a ``_Problems`` carrying a hint).
    """
    hint = "write the node id as 8 hex digits in quotes, e.g. id: \"00a1b2c3\" (the uint32 id in the node's frames)"
    if isinstance(value, bool):
        raise _problem("node id must be 8 hex digits, not true/false", hint)
    if isinstance(value, int):
        if not 0 <= value <= 0xFFFFFFFF:
            raise _problem(f"node id {value} does not fit in 32 bits (0..4294967295)", hint)
        return f"{value:08x}"
    if isinstance(value, float):
        # An unquoted id such as 1E000001 is a float to YAML; its digits are lost, so refuse it outright.
        raise _problem("node id was read as a decimal number by YAML, so its hex digits are lost", hint)
    if not isinstance(value, str):
        raise _problem("node id must be 8 hex digits", hint)
    text = value.strip()
    if len(text) != 8 or not set(text) <= _HEX:
        bad = "" if set(text) <= _HEX else ", and has characters that are not hex digits (0-9, a-f)"
        raise _problem(f"node id '{text}' is not 8 hex digits: it has {len(text)} characters{bad}", hint)
    return text.lower()


def _parse_hex_key(text: str, *, what: str) -> str:
    """Check a 128-bit AES key written as hex and return it in lowercase.

    The messages name the length and the kind of mistake but never the digits, so that a key cannot leak into a
    log through an error message.
    """
    hint = "an AES-128 node key is 32 hex digits (16 bytes), e.g. generated with: openssl rand -hex 16"
    cleaned = text.strip()
    if not set(cleaned) <= _HEX:
        raise _problem(f"{what} contains characters that are not hex digits (0-9, a-f)", hint)
    if len(cleaned) != 32:
        raise _problem(f"{what} must be 32 hex digits (16 bytes), but has {len(cleaned)}", hint)
    return cleaned.lower()


def _read_key_file(path: str) -> bytes:
    """Read a node key file: one line of 32 hex digits; blank lines and ``#`` comment lines are ignored.

    Raises:
        _Problems: when the file is missing, unreadable or does not hold one valid key.
    """
    try:
        raw = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise _problem(f"key file {path} does not exist", _path_hint()) from None
    except IsADirectoryError:
        raise _problem(f"key file {path} is a directory, not a file", _path_hint()) from None
    except PermissionError:
        raise _problem(
            f"key file {path} cannot be read by this user",
            "the agent must be able to read it: check the file's owner and mode (e.g. chown denen, chmod 600)",
        ) from None
    except UnicodeDecodeError:
        raise _problem(f"key file {path} is not text", "the file must hold the key as 32 hex digits") from None
    except OSError as exc:
        raise _problem(f"key file {path} cannot be read: {exc.strerror}") from None
    lines = [ln.strip() for ln in raw.splitlines() if ln.strip() and not ln.strip().startswith("#")]
    if len(lines) != 1:
        raise _problem(
            f"key file {path} must hold exactly one key line, found {len(lines)}",
            "write the key as one line of 32 hex digits; lines starting with # are ignored",
        )
    return bytes.fromhex(_parse_hex_key(lines[0], what=f"the key in {path}"))


def _path_hint() -> str:
    return "relative paths are resolved against the directory of the config file"


def _resolve_path(value: str, info: ValidationInfo) -> str:
    """Resolve a relative path against the config file's directory (from the validation context)."""
    path = Path(value)
    base = (info.context or {}).get(_CTX_BASE_DIR)
    if not path.is_absolute() and base is not None:
        path = Path(base) / path
    return str(path)


def _check_readable_file(path: str, what: str) -> None:
    p = Path(path)
    try:
        p.stat()
    except FileNotFoundError:
        pass
    except OSError as exc:  # a name too long, a loop of links ...
        raise _problem(f"{what} {path[:80]} cannot be used: {exc.strerror}", _path_hint()) from None
    if not p.exists():
        raise _problem(f"{what} {path} does not exist", _path_hint() + "; fix the path or create the file")
    if not p.is_file():
        raise _problem(f"{what} {path} is not a regular file", _path_hint())
    if not os.access(p, os.R_OK):
        raise _problem(
            f"{what} {path} cannot be read by this user",
            "check the file's owner and mode; the agent must be able to read it",
        )


# ---------------------------------------------------------------------------------------------------------------
# Models


_Section = Section


#: Base class for the sections of other config files loaded with :func:`parse_yaml_model` (the bridge's): unknown
#: keys are errors, the model is frozen, and pydantic never echoes input values (secrets) in its errors.
ConfigSection = _Section


def config_problem(message: str, hint: str | None = None, subloc: Loc = ()) -> ValueError:
    """The exception a field or model validator raises for one problem, reported at the validator's key (or at
    ``subloc`` below it) with ``hint``. Never put secret values in ``message``."""
    return _problem(message, hint, subloc)


def config_problems(problems: Iterable[tuple[Loc, str, str | None]]) -> ValueError:
    """Like :func:`config_problem` for several problems at once: (subloc, message, hint) each."""
    return _Problems(_Problem(subloc, message, hint) for subloc, message, hint in problems)


def resolve_config_path(value: str, info: ValidationInfo) -> str:
    """Resolve a relative path against the loaded config file's directory (for field validators)."""
    return _resolve_path(value, info)


def check_readable_file(path: str, what: str) -> None:
    """Raise a config problem unless ``path`` is a regular file this user can read (``what`` names it)."""
    _check_readable_file(path, what)


def env_secret_name(value: str, key: str) -> str:
    """Check the value of a ``*_env`` key (``key_env``, ``password_env``, ``token_env``): the name of an
    environment variable, in upper case. Returns it; the value is never put in the message, since a secret pasted
    here by mistake must not be shown.

    Raises:
        ValueError: a config problem (from a field validator it is reported at the key's line).
    """
    if not _ENV_NAME_RE.fullmatch(value):
        secret = key.removesuffix("_env")
        example = _ENV_EXAMPLES.get(secret, f"DENEN_{secret.upper()}")
        raise _problem(
            f"{key} must be the name of an environment variable: upper-case letters A-Z, digits and '_', not "
            "starting with a digit",
            f"e.g. {key}: {example}; the {secret} itself goes into that variable, not into this file",
        )
    return value


def read_env_secret(name: str) -> str:
    """Return the value of environment variable ``name``, which must be set and not blank.

    The value is a secret: it is never logged or put in a message. Only the variable's name is.

    Raises:
        ValueError: a config problem naming the variable, with a hint on how to set it.
    """
    value = os.environ.get(name)
    hint = (f"set {name} in the service's environment (systemd: EnvironmentFile=/etc/denen/secrets.env, mode "
            f"600); to check the file with denen config validate, export it in your shell too")
    if value is None:
        raise _problem(f"environment variable {name} is not set", hint)
    if not value.strip():
        raise _problem(f"environment variable {name} is empty", hint)
    return value


def secret_source_problems(section: object, *names: str) -> list[tuple[Loc, str, str | None]]:
    """Problems for each secret ``name`` of ``section`` given more than one way (``name``, ``name_file``,
    ``name_env``), as (key, message, hint) below the section, for :func:`config_problems`."""
    found: list[tuple[Loc, str, str | None]] = []
    for name in names:
        ways = (name, f"{name}_file", f"{name}_env")
        given = [w for w in ways if getattr(section, w, None) is not None]
        if len(given) > 1:
            found.append(((given[-1],), f"give only one of {', '.join(ways[:-1])} and {ways[-1]}, not "
                          f"{' and '.join(given)}",
                          f"keep {name}_file or {name}_env, which keep the {name} out of this file"))
    return found


class GatewayConfig(_Section):
    """Identity of this gateway."""

    id: str = Field(
        pattern=_NAME_ID,
        description="Gateway id, unique across the deployment; used in MQTT topics. 1-63 characters: lowercase "
        "letters a-z, digits, '_' and '-', starting with a letter or digit (so never '/', '+' or '#').",
        examples=["gw-okutama-01"],
    )
    site: str = Field(
        pattern=_NAME_ID,
        description="Municipality or site tag, used to group gateways; same characters as gateway.id.",
        examples=["okutama"],
    )
    name: str | None = Field(
        default=None,
        max_length=200,
        description="Free-text display name (Japanese allowed), e.g. for dashboards. Optional.",
        examples=["奥多摩 林道ゲートウェイ"],
    )


class JournalConfig(_Section):
    """The durable on-disk journal (SQLite) that keeps every reading until the broker has it."""

    path: str = Field(
        default=DEFAULT_JOURNAL_PATH,
        min_length=1,
        description="Path of the SQLite journal file; its directory is created if missing. Relative paths are "
        "resolved against the config file's directory.",
    )
    quota_mb: float = Field(
        default=256,
        gt=0,
        description="Disk quota of the journal in megabytes (MB, 1 MB = 1048576 bytes). When full, the lowest "
        "priority readings are evicted first, oldest first; SOS and alarms never are.",
    )
    commit_window_ms: int = Field(
        default=250,
        ge=0,
        le=1000,
        description="Milliseconds telemetry and diagnostics readings (and the deletion of readings the broker "
        "acknowledged) may wait in memory to share one commit (one fsync) with the next ones: at field rates "
        "this divides the bytes written to the SD card and the CPU per reading. A power cut loses at most the "
        "frames read in the last commit_window_ms; after one, readings acknowledged in the last commit_window_ms "
        "may be sent once more (same id, an overwrite at the backend). SOS and alarms never wait: each commits "
        "at once, together with everything waiting. 0 commits at every wake-up.",
    )

    @field_validator("path")
    @classmethod
    def _resolve(cls, value: str, info: ValidationInfo) -> str:
        return _resolve_path(value, info)


class TlsConfig(_Section):
    """TLS settings for the MQTT connection. Every file named here must exist when the config is loaded."""

    ca_file: str | None = Field(
        default=None,
        description="PEM file of the CA certificate(s) that signed the broker's certificate; null uses the "
        "system's trusted CAs.",
    )
    cert_file: str | None = Field(
        default=None, description="PEM client certificate of this gateway (needs key_file). Optional."
    )
    key_file: Annotated[str | None, SECRET_FILE] = Field(
        default=None,
        description="PEM private key of the client certificate (needs cert_file). Optional. A secret: refused when "
        "other users can read it (chmod 600).",
    )
    insecure: bool = Field(
        default=False,
        description="Skip checking the broker's host name against its certificate. Only for tests; never in the "
        "field.",
    )

    @field_validator("ca_file", "cert_file", "key_file")
    @classmethod
    def _file_exists(cls, value: str | None, info: ValidationInfo) -> str | None:
        if value is None:
            return None
        path = _resolve_path(value, info)
        _check_readable_file(path, "TLS file")
        return path

    @model_validator(mode="after")
    def _pairs(self) -> TlsConfig:
        if (self.cert_file is None) != (self.key_file is None):
            given, missing = ("cert_file", "key_file") if self.key_file is None else ("key_file", "cert_file")
            raise _problem(
                f"{given} is set but {missing} is not: a client certificate needs its private key",
                "set both cert_file and key_file, or neither",
                subloc=(given,),
            )
        return self


class MqttConfig(_Section):
    """Connection to the MQTT broker and publishing limits."""

    host: str = Field(default="127.0.0.1", min_length=1, description="Host name or IP address of the MQTT broker.")
    port: int = Field(
        default=1883, ge=1, le=65535, description="TCP port of the MQTT broker (1883 plain, 8883 with TLS)."
    )
    client_id: str | None = Field(
        default=None,
        min_length=1,
        max_length=128,
        description="MQTT client id; null means 'denen-<gateway.id>'. Must be unique on the broker.",
    )
    username: str | None = Field(default=None, min_length=1, description="MQTT user name. Optional.")
    password: SecretStr | None = Field(
        default=None,
        description="MQTT password (secret: never printed or logged). Prefer password_file or password_env; a "
        "config file holding it must not be readable by other users (chmod 600). Needs username.",
    )
    password_file: Annotated[str | None, SECRET_FILE] = Field(
        default=None,
        description="Path of a file holding the MQTT password (trailing newline ignored), read at every connect. "
        "Refused when other users can read it (chmod 600). Relative paths are resolved against the config file's "
        "directory.",
    )
    password_env: str | None = Field(
        default=None,
        description="Name of an environment variable holding the MQTT password, e.g. DENEN_MQTT_PASSWORD; read "
        "when the config is loaded and must be set then (systemd: EnvironmentFile=). Only one of password, "
        "password_file and password_env.",
    )
    tls: TlsConfig | Literal[False] | None = Field(
        default=None,
        description="TLS settings. Required when host is not a loopback address (127.0.0.0/8, ::1, localhost); "
        "'false' says plain TCP on purpose (only on a trusted private network, e.g. a VPN), and the agent warns "
        "about it at every start.",
    )
    keepalive_s: int = Field(
        default=30,
        ge=5,
        le=3600,
        description="MQTT keepalive in seconds (5..3600); the broker publishes the Last Will (offline status) "
        "after about 1.5 times this without contact.",
    )
    topic_prefix: str = Field(
        default="denen/v1",
        description="First topic levels of everything this gateway publishes, e.g. denen/v1; no '+' or '#', no "
        "leading or trailing '/'.",
    )
    batch_max_readings: int = Field(
        default=200, ge=1, le=5000, description="Most readings put in one MQTT message (1..5000)."
    )
    batch_max_kb: int = Field(
        default=256,
        ge=4,
        le=1024,
        description="Largest MQTT message of readings, in KiB (4..1024): a batch closes when the next reading would "
        "make it larger (one reading always goes). The backend's broker (max_packet_size) and bridge "
        "(limits.max_message_kb) refuse larger messages, so this keeps every batch deliverable.",
    )
    inflight_window: int = Field(
        default=8, ge=1, le=100, description="Most MQTT messages awaiting the broker's PUBACK at once (1..100)."
    )
    reconnect_min_s: float = Field(
        default=1.0,
        gt=0,
        le=3600,
        description="First wait before reconnecting to the broker, in seconds; doubled after each failure.",
    )
    reconnect_max_s: float = Field(
        default=60.0,
        gt=0,
        le=86400,
        description="Longest wait between reconnect attempts, in seconds; at least reconnect_min_s.",
    )

    # The password read from password_env when the config was loaded (not a field: never dumped or shown).
    _env_password: SecretStr | None = PrivateAttr(default=None)

    @field_validator("password", mode="before")
    @classmethod
    def _password_text(cls, value: object) -> object:
        if value is not None and not isinstance(value, str | SecretStr):
            raise _problem("password must be text", "put the password in quotes, or better use password_file")
        return value

    @field_validator("password_file")
    @classmethod
    def _password_file(cls, value: str | None, info: ValidationInfo) -> str | None:
        if value is None:
            return None
        path = _resolve_path(value, info)
        _check_readable_file(path, "password file")
        return path

    @field_validator("password_env")
    @classmethod
    def _password_env(cls, value: str | None) -> str | None:
        if value is None:
            return None
        name = env_secret_name(value, "password_env")
        read_env_secret(name)  # must be set now: fail at load time, not at the first connect
        return name

    @field_validator("topic_prefix")
    @classmethod
    def _topic_prefix(cls, value: str) -> str:
        hint = "use plain topic levels separated by '/', e.g. denen/v1"
        if not value:
            raise _problem("topic_prefix must not be empty", hint)
        if "+" in value or "#" in value:
            raise _problem(f"topic_prefix '{value}' contains the MQTT wildcard '+' or '#'", hint)
        if value.startswith("/") or value.endswith("/"):
            raise _problem(f"topic_prefix '{value}' must not start or end with '/'", hint)
        if "//" in value:
            raise _problem(f"topic_prefix '{value}' has an empty topic level ('//')", hint)
        if "\x00" in value or any(ch.isspace() for ch in value):
            raise _problem("topic_prefix must not contain spaces or control characters", hint)
        return value

    @model_validator(mode="after")
    def _cross(self) -> MqttConfig:
        problems = [_Problem(loc, msg, hint) for loc, msg, hint in secret_source_problems(self, "password")]
        given = [k for k in ("password", "password_file", "password_env") if getattr(self, k) is not None]
        if given and self.username is None:
            problems.append(
                _Problem((given[0],), "a password is set but username is not", "MQTT sends a password only with a "
                         "user name: set mqtt.username")
            )
        if self.reconnect_max_s < self.reconnect_min_s:
            problems.append(
                _Problem(
                    ("reconnect_max_s",),
                    f"reconnect_max_s ({self.reconnect_max_s:g} s) is shorter than reconnect_min_s "
                    f"({self.reconnect_min_s:g} s)",
                    "reconnect_max_s must be at least reconnect_min_s",
                )
            )
        if self.tls is None and not is_loopback_host(self.host):
            problems.append(
                _Problem(
                    ("host",),
                    f"the broker {self.host} is not on this machine and tls is not set: the MQTT login and every "
                    "reading would cross the network in clear",
                    "add tls: {ca_file: <the CA of the broker's certificate>} and port: 8883, or, only on a "
                    "trusted private network, tls: false",
                )
            )
        if problems:
            raise _Problems(problems)
        if self.password_env is not None:
            self._env_password = SecretStr(read_env_secret(self.password_env))
        return self

    def tls_settings(self) -> TlsConfig | None:
        """The TLS settings, or None for plain TCP (``tls`` absent, which only a loopback host may have, or
        ``false``)."""
        return self.tls or None

    def password_value(self) -> str | None:
        """Return the MQTT password from ``password``, ``password_env`` or ``password_file``, or None when none is
        set.

        The variable was read when the config was loaded; the file is read on every call, so a rotated password
        is picked up on the next reconnect.

        Raises:
            ConfigError: the password file can no longer be read.
        """
        if self.password is not None:
            return self.password.get_secret_value()
        if self._env_password is not None:
            return self._env_password.get_secret_value()
        if self.password_file is None:
            return None
        try:
            return Path(self.password_file).read_text(encoding="utf-8").rstrip("\r\n")
        except OSError as exc:
            raise ConfigError(
                [ConfigIssue(self.password_file, None, None, "mqtt.password_file",
                             f"cannot read the password file: {exc.strerror}", "check the file's path and mode")]
            ) from None

    def effective_client_id(self, gateway_id: str) -> str:
        """Return ``client_id``, or ``denen-<gateway_id>`` when it is not set."""
        return self.client_id if self.client_id is not None else f"denen-{gateway_id}"


class P2pConfig(_Section):
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
            raise _problem(
                f"{value} Hz ({(f'{value / 1e6:g} MHz' if abs(value) < 10**15 else 'not a radio frequency')}) is outside Japan's 920 MHz LoRa band "
                f"(920.6..923.4 MHz)",
                hint,
            )
        offset = (value - JP_FREQ_MIN_HZ) % JP_FREQ_STEP_HZ
        if offset:
            below = value - offset
            above = below + JP_FREQ_STEP_HZ
            nearest = below if offset < JP_FREQ_STEP_HZ // 2 or above > JP_FREQ_MAX_HZ else above
            raise _problem(
                f"{value} Hz is not on the 200 kHz channel grid; nearest channel: {nearest} Hz", hint
            )
        return value


_ES920_MAX_CHANNEL = {62.5: 15, 125: 15, 250: 7, 500: 5}


class Es920Config(_Section):
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
            raise _problem(f"{info.field_name} must be 4 hex digits", hint)
        if isinstance(value, int):
            number = value
        else:
            text = value.strip()
            if len(text) != 4 or not set(text) <= _HEX:
                raise _problem(f"{info.field_name} '{text}' is not 4 hex digits", hint)
            number = int(text, 16)
        if not low <= number <= high:
            raise _problem(f"{info.field_name} {number:04X} is out of range {low:04X}..{high:04X}", hint)
        return f"{number:04X}"

    @model_validator(mode="after")
    def _channel_fits_bandwidth(self) -> Es920Config:
        top = _ES920_MAX_CHANNEL[self.bandwidth_khz]
        if self.channel > top:
            raise _problem(
                f"channel {self.channel} does not exist at {self.bandwidth_khz:g} kHz bandwidth: channels 1..{top} "
                f"only",
                "wider bandwidths bundle several 200 kHz channels: use channel 1..7 at 250 kHz and 1..5 at 500 kHz, "
                "or a narrower bandwidth_khz",
                subloc=("channel",),
            )
        return self


class LocationConfig(_Section):
    """Installed position of a node (WGS 84)."""

    lat: float = Field(ge=-90, le=90, description="Latitude in degrees, -90..90 (north positive).")
    lon: float = Field(ge=-180, le=180, description="Longitude in degrees, -180..180 (east positive).")


class RadioConfig(_Section):
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
            raise _problem(f"unknown radio driver '{value}'", _choices_hint(value, names, "valid drivers"))
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
                raise _Problems(problems)
        return self


def _section_problems(radio: object) -> list[_Problem]:
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
                _Problem(
                    (section,),
                    f"the '{section}:' section is only for driver {owner}, but this radio uses driver '{driver}'",
                    f"{fix}, or change the driver",
                )
            )
    return problems


_NODE_ID_SCHEMA = WithJsonSchema(
    {
        "anyOf": [
            {"type": "string", "pattern": "^[0-9A-Fa-f]{8}$"},
            {"type": "integer", "minimum": 0, "maximum": 0xFFFFFFFF},
        ]
    }
)
_KEY_SCHEMA = WithJsonSchema(
    {"type": ["string", "null"], "pattern": "^[0-9A-Fa-f]{32}$", "format": "password", "writeOnly": True}
)


class NodeConfig(_Section):
    """One sensor node this gateway expects to hear."""

    id: Annotated[str, _NODE_ID_SCHEMA] = Field(
        description="Node id: the uint32 node id of the denen frame, written as 8 hex digits in quotes "
        "(\"00A1B2C3\"), or as an integer (0x00A1B2C3). Stored as 8 lowercase hex digits. Unique.",
    )
    name: str = Field(
        pattern=_NAME_NODE,
        description="Node name, unique in this file: 1-64 of a-z, 0-9, '_' and '-'. Shown on dashboards and alerts.",
        examples=["trap-north-3"],
    )
    kind: NodeKind = Field(
        description="What the node is expected to send: sos, trap, water_level, rain, tilt, weather or heartbeat. "
        "Heartbeat frames are accepted from any node.",
    )
    key: Annotated[SecretStr | None, _KEY_SCHEMA] = Field(
        default=None,
        description="AES-128 key of the node's frame MIC as 32 hex digits, in quotes (secret: never printed or "
        "logged). Prefer key_file or key_env; a config file holding it must not be readable by other users "
        "(chmod 600). Only one of key, key_file and key_env.",
    )
    key_file: Annotated[str | None, SECRET_FILE] = Field(
        default=None,
        description="Path of a file holding the node key as one line of 32 hex digits (# comment lines allowed). "
        "Read and checked at load time; refused when other users can read it (chmod 600). Relative paths are "
        "resolved against the config file's directory.",
    )
    key_env: str | None = Field(
        default=None,
        description="Name of an environment variable holding the node key as 32 hex digits, e.g. "
        "DENEN_KEY_TRAP_NORTH_3; read and checked when the config is loaded, so it must be set then (systemd: "
        "EnvironmentFile=).",
    )
    unauthenticated: Literal["reject", "flag"] = Field(
        default="reject",
        description="What to do with a frame without MIC from this node: reject (quarantine it) or flag (accept "
        "it, marked unauthenticated). reject needs a key.",
    )
    interval_s: int = Field(
        default=600,
        ge=1,
        description="Expected reporting interval in seconds (e.g. 600 for 10 minutes, 86400 for a daily "
        "heartbeat). A node silent for rules.silence_factor x interval_s (default 3 x) raises node_silent, and "
        "denen monitor marks it LATE at the same threshold.",
    )
    location: LocationConfig | None = Field(default=None, description="Installed position {lat, lon}. Optional.")
    radio: str | None = Field(
        default=None,
        description="Only accept this node through the radio of this name (must be listed in radios). Optional: "
        "null accepts it through any radio.",
    )

    # The key read from key_env when the config was loaded (not a field: never dumped or shown).
    _env_key: bytes | None = PrivateAttr(default=None)

    @field_validator("id", mode="before")
    @classmethod
    def _node_id(cls, value: object) -> str:
        return normalise_node_id(value)

    @field_validator("key", mode="before")
    @classmethod
    def _key(cls, value: object) -> object:
        if value is None:
            return None
        if isinstance(value, SecretStr):
            value = value.get_secret_value()
        if not isinstance(value, str):
            raise _problem(
                "key was not read as text (YAML took it for a number)",
                "write the key as 32 hex digits in quotes, e.g. key: \"...\"",
            )
        return SecretStr(_parse_hex_key(value, what="key"))

    @field_validator("key_file")
    @classmethod
    def _key_file(cls, value: str | None, info: ValidationInfo) -> str | None:
        if value is None:
            return None
        path = _resolve_path(value, info)
        _read_key_file(path)  # fail at load time, not when the first frame arrives
        return path

    @field_validator("key_env")
    @classmethod
    def _key_env(cls, value: str | None) -> str | None:
        if value is None:
            return None
        name = env_secret_name(value, "key_env")
        _parse_hex_key(read_env_secret(name), what=f"the key in environment variable {name}")
        return name

    @model_validator(mode="after")
    def _authentication(self) -> NodeConfig:
        both = secret_source_problems(self, "key")
        if both:
            raise _Problems(_Problem(loc, msg, hint) for loc, msg, hint in both)
        if self.key is None and self.key_file is None and self.key_env is None and self.unauthenticated == "reject":
            raise _problem(
                f"node '{self.name}' has no key, and unauthenticated: reject drops every frame without a MIC, so "
                "this node could never be heard",
                "add a key (key_file:, key_env: or key:), or set unauthenticated: flag",
                subloc=("unauthenticated",),
            )
        if self.key_env is not None:
            # Checked by the field validator already; read once more to keep it, as bytes, for key_bytes().
            self._env_key = bytes.fromhex(_parse_hex_key(read_env_secret(self.key_env), what="the key"))
        return self

    @property
    def node_id(self) -> int:
        """The node id as the uint32 carried in the frame."""
        return int(self.id, 16)

    def key_bytes(self) -> bytes | None:
        """Return the node's 16-byte AES key from ``key``, ``key_env`` or ``key_file``, or None when the node has
        no key.

        The variable was read when the config was loaded; the key file is read again on every call.

        Raises:
            ConfigError: the key file has become unreadable or invalid since the config was loaded.
        """
        if self.key is not None:
            return bytes.fromhex(self.key.get_secret_value())
        if self._env_key is not None:
            return self._env_key
        if self.key_file is None:
            return None
        try:
            return _read_key_file(self.key_file)
        except _Problems as exc:
            raise ConfigError(
                [ConfigIssue(self.key_file, None, None, f"nodes[{self.name}].key_file", p.message, p.hint)
                 for p in exc.problems]
            ) from None


class HealthConfig(_Section):
    """The gateway's own health reports."""

    interval_s: int = Field(
        default=60, ge=10, le=86400, description="Seconds between health publications (10..86400)."
    )


class LogConfig(_Section):
    """Logging."""

    level: Literal["debug", "info", "warning", "error"] = Field(
        default="info", description="Log level: debug, info, warning or error."
    )


class Config(_Section):
    """The whole agent configuration (one YAML file)."""

    model_config = ConfigDict(
        title="denen agent configuration",
        json_schema_extra={"$schema": "https://json-schema.org/draft/2020-12/schema"},
    )

    gateway: GatewayConfig = Field(description="Identity of this gateway (required).")
    journal: JournalConfig = Field(default_factory=JournalConfig, description="The durable reading journal.")
    mqtt: MqttConfig = Field(default_factory=MqttConfig, description="The MQTT broker connection.")
    radios: list[RadioConfig] = Field(
        min_length=1, description="Radio modules on serial ports; at least one, names unique."
    )
    nodes: list[NodeConfig] = Field(
        default_factory=list, description="Sensor nodes this gateway expects; ids and names unique."
    )
    unknown_nodes: Literal["quarantine", "accept"] = Field(
        default="quarantine",
        description="Frames from nodes not listed in nodes: quarantine (keep aside for inspection) or accept.",
    )
    unknown_nodes_max: int = Field(
        default=1000,
        ge=1,
        le=100_000,
        description="With unknown_nodes: accept, the most nodes not listed in nodes: whose state (replay window, "
        "last seen) is kept (1..100000); the least recently heard is dropped to make room for a new one. Listed "
        "nodes are never dropped.",
    )
    unknown_nodes_forget_after_s: int = Field(
        default=7 * 86400,
        ge=60,
        le=10 * 366 * 86400,
        description="The state of a node not listed in nodes: is dropped when it has not been heard for this "
        "long, in seconds (default 604800, 7 days). Listed nodes are never dropped.",
    )
    health: HealthConfig = Field(default_factory=HealthConfig, description="Gateway health publishing.")
    rules: RulesConfig = Field(
        default_factory=RulesConfig,
        description="Edge alert rules, evaluated on the gateway even while the backhaul is down (agent/rules/).",
    )
    gpio: GpioConfig | None = Field(
        default=None, description="Status lamp, siren, installer test button and rain gauge on GPIO; none when absent.",
    )
    receipts: ReceiptsConfig = Field(
        default_factory=ReceiptsConfig,
        description="SOS receipts sent back to the caller's node, within ARIB STD-T108 airtime rules.",
    )
    log: LogConfig = Field(default_factory=LogConfig, description="Logging.")

    _node_by_id: dict[int, NodeConfig] = PrivateAttr(default_factory=dict)
    _radio_by_name: dict[str, RadioConfig] = PrivateAttr(default_factory=dict)
    _warnings: tuple[ConfigIssue, ...] = PrivateAttr(default=())

    @model_validator(mode="before")
    @classmethod
    def _empty_sections(cls, data: object) -> object:
        # A section key left with nothing under it (every line commented out) means "all defaults", not an error.
        if isinstance(data, Mapping):
            return {
                k: v for k, v in data.items()
                if not (v is None and k in ("journal", "mqtt", "nodes", "health", "log", "unknown_nodes", "rules", "gpio",
                                          "receipts"))
            }
        return data

    @model_validator(mode="after")
    def _collections(self, info: ValidationInfo) -> Config:
        # The loader runs these checks itself on the raw data (so they are reported even when other keys fail).
        if not (info.context or {}).get(_CTX_LOADER):
            found = _collection_problems(self.radios, self.nodes)
            if found:
                raise _Problems(_Problem(loc, msg, hint) for loc, msg, hint in found)
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


# ---------------------------------------------------------------------------------------------------------------
# Checks across list items


def _get(item: object, key: str) -> object:
    if isinstance(item, Mapping):
        return item.get(key)
    return getattr(item, key, None)


def _collection_problems(radios: object, nodes: object) -> list[tuple[Loc, str, str | None]]:
    """Find duplicate radio names, p2p/es920 sections given for the wrong driver, duplicate node ids/names and
    node.radio references to missing radios.

    Works on raw data (dicts, lists, anything) as well as on validated models; values that are themselves invalid
    are skipped, since their own error is reported elsewhere.
    """
    found: list[tuple[Loc, str, str | None]] = []
    radio_list = list(radios) if isinstance(radios, list | tuple) else []
    node_list = list(nodes) if isinstance(nodes, list | tuple) else []

    radio_names: dict[str, int] = {}
    for i, radio in enumerate(radio_list):
        found.extend((("radios", i, *p.subloc), p.message, p.hint) for p in _section_problems(radio))
        name = _get(radio, "name")
        if not isinstance(name, str):
            continue
        if name in radio_names:
            found.append(
                (("radios", i, "name"), f"radio name '{name}' is used twice (also radios[{radio_names[name]}])",
                 "give each radio a unique name")
            )
        else:
            radio_names[name] = i

    ids: dict[str, int] = {}
    names: dict[str, int] = {}
    for j, node in enumerate(node_list):
        try:
            node_id = normalise_node_id(_get(node, "id"))
        except _Problems:
            node_id = None
        if node_id is not None:
            if node_id in ids:
                found.append(
                    (("nodes", j, "id"), f"node id {node_id} is used twice (also nodes[{ids[node_id]}])",
                     "each node needs its own id; check the label on the node")
                )
            else:
                ids[node_id] = j
        name = _get(node, "name")
        if isinstance(name, str):
            if name in names:
                found.append(
                    (("nodes", j, "name"), f"node name '{name}' is used twice (also nodes[{names[name]}])",
                     "give each node a unique name")
                )
            else:
                names[name] = j
        radio = _get(node, "radio")
        if isinstance(radio, str) and radio not in radio_names:
            defined = list(radio_names)
            found.append(
                (("nodes", j, "radio"), f"radio '{radio}' is not defined in radios",
                 _choices_hint(radio, defined, "radios defined") if defined else "define the radio under radios:")
            )
    return found


# ---------------------------------------------------------------------------------------------------------------
# Loading


def load_config(path: str | os.PathLike[str], *, check_modes: bool = True) -> Config:
    """Read, parse and validate a config file.

    Relative paths inside the file are resolved against the file's directory.

    Args:
        path: The YAML file.
        check_modes: Refuse secrets that other users can read: inline secrets in a config file they can read, and
            secret files (key_file, password_file, tls.key_file) they can read. False only to check a copy on a
            medium whose file system has no modes (a FAT card written by ``denen flash``, where every file looks
            readable by all); the gateway runs a mode-600 copy of it, which is checked.

    Returns:
        The validated configuration; ``Config.warnings`` lists things that are valid but suspicious.

    Raises:
        ConfigError: listing every problem found, each with file, line, column, key and hint.
    """
    source = os.fspath(path)
    text, mode = read_config_file(source)
    return _parse_config(text, source=source, base_dir=Path(source).absolute().parent,
                         file_mode=mode if check_modes else None, secret_file_modes=check_modes)


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
    return _parse_config(text, source=source, base_dir=base_dir, file_mode=None, secret_file_modes=True)


def _parse_config(text: str, *, source: str, base_dir: str | os.PathLike[str] | None, file_mode: int | None,
                  secret_file_modes: bool) -> Config:
    config, found = parse_yaml_model(
        text, Config, source=source, base_dir=base_dir,
        checks=lambda plain: _collection_problems(plain.get("radios"), plain.get("nodes")),
        warnings=_warning_problems, hex_text_keys=_HEX_TEXT_KEYS, example="config/demo.yaml",
        sections=("gateway", "radios"), file_mode=file_mode, secret_file_modes=secret_file_modes,
        service_user="the agent's user",
    )
    config._warnings = found
    return config


# ---------------------------------------------------------------------------------------------------------------
# The generic loader: any pydantic model from YAML, with file:line:column, key and hint for every problem


#: A problem found by a check outside pydantic: (location of the key, message, hint).
Found = tuple[Loc, str, str | None]


def read_config_file(path: str | os.PathLike[str]) -> tuple[str, int]:
    """Read a YAML config file as text (a UTF-8 byte order mark is ignored), with the file's ``st_mode``.

    The mode is taken from the open file that was read (``fstat``), so it belongs to those bytes even if the
    file is replaced meanwhile. Pass it to :func:`parse_yaml_model` as ``file_mode``.

    Raises:
        ConfigError: the file is missing, unreadable or not UTF-8, as one issue naming the file (and the line of
            the first byte that is not UTF-8).
    """
    source = os.fspath(path)
    try:
        with open(source, "rb") as f:
            mode = os.fstat(f.fileno()).st_mode
            data = f.read()
    except FileNotFoundError:
        raise ConfigError(
            [ConfigIssue(source, None, None, "", "config file not found", "check the path")]
        ) from None
    except OSError as exc:
        raise ConfigError(
            [ConfigIssue(source, None, None, "", f"cannot read the config file: {exc.strerror}", None)]
        ) from None
    try:
        # utf-8-sig: editors on Windows laptops often save a BOM.
        return data.decode("utf-8-sig"), mode
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise ConfigError(
            [ConfigIssue(source, line, None, "", "the file is not valid UTF-8 text", "save the file as UTF-8")]
        ) from None


def read_config_text(path: str | os.PathLike[str]) -> str:
    """Read a YAML config file as text, like :func:`read_config_file` without the mode."""
    return read_config_file(path)[0]


def parse_yaml_model(
    text: str,
    model: type[_M],
    *,
    source: str = "<string>",
    base_dir: str | os.PathLike[str] | None = None,
    checks: Callable[[dict[str, Any]], Iterable[Found]] | None = None,
    warnings: Callable[[_M], Iterable[Found]] | None = None,
    hex_text_keys: Sequence[tuple[object, ...]] = (),
    example: str = "config/demo.yaml",
    sections: Sequence[str] | None = None,
    file_mode: int | None = None,
    secret_file_modes: bool = True,
    service_user: str = "the agent's user",
) -> tuple[_M, tuple[ConfigIssue, ...]]:
    """Parse YAML text and validate it as ``model``, reporting every problem with its file position.

    The agent's config and the bridge's config both load through here, so both report problems the same way:
    ``file:line:column: key: message (hint: ...)``.

    Args:
        text: The YAML document.
        model: The pydantic model of the whole file; its sections should derive from :class:`ConfigSection`.
        source: Name used as the file in error messages.
        base_dir: Directory that relative paths are resolved against (validators read it with
            :func:`resolve_config_path`); default: the directory of ``source`` when it names a file (not
            ``<...>``), otherwise the current directory.
        checks: Rules across sections or list items, run on the plain data even when other keys failed, so that
            one run reports everything; each problem is placed at its key's line.
        warnings: Valid settings that are probably a mistake, found on the validated model; returned and logged.
        hex_text_keys: Key paths whose unquoted all-digit values are turned back into the digits written (see
            ``_HEX_TEXT_KEYS``); ``int`` in a path matches any list index.
        example: The example file named in the hints for an empty file or a top level that is not a mapping.
        sections: Top-level keys named in the message for a top level that is not a mapping; default: the
            model's first two fields.
        file_mode: ``st_mode`` of the file the text was read from (:func:`read_config_file`), or None for text
            that comes from no file. A secret written inline (a ``SecretStr`` field) in a file other users can read
            is an error; readable by its group, a warning.
        secret_file_modes: Check who can read the files named by :data:`SECRET_FILE` fields: other users is an
            error, the group a warning. False only for a copy on a file system without modes (see load_config).
        service_user: Who should own secret files, for the hints (e.g. "the agent's user").

    Returns:
        The validated model and the warnings found.

    Raises:
        ConfigError: listing every problem found, sorted by line.
    """
    if base_dir is None:
        base_dir = Path(source).absolute().parent if not source.startswith("<") else Path.cwd()

    tab_issues = _tab_issues(text, source)
    if tab_issues:
        # The YAML parser would stop at the first tab with a less helpful message; report every tab line instead.
        raise ConfigError(tab_issues)

    yaml = YAML(typ="rt")
    # Duplicates are found on the node tree below, all of them and with both lines, so let the loader accept them.
    yaml.allow_duplicate_keys = True
    try:
        # One parse: the node tree (positions, duplicate keys) and the data built from that same tree. Parsing is
        # most of the time on a large config; load() would parse the text a second time.
        root_node = yaml.compose(text)
        data = yaml.constructor.construct_document(root_node) if root_node is not None else None
    except MarkedYAMLError as exc:
        raise ConfigError([_yaml_error_issue(exc, source)]) from None
    except ReaderError as exc:
        # A control character (NUL, DEL ...): the reader knows only its offset; turn it into line and column.
        pos = exc.position if isinstance(exc.position, int) else 0
        line = text.count("\n", 0, pos) + 1
        column = pos - (text.rfind("\n", 0, pos) + 1) + 1
        char = exc.character if isinstance(exc.character, int) else ord(str(exc.character)[:1] or "?")
        key = _key_at_line(text, line)
        raise ConfigError([ConfigIssue(
            source, line, column, key, f"the file holds a control character (code {char:#04x}) YAML does not allow",
            "delete it; editors show it as a box or ^? (a copy from a PDF or a terminal can bring one along)",
        )]) from None
    except YAMLError as exc:
        raise ConfigError([ConfigIssue(source, None, None, "", f"YAML error: {exc}", None)]) from None
    except Exception as exc:  # noqa: BLE001 - ruamel's constructors raise plain TypeError/ValueError on odd tags
        lines = text.splitlines()
        # ruamel gives no position here: point at the first construct that triggers this (an explicit tag, a merge,
        # a complex key), else at the first line with content.
        line = next((i for i, t in enumerate(lines, 1) if "!!" in t or "<<" in t or t.lstrip().startswith("?")),
                    next((i for i, t in enumerate(lines, 1) if t.strip() and not t.lstrip().startswith("#")), 1))
        raise ConfigError([ConfigIssue(
            source, line, None, _key_at_line(text, line) if line else "",
            f"YAML the loader cannot read ({type(exc).__name__}: {str(exc)[:120]})",
            "write plain keys and values; explicit tags (!!set, !!int ...), '?' complex keys and '<<' merges are not needed",
        )]) from None

    if data is None:
        raise ConfigError(
            [ConfigIssue(source, 1, 1, "", "the file is empty (or holds only comments)",
                         f"start from one of the examples in config/, e.g. {example}")]
        )
    if not isinstance(data, CommentedMap):
        what = "a list" if isinstance(data, CommentedSeq) else "a single value"
        line, col = (root_node.start_mark.line + 1, root_node.start_mark.column + 1) if root_node else (1, 1)
        named = ", ".join(f"{name}:" for name in (sections or list(model.model_fields)[:2]))
        raise ConfigError(
            [ConfigIssue(source, line, col, "", f"the top level must be a mapping of sections ({named}, "
                         f"...), but this file holds {what}",
                         f"each top-level key starts at column 1 and ends with ':'; see {example}")]
        )

    issues: list[ConfigIssue] = _duplicate_key_issues(root_node, source) if root_node is not None else []
    try:
        plain = _to_plain(data, (), hex_text_keys, _Budget())
    except _TooBig:
        lines = text.splitlines()
        line = next((i for i, t in enumerate(lines, 1) if "*" in t.split("#", 1)[0]), None)
        raise ConfigError([ConfigIssue(
            source, line, None, _key_at_line(text, line) if line else "",
            f"the file expands to more than {_Budget.LIMIT} values (YAML aliases)",
            "a gateway config is small: write values out instead of nesting aliases (*name)",
        )]) from None
    context = {_CTX_BASE_DIR: Path(base_dir), _CTX_LOADER: True}
    result: _M | None = None
    try:
        result = model.model_validate(plain, context=context)
    except ValidationError as exc:
        for err in _union_errors(exc.errors(include_url=False), plain):
            issues.extend(_issues_from_error(err, data, source, model))
    except (TypeError, OverflowError, OSError, ArithmeticError) as exc:
        # A validator met input of a shape nothing expected; still one clear line, never a traceback.
        issues.append(ConfigIssue(source, None, None, "", f"a value has an unexpected shape ({type(exc).__name__}: "
                                  f"{str(exc)[:120]})", "compare the file with the examples in config/"))
    for loc, message, hint in checks(plain) if checks is not None else ():
        issues.append(_issue_at(data, source, loc, message, hint))
    # On the plain data, so that it is reported with every other problem, even when validation failed.
    mode_errors, mode_warnings = _secret_mode_problems(
        plain, model, source=source, base_dir=Path(base_dir), file_mode=file_mode,
        secret_file_modes=secret_file_modes, service_user=service_user)
    issues.extend(_issue_at(data, source, loc, message, hint) for loc, message, hint in mode_errors)
    if file_mode is not None and stat.S_IMODE(file_mode) & stat.S_IWOTH:
        # Whoever can change the config can point the gateway at their own broker or add a node key.
        issues.append(ConfigIssue(source, None, None, "", f"every user on this machine can change this file (mode "
                                  f"{stat.S_IMODE(file_mode):03o})", f"chmod o-w {source}"))
    if issues or result is None:
        # from None: the chained ValidationError's text would include input values, which may be secrets.
        raise ConfigError(_sorted(issues)) from None

    more = list(warnings(result)) if warnings is not None else []
    found = tuple(_sorted(_issue_at(data, source, loc, message, hint)
                          for loc, message, hint in [*mode_warnings, *more]))
    for issue in found:
        log.warning("config warning: %s", issue)
    return result, found


def _secret_fields(data: object, model: type[BaseModel], loc: Loc = ()
                   ) -> Iterable[tuple[str, Loc, type[BaseModel], object]]:
    """Walk plain config data along its model and yield the secrets written in it: ("inline", key location, the
    section's model, value) for every ``SecretStr`` field, ("file", ...) for every :data:`SECRET_FILE` field.

    Keys the model does not know, and values of the wrong shape, are skipped: validation reports them.
    """
    if not isinstance(data, dict):
        return
    for key, value in data.items():
        field = model.model_fields.get(key)
        if field is None or value is None:
            continue
        inner, is_list = _unwrap(field.annotation)
        here = (*loc, key)
        if inner is SecretStr and value != "":
            yield "inline", here, model, value
        elif any(isinstance(m, SecretFile) for m in field.metadata) and isinstance(value, str):
            yield "file", here, model, value
        elif isinstance(inner, type) and issubclass(inner, BaseModel):
            if is_list and isinstance(value, list):
                for i, item in enumerate(value):
                    yield from _secret_fields(item, inner, (*here, i))
            elif not is_list:
                yield from _secret_fields(value, inner, here)


def _who_can_read(perms: int) -> str | None:
    """'every user' when other users may read a file of these permission bits, 'group' when its group may."""
    if perms & stat.S_IROTH:
        return "every user"
    if perms & stat.S_IRGRP:
        return "group"
    return None


def _secret_mode_problems(plain: dict[str, Any], model: type[BaseModel], *, source: str, base_dir: Path,
                          file_mode: int | None, secret_file_modes: bool, service_user: str
                          ) -> tuple[list[Found], list[Found]]:
    """(errors, warnings) for secrets that other users, or the group, can read.

    Other users: a secret in a file they can read is theirs, so the config is refused. The group: a service's
    own group (``denen``) reading its config is a legitimate setup, so only a warning.
    """
    errors: list[Found] = []
    warnings: list[Found] = []
    perms = stat.S_IMODE(file_mode) if file_mode is not None else 0
    config_readers = _who_can_read(perms)
    for what, loc, holder, value in _secret_fields(plain, model):
        name = str(loc[-1])
        if what == "inline":
            if config_readers is None:
                continue
            others = [k for k in (f"{name}_file", f"{name}_env") if k in holder.model_fields]
            move = " / ".join(others) if others else "a file of its own"
            if config_readers == "every user":
                errors.append((loc, f"this file holds a secret ({_dotted(loc)}) and every user on this machine can "
                               f"read it (mode {perms:03o})", f"chmod 600 {source}, or move the secret to {move}"))
            else:
                warnings.append((loc, f"this file holds a secret ({_dotted(loc)}) and its group can read it (mode "
                                 f"{perms:03o})", f"fine when the group is the service's own (e.g. denen); "
                                 f"otherwise chmod 600 {source}, or move the secret to {move}"))
            continue
        if not secret_file_modes or not isinstance(value, str):
            continue
        path = Path(value)
        if not path.is_absolute():
            path = base_dir / path  # as the field validators resolve it
        try:
            file_perms = stat.S_IMODE(path.stat().st_mode)
        except (OSError, ValueError):
            continue  # missing, unreadable, a bad name: the field's own validator reports it
        readers = _who_can_read(file_perms)
        if readers == "every user":
            errors.append((loc, f"secret file {path} can be read by every user on this machine (mode "
                           f"{file_perms:03o})", f"chmod 600 {path}, owned by {service_user}"))
        elif readers == "group":
            warnings.append((loc, f"secret file {path} can be read by its group (mode {file_perms:03o})",
                             f"fine when the group is the service's own (e.g. denen); otherwise chmod 600 {path}"))
    return errors, warnings


def _sorted(issues: Iterable[ConfigIssue]) -> list[ConfigIssue]:
    unique = list(dict.fromkeys(issues))
    return sorted(unique, key=lambda i: (i.line is None, i.line or 0, i.column or 0))


def _tab_issues(text: str, source: str) -> list[ConfigIssue]:
    issues = []
    for number, line in enumerate(text.splitlines(), start=1):
        indent = line[: len(line) - len(line.lstrip(" \t"))]
        rest = line[len(indent):]
        if "\t" in indent and rest and not rest.startswith("#"):
            issues.append(
                ConfigIssue(source, number, indent.index("\t") + 1, "", "a tab character is used for indentation",
                            "YAML indentation must use spaces; replace the tab with spaces")
            )
    return issues


_YAML_HINTS: tuple[tuple[str, str], ...] = (
    ("'\\t'", "YAML does not allow tab characters here; use spaces"),
    ("mapping values are not allowed", "a value containing ': ' must be put in quotes, or this line is indented "
     "wrongly"),
    ("could not find expected ':'", "each key must end with ':'; check this line and the one above"),
    ("expected <block end>", "the indentation is inconsistent: keys of one section must start in the same column"),
    ("did not find expected key", "the indentation is inconsistent, or a list item is missing its '- '"),
    ("did not find expected '-'", "the items of a list must all start with '- ' in the same column"),
    ("end of stream", "a quote or bracket is not closed"),
    ("expected ',' or", "a bracket or brace is not closed"),
    ("found undefined alias", "an alias (*name) refers to an anchor (&name) that is not defined above it"),
)


def _key_at_line(text: str, line: int) -> str:
    """The mapping key written on ``line`` (1-based), or ``""``: enough to point at the place in the file."""
    lines = text.split("\n")
    if not 1 <= line <= len(lines):
        return ""
    head = lines[line - 1].split(":", 1)[0].strip().lstrip("- ").strip()
    return head if head and ":" in lines[line - 1] else ""


def _yaml_error_issue(exc: MarkedYAMLError, source: str) -> ConfigIssue:
    mark = exc.problem_mark or exc.context_mark
    problem = str(exc.problem or exc.context or "cannot parse the file")
    hint = next((h for needle, h in _YAML_HINTS if needle in problem), "YAML errors often start on the line above")
    message = f"YAML syntax error: {problem}"
    if exc.context and exc.problem:
        message += f" ({exc.context})"
    line = mark.line + 1 if mark is not None else None
    column = mark.column + 1 if mark is not None else None
    return ConfigIssue(source, line, column, "", message, hint)


def _duplicate_key_issues(node: Node, source: str) -> list[ConfigIssue]:
    issues: list[ConfigIssue] = []
    seen_nodes: set[int] = set()

    def walk(n: Node, path: Loc) -> None:
        if id(n) in seen_nodes:  # aliases share nodes
            return
        seen_nodes.add(id(n))
        if isinstance(n, MappingNode):
            first: dict[str, int] = {}
            for key_node, value_node in n.value:
                if isinstance(key_node, ScalarNode) and key_node.tag != "tag:yaml.org,2002:merge":
                    key = str(key_node.value)
                    line = key_node.start_mark.line + 1
                    if key in first:
                        issues.append(
                            ConfigIssue(source, line, key_node.start_mark.column + 1, _dotted((*path, key)),
                                        f"duplicate key '{key}' (first on line {first[key]})",
                                        "YAML keeps only one of the two; delete or merge them")
                        )
                    else:
                        first[key] = line
                    walk(value_node, (*path, key))
        elif isinstance(n, SequenceNode):
            for i, item in enumerate(n.value):
                walk(item, (*path, i))

    walk(node, ())
    return issues


# Keys whose values are hex text. YAML reads an unquoted all-digit value such as 00000101 as the decimal number
# 101, which would silently become a different node id or key. ruamel keeps the digit count of such numbers, so
# they are turned back into the text the installer wrote. Numbers written in YAML hex (0x...) stay numbers.
_HEX_TEXT_KEYS: tuple[tuple[object, ...], ...] = (
    ("nodes", int, "id"),
    ("nodes", int, "key"),
    ("radios", int, "es920", "pan_id"),
    ("radios", int, "es920", "own_id"),
    ("rules", "rivers", int, "node"),
    ("rules", "slopes", int, "node"),
    ("gpio", "rain_gauge", "node_id"),
)


def _is_hex_text_key(path: Loc, patterns: Sequence[tuple[object, ...]]) -> bool:
    for pattern in patterns:
        if len(pattern) == len(path) and all(
            (p is int and isinstance(part, int)) or p == part for p, part in zip(pattern, path, strict=True)
        ):
            return True
    return False


class _TooBig(Exception):
    """The document expands beyond :attr:`_Budget.LIMIT` values (an alias bomb)."""


class _Budget:
    """Counts values while a tree is copied: YAML aliases share nodes, a copy expands them."""

    LIMIT = 100_000

    def __init__(self) -> None:
        self.left = self.LIMIT

    def take(self) -> None:
        self.left -= 1
        if self.left < 0:
            raise _TooBig


def _to_plain(value: object, path: Loc, hex_text_keys: Sequence[tuple[object, ...]] = (),
              budget: _Budget | None = None) -> Any:
    """Convert a ruamel round-trip tree to plain dicts, lists and scalars for pydantic."""
    if budget is not None:
        budget.take()
    if isinstance(value, CommentedMap):
        return {str(k): _to_plain(v, (*path, str(k)), hex_text_keys, budget) for k, v in value.items()}
    if isinstance(value, CommentedSeq):
        return [_to_plain(v, (*path, i), hex_text_keys, budget) for i, v in enumerate(value)]
    if isinstance(value, bool):
        return bool(value)
    if isinstance(value, int):
        if _is_hex_text_key(path, hex_text_keys) and not isinstance(value, HexInt | HexCapsInt | OctalInt | BinaryInt):
            width = getattr(value, "_width", None) or 0
            return format(int(value), f"0{width}d")
        return int(value)
    if isinstance(value, float):
        return float(value)
    if isinstance(value, str):
        return str(value)
    return value


def _dotted(loc: Loc) -> str:
    text = ""
    for part in loc:
        if isinstance(part, int):
            text += f"[{part}]"
        else:
            text += f".{part}" if text else str(part)
    return text


def _position(root: object, loc: Loc) -> tuple[int | None, int | None]:
    """1-based (line, column) of the deepest key or item of ``loc`` present in the ruamel tree.

    A key that is missing (a required key not written) or has no position of its own (a key pulled in by a YAML
    merge ``<<: *anchor``) is placed at its closest ancestor that has one.
    """
    line: int | None = None
    column: int | None = None
    current = root
    for part in loc:
        try:
            if isinstance(current, CommentedMap) and isinstance(part, str) and part in current:
                found = current.lc.key(part)
            elif isinstance(current, CommentedSeq) and isinstance(part, int) and 0 <= part < len(current):
                found = current.lc.item(part)
            else:
                break
        except (KeyError, IndexError, TypeError):
            break
        if not (isinstance(found, (list, tuple)) and len(found) >= 2 and isinstance(found[0], int)):
            break  # a key pulled in by a merge (<<:) has no position of its own
        line, column = found[0] + 1, found[1] + 1
        current = current[part]
    return line, column


def _issue_at(root: object, source: str, loc: Loc, message: str, hint: str | None) -> ConfigIssue:
    line, column = _position(root, loc)
    return ConfigIssue(source, line, column, _dotted(loc), message, hint)


def _unwrap(annotation: Any) -> tuple[Any, bool]:
    """Strip Optional/Annotated from a type; return (inner type, is_list)."""
    while True:
        origin = typing.get_origin(annotation)
        if origin is Annotated:
            annotation = typing.get_args(annotation)[0]
        elif origin in (typing.Union, types.UnionType):
            args = [a for a in typing.get_args(annotation) if a is not type(None)]
            if len(args) != 1:
                # A section or a constant (tls: {...} | false): the section is what has keys below it.
                sections = [a for a in args if isinstance(a, type) and issubclass(a, BaseModel)]
                if len(sections) == 1 and all(typing.get_origin(a) is Literal for a in args if a is not sections[0]):
                    return sections[0], False
                return annotation, False
            annotation = args[0]
        elif origin is list:
            return typing.get_args(annotation)[0], True
        else:
            return annotation, False


def _walk_schema(loc: Loc, root: type[BaseModel]) -> tuple[type[BaseModel] | None, FieldInfo | None]:
    """Find the model that holds the last key of ``loc`` below ``root`` and that key's FieldInfo (None where
    unknown)."""
    model: type[BaseModel] | None = root
    field: FieldInfo | None = None
    pending_list = False
    for part in loc:
        if isinstance(part, int):
            if not pending_list:
                return None, None
            pending_list = False
            continue
        if model is None or part not in model.model_fields:
            return model, None
        field = model.model_fields[part]
        inner, pending_list = _unwrap(field.annotation)
        model = inner if isinstance(inner, type) and issubclass(inner, BaseModel) else None
    return model, field


def _model_for(loc: Loc, root: type[BaseModel]) -> type[BaseModel] | None:
    """The model whose keys live at ``loc`` below ``root`` (e.g. ``("radios", 0)`` -> RadioConfig)."""
    if not loc:
        return root
    model, field = _walk_schema(loc, root)
    if field is None:
        return None
    return model


def _show(value: object) -> str:
    if value is None:
        return "an empty value"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, dict):
        return "a section of keys"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, str):
        return repr(value if len(value) <= 60 else value[:57] + "...")
    return str(value)


def _unit(loc: Loc) -> str:
    name = next((p for p in reversed(loc) if isinstance(p, str)), "")
    return next((unit for suffix, unit in _UNIT_BY_SUFFIX if name.endswith(suffix)), "")


def _num(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else f"{value:g}"


def _range_text(field: FieldInfo | None, unit: str) -> str:
    """Describe the allowed range of a numeric field, e.g. 'must be between 7 and 12'."""
    low = high = None
    low_open = high_open = False
    for meta in field.metadata if field is not None else ():
        if getattr(meta, "ge", None) is not None:
            low, low_open = meta.ge, False
        if getattr(meta, "gt", None) is not None:
            low, low_open = meta.gt, True
        if getattr(meta, "le", None) is not None:
            high, high_open = meta.le, False
        if getattr(meta, "lt", None) is not None:
            high, high_open = meta.lt, True
    if low is not None and high is not None and not low_open and not high_open:
        return f"must be between {_num(low)} and {_num(high)}{unit}"
    parts = []
    if low is not None:
        parts.append(f"{'above' if low_open else 'at least'} {_num(low)}{unit}")
    if high is not None:
        parts.append(f"{'below' if high_open else 'at most'} {_num(high)}{unit}")
    return "must be " + " and ".join(parts) if parts else "is out of range"


_SIMPLE_TAGS = frozenset({"none", "bool", "int", "float", "str", "list", "dict"})


def _union_tag(part: object) -> bool:
    """Whether a pydantic loc segment names a member of a union (``literal[False]``, ``function-after[...,
    TlsConfig]``, ``TlsConfig``, ``none``) rather than a key: keys here are lowercase words, no brackets."""
    return isinstance(part, str) and ("[" in part or part in _SIMPLE_TAGS or any(c.isupper() for c in part))


def _union_errors(errors: Iterable[Mapping[str, Any]], plain: object) -> list[Mapping[str, Any]]:
    """Keep, of the errors pydantic reports for each member of a union (``tls: TlsConfig | false | null``), those
    of the member the value was meant for, with the member's name taken out of the location.

    A mapping was meant for the section (model) member: its errors are kept. Any other value that no member
    takes gets one answer naming every choice.
    """
    out: list[Mapping[str, Any]] = []
    dropped: dict[tuple[object, ...], list[Mapping[str, Any]]] = {}
    for err in errors:
        loc = tuple(err["loc"])
        value: object = plain
        for i, part in enumerate(loc):
            if isinstance(value, Mapping) and part in value:
                value = value[part]
            elif isinstance(value, list) and isinstance(part, int) and 0 <= part < len(value):
                value = value[part]
            elif _union_tag(part):
                model_member = not part.startswith("literal[") and part not in _SIMPLE_TAGS  # type: ignore[union-attr]
                err = {**err, "loc": loc[:i] + loc[i + 1:]}
                if not (model_member and isinstance(value, Mapping)):
                    dropped.setdefault(loc[:i], []).append(err)
                    err = None  # type: ignore[assignment]
                break
            else:
                break
        if err is not None:
            out.append(err)
    kept = {tuple(e["loc"][:len(prefix)]) for e in out for prefix in dropped}
    for prefix, errs in dropped.items():
        if prefix in kept:
            continue
        # A value no member takes: one answer that names every choice, not one answer per member.
        choices = [str(e["ctx"]["expected"]).lower() for e in errs
                   if e["type"] == "literal_error" and e.get("ctx", {}).get("expected")]
        name = prefix[-1] if prefix else "value"
        problem = _problem(f"{name} must be a section of keys" + "".join(f" or {c}" for c in choices),
                           "put the section's keys on the lines below, indented" +
                           "".join(f", or write {c}" for c in choices))
        out.append({"type": "value_error", "loc": prefix, "msg": "", "ctx": {"error": problem}})
    return out


def _issues_from_error(err: Mapping[str, Any], root: object, source: str,
                       model: type[BaseModel]) -> list[ConfigIssue]:
    loc: Loc = tuple(err["loc"])
    ctx = err.get("ctx") or {}
    error = ctx.get("error")
    if err["type"] == "value_error" and isinstance(error, _Problems):
        return [_issue_at(root, source, (*loc, *p.subloc), p.message, p.hint) for p in error.problems]
    message, hint = _describe(err, loc, model)
    return [_issue_at(root, source, loc, message, hint)]


def _describe(err: Mapping[str, Any], loc: Loc, model: type[BaseModel]) -> tuple[str, str | None]:
    """Turn one pydantic error into a plain-English message and hint."""
    err_type: str = err["type"]
    ctx: Mapping[str, Any] = err.get("ctx") or {}
    value = err.get("input")
    name = next((p for p in reversed(loc) if isinstance(p, str)), "")
    _, field = _walk_schema(loc, model)
    description = field.description if field is not None else None
    secret = name in _SECRET_KEYS
    got = "" if secret else f" (got {_show(value)})"
    unit = _unit(loc)

    if err_type == "missing":
        return f"required key '{name}' is missing", description
    if err_type == "extra_forbidden":
        holder = _model_for(loc[:-1], model)
        valid = [f.alias or n for n, f in holder.model_fields.items()] if holder is not None else []
        return f"unknown key '{name}'", _choices_hint(name, valid, "valid keys here") if valid else None
    if err_type == "literal_error":
        expected = str(ctx.get("expected", ""))
        choices = [c.strip().strip("'") for c in expected.replace(" or ", ", ").split(",") if c.strip()]
        shown = "this value" if secret else _show(value)
        hint = _choices_hint(str(value), choices, "use one of") if isinstance(value, str) else f"use one of: {expected}"
        return f"{shown} is not allowed here", hint
    if err_type in ("greater_than", "greater_than_equal", "less_than", "less_than_equal"):
        shown = "the value" if secret else f"{_show(value)}{unit}"
        return f"{shown} is out of range: {name} {_range_text(field, unit)}", description
    if err_type in ("int_parsing", "int_type", "int_from_float"):
        return f"{name} must be a whole number{unit and f' (in{unit})'}{got}", description
    if err_type in ("float_parsing", "float_type", "finite_number"):
        return f"{name} must be a number{unit and f' (in{unit})'}{got}", description
    if err_type in ("bool_parsing", "bool_type"):
        return f"{name} must be true or false{got}", description
    if err_type in ("string_type", "string_sub_type"):
        return f"{name} must be text{got}", "put the value in quotes"
    if err_type in ("model_type", "model_attributes_type", "dict_type"):
        if value is None:
            return f"section '{name}' is empty", f"add its keys indented below '{name}:', or remove the line"
        return f"'{name}' must be a section of keys, not {_show(value)}", "put its keys on the lines below, indented"
    if err_type == "list_type":
        return f"'{name}' must be a list, not {_show(value)}", "write each item on its own line starting with '- '"
    if err_type == "too_short":
        return f"'{name}' needs at least {ctx.get('min_length', 1)} item(s)", description
    if err_type == "string_too_short":
        return f"{name} must not be empty", description
    if err_type == "string_too_long":
        return f"{name} is too long: at most {ctx.get('max_length')} characters", description
    if err_type == "string_pattern_mismatch":
        return f"{name}{'' if secret else ' ' + _show(value)} contains characters that are not allowed", description
    # Fallback: pydantic's own message (it does not include the input value).
    return str(err.get("msg", "invalid value")), description


def _warning_problems(config: Config) -> list[Found]:
    """Valid settings that are probably a mistake."""
    found: list[Found] = []
    for i, radio in enumerate(config.radios):
        es = radio.es920
        if es is not None and es.format == "ascii" and es.payload_encoding == "raw":
            found.append((("radios", i, "es920", "payload_encoding"),
                          "raw payloads in ascii format break when a payload contains CR LF",
                          "use format: binary, or payload_encoding: hex"))
    tls = config.mqtt.tls
    if tls and tls.insecure:
        found.append(tls_insecure_warning(("mqtt", "tls", "insecure")))
    if tls is False and not is_loopback_host(config.mqtt.host):
        found.append((("mqtt", "tls"), f"plain TCP to the broker {config.mqtt.host}: the gateway's MQTT login and "
                      "every reading cross the network in clear",
                      "use tls: {ca_file: ...} unless the path to the broker is a trusted private network"))
    # Who can read secrets is checked by the loader itself (_secret_mode_problems), for every config file.
    rivers = {r.node for r in config.rules.rivers}
    for i, node in enumerate(config.nodes):
        if node.kind == "water_level" and node.id.lower() not in rivers:
            found.append((("nodes", i, "kind"), f"water_level node {node.id} ({node.name}) has no river stage "
                          "rule, so no level it reports raises an alert (only its silence does)",
                          f"add it under rules.rivers: - node: \"{node.id}\" with stages_cm: standby (水防団待機水位), "
                          "caution (はん濫注意水位), evacuation (避難判断水位), danger (はん濫危険水位) in cm on the "
                          "gauge's datum, as in config/river-station.yaml"))
    if not config.nodes and config.unknown_nodes == "quarantine":
        found.append((("unknown_nodes",), "no nodes are listed and unknown_nodes is quarantine, so every frame "
                      "will be set aside", "list the nodes under nodes:, or set unknown_nodes: accept"))
    return found


def is_loopback_host(host: str) -> bool:
    """Whether ``host`` names this machine: ``localhost``, 127.0.0.0/8 or ::1 (no name lookup)."""
    if host.lower().rstrip(".") == "localhost":
        return True
    try:
        address = ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return False
    # Python >= 3.13 calls ::ffff:127.0.0.1 loopback; the rule is 127.0.0.0/8 and ::1 on every version.
    return address.is_loopback and getattr(address, "ipv4_mapped", None) is None


def tls_insecure_warning(loc: Loc) -> Found:
    """The warning for ``tls.insecure: true`` at ``loc``."""
    return (loc, "TLS host name checking is off",
            "anyone on the path can impersonate the broker; set insecure: false in the field")


# ---------------------------------------------------------------------------------------------------------------
# JSON Schema and the key reference


def config_json_schema() -> dict[str, Any]:
    """Return the JSON Schema of the config file (with titles and descriptions), for editor completion."""
    return Config.model_json_schema(mode="validation")


def write_json_schema(path: str | os.PathLike[str]) -> None:
    """Write :func:`config_json_schema` as pretty-printed UTF-8 JSON (``denen config schema``)."""
    text = json.dumps(config_json_schema(), indent=2, ensure_ascii=False) + "\n"
    Path(path).write_text(text, encoding="utf-8")


def _type_text(annotation: Any) -> str:
    origin = typing.get_origin(annotation)
    if origin is Annotated:
        return _type_text(typing.get_args(annotation)[0])
    if origin in (typing.Union, types.UnionType):
        parts = [_type_text(a) for a in typing.get_args(annotation) if a is not type(None)]
        text = " or ".join(parts)
        return f"{text}, or null" if type(None) in typing.get_args(annotation) else text
    if origin is Literal:
        return " | ".join(json.dumps(a) if isinstance(a, bool) else str(a) for a in typing.get_args(annotation))
    if origin is list:
        return f"list of {_type_text(typing.get_args(annotation)[0])}"
    if annotation is SecretStr:
        return "secret text"
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return "section"
    return {int: "integer", float: "number", str: "text", bool: "true/false"}.get(annotation, str(annotation))


def _default_text(field: FieldInfo) -> str:
    if field.default_factory is not None:
        made = field.default_factory()  # type: ignore[call-arg]
        return "`[]`" if made == [] else "(all defaults)"
    if field.default is PydanticUndefined:
        return "**required**"
    if field.default is None:
        return "`null`"
    if isinstance(field.default, bool):
        return f"`{str(field.default).lower()}`"
    return f"`{field.default}`"


def _reference_lines(model: type[BaseModel], prefix: str) -> list[str]:
    lines: list[str] = []
    for name, field in model.model_fields.items():
        path = prefix + name
        inner, is_list = _unwrap(field.annotation)
        type_text = _type_text(field.annotation)
        lines.append(f"- `{path}` ({type_text}; default {_default_text(field)}): {field.description}")
        if isinstance(inner, type) and issubclass(inner, BaseModel):
            lines.extend(_reference_lines(inner, path + ("[]." if is_list else ".")))
    return lines


_REFERENCE_INTRO = """\
# denen configuration reference

<!-- Generated by agent.config.config_reference(); do not edit by hand. Regenerate with:
     .venv/bin/python -c "from agent.config import write_reference; write_reference('config/README.md')" -->

One YAML file configures the agent. Check a file with `denen config validate FILE`; every problem is reported at
once as `file:line:column: key: message (hint: ...)`. `denen config schema -o denen.schema.json` writes
the JSON Schema for editor completion (e.g. the YAML extension of VS Code: `# yaml-language-server: $schema=denen.schema.json`).

Examples, each loaded by the test suite (also in the installed package: `denen config example NAME` prints one):

| file | use |
|---|---|
| `forest-sos.yaml` | forest emergency call: SOS buttons on a RAK3172 gateway |
| `trap-field.yaml` | wildlife traps with a daily heartbeat |
| `river-station.yaml` | river level, rain and slope tilt sensors on an ES920LR |
| `demo.yaml` | everything simulated (`denen demo`) |

The examples' node keys are not in the files: each node names an environment variable (`key_env:`), set from
`example-keys.env` (public example keys, never for real nodes). To check them by hand:
`set -a; . config/example-keys.env; set +a; denen config validate config/*.yaml`.

Rules worth knowing:

- **Unknown keys are errors**, with a "did you mean" hint, so a misspelt key never silently falls back to a default.
- **Quote hex values** (`id: "00a1b2c3"`, `key: "..."`, `pan_id: "0001"`). An unquoted `00000101` is a decimal
  number to YAML; the loader turns such all-digit values of these keys back into the text written, but an id
  like `1E000001` becomes a float and is refused. Node ids may also be written as YAML hex numbers (`0x00A1B2C3`).
- **Relative paths** (`journal.path`, `mqtt.password_file`, `mqtt.tls.*_file`, `nodes[].key_file`) are resolved
  against the directory of the config file. Files named by `password_file`, `tls.*_file` and `key_file` must
  exist and be readable when the config is loaded; key files are checked for a valid key.
- **Secrets** (`mqtt.password`, `nodes[].key`) are never printed, logged or shown in error messages. Each can be
  given one of three ways, only one at a time:
  - in a file: `key_file: keys/trap-north-3.key`, `password_file: mqtt-password` (mode 600, owned by
    the agent's user; a relative path is beside the config file; read when the config is loaded, the password again
    at every connect);
  - in an environment variable: `key_env: DENEN_KEY_TRAP_NORTH_3`, `password_env: DENEN_MQTT_PASSWORD` (the
    variable's name, upper case; it must be set, and a key valid, when the config is loaded). With systemd, set
    them in `/etc/denen/secrets.env` (mode 600) and name it with `EnvironmentFile=` in `denen.service`;
    `denen config validate` needs them in your shell too;
  - inline: `key: "..."`, `password: "..."`, only in a config file that other users cannot read.

  **Who can read them is checked.** A config file holding an inline secret that every user on the machine can
  read (mode 644, 604 ...) is refused, at the secret's line, with the hint `chmod 600 FILE, or move the secret to
  key_file / key_env`; so is a `key_file`, `password_file` or `tls.key_file` that every user can read. Readable by
  the file's group only (640) is a warning: fine when the group is the service's own (`denen`). A config file
  every user can *change* (mode 646, 666 ...) is refused whatever it holds (`chmod o-w FILE`): whoever can write
  it can point the gateway at another broker. The examples here name their keys with `key_env:`; their public
  example keys are in `example-keys.env`.
- `radios[].port` is passed to pyserial's `serial_for_url`: a device path, a udev symlink, `socket://host:port`
  or `loop://`. It is not opened at load time.
- Radio drivers: `rak3172` and `es920lr`, plus any other name in the driver registry `drivers.radio.DRIVERS`.
  The `p2p:` section belongs to `rak3172`, `es920:` to `es920lr`; the driver's own section gets its defaults
  when absent, and the other section is an error.
- **TLS to any broker not on this machine.** When `mqtt.host` is not a loopback address (`127.0.0.0/8`, `::1`,
  `localhost`), `mqtt.tls` is required: `tls: {ca_file: ca.pem}` (or `tls: {}` for the system's
  trusted CAs) and port 8883. Without it the config is refused at the `mqtt.host` line. Only on a trusted private
  network (a VPN) write `tls: false`: the config loads, the agent logs a warning at every start, and
  `denen doctor` reports the broker check as failed (plain TCP to a remote broker).
- **Replay windows.** Each node has two: frames with a verified MIC must carry a counter above the last one
  accepted with a MIC; frames without MIC (`unauthenticated: flag`, or unknown nodes under `unknown_nodes:
  accept`) must be above both windows and move only their own. So a forged frame without MIC can never lock out a
  node's signed frames. A node whose firmware was re-flashed (its counter starts again from 0) needs its windows
  reset: `sudo -u denen denen node reset-counter NODE` (NODE: id or name; `-c FILE` for another config). It works
  with the agent running: the agent carries it out within a second, logs an `audit:` line (who, when, old and new
  windows) and keeps it in the journal; `denen status` shows the windows and the audit trail.
- **Unknown nodes are bounded.** With `unknown_nodes: accept`, at most `unknown_nodes_max` nodes that are not in
  `nodes:` are tracked (least recently heard dropped first, counted `nodes.unknown_evicted`); one not heard for
  `unknown_nodes_forget_after_s` is dropped (`nodes.unknown_aged_out`). Nodes in `nodes:` are never dropped.
- **River stages.** A `water_level` node alerts on its level only through a rule under `rules.rivers` with the
  gauge's four MLIT levels (水防団待機水位 `standby`, はん濫注意水位 `caution`, 避難判断水位 `evacuation`,
  はん濫危険水位 `danger`, in cm on the gauge's datum; `config/river-station.yaml` shows one). `denen config
  validate` warns, at the node's `kind:` line, about a `water_level` node without one.
- **Silent nodes.** A node is silent after `rules.silence_factor` x its `interval_s` without a frame (default 3 x):
  the `node_silent` alert is raised (for kinds in `rules.silence_kinds`), and `denen monitor` marks it **LATE** at
  the same threshold. They can still differ in two ways, both shown in the monitor's legend: the alert does not
  count time the agent was stopped (and counts a node never heard from the agent's start), while the monitor
  counts wall-clock time since the node's last frame in the journal, so after an outage a node can be LATE before
  its alert; and nodes of kinds the alert does not watch are shown `LATE*` (late, no alert).
- **The journal is private**: created mode 0600 whatever the umask (its -wal and -shm files too), and a
  symbolic link at `journal.path` (or its -wal/-shm) is refused. Read it as the agent's user
  (`sudo -u denen denen status`).

## Keys
"""


def config_reference() -> str:
    """Return the Markdown reference of every config key (the content of config/README.md)."""
    sections: list[str] = [_REFERENCE_INTRO]
    for name, field in Config.model_fields.items():
        inner, is_list = _unwrap(field.annotation)
        sections.append(f"\n### `{name}`\n\n{field.description}\n\n")
        if isinstance(inner, type) and issubclass(inner, BaseModel):
            sections.append("\n".join(_reference_lines(inner, name + ("[]." if is_list else "."))) + "\n")
        else:
            sections.append(f"- `{name}` ({_type_text(field.annotation)}; default {_default_text(field)})\n")
    return "".join(sections)


def write_reference(path: str | os.PathLike[str]) -> None:
    """Write :func:`config_reference` to a file (config/README.md)."""
    Path(path).write_text(config_reference(), encoding="utf-8")

