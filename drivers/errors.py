"""The root of every error denen raises, and the errors of drivers and codecs.

Every exception a caller can see from ``agent`` or ``drivers`` derives from :class:`DenenError`, so
``except DenenError`` catches exactly "denen refused or failed, and said why". Where an error is also a kind of
builtin error, it mixes that builtin in (as gpiozero does), so code that knows nothing of denen can still catch it
as ``ValueError``, ``TimeoutError``, ``OSError`` or ``RuntimeError``. The root lives here because ``agent`` depends
on ``drivers`` and never the other way round. This is the one drawing of the whole tree; other modules point here.

Tree (builtin mixins in parentheses; the module that defines each class; what it means)::

    DenenError                                  drivers/errors.py                 the root
     ├── Problems (ValueError)                  drivers/settings.py               a config section's problems; the
     │                                                                            loader makes them a ConfigError
     ├── DriverError                            drivers/errors.py                 drivers, codecs and simulators
     │    ├── CodecError (ValueError)           drivers/errors.py                 a payload that cannot be decoded;
     │    │    │                                                                  ``reason`` is a short counter key
     │    │    ├── LppError                     drivers/errors.py                 Cayenne LPP body (protocols §3)
     │    │    │    └── LppUnknownType          drivers/codec/lpp.py              a record type in no table
     │    │    └── FrameError                   drivers/errors.py                 denen node frame (protocols §9)
     │    ├── CmacUnavailable (RuntimeError)    drivers/codec/cmac.py             no usable AES-CMAC in libcrypto
     │    ├── ModuleError                       drivers/errors.py                 the module answered an error status
     │    │    └── ModuleRebooted               drivers/radio.py                  it rebooted while being configured
     │    ├── ModuleTimeout (TimeoutError)      drivers/errors.py                 the module did not answer in time
     │    ├── PortError (OSError)               drivers/transport.py              the serial port failed or is gone
     │    ├── UnknownDriver (ValueError)        drivers/registry.py               no driver registered under a name
     │    └── ScenarioError (ValueError)        drivers/sim/scenario_spec.py      an invalid simulator scenario
     └── AgentError                             agent/errors.py                   gateway, tools, bridge, console
          ├── ConfigError (ValueError)          agent/errors.py                   invalid configuration, every issue
          ├── PrivateFileError (OSError)        agent/securefile.py               a path unfit for a private file
          ├── JournalError                      agent/errors.py                   the journal (SQLite) failed
          │    └── JournalCorrupt               agent/gateway/journal.py          the journal file is damaged
          ├── ReceiptError                      agent/gateway/receipt_airtime.py  an SOS receipt cannot be queued
          │    └── ReceiptRefused (ValueError)  agent/gateway/receipt_airtime.py  it can never be sent legally
          ├── GpioError                         agent/gateway/fieldio.py          GPIO cannot be set up; ``hint``
          │    ├── GpioUnavailable              agent/gateway/fieldio.py          no usable GPIO on this machine
          │    └── GpioPinError (ValueError)    agent/gateway/fieldio.py          a pin that is missing or taken
          ├── FlashError                        agent/gateway/bundle.py           a bundle unwritable or failing checks
          ├── InvalidCommand (ValueError)       agent/gateway/edge_commands.py    a command the edge cannot carry out
          ├── BridgeError                       agent/bridge/errors.py            the bridge's errors
          │    ├── SinkError                    agent/bridge/errors.py            a database write did not go through
          │    │    ├── SinkUnavailable         agent/bridge/errors.py            down or overloaded: retry later
          │    │    ├── SinkRefused             agent/bridge/errors.py            refuses all writes until fixed
          │    │    └── SinkRejected            agent/bridge/errors.py            refused lines: retrying cannot help
          │    ├── Abandoned                    agent/bridge/policy.py            stopping while the database fails
          │    └── Invalid                      agent/bridge/schema.py            a document breaks the schema (kept
          │                                                                       inside the bridge, counted by reason)
          ├── BadMessage (ValueError)           agent/console/state.py            a state/result message not taken
          ├── LinkError                         agent/console/links.py            a malformed, forged or expired link
          ├── HookError                         agent/console/hooks.py            a webhook request refused (4xx)
          └── MailError                         agent/console/hooks.py            the SMTP server did not take the mail

Exceptions whose names start with ``_`` are private signals that never leave their module and are not drawn.
"""

from __future__ import annotations

__all__ = ["CodecError", "DenenError", "DriverError", "FrameError", "LppError", "ModuleError", "ModuleTimeout"]


class DenenError(Exception):
    """Base class of every error raised by ``agent`` and ``drivers`` (the tree: :mod:`drivers.errors`)."""


class DriverError(DenenError):
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
