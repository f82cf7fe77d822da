"""Field I/O on the gateway's GPIO header, through gpiozero only: status lamp, siren, test button, rain gauge.

Public API::

    GpioConfig                      the ``gpio:`` config section (every device optional)
    FieldIO(config, *, pin_factory=None, on_test_button=None)
        .set_lamp(state)            "ok" | "no_backhaul" | "alarm" | "off"
        .set_siren(on)              siren/relay pattern on or off; purely local, works with no network
        .take_rain() -> (tips since last take, cumulative tips)
        .self_test()                lamp and siren chirp briefly (``denen doctor``); blocks about 0.6 s
        .start_self_test() -> bool  the same on a thread of its own (the test button, ``cmd/test-chirp``)
        .has_siren, .has_lamp, .testing
        .close()

The ``gpio:`` section's models (GpioConfig and its devices) are in agent.gateway.fieldio_config and imported from
here too.

Every device is built with ``pin_factory=`` passed explicitly; the factory is chosen in this order: the
``pin_factory`` argument (tests pass a ``MockFactory``), then ``gpio.pin_factory`` from the config (``mock`` for
the demo, or a gpiozero factory name such as ``lgpio``), then gpiozero's own default (``Device.pin_factory``, the
``GPIOZERO_PIN_FACTORY`` variable, then lgpio, RPi.GPIO, pigpio, native). No hardware library is imported here.
A config with no device section builds nothing and needs no factory, so a gateway without GPIO runs anywhere.

Two gpiozero behaviours are deliberately avoided, both for the solar-powered idle budget (DESIGN.md: no timers
under 1 s at idle):

* ``Button`` starts a hold thread that wakes every 0.1 s forever (``mixins.HoldThread``), so the test button is
  a plain ``DigitalInputDevice``;
* pin-level bounce filtering differs between factories and ``MockPin`` ignores it ("XXX Need to implement
  this"), so debouncing is done here, identically everywhere: an activation counts only when the line was quiet
  for ``bounce_s`` before it, which rejects contact bounce both when the switch closes and when it opens.

A steady lamp and a silent siren leave no thread running; blinking uses gpiozero's blink thread, which exists
only while a pattern is showing.

Its errors (``GpioError`` with a ``hint``, ``GpioUnavailable``, ``GpioPinError``) are drawn in the error tree in
drivers/errors.py.
"""

from __future__ import annotations

import logging
import threading
import warnings
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Final

from agent.errors import AgentError
from agent.gateway import fieldio_config
from agent.gateway.fieldio_config import GpioConfig, InputPin
from agent.i18n import _

if TYPE_CHECKING:
    from gpiozero import LED, DigitalInputDevice, DigitalOutputDevice

# gpiozero (with colorzero, importlib.metadata, ...) costs about 3 MiB of RAM: it is imported only when a gateway
# actually has GPIO devices, not by every `denen run` that loads these config models.


def _gpio_error() -> type[Exception]:
    """gpiozero's base error class, imported on first use (evaluated only when an exception is being matched)."""
    from gpiozero.exc import GPIOZeroError  # noqa: PLC0415

    return GPIOZeroError

__all__ = ["LAMP_STATES", "FieldIO", "GpioError", "GpioPinError", "GpioUnavailable"]

log = logging.getLogger(__name__)

#: The status lamp's states: steady on, slow blink, fast blink, dark.
LAMP_STATES: Final[tuple[str, ...]] = ("ok", "no_backhaul", "alarm", "off")

_SELF_TEST_S: Final = 0.6  # how long the lamp flickers during a self test, in seconds
_SELF_TEST_LAMP_S: Final = 0.1  # lamp on/off time during the self test, in seconds
_SELF_TEST_CHIRP_S: Final = 0.2  # siren on-time of the self-test chirp, in seconds
_CLOSE_JOIN_S: Final = 2.0  # how long close() waits for a running self test, in seconds

