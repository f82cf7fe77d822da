"""A config's parsed YAML kept in the gateway's state directory, so that a restart does not parse it again.

Parsing is a large part of a gateway's start-up with a large config: with 2,000 nodes on a 2-core x86 machine the
YAML takes about 0.3 s to parse with libyaml and 2 s with ruamel's Python parser (used where the C parser is missing,
and for the few texts the loader leaves to it), far longer on a Pi Zero. After a config loaded without a problem or a warning,
``denen run`` writes its parsed data (plain JSON values, before validation) to ``<state>/config.parsed.json``
(:func:`agent.gateway.boot.parsed_config_cache`); the
next start that reads the very same text (SHA-256), with the same agent and YAML library,
validates that data instead of parsing the YAML again. Validation, the cross-section checks and the secret-file
checks run every time, so the file can only save parsing, never skip a check: whatever it holds is validated as
if it came from the YAML. Anything unexpected (another text, a damaged or foreign file, a file others could read
or write, a problem found on the way) falls back to parsing the YAML, which reports problems at their lines.

The file holds what the config holds, node keys included: it is written mode 0600 by the agent's user and read only
when it is a regular file of that user with no group or other access.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import stat
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

from agent import __version__
from agent.i18n import _

__all__ = ["read", "write"]

log = logging.getLogger(__name__)

SCHEMA = "denen.parsed-config/1"


def _stamp(text: str) -> dict[str, str]:
    """What must match for the parsed data to stand for ``text``: the text itself and the code that parsed it.
    Not where it was read: the parsed values depend on the text alone (relative paths are resolved when the data
    is validated, against the file's own folder), so the check of a flashed copy before it is installed keeps it
    for the installed copy."""
    try:
        yaml_version = version("ruamel.yaml")
    except PackageNotFoundError:  # pragma: no cover - ruamel is a dependency
        yaml_version = "?"
    return {"schema": SCHEMA, "sha256": hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest(),
            "agent": __version__, "yaml": yaml_version}


def read(path: Path, text: str) -> Any | None:
    """The parsed data of ``text`` kept in ``path``, or None (then parse the YAML)."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0))
    except OSError:
        return None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or st.st_uid != os.geteuid() or st.st_mode & 0o077:
            log.info("%s", _("config: {path} is not a private file of this user; the YAML is parsed").format(path=path))
            return None
        with os.fdopen(fd, "rb") as f:
            fd = -1
            doc = json.loads(f.read())
    except (OSError, ValueError, RecursionError):
        return None
    finally:
        if fd >= 0:
            os.close(fd)
    if not isinstance(doc, dict) or doc.get("stamp") != _stamp(text) or "data" not in doc:
        return None
    return doc["data"]


def write(path: Path, text: str, data: Any) -> None:
    """Keep ``data`` (the parsed, plain values of ``text``) in ``path``: mode 0600, written whole or not at all.
    Best effort: a state directory that cannot be written costs the next start its parse, nothing else."""
    try:
        body = json.dumps({"stamp": _stamp(text), "data": data}, allow_nan=False,
                          separators=(",", ":")).encode()
    except (TypeError, ValueError):
        return  # values JSON cannot hold exactly: parse the YAML next time
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | getattr(os, "O_NOFOLLOW", 0)
                     | getattr(os, "O_CLOEXEC", 0), 0o600)
        try:
            os.fchmod(fd, 0o600)
            view = memoryview(body)
            while view:
                view = view[os.write(fd, view):]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except OSError as exc:
        log.debug("config: parsed data not kept in %s: %s", path, exc)
        try:
            tmp.unlink()
        except OSError:
            pass
