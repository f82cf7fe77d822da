"""Log output for a terminal or for journald, chosen by where the output really goes.

Under systemd with ``StandardError=journal`` the agent's stderr is a stream socket into journald, and systemd
names that socket in ``$JOURNAL_STREAM`` as ``DEVICE:INODE`` (decimal). journald stamps every line with its own
time, and reads a ``<N>`` syslog priority at the start of a line (sd-daemon(3)): without it every line lands at
priority info and ``journalctl -p warning`` shows nothing. So there each line is written as::

    <4>WARNING denen.gateway: broker has no subscriber ...

and everywhere else (a terminal, a file, a pipe) as before::

    2026-12-06 12:58:29,123 JST WARNING denen.gateway: broker has no subscriber ...

The variable alone is not enough: it is inherited by children whose stderr was redirected (``denen status
2>file`` from a service's ExecStartPost, a shell started from one), so the stream's own device and inode must
match it, as systemd.exec(5) asks.

A multi-line message (a traceback) is written with the prefix on every line. journald's stream protocol takes
each newline-terminated line as an entry of its own; a line without the prefix would be an entry at the unit's
default priority (info), so ``journalctl -p err`` would show a traceback's first line and hide the rest. With
the prefix on every line the whole traceback is at the message's priority and its lines stay adjacent and in
order. Replacing the newlines instead would keep one entry, but a long traceback on one line is hard to read
and ``journalctl`` shows it truncated.

A driver cannot look its messages up (``drivers/`` never imports the agent), so it logs a
:class:`drivers.settings.Text` (as the message or one of its arguments): the English text that keeps its template
and values. Both formatters show such a record in the language in use (:func:`agent.i18n.translate`); every other
record as it is.

Stdlib only: imported by the CLI before it parses its arguments.
"""

from __future__ import annotations

import logging
import os
import sys
import traceback
from types import TracebackType
from typing import IO, Any

__all__ = ["PLAIN_FORMAT", "JournalFormatter", "TextFormatter", "configure_logging", "syslog_priority",
           "under_journald"]

#: Format of a log line outside journald (the timestamp is the local time with its zone: TextFormatter).
PLAIN_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
#: Format of a log line under journald, after the ``<N>`` prefix: journald adds the time and the identifier.
JOURNAL_FORMAT = "%(levelname)s %(name)s: %(message)s"

# syslog priorities (sd-daemon(3), syslog(3)): the Python level at or above each threshold gets its priority.
_PRIORITIES = ((logging.CRITICAL, 2), (logging.ERROR, 3), (logging.WARNING, 4), (logging.INFO, 6))
_DEBUG_PRIORITY = 7


def syslog_priority(levelno: int) -> int:
    """The syslog priority (2 critical, 3 error, 4 warning, 6 info, 7 debug) of a Python log level."""
    for threshold, priority in _PRIORITIES:
        if levelno >= threshold:
            return priority
    return _DEBUG_PRIORITY


def under_journald(stream: IO[Any] | None = None) -> bool:
    """Whether ``stream`` (default: ``sys.stderr``) is the journald stream named in ``$JOURNAL_STREAM``.

    False when the variable is unset or malformed, or when the stream has no file descriptor (a test's capture)
    or is another file than the one systemd connected.
    """
    value = os.environ.get("JOURNAL_STREAM", "")
    dev, sep, ino = value.partition(":")
    if not sep:
        return False
    try:
        want = (int(dev), int(ino))
    except ValueError:
        return False
    target = sys.stderr if stream is None else stream
    try:
        st = os.fstat(target.fileno())
    except (AttributeError, ValueError, OSError):  # io.UnsupportedOperation is both OSError and ValueError
        return False
    return (st.st_dev, st.st_ino) == want


def _is_text(value: object) -> bool:
    """Whether ``value`` is a message that keeps its template (a ``drivers.settings.Text``), by its shape: this
    module imports nothing of denen's."""
    return isinstance(value, str) and isinstance(getattr(value, "template", None), str)