class GpioError(AgentError):
    """GPIO could not be set up; ``hint`` says what the installer can do about it."""

    def __init__(self, message: str, hint: str | None = None) -> None:
        super().__init__(message + (_(" (hint: {hint})").format(hint=hint) if hint else ""))
        self.hint = hint


class GpioUnavailable(GpioError):
    """No usable GPIO pin factory: not a Raspberry Pi, the GPIO library is missing, or no permission."""


class GpioPinError(GpioError, ValueError):
    """A configured pin does not exist on this board or is already used by another device."""


# ---------------------------------------------------------------------------------------------------------------
# Devices


class _EdgeFilter:
    """Software debounce: an activation counts only when no edge at all came in the ``bounce_s`` before it.

    Edges are stamped with the pin factory's ``ticks()`` when gpiozero calls back, and compared with its
    ``ticks_diff()`` (the factory's clock may wrap, so ticks are never subtracted directly).
    """

    def __init__(self, factory: Any, bounce_s: float) -> None:
        self._factory = factory
        self._bounce_s = bounce_s
        self._last_edge: Any = None

    def edge(self, *, active: bool) -> bool:
        """Note one edge; return True when it is an activation that counts."""
        now = self._factory.ticks()
        quiet = self._last_edge is None or self._factory.ticks_diff(now, self._last_edge) >= self._bounce_s
        self._last_edge = now
        return active and quiet


