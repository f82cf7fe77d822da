"""Fixtures the unit tests of more than one module share."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest


@pytest.fixture
def open_journal(tmp_path: Path) -> Iterator[Callable[..., Any]]:
    """Opens tmp_path/j.db (or the path given), quota 1 GiB; every journal opened is closed when the test ends,
    also when it fails half-way (an unclosed SQLite connection is a ResourceWarning)."""
    # Imported here: only the tests that open a journal load it.
    from agent.gateway.journal import Journal

    opened: list[Journal] = []

    def open_(path: Path | None = None) -> Journal:
        opened.append(Journal(path or tmp_path / "j.db", quota_bytes=1 << 30))
        return opened[-1]

    yield open_
    for journal in opened:
        journal.close()  # closing twice is harmless
