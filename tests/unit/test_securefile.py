"""prepare_private_file: owner-only data files, never through a symlink."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from agent.securefile import PrivateFileError, prepare_private_file


def _mode(p: Path) -> int:
    return stat.S_IMODE(os.stat(p).st_mode)


def test_created_owner_only_whatever_the_umask(tmp_path: Path) -> None:
    old = os.umask(0o022)
    try:
        p = prepare_private_file(tmp_path / "sub" / "journal.db", what="journal")
    finally:
        os.umask(old)
    assert p.exists() and _mode(p) == 0o600
    assert _mode(p.parent) == 0o700


def test_existing_world_readable_file_is_narrowed(tmp_path: Path) -> None:
    p = tmp_path / "dead.db"
    p.write_bytes(b"")
    p.chmod(0o644)
    prepare_private_file(p)
    assert _mode(p) == 0o600


@pytest.mark.parametrize("companion", ["", "-wal", "-shm", "-journal"])
def test_symlink_refused_dangling_or_not(tmp_path: Path, companion: str) -> None:
    victim = tmp_path / "elsewhere" / "target.db"  # dangling: the directory does not exist
    link = tmp_path / f"journal.db{companion}"
    link.symlink_to(victim)
    with pytest.raises(PrivateFileError, match="symbolic link"):
        prepare_private_file(tmp_path / "journal.db", what="journal")
    assert not victim.exists()


def test_directory_at_path_refused(tmp_path: Path) -> None:
    (tmp_path / "journal.db").mkdir()
    with pytest.raises(PrivateFileError, match="not a regular file"):
        prepare_private_file(tmp_path / "journal.db")