def localized(record: logging.LogRecord) -> logging.LogRecord:
    """``record``, or a copy of it whose message and arguments that are ``Text`` are in the language in use.

    The record itself is never changed (another handler, a test's capture, sees it as logged); a failure to
    translate leaves the English text."""
    args = record.args if isinstance(record.args, tuple) else ()
    if not (_is_text(record.msg) or any(_is_text(a) for a in args)):
        return record
    try:
        from agent.i18n import translate  # noqa: PLC0415 - only when a driver's message is shown

        copy = logging.makeLogRecord(record.__dict__)
        copy.msg = translate(record.msg) if _is_text(record.msg) else record.msg
        copy.args = tuple(translate(a) if _is_text(a) else a for a in args)
        return copy
    except Exception:  # noqa: BLE001 - a log line in English rather than none
        return record


class TextFormatter(logging.Formatter):
    """A :class:`logging.Formatter` that shows a driver's ``Text`` messages in the language in use, and times with
    their zone (``2026-12-05 14:03:12,123 JST``): a person reading a terminal or a file knows which zone it is."""

    def format(self, record: logging.LogRecord) -> str:
        return super().format(localized(record))

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:  # noqa: N802 - logging's name
        if datefmt:
            return super().formatTime(record, datefmt)
        from agent.i18n import local_time  # noqa: PLC0415 - stdlib only, loaded once a line is written

        day_and_time, _sep, zone = local_time(record.created, us=False).rpartition(" ")
        return f"{day_and_time},{int(record.msecs):03d} {zone}"


class JournalFormatter(TextFormatter):
    """Formats a record as lines each starting with ``<N>``, its syslog priority, and no timestamp."""

    def __init__(self, fmt: str = JOURNAL_FORMAT) -> None:
        super().__init__(fmt)

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        prefix = f"<{syslog_priority(record.levelno)}>"
        # splitlines also splits at \r, \v, \x1c... that a hostile node name could carry: journald would split at
        # none of them, but a terminal running `journalctl -f` would act on \r; each becomes a line of its own.
        return "\n".join(prefix + line for line in text.splitlines() or [""])


_MARK = "_denen_logsetup"  # set on the handler this module installs, so a second call replaces only it


def configure_logging(*, debug: bool = False, stream: IO[Any] | None = None) -> None:
    """Send log records to ``stream`` (default: ``sys.stderr``), formatted for journald when it is journald's.

    Args:
        debug: log DEBUG and up (else INFO and up); the config's ``log.level`` may change the level later.
        stream: where the lines go; its file descriptor decides the format (see :func:`under_journald`).

    Calling it again replaces the handler an earlier call installed; other handlers (a test's log capture) stay.
    Under journald an uncaught exception's traceback is written with the ``<2>`` (critical) prefix on every
    line too, and Python warnings go through logging (``<4>``), so neither lands at the unit's default level.
    """
    target = sys.stderr if stream is None else stream
    journald = under_journald(target)
    handler = logging.StreamHandler(target)
    handler.setFormatter(JournalFormatter() if journald else TextFormatter(PLAIN_FORMAT))
    setattr(handler, _MARK, True)
    root = logging.getLogger()
    for old in [h for h in root.handlers if getattr(h, _MARK, False)]:
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(logging.DEBUG if debug else logging.INFO)
    logging.captureWarnings(journald)
    if journald:
        sys.excepthook = _journal_excepthook(target)
    elif getattr(sys.excepthook, _MARK, False):
        sys.excepthook = sys.__excepthook__


def _journal_excepthook(stream: IO[Any]) -> Any:
    def hook(exc_type: type[BaseException], exc: BaseException, tb: TracebackType | None) -> None:
        if issubclass(exc_type, KeyboardInterrupt):
            sys.__excepthook__(exc_type, exc, tb)
            return
        text = "".join(traceback.format_exception(exc_type, exc, tb))
        try:
            stream.write("".join(f"<2>{line}\n" for line in text.splitlines()))
            stream.flush()
        except (OSError, ValueError):
            sys.__excepthook__(exc_type, exc, tb)

    setattr(hook, _MARK, True)
    return hook
