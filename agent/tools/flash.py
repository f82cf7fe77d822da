"""``denen flash``: put a validated config and its credentials onto an SD card or USB stick, and pick it up on boot.

On the installer's laptop::

    denen flash config/river-station.yaml /media/$USER/bootfs

writes this bundle onto the mounted boot partition (or any mounted folder)::

    <TARGET>/denen/config.yaml          the config; credential paths rewritten to secrets/...
    <TARGET>/denen/secrets/<file>       copies of the files the config names (node key_file, mqtt.password_file,
                                        mqtt.tls ca/cert/key), mode 0600 where the file system keeps modes
                                        (secrets given by key_env / password_env are not copied: they are set in
                                        the gateway's environment, e.g. /etc/denen/secrets.env)
    <TARGET>/denen/MANIFEST.json        SHA-256 and size of every file, the bundle digest, the source path,
                                        the flashing time (UTC) and the denen version ("denen.flash/1")
    <TARGET>/denen.prev/                the bundle flashed before this one (one backup is kept)

Atomicity: the new bundle is built in ``<TARGET>/.denen-new/`` (each file written to a temporary name, fsynced and
renamed; the manifest last), checked, and only then swapped in: ``denen`` -> ``denen.prev``, ``.denen-new`` ->
``denen``, with the target folder fsynced after each rename. A crash or a pulled card before the swap leaves the
previous bundle untouched; a crash between the two renames leaves no ``denen/`` but an intact ``denen.prev/``,
which the boot-time search then uses. FAT (the boot partition) has no atomic exchange of two folders, hence two
renames.

On the gateway, at every start, :func:`resolve_active_config` decides which config the agent runs:

1. ``denen run -c FILE`` (an explicit file) always wins; nothing is searched. A developer with a flashed card in
   the laptop's reader still runs the file they named.
2. Otherwise the search paths (default :data:`DEFAULT_SEARCH`, or ``$DENEN_FLASH_SEARCH``, colon-separated globs)
   are scanned in order for a ``denen/`` bundle whose manifest checks out. A new one is validated with this
   agent's config loader and *installed*: copied with mode 0600 into ``<state>/flashed/`` (state:
   ``$STATE_DIRECTORY`` set by systemd's ``StateDirectory=denen``, else ``/var/lib/denen``), keeping the
   previously installed copy as ``flashed.prev/``. The agent runs the installed copy, so it never reads
   credentials from a FAT partition where every user can read every file, and keeps running its config when the
   USB stick is pulled out.
3. A bundle that fails its checksums (corrupt card, half-written flash) or that this agent cannot load is refused
   with a clear note; the installed copy from an earlier boot stays active.

Who may read the secrets: the config on the laptop is loaded with the usual rule (an inline secret in a file
other users can read, or a secret file they can read, is refused). Copies on the card are checked without it
(``load_config(..., check_modes=False)``): FAT has no modes and shows every file as readable by all, which is why
the gateway installs a mode-0600 copy; that copy is checked with the rule before it becomes active.
4. With no usable bundle: the installed copy; then a ``denen.prev/`` bundle; then ``/etc/denen/config.yaml``.

:class:`ActiveConfig` tells which config is active: path, SHA-256 of the file, and where it came from.

``denen flash`` exit codes: 0 flashed; 1 the target cannot be written (not mounted, read-only, full) or a
credential file cannot be read; 2 the config is invalid (every problem is printed, nothing is written).
"""

from __future__ import annotations

import argparse
import datetime
import glob
import hashlib
import json
import logging
import os
import shutil
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from io import StringIO
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any

from agent import __version__
from agent.errors import AgentError, ConfigError
from agent.i18n import N_, _

if TYPE_CHECKING:
    # `denen --help` imports this module to build its parser: the config models (pydantic) and the YAML
    # round-tripper are imported inside the functions that need them.
    from ruamel.yaml import YAML

    from agent.config import Config

__all__ = [
    "BUNDLE_NAME",
    "DEFAULT_CONFIG",
    "DEFAULT_SEARCH",
    "DEFAULT_STATE_DIR",
    "MANIFEST_NAME",
    "MANIFEST_SCHEMA",
    "ActiveConfig",
    "FlashError",
    "FlashResult",
    "FlashedConfig",
    "add_arguments",
    "default_search_paths",
    "find_flashed",
    "flash",
    "main",
    "resolve_active_config",
    "verify",
]

