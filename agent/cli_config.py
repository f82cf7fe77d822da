"""``denen config validate|example|schema``: check config files of every kind, print a commented example, write
a config kind's JSON Schema."""

from __future__ import annotations

import re
import sys
from typing import Any

from agent.errors import AgentError, ConfigError
from agent.i18n import _

__all__ = ["config_kind", "example", "json_schema", "schema", "schema_text", "validate"]


def validate(files: list[str]) -> int:
    """``denen config validate FILE...``: each file checked by the schema of its kind (:func:`config_kind`); every
    problem printed. Exit code 2 when any file fails."""
    from agent.config import load_config  # noqa: PLC0415

    failed = 0
    for f in files:
        try:
            kind = config_kind(f)
            if kind == "console":
                from agent.console.config import load_console_config  # noqa: PLC0415

                ccfg = load_console_config(f)
                print(_("{file}: ok (console {url}, MQTT {broker})").format(
                    file=f, url=ccfg.http.public_url, broker=f"{ccfg.mqtt.host}:{ccfg.mqtt.port}"))
                continue
            if kind == "bridge":
                from agent.bridge.config import load_bridge_config  # noqa: PLC0415

                bcfg = load_bridge_config(f)
                print(_("{file}: ok (bridge {client}, group {group} -> {sink})").format(
                    file=f, client=bcfg.mqtt.effective_client_id(), group=bcfg.mqtt.group, sink=bcfg.sink.target()))
                continue
            cfg = load_config(f)
        except ConfigError as exc:
            print(str(exc), file=sys.stderr)
            failed += 1
        else:
            print(_("{file}: ok (gateway {gateway}, {radios} radios, {nodes} nodes)").format(
                file=f, gateway=cfg.gateway.id, radios=len(cfg.radios), nodes=len(cfg.nodes)))
    return 2 if failed else 0


def example(name: str | None) -> int:
    """``denen config example [NAME]``: the commented example on stdout, or the list of them."""
    from agent import assets  # noqa: PLC0415

    if name is None:
        for e in assets.EXAMPLES.values():
            print(f"{e.name:<15} {e.summary}")
        print("\n" + _("Print one with: denen config example NAME > config.yaml"))
        return 0
    sys.stdout.write(assets.read_text(assets.EXAMPLES[name].asset))
    return 0


def json_schema(kind: str) -> dict[str, Any]:
    """The JSON Schema of a config kind (``gateway``, ``bridge``, ``console``), as ``denen config schema`` writes
    it and as shipped in the files :data:`agent.assets.SCHEMAS` names."""
    if kind == "gateway":
        from agent.config import config_json_schema  # noqa: PLC0415

        return config_json_schema()
    if kind == "bridge":
        from agent.bridge.config import BridgeConfig as model  # noqa: PLC0415
        title = "denen bridge configuration"
    elif kind == "console":
        from agent.console.config import ConsoleConfig as model  # noqa: PLC0415
        title = "denen console configuration"
    else:
        raise ValueError(f"no config kind {kind!r}")
    schema = model.model_json_schema(mode="validation")
    return {"$schema": "https://json-schema.org/draft/2020-12/schema", **schema, "title": title}


def schema_text(kind: str) -> str:
    """:func:`json_schema` as the pretty-printed UTF-8 JSON text written to files and stdout."""
    import json  # noqa: PLC0415

    return json.dumps(json_schema(kind), indent=2, ensure_ascii=False) + "\n"


def schema(kind: str, output: str) -> int:
    """``denen config schema [KIND] [-o PATH]``: the schema to stdout (``-``) or into ``output``."""
    text = schema_text(kind)
    if output == "-":
        sys.stdout.write(text)
        return 0
    try:
        with open(output, "w", encoding="utf-8") as f:
            f.write(text)
    except OSError as exc:
        raise AgentError(_("cannot write {path}: {error} (hint: a folder you may write, e.g. "
                           "-o ./denen.schema.json)").format(path=output, error=exc.strerror)) from None
    print(_("wrote {path} ({kind} config schema)").format(path=output, kind=kind), file=sys.stderr)
    return 0


def config_kind(path: str) -> str:
    """Which schema validates a file: ``console`` (top-level ``http:`` and ``links:``), ``bridge`` (``sink:``, no
    ``gateway:``), else ``gateway``."""
    from agent.bridge.config import looks_like_bridge_config  # noqa: PLC0415
    from agent.config import read_config_text  # noqa: PLC0415

    try:
        text = read_config_text(path)
    except ConfigError:
        return "gateway"  # unreadable: load_config reports it
    keys = set(re.findall(r"^([A-Za-z_][A-Za-z0-9_]*)\s*:", text, re.M))
    if {"http", "links"} <= keys and "gateway" not in keys:
        return "console"
    return "bridge" if looks_like_bridge_config(text) else "gateway"
