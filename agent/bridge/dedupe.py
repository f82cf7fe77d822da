"""One point per node frame, however many gateways heard it and whichever bridge handled each copy.

Where valleys overlap, one node frame reaches two or three gateways. Each publishes it as its own reading
(``<gateway>/<node>/<fcnt>``, its own receive time, RSSI and SNR), and the copies may be handled by different
bridges of one shared subscription. With ``dedupe`` configured the bridge writes, per frame:

* one point in the reading's measurement and one ``node_health`` point, whichever copies arrive, in any order,
  through any bridges;
* one ``node_link`` point per reception (tags of the receiving gateway; ``fcnt``, ``rssi``, ``snr``; at that
  gateway's receive time), so each gateway's link to the node stays visible.

The rule (atomic in redis, so it holds under races between bridges):

1. A frame's content identity is ``<node>:<fcnt>:<kind>:<digest of its values>``: the same for every gateway that
   decoded the same frame. The reading envelope carries no key epoch; the values digest stands in for it, so a
   counter that starts again after a node is re-keyed names a new frame unless it carries the very same values
   within the window.
2. Each copy claims the identity with ``SET <key> <lines> NX GET EX window_s``, where ``<lines>`` are the two points
   its own reading converts to (measurement, then ``node_health``). The first claim to reach redis registers its
   lines; every later claim (also the first's redelivery, and any later copy within ``window_s``) gets back the
   registered lines and writes those instead of its own when they are the same event
   (:func:`same_event`): as many lines, and per line the same measurement, the same tags but ``gateway`` and
   ``name`` (so the same site: copies merge within one site only), the same fields but ``rssi`` and ``snr`` (the
   values, ``fcnt``, ``auth_ok``, ``clock_ok``, an alert's ``raised``, ``message`` and ``severity``), and
   timestamps at most :data:`SAME_EVENT_US` apart. So every copy writes byte-identical points: same measurement,
   tags (the first reception's gateway, site and name) and timestamp (the first reception's), which InfluxDB stores
   as one point. Registered lines that are not the same event (a hostile or misconfigured gateway that claimed
   first with other content, another site or a time far off) are never written for another gateway's copy: the
   copy writes its own lines and is counted in ``dedupe_conflicts``. The worst a gateway login can cause through
   a claim is a duplicate point, never a substituted one.
3. An alert raised or cleared by a node's frame (its ``reading`` names ``<gateway>/<node>/<fcnt>``, a reading of
   the gateway that publishes the alert: an SOS, a fired trap, a river stage crossed) is the same event whichever
   gateway's rules raised it: its identity is ``alert:<type>:<node>:<fcnt>:<state>`` and its one ``alert`` point
   is claimed the same way (and checked as in 2), so the dashboards and alert rules count one SOS once. Alerts
   without a frame (a silent node, a gateway's own condition) are each gateway's own and are not merged.
4. No copy depends on another being written: a bridge killed after its claim leaves its message unacknowledged,
   the broker sends it again, and whoever gets it writes the registered lines.

Bounds and failure: a claim lives ``window_s`` seconds (a copy later than that, e.g. from a gateway whose backhaul
was down longer, claims again and makes a second point under its own gateway: a duplicate, never a loss). A claim
costs redis about the length of its two lines (some 400 bytes) for the window. While redis cannot be reached,
claims are skipped and each copy is written as its own reading, as without de-duplication (duplicates during the
outage, nothing lost or held back: an SOS must not wait for a cache); redis is tried again after a back-off
(doubling from 1 s to :data:`BACKOFF_MAX_S`), so a redis that does not answer at all costs a batch at most
``timeout_s`` once per back-off.

Redis should be reachable by the bridges only (its own network or socket, a password, TLS across hosts): whatever
it returns is checked again before it is written (rule 2), but it decides which copies merge, and a client that
can write it can make every copy a duplicate.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from agent.bridge.encoding import split_line
from agent.bridge.errors import BridgeError
from agent.i18n import _

if TYPE_CHECKING:  # the client is imported when de-duplication is configured, not with the bridge
    import redis

__all__ = ["BACKOFF_MAX_S", "SAME_EVENT_US", "FrameClaims", "alert_key", "frame_key", "redis_address", "same_event"]

log = logging.getLogger("agent.bridge.bridge")

#: Longest wait, in seconds, before redis is tried again after a failure (doubling from 1 s).
BACKOFF_MAX_S = 30.0
#: Widest gap, in µs, between the timestamps of two receptions of one event: gateways' receive times differ by
#: their clocks' error and the backhaul's jitter, never by a minute.
SAME_EVENT_US = 60_000_000
#: Tags and fields in which the receptions of one frame differ: who heard it, under which name, and how well.
_RECEPTION_TAGS = frozenset({"gateway", "name"})
_RECEPTION_FIELDS = frozenset({"rssi", "snr"})
_FLOAT_RE = re.compile(r"-?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?\Z")


def frame_key(prefix: str, node: str, fcnt: int, kind: str, values: Mapping[str, Any]) -> str:
    """A frame's gateway-independent identity: ``<prefix><node>:<fcnt>:<kind>:<digest of the values>``."""
    text = json.dumps(values, sort_keys=True, separators=(",", ":"), allow_nan=False)
    digest = hashlib.blake2b(text.encode(), digest_size=8).hexdigest()
    return f"{prefix}{node}:{fcnt}:{kind}:{digest}"