class FieldIO:
    """The gateway's field devices on GPIO, built from the ``gpio:`` section.

    Args:
        config: the ``gpio:`` section.
        pin_factory: a gpiozero pin factory to use instead of the config's (tests pass a ``MockFactory``). Not
            closed by :meth:`close`; a factory created here from the config is.
        on_test_button: called (on gpiozero's callback thread) after each debounced press of the test button,
            besides the self test the press starts.

    Raises:
        GpioUnavailable: devices are configured but no pin factory can be loaded (not a Pi, lgpio missing, the
            user not in the gpio group).
        GpioPinError: a pin does not exist on this board or is used twice.

    Attributes:
        pin_factory: the factory in use, or None when no device is configured.
        lamp_state: the lamp state last asked for.
        siren_on: whether the siren was last asked to sound.
    """

    def __init__(self, config: GpioConfig, *, pin_factory: Any = None,
                 on_test_button: Callable[[], None] | None = None) -> None:
        self.config = config
        self.pin_factory: Any = None
        self.lamp_state: str = "off"
        self.siren_on = False
        self._on_test_button = on_test_button
        self._owns_factory = False
        self._lock = threading.Lock()  # device writes, states, counters
        self._test_lock = threading.Lock()  # one self test at a time
        self._closing = threading.Event()
        self._testing = False
        self._test_thread: threading.Thread | None = None
        self._tips_total = 0
        self._tips_taken = 0
        self._lamp: LED | None = None
        self._siren: DigitalOutputDevice | None = None
        self._button: DigitalInputDevice | None = None
        self._gauge: DigitalInputDevice | None = None
        if not config.any_device:
            log.debug("gpio: no devices configured")
            return
        self.pin_factory, self._owns_factory = _resolve_factory(config.pin_factory, pin_factory)
        try:
            self._build()
        except BaseException:
            self._release()
            raise
        log.info("%s", _("gpio: {devices} on {factory}").format(devices=", ".join(self._device_names()),
                                                                 factory=type(self.pin_factory).__name__))

    # -- public API ----------------------------------------------------------------------------------------------
    @property
    def has_siren(self) -> bool:
        """Whether a siren output is configured and open."""
        return self._siren is not None

    @property
    def has_lamp(self) -> bool:
        """Whether a status lamp is configured and open."""
        return self._lamp is not None

    @property
    def testing(self) -> bool:
        """Whether a self test is running now (the lamp flickers and the siren chirps instead of their states)."""
        return self._testing

    def set_lamp(self, state: str) -> None:
        """Show a state on the status lamp (a no-op without a lamp; it is remembered for a self test).

        Args:
            state: ``ok`` (steady on), ``no_backhaul`` (slow blink, ``slow_blink_s`` on and off), ``alarm``
                (fast blink, ``fast_blink_s`` on and off) or ``off``.

        Raises:
            ValueError: an unknown state.
        """
        if state not in LAMP_STATES:
            raise ValueError(f"lamp state must be one of {', '.join(LAMP_STATES)}; got {state!r}")
        with self._lock:
            if state == self.lamp_state:
                return  # re-starting a blink would restart its phase and its thread for nothing
            self.lamp_state = state
            if not self._testing and not self._closing.is_set():
                self._apply_lamp()

    def set_siren(self, on: bool) -> None:
        """Sound the siren in its pattern (``on_s`` on, ``off_s`` off), or silence it. Needs no network."""
        with self._lock:
            if on == self.siren_on:
                return
            self.siren_on = on
            if not self._testing and not self._closing.is_set():
                self._apply_siren()

    def take_rain(self) -> tuple[int, int]:
        """Bucket tips counted since the previous call, and since start.

        Returns:
            ``(tips since the last take, cumulative tips)``; ``(0, 0)`` without a rain gauge. Multiply by
            ``config.rain_gauge.mm_per_tip`` (or use ``RainGauge.tips_to_mm``) for millimetres.
        """
        with self._lock:
            since = self._tips_total - self._tips_taken
            self._tips_taken = self._tips_total
            return since, self._tips_total

    def self_test(self) -> None:
        """Flicker the lamp and chirp the siren briefly, then show the current states again.

        Blocks for about 0.6 s (less if :meth:`close` is called meanwhile). A second call waits for the first.
        """
        with self._test_lock:
            with self._lock:
                if self._closing.is_set() or (self._lamp is None and self._siren is None):
                    return
                self._testing = True
                if self._lamp is not None:
                    self._lamp.blink(on_time=_SELF_TEST_LAMP_S, off_time=_SELF_TEST_LAMP_S)
                if self._siren is not None:
                    self._siren.blink(on_time=_SELF_TEST_CHIRP_S, off_time=_SELF_TEST_CHIRP_S, n=1)
            log.info("%s", _("gpio: self test"))
            try:
                self._closing.wait(_SELF_TEST_S)
            finally:
                with self._lock:
                    self._testing = False
                    if not self._closing.is_set():
                        self._apply_lamp()
                        self._apply_siren()

    def start_self_test(self) -> bool:
        """Start :meth:`self_test` on a short-lived thread of its own and return at once.

        Returns:
            False when there is nothing to chirp (no lamp and no siren) or FieldIO is closing; True when a self
            test was started or one is running already (a second one would only repeat it).
        """
        with self._lock:
            if self._closing.is_set() or (self._lamp is None and self._siren is None):
                return False
            running = self._test_thread is not None and self._test_thread.is_alive()
            if not running:
                self._test_thread = threading.Thread(target=self._thread_self_test, name="gpio-self-test",
                                                     daemon=True)
                self._test_thread.start()
        return True

    def close(self) -> None:
        """Stop patterns and release the pins (and the pin factory if it was created here). Idempotent.

        After close the setters do nothing. Released output pins go back to inputs, so what a relay does then
        depends on its wiring (an active-high relay with a pull-down falls off).
        """
        self._closing.set()
        thread = self._test_thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(_CLOSE_JOIN_S)
        self._release()

    def __enter__(self) -> FieldIO:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- internals -----------------------------------------------------------------------------------------------
    def _build(self) -> None:
        from gpiozero import LED, DigitalOutputDevice  # noqa: PLC0415 - see _gpio_error
        cfg = self.config
        f = self.pin_factory
        if cfg.status_lamp is not None:
            lamp = cfg.status_lamp
            self._lamp = _device("status_lamp", lamp.pin, lambda: LED(
                lamp.pin, active_high=lamp.active_high, initial_value=False, pin_factory=f))
        if cfg.siren is not None:
            siren = cfg.siren
            self._siren = _device("siren", siren.pin, lambda: DigitalOutputDevice(
                siren.pin, active_high=siren.active_high, initial_value=False, pin_factory=f))
        if cfg.test_button is not None:
            self._button = self._input("test_button", cfg.test_button, self._button_edge)
        if cfg.rain_gauge is not None:
            self._gauge = self._input("rain_gauge", cfg.rain_gauge, self._gauge_edge)

    def _input(self, name: str, cfg: InputPin, on_edge: Callable[..., None]) -> Any:
        """A contact input, its edges debounced (``cfg.bounce_s``) into ``on_edge(filter, active=...)``."""
        from gpiozero import DigitalInputDevice  # noqa: PLC0415 - see _gpio_error
        f = self.pin_factory
        device = _device(name, cfg.pin, lambda: DigitalInputDevice(
            cfg.pin, pull_up=cfg.pull_up, bounce_time=None, pin_factory=f))
        edges = _EdgeFilter(f, cfg.bounce_s)
        device.when_activated = lambda: on_edge(edges, active=True)
        device.when_deactivated = lambda: on_edge(edges, active=False)
        return device

    def _device_names(self) -> list[str]:
        devices = (("status_lamp", self._lamp), ("siren", self._siren), ("test_button", self._button),
                   ("rain_gauge", self._gauge))
        return [name for name, dev in devices if dev is not None]

    def _apply_lamp(self) -> None:
        """Drive the lamp for ``lamp_state``. Caller holds ``_lock``."""
        lamp, cfg = self._lamp, self.config.status_lamp
        if lamp is None or cfg is None:
            return
        if self.lamp_state == "ok":
            lamp.on()  # also stops any blink thread: steady means idle
        elif self.lamp_state == "no_backhaul":
            lamp.blink(on_time=cfg.slow_blink_s, off_time=cfg.slow_blink_s)
        elif self.lamp_state == "alarm":
            lamp.blink(on_time=cfg.fast_blink_s, off_time=cfg.fast_blink_s)
        else:
            lamp.off()

    def _apply_siren(self) -> None:
        """Drive the siren for ``siren_on``. Caller holds ``_lock``."""
        siren, cfg = self._siren, self.config.siren
        if siren is None or cfg is None:
            return
        if not self.siren_on:
            siren.off()
        elif cfg.off_s == 0:
            siren.on()
        else:
            siren.blink(on_time=cfg.on_s, off_time=cfg.off_s)

    def _gauge_edge(self, tips: _EdgeFilter, *, active: bool) -> None:
        # gpiozero's callback thread. The filter and the counters share the lock with take_rain().
        with self._lock:
            if tips.edge(active=active):
                self._tips_total += 1

    def _button_edge(self, press: _EdgeFilter, *, active: bool) -> None:
        # gpiozero's callback thread: never block it (rain tips arrive on it too), so the self test runs on its
        # own short-lived thread.
        with self._lock:
            if not press.edge(active=active) or self._closing.is_set():
                return
        self.start_self_test()
        log.info("%s", _("gpio: test button pressed"))
        if self._on_test_button is not None:
            try:
                self._on_test_button()
            except Exception:  # top level of a callback on gpiozero's thread: log, keep the button working
                log.exception("%s", _("gpio: the test button's action failed"))

    def _thread_self_test(self) -> None:
        try:
            self.self_test()
        except Exception:  # thread top level: a failed chirp must not go unnoticed, nor take anything down
            log.exception("%s", _("gpio: self test failed"))

    def _release(self) -> None:
        """Close every device and an owned factory; safe to call twice."""
        # Take the devices under the lock, close them outside it: closing an input may wait for gpiozero's
        # callback thread, which may be waiting for this lock in _gauge_edge().
        with self._lock:
            devices = (self._gauge, self._button, self._siren, self._lamp)
            self._lamp = self._siren = self._button = self._gauge = None
            factory, owned = self.pin_factory, self._owns_factory
            self._owns_factory = False
        for dev in devices:
            if dev is not None:
                try:
                    dev.close()
                except _gpio_error() as exc:
                    log.warning("%s", _("gpio: closing {device} failed: {error}").format(device=repr(dev), error=exc))
        if owned and factory is not None:
            try:
                factory.close()
            except _gpio_error() as exc:
                log.warning("%s", _("gpio: closing the pin factory failed: {error}").format(error=exc))


