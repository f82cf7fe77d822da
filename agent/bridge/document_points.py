"""The gateway's documents to points: ``denen.status/1`` (``gateway_status``), ``denen.state/1``
(``gateway_state``) and ``denen.result/1`` (``command_result``), README "InfluxDB schema"; the rules:
:mod:`agent.bridge.lineproto`.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

from agent.bridge.encoding import escape_string_field
from agent.bridge.registry import GatewayRegistry
from agent.bridge.schema import (
    COMMANDS,
    HELD_REASONS,
    OUTCOMES,
    RESULT_SCHEMA,
    SIREN_WHY,
    STATE_SCHEMA,
    STATUS_SCHEMA,
    VIAS,
    Converted,
    Invalid,
    checked_object,
    is_int,
    lone_surrogate,
    show,
)
from agent.gateway.clock import EPOCH_FLOOR_US

__all__ = ["DocumentPoints"]

_STATUS_KEYS = frozenset({"schema", "gateway", "state", "agent", "ts_us"})
_STATE_REQUIRED = ("ts_us", "siren", "lamp", "held", "alerts")
_STATE_KEYS = frozenset(_STATE_REQUIRED) | {"schema", "gateway", "relays"}
_SIREN_KEYS = frozenset({"configured", "on", "why", "alert", "silenced"})
_LAMP_KEYS = frozenset({"configured", "state"})
_HELD_KEYS = frozenset({"active", "reason", "count", "until_us"})
#: A lamp state (``ok``, ``no_backhaul``, ``alarm``, ``off``; a newer gateway's own still fits).
_STATE_NAME_RE = re.compile(r"[a-z][a-z0-9_]{0,39}\Z")
_RESULT_REQUIRED = ("ts_us", "command", "results")
_RESULT_KEYS = frozenset(_RESULT_REQUIRED) | {"schema", "gateway", "request_id", "by", "via"}
#: ``detail``: why a command was invalid, in the gateway's words (checked as text, not written).
_RESULT_ENTRY_KEYS = frozenset({"target", "outcome", "detail"})
_REQUEST_ID_RE = re.compile(r"[A-Za-z0-9_-]{1,64}\Z")


class DocumentPoints:
    """The documents half of :class:`agent.bridge.lineproto.Serializer` (which sets these attributes)."""

    registry: GatewayRegistry
    max_future_us: int
    _now_us: Callable[[], int]
    _site: Callable[[str, str | None, Converted], str]
    _outside_window: Callable[..., int]

    @staticmethod
    def _document(doc: Any, schema: str, keys: frozenset[str], required: tuple[str, ...], what: str, gateway: str,
                  check_text: bool) -> None:
        """The checks every gateway document passes: an object of ``schema``, text only, known keys, the topic's
        gateway, the ``required`` keys."""
        if not isinstance(doc, dict):
            raise Invalid("invalid_schema", "payload is not a JSON object")
        found = doc.get("schema")
        if found != schema:
            raise Invalid("unknown_schema" if isinstance(found, str) else "invalid_schema",
                          f"schema {show.repr(found)} is not {schema!r}")
        if check_text:
            bad = lone_surrogate(doc)
            if bad is not None:
                raise Invalid("invalid_text", f"the {what} holds a lone surrogate, which is not text: "
                              f"{show.repr(bad)}")
        extra = doc.keys() - keys
        if extra:
            raise Invalid("invalid_schema", f"unknown keys in the {what}: {', '.join(map(repr, sorted(extra)))}")
        if doc.get("gateway") != gateway:
            raise Invalid("wrong_gateway", f"the {what} names gateway {show.repr(doc.get('gateway'))}, its topic "
                          f"{gateway!r}")
        missing = [k for k in required if k not in doc]
        if missing:
            raise Invalid("invalid_schema", f"the {what} lacks {', '.join(missing)}")

    def _document_time(self, ts: Any, latest: int, *, unsynced: bool = False) -> int:
        """A document's ``ts_us``, checked like a reading's: between 2020 and ``max_future_s`` ahead, or, from a
        gateway that says its clock is not set (``unsynced``), the bridge's time instead."""
        if not is_int(ts):
            raise Invalid("invalid_schema", f"ts_us {show.repr(ts)} is not an integer")
        if EPOCH_FLOOR_US <= ts <= latest:
            return ts
        return self._outside_window(ts, latest, unsynced=unsynced)

    def _status(self, doc: Any, gateway: str, out: Converted, check_text: bool, latest: int) -> None:
        self._document(doc, STATUS_SCHEMA, _STATUS_KEYS, (), "status", gateway, check_text)
        state = doc.get("state")
        if state not in ("online", "offline"):
            raise Invalid("invalid_schema", f"state {show.repr(state)} is not online or offline")
        agent = doc.get("agent")
        if agent is not None and not isinstance(agent, str):
            raise Invalid("invalid_schema", "agent is not text")
        ts = doc.get("ts_us")
        # The Last Will carries no time: the broker sent it when the gateway vanished.
        ts = self._now_us() if ts is None else self._document_time(ts, latest)
        site = self._site(gateway, None, out)
        fields = ["online=1.0" if state == "online" else "online=0.0"]
        if agent is not None:
            fields.append(f"agent={escape_string_field(agent)}")
        info = self.registry.lookup(gateway)
        if info is not None and info.name:
            fields.append(f"name={escape_string_field(info.name)}")
        if info is not None and info.municipality:
            fields.append(f"municipality={escape_string_field(info.municipality)}")
        out.lines.append(f"gateway_status,gateway={gateway},site={site} {','.join(fields)} {ts}")
        out.sources.append(f"status:{gateway}")

    def _state(self, doc: Any, gateway: str, out: Converted, check_text: bool, latest: int) -> None:
        self._document(doc, STATE_SCHEMA, _STATE_KEYS, _STATE_REQUIRED, "state", gateway, check_text)
        siren = _part(doc, "siren", _SIREN_KEYS, ("configured", "on"))
        lamp = _part(doc, "lamp", _LAMP_KEYS, ("configured", "state"))
        held = _part(doc, "held", _HELD_KEYS, ("active", "count"))
        for name, part, key in (("siren", siren, "configured"), ("siren", siren, "on"),
                                ("lamp", lamp, "configured"), ("held", held, "active")):
            if type(part[key]) is not bool:
                raise Invalid("invalid_schema", f"{name}.{key} {show.repr(part[key])} is not true or false")
        why = siren.get("why")
        if why not in SIREN_WHY:
            raise Invalid("invalid_schema", f"siren.why {show.repr(why)} is not alert, offline, test or null")
        alert = siren.get("alert")
        if alert is not None and not isinstance(alert, str):
            raise Invalid("invalid_schema", "siren.alert is not text")
        silenced = siren.get("silenced", [])
        if not isinstance(silenced, list) or not all(isinstance(k, str) for k in silenced):
            raise Invalid("invalid_schema", "siren.silenced is not a list of alert keys")
        lamp_state = lamp["state"]
        if not isinstance(lamp_state, str) or not _STATE_NAME_RE.match(lamp_state):
            raise Invalid("invalid_schema", f"lamp.state {show.repr(lamp_state)} is not a state name")
        count, reason, until = held["count"], held.get("reason"), held.get("until_us")
        if not is_int(count) or count < 0:
            raise Invalid("invalid_schema", f"held.count {show.repr(count)} is not a count")
        if reason not in HELD_REASONS:
            raise Invalid("invalid_schema", f"held.reason {show.repr(reason)} is not clock_unsynced or null")
        if until is not None and not is_int(until):
            raise Invalid("invalid_schema", f"held.until_us {show.repr(until)} is not an integer")
        relays = doc.get("relays", [])
        if not isinstance(relays, list):
            raise Invalid("invalid_schema", "relays is not a list")
        alerts = doc["alerts"]
        if not isinstance(alerts, list):
            raise Invalid("invalid_schema", "alerts is not a list")
        unacknowledged = 0
        for a in alerts:
            if not isinstance(a, dict):
                raise Invalid("invalid_schema", "an entry of alerts is not an object")
            by = a.get("acknowledged_by")
            if by is None:
                unacknowledged += 1
            elif not isinstance(by, str):
                raise Invalid("invalid_schema", f"alerts[].acknowledged_by {show.repr(by)} is not text or null")
        # A gateway that says its clock was never set stamps its state like its unsynced readings: decades off.
        ts = self._document_time(doc["ts_us"], latest, unsynced=reason == "clock_unsynced")
        site = self._site(gateway, None, out)
        # Every field in every point (null as ""), so that last() of each comes from the same document.
        fields = ",".join((
            "siren_on=1.0" if siren["on"] else "siren_on=0.0", f"siren_why={escape_string_field(why or '')}",
            f"siren_alert={escape_string_field(alert or '')}", f"lamp={escape_string_field(lamp_state)}",
            "held_active=1.0" if held["active"] else "held_active=0.0", f"held_count={float(count)!r}",
            f"alerts_open={float(len(alerts))!r}", f"alerts_unacknowledged={float(unacknowledged)!r}"))
        out.lines.append(f"gateway_state,gateway={gateway},site={site} {fields} {ts}")
        out.sources.append(f"state:{gateway}")

    def _results(self, doc: Any, gateway: str, out: Converted, check_text: bool, latest: int) -> None:
        self._document(doc, RESULT_SCHEMA, _RESULT_KEYS, _RESULT_REQUIRED, "result", gateway, check_text)
        command = doc["command"]
        if command not in COMMANDS:
            raise Invalid("invalid_schema", f"command {show.repr(command)} is not one of "
                          f"{', '.join(sorted(COMMANDS))}")
        request_id, by, via = doc.get("request_id"), doc.get("by"), doc.get("via")
        if request_id is not None and (not isinstance(request_id, str) or not _REQUEST_ID_RE.match(request_id)):
            raise Invalid("invalid_schema", f"request_id {show.repr(request_id)} is not 1-64 of A-Z a-z 0-9 _ -")
        if by is not None and not isinstance(by, str):
            raise Invalid("invalid_schema", "by is not text")
        if via not in VIAS:
            raise Invalid("invalid_schema", f"via {show.repr(via)} is not console, cli or null")
        results = doc["results"]
        if not isinstance(results, list) or not results:
            raise Invalid("invalid_schema", "results is not a list, or empty")
        entries: list[tuple[str, str]] = []
        for r in results:
            if not isinstance(r, dict):
                raise Invalid("invalid_schema", "an entry of results is not an object")
            extra = r.keys() - _RESULT_ENTRY_KEYS
            if extra:
                raise Invalid("invalid_schema", f"unknown keys in a result: {', '.join(map(repr, sorted(extra)))}")
            target, outcome = r.get("target"), r.get("outcome")
            if outcome not in OUTCOMES:
                raise Invalid("invalid_schema", f"outcome {show.repr(outcome)} is not one of "
                              f"{', '.join(sorted(OUTCOMES))}")
            if target is not None and not isinstance(target, str):
                raise Invalid("invalid_schema", "a result's target is not text")
            if r.get("detail") is not None and not isinstance(r["detail"], str):
                raise Invalid("invalid_schema", "a result's detail is not text")
            entries.append((outcome, target or ""))
        ts = self._document_time(doc["ts_us"], latest)
        site = self._site(gateway, None, out)
        # Who asked, and which request: the same for every entry of the document.
        common = (f"by={escape_string_field(by or '')},request_id={escape_string_field(request_id or '')},"
                  f"via={escape_string_field(via or '')}")
        for i, (outcome, target) in enumerate(entries):
            # One point per target, a microsecond apart, so that none overwrites another.
            out.lines.append(f"command_result,command={command},gateway={gateway},outcome={outcome},site={site} "
                             f"target={escape_string_field(target)},{common} {ts + i}")
            out.sources.append(f"results:{gateway}")


def _part(doc: dict[str, Any], name: str, keys: frozenset[str], required: tuple[str, ...]) -> dict[str, Any]:
    """The object ``doc[name]`` with its required keys and no unknown ones, or :class:`Invalid`."""
    return checked_object(doc[name], name, keys, required, "invalid_schema")
