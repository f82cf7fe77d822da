"""The generic loader: any pydantic model from YAML, with file:line:column, key and hint for every problem.

The gateway's, the bridge's and the console's config files load through :func:`parse_yaml_model`; it imports
nothing of the gateway, so any YAML file with a pydantic model (scenario files too) can use it.
"""

from __future__ import annotations

import logging
import os
import re
import stat
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Generic, TypeVar

from pydantic import BaseModel, ValidationError
from ruamel.yaml import YAML
from ruamel.yaml.comments import CommentedMap, CommentedSeq
from ruamel.yaml.error import MarkedYAMLError, YAMLError
from ruamel.yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode
from ruamel.yaml.reader import Reader, ReaderError
from ruamel.yaml.resolver import VersionedResolver
from ruamel.yaml.scalarint import BinaryInt, HexCapsInt, HexInt, OctalInt

try:
    from _ruamel_yaml import (
        CParser as _CParser,  # ruamel.yaml.clib: libyaml's reader, scanner and parser
    )
except ImportError:  # pragma: no cover - a platform without the C extension parses in Python
    _CParser = None

from agent.config.messages import _describe, _union_errors
from agent.config.parsed import read as read_parsed
from agent.config.parsed import write as write_parsed
from agent.config.secrets import _secret_mode_problems
from agent.config.values import _CTX_BASE_DIR, _CTX_LOADER, Found, _dotted
from agent.errors import ConfigError, ConfigIssue
from agent.i18n import _
from drivers.settings import N_, Loc, Problems, Text

__all__ = ["ModelFile", "parse_yaml_model", "read_config_file", "read_config_text"]

# The package's name: warnings are logged, and looked for, under it.
log = logging.getLogger("agent.config")

_M = TypeVar("_M", bound=BaseModel)


def read_config_file(path: str | os.PathLike[str]) -> tuple[str, int]:
    """Read a YAML config file as text (a UTF-8 byte order mark is ignored), with the file's ``st_mode``.

    The mode is taken from the open file that was read (``fstat``), so it belongs to those bytes even if the
    file is replaced meanwhile. Pass it to :func:`parse_yaml_model` as ``file_mode``.

    Raises:
        ConfigError: the file is missing, unreadable or not UTF-8, as one issue naming the file (and the line of
            the first byte that is not UTF-8).
    """
    source = os.fspath(path)
    try:
        with open(source, "rb") as f:
            mode = os.fstat(f.fileno()).st_mode
            data = f.read()
    except FileNotFoundError:
        raise ConfigError(
            [ConfigIssue(source, None, None, "", Text(N_("config file not found")), Text(N_("check the path")))]
        ) from None
    except OSError as exc:
        raise ConfigError(
            [ConfigIssue(source, None, None, "", Text(N_("cannot read the config file: {error}"), error=exc.strerror),
                         None)]
        ) from None
    try:
        # utf-8-sig: editors on Windows laptops often save a BOM.
        return data.decode("utf-8-sig"), mode
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise ConfigError(
            [ConfigIssue(source, line, None, "", Text(N_("the file is not valid UTF-8 text")),
                         Text(N_("save the file as UTF-8")))]
        ) from None


def read_config_text(path: str | os.PathLike[str]) -> str:
    """Read a YAML config file as text, like :func:`read_config_file` without the mode."""
    return read_config_file(path)[0]


