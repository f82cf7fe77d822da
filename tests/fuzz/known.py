"""Bugs the fuzzer found that are not fixed yet, each documented by a strict-xfail reproducer in
``tests/fuzz/test_fuzz_regressions.py``.

:func:`known_issue` tells a failure of a known bug from a new one: the dedicated run labels it (and still fails:
a known bug is still a bug), and the quick hypothesis tests let it pass so that the default suite stays green
until the fix lands. When a bug is fixed its reproducer XPASSes, which fails the suite (strict): then delete the
xfail mark and the entry below, and the fuzz tests guard the fix from then on.
"""

from __future__ import annotations

from typing import Any

from tests.fuzz.targets import Outcome, Target, Violation, run_one

__all__ = ["KNOWN", "known_issue", "run_or_known"]

_REGRESSIONS = "tests/fuzz/test_fuzz_regressions.py"

#: Short description of each known bug, by its reproducer. The first thirteen bugs the fuzzer found were fixed in
#: 1096db2; their reproducers stay in test_fuzz_regressions.py as regression tests.
KNOWN: dict[str, str] = {}  # every bug found so far is fixed (the last one, the alias-limit position, in 766b24b)


def _test(name: str) -> str:
    test = f"{_REGRESSIONS}::{name}"
    assert test in KNOWN, test
    return test


def known_issue(target: str, data: Any, exc: BaseException) -> str | None:
    """The regression test documenting the bug behind this failure, or None for a new one.

    Args:
        target: the fuzz target's name.
        data: the input that failed.
        exc: what it raised (a Violation of the target's contract, or the crash).
    """
    return None


def run_or_known(target: Target, data: Any) -> Outcome | None:
    """Run one input through its target's oracle (for the quick hypothesis tests).

    Returns:
        The outcome, or None when the input hit a known bug (its strict-xfail reproducer keeps it visible).

    Raises:
        Violation, or the crash itself, for anything that is not a known bug.
    """
    try:
        return run_one(target, data)
    except Exception as exc:  # noqa: BLE001 - re-raised unless it is a documented, known bug
        if known_issue(target.name, data, exc) is None:
            raise
        return None
