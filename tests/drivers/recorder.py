"""What a RadioWorker reports, recorded for tests that run real drivers (tests/drivers, tests/sim), and the life of
a rig (a twin on a pty and the worker driving it) in a fixture."""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Callable, Iterator
from typing import Any, Protocol, TypeVar

from drivers.types import Uplink

__all__ = ["Events", "Rig", "running"]


class Events:
    """Thread-safe recorder of what the worker reports, with waits on conditions."""

    def __init__(self, wait_s: float = 10.0) -> None:
        self.wait_s = wait_s  # how long wait() waits by default, in seconds
        self._cond = threading.Condition()
        self.uplinks: list[Uplink] = []
        self.incidents: list[tuple[str, str]] = []

    def on_uplinks(self, uplinks: list[Uplink]) -> None:
        with self._cond:
            self.uplinks.extend(uplinks)
            self._cond.notify_all()

    def on_incident(self, radio: str, kind: str, detail: str) -> None:
        with self._cond:
            self.incidents.append((kind, detail))
            self._cond.notify_all()

    def count(self, kind: str) -> int:
        with self._cond:
            return sum(1 for k, _detail in self.incidents if k == kind)

    def payloads(self) -> list[bytes]:
        with self._cond:
            return [u.payload for u in self.uplinks]

    def distinct(self, translate: Callable[[Uplink], bytes | None]) -> list[bytes]:
        """``translate`` of each uplink, None dropped and repeats in a row merged (a polled gauge repeats its
        reading every interval)."""
        with self._cond:
            out: list[bytes] = []
            for u in self.uplinks:
                got = translate(u)
                if got is not None and (not out or out[-1] != got):
                    out.append(got)
            return out

    def wait(self, predicate: Callable[[], bool], timeout: float | None = None) -> None:
        with self._cond:
            if not self._cond.wait_for(predicate, self.wait_s if timeout is None else timeout):
                raise AssertionError(f"timed out; incidents so far: {Counter(k for k, _d in self.incidents)}")


class Rig(Protocol):
    """A twin and the worker driving it, as a fixture runs them."""

    worker: Any

    def start(self) -> None: ...

    def stop(self) -> None: ...


R = TypeVar("R", bound=Rig)


def running(rig: R) -> Iterator[R]:
    """Start ``rig``, yield it to the test, stop it (whatever the test did) and check the worker's thread ended;
    a fixture returns ``yield from running(Rig(...))``."""
    rig.start()
    try:
        yield rig
    finally:
        rig.stop()
    assert not rig.worker.alive
