"""The one error policy of both sinks: what to do when a write fails.

=====================================================  ==========================================================
failure                                                what happens
=====================================================  ==========================================================
connection refused or reset, timeout, 5xx, 429         wait (exponential backoff with jitter, ``Retry-After``
(:class:`~agent.bridge.errors.SinkUnavailable`)        honoured) and send the same lines again; nothing is
                                                       acknowledged meanwhile, so the broker keeps the messages
401, 403, 404 (:class:`~agent.bridge.errors.           the same, and the log line says what to fix (credentials,
SinkRefused`)                                          database, bucket)
400, 413, 422 (:class:`~agent.bridge.errors.           find the lines the server refused and return them for the
SinkRejected`): unparsable line, field type conflict,  dead-letter store; write the rest. Never retried as is.
partial write, body too large
=====================================================  ==========================================================

Finding the refused lines: a server may have stored the good lines of a refused write (InfluxDB's "partial write")
or none of them (a parse error on InfluxDB 2.x), so the good lines are always written again. Writing the same point
twice is harmless: same measurement, tags and timestamp overwrite. In order of preference:

1. the lines the error quotes (InfluxDB 1.x/2.x ``unable to parse '<line>'``, InfluxDB 3 ``original_line``);
2. all of them, when the server says so (``dropped=N`` equal to the number of lines sent);
3. the lines of the measurement and field a type conflict names (``input field "f" on measurement "m"``), tried
   as one group apart from the rest, so a lasting conflict costs a few requests per batch, not one per line;
4. otherwise, halves (bisection), down to single lines.

Every step writes strictly fewer lines than the step before, so this always ends: there is no endless retry of a
write that can never succeed. Only failures of the database itself (unavailable, refused) are retried without
end, because there the data is still good and the broker holds it.
"""

from __future__ import annotations

import logging
import random
import re
import threading
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

from agent.bridge.errors import BridgeError, SinkError, SinkRefused, SinkRejected
from agent.bridge.sinks import Sink
from agent.i18n import _

__all__ = ["Abandoned", "RejectedLine", "WritePolicy"]

log = logging.getLogger(__name__)

_CONFLICT_RE = re.compile(r'input field \\?"((?:[^"\\]|\\.)*)\\?" on measurement \\?"((?:[^"\\]|\\.)*)\\?"')


class Abandoned(BridgeError):
    """The bridge is stopping while the database is failing: the batch is given up unacknowledged (the broker
    keeps it for the next run)."""


@dataclass(frozen=True, slots=True)
class RejectedLine:
    """A line the database refused, with its error text."""

    index: int
    error: str


def _measurement_and_fields(line: str) -> tuple[str, set[str]]:
    """The (unescaped) measurement name and field keys of one line of our own output."""
    i, n = 0, len(line)
    # measurement: up to the first unescaped ',' or ' '
    while i < n and line[i] not in ", ":
        i += 2 if line[i] == "\\" else 1
    measurement = line[:i].replace("\\,", ",").replace("\\ ", " ")
    # skip the tag set: up to the first unescaped ' '
    while i < n and line[i] != " ":
        i += 2 if line[i] == "\\" else 1
    i += 1
    fields: set[str] = set()
    start = i
    in_string = False
    while i < n:
        c = line[i]
        if c == "\\":
            i += 2
            continue
        if c == '"':
            in_string = not in_string
        elif not in_string and c == "=":
            key = line[start:i]
            fields.add(key.replace("\\,", ",").replace("\\=", "=").replace("\\ ", " "))
            # skip the value
            i += 1
            while i < n and (in_string or line[i] not in ", "):
                if line[i] == "\\":
                    i += 1
                elif line[i] == '"':
                    in_string = not in_string
                i += 1
            if i >= n or line[i] == " ":
                break
            start = i + 1
        i += 1
    return measurement, fields


