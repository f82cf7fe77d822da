"""Small pieces every config model and the loader share: validation context keys, config-relative paths, the
problem helpers for validators of other config files (the bridge's, the console's), and the model walk used to
find a key's field."""

from __future__ import annotations

import os
import types
import typing
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal

from pydantic import BaseModel, ValidationInfo, model_validator

from drivers.settings import N_, Loc, Problem, Problems, Section, Text, problem

# Validation context keys (pydantic ``context=``).
_CTX_BASE_DIR = "base_dir"
_CTX_LOADER = "denen_loader"  # set by the loader, which runs the collection checks itself on the raw data


_HEX = frozenset("0123456789abcdefABCDEF")


def _path_hint() -> str:
    return Text(N_("relative paths are resolved against the directory of the config file"))


def _resolve_path(value: str, info: ValidationInfo) -> str:
    """Resolve a relative path against the config file's directory (from the validation context)."""
    path = Path(value)
    base = (info.context or {}).get(_CTX_BASE_DIR)
    if not path.is_absolute() and base is not None:
        path = Path(base) / path
    return str(path)


def _check_readable_file(path: str, what: str) -> None:
    what = what if isinstance(what, Text) else Text(what)  # a word marked with N_ where it is written
    p = Path(path)
    try:
        p.stat()
    except FileNotFoundError:
        pass
    except OSError as exc:  # a name too long, a loop of links ...
        raise problem(N_("{what} {path} cannot be used: {error}"), _path_hint(), what=what, path=path[:80],
                      error=exc.strerror) from None
    if not p.exists():
        raise problem(N_("{what} {path} does not exist"),
                      N_("relative paths are resolved against the directory of the config file; fix the path or "
                         "create the file"), what=what, path=path)
    if not p.is_file():
        raise problem(N_("{what} {path} is not a regular file"), _path_hint(), what=what, path=path)
    if not os.access(p, os.R_OK):
        raise problem(
            N_("{what} {path} cannot be read by this user"),
            N_("check the file's owner and mode; the agent must be able to read it"), what=what, path=path,
        )


#: Base class for the sections of other config files loaded with :func:`parse_yaml_model` (the bridge's): unknown
#: keys are errors, the model is frozen, and pydantic never echoes input values (secrets) in its errors.
ConfigSection = Section


class TopLevel(Section):
    """Base of the model of a whole config file: a section key in :attr:`EMPTY_MEANS_DEFAULTS` left with nothing
    under it (every line below it commented out) means "all defaults", not an error."""

    EMPTY_MEANS_DEFAULTS: ClassVar[tuple[str, ...]] = ()

    @model_validator(mode="before")
    @classmethod
    def _empty_sections(cls, data: object) -> object:
        if isinstance(data, Mapping):
            return {k: v for k, v in data.items() if not (v is None and k in cls.EMPTY_MEANS_DEFAULTS)}
        return data


def config_problem(message: str, hint: str | None = None, subloc: Loc = ()) -> ValueError:
    """The exception a field or model validator raises for one problem, reported at the validator's key (or at
    ``subloc`` below it) with ``hint``. Never put secret values in ``message``."""
    return problem(message, hint, subloc)


def config_problems(problems: Iterable[tuple[Loc, str, str | None]]) -> ValueError:
    """Like :func:`config_problem` for several problems at once: (subloc, message, hint) each."""
    return Problems(Problem(subloc, message, hint) for subloc, message, hint in problems)


def resolve_config_path(value: str, info: ValidationInfo) -> str:
    """Resolve a relative path against the loaded config file's directory (for field validators)."""
    return _resolve_path(value, info)


def check_readable_file(path: str, what: str) -> None:
    """Raise a config problem unless ``path`` is a regular file this user can read (``what`` names it)."""
    _check_readable_file(path, what)


def _get(item: object, key: str) -> object:
    if isinstance(item, Mapping):
        return item.get(key)
    return getattr(item, key, None)


#: A problem found by a check outside pydantic: (location of the key, message, hint).
Found = tuple[Loc, str, str | None]


def _dotted(loc: Loc) -> str:
    text = ""
    for part in loc:
        if isinstance(part, int):
            text += f"[{part}]"
        else:
            text += f".{part}" if text else str(part)
    return text


def _unwrap(annotation: Any) -> tuple[Any, bool]:
    """Strip Optional/Annotated from a type; return (inner type, is_list)."""
    while True:
        origin = typing.get_origin(annotation)
        if origin is Annotated:
            annotation = typing.get_args(annotation)[0]
        elif origin in (typing.Union, types.UnionType):
            args = [a for a in typing.get_args(annotation) if a is not type(None)]
            if len(args) != 1:
                # A section or a constant (tls: {...} | false): the section is what has keys below it.
                sections = [a for a in args if isinstance(a, type) and issubclass(a, BaseModel)]
                if len(sections) == 1 and all(typing.get_origin(a) is Literal for a in args if a is not sections[0]):
                    return sections[0], False
                return annotation, False
            annotation = args[0]
        elif origin is list:
            return typing.get_args(annotation)[0], True
        elif origin is tuple and typing.get_args(annotation)[1:] == (Ellipsis,):
            return typing.get_args(annotation)[0], True  # tuple[X, ...]: a YAML list, kept immutable
        else:
            return annotation, False
