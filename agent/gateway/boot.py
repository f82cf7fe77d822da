"""Which config the gateway runs: at every start, :func:`resolve_active_config` decides.

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
4. With no usable bundle: the installed copy; then a ``denen.prev/`` bundle (a flash interrupted between its two
   renames leaves only that); then ``/etc/denen/config.yaml``.

Who may read the secrets: copies on the card are checked without the mode rule
(``load_config(..., check_modes=False)``): FAT has no modes and shows every file as readable by all, which is why
the gateway installs a mode-0600 copy; that copy is checked with the rule before it becomes active.

:class:`ActiveConfig` tells which config is active: path, SHA-256 of the file, and where it came from. The bundle
format itself is in agent/gateway/bundle.py; ``denen flash`` (agent/tools/flash.py) writes it.

Only the standard library is imported at the top (the config loader inside the function that needs it): the CLI
imports this module for ``denen run``, ``doctor`` and ``monitor``.
"""

from __future__ import annotations

import glob
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from agent import __version__
from agent.errors import AgentError, ConfigError
from agent.gateway.bundle import (
    CONFIG_NAME,
    DIR_MODE,
    MANIFEST_NAME,
    PREV_SUFFIX,
    FlashedConfig,
    FlashError,
    config_warnings_quiet,
    fsync_dir,
    make_dir,
    remove_tree,
    sha256_file,
    verify,
    write_durable,
)
from agent.i18n import _

__all__ = [
    "DEFAULT_CONFIG",
    "DEFAULT_SEARCH",
    "DEFAULT_STATE_DIR",
    "PARSED_CONFIG_NAME",
    "SEARCH_ENV",
    "ActiveConfig",
    "default_search_paths",
    "find_flashed",
    "parsed_config_cache",
    "resolve_active_config",
]

log = logging.getLogger(__name__)

#: Where the agent looks for a flashed bundle, in order: the Raspberry Pi OS boot partition (Bookworm mounts it at
#: /boot/firmware, older releases at /boot) and USB sticks automounted under /media (by udisks, at
#: /media/<user>/<label>, or by usbmount-style tools at /media/<label>).
DEFAULT_SEARCH: tuple[str, ...] = ("/boot/firmware/denen", "/boot/denen", "/media/*/denen", "/media/*/*/denen")
#: Environment variable overriding :data:`DEFAULT_SEARCH`: bundle folder paths or globs separated by ':'.
SEARCH_ENV = "DENEN_FLASH_SEARCH"
DEFAULT_STATE_DIR = "/var/lib/denen"
#: In the state directory: the active config's parsed YAML, kept between starts (agent.config.parsed).
PARSED_CONFIG_NAME = "config.parsed.json"
#: Folder below the state directory holding the installed copy of the flashed bundle.
INSTALLED_NAME = "flashed"
#: The config used when no bundle was ever flashed (written by hand, or by deploy/edge/install.sh users).
DEFAULT_CONFIG = "/etc/denen/config.yaml"


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


def parsed_config_cache(state_dir: str | os.PathLike[str] | None = None) -> Path | None:
    """Where ``denen run`` keeps its config's parsed YAML between starts (:mod:`agent.config.parsed`): in the
    state directory when it exists and is this user's and no one else's to write; else None (parse every time).
    A developer's ``denen run -c FILE`` outside systemd, with no state directory, is not cached."""
    state = _state_dir(state_dir)
    try:
        st = state.stat()
    except OSError:
        return None
    if not state.is_dir() or st.st_uid != os.geteuid() or st.st_mode & 0o022:
        return None
    return state / PARSED_CONFIG_NAME


def _state_dir(state_dir: str | os.PathLike[str] | None) -> Path:
    if state_dir is not None:
        return Path(state_dir)
    # systemd's StateDirectory=denen sets $STATE_DIRECTORY (several are ':'-separated; the first is ours).
    env = os.environ.get("STATE_DIRECTORY")
    return Path(env.split(":")[0]) if env else Path(DEFAULT_STATE_DIR)