log = logging.getLogger(__name__)

#: Name of the bundle folder on the target, and of its backup (``denen.prev``).
BUNDLE_NAME = "denen"
PREV_SUFFIX = ".prev"
_STAGING_NAME = ".denen-new"
MANIFEST_NAME = "MANIFEST.json"
MANIFEST_SCHEMA = "denen.flash/1"
CONFIG_NAME = "config.yaml"
SECRETS_DIR = "secrets"

#: Where the agent looks for a flashed bundle, in order: the Raspberry Pi OS boot partition (Bookworm mounts it at
#: /boot/firmware, older releases at /boot) and USB sticks automounted under /media (by udisks, at
#: /media/<user>/<label>, or by usbmount-style tools at /media/<label>).
DEFAULT_SEARCH: tuple[str, ...] = ("/boot/firmware/denen", "/boot/denen", "/media/*/denen", "/media/*/*/denen")
#: Environment variable overriding :data:`DEFAULT_SEARCH`: bundle folder paths or globs separated by ':'.
SEARCH_ENV = "DENEN_FLASH_SEARCH"
DEFAULT_STATE_DIR = "/var/lib/denen"
#: Folder below the state directory holding the installed copy of the flashed bundle.
INSTALLED_NAME = "flashed"
#: The config used when no bundle was ever flashed (written by hand, or by deploy/edge/install.sh users).
DEFAULT_CONFIG = "/etc/denen/config.yaml"

_FILE_MODE = 0o600
_DIR_MODE = 0o700
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


@dataclass(frozen=True)
class ActiveConfig:
    """Which config the agent runs, and why.

    Attributes:
        path: the config file to load.
        sha256: SHA-256 of that file, hex.
        source: ``explicit`` (``-c FILE``), ``flashed`` (a bundle found now, installed), ``installed`` (the copy
            installed at an earlier boot), ``flashed-previous`` (a ``denen.prev`` bundle) or ``default``
            (``/etc/denen/config.yaml``).
        bundle: the flashed bundle folder it came from, if any.
        flashed_at: when that bundle was flashed, if known.
        problems: bundles refused on the way (corrupt, unloadable), one line each; the caller logs them as errors.
        notes: what else happened (a new bundle installed), one line each; the caller logs them as info.
        on_card: ``path`` is in a bundle on the card or stick itself (only when resolving without installing):
            load it with ``load_config(path, check_modes=False)``, since a FAT file system shows every file as
            readable by all; the agent never runs such a copy, it installs a mode-0600 one first.
    """

    path: str
    sha256: str
    source: str
    bundle: str | None = None
    flashed_at: str | None = None
    problems: tuple[str, ...] = field(default=())
    notes: tuple[str, ...] = field(default=())
    on_card: bool = False

    def describe(self) -> str:
        """One line for the log: ``config /var/lib/denen/flashed/config.yaml sha256 1a2b3c4d5e6f (flashed ...)``."""
        text = f"config {self.path} sha256 {self.sha256[:12]} ({self.source}"
        if self.bundle:
            text += f" from {self.bundle}"
        if self.flashed_at:
            text += f", flashed {self.flashed_at}"
        return text + ")"


@dataclass(frozen=True)
class FlashResult:
    """What :func:`flash` wrote.

    Attributes:
        bundle: the new bundle folder on the target.
        backup: the previous bundle, now ``denen.prev``, or None on a first flash.
        manifest: the manifest written.
        secrets: bundle paths of the credential files copied, e.g. ``secrets/mqtt-password``.
        warnings: config warnings (valid but suspicious settings), one line each.
        modes_kept: False when the target's file system ignored ``chmod 600`` (FAT): then anyone who reads the
            card reads the credentials, so the card must be kept like a key.
    """

    bundle: Path
    backup: Path | None
    manifest: dict[str, Any]
    secrets: tuple[str, ...]
    warnings: tuple[str, ...]
    modes_kept: bool


# ---------------------------------------------------------------------------------------------------------------
# Small durable-write helpers


def _sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 16), b""):
            h.update(chunk)
    return h.hexdigest()


def _fsync_dir(path: Path) -> None:
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


def _write_durable(path: Path, data: bytes, mode: int = _FILE_MODE) -> bool:
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


