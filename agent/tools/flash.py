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

On the gateway, at every start, :func:`agent.gateway.boot.resolve_active_config` picks the bundle up: it checks
the manifest, installs a mode-0600 copy under the state directory and runs that (the order of the search and the
fallbacks are in agent/gateway/boot.py; the bundle format and its checks in agent/gateway/bundle.py).

Who may read the secrets: the config on the laptop is loaded with the usual rule (an inline secret in a file
other users can read, or a secret file they can read, is refused). The copy written to the card is re-checked
without it (``load_config(..., check_modes=False)``): FAT has no modes and shows every file as readable by all.

``denen flash`` exit codes: 0 flashed; 1 the target cannot be written (not mounted, read-only, full) or a
credential file cannot be read; 2 the config is invalid (every problem is printed, nothing is written).
"""

from __future__ import annotations

import argparse
import datetime
import json
import logging
import os
import shutil
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from io import StringIO
from pathlib import Path
from typing import TYPE_CHECKING, Any

from agent import __version__
from agent.errors import ConfigError
from agent.gateway.bundle import (
    BUNDLE_NAME,
    CONFIG_NAME,
    MANIFEST_NAME,
    MANIFEST_SCHEMA,
    PREV_SUFFIX,
    SECRETS_DIR,
    FlashError,
    bundle_digest,
    config_warnings_quiet,
    fsync_dir,
    make_dir,
    remove_tree,
    sha256_bytes,
    verify,
    write_durable,
)
from agent.i18n import N_, _
from agent.tools.standalone import run_standalone

if TYPE_CHECKING:
    # `denen --help` imports this module to build its parser: the config models (pydantic) and the YAML
    # round-tripper are imported inside the functions that need them.
    from ruamel.yaml import YAML

    from agent.config import Config

__all__ = ["FlashResult", "add_arguments", "flash", "main"]

log = logging.getLogger(__name__)

_STAGING_NAME = ".denen-new"


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
    source_bytes, secrets, contents = _bundle_contents(source, config)
    needed = sum(len(b) for b in contents.values()) + 64 * 1024
    free = shutil.disk_usage(target).free
    if free < needed:
        raise FlashError(_("{target} has {free} bytes free, the bundle needs {needed} (hint: free some "
                           "space)").format(target=target, free=free, needed=needed))
    manifest = _manifest(config, source, source_bytes, contents, now)
    staging = target / _STAGING_NAME
    modes_kept = _write_staging(target, staging, contents, manifest)
    _check_staging(staging)
    bundle, backup = _swap_in(target, staging)
    log.info("%s", _("flashed {source} to {bundle} (digest {digest})").format(source=source, bundle=bundle,
                                                                               digest=manifest["digest"][:12]))
    warnings = tuple(str(w) for w in getattr(config, "warnings", ()))
    return FlashResult(bundle, backup, manifest, tuple(sorted({s.name for s in secrets})), warnings, modes_kept)


def _bundle_contents(source: Path, config: Config) -> tuple[bytes, list[_Secret], dict[str, bytes]]:
    """The source file's bytes, the credential files it names, and every bundle file's content by bundle path."""
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
    return source_bytes, secrets, contents


def _manifest(config: Config, source: Path, source_bytes: bytes, contents: dict[str, bytes],
              now: datetime.datetime | None) -> dict[str, Any]:
    stamp = (now or datetime.datetime.now(datetime.timezone.utc)).astimezone(datetime.timezone.utc)
    files = {name: {"sha256": sha256_bytes(data), "bytes": len(data)} for name, data in sorted(contents.items())}
    return {
        "schema": MANIFEST_SCHEMA,
        "gateway": config.gateway.id,
        "site": config.gateway.site,
        "source": str(source.absolute()),
        "source_sha256": sha256_bytes(source_bytes),
        "flashed_at": stamp.isoformat(timespec="seconds").replace("+00:00", "Z"),
        "denen_version": __version__,
        "files": files,
        "digest": bundle_digest(files),
    }


def _write_staging(target: Path, staging: Path, contents: dict[str, bytes], manifest: dict[str, Any]) -> bool:
    """Write the bundle into the staging folder, durably, the manifest last; whether the file modes were kept."""
    modes_kept = True
    try:
        remove_tree(staging)  # the leftover of an interrupted flash
        make_dir(staging)
        if any(name.startswith(SECRETS_DIR + "/") for name in contents):
            make_dir(staging / SECRETS_DIR)
        for name, data in contents.items():
            modes_kept &= write_durable(staging / name, data)
        if (staging / SECRETS_DIR).exists():
            fsync_dir(staging / SECRETS_DIR)
        # The manifest last: a bundle with a manifest is a complete bundle.
        modes_kept &= write_durable(staging / MANIFEST_NAME,
                                    (json.dumps(manifest, indent=2, ensure_ascii=False) + "\n").encode())
        fsync_dir(staging)
        fsync_dir(target)
    except OSError as exc:
        raise FlashError(_("writing to {target} failed: {error} (the previous bundle is unchanged)").format(
            target=target, error=exc.strerror or exc)) from None
    return modes_kept


def _check_staging(staging: Path) -> None:
    """Read the written bundle back and load its config; on failure remove it (nothing was replaced)."""
    from agent.config import load_config  # noqa: PLC0415 - see the imports at the top

    try:
        verify(staging)  # read back: a card that does not keep what it was given is caught here
        with config_warnings_quiet():
            # The rewritten copy must load exactly like the original. Not its modes: on FAT every file looks
            # readable by all (the laptop's files were checked above, the gateway checks its own copy).
            load_config(staging / CONFIG_NAME, check_modes=False)
    except (FlashError, ConfigError) as exc:
        remove_tree(staging)
        raise FlashError(_("the written bundle does not check out, nothing was replaced: {error}").format(
            error=exc)) from None


def _swap_in(target: Path, staging: Path) -> tuple[Path, Path | None]:
    """Make the staged bundle ``denen`` and the current one ``denen.prev``; the bundle and the backup (or None)."""
    bundle = target / BUNDLE_NAME
    prev = target / (BUNDLE_NAME + PREV_SUFFIX)
    backup: Path | None = None
    try:
        if bundle.exists() or bundle.is_symlink():
            if not bundle.is_dir():
                raise FlashError(_("{path} exists and is not a folder (hint: move it away and flash again)").format(
                    path=bundle))
            remove_tree(prev)
            os.rename(bundle, prev)
            fsync_dir(target)
            backup = prev
        os.rename(staging, bundle)
        fsync_dir(target)
    except OSError as exc:
        raise FlashError(_("switching to the new bundle on {target} failed: {error}").format(
            target=target, error=exc.strerror or exc)) from None
    return bundle, backup


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


if __name__ == "__main__":
    sys.exit(run_standalone("denen flash", __doc__.split("\n", 1)[0], add_arguments, main))