def _loads(flashed: FlashedConfig, where: Path, *, on_card: bool, parsed_cache: Path | None = None) -> str | None:
    """None if the bundle's config loads with this agent, else the reason (one line per problem).

    ``on_card``: ``where`` is the bundle on the card or stick, whose file system may have no modes (FAT), so who
    may read the secrets is not checked there; it is for the installed copy (``on_card=False``).
    """
    from agent.config import load_config  # noqa: PLC0415 - see the imports at the top

    try:
        with config_warnings_quiet():
            load_config(where / CONFIG_NAME, check_modes=not on_card, parsed_cache=parsed_cache)
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
        remove_tree(staging)
        make_dir(staging)
        for name in sorted(flashed.manifest["files"]):
            rel = PurePosixPath(name)
            dest = staging.joinpath(*rel.parts)
            if not dest.parent.exists():
                dest.parent.mkdir(mode=DIR_MODE, parents=True)
            write_durable(dest, flashed.bundle.joinpath(*rel.parts).read_bytes())
            fsync_dir(dest.parent)
        write_durable(staging / MANIFEST_NAME, (flashed.bundle / MANIFEST_NAME).read_bytes())
        fsync_dir(staging)
    except OSError as exc:
        remove_tree(staging)
        raise FlashError(f"cannot install the flashed config into {state}: {exc.strerror or exc}") from None
    try:
        copy = verify(staging)
    except FlashError as exc:
        remove_tree(staging)
        raise FlashError(f"the copy of {flashed.bundle} in {state} does not check out: {exc}") from None
    # The check parses the YAML; its parsed data is kept, so the run that follows need not parse it again.
    problem = _loads(flashed, staging, on_card=False, parsed_cache=parsed_config_cache(state))
    if problem is not None:
        remove_tree(staging)
        raise FlashError(problem)
    try:
        if installed.exists():
            remove_tree(prev)
            os.rename(installed, prev)
            fsync_dir(state)
        os.rename(staging, installed)
        fsync_dir(state)
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
        return _explicit(Path(explicit))
    search = default_search_paths() if search is None else tuple(search)
    state = _state_dir(state_dir)
    flashed, problems = _scan(search)
    found = _Resolution(state, problems)
    installed = _verified_installed(state, problems)
    active = _from_flashed(flashed, installed, found, install=install) if flashed is not None else None
    if active is None and installed is not None:
        origin = installed.manifest.get("source")
        active = found.active(installed, "installed", str(origin) if isinstance(origin, str) else None)
    if active is None:
        active = _from_previous(search, found, install=install)
    return active if active is not None else _default(Path(default_config), search, found)


@dataclass
class _Resolution:
    """What :func:`resolve_active_config` collects on its way: refused bundles and notes, one line each."""

    state: Path
    problems: list[str]
    notes: list[str] = field(default_factory=list)

    def active(self, config: FlashedConfig, source: str, origin: str | None) -> ActiveConfig:
        return ActiveConfig(str(config.config_path), config.sha256, source, origin, config.flashed_at,
                            tuple(self.problems), tuple(self.notes),
                            on_card=config.bundle != self.state / INSTALLED_NAME)


def _explicit(path: Path) -> ActiveConfig:
    try:
        digest = sha256_file(path)
    except FileNotFoundError:
        raise AgentError(_("config file {path} does not exist (hint: check the path given with -c)").format(
            path=path)) from None
    except OSError as exc:
        raise AgentError(_("cannot read config file {path}: {error}").format(path=path, error=exc.strerror)
                         ) from None
    return ActiveConfig(str(path), digest, "explicit")


def _from_flashed(flashed: FlashedConfig, installed: FlashedConfig | None, found: _Resolution, *,
                  install: bool) -> ActiveConfig | None:
    """The bundle found on the card, installed unless it already is (or only reported, ``install=False``);
    None when it is refused."""
    if installed is not None and installed.digest == flashed.digest:
        return found.active(installed, "flashed", str(flashed.bundle))
    if not install:
        problem = _loads(flashed, flashed.bundle, on_card=True)
        if problem is None:
            found.notes.append(f"new flashed config at {flashed.bundle} (not installed yet: the agent installs it "
                               f"into {found.state / INSTALLED_NAME} when it starts)")
            return found.active(flashed, "flashed", str(flashed.bundle))
        found.problems.append(f"refused flashed config: {problem}")
        return None
    try:
        copy = _install(flashed, found.state)
    except FlashError as exc:
        found.problems.append(f"refused flashed config: {exc}")
        return None
    found.notes.append(f"installed the config flashed at {flashed.flashed_at or '?'} from {flashed.bundle} "
                       f"into {copy.bundle}")
    return found.active(copy, "flashed", str(flashed.bundle))


def _from_previous(search: Sequence[str], found: _Resolution, *, install: bool) -> ActiveConfig | None:
    """A ``denen.prev`` bundle that checks out and loads, installed unless ``install=False``; else None."""
    # A flash interrupted between its two renames leaves only denen.prev; nothing better is left, so use it.
    for prev in _previous_bundles(search):
        if not prev.exists():
            continue
        try:
            older = verify(prev)
        except FlashError as exc:
            found.problems.append(f"refused flashed config: {exc}")
            continue
        problem = _loads(older, older.bundle, on_card=True)
        if problem is not None:
            found.problems.append(f"refused flashed config: {problem}")
            continue
        if install:
            try:
                older = _install(older, found.state)
            except FlashError as exc:
                found.problems.append(f"refused flashed config: {exc}")
                continue
        found.notes.append(f"using the previous flashed bundle {prev}")
        return found.active(older, "flashed-previous", str(prev))
    return None


def _default(default: Path, search: Sequence[str], found: _Resolution) -> ActiveConfig:
    if default.is_file():
        return ActiveConfig(str(default), sha256_file(default), "default", None, None, tuple(found.problems),
                            tuple(found.notes))
    reason = f" ({'; '.join(found.problems)})" if found.problems else ""
    raise AgentError(
        f"no config: nothing flashed in {', '.join(search)}, no installed copy in {found.state / INSTALLED_NAME}, "
        f"and no {default}{reason} (hint: flash one with `denen flash CONFIG TARGET`, or write {default})"
    )
