"""Private data files (the gateway's journal, the bridge's dead-letter store): owner-only, never through a symlink.

A journal or dead-letter store holds readings, node keys' effects and hostile payloads kept for inspection. Created
by a process started outside systemd (umask 022) it would be world-readable, and a symlink planted at its path
(a dangling one included) would make SQLite create or write the file wherever the link points. So before SQLite
opens the path, :func:`prepare_private_file` refuses a symlink at the path or at its ``-wal``/``-shm``/``-journal``
companions, creates the file owner-only with ``O_NOFOLLOW`` if it is missing, and narrows an existing file to
0600. SQLite creates the companions with the main file's mode.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

__all__ = ["PrivateFileError", "prepare_private_file"]

_COMPANIONS = ("-wal", "-shm", "-journal")


class PrivateFileError(OSError):
    """The path cannot be used for a private file; the message says why and what to do."""


def prepare_private_file(path: str | os.PathLike[str], *, what: str = "file") -> Path:
    """Make sure ``path`` is a regular file of mode 0600 that is not a symlink, creating it empty if missing.

    Args:
        path: the file (its directory is created, mode 0700, if missing).
        what: what the file is, for messages ("journal", "dead-letter store").

    Returns:
        the path.

    Raises:
        PrivateFileError: a symlink or something other than a regular file is at the path or a companion, or the
            file cannot be created or its mode changed.
    """
    p = Path(path)
    for candidate in (p, *(Path(f"{p}{suffix}") for suffix in _COMPANIONS)):
        try:
            st = os.lstat(candidate)
        except FileNotFoundError:
            continue
        except OSError as exc:
            raise PrivateFileError(f"cannot check the {what} {candidate}: {exc.strerror}") from None
        if stat.S_ISLNK(st.st_mode):
            raise PrivateFileError(
                f"the {what} path {candidate} is a symbolic link (to {os.readlink(candidate)!r}); refusing to follow "
                f"it: remove the link, or point the config at the real file")
        if not stat.S_ISREG(st.st_mode):
            raise PrivateFileError(f"the {what} path {candidate} exists but is not a regular file")
    try:
        p.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        fd = os.open(p, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    except OSError as exc:
        raise PrivateFileError(f"cannot create the {what} {p}: {exc.strerror} (check that the service's user may "
                               "write to its directory)") from None
    try:
        if stat.S_IMODE(os.fstat(fd).st_mode) & 0o077:
            os.fchmod(fd, 0o600)
    except OSError as exc:
        raise PrivateFileError(f"cannot make the {what} {p} owner-only (chmod 600): {exc.strerror}") from None
    finally:
        os.close(fd)
    return p
