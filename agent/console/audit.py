"""The audit of every console action: ``alert_ack`` points in InfluxDB, and a log line each.

Per action (issue 11 contract), at the time it was taken (µs)::

    alert_ack,gateway=<gw>,site=<site>,type=<type>,node=<node>,action=ack|silence|test
        by="...",from_ip="...",request_id="...",alert_id="...",since_us=<float>,ack_delay_s=<float>  <ts>

and, once the gateway answered or the command was given up, a second point with the same tags at ``ts + 1 µs``
holding ``result`` (the gateway's outcomes, e.g. ``stopped``, or ``timeout``) and ``request_id``. ``type``,
``node``, ``alert_id``, ``since_us`` and ``ack_delay_s`` are left out where there is no alert (a test chirp from
the command line). ``site`` comes from the gateway registry (``unknown`` without one), never from a gateway.

Lines are escaped with the bridge's :mod:`agent.bridge.lineproto` and written by the bridge's sinks under its
:class:`~agent.bridge.policy.WritePolicy` (a database that is down is retried with backoff) from one writer
thread, so a slow database never holds up a page. The log line is written first, so the audit survives in the log
when the database never comes back.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from dataclasses import dataclass

from agent.bridge.config import SinkConfig
from agent.bridge.encoding import escape_string_field, escape_tag_value, format_float
from agent.bridge.policy import Abandoned, WritePolicy
from agent.bridge.registry import UNKNOWN_SITE, GatewayRegistry
from agent.bridge.sinks import make_sink
from agent.i18n import _

__all__ = ["Action", "Audit"]

log = logging.getLogger("denen.console.audit")

#: Lines waiting for the database at most; more are dropped (and logged) while it is down.
QUEUE_MAX = 10_000


@dataclass(frozen=True, slots=True)
class Action:
    """One person's action on one gateway (times in µs since the epoch)."""

    action: str  # ack | silence | test
    gateway: str
    by: str
    from_ip: str
    request_id: str
    ts_us: int
    type: str | None = None
    node: str | None = None
    alert_id: str | None = None
    since_us: int | None = None

    @property
    def ack_delay_s(self) -> float | None:
        return (self.ts_us - self.since_us) / 1e6 if self.since_us is not None else None


class Audit:
    """Writes :class:`Action` points (and their results) to the sink, if any, and to the log.

    Args:
        sink: the bridge's sink section, or None for the log only.
        registry: where ``site`` comes from.
    """

    def __init__(self, sink: SinkConfig | None, registry: GatewayRegistry | None = None) -> None:
        self.registry = registry or GatewayRegistry()
        self._sink_cfg = sink
        self._queue: queue.Queue[list[str] | None] = queue.Queue(QUEUE_MAX)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.written = 0

    def start(self) -> None:
        if self._sink_cfg is not None:
            self._thread = threading.Thread(target=self._writer, name="console-audit", daemon=True)
            self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        """Write what is queued (for up to ``timeout`` seconds), then stop."""
        if self._thread is None:
            return
        self._queue.put(None)
        self._thread.join(timeout)
        self._stop.set()
        self._thread.join(5)
        self._thread = None

    def _tags(self, a: Action) -> str:
        info = self.registry.lookup(a.gateway)
        site = info.site if info is not None else UNKNOWN_SITE
        tags = [("gateway", a.gateway), ("site", site), ("type", a.type), ("node", a.node), ("action", a.action)]
        return ",".join(f"{k}={escape_tag_value(v)}" for k, v in tags if v)

    def record(self, a: Action) -> None:
        """Audit the action (before its command goes out)."""
        # The audit record itself (this line and the database's point) stays English: it is read by machines.
        log.info("audit: %s on %s alert %s (%s) by %s from %s, request %s", a.action, a.gateway, a.alert_id or "-",
                 f"{a.type}:{a.node}" if a.type else "-", a.by, a.from_ip, a.request_id)
        fields = [f"by={escape_string_field(a.by)}", f"from_ip={escape_string_field(a.from_ip)}",
                  f"request_id={escape_string_field(a.request_id)}"]
        if a.alert_id is not None:
            fields.append(f"alert_id={escape_string_field(a.alert_id)}")
        if a.since_us is not None:
            fields.append(f"since_us={format_float(a.since_us)}")
            fields.append(f"ack_delay_s={format_float(a.ack_delay_s)}")  # type: ignore[arg-type]
        self._put([f"alert_ack,{self._tags(a)} {','.join(fields)} {a.ts_us}"])

    def record_result(self, a: Action, result: str) -> None:
        """Audit the gateway's answer to the action's command (or ``timeout``)."""
        log.info("audit: %s on %s by %s, request %s: %s", a.action, a.gateway, a.by, a.request_id, result)
        self._put([f"alert_ack,{self._tags(a)} result={escape_string_field(result)},"
                   f"request_id={escape_string_field(a.request_id)} {a.ts_us + 1}"])

    def _put(self, lines: list[str]) -> None:
        if self._thread is None:
            return
        try:
            self._queue.put_nowait(lines)
        except queue.Full:
            log.error("%s", _("audit: {count} lines waiting for the database; this one is in the log only").format(
                count=QUEUE_MAX))

    def _writer(self) -> None:
        assert self._sink_cfg is not None
        sink = make_sink(self._sink_cfg)
        policy = WritePolicy(sink, stop=self._stop, retry_min_s=self._sink_cfg.retry_min_s,
                             retry_max_s=self._sink_cfg.retry_max_s)
        try:
            while True:
                lines = self._queue.get()
                if lines is None:
                    return
                try:
                    for bad in policy.write(lines):
                        log.error("%s", _("audit: the database refused {line}: {error}").format(
                            line=lines[bad.index], error=bad.error))
                    self.written += len(lines)
                except Abandoned as exc:
                    log.error("%s", _("audit: stopping while the database fails ({error}); not written: "
                                      "{lines}").format(error=exc, lines=lines))
        finally:
            sink.close()


def now_us() -> int:
    """Wall-clock time in µs since the epoch."""
    return time.time_ns() // 1000
