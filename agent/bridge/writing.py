"""The bridge's writer-thread half: batches from the inbox, written through the write policy, what can never be
written kept in the dead-letter store, then every message of the batch acknowledged, in order. Why it is built
this way: :mod:`agent.bridge.bridge`.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
import traceback
from bisect import bisect_right
from collections import Counter
from collections.abc import Callable

import paho.mqtt.client as mqtt

from agent.bridge.config import BridgeConfig
from agent.bridge.deadletter import DeadLetter, DeadLetterStore
from agent.bridge.dedupe import FrameClaims
from agent.bridge.errors import BridgeError
from agent.bridge.health import HealthMonitor
from agent.bridge.lineproto import Serializer
from agent.bridge.policy import Abandoned, WritePolicy
from agent.bridge.receiving import InboxMessage
from agent.bridge.registry import GatewayRegistry
from agent.i18n import N_, LazyText, _
from agent.ratelog import RateLimitedLog

__all__ = ["DEAD_LETTER_BACKLOG_MAX", "REGISTRY_CHECK_S", "SUMMARY_INTERVAL_S", "Writing"]

# The bridge's one logger, whichever of its modules writes: operators and tests filter on it.
log = logging.getLogger("agent.bridge.bridge")

#: Seconds between the summary log lines (only when something happened).
SUMMARY_INTERVAL_S = 60.0
#: Seconds between checks whether the gateway registry file changed.
REGISTRY_CHECK_S = 10.0
#: Dead letters held in memory while the store cannot be written (disk full); beyond that they are counted lost.
DEAD_LETTER_BACKLOG_MAX = 10_000
#: The largest packet MQTT can express (a four-byte variable length), in bytes.


class Writing:
    """The writer-thread half of :class:`agent.bridge.bridge.Bridge` (which sets these attributes)."""

    config: BridgeConfig
    stats: Counter[str]
    health: HealthMonitor
    registry: GatewayRegistry
    _stop: threading.Event
    _inbox: queue.SimpleQueue[InboxMessage | None]
    _serializer: Serializer
    _policy: WritePolicy
    _claims: FrameClaims | None
    _dead: DeadLetterStore
    _dead_backlog: list[DeadLetter]
    _input_log: RateLimitedLog
    _client: mqtt.Client | None
    _ack_lock: threading.Lock
    _session: int
    _unacked: int
    _failure: BaseException | None
    _last_summary: dict[str, int]
    _registry_text: Callable[[], str]
    counters: Callable[[], dict[str, int]]

    def _writer_main(self) -> None:
        try:
            self._write_loop()
        except Exception as exc:  # noqa: BLE001 - thread top level: log, and make run()/stop() report it
            log.exception("%s", _("bridge: the writer failed; stopping without acknowledging what was not written"))
            self._failure = exc
            self._stop.set()

    def _write_loop(self) -> None:
        batch_cfg = self.config.batch
        max_wait = batch_cfg.max_wait_ms / 1000
        batch: list[InboxMessage] = []
        lines = 0
        deadline = 0.0
        next_summary = time.monotonic() + SUMMARY_INTERVAL_S
        next_registry = time.monotonic() + REGISTRY_CHECK_S
        while True:
            now = time.monotonic()
            timeout = (deadline - now) if batch else (next_summary - now)
            try:
                item = self._inbox.get(timeout=max(0.0, timeout))
            except queue.Empty:
                item = False
            if item is None:  # stop requested: one last try for what is here, no retries
                self._flush(batch)
                return
            if item is not False:
                if not batch:
                    deadline = time.monotonic() + max_wait
                batch.append(item)
                lines += len(item.converted.lines)
                if (lines < batch_cfg.max_lines and len(batch) < batch_cfg.max_messages
                        and time.monotonic() < deadline):
                    continue
            if batch and (item is not False or time.monotonic() >= deadline):
                self._flush(batch)
                batch, lines = [], 0
            now = time.monotonic()
            if now >= next_registry:
                self._refresh_registry()
                next_registry = now + REGISTRY_CHECK_S
            if now >= next_summary:
                self._input_log.flush()
                self._log_summary()
                next_summary = time.monotonic() + SUMMARY_INTERVAL_S
            if self._stop.is_set() and not batch:
                # A stop while idle: the None sentinel is in the inbox, but do not wait for it behind new messages.
                return

    def _refresh_registry(self) -> None:
        try:
            if self.registry.refresh():
                log.info("%s", _("bridge: gateway registry reloaded: {registry}").format(
                    registry=self._registry_text()))
        except Exception:  # noqa: BLE001 - a registry bug keeps the registry it had, never the writer
            log.exception("%s", _("bridge: checking the gateway registry {path} failed; keeping the one "
                                  "loaded").format(path=self.registry.path))

    def _flush(self, batch: list[InboxMessage]) -> None:
        """Write a batch; a failure that is not the database's is isolated to the message that causes it."""
        if not batch:
            return
        try:
            self._flush_batch(batch)
        except Abandoned as exc:
            log.warning("%s", _("bridge: stopping while the database fails ({error}); {count} messages are left "
                                "unacknowledged and will come again").format(error=exc, count=len(batch)))
            self.stats["messages_abandoned"] += len(batch)
        except Exception:  # noqa: BLE001 - data must never stop the writer: find the message, keep it, go on
            log.exception("%s", _("bridge: writing a batch of {count} messages failed unexpectedly; writing them "
                                  "one by one").format(count=len(batch)))
            self.stats["batches_isolated"] += 1
            for m in batch:
                try:
                    self._flush_batch([m])
                except Abandoned:
                    self.stats["messages_abandoned"] += 1
                except Exception:  # noqa: BLE001 - this message is the cause: dead-letter what it became
                    self._dead_letter_failed(m, traceback.format_exc(limit=5))

    def _dead_letter_failed(self, m: InboxMessage, trace: str) -> None:
        """Keep a message whose write raised an unforeseen error (its lines and rejects) and acknowledge it."""
        self.stats["messages_failed"] += 1
        items = [DeadLetter("internal_error", f"writing this message raised: {trace}", "line", line.encode(
            "utf-8", "backslashreplace"), m.topic, _reading_id(sid))
            for line, sid in zip(m.converted.lines, m.converted.sources, strict=False)]
        items += [DeadLetter(r.reason, r.detail, r.kind, r.content, m.topic, r.reading_id)
                  for r in m.converted.rejects]
        if not items:
            items = [DeadLetter("internal_error", f"writing this message raised: {trace}", "payload", b"", m.topic)]
        for d in items:  # every stored row counted, as _flush_batch counts its rows
            self.stats[f"dead_letters.{d.reason}"] += 1
        self.stats["dead_letters"] += len(items)
        self._input_log.warning("internal_error", self._sender(m.topic), N_("messages"), "%s", LazyText(
            N_("bridge: writing a message on {topic} raised {error}; its {count} items are kept in the dead-letter "
               "store {path}"), topic=_printable(m.topic), error=_printable(trace.strip().splitlines()[-1]),
            count=len(items), path=self.config.dead_letter.path))
        self._store_dead(items)
        self._ack([m])

    def _store_dead(self, dead: list[DeadLetter]) -> None:
        """Durable before the acknowledgement when the store works; when it cannot be written (disk full), the items
        wait in memory (bounded) and ingestion goes on: a broken store must not stop every gateway's readings."""
        if self._dead_backlog:
            dead = self._dead_backlog + dead
            self._dead_backlog = []
        if not dead:
            return
        try:
            self._dead.add(dead)
        except BridgeError as exc:
            self.stats["dead_letter_write_failures"] += 1
            keep = dead[-DEAD_LETTER_BACKLOG_MAX:]
            lost = len(dead) - len(keep)
            self._dead_backlog = keep
            if lost:
                self.stats["dead_letters_lost"] += lost
            self._input_log.warning("dead_letter_write_failed", str(self._dead.path), N_("failures"), "%s", LazyText(
                N_("bridge: {error}; {count} dead letters wait in memory (at most {max}), {lost} lost so far; "
                   "readings are still written"), error=exc, count=len(keep), max=DEAD_LETTER_BACKLOG_MAX,
                lost=self.stats["dead_letters_lost"]), level=logging.ERROR)
        else:
            evicted = self._dead.evicted - self.stats["dead_letters_evicted"]
            if evicted > 0:
                self.stats["dead_letters_evicted"] += evicted
                self._input_log.warning("store_full", str(self._dead.path), N_("evictions"), "%s", LazyText(
                    N_("bridge: the dead-letter store {path} is full (dead_letter.max_mb); its oldest items are "
                       "removed ({count} so far)"), path=self._dead.path, count=self._dead.evicted))

    def _flush_batch(self, batch: list[InboxMessage]) -> None:
        dead = self._write(batch)
        self._store_dead([d for items in dead for d in items])
        self._ack(batch)

    def _write(self, batch: list[InboxMessage]) -> list[list[DeadLetter]]:
        """Write a batch's lines; returns, per message, what can never be written (its dead letters).

        Raises:
            Abandoned: the bridge is stopping while the database fails; nothing of the batch is known written.
        """
        if self._claims is not None:
            self._merge_copies(batch)
        per_message: list[list[DeadLetter]] = [[] for _message in batch]
        all_lines: list[str] = []
        sources: list[str] = []
        bounds: list[int] = []
        bodies: list[bytes] = []
        for k, m in enumerate(batch):
            conv = m.converted
            dead = per_message[k]
            all_lines.extend(conv.lines)
            sources.extend(conv.sources)
            bounds.append(len(all_lines))
            if m.body:
                bodies.append(m.body)
            for rej in conv.rejects:
                dead.append(DeadLetter(rej.reason, rej.detail, rej.kind, rej.content, m.topic, rej.reading_id))
                self._note_reject(rej.reason, rej.detail, m.topic, rej.reading_id)
            for code, detail in conv.notes:
                self.stats[f"notes.{code}"] += 1
                self._input_log.warning(code, f"gateway {conv.gateway}", N_("messages"), "%s", LazyText(
                    N_("bridge: {code} on {topic}: {detail}"), code=code, topic=m.topic, detail=detail[:500]))
        started = time.monotonic()
        refused = self._policy.write(all_lines, b"\n".join(bodies)) if all_lines else []
        for r in refused:
            k = bisect_right(bounds, r.index)
            owner, dead = batch[k], per_message[k]
            rid = sources[r.index]
            dead.append(DeadLetter("rejected_by_server", r.error, "line", all_lines[r.index].encode(), owner.topic,
                                   _reading_id(rid)))
            self._note_reject("rejected_by_server", r.error, owner.topic, _reading_id(rid))
        if all_lines:
            self.health.note_written(all_lines, sources, {r.index for r in refused})
        stats = self.stats
        stats["batches"] += 1
        stats["lines_written"] += len(all_lines) - len(refused)
        stats["lines_refused"] += len(refused)
        stats["readings_written"] += sum(m.converted.readings for m in batch)
        stats["dead_letters"] += sum(len(d) for d in per_message)
        if log.isEnabledFor(logging.DEBUG):
            log.debug("bridge: batch of %d messages (%d redelivered), %d lines written, %d refused, in %.1f ms",
                      len(batch), sum(m.dup for m in batch), len(all_lines) - len(refused), len(refused),
                      (time.monotonic() - started) * 1000)
        return per_message

    def _merge_copies(self, batch: list[InboxMessage]) -> None:
        """De-duplication on: each node reading's two points become the ones its frame's first reception
        registered (:mod:`agent.bridge.dedupe`); a message whose points changed gets its body encoded again."""
        assert self._claims is not None
        owners: list[tuple[InboxMessage, int, int]] = []
        claims: list[tuple[str, str]] = []
        for m in batch:
            lines = m.converted.lines
            for index, count, key in m.converted.claims:
                owners.append((m, index, count))
                claims.append((key, "\n".join(lines[index:index + count])))

        def conflict(k: int, registrar: str) -> None:
            m = owners[k][0]
            self._input_log.warning("dedupe_conflict", f"gateway {_printable(registrar[:64])}", N_("conflicts"),
                                    "%s", LazyText(
                N_("bridge: gateway {registrar} registered claim {claim} with points that are not the same event as "
                   "gateway {gateway}'s copy (another site, other values or flags, or a time more than a minute off): "
                   "the copy is written as its own points"), registrar=_printable(registrar[:64]),
                claim=_printable(claims[k][0][:200]), gateway=_printable((m.converted.gateway or "?")[:64])))

        changed: dict[int, InboxMessage] = {}
        for (m, index, count), registered in zip(owners, self._claims.resolve(claims, conflict), strict=True):
            if registered is not None:  # the same event as the copy's own (dedupe.same_event checks)
                m.converted.lines[index:index + count] = registered.split("\n")
                changed[id(m)] = m
        for m in changed.values():
            m.body = "\n".join(m.converted.lines).encode()

    def _ack(self, batch: list[InboxMessage]) -> None:
        client = self._client
        acked = stale = 0
        with self._ack_lock:
            session = self._session
            for m in batch:
                if m.session != session or client is None:
                    stale += 1
                    continue
                if m.qos > 0:
                    client.ack(m.mid, m.qos)
                acked += 1
            self._unacked -= acked
        self.stats["messages_acked"] += acked
        if stale:
            # Message ids belong to the connection that delivered them; the broker sends these again.
            self.stats["messages_not_acked_stale"] += stale
            log.debug("bridge: %d messages of an earlier connection written but not acknowledged", stale)

    def _note_reject(self, reason: str, detail: str, topic: str, reading_id: str | None) -> None:
        self.stats[f"dead_letters.{reason}"] += 1
        # The first per reason and sender a minute in full; the rest in one summary line (the store has them all).
        if reading_id:
            text = LazyText(N_("bridge: {reason} on {topic} reading {reading}: {detail} (kept in the dead-letter "
                              "store {path})"), reason=reason, topic=_printable(topic),
                           reading=_printable(reading_id), detail=_printable(detail[:500]),
                           path=self.config.dead_letter.path)
        else:
            text = LazyText(N_("bridge: {reason} on {topic}: {detail} (kept in the dead-letter store {path})"),
                           reason=reason, topic=_printable(topic), detail=_printable(detail[:500]),
                           path=self.config.dead_letter.path)
        self._input_log.warning(reason, self._sender(topic), N_("dead letters"), "%s", text)

    def _sender(self, topic: str) -> str:
        prefix = self._serializer.prefix
        if topic.startswith(prefix):
            gateway = topic[len(prefix):].split("/", 1)[0]
            return f"gateway {_printable(gateway[:64])}"
        return "a topic outside the scheme"

    def _log_summary(self, *, final: bool = False) -> None:
        if final:
            self._input_log.flush()
        c = self.counters()
        if c == self._last_summary and not final:
            return  # nothing happened since the last line
        self._last_summary = c
        log.info("%s", _summary_line(c, final=final, dedupe=self._claims is not None))


