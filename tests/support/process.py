"""Ending a server process a test started (a broker, a database): politely first, for sure in the end."""

from __future__ import annotations

import subprocess

__all__ = ["end"]


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
