"""The process heap: memory freed after start-up given back to the operating system."""

from __future__ import annotations

import gc

__all__ = ["trim"]


def trim() -> None:
    """Give the heap pages freed after start-up (config validation, schema building) back to the OS.

    Measured: about 1 MiB of RSS on a gateway that runs for months in 512 MiB or less. glibc only; elsewhere a no-op.
    """
    import ctypes  # noqa: PLC0415 - once, at start

    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass
