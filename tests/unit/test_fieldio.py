"""agent.gateway.fieldio on gpiozero's MockFactory: lamp patterns over time, siren, test button, debounced rain gauge."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from types import SimpleNamespace
from typing import Any

import pytest
from gpiozero import Device
from gpiozero.pins.mock import MockFactory, MockPin
from gpiozero.threads import GPIOThread
from pydantic import BaseModel, ValidationError

from agent.errors import AgentError
from agent.gateway import fieldio_config
from agent.gateway.fieldio import FieldIO, GpioError, GpioPinError, GpioUnavailable
from agent.gateway.fieldio_config import GpioConfig, RainGauge

LAMP, SIREN, BUTTON, GAUGE = 17, 22, 27, 5


@pytest.fixture
def mock_factory() -> Iterator[MockFactory]:
    """gpiozero's own fixture idea: a fresh MockFactory, the global factory restored afterwards."""
    saved = Device.pin_factory
    factory = MockFactory()
    yield factory
    factory.reset()
    Device.pin_factory = saved


@pytest.fixture
def make_io(mock_factory: MockFactory) -> Iterator[Callable[..., FieldIO]]:
    made: list[FieldIO] = []

    def make(on_test_button: Callable[[], None] | None = None, **sections: Any) -> FieldIO:
        io = FieldIO(GpioConfig(**sections), pin_factory=mock_factory, on_test_button=on_test_button)
        made.append(io)
        return io

    yield make
    for io in made:
        io.close()


def wait_until(predicate: Callable[[], bool], timeout: float = 3.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        time.sleep(0.01)


def blink_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if isinstance(t, GPIOThread) and t.is_alive()]


def states(pin: MockPin) -> list[bool]:
    return [s.state for s in pin.states]


def tip(pin: MockPin) -> None:
    """One clean closing of a reed switch wired to ground (pull-up on)."""
    pin.drive_low()
    pin.drive_high()


# -- config ----------------------------------------------------------------------------------------------------


def _all_fields(model: type[BaseModel]) -> Iterator[tuple[str, Any]]:
    for name, info in model.model_fields.items():
        yield f"{model.__name__}.{name}", info
        for arg in getattr(info.annotation, "__args__", (info.annotation,)):
            if isinstance(arg, type) and issubclass(arg, BaseModel):
                yield from _all_fields(arg)


def test_every_config_field_is_described_and_extra_keys_are_refused() -> None:
    fields = list(_all_fields(GpioConfig))
    assert len(fields) >= 20
    for name, info in fields:
        assert info.description and len(info.description) > 15, name
    with pytest.raises(ValidationError, match="extra"):
        GpioConfig(status_lamp={"pin": 17, "colour": "red"})
    with pytest.raises(ValidationError, match="extra"):
        GpioConfig(lamp={"pin": 17})


def test_config_accepts_pin_spellings_and_rejects_bad_ones() -> None:
    cfg = GpioConfig(status_lamp={"pin": "gpio17"}, siren={"pin": "BOARD15"}, test_button={"pin": "27"},
                     rain_gauge={"pin": 5, "node_id": "0000A001"})
    assert (cfg.status_lamp.pin, cfg.siren.pin, cfg.test_button.pin) == ("GPIO17", "BOARD15", 27)
    assert cfg.rain_gauge.node_id == "0000a001" and cfg.rain_gauge.node_uint == 0xA001
    assert cfg.rain_gauge.mm_per_tip == 0.2
    for bad in ("PIN17", 99, -1, True, "GPIO", 1.5):
        with pytest.raises(ValidationError, match="pin"):
            GpioConfig(status_lamp={"pin": bad})
    for bad_id in ("a001", "0000a00g", True, 2**32):
        with pytest.raises(ValidationError, match="node_id"):
            GpioConfig(rain_gauge={"pin": 5, "node_id": bad_id})
    with pytest.raises(ValidationError, match="node_id"):
        GpioConfig(rain_gauge={"pin": 5})  # the readings need an id
    with pytest.raises(ValidationError, match="mm_per_tip"):
        GpioConfig(rain_gauge={"pin": 5, "node_id": "0000a001", "mm_per_tip": 0})


def test_config_refuses_one_pin_used_twice_and_unknown_factories() -> None:
    with pytest.raises(ValidationError, match="same pin as status_lamp"):
        GpioConfig(status_lamp={"pin": 17}, siren={"pin": "BCM17"})
    with pytest.raises(ValidationError, match="same pin as test_button"):
        GpioConfig(test_button={"pin": "J8:13"}, rain_gauge={"pin": "BOARD13", "node_id": "0000a001"})
    with pytest.raises(ValidationError, match=r"unknown gpiozero pin factory 'lpgio'.*lgpio"):
        GpioConfig(pin_factory="lpgio")
    assert GpioConfig(pin_factory="lgpio").pin_factory == "lgpio"


def test_rain_tips_to_mm() -> None:
    gauge = RainGauge(pin=5, node_id="0000a001", mm_per_tip=0.2)
    assert gauge.tips_to_mm(3) == 0.6  # not 0.6000000000000001
    assert RainGauge(pin=5, node_id="0000a001", mm_per_tip=0.5).tips_to_mm(7) == 3.5


# -- no GPIO ---------------------------------------------------------------------------------------------------


def test_no_gpio_sections_construct_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    saved = Device.pin_factory
    monkeypatch.setenv("GPIOZERO_PIN_FACTORY", "no-such-factory")  # any attempt to load one would fail
    io = FieldIO(GpioConfig(pin_factory="lgpio"))  # lgpio is not installed here, and must not be needed
    assert io.pin_factory is None
    assert Device.pin_factory is saved
    io.set_lamp("alarm")
    io.set_siren(True)
    assert io.take_rain() == (0, 0)
    io.self_test()  # returns at once: nothing to chirp
    assert blink_threads() == []
    io.close()


def test_missing_pin_factory_is_a_typed_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(Device, "pin_factory", None)
    monkeypatch.setenv("GPIOZERO_PIN_FACTORY", "no-such-factory")
    with pytest.raises(GpioUnavailable) as info:
        FieldIO(GpioConfig(status_lamp={"pin": 17}))
    assert isinstance(info.value, AgentError)
    assert "no-such-factory" in str(info.value)
    assert info.value.hint and "gpio" in info.value.hint


def test_backend_errors_become_gpio_unavailable(monkeypatch: pytest.MonkeyPatch) -> None:
    class BackendError(Exception):  # stands for lgpio.error: not a gpiozero type, not importable here
        pass

    def failing_factory() -> None:
        raise BackendError("can not open gpiochip")

    fake_ep = SimpleNamespace(name="lgpio", load=lambda: failing_factory)
    monkeypatch.setattr(fieldio_config, "entry_points", lambda group: [fake_ep])
    with pytest.raises(GpioUnavailable, match="'lgpio' cannot be used: BackendError: can not open gpiochip") as info:
        FieldIO(GpioConfig(pin_factory="lgpio", siren={"pin": 22}))
    assert isinstance(info.value.__cause__, BackendError)


def test_bad_pin_is_a_typed_error_and_releases_what_was_built(mock_factory: MockFactory) -> None:
    # BOARD11 is GPIO17 on the header: the config cannot see that, gpiozero's reservation can.
    cfg = GpioConfig(status_lamp={"pin": 17}, siren={"pin": "BOARD11"})
    with pytest.raises(GpioPinError) as info:
        FieldIO(cfg, pin_factory=mock_factory)
    assert isinstance(info.value, GpioError) and isinstance(info.value, ValueError)
    assert "gpio.siren" in str(info.value)
    # The lamp built before the failure was closed: its pin can be claimed again.
    io = FieldIO(GpioConfig(status_lamp={"pin": 17}), pin_factory=mock_factory)
    io.close()


def test_mock_factory_from_config_is_owned_and_closed() -> None:
    saved = Device.pin_factory
    io = FieldIO(GpioConfig(pin_factory="mock", status_lamp={"pin": 17}))
    assert isinstance(io.pin_factory, MockFactory)
    assert io.pin_factory is not Device.pin_factory and Device.pin_factory is saved
    io.set_lamp("ok")
    assert io.pin_factory.pin(17).state is True
    io.close()
    io.close()  # idempotent
    io.set_lamp("alarm")  # after close: ignored, no thread started
    assert blink_threads() == []


# -- lamp ------------------------------------------------------------------------------------------------------


def test_lamp_ok_is_steady_and_leaves_no_thread(make_io, mock_factory: MockFactory) -> None:
    io = make_io(status_lamp={"pin": LAMP})
    pin = mock_factory.pin(LAMP)
    io.set_lamp("alarm")
    assert blink_threads(), "alarm blinks on gpiozero's blink thread"
    io.set_lamp("ok")
    assert blink_threads() == []
    assert pin.state is True
    pin.clear_states()
    time.sleep(0.4)  # longer than a fast-blink period: a running pattern would have toggled
    assert states(pin) == [True]