def _summary_line(c: dict[str, int], *, final: bool, dedupe: bool) -> str:
    """The periodic (and the last) log line of what the bridge did since it started, from its counters."""
    dead = ", ".join(f"{k.split('.', 1)[1]} {v}" for k, v in sorted(c.items()) if k.startswith("dead_letters."))
    notes = ", ".join(f"{k.split('.', 1)[1]} {v}" for k, v in sorted(c.items()) if k.startswith("notes."))
    text = _("{bridge}: {messages} messages ({redelivered} redelivered), {readings} readings, {lines} lines in "
             "{writes} writes, {acked} acknowledged, {dead} dead letters{reasons}, {failed} failed write "
             "attempts").format(
        bridge=_("bridge stopped") if final else _("bridge"), messages=c.get("messages", 0),
        redelivered=c.get("messages_redelivered", 0), readings=c.get("readings_written", 0),
        lines=c.get("lines_written", 0), writes=c.get("batches", 0), acked=c.get("messages_acked", 0),
        dead=c.get("dead_letters", 0), reasons=f" ({dead})" if dead else "",
        failed=c.get("write_failures.unavailable", 0) + c.get("write_failures.refused", 0))
    if notes:
        text += _("; noted: {notes}").format(notes=notes)
    if c.get("dead_letters_evicted") or c.get("dead_letters_lost"):
        text += _("; dead-letter store: {evicted} evicted, {lost} lost").format(
            evicted=c.get("dead_letters_evicted", 0), lost=c.get("dead_letters_lost", 0))
    if dedupe:
        text += _("; frames: {claimed} first receptions, {merged} merged into an earlier one, {unclaimed} written "
                  "unmerged (redis failed), {conflicts} written as their own (the first claim was not the same "
                  "event)").format(claimed=c.get("frames_claimed", 0), merged=c.get("frames_merged", 0),
                                   unclaimed=c.get("frames_unclaimed", 0), conflicts=c.get("dedupe_conflicts", 0))
    return text


def _reading_id(source: str) -> str | None:
    """The reading id of a line's source, or None for the points of a document (``status:<gateway>``, ...)."""
    return None if ":" in source else source


def _printable(text: str) -> str:
    """Text safe for a log line: control characters, line breaks and lone surrogates escaped (a hostile gateway
    chooses these strings). Japanese and other printable text is kept as it is."""
    if text.isprintable():  # lone surrogates and control characters are not printable
        return text
    return "".join(c if c.isprintable() else f"\\u{ord(c):04x}" for c in text)
