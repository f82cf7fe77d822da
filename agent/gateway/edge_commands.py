"""Commands from the backend (README "Commands"): the limits of a command document, and reading one into who asked
(:class:`CommandRequest`) and what it names. A command is hostile input: it is checked before anything is done, and
:class:`InvalidCommand` says why it was refused. Carrying commands out: agent.gateway.edge.Edge.on_command.
"""

from __future__ import annotations

import json
import re
import unicodedata
from dataclasses import dataclass
from typing import Any

from agent.errors import AgentError

RESULT_SCHEMA = "denen.result/1"
#: Largest command payload read, in bytes; a larger one is counted (``cmd.bad``) and not parsed.
CMD_MAX_BYTES = 4096
#: Deepest nesting of arrays/objects a command may have (a command needs 1). Checked before parsing: Python 3.13's
#: json parses any depth without a RecursionError, so the limit must be ours.
CMD_MAX_NESTING = 32
#: Most targets (keys and alert ids together) one ``cmd/alert-ack`` may name.
CMD_MAX_TARGETS = 64
COMMANDS = ("alert-ack", "siren-silence", "test-chirp")
_REQUEST_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")
# Alert keys and ids are made of gateway, radio and node names ([a-z0-9_-]) and the rules' ':' and '#'.
_ALERT_KEY = re.compile(r"[a-z0-9_][a-z0-9_:-]{0,127}")
_ALERT_ID = re.compile(r"[a-z0-9_][a-z0-9_:#-]{0,199}")
_BY_MAX = 100
# Unicode categories refused in ``by``: controls, format characters (bidi overrides), surrogates, line breaks.
_BY_BAD_CATEGORIES = frozenset({"Cc", "Cf", "Cs", "Zl", "Zp"})
_VIA = ("console", "cli")


@dataclass(frozen=True, slots=True)
class CommandRequest:
    """Who sent a command and how (the fields every command document may carry)."""

    command: str
    request_id: str | None = None
    by: str | None = None
    via: str | None = None


class InvalidCommand(AgentError, ValueError):
    """A command document that cannot be carried out; the message says why.

    Attributes:
        request: what was read of the document before the problem (for the answer's ``request_id``), or None.
    """

    def __init__(self, message: str, request: CommandRequest | None = None) -> None:
        super().__init__(message)
        self.request = request


def read_command(name: str, payload: bytes) -> tuple[CommandRequest, dict[str, Any]]:
    """The request and the document of command ``name`` (one of :data:`COMMANDS`) from its raw payload.

    Raises:
        InvalidCommand: too large, not UTF-8, not a JSON object, nested too deeply, or a bad ``request_id``,
            ``by`` or ``via``.
    """
    req = CommandRequest(name)
    if len(payload) > CMD_MAX_BYTES:
        raise InvalidCommand(f"{len(payload)} bytes, over the {CMD_MAX_BYTES}-byte limit", req)
    try:
        text = payload.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InvalidCommand(f"not UTF-8 ({exc.reason} at byte {exc.start})", req) from None
    if text.count("[") + text.count("{") > CMD_MAX_NESTING and _nesting(text) > CMD_MAX_NESTING:
        raise InvalidCommand("not JSON (nested too deeply)", req)
    try:
        doc = json.loads(text)
    except RecursionError:
        raise InvalidCommand("not JSON (nested too deeply)", req) from None
    except ValueError as exc:
        raise InvalidCommand(f"not JSON ({exc})", req) from None
    if not isinstance(doc, dict):
        raise InvalidCommand(f"not a JSON object but {type(doc).__name__}", req)
    rid = doc.get("request_id")
    if rid is not None and not (isinstance(rid, str) and _REQUEST_ID.fullmatch(rid)):
        raise InvalidCommand("request_id must be 1-64 characters of A-Z a-z 0-9 _ -", req)
    req = CommandRequest(name, rid)
    by, via = doc.get("by"), doc.get("via")
    if by is not None and not (isinstance(by, str) and 0 < len(by) <= _BY_MAX and _text_ok(by)):
        raise InvalidCommand(f"by must be text of 1-{_BY_MAX} characters without control characters", req)
    if via is not None and via not in _VIA:
        raise InvalidCommand(f"via must be one of {', '.join(_VIA)}", req)
    return CommandRequest(name, rid, by, via), doc


def alert_targets(doc: dict[str, Any]) -> list[tuple[str, str]]:
    """What a ``cmd/alert-ack`` names: ``(field, target)`` pairs, ``field`` "keys" (``<type>:<node>``) or
    "alert_ids" (``alert_id`` counts as one of those).

    Raises:
        InvalidCommand: no target, more than :data:`CMD_MAX_TARGETS`, or one that is not a key or id.
    """
    targets: list[tuple[str, str]] = []
    for field, pattern, what in (("keys", _ALERT_KEY, "alert keys (<type>:<node>)"),
                                 ("alert_ids", _ALERT_ID, "alert ids")):
        items = doc.get(field)
        if items is None:
            continue
        if not isinstance(items, list) or len(items) > CMD_MAX_TARGETS:
            raise InvalidCommand(f"{field} must be a list of at most {CMD_MAX_TARGETS} {what}")
        for item in items:
            if not (isinstance(item, str) and pattern.fullmatch(item)):
                raise InvalidCommand(f"{field} must be a list of {what}; one is not")
            targets.append((field, item))
    one = doc.get("alert_id")
    if one is not None:
        if not (isinstance(one, str) and _ALERT_ID.fullmatch(one)):
            raise InvalidCommand("alert_id must be an alert id")
        targets.append(("alert_ids", one))
    if not targets:
        raise InvalidCommand("no target: give keys, alert_ids or alert_id")
    if len(targets) > CMD_MAX_TARGETS:
        raise InvalidCommand(f"{len(targets)} targets; at most {CMD_MAX_TARGETS} per command")
    return targets


def silence_key(doc: dict[str, Any]) -> str:
    """The alert key a ``cmd/siren-silence`` names.

    Raises:
        InvalidCommand: ``key`` is missing or not an alert key.
    """
    key = doc.get("key")
    if not (isinstance(key, str) and _ALERT_KEY.fullmatch(key)):
        raise InvalidCommand("key must be an alert key (<type>:<node>)")
    return key


def _nesting(text: str) -> int:
    """Deepest nesting of JSON arrays and objects in ``text``, brackets inside strings not counted."""
    depth = deepest = 0
    in_string = escaped = False
    for ch in text:
        if in_string:
            if escaped:
                escaped = False
            elif ch == "\\":
                escaped = True
            elif ch == '"':
                in_string = False
        elif ch == '"':
            in_string = True
        elif ch in "[{":
            depth += 1
            deepest = max(deepest, depth)
        elif ch in "]}":
            depth -= 1
    return deepest


def _text_ok(text: str) -> bool:
    return not any(unicodedata.category(c) in _BY_BAD_CATEGORIES for c in text)
