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
   lines; every claim (also the first's redelivery, and any later copy within ``window_s``) gets back the registered
   lines and writes exactly those. So every copy writes byte-identical points: same measurement, tags (the first
   reception's gateway, site and name) and timestamp (the first reception's), which InfluxDB stores as one point.
3. An alert raised or cleared by a node's frame (its ``reading`` names ``<gateway>/<node>/<fcnt>``: an SOS, a
   fired trap, a river stage crossed) is the same event whichever gateway's rules raised it: its identity is
   ``alert:<type>:<node>:<fcnt>:<state>`` and its one ``alert`` point is claimed the same way, so the dashboards
   and alert rules count one SOS once. Alerts without a frame (a silent node, a gateway's own condition) are each
   gateway's own and are not merged.
4. No copy depends on another being written: a bridge killed after its claim leaves its message unacknowledged,
   the broker sends it again, and whoever gets it writes the registered lines.

Bounds and failure: a claim lives ``window_s`` seconds (a copy later than that, e.g. from a gateway whose backhaul
was down longer, claims again and makes a second point under its own gateway: a duplicate, never a loss). A claim
costs redis about the length of its two lines (some 400 bytes) for the window. While redis cannot be reached,
claims are skipped and each copy is written as its own reading, as without de-duplication (duplicates during the
outage, nothing lost or held back: an SOS must not wait for a cache); redis is tried again after a back-off.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from agent.bridge.errors import BridgeError

if TYPE_CHECKING:  # the client is imported when de-duplication is configured, not with the bridge
    import redis

__all__ = ["BACKOFF_MAX_S", "FrameClaims", "alert_key", "frame_key", "redis_address"]

log = logging.getLogger("agent.bridge.bridge")

#: Longest wait, in seconds, before redis is tried again after a failure (doubling from 1 s).
BACKOFF_MAX_S = 5.0


def frame_key(prefix: str, node: str, fcnt: int, kind: str, values: Mapping[str, Any]) -> str:
    """A frame's gateway-independent identity: ``<prefix><node>:<fcnt>:<kind>:<digest of the values>``."""
    text = json.dumps(values, sort_keys=True, separators=(",", ":"), allow_nan=False)
    digest = hashlib.blake2b(text.encode(), digest_size=8).hexdigest()
    return f"{prefix}{node}:{fcnt}:{kind}:{digest}"


def alert_key(prefix: str, alert: Mapping[str, Any]) -> str | None:
    """An alert's gateway-independent identity, ``<prefix>alert:<type>:<node>:<fcnt>:<state>``, when a node's frame
    raised or cleared it (its ``reading`` is ``<gateway>/<node>/<fcnt>`` of that node); else None (not merged)."""
    node, reading = alert.get("node"), alert.get("reading")
    if not isinstance(node, str) or not isinstance(reading, str):
        return None
    parts = reading.split("/")
    if len(parts) != 3 or parts[1] != node or not (parts[2].isascii() and parts[2].isdigit() and len(parts[2]) <= 10):
        return None
    return f"{prefix}alert:{alert['type']}:{node}:{int(parts[2])}:{alert['state']}"


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
            written as their own reading because redis failed), ``dedupe_failures`` (failed batches).
        client: a redis client to use instead of one made from ``url`` (tests).

    Raises:
        BridgeError: the redis package is not installed, or ``url`` cannot be used.
    """

    def __init__(self, url: str, *, window_s: float, timeout_s: float = 2.0, key_prefix: str = "denen:frame:",
                 stats: Counter[str] | None = None, client: redis.Redis | None = None) -> None:
        try:
            import redis as redis_lib  # only a bridge that de-duplicates pays for the import
        except ImportError:
            raise BridgeError("the dedupe section needs the Python package redis: install denen with the bridge "
                              "extra (pip install 'denen[bridge]')") from None

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
                raise BridgeError(f"dedupe.redis_url {self.address}: {exc}") from None
        self._redis = client
        self._down_until = 0.0
        self._backoff_s = 1.0

    def close(self) -> None:
        self._redis.close()

    def resolve(self, claims: Sequence[tuple[str, str]]) -> list[str | None]:
        """Claim each frame; returns for each the lines to write instead of the copy's own (None: its own).

        Args:
            claims: (key, the copy's own lines joined by newlines) per frame copy, in arrival order.
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
            log.info("bridge: redis at %s answers again; frames heard by several gateways are merged again",
                     self.address)
            self._down_until, self._backoff_s = 0.0, 1.0
        out: list[str | None] = []
        for answer, (_key, own) in zip(answers, claims, strict=True):
            registered = _registered(answer, own)
            if registered is None:
                self.stats["frames_claimed"] += 1
            else:
                self.stats["frames_merged"] += 1
            out.append(registered)
        return out

    def _failed(self, exc: BaseException, copies: int) -> None:
        self.stats["dedupe_failures"] += 1
        self.stats["frames_unclaimed"] += copies
        if not self._down_until:
            log.warning("bridge: redis at %s failed (%s): frames are written as each gateway sent them (copies "
                        "heard by several gateways make several points) until it answers again", self.address,
                        exc)
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
        return None  # not written by a bridge: the copy's own lines are the safe choice
    if text == own or text.count("\n") != own.count("\n"):
        return None
    return text
