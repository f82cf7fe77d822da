"""A message to a person, built where the language is not known: an English template (a catalog message id,
marked with :func:`N_`) and its values. Standard library only, so any driver module (the radio worker, a
codec) can say something to a person without importing pydantic or the agent; ``drivers.settings`` re-exports
both for the config models, and the agent shows a :class:`Text` translated (``agent.i18n.translate``; the
agent's log formatters do it for a log line whose message or arguments are one)::

    log.warning("%s", Text(N_("radio {radio}: worker thread did not stop within {seconds} s"), radio=r, seconds=5))
"""

from __future__ import annotations

from collections.abc import Mapping

__all__ = ["N_", "Text"]


def N_(message: str) -> str:  # noqa: N802 - the conventional name of gettext's no-op marker
    """Mark an English template for the catalog where it is written; it is translated where it is shown."""
    return message


class Text(str):
    """A message to a person: the English text, formatted from ``template`` with ``params``, that also keeps the
    template and values so that it can be shown in another language. Without params the template is the text,
    unformatted."""

    template: str
    params: Mapping[str, object]

    def __new__(cls, template: str, /, **params: object) -> Text:
        self = super().__new__(cls, template.format(**params) if params else template)
        self.template = template
        self.params = params
        return self

    def __reduce__(self) -> tuple[object, ...]:  # copied and pickled with its template
        return (_text, (self.template, dict(self.params)))


def _text(template: str, params: dict[str, object]) -> Text:
    return Text(template, **params)
