"""Private data files (the gateway's journal, the bridge's dead-letter store): owner-only, never through a symlink.

A journal or dead-letter store holds readings and hostile payloads kept for inspection. Created by a process started
outside systemd (umask 022) it would be world-readable, and a symlink planted at its path (a dangling one included)
would make SQLite create or write the file wherever the link points: SQLite follows links. So before SQLite opens
the path, :func:`check_no_links` refuses a symlink, or anything but a regular file, at the path or at its
``-wal``/``-shm``/``-journal`` companions (checked with ``lstat``), and :func:`prepare_private_file` creates the
file with mode 0600 and ``O_NOFOLLOW`` if it is missing, or takes the read bits of other users (and, unless allowed,
of the group) from an existing one. SQLite creates the companions with the main file's mode.
"""

from __future__ import annotations

import logging
import os
import stat
from pathlib import Path

from agent.errors import AgentError
from agent.i18n import N_, _

__all__ = ["PrivateFileError", "check_no_links", "prepare_private_file"]

log = logging.getLogger(__name__)

_COMPANIONS = ("", "-wal", "-shm", "-journal")


class PrivateFileError(AgentError, OSError):
    """The path cannot be used for a private file; the message says why and what to do."""


def check_no_links(path: str | os.PathLike[str], *, what: str = N_("file"),
                   fix: str = N_("point the config at the real file")) -> None:
    """Refuse a symbolic link, or anything but a regular file, at ``path`` or its SQLite companions.

    Args:
        what: what the file is, for messages ("journal", "dead-letter store"), marked with ``N_``: it is
            translated where the message is made.
        fix: what to do instead of the link, for the message (marked with ``N_`` too).

    Raises:
        PrivateFileError: naming the path and what is wrong.
    """
    for suffix in _COMPANIONS:
        p = f"{os.fspath(path)}{suffix}"
        try:
            st = os.lstat(p)
        except FileNotFoundError:
            continue
        except OSError as exc:
            raise PrivateFileError(_("{path}: cannot check the {what} file: {error}").format(
                path=p, what=_word(what), error=exc.strerror)) from None
        if stat.S_ISLNK(st.st_mode):
            raise PrivateFileError(_("{path} is a symbolic link (to {target}); refusing to open the {what} through "
                                     "it: remove the link, or {fix}").format(
                path=p, target=repr(os.readlink(p)), what=_word(what), fix=_word(fix)))
        if not stat.S_ISREG(st.st_mode):
            raise PrivateFileError(_("{path} is not a regular file; refusing to use it as the {what}").format(
                path=p, what=_word(what)))


def prepare_private_file(path: str | os.PathLike[str], *, what: str = N_("file"), group_readable: bool = False,
                         fix: str = N_("point the config at the real file")) -> Path:
    """Make sure ``path`` is a regular, private file that is not a symbolic link, creating it empty if missing.

    Args:
        path: the file (its directory is created, mode 0700, if missing).
        what: what the file is, for messages.
        group_readable: an existing file keeps its group's read bit (a service group that reads the journal);
            a new file is 0600 either way.
        fix: what to do instead of a link, for the message.

    Returns:
        the path.

    Raises:
        PrivateFileError: a symlink or something other than a regular file is at the path or a companion, or the
            file cannot be created or its mode changed.
    """
    p = Path(path)
    check_no_links(p, what=what, fix=fix)
    try:
        p.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        fd = os.open(p, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    except FileExistsError:
        _narrow(p, 0o007 if group_readable else 0o077)
        return p
    except OSError as exc:
        raise PrivateFileError(_("cannot create the {what} {path}: {error} (check that the service's user may "
                                 "write to its directory)").format(what=_word(what), path=p,
                                                                   error=exc.strerror)) from None
    try:
        os.fchmod(fd, 0o600)  # the umask may have taken bits from 0600 (e.g. 0277): set exactly
    finally:
        os.close(fd)
    return p


def _narrow(path: Path, mask: int) -> None:
    """Take the ``mask`` bits from the file and its companions, with a warning for each file changed."""
    for suffix in _COMPANIONS:
        p = f"{path}{suffix}"
        try:
            mode = stat.S_IMODE(os.lstat(p).st_mode)
            if mode & mask:
                os.chmod(p, mode & ~mask)
                log.warning("%s", _("{path}: other users could read it (mode {mode}); now {now}").format(
                    path=p, mode=f"{mode:04o}", now=f"{mode & ~mask:04o}"))
        except FileNotFoundError:
            continue
        except OSError as exc:
            raise PrivateFileError(_("cannot make {path} private (chmod): {error}").format(
                path=p, error=exc.strerror)) from None


def _word(text: str) -> str:
    """A caller's word for the file (``what``, ``fix``: marked with ``N_`` where written) in the language in use;
    an empty text stays empty (the catalog's entry for "" is its header)."""
    return _(text) if text else text