def test_lamp_active_low(make_io, mock_factory: MockFactory) -> None:
    io = make_io(status_lamp={"pin": LAMP, "active_high": False})
    pin = mock_factory.pin(LAMP)
    assert pin.state is True  # off = high on an active-low lamp
    io.set_lamp("ok")
    assert pin.state is False


def test_lamp_no_backhaul_is_a_slow_one_second_blink(make_io, mock_factory: MockFactory) -> None:
    io = make_io(status_lamp={"pin": LAMP})
    pin = mock_factory.pin(LAMP)
    pin.clear_states()
    io.set_lamp("no_backhaul")
    wait_until(lambda: len(pin.states) >= 4, timeout=3.0)
    # initial off, on at once, off after 1 s, on again after 1 s
    pin.assert_states_and_times([(0.0, False), (0.0, True), (1.0, False), (1.0, True)])


def test_lamp_alarm_is_a_fast_blink_and_off_is_dark(make_io, mock_factory: MockFactory) -> None:
    io = make_io(status_lamp={"pin": LAMP})
    pin = mock_factory.pin(LAMP)
    io.set_lamp("ok")
    pin.clear_states()
    io.set_lamp("alarm")
    wait_until(lambda: len(pin.states) >= 5, timeout=2.0)
    io.set_lamp("off")
    got = pin.states[:5]
    assert [s.state for s in got] == [True, False, True, False, True]
    for s in got[2:]:  # each phase lasts fast_blink_s = 0.25 s
        assert s.timestamp == pytest.approx(0.25, abs=0.08)
    assert pin.state is False and blink_threads() == []
    with pytest.raises(ValueError, match="lamp state"):
        io.set_lamp("panic")


def test_setting_the_same_lamp_state_does_not_restart_the_pattern(make_io, mock_factory: MockFactory) -> None:
    io = make_io(status_lamp={"pin": LAMP})
    pin = mock_factory.pin(LAMP)
    io.set_lamp("no_backhaul")
    pin.clear_states()
    for _ in range(5):
        io.set_lamp("no_backhaul")
    assert states(pin) == [True]  # no off/on glitch from a restarted blink


# -- siren -----------------------------------------------------------------------------------------------------


def test_siren_pattern_on_and_off(make_io, mock_factory: MockFactory) -> None:
    io = make_io(siren={"pin": SIREN, "on_s": 0.2, "off_s": 0.1})
    pin = mock_factory.pin(SIREN)
    assert pin.state is False
    pin.clear_states()
    io.set_siren(True)
    wait_until(lambda: len(pin.states) >= 4, timeout=2.0)
    io.set_siren(False)
    pin.assert_states_and_times([(0.0, False), (0.0, True), (0.2, False), (0.1, True)])
    assert pin.state is False
    pin.clear_states()
    time.sleep(0.35)
    assert states(pin) == [False] and blink_threads() == []
    assert io.siren_on is False


def test_steady_siren_has_no_thread(make_io, mock_factory: MockFactory) -> None:
    io = make_io(siren={"pin": SIREN, "off_s": 0})
    io.set_siren(True)
    assert mock_factory.pin(SIREN).state is True
    assert blink_threads() == []


# -- test button and self test ---------------------------------------------------------------------------------


def test_test_button_press_calls_back_once_per_debounced_press(make_io, mock_factory: MockFactory) -> None:
    presses: list[float] = []
    make_io(on_test_button=lambda: presses.append(time.monotonic()), test_button={"pin": BUTTON, "bounce_s": 0.05})
    pin = mock_factory.pin(BUTTON)
    assert pin.pull == "up"
    pin.drive_low()  # press
    assert len(presses) == 1
    pin.drive_high()  # contact bounce while pressing and releasing: all within bounce_s
    pin.drive_low()
    pin.drive_high()
    assert len(presses) == 1
    time.sleep(0.07)
    pin.drive_low()  # a real second press after a quiet line
    pin.drive_high()
    assert len(presses) == 2


def test_button_runs_the_self_test_then_restores_the_lamp(make_io, mock_factory: MockFactory) -> None:
    io = make_io(status_lamp={"pin": LAMP}, siren={"pin": SIREN}, test_button={"pin": BUTTON})
    lamp, siren = mock_factory.pin(LAMP), mock_factory.pin(SIREN)
    io.set_lamp("ok")
    lamp.clear_states()
    mock_factory.pin(BUTTON).drive_low()
    wait_until(lambda: len(siren.states) >= 3)  # the chirp: on, then off
    wait_until(lambda: lamp.state is True and not blink_threads() and len(lamp.states) > 3)
    assert states(siren)[:3] == [False, True, False]
    assert states(lamp)[:3] == [True, False, True]  # flickered during the test, steady afterwards
    assert siren.state is False and io.siren_on is False


def test_self_test_keeps_states_asked_for_meanwhile(make_io, mock_factory: MockFactory) -> None:
    io = make_io(status_lamp={"pin": LAMP}, siren={"pin": SIREN, "off_s": 0})
    io.set_lamp("ok")
    t = threading.Thread(target=io.self_test)
    t.start()
    wait_until(lambda: bool(blink_threads()))
    io.set_lamp("off")  # asked during the test: applied when it ends
    io.set_siren(True)
    t.join(3.0)
    assert not t.is_alive()
    assert mock_factory.pin(LAMP).state is False
    assert mock_factory.pin(SIREN).state is True


def test_start_self_test_chirps_in_the_background_once_at_a_time(make_io, mock_factory: MockFactory) -> None:
    io = make_io(status_lamp={"pin": LAMP}, siren={"pin": SIREN})
    assert io.has_siren and io.has_lamp and not io.testing
    siren = mock_factory.pin(SIREN)
    siren.clear_states()
    started = time.monotonic()
    assert io.start_self_test() is True
    assert time.monotonic() - started < 0.1  # the caller (the gateway's core) does not wait for the chirp
    wait_until(lambda: io.testing)
    assert io.start_self_test() is True  # one running already: not a second one
    wait_until(lambda: not io.testing)
    assert states(siren).count(True) == 1  # one chirp
    assert siren.state is False and io.siren_on is False


def test_start_self_test_without_lamp_or_siren_or_after_close_does_nothing(make_io) -> None:
    io = make_io(test_button={"pin": BUTTON})
    assert not io.has_siren and not io.has_lamp
    assert io.start_self_test() is False
    chirper = make_io(siren={"pin": SIREN})
    chirper.close()
    assert chirper.start_self_test() is False and not chirper.has_siren


def test_close_interrupts_a_running_self_test(mock_factory: MockFactory) -> None:
    io = FieldIO(GpioConfig(status_lamp={"pin": LAMP}, test_button={"pin": BUTTON}), pin_factory=mock_factory)
    mock_factory.pin(BUTTON).drive_low()
    wait_until(lambda: bool(blink_threads()))
    started = time.monotonic()
    io.close()
    assert time.monotonic() - started < 0.5
    assert blink_threads() == []


# -- rain gauge ------------------------------------------------------------------------------------------------


def test_rain_gauge_counts_debounced_tips(make_io, mock_factory: MockFactory) -> None:
    io = make_io(rain_gauge={"pin": GAUGE, "node_id": "0000a001", "bounce_s": 0.05, "mm_per_tip": 0.2})
    pin = mock_factory.pin(GAUGE)
    assert io.take_rain() == (0, 0)
    # One tip with contact bounce on closing and on opening: counts once.
    for level in (False, True, False, True, False, True):
        (pin.drive_low if level is False else pin.drive_high)()
    assert io.take_rain() == (1, 1)
    time.sleep(0.06)
    tip(pin)
    time.sleep(0.06)
    tip(pin)
    since, total = io.take_rain()
    assert (since, total) == (2, 3)
    assert io.config.rain_gauge.tips_to_mm(since) == 0.4
    assert io.take_rain() == (0, 3)


def test_rain_gauge_with_pull_down(make_io, mock_factory: MockFactory) -> None:
    io = make_io(rain_gauge={"pin": GAUGE, "node_id": "0000a001", "pull_up": False, "bounce_s": 0.01})
    pin = mock_factory.pin(GAUGE)
    assert pin.pull == "down"
    pin.drive_high()  # switch to 3.3 V closes
    pin.drive_low()
    assert io.take_rain() == (1, 1)


def test_rain_counting_is_thread_safe(make_io, mock_factory: MockFactory) -> None:
    io = make_io(rain_gauge={"pin": GAUGE, "node_id": "0000a001", "bounce_s": 0.001})
    pin = mock_factory.pin(GAUGE)
    n = 150
    taken: list[int] = []
    done = threading.Event()

    def taker() -> None:
        while not done.is_set():
            taken.append(io.take_rain()[0])

    reader = threading.Thread(target=taker)
    reader.start()
    try:
        for _ in range(n):
            pin.drive_low()
            time.sleep(0.0012)  # quiet longer than bounce_s before the next closing
            pin.drive_high()
            time.sleep(0.0012)
    finally:
        done.set()
        reader.join(5.0)
    since, total = io.take_rain()
    assert total == n
    assert sum(taken) + since == n  # every tip taken exactly once