class WritePolicy:
    """Writes batches of lines through a sink under the error policy of this module.

    Args:
        sink: where the lines go.
        stop: set when the bridge stops; a write that is failing is then abandoned (:class:`Abandoned`).
        retry_min_s: first backoff wait, in seconds; doubled after each failure.
        retry_max_s: longest backoff wait, in seconds.
        stats: counters shared with the bridge (``write_requests``, ``write_failures.<kind>``, ...).
    """

    def __init__(self, sink: Sink, *, stop: threading.Event, retry_min_s: float = 0.5, retry_max_s: float = 30.0,
                 stats: Counter[str] | None = None) -> None:
        self.sink = sink
        self.stop = stop
        self.retry_min_s = retry_min_s
        self.retry_max_s = retry_max_s
        self.stats: Counter[str] = stats if stats is not None else Counter()
        self._failing_since: float | None = None
        self._failed_attempts = 0
        self._last_problem: str | None = None

    def write(self, lines: Sequence[str], body: bytes | None = None) -> list[RejectedLine]:
        """Write every line the database accepts.

        Args:
            lines: line protocol lines, without newlines.
            body: ``"\\n".join(lines).encode()`` when the caller has it already.

        Returns:
            The lines the database refused (never retried), with its error text; empty when all were stored.

        Raises:
            Abandoned: ``stop`` was set while the database was failing; nothing of this batch is known stored.
        """
        if not lines:
            return []
        return self._put(list(range(len(lines))), lines, body)

    @property
    def failing(self) -> bool:
        """Whether the last write attempt failed for the database's sake (down, refusing); False once one works."""
        return self._failing_since is not None

    # -- one group of lines -----------------------------------------------------------------------------------
    def _put(self, idx: list[int], lines: Sequence[str], body: bytes | None = None) -> list[RejectedLine]:
        if body is None:
            body = "\n".join([lines[i] for i in idx]).encode()
        try:
            self._send(body)
            return []
        except SinkRejected as exc:
            self.stats["write_rejections"] += 1
            return self._narrow(idx, lines, exc)

    def _narrow(self, idx: list[int], lines: Sequence[str], exc: SinkRejected) -> list[RejectedLine]:
        text = exc.text
        if len(idx) == 1:
            return [RejectedLine(idx[0], text)]
        # 1. lines the error quotes
        quoted = set(exc.quoted_lines)
        named = [i for i in idx if lines[i] in quoted or f"'{lines[i]}'" in text]
        if named:
            named_set = set(named)
            rest = [i for i in idx if i not in named_set]
            return [RejectedLine(i, text) for i in named] + (self._put(rest, lines) if rest else [])
        # 2. the server dropped all of them
        if exc.dropped is not None and exc.dropped == len(idx):
            return [RejectedLine(i, text) for i in idx]
        # 3. a type conflict names its measurement and field
        match = _CONFLICT_RE.search(text)
        if match:
            field_key, measurement = match.group(1).replace('\\"', '"'), match.group(2).replace('\\"', '"')
            suspects = []
            for i in idx:
                m, fields = _measurement_and_fields(lines[i])
                if m == measurement and field_key in fields:
                    suspects.append(i)
            if 0 < len(suspects) < len(idx):
                suspect_set = set(suspects)
                rest = [i for i in idx if i not in suspect_set]
                return self._put(rest, lines) + self._put(suspects, lines)
        # 4. halves
        half = len(idx) // 2
        return self._put(idx[:half], lines) + self._put(idx[half:], lines)

    # -- retrying a failing database --------------------------------------------------------------------------
    def _send(self, body: bytes) -> None:
        delay = self.retry_min_s
        while True:
            self.stats["write_requests"] += 1
            try:
                self.sink.write(body)
            except SinkRejected:
                self._recovered()
                raise
            except SinkError as exc:
                kind = "refused" if isinstance(exc, SinkRefused) else "unavailable"
                self.stats[f"write_failures.{kind}"] += 1
                self._failed(exc)
                if self.stop.is_set():
                    raise Abandoned(str(exc)) from exc
                # Jitter: several bridges must not hammer a database that comes back all at the same instant.
                wait = max(delay * random.uniform(0.8, 1.2), exc.retry_after or 0.0)
                if self.stop.wait(wait):
                    raise Abandoned(str(exc)) from exc
                delay = min(self.retry_max_s, delay * 2)
                continue
            self._recovered()
            return

    def _failed(self, exc: SinkError) -> None:
        now = time.monotonic()
        if self._failing_since is None:
            self._failing_since = now
        self._failed_attempts += 1
        problem = f"{type(exc).__name__}:{exc.status}:{exc.text[:200]}"
        if problem != self._last_problem:
            # Logged once per distinct problem, not once per retry: a database down for a day must not fill the
            # disk with the same line.
            self._last_problem = problem
            level = logging.ERROR if isinstance(exc, SinkRefused) else logging.WARNING
            log.log(level, "%s", _("write to {target} failed, retrying with backoff (nothing is acknowledged "
                                   "meanwhile): {error}").format(target=self.sink.target, error=exc))
        else:
            log.debug("write to %s failed again (%d attempts): %s", self.sink.target, self._failed_attempts, exc)

    def _recovered(self) -> None:
        if self._failing_since is not None:
            log.info("%s", _("writes to {target} work again after {count} failed attempts over {seconds} s").format(
                target=self.sink.target, count=self._failed_attempts,
                seconds=f"{time.monotonic() - self._failing_since:.1f}"))
            self._failing_since = None
            self._failed_attempts = 0
            self._last_problem = None
