"""One error root: every public exception class of ``agent`` and ``drivers`` derives from DenenError, and the one
drawing of the tree (the docstring of drivers.errors) shows each of them under its real base, with its real
builtin mixins and the module that defines it.

The classes are found by importing every module of both packages, so a new exception class that is not drawn, or
not under the root, fails here. Classes whose names start with ``_`` are private signals that never leave their
module; they are not part of the tree.
"""

from __future__ import annotations

import importlib
import inspect
import pkgutil
import re
from dataclasses import dataclass
from pathlib import Path

import pytest

import drivers.errors
from agent.errors import ConfigError, ConfigIssue
from drivers.errors import CodecError, DenenError, ModuleTimeout

ROOT = Path(__file__).resolve().parents[2]

def _exception_classes() -> tuple[list[type[BaseException]], list[str]]:
    found: list[type[BaseException]] = []
    broken: list[str] = []  # reported by a test, so that one broken module does not hide the others' classes
    for package in ("agent", "drivers"):
        path = importlib.import_module(package).__path__
        for info in pkgutil.walk_packages(path, f"{package}."):
            if info.name.rpartition(".")[2] == "__main__":
                continue  # running it is the CLI, not a definition
            try:
                module = importlib.import_module(info.name)
            except Exception as exc:  # noqa: BLE001 - any failure to import is reported, not raised at collection
                broken.append(f"{info.name}: {type(exc).__name__}: {exc}")
                continue
            for name, obj in vars(module).items():
                if (inspect.isclass(obj) and issubclass(obj, BaseException) and obj.__module__ == info.name
                        and not name.startswith("_")):
                    found.append(obj)
    return found, broken


@dataclass(frozen=True)
class Drawn:
    name: str
    parent: str | None
    mixins: frozenset[str]
    module: str  # file path relative to the repository


# One class per line: tree glyphs, the name, optional "(Mixin, ...)", the defining file. Continuation lines of a
# description have no file and do not match.
_LINE = re.compile(r"^(?P<lead> *[ │├└─]*)(?P<name>[A-Z]\w*)(?: \((?P<mixins>[\w, ]+)\))? +(?P<module>[\w/]+\.py)\b")


def _drawn_tree() -> dict[str, Drawn]:
    doc = drivers.errors.__doc__ or ""
    block = doc.split("::\n", 1)[1]
    drawn: dict[str, Drawn] = {}
    stack: list[tuple[int, str]] = []  # (column of the name, name) of the open ancestors
    for line in block.splitlines():
        match = _LINE.match(line)
        if match is None:
            continue
        column = len(match["lead"])
        while stack and stack[-1][0] >= column:
            stack.pop()
        name = match["name"]
        assert name not in drawn, f"{name} is drawn twice"
        mixins = frozenset(m.strip() for m in match["mixins"].split(",")) if match["mixins"] else frozenset()
        drawn[name] = Drawn(name, stack[-1][1] if stack else None, mixins, match["module"])
        stack.append((column, name))
    return drawn


CLASSES, BROKEN = _exception_classes()
TREE = _drawn_tree()


def _param(cls: type[BaseException]) -> object:
    return pytest.param(cls, id=f"{cls.__module__}.{cls.__name__}")


def test_every_module_imports() -> None:
    assert BROKEN == []


def test_the_walk_finds_the_known_classes() -> None:
    # Guards the walk itself: if it found nothing, every per-class test below would pass vacuously.
    names = {cls.__name__ for cls in CLASSES}
    assert {"DenenError", "DriverError", "AgentError", "ConfigError", "FrameError", "SinkRejected",
            "JournalCorrupt", "PortError"} <= names
    assert len(names) == len(CLASSES), "two public exception classes share a name; the drawing could not tell them apart"


def test_the_drawing_is_parsed() -> None:
    assert TREE["DenenError"].parent is None
    assert TREE["LppError"] == Drawn("LppError", "CodecError", frozenset(), "drivers/errors.py")
    assert TREE["ConfigError"].mixins == {"ValueError"}
    assert TREE["SinkUnavailable"].parent == "SinkError"
    assert TREE["AgentError"].parent == "DenenError"


@pytest.mark.parametrize("cls", [_param(cls) for cls in CLASSES])
def test_every_exception_class_derives_from_the_root(cls: type[BaseException]) -> None:
    assert issubclass(cls, DenenError), f"{cls.__module__}.{cls.__name__} does not derive from DenenError"


@pytest.mark.parametrize("cls", [pytest.param(cls, id=f"{cls.__module__}.{cls.__name__}") for cls in CLASSES])
def test_every_exception_class_is_drawn_with_its_module(cls: type[BaseException]) -> None:
    drawn = TREE.get(cls.__name__)
    assert drawn is not None, f"{cls.__name__} is not drawn in the tree in drivers/errors.py"
    assert drawn.module == Path(inspect.getfile(cls)).resolve().relative_to(ROOT).as_posix()


@pytest.mark.parametrize("cls", [_param(cls) for cls in CLASSES])
def test_every_exception_class_is_drawn_under_its_base(cls: type[BaseException]) -> None:
    drawn = TREE[cls.__name__]
    if cls is DenenError:
        assert cls.__bases__ == (Exception,)
        return
    denen_bases = [base.__name__ for base in cls.__bases__ if issubclass(base, DenenError)]
    assert denen_bases == [drawn.parent], f"{cls.__name__}: drawn under {drawn.parent}, derives from {denen_bases}"
    mixins = {base.__name__ for base in cls.__bases__ if not issubclass(base, DenenError)}
    assert mixins == drawn.mixins, f"{cls.__name__}: drawn with mixins {set(drawn.mixins)}, has {mixins}"


def test_nothing_drawn_is_missing() -> None:
    # A class removed or renamed must leave the drawing too.
    assert set(TREE) <= {cls.__name__ for cls in CLASSES}


def test_builtin_mixins_catch_as_builtins() -> None:
    # The point of the mixins: code that knows nothing of denen catches them as the builtin they are.
    with pytest.raises(ValueError, match="bad key"):
        raise ConfigError([ConfigIssue("c.yaml", 3, 1, "radios[0]", "bad key")])
    with pytest.raises(TimeoutError):
        raise ModuleTimeout("AT+P2P=? got no answer")
    with pytest.raises(DenenError) as caught:
        raise CodecError("lpp_truncated", "LPP record at offset 4: header needs 2 bytes, 1 left")
    assert caught.value.reason == "lpp_truncated"
