"""What the bridge takes from a gateway: the schema names and vocabularies of the ``denen.*`` documents, the topic
scheme, the outcome of a conversion (:class:`Converted`, :class:`Reject`) and the text checks every part of a
payload passes before it reaches a line, a dead letter or a log line. The rules themselves:
:mod:`agent.bridge.lineproto`.
"""

from __future__ import annotations

import json
import re
import reprlib
from dataclasses import dataclass, field
from typing import Any

from agent.bridge.errors import BridgeError

__all__ = ["COMMANDS", "DETAIL_MAX", "DOCUMENT_TOPICS", "GATEWAY_KINDS", "HELD_REASONS", "ID_RE", "KINDS", "LANES",
           "NODE_KINDS", "OUTCOMES", "READINGS_SCHEMA", "RESERVED_FIELDS", "RESULT_SCHEMA", "SHAPE_ERRORS",
           "SIREN_WHY", "STATE_SCHEMA", "STATUS_SCHEMA", "VIAS", "Converted", "Invalid", "Reject", "checked_object",
           "is_int", "is_number", "lone_surrogate", "printable", "reading_json", "show"]

READINGS_SCHEMA = "denen.readings/1"
STATUS_SCHEMA = "denen.status/1"
STATE_SCHEMA = "denen.state/1"
RESULT_SCHEMA = "denen.result/1"
#: The commands a gateway answers (``<prefix>/<gateway>/cmd/<name>``) and every outcome it may report; both are
#: tags of ``command_result``, so they stay these few.
COMMANDS = frozenset({"alert-ack", "siren-silence", "test-chirp"})
OUTCOMES = frozenset({"stopped", "already_acknowledged", "not_active", "silenced", "not_sounding", "no_siren",
                      "chirped", "no_outputs", "invalid"})
#: Why a siren sounds (``siren.why`` of a state document); None: it does not.
SIREN_WHY = frozenset({"alert", "offline", "test", None})
#: Why readings are held (``held.reason``).
HELD_REASONS = frozenset({"clock_unsynced", None})
#: Who sent a command (``via``).
VIAS = frozenset({"console", "cli", None})

NODE_KINDS = frozenset({"sos", "trap", "water_level", "rain", "tilt", "weather", "heartbeat"})
KINDS = NODE_KINDS | {"gateway_health", "alert"}
#: Kinds the gateway makes itself (node ``gateway``).
GATEWAY_KINDS = frozenset({"gateway_health", "alert"})
LANES = frozenset({"sos", "alarm", "telemetry", "diagnostics"})
#: Field names a value cannot have: the fields the bridge adds to a reading's point (``message`` on alerts);
#: ``time``, which InfluxDB refuses as a field key; every tag key the bridge writes (a field named ``gateway``
#: would make InfluxQL's ``WHERE "gateway" = 'x'`` compare the field, so every other point drops out of the
#: dashboards' queries); and the column names Flux gives every record (InfluxDB 2/3).
RESERVED_FIELDS = frozenset({"fcnt", "rssi", "snr", "auth_ok", "clock_ok", "message", "time",
                             "gateway", "site", "node", "name", "kind", "type", "severity",
                             "_field", "_measurement", "_value", "_time", "_start", "_stop", "result", "table"})
#: Longest Reject detail, in characters.
DETAIL_MAX = 1000

ID_RE = re.compile(r"[a-z0-9][a-z0-9_-]{0,62}\Z")
#: Topics of one gateway document each (``<prefix>/<gateway>/<topic>``).
DOCUMENT_TOPICS = frozenset({"status", "state", "results"})
_LONE_SURROGATE_RE = re.compile("[\ud800-\udfff]")
#: What a detail or a reading id must not carry into a log line or the dead-letter store.
_UNPRINTABLE_RE = re.compile("[\x00-\x1f\x7f-\x9f\ud800-\udfff]")

show = reprlib.Repr()
show.maxlevel, show.maxstring, show.maxother, show.maxlist, show.maxdict = 2, 80, 80, 4, 4


def printable(text: str, limit: int = DETAIL_MAX) -> str:
    """``text`` safe for a log line and any UTF-8 store: control characters and lone surrogates written as
    ``\\xNN`` / ``\\uNNNN``, and cut to ``limit`` characters (then an ellipsis marks the cut)."""
    cut = len(text) > limit
    text = text[:limit]
    if _UNPRINTABLE_RE.search(text):
        text = _UNPRINTABLE_RE.sub(lambda m: f"\\x{ord(m[0]):02x}" if ord(m[0]) < 0x100 else f"\\u{ord(m[0]):04x}",
                                   text)
        if len(text) > limit:
            text, cut = text[:limit], True
    return text + "…" if cut else text


