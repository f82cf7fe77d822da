"""RadioWorker: one thread per radio module that opens, configures and listens, and never gives up.

::

    RadioWorker (thread)                         ModuleDriver (Rak3172, Es920lr: protocol only)
      open_serial(config.port) ──────────┐         configure()  commands + replies, via link.write/pump
      driver.configure()                 │         feed(chunk)   parse; uplinks -> link.deliver, problems
      loop: pump(idle) -> driver.feed    │                       -> link.incident
            serve transmit requests      │         transmit()    one payload on air
      on PortError: close, backoff, reopen         service()     housekeeping between reads

Every byte is read on the worker's thread, so a driver never needs locks: a command is "write, then pump until
the reply has been parsed". Other threads talk to the worker through :meth:`RadioWorker.transmit` (a queue) and
:meth:`RadioWorker.stop`, and wake it with ``port.cancel_read()`` where the port supports it.

The worker reports what happens through :class:`RadioEvents`. Incident kinds (stable counter names):
``port_open_failed``, ``port_lost``, ``reopen``, ``garbled_line``, ``line_overflow``, ``bad_hex``, ``crc_error``,
``module_reboot``, ``module_error``, ``module_timeout``, ``configured``, and ``internal_error`` (a bug in this
code or in an event handler, caught at the thread's top level so the radio keeps listening).
"""

from __future__ import annotations

import collections
import logging
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar, Protocol

import serial

from drivers.errors import ModuleError, ModuleTimeout
from drivers.portread import fast_reader
from drivers.text import N_, Text
from drivers.transport import PortError, open_serial
from drivers.types import Uplink

__all__ = [
    "INCIDENT_KINDS",
    "Link",
    "ModuleDriver",
    "ModuleRebooted",
    "RadioEvents",
    "RadioWorker",
    "backoff_delay",
]

log = logging.getLogger(__name__)

#: Every incident kind a worker or driver reports; the agent keeps one counter per kind.
INCIDENT_KINDS = (
    "port_open_failed", "port_lost", "reopen", "garbled_line", "line_overflow", "bad_hex", "crc_error",
    "module_reboot", "module_error", "module_timeout", "configured", "internal_error",
)

#: Idle read timeout, in seconds, when the port can be woken with ``cancel_read()``; the thread then wakes only
#: for data, for stop() and for transmit().
IDLE_TIMEOUT_CANCELLABLE_S = 10.0
#: Idle read timeout, in seconds, for ports without ``cancel_read()`` (``socket://``): it bounds how long stop()
#: and transmit() wait for the thread, and is the "at most one wakeup every 2 s" budget for an idle radio.
IDLE_TIMEOUT_POLLING_S = 2.0


class RadioEvents(Protocol):
    """What a RadioWorker tells its owner. Both methods are called on the worker's thread."""

    def on_uplinks(self, uplinks: list[Uplink]) -> None:
        """Called once per chunk read from the port, with every complete uplink in it (never empty)."""

    def on_incident(self, radio: str, kind: str, detail: str) -> None:
        """Called for each incident; ``kind`` is one of :data:`INCIDENT_KINDS`, ``detail`` a short text."""


class Link(Protocol):
    """The worker's side of a driver: port I/O and reporting. Only used from the worker's thread."""

    radio: str

    def write(self, data: bytes) -> None:
        """Send bytes to the module. Raises PortError."""

    def pump(self, timeout: float) -> bool:
        """Read what the port has (waiting up to ``timeout`` seconds) and feed it to the driver.

        Returns True if bytes arrived. Raises PortError.
        """

    def deliver(self, uplinks: list[Uplink]) -> None:
        """Hand complete uplinks to the owner."""

    def incident(self, kind: str, detail: str) -> None:
        """Report an incident (one of :data:`INCIDENT_KINDS`)."""


class ModuleRebooted(ModuleError):
    """The module rebooted by itself while it was being configured: :meth:`ModuleDriver.configure` starts over.

    Drivers raise it from their configuration steps (see :meth:`ModuleDriver.check_not_rebooted`); it never
    leaves :meth:`ModuleDriver.configure`.
    """


