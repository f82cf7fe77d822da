"""The language of what denen says to a person, and how it shows a time.

The language is chosen once per command: ``--lang ja|en`` (:func:`set_language`), else the first of ``LC_ALL``,
``LC_MESSAGES`` and ``LANG`` that is set (``ja*`` -> Japanese), else English. Messages are looked up with stdlib
:mod:`gettext` in the package's own catalog (``agent/locale/ja/LC_MESSAGES/denen.mo``, read through
:mod:`importlib.resources`), and only when a message is first translated: English never reads the catalog.

Message ids are the English texts with named placeholders, formatted after the lookup::

    _("{count} nodes heard").format(count=n)

Machine-readable output (``--json``, the ``file:line:col: key:`` prefix of validation errors, exit codes) is never
translated; the CLI switches to English for ``--json``.

Times shown to a person (:func:`local_time`) are in the system's local zone (``TZ``, else ``/etc/localtime``) with
its abbreviation, or its UTC offset when the zone has no letters for it: ``2026-12-05 14:03:12 JST``.

Only the standard library is imported, and :mod:`gettext` is already loaded by :mod:`argparse`.
"""

from __future__ import annotations

import os
import time
from typing import Any

__all__ = ["DOMAIN", "LANGUAGES", "N_", "LazyText", "_", "gettext", "language", "local_time", "ngettext",
           "set_language", "translate"]

DOMAIN = "denen"
LANGUAGES = ("en", "ja")

_language: str | None = None
_catalog: Any = None  # gettext.NullTranslations once loaded for _language


def _from_environment() -> str:
    """``ja`` when the first set of LC_ALL, LC_MESSAGES, LANG names Japanese, else ``en`` (POSIX precedence)."""
    for var in ("LC_ALL", "LC_MESSAGES", "LANG"):
        value = os.environ.get(var)
        if value:
            return "ja" if value.lower().startswith("ja") else "en"
    return "en"


def language() -> str:
    """The language in use: ``en`` or ``ja``."""
    global _language
    if _language is None:
        _language = _from_environment()
    return _language


def set_language(lang: str | None) -> None:
    """Use ``lang`` (``en``, ``ja``) from now on; None goes back to the environment's choice.

    Raises:
        ValueError: a language denen has no catalog for.
    """
    global _language, _catalog
    if lang is not None and lang not in LANGUAGES:
        raise ValueError(f"no messages in language {lang!r} (one of: {', '.join(LANGUAGES)})")
    _language = lang
    _catalog = None
    if lang is None:
        language()
    _hook_argparse()


def _translations() -> Any:
    global _catalog
    if _catalog is None:
        import gettext as _gettext  # noqa: PLC0415 - already imported by argparse; the .mo is read here only
        import io  # noqa: PLC0415

        lang = language()
        catalog: Any = _gettext.NullTranslations()
        if lang != "en":
            try:
                catalog = _gettext.GNUTranslations(io.BytesIO(_catalog_bytes(lang)))
            except (OSError, ValueError):
                pass  # a broken install speaks English rather than failing
        _catalog = catalog
    return _catalog


def _catalog_bytes(lang: str) -> bytes:
    """The compiled catalog of ``lang``: the package file beside this module, else (a zipped install) through
    importlib.resources, which costs the start-up of every command some milliseconds to import."""
    relative = f"locale/{lang}/LC_MESSAGES/{DOMAIN}.mo"
    try:
        with open(os.path.join(os.path.dirname(__file__), relative), "rb") as f:
            return f.read()
    except OSError:
        from importlib import resources  # noqa: PLC0415

        return resources.files("agent").joinpath(relative).read_bytes()


def gettext(message: str) -> str:
    """``message`` in the language in use (itself in English, or when the catalog has no translation)."""
    if language() == "en":
        return message
    return _translations().gettext(message)


def ngettext(singular: str, plural: str, n: int) -> str:
    """The singular or plural form for ``n``, in the language in use."""
    if language() == "en":
        return singular if n == 1 else plural
    return _translations().ngettext(singular, plural, n)


_ = gettext


def translate(text: str) -> str:
    """A message built where the language is not known (``drivers.settings.Text``: an English template and its
    values) in the language in use; a plain string is looked up as it is. Values that are such messages themselves
    are translated, any other value is shown as it is (a key, a path, a number)."""
    if language() == "en":
        return str(text)
    template = getattr(text, "template", None)
    params = getattr(text, "params", None)
    if not isinstance(template, str) or not params:
        return gettext(template if isinstance(template, str) else str(text))
    values = {k: translate(v) if isinstance(getattr(v, "template", None), str) else v for k, v in params.items()}
    try:
        return gettext(template).format(**values)
    except (KeyError, IndexError, ValueError):  # a catalog whose placeholders differ: English, not a traceback
        return str(text)


class LazyText:
    """A message id (English, named placeholders, marked with ``N_``) and its values, shown by ``str()`` in the
    language in use: the lookup and the formatting happen only when the text is shown. For a rate-limited log
    line (:class:`agent.ratelog.RateLimitedLog`), asked for at the rate of a hostile sender and mostly counted,
    not written, pass ``"%s", LazyText(...)``: :meth:`logging.LogRecord.getMessage` formats it only for a line a
    handler writes::

        limited.warning(reason, subject, N_("messages"), "%s",
                        LazyText(N_("bridge: {reason} on {topic}"), reason=reason, topic=topic))
    """

    __slots__ = ("params", "template")

    def __init__(self, template: str, **params: object) -> None:
        self.template = template
        self.params = params

    def __str__(self) -> str:
        english = self.template
        if not self.params:
            return gettext(english)
        values = {k: translate(v) if isinstance(getattr(v, "template", None), str) else v
                  for k, v in self.params.items()}
        try:
            try:
                return gettext(english).format(**values)
            except (KeyError, IndexError, ValueError):  # a catalog whose placeholders differ: English
                return english.format(**values)
        except (KeyError, IndexError, ValueError):  # values that do not fit the template: shown, not a traceback
            return f"{english} {self.params!r}"

    def __repr__(self) -> str:
        return f"LazyText({self.template!r}, {self.params!r})"