def _mkdir(path: Path) -> None:
    path.mkdir(mode=_DIR_MODE)
    try:
        os.chmod(path, _DIR_MODE)
    except OSError:
        pass  # FAT: modes are fixed by the mount options


def _remove_tree(path: Path) -> None:
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


def _bundle_digest(files: dict[str, dict[str, Any]]) -> str:
    listing = "".join(f"{name}\t{files[name]['sha256']}\t{files[name]['bytes']}\n" for name in sorted(files))
    return _sha256_bytes(listing.encode())


@contextmanager
def _config_warnings_quiet() -> Iterator[None]:
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
# Writing a bundle


@dataclass(frozen=True)
class _Secret:
    loc: tuple[str | int, ...]  # where the path is in the YAML document
    source: Path  # resolved file on the laptop
    name: str  # path inside the bundle, e.g. secrets/mqtt-password


def _secrets_of(config: Config) -> list[_Secret]:
    """Every credential file the config names, with a bundle name that says what it is."""
    found: list[tuple[tuple[str | int, ...], str, str]] = []
    mqtt = config.mqtt
    if mqtt.password_file is not None:
        found.append((("mqtt", "password_file"), mqtt.password_file, "mqtt-password"))
    if mqtt.tls:
        tls_files = (("ca_file", "mqtt-ca.pem"), ("cert_file", "mqtt-client.crt"), ("key_file", "mqtt-client.key"))
        for key, name in tls_files:
            value = getattr(mqtt.tls, key)
            if value is not None:
                found.append((("mqtt", "tls", key), value, name))
    for i, node in enumerate(config.nodes):
        if node.key_file is not None:
            found.append((("nodes", i, "key_file"), node.key_file, f"node-{node.name}.key"))
    secrets: list[_Secret] = []
    by_source: dict[str, str] = {}
    for loc, path, name in found:
        real = os.path.realpath(path)
        # Nodes sharing one key file share one copy.
        bundle_name = by_source.setdefault(real, f"{SECRETS_DIR}/{name}")
        secrets.append(_Secret(loc, Path(path), bundle_name))
    return secrets


def _yaml() -> YAML:
    from ruamel.yaml import YAML  # noqa: PLC0415 - see the imports at the top

    y = YAML(typ="rt")
    y.preserve_quotes = True  # "00000101" must stay a quoted string
    y.width = 4096  # never re-wrap long lines or comments
    y.indent(mapping=2, sequence=4, offset=2)  # the layout of the example configs: "  - name: ..."
    return y


def _rewrite_config(text: str, secrets: Sequence[_Secret]) -> str:
    """The config text with every credential path replaced by its bundle path; comments are kept."""
    if not secrets:
        return text  # byte for byte the source, so its SHA-256 matches the file on the laptop
    y = _yaml()
    data = y.load(text)
    for s in secrets:
        node: Any = data
        for part in s.loc[:-1]:
            node = node[part]
        node[s.loc[-1]] = s.name
    out = StringIO()
    y.dump(data, out)
    return out.getvalue()


def _raw_journal_path(text: str) -> object:
    data = _yaml().load(text)
    journal = data.get("journal") if hasattr(data, "get") else None
    return journal.get("path") if hasattr(journal, "get") else None


def _check_target(target: Path) -> None:
    if not target.exists():
        raise FlashError(
            _("target {target} does not exist (hint: insert the SD card or USB stick and give the folder it is "
              "mounted at, e.g. /media/$USER/bootfs; `lsblk -o NAME,MOUNTPOINT` lists them)").format(target=target)
        )
    if not target.is_dir():
        raise FlashError(_("target {target} is not a folder (hint: give the mount point of the SD card or USB "
                           "stick)").format(target=target))
    if target.name == BUNDLE_NAME and (target / MANIFEST_NAME).exists():
        raise FlashError(
            _("target {target} is itself a flashed bundle (hint: give the folder that contains it, "
              "{parent})").format(target=target, parent=target.parent)
        )
    if not os.access(target, os.W_OK | os.X_OK):
        raise FlashError(
            _("cannot write to {target} (hint: the card may be mounted read-only, or owned by another user; "
              "check `mount | grep {target}`)").format(target=target)
        )