def alert_key(prefix: str, alert: Mapping[str, Any], gateway: str) -> str | None:
    """An alert's gateway-independent identity, ``<prefix>alert:<type>:<node>:<fcnt>:<state>``, when a node's frame
    raised or cleared it (its ``reading`` is ``<gateway>/<node>/<fcnt>`` of that node, as heard by ``gateway``,
    the one that published the alert); else None (not merged)."""
    node, reading = alert.get("node"), alert.get("reading")
    if not isinstance(node, str) or not isinstance(reading, str):
        return None
    parts = reading.split("/")
    fcnt = parts[-1]
    if len(parts) != 3 or parts[0] != gateway or parts[1] != node or not (fcnt.isascii() and fcnt.isdigit()
                                                                           and len(fcnt) <= 10):
        return None
    return f"{prefix}alert:{alert['type']}:{node}:{int(fcnt)}:{alert['state']}"


def redis_address(url: str) -> str:
    """The redis URL without its password, for log lines."""
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    if parts.scheme == "unix":
        return f"unix:{parts.path}"
    host = parts.netloc.rsplit("@", 1)[-1]  # the part after any user:password
    return f"{parts.scheme}://{host if ':' in host else f'{host}:6379'}{parts.path}"


class FrameClaims:
    """The claims of one bridge in the shared redis (see the module docstring).

    Args:
        url: ``redis://host:port/db``, ``rediss://`` (TLS) or ``unix:///path``; redis-server 7.0 or newer
            (``SET`` with both ``NX`` and ``GET``).
        window_s: how long a claim lives, in seconds.
        timeout_s: the longest wait for redis per batch, in seconds (connect and answer).
        key_prefix: prefix of every key (several installations may share one redis).
        stats: the bridge's counters: ``frames_claimed`` (copies that registered their lines),
            ``frames_merged`` (copies written with lines registered earlier), ``frames_unclaimed`` (copies
            written as their own reading because redis failed), ``dedupe_failures`` (failed batches),
            ``dedupe_conflicts`` (copies written as their own because the lines registered first were not the
            same event).
        client: a redis client to use instead of one made from ``url`` (tests).

    Raises:
        BridgeError: the redis package is not installed, or ``url`` cannot be used.
    """

    def __init__(self, url: str, *, window_s: float, timeout_s: float = 0.5, key_prefix: str = "denen:frame:",
                 stats: Counter[str] | None = None, client: redis.Redis | None = None) -> None:
        try:
            import redis as redis_lib  # only a bridge that de-duplicates pays for the import
        except ImportError:
            raise BridgeError(_("the dedupe section needs the Python package redis: install denen with the bridge "
                                "extra (pip install 'denen[bridge]')")) from None

        self._errors: tuple[type[BaseException], ...] = (redis_lib.RedisError, OSError)
        self.url = url
        self.address = redis_address(url)
        self.window_ms = max(1, int(window_s * 1000))
        self.key_prefix = key_prefix
        self.stats: Counter[str] = stats if stats is not None else Counter()
        if client is None:
            try:
                client = redis_lib.Redis.from_url(url, socket_timeout=timeout_s, socket_connect_timeout=timeout_s,
                                                  health_check_interval=30)
            except (ValueError, redis_lib.RedisError) as exc:
                raise BridgeError(_("dedupe.redis_url {address}: {error}").format(address=self.address,
                                                                                  error=exc)) from None
        self._redis = client
        self._down_until = 0.0
        self._backoff_s = 1.0

    def close(self) -> None:
        self._redis.close()

    def resolve(self, claims: Sequence[tuple[str, str]],
                on_conflict: Callable[[int, str], None] | None = None) -> list[str | None]:
        """Claim each frame; returns for each the lines to write instead of the copy's own (None: its own).

        Args:
            claims: (key, the copy's own lines joined by newlines) per frame copy, in arrival order.
            on_conflict: called with (index in ``claims``, the registering gateway or ``"?"``) for each copy whose
                registered lines are not the same event (:func:`same_event`): that copy is written as its own.
        """
        if not claims:
            return []
        if time.monotonic() < self._down_until:
            self.stats["frames_unclaimed"] += len(claims)
            return [None] * len(claims)
        try:
            with self._redis.pipeline(transaction=False) as pipe:
                for key, lines in claims:
                    pipe.set(key, lines, nx=True, get=True, px=self.window_ms)
                answers = pipe.execute()
        except self._errors as exc:
            self._failed(exc, len(claims))
            return [None] * len(claims)
        if self._down_until:
            log.info("%s", _("bridge: redis at {address} answers again; frames heard by several gateways are merged "
                             "again").format(address=self.address))
            self._down_until, self._backoff_s = 0.0, 1.0
        out: list[str | None] = []
        for index, (answer, (_key, own)) in enumerate(zip(answers, claims, strict=True)):
            registered = _registered(answer, own)
            if registered is None:
                self.stats["frames_claimed"] += 1
            elif same_event(registered, own) is None:
                self.stats["dedupe_conflicts"] += 1
                if on_conflict is not None:
                    on_conflict(index, _registrar(registered))
                registered = None
            else:
                self.stats["frames_merged"] += 1
            out.append(registered)
        return out

    def _failed(self, exc: BaseException, copies: int) -> None:
        self.stats["dedupe_failures"] += 1
        self.stats["frames_unclaimed"] += copies
        if not self._down_until:
            log.warning("%s", _("bridge: redis at {address} failed ({error}): frames are written as each gateway "
                                "sent them (copies heard by several gateways make several points) until it answers "
                                "again").format(address=self.address, error=exc))
        self._down_until = time.monotonic() + self._backoff_s
        self._backoff_s = min(BACKOFF_MAX_S, self._backoff_s * 2)