class ModuleDriver:
    """Base class of module drivers: speaks one module's serial protocol over a :class:`Link`.

    A driver instance lives for one open port. All its methods run on the worker's thread. Subclasses *must*
    implement :meth:`configure_once`, :meth:`feed` and :meth:`transmit`; they *may* override :meth:`service`, and
    :meth:`configure` to reset state of their own around ``super().configure()``.

    Configuration is one mechanism for every driver: :meth:`configure` runs :meth:`configure_once` and, when the
    module reboots by itself in the middle of it (``feed`` saw its boot output and called :meth:`module_rebooted`),
    starts over, at most :attr:`configure_attempts` times.

    Attributes:
        config: the radio's config section (``name``, ``driver``, ``port``, ``baudrate`` and the driver's own
            section).
        link: the worker's port and reporting side.
        module_info: facts read from the module during configure (``firmware``, ``mode`` ...).
        reboot_detected: set by :meth:`feed` when the module rebooted without being asked; the worker then reports
            nothing more (the driver already reported ``module_reboot``) and calls :meth:`configure` again.
        configuring: True while :meth:`configure` runs.
    """

    name: ClassVar[str] = ""
    #: Attempts at a full configuration when the module keeps rebooting in the middle of it.
    configure_attempts: ClassVar[int] = 3

    def __init__(self, config: Any, link: Link) -> None:
        self.config = config
        self.link = link
        self.module_info: dict[str, str] = {}
        self.reboot_detected = False
        self.configuring = False
        self._rebooted_while_configuring = False

    def configure(self) -> None:
        """Bring the module from whatever state it is in to "configured and receiving".

        Runs :meth:`configure_once` until it completes; a :class:`ModuleRebooted` from it starts it over, up to
        :attr:`configure_attempts` attempts in all.

        Raises:
            ModuleError: the module refused a command (already reported as ``module_error``), or kept rebooting
                (reported here).
            ModuleTimeout: the module did not answer (already reported as ``module_timeout``).
            PortError: the port failed.
        """
        self.reboot_detected = False
        self.configuring = True
        try:
            for attempt in range(1, self.configure_attempts + 1):
                self._rebooted_while_configuring = False
                try:
                    self.configure_once()
                    return
                except ModuleRebooted:
                    log.debug("%s: module rebooted during configuration (attempt %d)", self.link.radio, attempt)
            self.link.incident("module_error", "module kept rebooting during configuration")
            raise ModuleError("configure", "module kept rebooting")
        finally:
            self.configuring = False
            self._rebooted_while_configuring = False

    def configure_once(self) -> None:
        """One attempt at the configuration, from whatever state the module is in.

        Raises:
            ModuleRebooted: the module rebooted by itself meanwhile (configure() starts over).
            ModuleError, ModuleTimeout, PortError: as :meth:`configure`.
        """
        raise NotImplementedError

    def module_rebooted(self) -> None:
        """Called by :meth:`feed` when the module rebooted without being asked (after reporting ``module_reboot``).

        During :meth:`configure` the current attempt is abandoned (:meth:`check_not_rebooted` raises from then
        on); otherwise :attr:`reboot_detected` tells the worker to configure the module again.
        """
        if self.configuring:
            self._rebooted_while_configuring = True
        else:
            self.reboot_detected = True

    def check_not_rebooted(self, command: str) -> None:
        """Raise :class:`ModuleRebooted` if the module rebooted during this configuration attempt.

        Drivers call it before each command they send, so an attempt stops at the first command after a reboot.

        Args:
            command: the command about to be sent, for the exception message.
        """
        if self._rebooted_while_configuring:
            raise ModuleRebooted(command, "module rebooted")

    def feed(self, chunk: bytes, received_us: int) -> None:
        """Parse bytes read from the port.

        Args:
            chunk: the bytes of one read.
            received_us: when they were read, in microseconds since the Unix epoch (one stamp per chunk).
        """
        raise NotImplementedError

    def transmit(self, payload: bytes, timeout: float) -> None:
        """Send one payload over the air and wait until the module says it went out.

        Args:
            payload: the frame bytes.
            timeout: how long to wait for the module, in seconds.

        Raises:
            ValueError: the payload is empty or too long for this module.
            ModuleError: the module refused or failed the transmission (reported as ``module_error``).
            ModuleTimeout: no answer in time (reported as ``module_timeout``).
        """
        raise NotImplementedError

    def service(self) -> None:
        """Housekeeping between reads while running (re-arm RX after a timeout event...). Default: nothing."""

    # -- helpers for subclasses ------------------------------------------------------------------------
    def wait_until(self, predicate: Callable[[], bool], timeout: float, what: str) -> None:
        """Pump the port until ``predicate()`` is true.

        Args:
            predicate: checked after every chunk.
            timeout: in seconds.
            what: what is being waited for, for the exception message.

        Raises:
            ModuleTimeout: the predicate stayed false for ``timeout`` seconds (not reported: the caller decides).
            PortError: the port failed.
        """
        deadline = time.monotonic() + timeout
        while not predicate():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise ModuleTimeout(f"{self.link.radio}: {what}: no answer within {timeout:.1f} s")
            self.link.pump(remaining)

    def pause(self, seconds: float) -> None:
        """Wait ``seconds`` while still reading, so uplinks keep flowing during a retry backoff."""
        deadline = time.monotonic() + seconds
        while (remaining := deadline - time.monotonic()) > 0:
            self.link.pump(remaining)