def flash(config_path: str | os.PathLike[str], target: str | os.PathLike[str], *,
          now: datetime.datetime | None = None) -> FlashResult:
    """Validate a config and write it with its credentials onto a mounted card or stick, atomically.

    Args:
        config_path: the YAML config on this machine.
        target: the mount point (or any folder) to write ``denen/`` into.
        now: the flashing time to record (default: now, UTC).

    Returns:
        What was written.

    Raises:
        ConfigError: the config is invalid; nothing is written.
        FlashError: the target is missing or not writable, a credential file cannot be read, the config uses a
            relative journal path, or the write failed (the previous bundle is left as it was).
    """
    from agent.config import load_config  # noqa: PLC0415 - see the imports at the top

    source = Path(config_path)
    config = load_config(source)  # ConfigError: refused before anything is written
    target = Path(target)
    _check_target(target)
    try:
        source_bytes = source.read_bytes()
    except OSError as exc:
        raise FlashError(_("cannot read {path}: {error}").format(path=source, error=exc.strerror)) from None
    text = source_bytes.decode("utf-8-sig")
    raw_journal = _raw_journal_path(text)
    if isinstance(raw_journal, str) and not os.path.isabs(raw_journal):
        raise FlashError(
            _("{path}: journal.path '{journal}' is relative; on the gateway it would point into the config "
              "folder, which is replaced at every flash (hint: use an absolute path such as "
              "/var/lib/denen/journal.db)").format(path=source, journal=raw_journal)
        )

    secrets = _secrets_of(config)
    contents: dict[str, bytes] = {}
    for s in secrets:
        if s.name in contents:
            continue
        try:
            contents[s.name] = s.source.read_bytes()
        except OSError as exc:
            raise FlashError(
                _("cannot read credential file {path} ({key}): {error} (hint: run denen flash as a user who can "
                  "read it)").format(path=s.source, key=".".join(str(p) for p in s.loc), error=exc.strerror)
            ) from None
    contents[CONFIG_NAME] = _rewrite_config(text, secrets).encode("utf-8")

    needed = sum(len(b) for b in contents.values()) + 64 * 1024
    free = shutil.disk_usage(target).free
    if free < needed:
        raise FlashError(_("{target} has {free} bytes free, the bundle needs {needed} (hint: free some "
                           "space)").format(target=target, free=free, needed=needed))

    stamp = (now or datetime.datetime.now(datetime.timezone.utc)).astimezone(datetime.timezone.utc)
    files = {name: {"sha256": _sha256_bytes(data), "bytes": len(data)} for name, data in sorted(contents.items())}
    manifest: dict[str, Any] = {
        "schema": MANIFEST_SCHEMA,
        "gateway": config.gateway.id,
        "site": config.gateway.site,
        "source": str(source.absolute()),
        "source_sha256": _sha256_bytes(source_bytes),
        "flashed_at": stamp.isoformat(timespec="seconds").replace("+00:00", "Z"),
        "denen_version": __version__,
        "files": files,
        "digest": _bundle_digest(files),
    }

    staging = target / _STAGING_NAME
    bundle = target / BUNDLE_NAME
    prev = target / (BUNDLE_NAME + PREV_SUFFIX)
    modes_kept = True
    try:
        _remove_tree(staging)  # the leftover of an interrupted flash
        _mkdir(staging)
        if any(name.startswith(SECRETS_DIR + "/") for name in contents):
            _mkdir(staging / SECRETS_DIR)
        for name, data in contents.items():
            modes_kept &= _write_durable(staging / name, data)
        if (staging / SECRETS_DIR).exists():
            _fsync_dir(staging / SECRETS_DIR)
        # The manifest last: a bundle with a manifest is a complete bundle.
        modes_kept &= _write_durable(staging / MANIFEST_NAME,
                                     (json.dumps(manifest, indent=2, ensure_ascii=False) + "\n").encode())
        _fsync_dir(staging)
        _fsync_dir(target)
    except OSError as exc:
        raise FlashError(_("writing to {target} failed: {error} (the previous bundle is unchanged)").format(
            target=target, error=exc.strerror or exc)) from None

    try:
        verify(staging)  # read back: a card that does not keep what it was given is caught here
        with _config_warnings_quiet():
            # The rewritten copy must load exactly like the original. Not its modes: on FAT every file looks
            # readable by all (the laptop's files were checked above, the gateway checks its own copy).
            load_config(staging / CONFIG_NAME, check_modes=False)
    except (FlashError, ConfigError) as exc:
        _remove_tree(staging)
        raise FlashError(_("the written bundle does not check out, nothing was replaced: {error}").format(
            error=exc)) from None

    backup: Path | None = None
    try:
        if bundle.exists() or bundle.is_symlink():
            if not bundle.is_dir():
                raise FlashError(_("{path} exists and is not a folder (hint: move it away and flash again)").format(
                    path=bundle))
            _remove_tree(prev)
            os.rename(bundle, prev)
            _fsync_dir(target)
            backup = prev
        os.rename(staging, bundle)
        _fsync_dir(target)
    except OSError as exc:
        raise FlashError(_("switching to the new bundle on {target} failed: {error}").format(
            target=target, error=exc.strerror or exc)) from None
    log.info("flashed %s to %s (digest %s)", source, bundle, manifest["digest"][:12])
    warnings = tuple(str(w) for w in getattr(config, "warnings", ()))
    return FlashResult(bundle, backup, manifest, tuple(sorted({s.name for s in secrets})), warnings, modes_kept)


