"""What the console knows of each gateway: its latest retained state document and the results it sends.

Both come from the gateways (``<prefix>/<gw>/state``, ``<prefix>/<gw>/results``, issue 11 contract) and are hostile
input: the broker vouches for the gateway id in the topic, nothing vouches for the content. A document is taken only
when it is a JSON object of the right schema naming the topic's gateway, within :data:`STATE_MAX_BYTES` /
:data:`RESULT_MAX_BYTES`, with at most :data:`ALERTS_MAX` alerts; anything else raises :class:`BadMessage` (the
caller counts and logs it) and the last good state stays. Free text (names, messages, ``by``) is cut and made
printable here: control characters become spaces and lone surrogates U+FFFD, so a page can always be encoded.
Pages escape it again as HTML.
"""

from __future__ import annotations

import json
import math
import re
import threading
from dataclasses import dataclass

from agent.console.links import GATEWAY_RE, KEY_RE
from agent.errors import AgentError

__all__ = ["ALERTS_MAX", "AlertView", "BadMessage", "GatewayState", "Result", "StateBook", "parse_result",
           "parse_state"]

STATE_MAX_BYTES = 256 * 1024
RESULT_MAX_BYTES = 16 * 1024
ALERTS_MAX = 1000
RESULTS_MAX = 256
#: Gateways whose state is kept at most (a stolen login cannot make the console's memory grow without end).
GATEWAYS_MAX = 10_000
_REQUEST_ID_RE = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
_BAD_TEXT_RE = re.compile("[\x00-\x1f\x7f-\x9f]")
_SURROGATE_RE = re.compile("[\ud800-\udfff]")
_COMMANDS = frozenset({"alert-ack", "siren-silence", "test-chirp"})


class BadMessage(AgentError, ValueError):
    """A state or result message that is not taken; ``reason`` is a short code for counters."""

    def __init__(self, reason: str, detail: str) -> None:
        self.reason = reason
        super().__init__(detail)


def _text(value: object, limit: int) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str):
        raise BadMessage("invalid_schema", f"text expected, got {type(value).__name__}")
    value = _SURROGATE_RE.sub("\ufffd", _BAD_TEXT_RE.sub(" ", value[:limit]))
    return value


def _number(value: object, what: str, low: float = -math.inf, high: float = math.inf) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value) \
            or not low <= value <= high:
        raise BadMessage("invalid_schema", f"{what} is not a number in {low}..{high}")
    return float(value)


@dataclass(frozen=True, slots=True)
class AlertView:
    """One open alert of a gateway, as its state document shows it (times in µs since the epoch)."""

    key: str
    id: str
    type: str
    node: str | None
    name: str | None
    severity: str
    since_us: int
    message: str
    value: float | None
    lat_deg: float | None
    lon_deg: float | None
    repeating: bool
    acknowledged_by: str | None


@dataclass(frozen=True, slots=True)
class GatewayState:
    """A gateway's latest state document."""

    gateway: str
    ts_us: int
    alerts: dict[str, AlertView]
    siren_configured: bool
    siren_on: bool
    siren_alert: str | None
    silenced: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Result:
    """A gateway's answer to one command: ``results`` is (target, outcome) per target."""

    gateway: str
    command: str
    request_id: str | None
    by: str | None
    via: str | None
    ts_us: int
    results: tuple[tuple[str | None, str], ...]

    def summary(self) -> str:
        """``sos:00a1b2c3 stopped, ...`` for log lines and pages."""
        return ", ".join(f"{t} {o}" if t else o for t, o in self.results) or "(no targets)"


def _load(gateway: str, payload: bytes, limit: int, schema: str) -> dict[str, object]:
    if len(payload) > limit:
        raise BadMessage("too_large", f"{len(payload)} bytes, more than {limit}")
    try:
        doc = json.loads(payload.decode("utf-8-sig"))
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise BadMessage("invalid_json", "not UTF-8 JSON") from None
    if not isinstance(doc, dict) or doc.get("schema") != schema:
        raise BadMessage("invalid_schema", f"not a {schema} document")
    if doc.get("gateway") != gateway:
        raise BadMessage("wrong_gateway", "the document names another gateway than its topic")
    ts = doc.get("ts_us")
    if isinstance(ts, bool) or not isinstance(ts, int) or ts < 0:
        raise BadMessage("invalid_schema", "ts_us is not a time in µs")
    return doc


def _alert(item: object) -> AlertView:
    if not isinstance(item, dict):
        raise BadMessage("invalid_schema", "an alert is not an object")
    key, alert_id, kind, severity = (item.get(k) for k in ("key", "id", "type", "severity"))
    if not isinstance(key, str) or not KEY_RE.match(key):
        raise BadMessage("invalid_schema", "an alert key is not <type>:<node>")
    if not isinstance(alert_id, str) or not 0 < len(alert_id) <= 200 or _BAD_TEXT_RE.search(alert_id):
        raise BadMessage("invalid_schema", f"alert {key}: id is not text")
    if not isinstance(kind, str) or not re.match(r"^[a-z0-9_]{1,64}$", kind):
        raise BadMessage("invalid_schema", f"alert {key}: type is not a name")
    since = item.get("since_us")
    if isinstance(since, bool) or not isinstance(since, int) or since < 0:
        raise BadMessage("invalid_schema", f"alert {key}: since_us is not a time in µs")
    node = item.get("node")
    if node is not None and (not isinstance(node, str) or not KEY_RE.match(node)):
        raise BadMessage("invalid_schema", f"alert {key}: node is not an id")
    return AlertView(
        key=key, id=alert_id, type=kind, node=node, name=_text(item.get("name"), 200),
        severity=_text(severity, 32) or "", since_us=since, message=_text(item.get("message"), 1000) or "",
        value=_number(item.get("value"), "value"), lat_deg=_number(item.get("lat_deg"), "lat_deg", -90, 90),
        lon_deg=_number(item.get("lon_deg"), "lon_deg", -180, 180), repeating=item.get("repeating") is True,
        acknowledged_by=_text(item.get("acknowledged_by"), 100),
    )