@dataclass(frozen=True)
class ModelFile(Generic[_M]):
    """One kind of YAML file read into a pydantic model, and how the loader reports on it.

    The gateway's, the bridge's and the console's config files each have one, so they all report problems the
    same way: ``file:line:column: key: message (hint: ...)``, every problem at once, sorted by line.

    Attributes:
        model: The pydantic model of the whole file; its sections should derive from :class:`ConfigSection`.
        checks: Rules across sections or list items, run on the plain data even when other keys failed, so that
            one run reports everything; each problem is placed at its key's line.
        warnings: Valid settings that are probably a mistake, found on the validated model; returned and logged.
        hex_text_keys: Key paths whose unquoted all-digit values are turned back into the digits written (see
            ``agent.config.models._HEX_TEXT_KEYS``); ``int`` in a path matches any list index. Or a function of
            the loaded data returning them (paths that depend on what the file holds, e.g. its radios' drivers).
        model_for: The model to validate the plain data with, chosen from it (a subclass of ``model`` typed for
            what the file holds, e.g. only the drivers its radios name); default ``model``. Problems are
            described from that model.
        example: The example file named in the hints for an empty file or a top level that is not a mapping.
        sections: Top-level keys named in the message for a top level that is not a mapping; default: the
            model's first two fields.
        service_user: Who should own secret files, for the hints (e.g. "the agent's user").
    """

    model: type[_M]
    checks: Callable[[dict[str, Any]], Iterable[Found]] | None = None
    warnings: Callable[[_M], Iterable[Found]] | None = None
    hex_text_keys: Sequence[tuple[object, ...]] | Callable[[Any], Sequence[tuple[object, ...]]] = ()
    example: str = "config/demo.yaml"
    sections: Sequence[str] | None = None
    service_user: str = "the agent's user"
    model_for: Callable[[Any], type[_M]] | None = None

    def load(self, path: str | os.PathLike[str], *, check_modes: bool = True,
             parsed_cache: Path | None = None) -> tuple[_M, tuple[ConfigIssue, ...]]:
        """Read and parse a file; relative paths in it are resolved against its directory.

        Args:
            check_modes: Refuse secrets other users can read (see :meth:`parse`). False only for a copy on a file
                system without modes (a FAT card, where every file looks readable by all).
            parsed_cache: where this text's parsed data may be kept between starts (:mod:`agent.config.parsed`):
                read instead of parsing the YAML when it is this very text's, written after a clean load.
        """
        source = os.fspath(path)
        text, mode = read_config_file(source)
        file_mode = mode if check_modes else None
        base = Path(source).absolute().parent
        if parsed_cache is not None:
            kept = read_parsed(parsed_cache, text)
            clean = self._clean(kept, source, base, file_mode, check_modes) if kept is not None else None
            if clean is not None:
                return clean, ()
        result, warned, plain = self._parse(text, source=source, base_dir=base, file_mode=file_mode,
                                            secret_file_modes=check_modes)
        if parsed_cache is not None and not warned:
            write_parsed(parsed_cache, text, plain)
        return result, warned

    def _clean(self, plain: Any, source: str, base: Path, file_mode: int | None, secret_file_modes: bool) -> _M | None:
        """Kept parsed data validated with every check of :meth:`parse`; None at the first problem or warning
        (the caller then parses the YAML, which reports it at its line)."""
        model = self.model_for(plain) if self.model_for is not None else self.model
        issues: list[ConfigIssue] = []
        result = _validate(plain, model, None, source, base, issues)
        if result is None or issues or (self.checks is not None and list(self.checks(plain))):
            return None
        errors, warnings = _secret_mode_problems(plain, model, source=source, base_dir=base, file_mode=file_mode,
                                                 secret_file_modes=secret_file_modes, service_user=self.service_user)
        if errors or warnings or (file_mode is not None and stat.S_IMODE(file_mode) & stat.S_IWOTH):
            return None
        if self.warnings is not None and list(self.warnings(result)):
            return None
        return result

    def parse(self, text: str, *, source: str = "<string>", base_dir: str | os.PathLike[str] | None = None,
              file_mode: int | None = None, secret_file_modes: bool = True) -> tuple[_M, tuple[ConfigIssue, ...]]:
        """Parse YAML text and validate it, reporting every problem with its file position.

        Args:
            source: Name used as the file in error messages.
            base_dir: Directory that relative paths are resolved against (validators read it with
                :func:`resolve_config_path`); default: the directory of ``source`` when it names a file (not
                ``<...>``), otherwise the current directory.
            file_mode: ``st_mode`` of the file the text was read from (:func:`read_config_file`), or None for
                text that comes from no file. A secret written inline (a ``SecretStr`` field) in a file other
                users can read is an error; readable by its group, a warning.
            secret_file_modes: Check who can read the files named by :data:`SECRET_FILE` fields: other users is
                an error, the group a warning.

        Returns:
            The validated model and the warnings found.

        Raises:
            ConfigError: listing every problem found, sorted by line.
        """
        result, warned, _plain = self._parse(text, source=source, base_dir=base_dir, file_mode=file_mode,
                                        secret_file_modes=secret_file_modes)
        return result, warned

    def _parse(self, text: str, *, source: str, base_dir: str | os.PathLike[str] | None, file_mode: int | None,
               secret_file_modes: bool) -> tuple[_M, tuple[ConfigIssue, ...], Any]:
        """:meth:`parse`, also returning the plain data it validated."""
        base = Path(base_dir) if base_dir is not None else (
            Path(source).absolute().parent if not source.startswith("<") else Path.cwd())
        root_node, data = _compose(text, source)
        _check_top_level(root_node, data, source, self.model, self.example, self.sections)
        issues: list[ConfigIssue] = _duplicate_key_issues(root_node, source) if root_node is not None else []
        hex_keys = self.hex_text_keys(data) if callable(self.hex_text_keys) else self.hex_text_keys
        plain = _plain_data(text, data, source, hex_keys)
        model = self.model_for(plain) if self.model_for is not None else self.model
        result = _validate(plain, model, data, source, base, issues)
        found = list(self.checks(plain)) if self.checks is not None else []
        # On the plain data, so that it is reported with every other problem, even when validation failed.
        mode_errors, mode_warnings = _secret_mode_problems(
            plain, model, source=source, base_dir=base, file_mode=file_mode,
            secret_file_modes=secret_file_modes, service_user=self.service_user)
        issues.extend(_issue_at(data, source, loc, message, hint) for loc, message, hint in [*found, *mode_errors])
        if file_mode is not None and stat.S_IMODE(file_mode) & stat.S_IWOTH:
            # Whoever can change the config can point the gateway at their own broker or add a node key.
            issues.append(ConfigIssue(source, None, None, "", Text(
                N_("every user on this machine can change this file (mode {mode})"),
                mode=f"{stat.S_IMODE(file_mode):03o}"), f"chmod o-w {source}"))
        if issues or result is None:
            # from None: the chained ValidationError's text would include input values, which may be secrets.
            raise ConfigError(_sorted(issues)) from None
        more = list(self.warnings(result)) if self.warnings is not None else []
        warned = tuple(_sorted(_issue_at(data, source, loc, message, hint)
                               for loc, message, hint in [*mode_warnings, *more]))
        for issue in warned:
            log.warning("%s", _("config warning: {issue}").format(issue=issue))
        return result, warned, plain