# ---------------------------------------------------------------------------------------------------------------
# Checking a bundle


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
    again = "flash it again with `denen flash CONFIG TARGET`"
    if not root.is_dir():
        raise FlashError(f"no flashed bundle at {root}")
    manifest_path = root / MANIFEST_NAME
    try:
        manifest = json.loads(manifest_path.read_bytes().decode("utf-8"))
    except FileNotFoundError:
        raise FlashError(f"bundle {root} has no {MANIFEST_NAME}: the flash did not finish (hint: {again})") from None
    except OSError as exc:
        raise FlashError(f"bundle {root}: cannot read {MANIFEST_NAME}: {exc.strerror} (hint: {again})") from None
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise FlashError(f"bundle {root}: {MANIFEST_NAME} is damaged (not JSON) (hint: {again})") from None
    if not isinstance(manifest, dict):
        raise FlashError(f"bundle {root}: {MANIFEST_NAME} is damaged (not a JSON object) (hint: {again})")
    schema = manifest.get("schema")
    if not isinstance(schema, str) or schema.split("/")[0] != MANIFEST_SCHEMA.split("/")[0]:
        raise FlashError(f"bundle {root}: {MANIFEST_NAME} is not a denen flash manifest (schema {schema!r})")
    if schema != MANIFEST_SCHEMA:
        raise FlashError(
            f"bundle {root} was written as {schema}, this agent reads {MANIFEST_SCHEMA} (hint: flash it with the "
            f"denen version installed on the gateway, {__version__})"
        )
    files = manifest.get("files")
    if not isinstance(files, dict) or CONFIG_NAME not in files:
        raise FlashError(f"bundle {root}: {MANIFEST_NAME} lists no {CONFIG_NAME} (hint: {again})")
    for name, entry in files.items():
        rel = _safe_relpath(name)
        if rel is None or not isinstance(entry, dict):
            raise FlashError(f"bundle {root}: {MANIFEST_NAME} has an invalid entry {name!r} (hint: {again})")
        path = root.joinpath(*rel.parts)
        try:
            if path.is_symlink() or not path.is_file():
                raise FlashError(f"bundle {root}: {name} is missing (hint: {again})")
            size = path.stat().st_size
            digest = _sha256_file(path)
        except OSError as exc:
            raise FlashError(f"bundle {root}: cannot read {name}: {exc.strerror} (hint: {again})") from None
        if size != entry.get("bytes") or digest != entry.get("sha256"):
            raise FlashError(
                f"bundle {root}: {name} is corrupt (its SHA-256 does not match the manifest; the card may be "
                f"failing) (hint: {again}, or use another card)"
            )
    digest = _bundle_digest(files)
    if manifest.get("digest") != digest:
        raise FlashError(f"bundle {root}: the manifest's digest does not match its file list (hint: {again})")
    for extra in _unlisted(root, files):
        log.info("bundle %s: %s is not in the manifest; ignored", root, extra)
    return FlashedConfig(root, root / CONFIG_NAME, files[CONFIG_NAME]["sha256"], digest, manifest)


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


# ---------------------------------------------------------------------------------------------------------------
# Finding the active config on boot