def lone_surrogate(obj: Any) -> str | None:
    """The first string (key or value) of a JSON tree that holds a lone surrogate, or None. Iterative: a tree that
    JSON could parse may still be too deep for recursion from here."""
    stack = [obj]
    while stack:
        o = stack.pop()
        if type(o) is str:
            if _LONE_SURROGATE_RE.search(o):
                return o
        elif type(o) is dict:
            for k, v in o.items():
                if _LONE_SURROGATE_RE.search(k):
                    return k
                stack.append(v)
        elif type(o) is list:
            stack.extend(o)
    return None


def reading_json(reading: Any) -> bytes:
    """A rejected reading as JSON text for the dead-letter store: UTF-8 as sent, or ``\\u`` escapes where it holds
    a lone surrogate (which UTF-8 cannot carry)."""
    try:
        return json.dumps(reading, ensure_ascii=False, separators=(",", ":")).encode()
    except UnicodeEncodeError:
        return json.dumps(reading, ensure_ascii=True, separators=(",", ":")).encode()
    except RecursionError:
        return b'"(not kept: nested too deeply to write back as JSON)"'

# -- results ---------------------------------------------------------------------------------------------------
@dataclass(slots=True)
class Reject:
    """Something that can never be written, for the dead-letter store.

    Attributes:
        reason: short code (module docstring table), counted per code.
        detail: what exactly is wrong, in plain English; printable, at most :data:`DETAIL_MAX` characters (plus
            an ellipsis).
        content: what is kept: the raw payload (``kind`` "payload") or one reading as JSON text ("reading").
        kind: ``"payload"`` when the whole message is rejected, ``"reading"`` for one reading of it.
        reading_id: the reading's ``id`` when known (printable).
    """

    reason: str
    detail: str
    content: bytes
    kind: str = "payload"
    reading_id: str | None = None


@dataclass(slots=True)
class Converted:
    """The outcome for one MQTT message.

    Attributes:
        lines: line protocol lines, without newlines.
        sources: for each line, the id of the reading it comes from, or ``<topic>:<gateway>`` for the points of a
            document (``status:``, ``state:``, ``results:``); a reading id never holds a colon.
        rejects: parts of the message that can never be written.
        notes: (code, detail) of what was written but is worth counting: ``site_mismatch`` (the payload's site
            differs from the registry's, and was ignored), ``unknown_gateway`` (not in the registry: written with
            site ``unknown``). Details are printable.
        readings: readings in the message that produced lines.
        gateway: the gateway named by the topic, or None for a topic outside the scheme.
        claims: with de-duplication on (:mod:`agent.bridge.dedupe`): (index in ``lines`` of the first point a
            frame gave, how many points follow from there, the frame's content identity) per node reading (its
            measurement and ``node_health`` points) and per alert raised or cleared by a node's frame (its
            ``alert`` point).
    """

    lines: list[str] = field(default_factory=list)
    sources: list[str] = field(default_factory=list)
    rejects: list[Reject] = field(default_factory=list)
    notes: list[tuple[str, str]] = field(default_factory=list)
    readings: int = 0
    gateway: str | None = None
    claims: list[tuple[int, int, str]] = field(default_factory=list)


class Invalid(BridgeError):
    """Internal: a document or reading breaks the schema (never leaves this module)."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason
        self.detail = detail


#: What a check may raise on JSON of a shape nothing expects (a list where a name goes, an integer beyond the float
#: range, a tree too deep to compare).
SHAPE_ERRORS = (TypeError, OverflowError, ValueError, RecursionError)


def is_int(v: object) -> bool:
    return type(v) is int


def is_number(v: object) -> bool:
    return (type(v) is float or type(v) is int) and not isinstance(v, bool)


def checked_object(obj: Any, what: str, keys: frozenset[str], required: tuple[str, ...], reason: str, *,
                   where: str | None = None) -> dict[str, Any]:
    """``obj`` as a JSON object with its ``required`` keys and no others than ``keys``, or :class:`Invalid`
    (``reason``). ``what`` names it in the details; ``where`` in the unknown-keys one (default ``what``)."""
    if not isinstance(obj, dict):
        raise Invalid(reason, f"{what} is not an object")
    missing = [k for k in required if k not in obj]
    if missing:
        raise Invalid(reason, f"{what} lacks {', '.join(missing)}")
    extra = obj.keys() - keys
    if extra:
        raise Invalid(reason, f"unknown keys in {where or what}: {', '.join(map(repr, sorted(extra)))}")
    return obj
