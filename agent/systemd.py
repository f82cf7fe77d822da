"""systemd service notifications (``sd_notify``) without a dependency.

The unit in ``deploy/edge/denen.service`` is ``Type=notify`` with ``WatchdogSec=``: systemd considers the agent
started only when it says ``READY=1``, and restarts it when the ``WATCHDOG=1`` pings stop. The protocol is one
datagram of ``KEY=VALUE`` lines sent to the AF_UNIX socket named in ``$NOTIFY_SOCKET``; a name starting with
``@`` is in the abstract namespace (the ``@`` stands for a leading NUL byte). See sd_notify(3).

Outside systemd (a developer's terminal, the tests) ``$NOTIFY_SOCKET`` is unset and every function here does
nothing and returns False, so the agent calls them unconditionally.

Public API::

    notify(state) -> bool            send raw KEY=VALUE lines
    ready() -> bool                  READY=1 (once the agent's journal is open and the core runs)
    stopping() -> bool               STOPPING=1 (on a clean shutdown)
    status(text) -> bool             STATUS=<one line>, shown by ``systemctl status denen``
    StatusLine(min_interval_s)       a STATUS= line sent on change, at most every min_interval_s unless forced
    watchdog_interval_s() -> float | None   the WatchdogSec systemd expects pings within, or None
    ping() -> bool                   WATCHDOG=1, at most every quarter of the watchdog interval

How the core loop should use ``ping()``: the core blocks on its inbox; it must wake at least every
``watchdog_interval_s() / 2`` seconds (use that as the inbox timeout when it is not None) and call ``ping()`` on
every wake-up. ``ping()`` itself drops pings that come faster than a quarter of the interval, so a busy core
does not send a datagram per reading. A core that hangs (deadlock, stuck fsync) stops pinging and systemd
restarts the service: that is the point, so never ping from a separate timer thread.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
import os
import socket
import threading
import time

__all__ = ["StatusLine", "notify", "ping", "ready", "status", "stopping", "watchdog_interval_s"]

log = logging.getLogger(__name__)

#: Longest a notification may wait for room in systemd's socket queue, in seconds.
_SEND_TIMEOUT_S = 0.5

_ping_lock = threading.Lock()
_last_ping = -1e18  # monotonic seconds of the last WATCHDOG=1 sent


def _address() -> str | None:
    """The notification socket address from ``$NOTIFY_SOCKET`` in the form ``socket.sendto`` takes, or None."""
    name = os.environ.get("NOTIFY_SOCKET")
    if not name:
        return None
    if name.startswith("@"):
        return "\0" + name[1:]  # abstract namespace
    if name.startswith("/"):
        return name
    # systemd >= 254 may also pass "vsock:CID:PORT" (for VMs); a Pi gateway never gets one.
    log.debug("NOTIFY_SOCKET %r is not an AF_UNIX path; notifications are off", name)
    return None


def notify(state: str) -> bool:
    """Send one notification to systemd.

    Args:
        state: newline-separated ``KEY=VALUE`` assignments, e.g. ``"READY=1\\nSTATUS=running"``.

    Returns:
        True if the datagram was sent; False when not running under systemd (no ``$NOTIFY_SOCKET``) or when
        sending failed (logged at debug level: a missing notification must never stop the agent).
    """
    address = _address()
    if address is None:
        return False
    data = state.encode("utf-8", "replace")
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            # A datagram socket's queue is short (net.unix.max_dgram_qlen, 10 by default) and sendto() blocks
            # while it is full; a stalled systemd must not stall the agent's core loop, so give up after a while.
            sock.settimeout(_SEND_TIMEOUT_S)
            sock.sendto(data, address)
    except OSError as exc:
        log.debug("sd_notify %r failed: %s", state.split("\n", 1)[0], exc)
        return False
    return True


def ready() -> bool:
    """Tell systemd the agent is up (``READY=1``); until then ``systemctl start`` waits."""
    return notify("READY=1")


def stopping() -> bool:
    """Tell systemd the agent is shutting down cleanly (``STOPPING=1``)."""
    return notify("STOPPING=1")


def status(text: str) -> bool:
    """Set the one-line status shown by ``systemctl status`` (``STATUS=...``); newlines become spaces."""
    return notify("STATUS=" + " ".join(text.splitlines()))


class StatusLine:
    """The service's ``STATUS=`` line, sent when its text changed and at most every ``min_interval_s`` seconds.

    A status is one datagram to systemd; a service that updates it from a busy loop would send one per event.
    Call :meth:`update` from the loop: the text is built (when given as a callable) and sent only when due, or at
    once with ``force=True`` (a connection lost or regained, an SOS). A change held back leaves :attr:`pending`
    set: the loop should wake by :attr:`next_at` and call :meth:`update` again, so the line is never left stale.
    Not thread-safe: one owner thread calls it.
    """

    def __init__(self, min_interval_s: float = 5.0) -> None:
        self.min_interval_s = min_interval_s
        self.text = ""  # the last text sent
        self.next_at = 0.0  # monotonic seconds from which the next update is built
        self.pending = False  # an update was asked for before next_at

    def update(self, text: str | Callable[[], str], *, force: bool = False, now: float | None = None) -> bool:
        """Send ``text`` (or what the callable returns) if due and changed.

        Args:
            text: the status, or a function building it (called only when due).
            force: send now whatever the interval (still only if the text changed).
            now: ``time.monotonic()`` seconds (default: now).

        Returns:
            True if a datagram was sent.
        """
        now = time.monotonic() if now is None else now
        if not force and now < self.next_at:
            self.pending = True
            return False
        self.pending = False
        self.next_at = now + self.min_interval_s
        line = " ".join((text() if callable(text) else text).splitlines())
        if line == self.text:
            return False
        self.text = line
        return status(line)


def watchdog_interval_s() -> float | None:
    """The watchdog interval systemd enforces on this process, in seconds, or None when there is none.

    Read from ``$WATCHDOG_USEC`` (microseconds). When ``$WATCHDOG_PID`` is set and is not this process (a child
    that inherited the environment), the watchdog is not ours and None is returned, as sd_watchdog_enabled(3)
    does.
    """
    usec = os.environ.get("WATCHDOG_USEC")
    if not usec:
        return None
    pid = os.environ.get("WATCHDOG_PID")
    if pid:
        try:
            if int(pid) != os.getpid():
                return None
        except ValueError:
            return None
    try:
        value = int(usec)
    except ValueError:
        log.debug("WATCHDOG_USEC %r is not a number; watchdog off", usec)
        return None
    return value / 1e6 if value > 0 else None


def ping() -> bool:
    """Keep the systemd watchdog from restarting the agent (``WATCHDOG=1``).

    Pings closer together than a quarter of :func:`watchdog_interval_s` are not sent (systemd needs one per
    interval; a quarter leaves room for a slow wake-up), so this is cheap to call on every core wake-up.

    Returns:
        True if a ping was sent now or recently enough; False when there is no watchdog or sending failed.
    """
    global _last_ping
    interval = watchdog_interval_s()
    if interval is None:
        return False
    now = time.monotonic()
    with _ping_lock:
        if now - _last_ping < interval / 4:
            return True
        sent = notify("WATCHDOG=1")
        if sent:
            _last_ping = now
        return sent


def _reset_for_tests() -> None:
    """Forget when the last ping was sent, so the next :func:`ping` sends (tests only)."""
    global _last_ping
    with _ping_lock:
        _last_ping = -1e18