def parse_yaml_model(
    text: str,
    model: type[_M],
    *,
    source: str = "<string>",
    base_dir: str | os.PathLike[str] | None = None,
    checks: Callable[[dict[str, Any]], Iterable[Found]] | None = None,
    warnings: Callable[[_M], Iterable[Found]] | None = None,
    hex_text_keys: Sequence[tuple[object, ...]] = (),
    example: str = "config/demo.yaml",
    sections: Sequence[str] | None = None,
    file_mode: int | None = None,
    secret_file_modes: bool = True,
    service_user: str = "the agent's user",
) -> tuple[_M, tuple[ConfigIssue, ...]]:
    """Parse YAML text and validate it as ``model``: ``ModelFile(model, ...).parse(text, ...)`` in one call (see
    :class:`ModelFile` for the arguments).

    Returns:
        The validated model and the warnings found.

    Raises:
        ConfigError: listing every problem found, sorted by line.
    """
    spec = ModelFile(model, checks=checks, warnings=warnings, hex_text_keys=hex_text_keys, example=example,
                     sections=sections, service_user=service_user)
    return spec.parse(text, source=source, base_dir=base_dir, file_mode=file_mode,
                      secret_file_modes=secret_file_modes)


def _compose(text: str, source: str) -> tuple[Node | None, Any]:
    """Parse YAML text once: the node tree (positions, duplicate keys) and the data built from that same tree.

    Raises:
        ConfigError: tabs in the indentation (every such line), a syntax error, a control character, or YAML
            the loader cannot read, each at its line.
    """
    tab_issues = _tab_issues(text, source)
    if tab_issues:
        # The YAML parser would stop at the first tab with a less helpful message; report every tab line instead.
        raise ConfigError(tab_issues)
    fast = _compose_in_c(text)
    if fast is not None:
        return fast
    yaml = _round_trip()
    try:
        # Parsing is most of the time on a large config; load() would parse the text a second time.
        root_node = yaml.compose(text)
        return root_node, yaml.constructor.construct_document(root_node) if root_node is not None else None
    except MarkedYAMLError as exc:
        raise ConfigError([_yaml_error_issue(exc, source)]) from None
    except ReaderError as exc:
        raise ConfigError([_control_character_issue(exc, text, source)]) from None
    except YAMLError as exc:
        raise ConfigError([ConfigIssue(source, None, None, "", Text(N_("YAML error: {error}"), error=str(exc)), None)]) from None
    except Exception as exc:  # noqa: BLE001 - ruamel's constructors raise plain TypeError/ValueError on odd tags
        lines = text.splitlines()
        # ruamel gives no position here: point at the first construct that triggers this (an explicit tag, a merge,
        # a complex key), else at the first line with content.
        line = next((i for i, t in enumerate(lines, 1) if "!!" in t or "<<" in t or t.lstrip().startswith("?")),
                    next((i for i, t in enumerate(lines, 1) if t.strip() and not t.lstrip().startswith("#")), 1))
        raise ConfigError([ConfigIssue(
            source, line, None, _key_at_line(text, line) if line else "",
            Text(N_("YAML the loader cannot read ({error})"), error=f"{type(exc).__name__}: {str(exc)[:120]}"),
            Text(N_("write plain keys and values; explicit tags (!!set, !!int ...), '?' complex keys and '<<' merges "
                    "are not needed")),
        )]) from None