def parse_state(gateway: str, payload: bytes) -> GatewayState:
    """The ``denen.state/1`` document of ``gateway`` (the topic's id).

    Raises:
        BadMessage: anything but a well-formed document of that gateway.
    """
    doc = _load(gateway, payload, STATE_MAX_BYTES, "denen.state/1")
    alerts = doc.get("alerts", [])
    if not isinstance(alerts, list) or len(alerts) > ALERTS_MAX:
        raise BadMessage("invalid_schema", f"alerts is not a list of at most {ALERTS_MAX}")
    views = [_alert(a) for a in alerts]
    siren = doc.get("siren") or {}
    if not isinstance(siren, dict):
        raise BadMessage("invalid_schema", "siren is not an object")
    silenced = siren.get("silenced") or []
    if not isinstance(silenced, list) or not all(isinstance(s, str) and KEY_RE.match(s) for s in silenced[:ALERTS_MAX]):
        raise BadMessage("invalid_schema", "siren.silenced is not a list of alert keys")
    siren_alert = siren.get("alert")
    if siren_alert is not None and (not isinstance(siren_alert, str) or not KEY_RE.match(siren_alert)):
        raise BadMessage("invalid_schema", "siren.alert is not an alert key")
    return GatewayState(gateway=gateway, ts_us=int(doc["ts_us"]),  # type: ignore[call-overload]
                        alerts={a.key: a for a in views}, siren_configured=siren.get("configured") is True,
                        siren_on=siren.get("on") is True, siren_alert=siren_alert,
                        silenced=tuple(silenced[:ALERTS_MAX]))


def parse_result(gateway: str, payload: bytes) -> Result:
    """The ``denen.result/1`` document of ``gateway``.

    Raises:
        BadMessage: anything but a well-formed result of that gateway.
    """
    doc = _load(gateway, payload, RESULT_MAX_BYTES, "denen.result/1")
    command, request_id = doc.get("command"), doc.get("request_id")
    if command not in _COMMANDS:
        raise BadMessage("invalid_schema", "command is not alert-ack, siren-silence or test-chirp")
    if request_id is not None and (not isinstance(request_id, str) or not _REQUEST_ID_RE.match(request_id)):
        raise BadMessage("invalid_schema", "request_id is not 1..64 of [A-Za-z0-9_-]")
    items = doc.get("results")
    if not isinstance(items, list) or len(items) > RESULTS_MAX:
        raise BadMessage("invalid_schema", f"results is not a list of at most {RESULTS_MAX}")
    results: list[tuple[str | None, str]] = []
    for item in items:
        if not isinstance(item, dict) or not isinstance(item.get("outcome"), str) \
                or not re.match(r"^[a-z_]{1,32}$", item["outcome"]):
            raise BadMessage("invalid_schema", "a result has no outcome")
        results.append((_text(item.get("target"), 200), item["outcome"]))
    return Result(gateway=gateway, command=str(command), request_id=request_id, by=_text(doc.get("by"), 100),
                  via=_text(doc.get("via"), 16), ts_us=int(doc["ts_us"]),  # type: ignore[call-overload]
                  results=tuple(results))


class StateBook:
    """The latest state of every gateway (thread-safe: paho's thread writes, HTTP threads read)."""

    def __init__(self, *, max_gateways: int = GATEWAYS_MAX) -> None:
        self._lock = threading.Lock()
        self._states: dict[str, GatewayState] = {}
        self._changed = threading.Condition(self._lock)
        self.max_gateways = max_gateways

    def put(self, state: GatewayState) -> bool:
        """Keep ``state`` as its gateway's latest; False when the book is full and the gateway is new."""
        with self._lock:
            if state.gateway not in self._states and len(self._states) >= self.max_gateways:
                return False
            self._states[state.gateway] = state
            self._changed.notify_all()
            return True

    def drop(self, gateway: str) -> None:
        """Forget ``gateway`` (its retained state was removed)."""
        with self._lock:
            self._states.pop(gateway, None)
            self._changed.notify_all()

    def get(self, gateway: str) -> GatewayState | None:
        with self._lock:
            return self._states.get(gateway)

    def wait_for(self, gateway: str, timeout: float) -> GatewayState | None:
        """The state of ``gateway``, waiting up to ``timeout`` seconds for one to arrive."""
        with self._lock:
            self._changed.wait_for(lambda: gateway in self._states, timeout)
            return self._states.get(gateway)

    def holding(self, key: str, *, besides: str) -> list[str]:
        """The gateways other than ``besides`` whose state lists ``key`` (``<type>:<node>``) as an open alert not
        acknowledged yet: where valleys overlap, several gateways raise an alert for the same node's event."""
        with self._lock:
            return sorted(gw for gw, st in self._states.items()
                          if gw != besides and (a := st.alerts.get(key)) is not None and a.acknowledged_by is None)

    def __len__(self) -> int:
        with self._lock:
            return len(self._states)


def gateway_of(topic: str, prefix: str, leaf: str) -> str | None:
    """The gateway id of ``<prefix>/<gw>/<leaf>``, or None for any other topic."""
    head = prefix + "/"
    if not topic.startswith(head) or not topic.endswith("/" + leaf):
        return None
    gateway = topic[len(head):-len(leaf) - 1]
    return gateway if GATEWAY_RE.match(gateway) else None
