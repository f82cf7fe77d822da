"""A simulated serial device on a real pseudo-terminal.

The simulator holds the pty's master end; the agent opens the slave end exactly as it opens /dev/ttyUSB0.
Because the kernel numbers ptys anew each time (``/dev/pts/N``), a device that is unplugged and plugged back
would come back under another name. Like udev's ``/dev/lora0``, :class:`PtyPort` therefore keeps a stable
symlink (``link``) pointing at the current slave, removed while unplugged.
"""

from __future__ import annotations

import logging
import os
import random
import select
import termios
import threading
import time
import tty
from collections.abc import Callable
from dataclasses import dataclass, field

log = logging.getLogger(__name__)

_STALL_S = 2.0  # how long a write waits for a host that does not read before its bytes are lost, in seconds

# termios speed constants -> bits per second, for the baud rates the modules support.
_SPEEDS = {getattr(termios, f"B{b}"): b for b in (1200, 2400, 4800, 9600, 19200, 38400, 57600, 115200, 230400)}


@dataclass
class WriteFaults:
    """How writes from the simulated module to the host are disturbed.

    Attributes:
        split_probability: chance (0..1) that one write is cut at random offsets into several writes.
        max_gap_s: longest pause between the pieces of a split write, in seconds.
        rng: random source; seed it for reproducible runs.
    """

    split_probability: float = 0.0
    max_gap_s: float = 0.002
    rng: random.Random = field(default_factory=random.Random)


class PtyPort:
    """One simulated serial device on a pty, with a stable path and an unplug/replug switch.

    Args:
        on_bytes: called from the port's thread with every chunk the host writes.
        link: path of the stable symlink to create; None uses the bare ``/dev/pts/N`` path.
        name: label for logs.
    """

    def __init__(self, on_bytes: Callable[[bytes], None], *, link: str | None = None, name: str = "sim") -> None:
        self.on_bytes = on_bytes
        self.link = link
        self.name = name
        self.faults = WriteFaults()
        self._write_lock = threading.Lock()
        self._master: int | None = None
        self._slave: int | None = None
        self._slave_path = ""
        self._wake_r, self._wake_w = os.pipe()
        self._stop = False
        self._thread: threading.Thread | None = None
        self._plugged = threading.Event()
        self.lost_bytes = 0  # bytes dropped because the host stopped reading

    # -- life cycle -------------------------------------------------------------------------------------
    @property
    def path(self) -> str:
        """The path the host opens: the stable link if one was asked for, else the pty slave."""
        return self.link or self._slave_path

    @property
    def slave_path(self) -> str:
        return self._slave_path

    @property
    def plugged(self) -> bool:
        return self._plugged.is_set()

    def start(self) -> None:
        """Create the pty and start serving it."""
        self._plug()
        self._thread = threading.Thread(target=self._serve, name=f"pty-{self.name}", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop serving and remove the pty and its link."""
        self._stop = True
        os.write(self._wake_w, b"x")
        if self._thread:
            self._thread.join(5)
        self._unplug_fds()
        for fd in (self._wake_r, self._wake_w):
            try:
                os.close(fd)
            except OSError:
                pass

    def unplug(self) -> None:
        """Make the device vanish: the host's reads fail with EIO/EOF and the path disappears."""
        self._unplug_fds()
        os.write(self._wake_w, b"x")

    def replug(self) -> None:
        """Bring the device back under the same stable path (a new pty behind it)."""
        if not self.plugged:
            self._plug()
            os.write(self._wake_w, b"x")

    def _plug(self) -> None:
        master, slave = os.openpty()
        # Raw mode, so nothing the module "sends" is translated before the host sets its own termios.
        tty.setraw(slave)
        # Non-blocking master: a write to a host that stopped reading must not block the simulator forever.
        os.set_blocking(master, False)
        self._master, self._slave = master, slave
        self._slave_path = os.ttyname(slave)
        if self.link:
            os.makedirs(os.path.dirname(self.link) or ".", exist_ok=True)
            tmp = f"{self.link}.{os.getpid()}.tmp"
            try:
                os.unlink(tmp)
            except FileNotFoundError:
                pass
            os.symlink(self._slave_path, tmp)
            os.replace(tmp, self.link)  # atomic, like udev
        self._plugged.set()
        log.debug("%s plugged at %s -> %s", self.name, self.link, self._slave_path)

    def _unplug_fds(self) -> None:
        self._plugged.clear()
        if self.link:
            try:
                os.unlink(self.link)
            except FileNotFoundError:
                pass
        with self._write_lock:
            for fd in (self._master, self._slave):
                if fd is not None:
                    try:
                        os.close(fd)
                    except OSError:
                        pass
            self._master = self._slave = None

    # -- host side settings ----------------------------------------------------------------------------
    def host_baudrate(self) -> int | None:
        """The baud rate the host set on its end, in bits per second (None if unplugged or unknown)."""
        master = self._master
        if master is None:
            return None
        try:
            return _SPEEDS.get(termios.tcgetattr(master)[5])
        except termios.error:
            return None

    # -- data ----------------------------------------------------------------------------------------
    def write(self, data: bytes) -> None:
        """Send bytes to the host, split at random offsets when ``faults.split_probability`` says so.

        Bytes written while unplugged are lost, as on a real unplugged cable.
        """
        f = self.faults
        pieces = [data]
        if len(data) > 1 and f.split_probability and f.rng.random() < f.split_probability:
            cuts = sorted(f.rng.sample(range(1, len(data)), k=min(len(data) - 1, f.rng.randint(1, 3))))
            pieces = [data[a:b] for a, b in zip([0, *cuts], [*cuts, len(data)], strict=True)]
        with self._write_lock:
            for i, piece in enumerate(pieces):
                if i and f.max_gap_s:
                    time.sleep(f.rng.uniform(0, f.max_gap_s))
                if self._master is None:
                    return
                view = memoryview(piece)
                deadline = time.monotonic() + _STALL_S
                while view:
                    try:
                        n = os.write(self._master, view)
                    except BlockingIOError:
                        # The host is not reading and the pty buffer is full. A UART does not wait for its
                        # host: after a short grace the bytes are lost, and the simulator never hangs.
                        left = deadline - time.monotonic()
                        if left <= 0:
                            self.lost_bytes += len(view)
                            return
                        select.select([], [self._master], [], min(left, 0.1))
                        continue
                    except OSError:
                        return
                    view = view[n:]

    def _serve(self) -> None:
        while not self._stop:
            master = self._master
            fds = [self._wake_r] if master is None else [self._wake_r, master]
            try:
                ready, _, _ = select.select(fds, [], [])
            except (OSError, ValueError):
                time.sleep(0.01)  # fd closed under us by unplug(); loop picks the new state
                continue
            if self._wake_r in ready:
                os.read(self._wake_r, 64)
                continue
            try:
                data = os.read(master, 65536)  # type: ignore[arg-type]
            except BlockingIOError:
                continue
            except OSError:
                # EIO until the host opens the slave; we keep our own slave fd open, so this is rare.
                time.sleep(0.01)
                continue
            if data:
                try:
                    self.on_bytes(data)
                except Exception:  # a simulator bug must not kill the port thread silently
                    log.exception("%s: simulator failed on %r", self.name, data[:64])