# Texts the C path leaves to the Python parser, because libyaml (YAML 1.1) and ruamel (YAML 1.2) read them apart:
# a directive at the start of any line (after a BOM or a CR too: "%YAML 1.1" changes how ruamel resolves values);
_DIRECTIVE = re.compile(r"(?:^|\r)\ufeff?%", re.MULTILINE)
# a tag (!), an anchor (&) or an alias (*) where one can start (also inside quotes, which only costs speed): ruamel
# keeps "!!str 12" and "&a 1" as tagged and anchored values, libyaml makes them plain;
_TAG_OR_ANCHOR = re.compile(r"(?:^|[\s,\[{:\ufeff])(?:!|[&*](?![\s&*]))", re.MULTILINE)
# NEL, LS and PS, which libyaml takes for line breaks, a BOM after the first character, a tab anywhere (libyaml
# takes one after a colon), and a comment straight after a block scalar's header: ruamel refuses them all.
_C_UNSAFE = re.compile(r"[\x85\u2028\u2029\t]|(?<=.)\ufeff|[|>][-+0-9]*#", re.DOTALL)


def _round_trip() -> YAML:
    """ruamel's round-trip loader: positions of every key and item, and HexInt and friends for hex-text keys."""
    yaml = YAML(typ="rt")
    # Duplicates are found on the node tree, all of them and with both lines, so let the loader accept them.
    yaml.allow_duplicate_keys = True
    return yaml


class _Yaml12Resolver(VersionedResolver):
    """ruamel's resolver for a text without a %YAML directive (the only texts read in C), which is YAML 1.2. Its
    own lookup of the version raises and catches two AttributeErrors per scalar with the C parser: a third of the
    time of building a large config's nodes."""

    @property
    def processing_version(self) -> Any:
        return (1, 2)


