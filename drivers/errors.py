"""Errors raised by drivers and codecs.

Tree::

    DriverError
     ├── CodecError (ValueError)        a payload that cannot be decoded; ``reason`` is a short counter key
     │    ├── LppError                  Cayenne LPP body
     │    └── FrameError                denen node frame envelope (PROTOCOLS.md §9)
     ├── ModuleError                    the radio module answered with an error status
     └── ModuleTimeout (TimeoutError)   the radio module did not answer in time
"""

from __future__ import annotations


class DriverError(Exception):
    """Base class of every error raised by ``drivers``."""


class CodecError(DriverError, ValueError):
    """A payload could not be decoded.

    ``reason`` is a short, stable key (``lpp_truncated``, ``bad_mic`` ...) used to count and quarantine
    frames; the message says what exactly was wrong, with the byte offset where that helps.
    """

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


class LppError(CodecError):
    """A Cayenne LPP body could not be decoded."""


class FrameError(CodecError):
    """A denen node frame could not be parsed or authenticated."""


class ModuleError(DriverError):
    """The radio module answered a command with an error status."""

    def __init__(self, command: str, status: str) -> None:
        super().__init__(f"{command!r} -> {status}")
        self.command = command
        self.status = status


class ModuleTimeout(DriverError, TimeoutError):
    """The radio module did not answer a command in time."""
