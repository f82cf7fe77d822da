"""What ``denen doctor`` learns from a radio module on an open port: the probe side of a driver.

A driver's probe (``DriverSpec.probe``) is ``probe(port, radio, timeout_s, say) -> Finding``: ``port`` is an open
pyserial port with a short read timeout, ``radio`` the radio's config (``name``, ``port``, ``baudrate`` and the
driver's own section), ``say`` translates a message id (doctor passes its gettext; the texts are marked with
:func:`N_` for the catalog). Probes only ask; they never change what the module keeps.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from drivers.transport import LineSplitter
from drivers.types import Uplink

__all__ = ["FAIL", "OK", "OTHER_BAUDS", "WARN", "Finding", "N_", "PortLines", "ProbeLink", "Say", "noise_hint",
           "printable"]

OK, WARN, FAIL = "ok", "warn", "fail"
#: The speeds a module at another baud rate is tried at, most likely first (pre-RUI3 firmware runs at 9600).
OTHER_BAUDS = (115200, 9600, 57600, 38400, 19200, 230400)

#: Translates a message id into the reader's language.
Say = Callable[[str], str]


def N_(message: str) -> str:  # noqa: N802 - the conventional name of gettext's no-op marker
    """Mark a text for the catalog; the probe's ``say`` translates it where it is used."""
    return message


@dataclass
class Finding:
    """What a probe found.

    Attributes:
        status: ``ok``, ``warn`` or ``fail``.
        summary: what was found, one line (translated).
        hint: how to fix it (translated; None when ok).
        details: machine-readable facts (``module``, ``firmware``, ``mode`` ...).
    """

    status: str
    summary: str
    hint: str | None = None
    details: dict[str, Any] = field(default_factory=dict)


def printable(data: bytes) -> bool:
    """Whether ``data`` is text a module would print (not line noise at a wrong baud rate)."""
    return all(32 <= b < 127 or b in (9, 10, 13) for b in data)


def noise_hint(raw: bytes, baudrate: int, say: Say) -> str:
    """The hint for a module that gave no sensible answer: wrong speed if bytes came, else power and cable."""
    if raw and not printable(raw):
        return say(N_("bytes arrived but made no sense: wrong baud rate? radios[].baudrate is {baud} "
                      "(RAK3172 and ES920LR default to 115200)")).format(baud=baudrate)
    return say(N_("check that the module has power, that the cable is a data cable, and that this is the module's "
                  "port (`ls -l /dev/lora* /dev/serial/by-id/`)"))


class PortLines:
    """Reads lines from a port until a deadline, with pyserial's short read timeout."""

    def __init__(self, port: Any, terminators: tuple[bytes, ...]) -> None:
        self.port = port
        self.splitter = LineSplitter(terminators, skip_empty=True)
        self.raw = bytearray()  # everything read, for telling noise from silence

    def until(self, done: Callable[[bytes], bool], timeout_s: float) -> list[bytes]:
        """Lines read until ``done(line)`` is true for one of them, or ``timeout_s`` passes."""
        out: list[bytes] = []
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            chunk = self.port.read(self.port.in_waiting or 1)
            if not chunk:
                continue
            self.raw += chunk
            for line in self.splitter.feed(chunk):
                out.append(line)
                if done(line):
                    return out
        return out


class ProbeLink:
    """A :class:`drivers.radio.Link` over an open port, so a probe speaks through the driver's own parser.

    Everything read is kept in :attr:`raw` (for telling noise from silence); uplinks are dropped and incidents
    kept in :attr:`incidents`. ``feed`` is set to the driver's ``feed`` once the driver exists.
    """

    def __init__(self, port: Any, radio: str) -> None:
        self.port = port
        self.radio = radio
        self.raw = bytearray()
        self.incidents: list[tuple[str, str]] = []
        self.feed: Callable[[bytes, int], None] | None = None

    @classmethod
    def driver(cls, driver_cls: Callable[[Any, Any], Any], port: Any, radio: Any) -> tuple[Any, ProbeLink]:
        """A driver of ``driver_cls`` on the port, fed by a new link: the probe asks through the driver's parser."""
        link = cls(port, radio.name)
        driver = driver_cls(radio, link)
        link.feed = driver.feed
        return driver, link

    def write(self, data: bytes) -> None:
        self.port.write(data)

    def pump(self, timeout: float) -> bool:
        # One read: the port's own short timeout bounds it, and the caller loops until its deadline.
        chunk = self.port.read(self.port.in_waiting or 1)
        if not chunk:
            return False
        self.raw += chunk
        if self.feed is not None:
            self.feed(chunk, time.time_ns() // 1000)
        return True

    def deliver(self, uplinks: list[Uplink]) -> None:
        pass  # frames heard while probing are not the probe's business

    def incident(self, kind: str, detail: str) -> None:
        if len(self.incidents) < 100:
            self.incidents.append((kind, detail))