def backoff_delay(failures: int, min_s: float, max_s: float, rng: random.Random) -> float:
    """Delay before the next attempt: exponential from ``min_s`` to ``max_s``, with "equal jitter".

    The delay lies between half the exponential ceiling and the ceiling, never below ``min_s``, so two radios
    that failed together do not retry in lockstep, and a flapping device is not hammered.

    Args:
        failures: consecutive failures so far (1 for the first).
        min_s: first delay, in seconds.
        max_s: largest delay, in seconds.
        rng: random source.

    Returns:
        The delay, in seconds.
    """
    ceiling = min(max_s, min_s * 2.0 ** min(max(failures - 1, 0), 32))
    return rng.uniform(max(min_s, ceiling / 2.0), ceiling)


@dataclass
class _TxRequest:
    payload: bytes
    deadline: float  # time.monotonic()
    done: threading.Event = field(default_factory=threading.Event)
    error: BaseException | None = None
    started: bool = False
    cancelled: bool = False


Opener = Callable[..., Any]


class _Stopping(Exception):
    """Raised by pump() once stop() was asked, to unwind a driver that is waiting for its module."""


class RadioWorker:
    """One radio module on one serial port, served by its own thread until :meth:`stop`.

    Life cycle: open the port, configure the module, receive; on a port error close it, report, and reopen with
    exponential backoff (``reopen_min_s`` .. ``reopen_max_s``, with jitter) forever; on a module reboot,
    configure again. Nothing that happens on the thread ends it: every exception is caught at the top, reported
    as an incident and the loop goes on.

    Args:
        config: the radio's config (attributes ``name``, ``driver``, ``port``, ``baudrate`` and the driver's
            section, ``p2p`` or ``es920``).
        events: receives uplinks and incidents, on the worker's thread.
        reopen_min_s: first retry delay after a failure, in seconds.
        reopen_max_s: longest retry delay, in seconds.
        opener: opens the port (tests inject fakes); same signature as :func:`drivers.transport.open_serial`.
        rng: random source for the backoff jitter.
        wait: sleeps for a backoff delay and returns True if stop() was asked meanwhile (tests inject a fake
            that records delays); default waits on the stop event.
        idle_timeout_s: read timeout while idle, in seconds; default depends on the port (see module constants).

    Attributes:
        state: ``opening`` | ``configuring`` | ``running`` | ``lost`` | ``stopped``.
        reopens: successful reopens after a port loss.
        module_info: what the driver read from the module at the last configure (``firmware``, ``mode``...).
    """

    def __init__(self, config: Any, events: RadioEvents, *, reopen_min_s: float = 0.5, reopen_max_s: float = 30.0,
                 opener: Opener = open_serial, rng: random.Random | None = None,
                 wait: Callable[[float], bool] | None = None, idle_timeout_s: float | None = None) -> None:
        from drivers import registry  # noqa: PLC0415  # the registry imports the drivers, which import this module

        self._driver_cls = registry.spec(config.driver).driver  # UnknownDriver (a ValueError) lists the known names
        if not 0 < reopen_min_s <= reopen_max_s:
            raise ValueError("need 0 < reopen_min_s <= reopen_max_s")
        self.config = config
        self.radio: str = config.name
        self.state = "stopped"
        self.reopens = 0
        self.module_info: dict[str, str] = {}
        self._events = events
        self._reopen_min_s = reopen_min_s
        self._reopen_max_s = reopen_max_s
        self._opener = opener
        self._rng = rng or random.Random()
        self._stop = threading.Event()
        self._wait = wait or self._stop.wait
        self._idle_timeout_override = idle_timeout_s
        self._thread: threading.Thread | None = None
        self._port_lock = threading.Lock()  # guards _port against cancel_read() from other threads
        self._port: Any = None
        self._can_cancel = False
        self._timeout: float | None = None
        self._read: Callable[[float], bytes] | None = None  # the port's fast read, if it has one
        self._driver: ModuleDriver | None = None
        self._tx_lock = threading.Lock()
        self._tx_queue: collections.deque[_TxRequest] = collections.deque()
        self._failures = 0

    # -- public API ------------------------------------------------------------------------------------
    def start(self) -> None:
        """Start the worker thread (once)."""
        if self._thread is not None:
            raise RuntimeError(f"radio {self.radio} already started")
        self._stop.clear()
        self.state = "opening"
        self._thread = threading.Thread(target=self._run, name=f"radio-{self.radio}", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        """Ask the thread to close the port and end, and wait for it up to ``timeout`` seconds."""
        self._stop.set()
        self._wake()
        if self._thread is not None:
            self._thread.join(timeout)
            if self._thread.is_alive():
                log.warning("%s", Text(N_("radio {radio}: worker thread did not stop within {seconds} s"),
                                       radio=self.radio, seconds=timeout))

    def transmit(self, payload: bytes, timeout: float = 10.0) -> None:
        """Send one payload over the air (SOS receipts), from any thread.

        The request waits in a queue until the radio is running; the worker sends it between reads.

        Args:
            payload: the frame bytes.
            timeout: overall limit, in seconds, including waiting for the radio to be running.

        Raises:
            ValueError: the payload is empty or too long for the module.
            ModuleError: the module refused or failed it, or the radio stopped.
            ModuleTimeout: not sent within ``timeout`` (if the radio never got to send it, it never will).
        """
        req = _TxRequest(bytes(payload), time.monotonic() + timeout)
        with self._tx_lock:
            if self._stop.is_set():
                raise ModuleError("transmit", f"radio {self.radio} stopped")
            self._tx_queue.append(req)
        self._wake()
        if not req.done.wait(timeout):
            with self._tx_lock:
                if not req.started:
                    req.cancelled = True
                    self._tx_queue.remove(req)
                    raise ModuleTimeout(f"{self.radio}: not running within {timeout:.1f} s (state {self.state})")
            # The driver got it and is bounded by the same deadline; give it a moment to report its result.
            if not req.done.wait(2.0):
                raise ModuleTimeout(f"{self.radio}: transmit did not finish within {timeout:.1f} s")
        if req.error is not None:
            raise req.error

    @property
    def alive(self) -> bool:
        """True while the worker thread runs."""
        return self._thread is not None and self._thread.is_alive()

    # -- Link (worker thread only) ---------------------------------------------------------------------
    def write(self, data: bytes) -> None:
        port = self._port
        try:
            port.write(data)
        except (serial.SerialException, OSError) as exc:  # SerialTimeoutException is a SerialException
            raise PortError(self.config.port, f"write failed: {exc}") from exc

    def pump(self, timeout: float) -> bool:
        if self._stop.is_set():
            raise _Stopping
        port = self._port
        timeout = max(0.0, timeout)
        try:
            if self._read is not None:  # one select, one read (drivers.portread)
                data = self._read(timeout)
            else:
                # Changing the timeout reconfigures termios on POSIX ports: only when it really changes.
                if self._timeout is None or abs(self._timeout - timeout) > 0.005:
                    port.timeout = self._timeout = timeout
                data = port.read(port.in_waiting or 1)
                if data and (more := port.in_waiting):
                    data += port.read(more)
        except (serial.SerialException, OSError) as exc:
            raise PortError(self.config.port, f"read failed: {exc}") from exc
        if not data:
            return False
        received_us = time.time_ns() // 1000
        driver = self._driver
        if driver is not None:
            driver.feed(data, received_us)
        return True

    def deliver(self, uplinks: list[Uplink]) -> None:
        try:
            self._events.on_uplinks(uplinks)
        except Exception as exc:  # the owner's handler failed; the radio must keep listening
            log.exception("%s", Text(N_("radio {radio}: handing over {count} uplink(s) failed"), radio=self.radio,
                                     count=len(uplinks)))
            self.incident("internal_error", f"on_uplinks: {type(exc).__name__}: {exc}")

    def incident(self, kind: str, detail: str) -> None:
        log.debug("radio %s: %s: %s", self.radio, kind, detail)
        try:
            self._events.on_incident(self.radio, kind, detail)
        except Exception:  # a failing counter must not stop the radio; nothing more to report it to
            log.exception("%s", Text(N_("radio {radio}: reporting {kind} failed"), radio=self.radio, kind=kind))

    # -- thread ----------------------------------------------------------------------------------------
    def _run(self) -> None:
        lost = False
        while not self._stop.is_set():
            try:
                lost = self._cycle(lost)
            except Exception as exc:  # thread top level: report, then carry on after a backoff
                log.exception("%s", Text(N_("radio {radio}: unexpected error"), radio=self.radio))
                self.incident("internal_error", f"{type(exc).__name__}: {exc}")
                self._close_port()
            if self._stop.is_set():
                break
            self._failures += 1
            if self._wait(backoff_delay(self._failures, self._reopen_min_s, self._reopen_max_s, self._rng)):
                break
        self._close_port()
        self.state = "stopped"
        self._fail_pending_transmits(ModuleError("transmit", f"radio {self.radio} stopped"))

    def _cycle(self, lost: bool) -> bool:
        """One open-configure-receive cycle. Returns whether it ended with a port loss."""
        self.state = "lost" if lost else "opening"
        try:
            port = self._opener(self.config.port, baudrate=self.config.baudrate, timeout=None)
        except PortError as exc:
            self.incident("port_open_failed", str(exc))
            return lost
        with self._port_lock:
            self._port = port
            self._can_cancel = callable(getattr(port, "cancel_read", None))
        self._timeout, self._read = None, fast_reader(port)
        if lost:
            self.reopens += 1
            self.incident("reopen", f"{self.config.port} reopened (reopen #{self.reopens})")
        try:
            self._session()
        except PortError as exc:
            self.state = "lost"
            self.incident("port_lost", str(exc))
            return True
        except _Stopping:
            pass
        finally:
            self._close_port()
        return False

    def _session(self) -> None:
        """Configure and receive on an open port until stop() or a PortError."""
        idle = self._idle_timeout_override
        if idle is None:
            idle = IDLE_TIMEOUT_CANCELLABLE_S if self._can_cancel else IDLE_TIMEOUT_POLLING_S
        driver = self._driver_cls(self.config, self)
        self._driver = driver
        try:
            while not self._stop.is_set():
                self.state = "configuring"
                try:
                    driver.configure()
                except (ModuleError, ModuleTimeout) as exc:
                    # The driver reported it; back off (still reading, so the port's health is noticed) and retry.
                    log.debug("radio %s: configure failed: %s", self.radio, exc)
                    self._failures += 1
                    self._interruptible_pause(
                        backoff_delay(self._failures, self._reopen_min_s, self._reopen_max_s, self._rng))
                    continue
                self.module_info = dict(driver.module_info)
                self.incident("configured", ", ".join(f"{k}={v}" for k, v in self.module_info.items()))
                self.state = "running"
                self._failures = 0
                self._receive(driver, idle)
        finally:
            self._driver = None

    def _receive(self, driver: ModuleDriver, idle: float) -> None:
        """Run until stop(), a PortError, or a reason to configure again."""
        while not self._stop.is_set():
            if driver.reboot_detected:
                return
            try:
                self._serve_transmits(driver)
                driver.service()
            except (ModuleError, ModuleTimeout) as exc:
                # A housekeeping command failed (reported by the driver): the module is not in the state we
                # think, so configure it again rather than trust it.
                log.debug("radio %s: %s; configuring again", self.radio, exc)
                return
            if driver.reboot_detected:
                return
            self.pump(idle)

    def _interruptible_pause(self, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while not self._stop.is_set() and (remaining := deadline - time.monotonic()) > 0:
            self.pump(min(remaining, IDLE_TIMEOUT_POLLING_S))

    def _serve_transmits(self, driver: ModuleDriver) -> None:
        while True:
            with self._tx_lock:
                if not self._tx_queue:
                    return
                req = self._tx_queue.popleft()
                if req.cancelled:
                    continue
                req.started = True
            try:
                driver.transmit(req.payload, max(0.0, req.deadline - time.monotonic()))
            except (ModuleError, ModuleTimeout, ValueError) as exc:
                # The caller gets the error; the driver already reported it. A failed send (no ACK, carrier
                # sense) says nothing about the module's configuration, so keep receiving as before.
                req.error = exc
                req.done.set()
                continue
            except PortError as exc:
                req.error = ModuleError("transmit", f"port lost: {exc}")
                req.done.set()
                raise
            except _Stopping:
                req.error = ModuleError("transmit", f"radio {self.radio} stopped")
                req.done.set()
                raise
            req.done.set()

    def _fail_pending_transmits(self, error: BaseException) -> None:
        with self._tx_lock:
            pending = list(self._tx_queue)
            self._tx_queue.clear()
        for req in pending:
            req.error = error
            req.done.set()

    def _wake(self) -> None:
        """Interrupt a blocking read so the thread notices stop() or a transmit request."""
        with self._port_lock:
            port = self._port
            if port is not None and self._can_cancel:
                try:
                    port.cancel_read()
                except (serial.SerialException, OSError) as exc:
                    log.debug("radio %s: cancel_read failed: %s", self.radio, exc)

    def _close_port(self) -> None:
        with self._port_lock:
            port, self._port = self._port, None
        if port is not None:
            try:
                port.close()
            except (serial.SerialException, OSError) as exc:
                log.debug("radio %s: close failed: %s", self.radio, exc)