def _compose_in_c(text: str) -> tuple[Node | None, Any] | None:
    """:func:`_compose` with the YAML read by libyaml (ruamel.yaml.clib) instead of ruamel's Python reader: 5-7x
    faster on a 2,000-node config (tests/bench/bench_first_reading.py), the same nodes with the same positions,
    constructed by the same round-trip constructor. None when the C parser is not installed or the text does not
    load cleanly: the Python parser then reads it again, so that every problem is reported in its words, at its
    line."""
    if (_CParser is None or _C_UNSAFE.search(text) or _TAG_OR_ANCHOR.search(text) or _DIRECTIVE.search(text)
            or Reader.NON_PRINTABLE.search(text)):  # a character ruamel refuses: only its reader names it
        return None
    yaml = _round_trip()
    yaml.Parser, yaml.Reader, yaml.Scanner = _CParser, None, None  # reader, scanner and parser in C
    yaml.Resolver = _Yaml12Resolver
    try:
        root_node = yaml.compose(text)
        return root_node, yaml.constructor.construct_document(root_node) if root_node is not None else None
    except Exception:  # noqa: BLE001 - any problem is reported by the Python parser's reading of the same text
        return None


def _control_character_issue(exc: ReaderError, text: str, source: str) -> ConfigIssue:
    """A control character (NUL, DEL ...): the reader knows only its offset; turn it into line and column."""
    pos = exc.position if isinstance(exc.position, int) else 0
    line = text.count("\n", 0, pos) + 1
    column = pos - (text.rfind("\n", 0, pos) + 1) + 1
    char = exc.character if isinstance(exc.character, int) else ord(str(exc.character)[:1] or "?")
    return ConfigIssue(
        source, line, column, _key_at_line(text, line),
        Text(N_("the file holds a control character (code {code}) YAML does not allow"), code=f"{char:#04x}"),
        Text(N_("delete it; editors show it as a box or ^? (a copy from a PDF or a terminal can bring one along)")),
    )


def _check_top_level(root_node: Node | None, data: object, source: str, model: type[BaseModel], example: str,
                     sections: Sequence[str] | None) -> None:
    """Refuse an empty document, or one whose top level is not a mapping of sections."""
    if data is None:
        raise ConfigError(
            [ConfigIssue(source, 1, 1, "", Text(N_("the file is empty (or holds only comments)")),
                         Text(N_("start from one of the examples in config/, e.g. {example}"), example=example))]
        )
    if not isinstance(data, CommentedMap):
        what = Text(N_("a list")) if isinstance(data, CommentedSeq) else Text(N_("a single value"))
        line, col = (root_node.start_mark.line + 1, root_node.start_mark.column + 1) if root_node else (1, 1)
        named = ", ".join(f"{name}:" for name in (sections or list(model.model_fields)[:2]))
        raise ConfigError(
            [ConfigIssue(source, line, col, "", Text(N_("the top level must be a mapping of sections ({named}, "
                                                        "...), but this file holds {what}"), named=named, what=what),
                         Text(N_("each top-level key starts at column 1 and ends with ':'; see {example}"),
                              example=example))]
        )


def _plain_data(text: str, data: object, source: str, hex_text_keys: Sequence[tuple[object, ...]]) -> Any:
    """The ruamel tree as plain data for pydantic; refused when YAML aliases expand it beyond
    :attr:`_Budget.LIMIT` values."""
    try:
        return _to_plain(data, (), hex_text_keys, _Budget())
    except _TooBig:
        lines = text.splitlines()
        line = next((i for i, t in enumerate(lines, 1) if "*" in t.split("#", 1)[0]), None)
        raise ConfigError([ConfigIssue(
            source, line, None, _key_at_line(text, line) if line else "",
            Text(N_("the file expands to more than {limit} values (YAML aliases)"), limit=_Budget.LIMIT),
            Text(N_("a gateway config is small: write values out instead of nesting aliases (*name)")),
        )]) from None