def default_search_paths() -> tuple[str, ...]:
    """The bundle folders searched on boot: ``$DENEN_FLASH_SEARCH`` (':'-separated globs) or :data:`DEFAULT_SEARCH`."""
    env = os.environ.get(SEARCH_ENV)
    if env:
        return tuple(p for p in env.split(":") if p)
    return DEFAULT_SEARCH


def _candidates(search: Sequence[str]) -> list[Path]:
    """Bundle folder paths named by the search patterns, in order, without duplicates; globs sorted."""
    seen: set[str] = set()
    out: list[Path] = []
    for pattern in search:
        matches = sorted(glob.glob(pattern)) if glob.has_magic(pattern) else [pattern]
        for m in matches:
            key = os.path.abspath(m)
            if key not in seen:
                seen.add(key)
                out.append(Path(m))
    return out


def _scan(search: Sequence[str]) -> tuple[FlashedConfig | None, list[str]]:
    """The first verified bundle in the search paths, and one line per bundle refused on the way."""
    problems: list[str] = []
    for path in _candidates(search):
        if not path.exists():
            continue
        try:
            return verify(path), problems
        except FlashError as exc:
            problems.append(f"refused flashed config: {exc}")
    return None, problems


def find_flashed(search_paths: Sequence[str] | None = None) -> FlashedConfig | None:
    """The first flashed bundle in ``search_paths`` whose checksums are right, or None.

    A corrupt bundle is logged (error) and skipped.

    Args:
        search_paths: bundle folder paths or globs (``/media/*/denen``); default :func:`default_search_paths`.
    """
    found, problems = _scan(default_search_paths() if search_paths is None else search_paths)
    for problem in problems:
        log.error("%s", problem)
    return found


def _previous_bundles(search: Sequence[str]) -> list[Path]:
    # Globbed on their own: after an interrupted swap the "denen" folder a pattern would match is gone.
    return _candidates([p + PREV_SUFFIX for p in search])


def _state_dir(state_dir: str | os.PathLike[str] | None) -> Path:
    if state_dir is not None:
        return Path(state_dir)
    # systemd's StateDirectory=denen sets $STATE_DIRECTORY (several are ':'-separated; the first is ours).
    env = os.environ.get("STATE_DIRECTORY")
    return Path(env.split(":")[0]) if env else Path(DEFAULT_STATE_DIR)


def _loads(flashed: FlashedConfig, where: Path, *, on_card: bool) -> str | None:
    """None if the bundle's config loads with this agent, else the reason (one line per problem).

    ``on_card``: ``where`` is the bundle on the card or stick, whose file system may have no modes (FAT), so who
    may read the secrets is not checked there; it is for the installed copy (``on_card=False``).
    """
    from agent.config import load_config  # noqa: PLC0415 - see the imports at the top

    try:
        with _config_warnings_quiet():
            load_config(where / CONFIG_NAME, check_modes=not on_card)
    except ConfigError as exc:
        return f"bundle {flashed.bundle} does not load with denen {__version__}: {exc}"
    return None


def _install(flashed: FlashedConfig, state: Path) -> FlashedConfig:
    """Copy a verified bundle into ``<state>/flashed`` (mode 0600), keeping the old copy as ``flashed.prev``.

    Raises:
        FlashError: the copy failed, or the bundle does not load with this agent (the installed copy is kept).
    """
    installed = state / INSTALLED_NAME
    staging = state / f".{INSTALLED_NAME}-new"
    prev = state / (INSTALLED_NAME + PREV_SUFFIX)
    try:
        state.mkdir(parents=True, exist_ok=True)
        _remove_tree(staging)
        _mkdir(staging)
        for name in sorted(flashed.manifest["files"]):
            rel = PurePosixPath(name)
            dest = staging.joinpath(*rel.parts)
            if not dest.parent.exists():
                dest.parent.mkdir(mode=_DIR_MODE, parents=True)
            _write_durable(dest, flashed.bundle.joinpath(*rel.parts).read_bytes())
            _fsync_dir(dest.parent)
        _write_durable(staging / MANIFEST_NAME, (flashed.bundle / MANIFEST_NAME).read_bytes())
        _fsync_dir(staging)
    except OSError as exc:
        _remove_tree(staging)
        raise FlashError(f"cannot install the flashed config into {state}: {exc.strerror or exc}") from None
    try:
        copy = verify(staging)
    except FlashError as exc:
        _remove_tree(staging)
        raise FlashError(f"the copy of {flashed.bundle} in {state} does not check out: {exc}") from None
    problem = _loads(flashed, staging, on_card=False)
    if problem is not None:
        _remove_tree(staging)
        raise FlashError(problem)
    try:
        if installed.exists():
            _remove_tree(prev)
            os.rename(installed, prev)
            _fsync_dir(state)
        os.rename(staging, installed)
        _fsync_dir(state)
    except OSError as exc:
        raise FlashError(f"cannot switch to the new config in {state}: {exc.strerror or exc}") from None
    return FlashedConfig(installed, installed / CONFIG_NAME, copy.sha256, copy.digest, copy.manifest)