def _registered(answer: Any, own: str) -> str | None:
    """The lines a claim's answer registered, or None when they are the copy's own (claimed now, or a
    redelivery of the copy that claimed)."""
    if answer is None:
        return None
    try:
        text = answer.decode("utf-8") if isinstance(answer, bytes) else str(answer)
    except UnicodeDecodeError:
        return ""  # not written by a bridge: never the same event
    return None if text == own else text


def same_event(registered: str, own: str) -> str | None:
    """The registering gateway when ``registered`` lines are the same event as a copy's ``own`` (rule 2 of the
    module docstring: they differ only in the receiving gateway, its name for the node, RSSI, SNR, and timestamps
    at most :data:`SAME_EVENT_US` apart), else None. ``own`` are the bridge's own lines; ``registered`` may be
    anything redis holds."""
    reg_lines, own_lines = registered.split("\n"), own.split("\n")
    if len(reg_lines) != len(own_lines):
        return None
    gateway = None
    for reg_line, own_line in zip(reg_lines, own_lines, strict=True):
        reg, mine = split_line(reg_line), split_line(own_line)
        if reg is None or mine is None:
            return None
        (reg_name, reg_tags, reg_fields, reg_ts), (own_name, own_tags, own_fields, own_ts) = reg, mine
        if reg_name != own_name or abs(reg_ts - own_ts) > SAME_EVENT_US or not reg_tags.get("gateway") \
                or reg_tags.get("name") == "":
            return None
        if _without(reg_tags, _RECEPTION_TAGS) != _without(own_tags, _RECEPTION_TAGS):
            return None  # another site, node, kind, alert type or severity
        if _without(reg_fields, _RECEPTION_FIELDS) != _without(own_fields, _RECEPTION_FIELDS):
            return None  # other values, fcnt, auth_ok, clock_ok, raised or message
        if not all(_FLOAT_RE.match(reg_fields[k]) for k in _RECEPTION_FIELDS if k in reg_fields):
            return None
        gateway = gateway or reg_tags["gateway"]
    return gateway


def _without(items: dict[str, str], keys: frozenset[str]) -> dict[str, str]:
    return {k: v for k, v in items.items() if k not in keys}


def _registrar(registered: str) -> str:
    """The gateway that registered lines that are not the same event, for the log line (``?`` if none is read)."""
    parsed = split_line(registered.split("\n", 1)[0])
    return parsed[1].get("gateway", "?") if parsed is not None else "?"
