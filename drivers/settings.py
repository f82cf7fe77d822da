"""Validation primitives shared by every config model: the gateway's (agent.config) and the drivers' own settings.

::

    Section                      strict, frozen base of every config section (unknown keys are errors);
                                 its setting_warnings() lists valid but suspicious settings (none by default)
    problem(message, hint, subloc, **params) -> Problems   what a validator raises for one problem
    Problems([Problem(subloc, message, hint), ...]) several at once
    Text(template, **params), N_  a message to a person: an English template (a catalog message id, marked with
                                 N_) and its values; it is the English text, and the agent shows it translated
    did_you_mean(word, choices)  the closest valid choice for a misspelt word
    choices_hint(word, choices, what)              "did you mean 'x'? <what>: a, b, c"
    Seconds, Period, Count       value types of the settings most sections have: a wait, timeout or interval
                                 (seconds, more than zero), a period a person sets (seconds, at least one) and
                                 how many of something (at least one)

A validator raises :class:`Problems`; pydantic wraps it in a ``value_error`` whose ``ctx["error"]`` is that
object, and the YAML loader (``agent.config.loader``) turns each problem into ``file:line:column: key: message
(hint: ...)`` at the validator's key, or at ``subloc`` below it. pydantic only: no agent imports, so a driver
module can define its settings model without importing the agent.

Messages are English templates with named placeholders, marked with :func:`N_` so that the agent's catalog
(``agent/locale``) extracts them, and formatted by :class:`Text`::

    raise problem(N_("node number {num} is outside 1..4294967294"), N_("e.g. !a1b2c3d4"), num=num)

A :class:`Text` is the English string itself (anything that treats it as a ``str`` sees English); the agent
translates its template and formats it with the same values where it shows it (``agent.i18n.translate``). A value
that is itself a :class:`Text` (a word such as "key file") is translated too; any other value (a key, a path, a
number) is shown as it is.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field

from drivers.errors import DenenError
from drivers.text import N_, Text

__all__ = ["N_", "Count", "Loc", "Period", "Problem", "Problems", "Seconds", "Section", "Text", "choices_hint",
           "did_you_mean", "problem"]

#: A location below a model: keys and list indexes, e.g. ("radios", 0, "p2p").
Loc = tuple[str | int, ...]


def _as_text(message: str | None, params: Mapping[str, object]) -> str | None:
    if message is None or isinstance(message, Text):  # already formatted, with its own values
        return message
    return Text(message, **params)


@dataclass(frozen=True)
class Problem:
    """One problem: where below the validator's key (``subloc``), what is wrong, and how to fix it."""

    subloc: Loc
    message: str
    hint: str | None

    @classmethod
    def of(cls, subloc: Loc, message: str, hint: str | None = None, **params: object) -> Problem:
        """A problem whose ``message`` and ``hint`` are templates (marked with :func:`N_`) formatted with
        ``params``."""
        return cls(subloc, _as_text(message, params) or "", _as_text(hint, params))


class Problems(DenenError, ValueError):
    """One or more problems found by a validator, each at a key below the validator's own location.

    pydantic wraps it in a ``value_error`` whose ``ctx["error"]`` is this object, so the loader can recover the
    sub-keys and hints. The text never contains secret values.
    """

    def __init__(self, problems: Iterable[Problem]) -> None:
        self.problems = tuple(problems)
        super().__init__("; ".join(p.message + (f" (hint: {p.hint})" if p.hint else "") for p in self.problems))


def problem(message: str, hint: str | None = None, subloc: Loc = (), **params: object) -> Problems:
    """The exception a validator raises for one problem: ``message`` and ``hint`` are templates (marked with
    :func:`N_`) formatted with ``params``. Never put secret values in ``message``."""
    return Problems([Problem.of(subloc, message, hint, **params)])


def did_you_mean(word: str, choices: Iterable[str]) -> str | None:
    """Return the closest valid choice for a misspelt word, or None."""
    options = list(choices)
    folded = {c.lower().replace("-", "_"): c for c in options}
    probe = word.lower().replace("-", "_")
    if probe in folded:
        return folded[probe]
    close = difflib.get_close_matches(probe, list(folded), n=1, cutoff=0.6)
    return folded[close[0]] if close else None


def choices_hint(word: str, choices: Sequence[str], what: str) -> str:
    """A hint listing the valid ``choices`` (``what`` names them), led by the closest one to ``word`` if any."""
    near = did_you_mean(word, choices)
    listing = Text(N_("{what}: {choices}"), what=what if isinstance(what, Text) else Text(what),
                   choices=", ".join(choices))
    return Text(N_("did you mean '{near}'? {listing}"), near=near, listing=listing) if near else listing

#: A wait, timeout or interval, in seconds: more than zero (a field adds its own upper bound).
Seconds = Annotated[float, Field(gt=0)]
#: A period a person sets (a report or re-send interval, a deadline), in seconds: at least one second.
Period = Annotated[float, Field(ge=1)]
#: How many of something (readings, attempts, messages): at least one (a field adds its own upper bound).
Count = Annotated[int, Field(ge=1)]


class Section(BaseModel):
    """Base of every config section: unknown keys are errors, the model is frozen, and pydantic never echoes
    input values (secrets) in its errors."""

    # frozen: the config is shared read-only by every thread of the agent.
    # hide_input_in_errors: pydantic's own error text would otherwise echo secret values.
    # defer_build: the validator is built at the first validation, not when the class is defined, so the
    # long-running ``denen run``, which receives its config already validated (agent.config.handoff), never
    # builds one (about 10 MiB for the gateway's models).
    model_config = ConfigDict(extra="forbid", frozen=True, hide_input_in_errors=True, validate_default=True,
                              defer_build=True)

    def setting_warnings(self) -> list[Problem]:
        """Valid settings that are probably a mistake, each at a key below this section; none by default.

        A driver's settings model overrides this; the gateway config reports each one as a warning at
        ``radios[i].<section>.<subloc>`` (the config still loads).
        """
        return []