def _verified_installed(state: Path, problems: list[str]) -> FlashedConfig | None:
    installed = state / INSTALLED_NAME
    if not installed.exists():
        return None
    if not os.access(installed, os.R_OK | os.X_OK):
        # Mode 700, user denen: it holds the credentials. Only the service's user (and root) can look inside.
        problems.append(f"cannot read the installed config in {installed} as this user (hint: run with sudo)")
        return None
    try:
        return verify(installed)
    except FlashError as exc:
        problems.append(f"installed config refused: {exc}")
        return None


def resolve_active_config(explicit: str | os.PathLike[str] | None, search: Sequence[str] | None = None, *,
                          state_dir: str | os.PathLike[str] | None = None, default_config: str = DEFAULT_CONFIG,
                          install: bool = True) -> ActiveConfig:
    """Decide which config the agent runs (see the module docstring for the order), installing a new flash.

    Call it once at start, before loading the config; log :meth:`ActiveConfig.describe` and each note at info
    level, and each of ``problems`` at error level. Nothing is logged here, so nothing is logged twice.

    Args:
        explicit: the file given with ``-c``, or None to search.
        search: bundle folders or globs; default :func:`default_search_paths`.
        state_dir: where the installed copy lives; default ``$STATE_DIRECTORY`` or ``/var/lib/denen``.
        default_config: the config used when nothing was ever flashed.
        install: False to only report what would be active, writing nothing (``denen doctor``); a new bundle
            is then reported at its place on the card.

    Returns:
        The active config.

    Raises:
        AgentError: there is no config at all (nothing flashed, no installed copy, no default file), or the
            explicit file does not exist.
    """
    if explicit is not None:
        path = Path(explicit)
        try:
            digest = _sha256_file(path)
        except FileNotFoundError:
            raise AgentError(_("config file {path} does not exist (hint: check the path given with -c)").format(
                path=path)) from None
        except OSError as exc:
            raise AgentError(_("cannot read config file {path}: {error}").format(path=path, error=exc.strerror)
                             ) from None
        return ActiveConfig(str(path), digest, "explicit")

    search = default_search_paths() if search is None else tuple(search)
    state = _state_dir(state_dir)
    flashed, problems = _scan(search)
    notes: list[str] = []
    installed = _verified_installed(state, problems)

    def active(config: FlashedConfig, source: str, origin: str | None) -> ActiveConfig:
        return ActiveConfig(str(config.config_path), config.sha256, source, origin, config.flashed_at,
                            tuple(problems), tuple(notes), on_card=config.bundle != state / INSTALLED_NAME)

    if flashed is not None:
        if installed is not None and installed.digest == flashed.digest:
            return active(installed, "flashed", str(flashed.bundle))
        if not install:
            problem = _loads(flashed, flashed.bundle, on_card=True)
            if problem is None:
                notes.append(f"new flashed config at {flashed.bundle} (not installed yet: the agent installs it "
                             f"into {state / INSTALLED_NAME} when it starts)")
                return active(flashed, "flashed", str(flashed.bundle))
            problems.append(f"refused flashed config: {problem}")
        else:
            try:
                copy = _install(flashed, state)
            except FlashError as exc:
                problems.append(f"refused flashed config: {exc}")
            else:
                notes.append(f"installed the config flashed at {flashed.flashed_at or '?'} from {flashed.bundle} "
                             f"into {copy.bundle}")
                return active(copy, "flashed", str(flashed.bundle))

    if installed is not None:
        origin = installed.manifest.get("source")
        return active(installed, "installed", str(origin) if isinstance(origin, str) else None)

    # A flash interrupted between its two renames leaves only denen.prev; nothing better is left, so use it.
    for prev in _previous_bundles(search):
        if not prev.exists():
            continue
        try:
            older = verify(prev)
        except FlashError as exc:
            problems.append(f"refused flashed config: {exc}")
            continue
        problem = _loads(older, older.bundle, on_card=True)
        if problem is not None:
            problems.append(f"refused flashed config: {problem}")
            continue
        if install:
            try:
                older = _install(older, state)
            except FlashError as exc:
                problems.append(f"refused flashed config: {exc}")
                continue
        notes.append(f"using the previous flashed bundle {prev}")
        return active(older, "flashed-previous", str(prev))

    default = Path(default_config)
    if default.is_file():
        return ActiveConfig(str(default), _sha256_file(default), "default", None, None, tuple(problems),
                            tuple(notes))
    reason = f" ({'; '.join(problems)})" if problems else ""
    raise AgentError(
        f"no config: nothing flashed in {', '.join(search)}, no installed copy in {state / INSTALLED_NAME}, "
        f"and no {default}{reason} (hint: flash one with `denen flash CONFIG TARGET`, or write {default})"
    )


