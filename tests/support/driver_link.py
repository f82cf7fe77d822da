"""Links for driver unit tests: what a module driver (drivers/radio.py) writes to and reports through, without a
port or a RadioWorker thread."""

from __future__ import annotations

import collections
import time
from collections.abc import Iterable
from typing import Any

from drivers.types import Uplink

__all__ = ["RecordingLink", "ScriptLink"]


class RecordingLink:
    """A link without a port: records what the driver writes and what it reports (uplinks, incidents)."""

    def __init__(self, radio: str = "lora0") -> None:
        self.radio = radio
        self.written: list[bytes] = []
        self.deliveries: list[list[Uplink]] = []
        self.incidents: list[tuple[str, str]] = []

    @property
    def uplinks(self) -> list[Uplink]:
        return [u for batch in self.deliveries for u in batch]

    def kinds(self) -> list[str]:
        return [k for k, _ in self.incidents]

    def write(self, data: bytes) -> None:
        self.written.append(data)

    def pump(self, timeout: float) -> bool:
        time.sleep(min(timeout, 0.005))
        return False

    def deliver(self, uplinks: list[Uplink]) -> None:
        self.deliveries.append(list(uplinks))

    def incident(self, kind: str, detail: str) -> None:
        self.incidents.append((kind, detail))


class ScriptLink(RecordingLink):
    """A link to a scripted module: a subclass's ``write`` puts the module's answers in ``inbox`` (``lines`` cuts
    what was written into CR LF lines), and each ``pump`` feeds one answer chunk to ``driver``, received at
    ``received_us``."""

    def __init__(self, radio: str, *, initial: Iterable[bytes] = (), received_us: int = 1_000_000) -> None:
        super().__init__(radio)
        self.inbox: collections.deque[bytes] = collections.deque(initial)
        self.driver: Any = None
        self.received_us = received_us
        self._partial = b""

    def lines(self, data: bytes) -> list[bytes]:
        """The complete lines ``data`` ends, without their CR LF; the rest waits for the next write."""
        *lines, self._partial = (self._partial + data).split(b"\r\n")
        return lines

    def pump(self, timeout: float) -> bool:
        if not self.inbox:
            time.sleep(min(timeout, 0.005))
            return False
        assert self.driver is not None
        self.driver.feed(self.inbox.popleft(), self.received_us)
        return True
