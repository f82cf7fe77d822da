"""Log lines in the operator's language, looked up and formatted only when written.

A rate-limited line (:class:`agent.ratelog.RateLimitedLog`) is asked for at the rate of a hostile sender, and
most such calls are counted, not written: the message goes to the logger as ``"%s", LogText(N_(...), ...)``, so
the catalog lookup and the formatting happen in :meth:`logging.LogRecord.getMessage`, only for a line a handler
writes::

    limited.warning(reason, subject, N_("messages"), "%s",
                    LogText(N_("bridge: {reason} on {topic}"), reason=reason, topic=topic))
"""

from __future__ import annotations

from agent.i18n import _

__all__ = ["LogText"]


class LogText:
    """A message id (English, named placeholders, marked with ``N_``) and its values, shown by ``str()`` in the
    language in use."""

    __slots__ = ("params", "template")

    def __init__(self, template: str, **params: object) -> None:
        self.template = template
        self.params = params

    def __str__(self) -> str:
        try:
            return _(self.template).format(**self.params)
        except (KeyError, IndexError, ValueError):  # a catalog whose placeholders differ: English, not a traceback
            return self.template.format(**self.params)

    def __repr__(self) -> str:
        return f"LogText({self.template!r}, {self.params!r})"
