"""What ``denen doctor`` asks the operating system: the user, its groups, the clock's sync state, and who holds a
serial port open. :class:`Host` bundles the answers so tests can replace single ones."""

from __future__ import annotations

import grp
import os
import pwd
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["Host", "port_holders", "process_name"]


def _kernel_clock_synced() -> bool | None:
    # The three-way answer (None: cannot tell), not the agent's trust decision.
    from agent.gateway import clock  # noqa: PLC0415

    return clock.kernel_synced()


def _group_names() -> set[str]:
    names = set()
    for gid in {os.getegid(), *os.getgroups()}:
        try:
            names.add(grp.getgrgid(gid).gr_name)
        except KeyError:
            pass
    return names


def _user_name() -> str:
    try:
        return pwd.getpwuid(os.geteuid()).pw_name
    except KeyError:
        return str(os.geteuid())


@dataclass
class Host:
    """What doctor asks the operating system; tests replace single answers.

    Attributes:
        euid: effective user id.
        user: the current user's name.
        groups: names of the groups the current process has.
        clock_synced: the kernel's NTP state: True, False, or None when it cannot be asked.
        now_us: the wall clock, µs since the epoch.
        holders: pids of other processes holding a device open (see :func:`port_holders`).
    """

    euid: Callable[[], int] = os.geteuid
    user: Callable[[], str] = _user_name
    groups: Callable[[], set[str]] = _group_names
    clock_synced: Callable[[], bool | None] = _kernel_clock_synced
    now_us: Callable[[], int] = lambda: time.time_ns() // 1000  # noqa: E731
    holders: Callable[[str], list[int]] = field(default_factory=lambda: port_holders)


# ---------------------------------------------------------------------------------------------------------------
# Who holds a serial port


def _pty_index(path: str) -> int | None:
    """N for /dev/pts/N, else None."""
    head, _sep, tail = path.rpartition("/")
    return int(tail) if head == "/dev/pts" and tail.isdigit() else None


def _holds_master_of(pid: str, index: int) -> bool:
    """Whether a process holds the master side of pty ``index`` (it *is* the device: a simulator)."""
    fd_dir = f"/proc/{pid}/fd"
    try:
        fds = os.listdir(fd_dir)
    except OSError:
        return False
    for fd in fds:
        try:
            if os.readlink(f"{fd_dir}/{fd}") not in ("/dev/ptmx", "/dev/pts/ptmx"):
                continue
            with open(f"/proc/{pid}/fdinfo/{fd}") as f:
                for line in f:
                    if line.startswith("tty-index:") and int(line.split(":", 1)[1]) == index:
                        return True
        except (OSError, ValueError):
            continue
    return False


def port_holders(device: str) -> list[int]:
    """Pids of other processes that have ``device`` open, from ``/proc/*/fd``.

    Only processes this user may inspect are seen (all of them as root). A process holding the *master* side of
    a pty whose slave is ``device`` is the device itself (a simulator such as ``denen sim``), not a competitor,
    and is left out, as is this process.

    Args:
        device: the device path (symlinks are resolved).
    """
    real = os.path.realpath(device)
    me = str(os.getpid())
    found: list[int] = []
    try:
        pids = [p for p in os.listdir("/proc") if p.isdigit() and p != me]
    except OSError:
        return found
    for pid in pids:
        fd_dir = f"/proc/{pid}/fd"
        try:
            fds = os.listdir(fd_dir)
        except OSError:
            continue
        for fd in fds:
            try:
                target = os.readlink(f"{fd_dir}/{fd}")
            except OSError:
                continue
            if target == real:
                found.append(int(pid))
                break
    index = _pty_index(real)
    if index is not None:
        found = [p for p in found if not _holds_master_of(str(p), index)]
    return found


def process_name(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return "?"
