"""Sensor nodes: ``nodes[]``, their ids and their AES keys."""

from __future__ import annotations

import typing
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, WithJsonSchema, field_validator, model_validator

from agent.config.secrets import (
    WithSecrets,
    secret_env,
    secret_file,
    secret_source_problems,
    secret_text,
)
from agent.config.values import _HEX, _path_hint
from agent.errors import ConfigError, ConfigIssue
from drivers.settings import N_, Problem, Problems, Section, Text, problem

NodeKind = Literal["sos", "trap", "water_level", "rain", "tilt", "weather", "heartbeat"]
#: The node kinds of ``nodes[].kind`` (docs/protocols.md §9 kinds; receipt and vendor kinds are not node kinds).
NODE_KINDS: tuple[str, ...] = typing.get_args(NodeKind)


_NAME_NODE = r"^[a-z0-9_-]{1,64}$"


def normalise_node_id(value: object) -> str:
    """Normalise a node id to 8 lowercase hex digits.

    Args:
        value: 8 hex digits as text (``"00A1B2C3"``), or the id as an integer 0..0xFFFFFFFF.

    Raises:
        ValueError: the value is not a node id; the message is plain English (a ``Problems`` carrying a hint).
    """
    hint = Text(N_("write the node id as 8 hex digits in quotes, e.g. id: \"00a1b2c3\" (the uint32 id in the node's "
                   "frames)"))
    if isinstance(value, bool):
        raise problem(N_("node id must be 8 hex digits, not true/false"), hint)
    if isinstance(value, int):
        if not 0 <= value <= 0xFFFFFFFF:
            raise problem(N_("node id {value} does not fit in 32 bits (0..4294967295)"), hint, value=value)
        return f"{value:08x}"
    if isinstance(value, float):
        # An unquoted id such as 1E000001 is a float to YAML; its digits are lost, so refuse it outright.
        raise problem(N_("node id was read as a decimal number by YAML, so its hex digits are lost"), hint)
    if not isinstance(value, str):
        raise problem(N_("node id must be 8 hex digits"), hint)
    text = value.strip()
    if len(text) != 8 or not set(text) <= _HEX:
        if set(text) <= _HEX:
            raise problem(N_("node id '{id}' is not 8 hex digits: it has {count} characters"), hint, id=text,
                          count=len(text))
        raise problem(N_("node id '{id}' is not 8 hex digits: it has {count} characters, and has characters that are "
                         "not hex digits (0-9, a-f)"), hint, id=text, count=len(text))
    return text.lower()


def _parse_hex_key(text: str, *, what: str) -> str:
    """Check a 128-bit AES key written as hex and return it in lowercase.

    The messages name the length and the kind of mistake but never the digits, so that a key cannot leak into a
    log through an error message.
    """
    hint = Text(N_("an AES-128 node key is 32 hex digits (16 bytes), e.g. generated with: openssl rand -hex 16"))
    cleaned = text.strip()
    if not set(cleaned) <= _HEX:
        raise problem(N_("{what} contains characters that are not hex digits (0-9, a-f)"), hint, what=what)
    if len(cleaned) != 32:
        raise problem(N_("{what} must be 32 hex digits (16 bytes), but has {count}"), hint, what=what,
                      count=len(cleaned))
    return cleaned.lower()


def _read_key_file(path: str) -> bytes:
    """Read a node key file: one line of 32 hex digits; blank lines and ``#`` comment lines are ignored.

    Raises:
        Problems: when the file is missing, unreadable or does not hold one valid key.
    """
    try:
        raw = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise problem(N_("key file {path} does not exist"), _path_hint(), path=path) from None
    except IsADirectoryError:
        raise problem(N_("key file {path} is a directory, not a file"), _path_hint(), path=path) from None
    except PermissionError:
        raise problem(
            N_("key file {path} cannot be read by this user"),
            N_("the agent must be able to read it: check the file's owner and mode (e.g. chown denen, chmod 600)"),
            path=path,
        ) from None
    except UnicodeDecodeError:
        raise problem(N_("key file {path} is not text"), N_("the file must hold the key as 32 hex digits"),
                      path=path) from None
    except OSError as exc:
        raise problem(N_("key file {path} cannot be read: {error}"), path=path, error=exc.strerror) from None
    lines = [ln.strip() for ln in raw.splitlines() if ln.strip() and not ln.strip().startswith("#")]
    if len(lines) != 1:
        raise problem(
            N_("key file {path} must hold exactly one key line, found {count}"),
            N_("write the key as one line of 32 hex digits; lines starting with # are ignored"),
            path=path, count=len(lines),
        )
    return bytes.fromhex(_parse_hex_key(lines[0], what=Text(N_("the key in {path}"), path=path)))


class LocationConfig(Section):
    """Installed position of a node (WGS 84)."""

    lat: float = Field(ge=-90, le=90, description=N_("Latitude in degrees, -90..90 (north positive)."))
    lon: float = Field(ge=-180, le=180, description=N_("Longitude in degrees, -180..180 (east positive)."))


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


_Key = secret_text(N_("{name} was not read as text (YAML took it for a number)"),
                   N_("write the key as 32 hex digits in quotes, e.g. key: \"...\""),
                   parse=lambda text: _parse_hex_key(text, what=Text(N_("key"))))
_KeyFile = secret_file(N_("key file"), read=_read_key_file)
_KeyEnv = secret_env(check=lambda text, name: _parse_hex_key(
    text, what=Text(N_("the key in environment variable {name}"), name=name)))


class NodeConfig(WithSecrets):
    """One sensor node this gateway expects to hear."""

    id: Annotated[str, _NODE_ID_SCHEMA] = Field(
        description=N_("Node id: the uint32 node id of the denen frame, written as 8 hex digits in quotes "
        "(\"00A1B2C3\"), or as an integer (0x00A1B2C3). Stored as 8 lowercase hex digits. Unique."),
    )
    name: str = Field(
        pattern=_NAME_NODE,
        description=N_("Node name, unique in this file: 1-64 of a-z, 0-9, '_' and '-'. Shown on dashboards and alerts."),
        examples=["trap-north-3"],
    )
    kind: NodeKind = Field(
        description=N_("What the node is expected to send: sos, trap, water_level, rain, tilt, weather or heartbeat. "
        "Heartbeat frames are accepted from any node."),
    )
    key: Annotated[_Key, _KEY_SCHEMA] = Field(
        default=None,
        description=N_("AES-128 key of the node's frame MIC as 32 hex digits, in quotes (secret: never printed or "
        "logged). Prefer key_file or key_env; a config file holding it must not be readable by other users "
        "(chmod 600). Only one of key, key_file and key_env."),
    )
    key_file: _KeyFile = Field(
        default=None,
        description=N_("Path of a file holding the node key as one line of 32 hex digits (# comment lines allowed). "
        "Read and checked at load time; refused when other users can read it (chmod 600). Relative paths are "
        "resolved against the config file's directory."),
    )
    key_env: _KeyEnv = Field(
        default=None,
        description=N_("Name of an environment variable holding the node key as 32 hex digits, e.g. "
        "DENEN_KEY_TRAP_NORTH_3; read and checked when the config is loaded, so it must be set then (systemd: "
        "EnvironmentFile=)."),
    )
    unauthenticated: Literal["reject", "flag"] = Field(
        default="reject",
        description=N_("What to do with a frame without MIC from this node: reject (quarantine it) or flag (accept "
        "it, marked unauthenticated). reject needs a key."),
    )
    interval_s: int = Field(
        default=600,
        ge=1,
        description=N_("Expected reporting interval in seconds (e.g. 600 for 10 minutes, 86400 for a daily "
        "heartbeat). A node silent for rules.silence_factor x interval_s (default 3 x) raises node_silent, and "
        "denen monitor marks it LATE at the same threshold."),
    )
    receipt: Literal["send", "backup"] = Field(
        default="send",
        description=N_("Who answers this node's SOS when several gateways hear it: send (this gateway answers every "
        "SOS; the default) or backup (another gateway answers; this one only an SOS sent again within 5 minutes, "
        "3-8 s later, and any SOS in its first 5 minutes after a start). Give each node one send gateway."),
    )
    location: LocationConfig | None = Field(default=None, description=N_("Installed position {lat, lon}. Optional."))
    radio: str | None = Field(
        default=None,
        description=N_("Only accept this node through the radio of this name (must be listed in radios). Optional: "
        "null accepts it through any radio."),
    )

    @field_validator("id", mode="before")
    @classmethod
    def _node_id(cls, value: object) -> str:
        return normalise_node_id(value)

    @model_validator(mode="after")
    def _authentication(self) -> NodeConfig:
        both = secret_source_problems(self, "key")
        if both:
            raise Problems(Problem(loc, msg, hint) for loc, msg, hint in both)
        if self.key is None and self.key_file is None and self.key_env is None and self.unauthenticated == "reject":
            raise problem(
                N_("node '{name}' has no key, and unauthenticated: reject drops every frame without a MIC, so this "
                   "node could never be heard"),
                N_("add a key (key_file:, key_env: or key:), or set unauthenticated: flag"),
                subloc=("unauthenticated",), name=self.name,
            )
        self.keep_env_secrets("key")
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
        text = self.key.get_secret_value() if self.key is not None else self.env_secret("key")
        if text is not None:
            return bytes.fromhex(_parse_hex_key(text, what=Text(N_("the key"))))
        if self.key_file is None:
            return None
        try:
            return _read_key_file(self.key_file)
        except Problems as exc:
            raise ConfigError(
                [ConfigIssue(self.key_file, None, None, f"nodes[{self.name}].key_file", p.message, p.hint)
                 for p in exc.problems]
            ) from None