def N_(message: str) -> str:  # noqa: N802 - the conventional name of gettext's no-op marker
    """Mark a text for the catalog where it is defined; :func:`gettext` translates it where it is shown."""
    return message


#: argparse's own texts, so that the catalog keeps them (argparse formats them with %-placeholders after lookup).
ARGPARSE_MESSAGES = (
    N_("usage: "), N_("options"), N_("positional arguments"), N_("show this help message and exit"),
    N_("show program's version number and exit"), N_("%(prog)s: error: %(message)s\n"),
    N_("the following arguments are required: %s"), N_("unrecognized arguments: %s"),
    N_("invalid choice: %(value)r (choose from %(choices)s)"), N_("argument %(argument_name)s: %(message)s"),
    N_("expected one argument"), N_("invalid %(type)s value: %(value)r"), N_("not allowed with argument %s"),
    N_("one of the arguments %s is required"), N_("ignored explicit argument %r"),
    N_("ambiguous option: %(option)s could match %(matches)s"), N_("expected at least one argument"),
    N_("unknown parser %(parser_name)r (choices: %(choices)s)"),
)


_ARGPARSE_ORIGINAL: dict[str, Any] = {}


def _hook_argparse() -> None:
    """argparse's own texts (``usage:``, ``options``, ``error:``) through this catalog: argparse looks them up with
    the module-level ``_`` and ``ngettext`` it imported from gettext. In Japanese its help is also wrapped by
    terminal cells (a wide character takes two) and between any two wide characters, as Japanese has no spaces."""
    import argparse  # noqa: PLC0415 - imported by the CLI already

    if not _ARGPARSE_ORIGINAL:
        _ARGPARSE_ORIGINAL.update(gettext=argparse._, ngettext=argparse.ngettext,  # type: ignore[attr-defined]
                                  split_lines=argparse.HelpFormatter._split_lines)
    if language() == "en":
        argparse._ = _ARGPARSE_ORIGINAL["gettext"]  # type: ignore[attr-defined]
        argparse.ngettext = _ARGPARSE_ORIGINAL["ngettext"]  # type: ignore[attr-defined]
        argparse.HelpFormatter._split_lines = _ARGPARSE_ORIGINAL["split_lines"]  # type: ignore[method-assign]
    else:
        argparse._ = gettext  # type: ignore[attr-defined]
        argparse.ngettext = ngettext  # type: ignore[attr-defined]
        argparse.HelpFormatter._split_lines = _split_help_lines  # type: ignore[method-assign,assignment]


def cell_width(text: str) -> int:
    """Terminal cells of ``text``: two for each East Asian wide or fullwidth character, else one."""
    import unicodedata  # noqa: PLC0415

    return sum(2 if unicodedata.east_asian_width(ch) in "WF" else 1 for ch in text)


def wrap_cells(text: str, width: int) -> list[str]:
    """``text`` (whitespace collapsed) in lines of at most ``width`` terminal cells: broken at spaces, and between
    wide characters; a run of narrow characters longer than a line (a path) stays whole."""
    import re  # noqa: PLC0415

    # Tokens: a run of narrow non-space characters, one wide character, or a space.
    tokens = re.findall(r"[^\s\u1100-\uffef]+|[\u1100-\uffef]|\s+", text.strip())
    lines: list[str] = []
    line, used = "", 0
    for token in tokens:
        if token.isspace():
            token = " "
        w = cell_width(token)
        if used + w > width and line.strip():
            lines.append(line.rstrip())
            line, used = "", 0
            if token == " ":
                continue
        line += token
        used += w
    if line.strip():
        lines.append(line.rstrip())
    return lines


def _split_help_lines(self: Any, text: str, width: int) -> list[str]:
    return wrap_cells(text, width)


def local_time(ts: float | int | None, *, us: bool = True, date: bool = True) -> str:
    """A time for a person: ``2026-12-05 14:03:12 JST`` in the system's local zone; ``?`` for a non-number.

    Args:
        ts: the time since the epoch, in µs (``us=True``) or in seconds.
        us: whether ``ts`` is in microseconds.
        date: False for the time of day and zone alone (``14:03:12 JST``).
    """
    if isinstance(ts, bool) or not isinstance(ts, int | float):
        return "?"
    try:
        at = time.localtime(ts / 1e6 if us else ts)
    except (OverflowError, OSError, ValueError):
        return "?"
    zone = at.tm_zone or ""
    if not zone or not zone.isalpha():  # a zone with no abbreviation ("+09"): its offset says it exactly
        offset = at.tm_gmtoff or 0
        sign = "+" if offset >= 0 else "-"
        zone = f"{sign}{abs(offset) // 3600:02d}{abs(offset) % 3600 // 60:02d}"
    return time.strftime("%Y-%m-%d %H:%M:%S" if date else "%H:%M:%S", at) + " " + zone
