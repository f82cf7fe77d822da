"""What the RAK3172 and Meshtastic twins share: a module on a :class:`~drivers.sim._pty.PtyPort` that loses power
when unplugged and boots again when plugged back in, and a condition tests wait on."""

from __future__ import annotations

import threading
from collections.abc import Callable

from drivers.sim._pty import PtyPort


class PluggedModule:
    """The pty's path, unplug, replug and wait_for over a subclass's ``port``, ``_lock``, ``_cond``, ``_powered``, ``_power_off()``
    (called under the lock) and ``_boot_after_replug()`` (called under the lock when the module is unpowered)."""

    port: PtyPort
    _lock: threading.RLock
    _cond: threading.Condition
    _powered: bool

    def _power_off(self) -> None:
        raise NotImplementedError

    def _boot_after_replug(self) -> None:
        raise NotImplementedError

    @property
    def path(self) -> str:
        """The path the host opens."""
        return self.port.path

    def unplug(self) -> None:
        """The device vanishes: host reads fail, the path disappears, and the module loses power."""
        with self._lock:
            self._power_off()
        self.port.unplug()

    def replug(self) -> None:
        """The device comes back under the same path (a new pty) and boots again."""
        self.port.replug()
        with self._lock:
            if not self._powered:
                self._boot_after_replug()

    def wait_for(self, predicate: Callable[[], bool], timeout: float = 5.0) -> bool:
        """Wait until ``predicate()`` is true; it is re-checked whenever the simulator's state changes.

        Args:
            predicate: evaluated under the simulator's lock.
            timeout: longest wait, in seconds.

        Returns:
            The predicate's last value (False on timeout).
        """
        with self._cond:
            return self._cond.wait_for(predicate, timeout)