def _validate(plain: Any, model: type[_M], data: object, source: str, base_dir: Path,
              issues: list[ConfigIssue]) -> _M | None:
    """Validate plain data as ``model``; each problem is appended to ``issues`` at its key's line (None then)."""
    context = {_CTX_BASE_DIR: base_dir, _CTX_LOADER: True}
    try:
        return model.model_validate(plain, context=context)
    except ValidationError as exc:
        for err in _union_errors(exc.errors(include_url=False), plain):
            issues.extend(_issues_from_error(err, data, source, model))
    except (TypeError, OverflowError, OSError, ArithmeticError) as exc:
        # A validator met input of a shape nothing expected; still one clear line, never a traceback.
        issues.append(ConfigIssue(source, None, None, "", Text(N_("a value has an unexpected shape ({error})"),
                                                                error=f"{type(exc).__name__}: {str(exc)[:120]}"),
                                  Text(N_("compare the file with the examples in config/"))))
    return None


def _sorted(issues: Iterable[ConfigIssue]) -> list[ConfigIssue]:
    unique = list(dict.fromkeys(issues))
    return sorted(unique, key=lambda i: (i.line is None, i.line or 0, i.column or 0))


def _tab_issues(text: str, source: str) -> list[ConfigIssue]:
    issues = []
    for number, line in enumerate(text.splitlines(), start=1):
        indent = line[: len(line) - len(line.lstrip(" \t"))]
        rest = line[len(indent):]
        if "\t" in indent and rest and not rest.startswith("#"):
            issues.append(
                ConfigIssue(source, number, indent.index("\t") + 1, "", Text(N_("a tab character is used for indentation")),
                            Text(N_("YAML indentation must use spaces; replace the tab with spaces")))
            )
    return issues


_YAML_HINTS: tuple[tuple[str, str], ...] = (
    ("'\\t'", N_("YAML does not allow tab characters here; use spaces")),
    ("mapping values are not allowed", N_("a value containing ': ' must be put in quotes, or this line is indented "
                                          "wrongly")),
    ("could not find expected ':'", N_("each key must end with ':'; check this line and the one above")),
    ("expected <block end>", N_("the indentation is inconsistent: keys of one section must start in the same "
                                "column")),
    ("did not find expected key", N_("the indentation is inconsistent, or a list item is missing its '- '")),
    ("did not find expected '-'", N_("the items of a list must all start with '- ' in the same column")),
    ("end of stream", N_("a quote or bracket is not closed")),
    ("expected ',' or", N_("a bracket or brace is not closed")),
    ("found undefined alias", N_("an alias (*name) refers to an anchor (&name) that is not defined above it")),
)


def _key_at_line(text: str, line: int) -> str:
    """The mapping key written on ``line`` (1-based), or ``""``: enough to point at the place in the file."""
    lines = text.split("\n")
    if not 1 <= line <= len(lines):
        return ""
    head = lines[line - 1].split(":", 1)[0].strip().lstrip("- ").strip()
    return head if head and ":" in lines[line - 1] else ""


def _yaml_error_issue(exc: MarkedYAMLError, source: str) -> ConfigIssue:
    mark = exc.problem_mark or exc.context_mark
    problem = str(exc.problem or exc.context or "cannot parse the file")
    hint = Text(next((h for needle, h in _YAML_HINTS if needle in problem),
                     N_("YAML errors often start on the line above")))
    # The parser's own words (ruamel's) stay English: they are what a search for the error finds.
    message = Text(N_("YAML syntax error: {problem}"), problem=problem + (f" ({exc.context})"
                                                                         if exc.context and exc.problem else ""))
    line = mark.line + 1 if mark is not None else None
    column = mark.column + 1 if mark is not None else None
    return ConfigIssue(source, line, column, "", message, hint)


def _duplicate_key_issues(node: Node, source: str) -> list[ConfigIssue]:
    issues: list[ConfigIssue] = []
    seen_nodes: set[int] = set()

    def walk(n: Node, path: Loc) -> None:
        if id(n) in seen_nodes:  # aliases share nodes
            return
        seen_nodes.add(id(n))
        if isinstance(n, MappingNode):
            first: dict[str, int] = {}
            for key_node, value_node in n.value:
                if isinstance(key_node, ScalarNode) and key_node.tag != "tag:yaml.org,2002:merge":
                    key = str(key_node.value)
                    line = key_node.start_mark.line + 1
                    if key in first:
                        issues.append(
                            ConfigIssue(source, line, key_node.start_mark.column + 1, _dotted((*path, key)),
                                        Text(N_("duplicate key '{key}' (first on line {line})"), key=key,
                                             line=first[key]),
                                        Text(N_("YAML keeps only one of the two; delete or merge them")))
                        )
                    else:
                        first[key] = line
                    walk(value_node, (*path, key))
        elif isinstance(n, SequenceNode):
            for i, item in enumerate(n.value):
                walk(item, (*path, i))

    walk(node, ())
    return issues


