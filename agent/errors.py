"""Errors raised by the denen agent: the base :class:`AgentError` and the errors of the configuration and journal.

The whole error tree, drivers and agent, is drawn once, in :mod:`drivers.errors`. :class:`AgentError` derives
from :class:`drivers.errors.DenenError`, the root both packages share (it lives in ``drivers`` because the drivers
package does not depend on the agent).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from agent.i18n import gettext, translate
from drivers.errors import DenenError

__all__ = ["AgentError", "ConfigError", "ConfigIssue", "DenenError", "JournalError"]


@dataclass(frozen=True, slots=True)
class ConfigIssue:
    """One problem found in a configuration file.

    Attributes:
        file: The config file path as given to the loader (or ``"<string>"``).
        line: 1-based line number of the offending key or list item, or ``None`` when the problem has no single
            place in the file (a required top-level key that is missing, an unreadable file).
        column: 1-based column of the offending key or list item, or ``None``.
        key: Dotted path of the key, e.g. ``radios[0].driver``; empty for problems of the file as a whole
            (YAML syntax, empty file).
        message: What is wrong, in plain English. Never contains key or password material. A
            ``drivers.settings.Text`` keeps its template too, so that the line is shown in the user's language.
        hint: How to fix it, or ``None`` (a ``Text`` likewise).
    """

    file: str
    line: int | None
    column: int | None
    key: str
    message: str
    hint: str | None = None

    def __str__(self) -> str:
        # Same shape as compiler diagnostics (path:line:col: ...) so editors and terminals can jump to the line.
        place = self.file
        if self.line is not None:
            place += f":{self.line}"
            if self.column is not None:
                place += f":{self.column}"
        # The place and key stay as they are in every language: tools read them.
        message = translate(self.message)
        text = f"{place}: {self.key}: {message}" if self.key else f"{place}: {message}"
        if self.hint:
            text += gettext(" (hint: {hint})").format(hint=translate(self.hint))
        return text


class AgentError(DenenError):
    """Base class of every error raised by ``agent`` (the tree: :mod:`drivers.errors`)."""


class ConfigError(AgentError, ValueError):
    """The configuration is invalid; ``issues`` lists every problem found, one line each."""

    def __init__(self, issues: Iterable[ConfigIssue]) -> None:
        self.issues: tuple[ConfigIssue, ...] = tuple(issues)
        super().__init__("\n".join(str(issue) for issue in self.issues) or "invalid configuration")


class JournalError(AgentError):
    """The durable journal could not store, read or delete readings."""

