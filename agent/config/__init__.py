"""The agent's configuration: one YAML file, validated by pydantic, with errors that point at the bad line.

Public API::

    load_config(path, *, check_modes=True) -> Config   read, parse and validate a file
    parse_config(text, *, source=...) -> Config  the same for text already in memory
    config_json_schema() -> dict                 JSON Schema for editor completion
    write_json_schema(path)                      writes it (``denen config schema``)
    config_reference() -> str                    the Markdown key reference kept in config/README.md
    driver_names() -> tuple[str, ...]            radio driver names accepted in ``radios[].driver``

The package, one module per concept::

    models     Config and its small sections, load_config, parse_config (config_file())
    mqtt       MqttConfig, TlsConfig, the TLS warnings     nodes    NodeConfig, node ids and keys
    radio      RadioConfig and the drivers' sections        checks   rules across list items, warnings
    secrets    the secret field types, who may read them    values   context keys, paths, problem helpers
    loader     the generic YAML loader                      messages pydantic errors in plain English
    reference  JSON Schema and the key reference          parsed   the parsed YAML kept between starts
    handoff    ``denen run`` loads its config in a short-lived child and receives the validated Config

Importing the package imports nothing else: each name is imported from its module on first use, so a process
holding only validated models (``denen run``) never loads the YAML parser. The models are built with pydantic's
``defer_build``: a validator is built at the first validation, never in ``denen run``'s long-running process.

The generic loader (:mod:`agent.config.loader`; it imports nothing of the gateway), shared by the bridge's and
the console's config files and any YAML file with a pydantic model::

    ModelFile(model, checks=, warnings=, example=, ...).load(path) / .parse(text) -> (model, warnings)
    read_config_file(path) -> (str, int)                        read a file and its mode (errors as ConfigError)
    read_config_text(path) -> str                               the same, text only
    parse_yaml_model(text, model, *, source, base_dir, checks, warnings, file_mode, ...) -> (model, warnings)
    ConfigSection, config_problem(), config_problems()          base class and validator errors
                                                                (drivers.settings: Section, problem(), Problems)
    resolve_config_path(), check_readable_file()                path helpers for validators
    secret_text(), secret_file(), secret_env(), WithSecrets     the three ways to give a secret (inline, file,
    (agent.config.secrets), SECRET_FILE, secret_source_problems() environment variable) and their checks

Every problem found is collected, then raised together as one :class:`~agent.errors.ConfigError` whose issues
each carry the file, the 1-based line and column of the offending key or list item, the dotted key
(``radios[0].p2p.spreading_factor``), a plain-English message with units, and a hint.

How the line numbers are kept: ruamel.yaml's round-trip loader records the position of every mapping key
(``CommentedMap.lc.key(k)``) and sequence item (``CommentedSeq.lc.item(i)``). The loaded tree is converted to
plain dicts and lists for pydantic, and each error's ``loc`` tuple is walked back through the ruamel tree to find
the line. Problems pydantic cannot see (YAML syntax, tabs, duplicate keys, an empty file, a top level that is not
a mapping) are found before validation, also with line numbers.

Rules that span several keys are checked where their data lives, and raise :class:`drivers.settings.Problems`
carrying the exact sub-key, so that they too point at the right line:

* inside one section (key vs key_file, p2p section vs driver, channel vs bandwidth, reconnect bounds) by a
  ``model_validator`` of that section, which pydantic runs for every section whose own keys are valid;
* across list items (unique radio names, unique node ids and names, ``nodes[].radio`` naming a radio) by
  :func:`agent.config.checks._collection_problems`. The loader runs it on the raw data even when other keys
  failed, so that one run reports everything; a :class:`Config` built in Python runs it from its own validator.

Relative paths (``journal.path``, ``mqtt.password_file``, ``mqtt.tls.*_file``, ``nodes[].key_file``) are
resolved against the directory of the config file (as given, without following symlinks), so a config and its
key files can be copied together onto a gateway's SD card. ``radios[].port`` is not a path but a pyserial URL
and is passed through untouched.

Secrets (``mqtt.password``, ``nodes[].key``; the bridge's passwords and token) can be given three ways: inline
(``key:``), in a file (``key_file:``) or in an environment variable (``key_env:``, the variable's *name*; its
value is read and checked when the config is loaded, never logged). At most one of the three per secret. Who may
read them is checked by the loader (:func:`agent.config.secrets._secret_mode_problems`), from the fields' types,
so every config loaded through :func:`parse_yaml_model` gets the same rule: a secret field of type ``SecretStr``
written inline in a config *file* that other users can read (``S_IROTH``), or a file named by a field marked
:data:`SECRET_FILE` that other users can read, is an error at that key's line; readable by the group only is a
warning (a ``denen`` group is a legitimate setup). Text that does not come from a file (:func:`parse_config`)
has no mode to check; the secret files it names still are.
"""

from __future__ import annotations

import importlib
from typing import Any

# Each public name and the module that defines it, imported on first use: the long-running ``denen run`` uses
# only the models (agent.config.handoff), and importing this package must not bring the YAML parser (ruamel)
# or the reference generator along with them.
_HOME: dict[str, str] = {
    **dict.fromkeys(("parse_yaml_model", "read_config_file", "read_config_text"), "agent.config.loader"),
    **dict.fromkeys(("Config", "GatewayConfig", "HealthConfig", "JournalConfig", "LogConfig", "load_config",
                     "parse_config"), "agent.config.models"),
    **dict.fromkeys(("MqttConfig", "TlsConfig", "is_loopback_host", "tls_insecure_warning"), "agent.config.mqtt"),
    **dict.fromkeys(("NODE_KINDS", "LocationConfig", "NodeConfig", "normalise_node_id"), "agent.config.nodes"),
    **dict.fromkeys(("BUILTIN_DRIVERS", "SECTION_FOR_DRIVER", "RadioConfig", "driver_names"), "agent.config.radio"),
    **dict.fromkeys(("config_json_schema", "config_reference", "write_json_schema", "write_reference"),
                    "agent.config.reference"),
    **dict.fromkeys(("SECRET_FILE", "SecretFile", "env_secret_name", "read_env_secret", "secret_source_problems"),
                    "agent.config.secrets"),
    **dict.fromkeys(("ConfigSection", "Found", "check_readable_file", "config_problem", "config_problems",
                     "resolve_config_path"), "agent.config.values"),
    "Es920Config": "drivers.es920lr_settings",
    "P2pConfig": "drivers.rak3172_settings",
}


def __getattr__(name: str) -> Any:
    home = _HOME.get(name)
    if home is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(home), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_HOME})


__all__ = [
    "BUILTIN_DRIVERS",
    "SECTION_FOR_DRIVER",
    "Found",
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
