"""The flashed bundle: its layout on the card, its manifest (``denen.flash/1``), how it is checked, and the
durable file writes used to build it. ``denen flash`` (agent/tools/flash.py) writes bundles on the laptop; the
gateway (agent/gateway/boot.py) checks and installs them at start. Both import this module, which imports neither.

Layout of a bundle (``<TARGET>/denen/``)::

    config.yaml          the config; credential paths rewritten to secrets/...
    secrets/<file>       copies of the files the config names
    MANIFEST.json        SHA-256 and size of every file, the bundle digest, the source path, the flashing time
                         (UTC) and the denen version

Only the standard library is imported at the top: ``denen --help`` imports agent/tools/flash.py, which imports this.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from agent import __version__
from agent.errors import AgentError
from agent.i18n import N_, _

__all__ = [
    "BUNDLE_NAME",
    "CONFIG_NAME",
    "MANIFEST_NAME",
    "MANIFEST_SCHEMA",
    "PREV_SUFFIX",
    "SECRETS_DIR",
    "FlashError",
    "FlashedConfig",
    "bundle_digest",
    "config_warnings_quiet",
    "fsync_dir",
    "make_dir",
    "remove_tree",
    "sha256_bytes",
    "sha256_file",
    "verify",
    "write_durable",
]

log = logging.getLogger(__name__)

#: Name of the bundle folder on the target, and of its backup (``denen.prev``).
BUNDLE_NAME = "denen"
PREV_SUFFIX = ".prev"
MANIFEST_NAME = "MANIFEST.json"
MANIFEST_SCHEMA = "denen.flash/1"
CONFIG_NAME = "config.yaml"
SECRETS_DIR = "secrets"

FILE_MODE = 0o600
DIR_MODE = 0o700
# Files some desktops drop on FAT media; they are not part of a bundle and not a sign of tampering.
_IGNORED_NAMES = frozenset({".DS_Store", "Thumbs.db", "desktop.ini", ".Trashes", ".fseventsd", ".Spotlight-V100"})


class FlashError(AgentError):
    """A bundle cannot be written, or a bundle found on a card is missing parts or fails its checksums."""


@dataclass(frozen=True)
class FlashedConfig:
    """A flashed bundle whose manifest and checksums were verified.

    Attributes:
        bundle: the bundle folder (``.../denen``).
        config_path: its ``config.yaml``.
        sha256: SHA-256 of ``config.yaml``, hex.
        digest: SHA-256 over the manifest's file list (every file's path and hash): the bundle's identity.
        manifest: the parsed ``MANIFEST.json``.
    """

    bundle: Path
    config_path: Path
    sha256: str
    digest: str
    manifest: dict[str, Any]

    @property
    def flashed_at(self) -> str | None:
        """When the bundle was flashed (ISO 8601, UTC, the flashing laptop's clock)."""
        value = self.manifest.get("flashed_at")
        return value if isinstance(value, str) else None


# ---------------------------------------------------------------------------------------------------------------
# Hashes and durable writes


def sha256_bytes(data: bytes) -> str:
    """SHA-256 of ``data``, hex."""
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: Path) -> str:
    """SHA-256 of a file's content, hex, read in 64 KiB chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 16), b""):
            h.update(chunk)
    return h.hexdigest()


def fsync_dir(path: Path) -> None:
    """Make a folder's entries (new names, renames) durable.

    Some file systems (FUSE, network shares) refuse fsync on a directory with EINVAL; the data files are already
    fsynced then, and there is nothing more to do, so that is logged and ignored.
    """
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError as exc:
        log.debug("cannot open %s to fsync it: %s", path, exc)
        return
    try:
        os.fsync(fd)
    except OSError as exc:
        log.debug("fsync of folder %s not supported: %s", path, exc)
    finally:
        os.close(fd)


def write_durable(path: Path, data: bytes, mode: int = FILE_MODE) -> bool:
    """Write a file under a temporary name, fsync it and rename it into place (the folder is fsynced later).

    Returns:
        Whether the file system kept ``mode`` (FAT does not).
    """
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | getattr(os, "O_CLOEXEC", 0), mode)
    try:
        view = memoryview(data)
        while view:
            written = os.write(fd, view)
            view = view[written:]
        os.fsync(fd)
    finally:
        os.close(fd)
    kept = True
    try:
        os.chmod(tmp, mode)  # the umask may have narrowed or widened it; FAT may refuse (EPERM) or ignore it
        kept = (os.stat(tmp).st_mode & 0o777) == mode
    except OSError:
        kept = False
    os.replace(tmp, path)
    return kept


def make_dir(path: Path) -> None:
    """Create a folder with mode 0700 (where the file system keeps modes)."""
    path.mkdir(mode=DIR_MODE)
    try:
        os.chmod(path, DIR_MODE)
    except OSError:
        pass  # FAT: modes are fixed by the mount options


def remove_tree(path: Path) -> None:
    """Remove a file, a symlink or a folder with its content; nothing when it does not exist."""
    if path.is_symlink() or path.is_file():
        path.unlink()
    elif path.exists():
        shutil.rmtree(path)


def _safe_relpath(name: object) -> PurePosixPath | None:
    """A manifest entry as a relative path that stays inside the bundle, or None if it does not."""
    if not isinstance(name, str) or not name or "\\" in name or "\0" in name:
        return None
    p = PurePosixPath(name)
    if p.is_absolute() or any(part in ("", ".", "..") for part in p.parts):
        return None
    return p


def bundle_digest(files: dict[str, dict[str, Any]]) -> str:
    """The bundle's identity: SHA-256 over the manifest's file list (each file's path, hash and size)."""
    listing = "".join(f"{name}\t{files[name]['sha256']}\t{files[name]['bytes']}\n" for name in sorted(files))
    return sha256_bytes(listing.encode())


@contextmanager
def config_warnings_quiet() -> Iterator[None]:
    """Silence the loader's warnings while re-checking a copy it already checked (they were reported once).

    On a FAT card every secret file looks world-readable, so the re-check would repeat a warning per file.
    """
    logger = logging.getLogger("agent.config")
    old = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(old)

# ---------------------------------------------------------------------------------------------------------------
# Checking a bundle


_AGAIN = N_("flash it again with `denen flash CONFIG TARGET`")


def verify(bundle: str | os.PathLike[str]) -> FlashedConfig:
    """Check a bundle's manifest and the SHA-256 and size of every file it lists.

    Args:
        bundle: the bundle folder (``.../denen``).

    Returns:
        The verified bundle.

    Raises:
        FlashError: one line saying what is missing or corrupt, with a hint.
    """
    root = Path(bundle)
    if not root.is_dir():
        raise FlashError(_("no flashed bundle at {root}").format(root=root))
    manifest = _read_manifest(root)
    files = manifest.get("files")
    if not isinstance(files, dict) or CONFIG_NAME not in files:
        raise FlashError(_("bundle {root}: {manifest} lists no {config} (hint: {again})").format(
            root=root, manifest=MANIFEST_NAME, config=CONFIG_NAME, again=_(_AGAIN)))
    for name, entry in files.items():
        _check_file(root, name, entry)
    digest = bundle_digest(files)
    if manifest.get("digest") != digest:
        raise FlashError(_("bundle {root}: the manifest's digest does not match its file list (hint: {again})").format(
            root=root, again=_(_AGAIN)))
    for extra in _unlisted(root, files):
        log.info("%s", _("bundle {root}: {name} is not in the manifest; ignored").format(root=root, name=extra))
    return FlashedConfig(root, root / CONFIG_NAME, files[CONFIG_NAME]["sha256"], digest, manifest)


def _read_manifest(root: Path) -> dict[str, Any]:
    """The bundle's parsed manifest, checked to be a denen flash manifest of the schema this agent reads."""
    manifest_path = root / MANIFEST_NAME
    try:
        manifest = json.loads(manifest_path.read_bytes().decode("utf-8"))
    except FileNotFoundError:
        raise FlashError(_("bundle {root} has no {manifest}: the flash did not finish (hint: {again})").format(
            root=root, manifest=MANIFEST_NAME, again=_(_AGAIN))) from None
    except OSError as exc:
        raise FlashError(_("bundle {root}: cannot read {name}: {error} (hint: {again})").format(
            root=root, name=MANIFEST_NAME, error=exc.strerror, again=_(_AGAIN))) from None
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise FlashError(_("bundle {root}: {manifest} is damaged (not JSON) (hint: {again})").format(
            root=root, manifest=MANIFEST_NAME, again=_(_AGAIN))) from None
    if not isinstance(manifest, dict):
        raise FlashError(_("bundle {root}: {manifest} is damaged (not a JSON object) (hint: {again})").format(
            root=root, manifest=MANIFEST_NAME, again=_(_AGAIN)))
    schema = manifest.get("schema")
    if not isinstance(schema, str) or schema.split("/")[0] != MANIFEST_SCHEMA.split("/")[0]:
        raise FlashError(_("bundle {root}: {manifest} is not a denen flash manifest (schema {schema})").format(
            root=root, manifest=MANIFEST_NAME, schema=repr(schema)))
    if schema != MANIFEST_SCHEMA:
        raise FlashError(
            _("bundle {root} was written as {schema}, this agent reads {reads} (hint: flash it with the denen "
              "version installed on the gateway, {version})").format(root=root, schema=schema, reads=MANIFEST_SCHEMA,
                                                                     version=__version__)
        )
    return manifest


def _check_file(root: Path, name: object, entry: object) -> None:
    """Check one manifest entry: a path inside the bundle, a regular file, the size and SHA-256 listed."""
    rel = _safe_relpath(name)
    if rel is None or not isinstance(entry, dict):
        raise FlashError(_("bundle {root}: {manifest} has an invalid entry {name} (hint: {again})").format(
            root=root, manifest=MANIFEST_NAME, name=repr(name), again=_(_AGAIN)))
    path = root.joinpath(*rel.parts)
    try:
        if path.is_symlink() or not path.is_file():
            raise FlashError(_("bundle {root}: {name} is missing (hint: {again})").format(
                root=root, name=name, again=_(_AGAIN)))
        size = path.stat().st_size
        digest = sha256_file(path)
    except OSError as exc:
        raise FlashError(_("bundle {root}: cannot read {name}: {error} (hint: {again})").format(
            root=root, name=name, error=exc.strerror, again=_(_AGAIN))) from None
    if size != entry.get("bytes") or digest != entry.get("sha256"):
        raise FlashError(
            _("bundle {root}: {name} is corrupt (its SHA-256 does not match the manifest; the card may be failing) "
              "(hint: {again}, or use another card)").format(root=root, name=name, again=_(_AGAIN))
        )


def _unlisted(root: Path, files: dict[str, Any]) -> list[str]:
    listed = set(files) | {MANIFEST_NAME}
    extras = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if d not in _IGNORED_NAMES]
        for f in filenames:
            if f in _IGNORED_NAMES or f.startswith("._"):  # macOS AppleDouble files on FAT
                continue
            rel = Path(dirpath, f).relative_to(root).as_posix()
            if rel not in listed:
                extras.append(rel)
    return sorted(extras)