def _device(key: str, pin: int | str, make: Callable[[], Any]) -> Any:
    """Build one gpiozero device, translating its errors into ours."""
    try:
        return make()
    except _gpio_error() as exc:
        raise GpioPinError(
            _("gpio.{key}: pin {pin}: {error}").format(key=key, pin=repr(pin), error=exc),
            _("check the pin number against the board's header (BCM numbering unless written BOARDn), and that no "
              "other device or program uses it"),
        ) from exc
    except Exception as exc:  # a backend's own error type (lgpio.error ...) cannot be named without importing it
        raise GpioUnavailable(
            _("gpio.{key}: pin {pin} cannot be opened: {kind}: {error}").format(key=key, pin=repr(pin),
                                                                               kind=type(exc).__name__, error=exc),
            _("run as a user in the 'gpio' group, and check that no other program holds the pin"),
        ) from exc


def _resolve_factory(name: str | None, explicit: Any) -> tuple[Any, bool]:
    """Pick the pin factory. Returns ``(factory, owned)``; an owned factory is closed by FieldIO.close()."""
    from gpiozero import Device  # noqa: PLC0415
    from gpiozero.pins.mock import MockFactory  # noqa: PLC0415

    if explicit is not None:
        return explicit, False
    if name == "mock":
        return MockFactory(), True
    hint = _("on a Raspberry Pi install python3-lgpio (Raspberry Pi OS) and add the service user to the 'gpio' "
             "group; elsewhere set gpio.pin_factory: mock, or remove the gpio devices from the config")
    if name is not None:
        eps = {ep.name: ep for ep in fieldio_config.entry_points(group="gpiozero_pin_factories")}
        ep = eps.get(name) or eps.get(name.lower())
        if ep is None:
            raise GpioUnavailable(_("gpio: pin factory {name} is not installed; installed: {installed}").format(
                name=repr(name), installed=", ".join(sorted(eps)) or _("none")), hint)
        try:
            return ep.load()(), True
        except Exception as exc:  # backends raise their own types (ImportError, lgpio.error, OSError, ...)
            raise GpioUnavailable(_("gpio: pin factory {name} cannot be used: {kind}: {error}").format(
                name=repr(name), kind=type(exc).__name__, error=exc), hint) from exc
    # gpiozero's default: Device.pin_factory, GPIOZERO_PIN_FACTORY, then its fallback chain. Its fallbacks are
    # warnings; collect them so they end up in our error (or in the log) instead of escaping as warnings.
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            Device.ensure_pin_factory()
        except Exception as exc:  # same reason as above: whatever the backends raise means "no GPIO here"
            tried = "; ".join(str(w.message) for w in caught)
            message = (_("gpio: no GPIO pin factory could be loaded ({kind}: {error}); tried: {tried}") if tried
                       else _("gpio: no GPIO pin factory could be loaded ({kind}: {error})"))
            raise GpioUnavailable(message.format(kind=type(exc).__name__, error=exc, tried=tried), hint) from exc
    for w in caught:
        log.warning("%s", _("gpio: {warning}").format(warning=w.message))
    return Device.pin_factory, False