def _is_hex_text_key(path: Loc, patterns: Sequence[tuple[object, ...]]) -> bool:
    for pattern in patterns:
        if len(pattern) == len(path) and all(
            (p is int and isinstance(part, int)) or p == part for p, part in zip(pattern, path, strict=True)
        ):
            return True
    return False


class _TooBig(Exception):
    """The document expands beyond :attr:`_Budget.LIMIT` values (an alias bomb)."""


class _Budget:
    """Counts values while a tree is copied: YAML aliases share nodes, a copy expands them."""

    LIMIT = 100_000

    def __init__(self) -> None:
        self.left = self.LIMIT

    def take(self) -> None:
        self.left -= 1
        if self.left < 0:
            raise _TooBig


def _to_plain(value: object, path: Loc, hex_text_keys: Sequence[tuple[object, ...]] = (),
              budget: _Budget | None = None) -> Any:
    """Convert a ruamel round-trip tree to plain dicts, lists and scalars for pydantic."""
    if budget is not None:
        budget.take()
    if isinstance(value, CommentedMap):
        return {str(k): _to_plain(v, (*path, str(k)), hex_text_keys, budget) for k, v in value.items()}
    if isinstance(value, CommentedSeq):
        return [_to_plain(v, (*path, i), hex_text_keys, budget) for i, v in enumerate(value)]
    if isinstance(value, bool):
        return bool(value)
    if isinstance(value, int):
        if _is_hex_text_key(path, hex_text_keys) and not isinstance(value, HexInt | HexCapsInt | OctalInt | BinaryInt):
            width = getattr(value, "_width", None) or 0
            return format(int(value), f"0{width}d")
        return int(value)
    if isinstance(value, float):
        return float(value)
    if isinstance(value, str):
        return str(value)
    return value


def _position(root: object, loc: Loc) -> tuple[int | None, int | None]:
    """1-based (line, column) of the deepest key or item of ``loc`` present in the ruamel tree.

    A key that is missing (a required key not written) or has no position of its own (a key pulled in by a YAML
    merge ``<<: *anchor``) is placed at its closest ancestor that has one.
    """
    line: int | None = None
    column: int | None = None
    current = root
    for part in loc:
        try:
            if isinstance(current, CommentedMap) and isinstance(part, str) and part in current:
                found = current.lc.key(part)
            elif isinstance(current, CommentedSeq) and isinstance(part, int) and 0 <= part < len(current):
                found = current.lc.item(part)
            else:
                break
        except (KeyError, IndexError, TypeError):
            break
        if not (isinstance(found, (list, tuple)) and len(found) >= 2 and isinstance(found[0], int)):
            break  # a key pulled in by a merge (<<:) has no position of its own
        line, column = found[0] + 1, found[1] + 1
        current = current[part]
    return line, column


def _issue_at(root: object, source: str, loc: Loc, message: str, hint: str | None) -> ConfigIssue:
    line, column = _position(root, loc)
    return ConfigIssue(source, line, column, _dotted(loc), message, hint)


def _issues_from_error(err: Mapping[str, Any], root: object, source: str,
                       model: type[BaseModel]) -> list[ConfigIssue]:
    loc: Loc = tuple(err["loc"])
    ctx = err.get("ctx") or {}
    error = ctx.get("error")
    if err["type"] == "value_error" and isinstance(error, Problems):
        return [_issue_at(root, source, (*loc, *p.subloc), p.message, p.hint) for p in error.problems]
    message, hint = _describe(err, loc, model)
    return [_issue_at(root, source, loc, message, hint)]
