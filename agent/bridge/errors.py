"""Errors of the bridge. Each sink maps its library's exceptions onto these, so one policy handles both sinks.

Which failure becomes which error (their place in the error tree is drawn in :mod:`drivers.errors`):

- :class:`SinkUnavailable`: connection refused or reset, timeout, HTTP 5xx or 429: retry with backoff.
- :class:`SinkRefused`: HTTP 401/403/404 and other 4xx about the request, not its lines (bad credentials, missing
  database or bucket): retry with backoff, log what to fix.
- :class:`SinkRejected`: HTTP 400/413/422: the server refused some or all lines (unparsable line, field type
  conflict, partial write, body too large); retrying the same lines can never succeed.

All three are a :class:`SinkError`: the write did not go through, and nothing of it may be acknowledged yet.
"""

from __future__ import annotations

import json
import re

from agent.errors import AgentError

__all__ = ["BridgeError", "SinkError", "SinkRefused", "SinkRejected", "SinkUnavailable", "classify_response"]

_DROPPED_RE = re.compile(r"dropped=(\d+)")


class BridgeError(AgentError):
    """Base class of the bridge's errors."""


class SinkError(BridgeError):
    """A write to the database did not go through.

    Attributes:
        status: HTTP status, or None when no response came (connection refused, timeout).
        text: the server's error text (or the connection error), never containing credentials.
        retry_after: seconds the server asked us to wait (``Retry-After``), or None.
        hint: what the operator should fix, or None.
    """

    def __init__(self, text: str, *, status: int | None = None, retry_after: float | None = None,
                 hint: str | None = None) -> None:
        self.status = status
        self.text = text
        self.retry_after = retry_after
        self.hint = hint
        shown = f"HTTP {status}: {text}" if status is not None else text
        super().__init__(shown + (f" ({hint})" if hint else ""))


class SinkUnavailable(SinkError):
    """The database cannot take writes right now (down, overloaded, timing out): retry later."""


class SinkRefused(SinkError):
    """The database refuses every write until its operator fixes something (credentials, database, bucket)."""


class SinkRejected(SinkError):
    """The database refused lines of the write; it may have stored the others (a partial write).

    Attributes:
        dropped: the ``dropped=N`` count of an InfluxDB partial write, or None when not given.
        quoted_lines: lines the server named as the bad ones (InfluxDB 3 ``original_line``), if any.
    """

    def __init__(self, text: str, *, status: int | None = None, quoted_lines: tuple[str, ...] = ()) -> None:
        super().__init__(text, status=status)
        match = _DROPPED_RE.search(text)
        self.dropped = int(match.group(1)) if match else None
        self.quoted_lines = quoted_lines


def _error_text(body: bytes) -> tuple[str, tuple[str, ...]]:
    """The readable error of a response body: InfluxDB 1.x ``{"error"}``, 2.x ``{"code","message"}``, 3.x
    ``{"error","data":[{"original_line","error_message"}]}``, or the raw text. Also the lines it names."""
    text = body.decode("utf-8", errors="replace").strip()
    try:
        doc = json.loads(text)
    except ValueError:
        return text[:4000], ()
    if not isinstance(doc, dict):
        return text[:4000], ()
    message = str(doc.get("error") or doc.get("message") or text)
    quoted: list[str] = []
    data = doc.get("data")
    if isinstance(data, list):
        details = []
        for item in data:
            if isinstance(item, dict):
                if isinstance(item.get("original_line"), str):
                    quoted.append(item["original_line"])
                details.append(f"line {item.get('line_number')}: {item.get('error_message')}")
        if details:
            message += ": " + "; ".join(details)
    return message[:4000], tuple(quoted)


def _retry_after(value: str | None) -> float | None:
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        return None  # an HTTP date; the backoff applies


def classify_response(status: int, body: bytes, retry_after: str | None, *, api: str) -> SinkError | None:
    """Map an HTTP answer of a write to the error policy; None for success (2xx).

    Args:
        status: HTTP status code.
        body: response body (the server's error).
        retry_after: the ``Retry-After`` header, if any.
        api: ``"v1"`` or ``"v2"``, for the hints.
    """
    if 200 <= status < 300:
        return None
    text, quoted = _error_text(body)
    if status in (400, 413, 422):
        return SinkRejected(text or f"HTTP {status}", status=status, quoted_lines=quoted)
    if status == 429 or status >= 500:
        hint = None
        if "retention policy not found" in text:
            hint = "create the retention policy, or fix sink.rp"
        return SinkUnavailable(text or "server error", status=status, retry_after=_retry_after(retry_after),
                               hint=hint)
    if status in (401, 403):
        hint = ("check sink.user and sink.password / password_file, and that the user may write to the database"
                if api == "v1" else
                "check sink.token / token_file: the token needs write access to the bucket")
        return SinkRefused(text or "unauthorized", status=status, hint=hint)
    if status == 404:
        hint = ("create the database (InfluxQL: CREATE DATABASE <name>) or fix sink.database; a 404 page also "
                "means sink.url is not an InfluxDB 1.x /write API" if api == "v1" else
                "create the bucket or fix sink.org / sink.bucket; InfluxDB 1.7 and older have no v2 API (use "
                "sink.type v1)")
        return SinkRefused(text or "not found", status=status, hint=hint)
    return SinkRefused(text or f"HTTP {status}", status=status,
                       hint="unexpected answer: check that sink.url points at the database's HTTP API")
