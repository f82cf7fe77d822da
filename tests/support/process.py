"""Ending a server process a test started (a broker, a database) or a benchmark's worker processes: politely first,
for sure in the end."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterable
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess

__all__ = ["end", "end_workers", "processes_mentioning"]


def end(proc: subprocess.Popen[bytes] | None, timeout_s: float = 10.0) -> None:
    """SIGTERM and wait up to ``timeout_s`` seconds (a broker saves its sessions then), SIGKILL if it is still
    running; its stderr pipe, if any, is closed either way. None or an exited process: only the pipe is closed."""
    if proc is None:
        return
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    if proc.stderr is not None:
        proc.stderr.close()


def end_workers(pipes: Iterable[Connection], workers: Iterable[BaseProcess], timeout_s: float = 10.0) -> None:
    """Close the parent ends of the pipes to multiprocessing workers a benchmark started, then SIGTERM each worker
    still running and wait up to ``timeout_s`` seconds for it to exit."""
    for pipe in pipes:
        pipe.close()
    for proc in workers:
        if proc.is_alive():
            proc.terminate()
        proc.join(timeout_s)


def processes_mentioning(*texts: str) -> list[str]:
    """``pid: command line`` of each live process other than this one whose command line contains one of ``texts``
    (what a command that must leave nothing running left running)."""
    found = []
    for pid in os.listdir("/proc"):
        if not pid.isdigit() or int(pid) == os.getpid():
            continue
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                cmdline = f.read().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if any(t in cmdline for t in texts):
            found.append(f"{pid}: {cmdline}")
    return found