# ---------------------------------------------------------------------------------------------------------------
# Command line


FLASH_EXAMPLES = N_("""\
examples:
  denen config validate gw-okutama-01/config.yaml
      check first: every problem with file, line, key and a hint
  denen flash gw-okutama-01/config.yaml /media/$USER/bootfs
      the Pi's SD card in the laptop: writes bootfs/denen/ (the config, the files it names such as
      mqtt-password, ca.pem and node keys, and MANIFEST.json); the gateway installs it at the next start
  denen flash gw-okutama-01/config.yaml /media/$USER/STICK
      the same onto a USB stick, for a gateway that is already running: plug it in, then
      sudo systemctl restart denen

  On the gateway, `journalctl -u denen -b | grep config` shows the active config and its sha256, to compare
  with the sha256 printed here. Exit codes: 0 flashed, 1 target or file problem, 2 invalid config.
""")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``denen flash CONFIG TARGET``, and the examples shown by ``--help``."""
    # The examples are laid out by hand; the default formatter would re-wrap them into one paragraph.
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.epilog = _(FLASH_EXAMPLES)
    if parser.description is None:
        parser.description = _("Validate a gateway config and write it, with its credential files and a manifest\n"
                               "of their SHA-256, onto a mounted SD card or USB stick, atomically.")
    parser.add_argument("config", metavar="CONFIG", help=_("config file (YAML) to validate and flash"))
    parser.add_argument("target", metavar="TARGET",
                        help=_("mounted SD-card boot partition or USB stick (a folder), e.g. /media/$USER/bootfs"))


def main(args: argparse.Namespace) -> int:
    """``denen flash``: returns 0 when flashed; raises ConfigError (exit 2) or FlashError (exit 1)."""
    result = flash(args.config, args.target)
    m = result.manifest
    out = sys.stdout
    for w in result.warnings:
        print(_("warning: {warning}").format(warning=w), file=out)
    print(_("flashed gateway {gateway} to {bundle}").format(gateway=m["gateway"], bundle=result.bundle), file=out)
    # The digests keep their English labels in both languages: installers compare them with the gateway's log.
    print(f"  config.yaml sha256 {m['files'][CONFIG_NAME]['sha256']}", file=out)
    print(f"  bundle digest      {m['digest']}", file=out)
    if result.secrets:
        print("  " + _("credentials: {files}").format(files=", ".join(result.secrets)), file=out)
    if result.backup is not None:
        print("  " + _("previous bundle kept in {path}").format(path=result.backup), file=out)
    if result.secrets and not result.modes_kept:
        print("  " + _("note: this card's file system does not keep file modes, so anyone holding the card can read "
                       "the credentials; the gateway copies them to /var/lib/denen (mode 600) on boot"), file=out)
    print(_("unmount the card before removing it (e.g. `udisksctl unmount -b /dev/sdX1` or eject it)"), file=out)
    return 0


def _standalone() -> int:
    parser = argparse.ArgumentParser(prog="denen flash", description=__doc__.split("\n", 1)[0])
    add_arguments(parser)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        return main(parser.parse_args())
    except ConfigError as exc:
        print(str(exc), file=sys.stderr)
        return 2
    except AgentError as exc:
        print(_("denen: error: {message}").format(message=exc), file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(_standalone())
