"""``denen flash`` and the boot-time pick-up of a flashed config, on real folders standing in for an SD card."""

from __future__ import annotations

import argparse
import json
import os
import stat
from pathlib import Path

import pytest

from agent.config import load_config
from agent.errors import AgentError, ConfigError
from agent.gateway import boot
from agent.gateway.bundle import FlashError, bundle_digest, verify, write_durable
from agent.tools import flash as fl

KEY_A = "00a1b2c300a1b2c300a1b2c300a1b2c3"
KEY_B = "00000201000002010000020100000201"


def _config(tmp: Path, *, journal: str | None = None, gateway: str = "gw-forest-01", extra_node: str = "") -> Path:
    """A laptop-side config with every kind of credential file, in a folder of its own."""
    src = tmp / "laptop"
    (src / "keys").mkdir(parents=True, exist_ok=True)
    (src / "keys" / "sos-1.key").write_text(f"# node 00a1b2c3\n{KEY_A}\n")
    (src / "keys" / "trap-1.key").write_text(KEY_B + "\n")
    (src / "mqtt-password").write_text("s3cret-pass\n")
    (src / "tls").mkdir(exist_ok=True)
    (src / "tls" / "ca.pem").write_text("-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n")
    for p in [src / "keys" / "sos-1.key", src / "keys" / "trap-1.key", src / "mqtt-password"]:
        p.chmod(0o600)
    cfg = src / "gateway.yaml"
    cfg.write_text(f"""# Forest gateway: a comment that must survive the flash.
gateway:
  id: {gateway}
  site: okutama
journal:
  path: {journal or tmp / "var" / "journal.db"}
mqtt:
  host: mqtt.example.jp
  port: 8883
  username: {gateway}
  password_file: mqtt-password      # relative to this file
  tls:
    ca_file: tls/ca.pem
radios:
  - name: lora0
    driver: rak3172
    port: /dev/lora0
nodes:
  - id: "00a1b2c3"                  # quoted hex must stay quoted
    name: sos-1
    kind: sos
    key_file: keys/sos-1.key
  - id: "00000201"
    name: trap-1
    kind: trap
    key_file: {src / "keys" / "trap-1.key"}
{extra_node}""")
    return cfg


@pytest.fixture
def card(tmp_path: Path) -> Path:
    """The mounted boot partition."""
    p = tmp_path / "bootfs"
    p.mkdir()
    return p


def test_flash_writes_a_self_contained_bundle_with_checksums(tmp_path: Path, card: Path) -> None:
    cfg = _config(tmp_path)
    before = cfg.read_bytes()
    result = fl.flash(cfg, card)

    bundle = card / "denen"
    assert result.bundle == bundle and result.backup is None
    assert sorted(p.relative_to(bundle).as_posix() for p in bundle.rglob("*") if p.is_file()) == [
        "MANIFEST.json", "config.yaml", "secrets/mqtt-ca.pem", "secrets/mqtt-password", "secrets/node-sos-1.key",
        "secrets/node-trap-1.key"]
    for f in (bundle / "secrets").iterdir():
        assert stat.S_IMODE(f.stat().st_mode) == 0o600
    assert stat.S_IMODE((bundle / "config.yaml").stat().st_mode) == 0o600
    assert (bundle / "secrets" / "mqtt-password").read_text() == "s3cret-pass\n"
    assert (bundle / "secrets" / "node-sos-1.key").read_text().endswith(KEY_A + "\n")

    manifest = json.loads((bundle / "MANIFEST.json").read_text())
    assert manifest["schema"] == "denen.flash/1"
    assert manifest["source"] == str(cfg.absolute())
    assert manifest["gateway"] == "gw-forest-01"
    assert manifest["denen_version"]
    assert manifest["flashed_at"].endswith("Z")
    import hashlib

    for name, entry in manifest["files"].items():
        data = (bundle / name).read_bytes()
        assert entry == {"sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)}

    # The flashed copy names its credentials relative to itself, keeps comments and quoting, and loads the same.
    text = (bundle / "config.yaml").read_text()
    assert "password_file: secrets/mqtt-password" in text
    assert "key_file: secrets/node-trap-1.key" in text and str(tmp_path) not in text.split("journal")[0]
    assert "# Forest gateway: a comment that must survive the flash." in text
    assert 'id: "00a1b2c3"' in text
    flashed = load_config(bundle / "config.yaml")
    original = load_config(cfg)
    assert flashed.mqtt.password_file == str(bundle / "secrets" / "mqtt-password")
    assert flashed.nodes[0].key_bytes() == original.nodes[0].key_bytes()
    assert flashed.nodes[1].key_bytes() == bytes.fromhex(KEY_B)
    assert flashed.journal.path == original.journal.path
    assert cfg.read_bytes() == before  # the laptop's file is never touched

    checked = verify(bundle)
    assert checked.sha256 == manifest["files"]["config.yaml"]["sha256"]
    assert checked.digest == manifest["digest"]


def test_a_config_without_credential_files_is_copied_byte_for_byte(tmp_path: Path, card: Path) -> None:
    cfg = tmp_path / "plain.yaml"
    cfg.write_text(f"# plain\ngateway: {{id: gw-a, site: s}}\njournal: {{path: {tmp_path / 'j.db'}}}\n"
                   "radios: [{name: r, driver: rak3172, port: loop://}]\nunknown_nodes: accept\n")
    fl.flash(cfg, card)
    assert (card / "denen" / "config.yaml").read_bytes() == cfg.read_bytes()
    assert not (card / "denen" / "secrets").exists()


def test_an_invalid_config_is_refused_with_its_issues_and_nothing_is_written(tmp_path: Path, card: Path) -> None:
    cfg = _config(tmp_path)
    cfg.write_text(cfg.read_text().replace("driver: rak3172", "driver: rak3127"))
    with pytest.raises(ConfigError) as err:
        fl.flash(cfg, card)
    assert "radios[0].driver" in str(err.value) and "rak3172" in str(err.value)
    assert list(card.iterdir()) == []


def test_a_relative_journal_path_is_refused(tmp_path: Path, card: Path) -> None:
    cfg = _config(tmp_path, journal="journal.db")
    with pytest.raises(FlashError, match="journal.path 'journal.db' is relative"):
        fl.flash(cfg, card)
    assert list(card.iterdir()) == []


@pytest.mark.parametrize("problem", ["missing", "file"])
def test_a_target_that_is_not_a_mounted_folder_is_refused(tmp_path: Path, problem: str) -> None:
    target = tmp_path / "nowhere"
    if problem == "file":
        target.write_text("x")
    with pytest.raises(FlashError, match="mount"):
        fl.flash(_config(tmp_path), target)


def test_reflashing_keeps_the_previous_bundle(tmp_path: Path, card: Path) -> None:
    cfg = _config(tmp_path)
    first = fl.flash(cfg, card)
    cfg.write_text(cfg.read_text().replace("port: 8883", "port: 8884"))
    second = fl.flash(cfg, card)
    assert second.backup == card / "denen.prev"
    assert verify(card / "denen.prev").digest == first.manifest["digest"]
    assert verify(card / "denen").digest == second.manifest["digest"] != first.manifest["digest"]
    assert "port: 8884" in (card / "denen" / "config.yaml").read_text()
    # A third flash replaces the backup with the second bundle; only one backup is kept.
    fl.flash(cfg, card)
    assert verify(card / "denen.prev").digest == second.manifest["digest"]
    assert sorted(p.name for p in card.iterdir()) == ["denen", "denen.prev"]


def test_a_crash_while_writing_leaves_the_previous_bundle_intact(tmp_path: Path, card: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = _config(tmp_path)
    first = fl.flash(cfg, card)
    cfg.write_text(cfg.read_text().replace("port: 8883", "port: 8884"))

    real = write_durable

    def dies_at_the_manifest(path: Path, data: bytes, mode: int = 0o600) -> bool:
        if path.name == "MANIFEST.json":
            raise OSError(28, "No space left on device")
        return real(path, data, mode)

    monkeypatch.setattr(fl, "write_durable", dies_at_the_manifest)
    with pytest.raises(FlashError, match="previous bundle is unchanged"):
        fl.flash(cfg, card)
    assert verify(card / "denen").digest == first.manifest["digest"]
    assert boot.find_flashed([str(card / "denen")]).digest == first.manifest["digest"]  # type: ignore[union-attr]
    # The half-written staging folder has no manifest, so it can never pass as a bundle; the next flash clears it.
    assert not (card / ".denen-new" / "MANIFEST.json").exists()
    monkeypatch.setattr(fl, "write_durable", real)
    fl.flash(cfg, card)
    assert not (card / ".denen-new").exists()
    assert "port: 8884" in (card / "denen" / "config.yaml").read_text()


def test_a_crash_between_the_two_renames_falls_back_to_the_previous_bundle(
        tmp_path: Path, card: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = _config(tmp_path)
    first = fl.flash(cfg, card)
    real_rename = os.rename
    calls: list[tuple[str, str]] = []

    def power_cut_after_first_rename(a: os.PathLike[str], b: os.PathLike[str]) -> None:
        calls.append((os.fspath(a), os.fspath(b)))
        if len(calls) == 2:
            raise OSError(5, "Input/output error")
        real_rename(a, b)

    monkeypatch.setattr(fl.os, "rename", power_cut_after_first_rename)
    with pytest.raises(FlashError):
        fl.flash(cfg, card)
    monkeypatch.setattr(fl.os, "rename", real_rename)
    assert not (card / "denen").exists()
    active = boot.resolve_active_config(None, [str(card / "denen")], state_dir=tmp_path / "state",
                                        default_config=str(tmp_path / "none.yaml"))
    assert active.source == "flashed-previous"
    assert active.sha256 == first.manifest["files"]["config.yaml"]["sha256"]
    assert load_config(active.path).gateway.id == "gw-forest-01"


def _corrupt(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("lang", ["en", "ja"])
def test_a_damaged_bundle_is_told_in_the_installers_language(tmp_path: Path, card: Path, lang: str) -> None:
    from agent import i18n  # noqa: PLC0415

    fl.flash(_config(tmp_path), card)
    bundle = card / "denen"
    _corrupt(bundle / "config.yaml")
    (bundle / "secrets" / "node-sos-1.key").unlink()
    i18n.set_language(lang)
    try:
        with pytest.raises(FlashError) as corrupt:
            verify(bundle)
        (bundle / "MANIFEST.json").write_text("{not json")
        with pytest.raises(FlashError) as damaged:
            verify(bundle)
    finally:
        i18n.set_language(None)
    # The listed files are checked in the manifest's order: config.yaml comes first.
    want = {
        "en": (f"bundle {bundle}: config.yaml is corrupt (its SHA-256 does not match the manifest; the card may be "
               "failing) (hint: flash it again with `denen flash CONFIG TARGET`, or use another card)",
               f"bundle {bundle}: MANIFEST.json is damaged (not JSON) (hint: flash it again with `denen flash CONFIG "
               "TARGET`)"),
        "ja": (f"バンドル {bundle}: config.yaml が壊れています（SHA-256 がマニフェストと合いません。カードが故障しかけている"
               "可能性があります）（ヒント: `denen flash CONFIG TARGET` で書き込み直してください。または別のカードを使って"
               "ください）",
               f"バンドル {bundle}: MANIFEST.json が壊れています（JSON ではありません）（ヒント: `denen flash CONFIG TARGET` "
               "で書き込み直してください）"),
    }[lang]
    assert (str(corrupt.value), str(damaged.value)) == want


def test_verify_refuses_corrupt_and_incomplete_bundles(tmp_path: Path, card: Path) -> None:
    fl.flash(_config(tmp_path), card)
    bundle = card / "denen"
    # Files desktops drop on FAT are ignored; other extras are only logged.
    (bundle / "._config.yaml").write_bytes(b"\0\5\x16\7")
    (bundle / "notes.txt").write_text("hello")
    verify(bundle)

    key = bundle / "secrets" / "node-sos-1.key"
    original = key.read_bytes()
    _corrupt(key)
    with pytest.raises(FlashError, match=r"secrets/node-sos-1.key is corrupt"):
        verify(bundle)
    key.write_bytes(original)
    key.unlink()
    with pytest.raises(FlashError, match=r"secrets/node-sos-1.key is missing"):
        verify(bundle)
    key.write_bytes(original)

    manifest = bundle / "MANIFEST.json"
    good = manifest.read_text()
    manifest.write_text(good[: len(good) // 2])
    with pytest.raises(FlashError, match="damaged"):
        verify(bundle)
    doc = json.loads(good)
    doc["files"]["../../etc/passwd"] = {"sha256": "0" * 64, "bytes": 1}
    manifest.write_text(json.dumps(doc))
    with pytest.raises(FlashError, match="invalid entry"):
        verify(bundle)
    doc = json.loads(good)
    doc["digest"] = "0" * 64
    manifest.write_text(json.dumps(doc))
    with pytest.raises(FlashError, match="digest"):
        verify(bundle)
    manifest.unlink()
    with pytest.raises(FlashError, match="did not finish"):
        verify(bundle)


def test_boot_installs_the_flashed_config_and_reports_it(tmp_path: Path, card: Path) -> None:
    result = fl.flash(_config(tmp_path), card)
    state = tmp_path / "state"
    active = boot.resolve_active_config(None, [str(tmp_path / "other" / "denen"), str(card / "denen")],
                                        state_dir=state, default_config=str(tmp_path / "none.yaml"))
    installed = state / "flashed"
    assert active.source == "flashed"
    assert active.path == str(installed / "config.yaml")
    assert active.sha256 == result.manifest["files"]["config.yaml"]["sha256"]
    assert active.bundle == str(card / "denen")
    assert active.flashed_at == result.manifest["flashed_at"]
    assert any("installed" in n for n in active.notes)
    assert active.sha256[:12] in active.describe() and "flashed" in active.describe()
    # The installed copy holds the credentials with mode 600 and loads from where it is.
    for f in (installed / "secrets").iterdir():
        assert stat.S_IMODE(f.stat().st_mode) == 0o600
    assert stat.S_IMODE(installed.stat().st_mode) == 0o700
    cfg = load_config(active.path)
    assert cfg.mqtt.password_file == str(installed / "secrets" / "mqtt-password")

    # Next boot, same card: nothing is reinstalled.
    mtime = (installed / "MANIFEST.json").stat().st_mtime_ns
    again = boot.resolve_active_config(None, [str(card / "denen")], state_dir=state)
    assert again.path == active.path and again.sha256 == active.sha256 and again.source == "flashed"
    assert not again.notes and not again.problems
    assert (installed / "MANIFEST.json").stat().st_mtime_ns == mtime

    # The USB stick is pulled out: the installed copy stays active.
    gone = boot.resolve_active_config(None, [str(tmp_path / "pulled" / "denen")], state_dir=state)
    assert gone.source == "installed" and gone.sha256 == active.sha256


def _flashed_twice(tmp: Path, card: Path) -> tuple[Path, boot.ActiveConfig]:
    """Flash the config (broker port 8883), boot once (it is installed), flash it again with port 8884.

    Returns the state folder and the first boot's active config."""
    cfg = _config(tmp)
    fl.flash(cfg, card)
    state = tmp / "state"
    first = boot.resolve_active_config(None, [str(card / "denen")], state_dir=state)
    cfg.write_text(cfg.read_text().replace("port: 8883", "port: 8884"))
    fl.flash(cfg, card)
    return state, first


def test_a_corrupt_flash_is_refused_and_the_installed_config_stays_active(tmp_path: Path, card: Path) -> None:
    state, first = _flashed_twice(tmp_path, card)
    _corrupt(card / "denen" / "config.yaml")

    active = boot.resolve_active_config(None, [str(card / "denen")], state_dir=state)
    assert active.source == "installed"
    assert active.sha256 == first.sha256
    assert any("refused flashed config" in n and "config.yaml is corrupt" in n for n in active.problems)
    assert load_config(active.path).mqtt.port == 8883


def test_a_new_flash_replaces_the_installed_copy_and_keeps_one_backup(tmp_path: Path, card: Path) -> None:
    state, first = _flashed_twice(tmp_path, card)
    second = boot.resolve_active_config(None, [str(card / "denen")], state_dir=state)
    assert second.source == "flashed" and second.sha256 != first.sha256
    assert load_config(second.path).mqtt.port == 8884
    assert verify(state / "flashed.prev").sha256 == first.sha256


def test_a_flash_this_agent_cannot_load_is_refused(tmp_path: Path, card: Path) -> None:
    """A bundle from a newer denen whose config this agent rejects: checksums fine, still refused."""
    cfg = _config(tmp_path)
    fl.flash(cfg, card)
    state = tmp_path / "state"
    first = boot.resolve_active_config(None, [str(card / "denen")], state_dir=state)
    bundle = card / "denen"
    text = (bundle / "config.yaml").read_text() + "sirens:\n  - pin: 17\n"
    (bundle / "config.yaml").write_text(text)
    manifest = json.loads((bundle / "MANIFEST.json").read_text())
    import hashlib

    manifest["files"]["config.yaml"] = {"sha256": hashlib.sha256(text.encode()).hexdigest(), "bytes": len(text)}
    manifest["digest"] = bundle_digest(manifest["files"])
    (bundle / "MANIFEST.json").write_text(json.dumps(manifest))
    verify(bundle)  # the checksums are right

    active = boot.resolve_active_config(None, [str(bundle)], state_dir=state)
    assert active.source == "installed" and active.sha256 == first.sha256
    assert any("does not load" in n and "sirens" in n for n in active.problems)
    assert not (state / ".flashed-new").exists()


def test_resolution_order_explicit_then_default_then_error(tmp_path: Path, card: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    fl.flash(_config(tmp_path), card)
    explicit = tmp_path / "mine.yaml"
    explicit.write_text("gateway: {id: x, site: y}\n")
    # -c FILE wins over a flashed card, and nothing is installed.
    active = boot.resolve_active_config(str(explicit), [str(card / "denen")], state_dir=tmp_path / "state")
    assert active.source == "explicit" and active.path == str(explicit)
    assert not (tmp_path / "state").exists()
    with pytest.raises(AgentError, match="does not exist"):
        boot.resolve_active_config(str(tmp_path / "missing.yaml"))

    default = tmp_path / "etc" / "config.yaml"
    default.parent.mkdir()
    default.write_text("gateway: {id: x, site: y}\n")
    active = boot.resolve_active_config(None, [str(tmp_path / "nothing" / "denen")], state_dir=tmp_path / "state",
                                        default_config=str(default))
    assert active.source == "default" and active.path == str(default)
    with pytest.raises(AgentError, match="no config.*denen flash"):
        boot.resolve_active_config(None, [str(tmp_path / "nothing" / "denen")], state_dir=tmp_path / "state",
                                   default_config=str(tmp_path / "none.yaml"))

    # The search can come from the environment, with globs (USB sticks under /media/<user>/<label>).
    monkeypatch.setenv("DENEN_FLASH_SEARCH", f"{tmp_path / 'media'}/*/*/denen:/nonexistent/denen")
    stick = tmp_path / "media" / "pi" / "STICK"
    stick.mkdir(parents=True)
    fl.flash(_config(tmp_path, gateway="gw-stick"), stick)
    found = boot.find_flashed()
    assert found is not None and found.bundle == stick / "denen"
    assert found.manifest["gateway"] == "gw-stick"


def test_report_only_resolution_writes_nothing(tmp_path: Path, card: Path) -> None:
    fl.flash(_config(tmp_path), card)
    state = tmp_path / "state"
    active = boot.resolve_active_config(None, [str(card / "denen")], state_dir=state, install=False)
    assert active.source == "flashed" and active.path == str(card / "denen" / "config.yaml")
    assert any("not installed yet" in n for n in active.notes)
    assert not state.exists()


def test_state_directory_from_systemd(tmp_path: Path, card: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fl.flash(_config(tmp_path), card)
    monkeypatch.setenv("STATE_DIRECTORY", str(tmp_path / "sd-state"))
    active = boot.resolve_active_config(None, [str(card / "denen")])
    assert active.path == str(tmp_path / "sd-state" / "flashed" / "config.yaml")


def test_command_line(tmp_path: Path, card: Path, capsys: pytest.CaptureFixture[str]) -> None:
    parser = argparse.ArgumentParser()
    fl.add_arguments(parser)
    cfg = _config(tmp_path)
    assert fl.main(parser.parse_args([str(cfg), str(card)])) == 0
    out = capsys.readouterr().out
    sha = json.loads((card / "denen" / "MANIFEST.json").read_text())["files"]["config.yaml"]["sha256"]
    assert f"flashed gateway gw-forest-01 to {card / 'denen'}" in out
    assert sha in out and "secrets/mqtt-password" in out
    assert "s3cret-pass" not in out and KEY_A not in out  # secrets are never printed


def test_help_shows_the_examples_as_laid_out(capsys: pytest.CaptureFixture[str]) -> None:
    parser = argparse.ArgumentParser(prog="denen flash")
    fl.add_arguments(parser)
    with pytest.raises(SystemExit) as done:
        parser.parse_args(["--help"])
    assert done.value.code == 0
    out = capsys.readouterr().out
    # One example per line, each followed by its indented explanation: not re-wrapped into a paragraph.
    assert "\n  denen flash gw-okutama-01/config.yaml /media/$USER/bootfs\n      the Pi's SD card" in out
    assert "\n  denen config validate gw-okutama-01/config.yaml\n" in out
    assert out.index("examples:") > out.index("positional arguments:")


def test_importing_the_module_loads_no_config_models_or_yaml() -> None:
    """`denen --help` imports this module to build its parser; pydantic and ruamel.yaml cost a quarter second."""
    import subprocess
    import sys

    heavy = ("agent.config", "pydantic", "ruamel.yaml", "rich", "cryptography", "paho")
    code = ("import sys, agent.tools.flash; "
            f"print(' '.join(m for m in {heavy!r} if m in sys.modules))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                          cwd=Path(__file__).resolve().parents[2])
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "", f"imported at the top of agent.tools.flash: {proc.stdout.strip()}"


def test_module_runs_standalone_with_exit_codes(tmp_path: Path, card: Path) -> None:
    import subprocess
    import sys

    root = Path(__file__).resolve().parents[2]
    cfg = _config(tmp_path)
    ok = subprocess.run([sys.executable, "-m", "agent.tools.flash", str(cfg), str(card)], cwd=root,
                        capture_output=True, text=True, timeout=60)
    assert ok.returncode == 0, ok.stderr
    cfg.write_text(cfg.read_text().replace("kind: sos", "kind: sox"))
    bad = subprocess.run([sys.executable, "-m", "agent.tools.flash", str(cfg), str(card)], cwd=root,
                         capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2 and "nodes[0].kind" in bad.stderr and "Traceback" not in bad.stderr
    missing = subprocess.run([sys.executable, "-m", "agent.tools.flash", str(_config(tmp_path)), str(tmp_path / "no")],
                             cwd=root, capture_output=True, text=True, timeout=60)
    assert missing.returncode == 1 and "does not exist" in missing.stderr and "Traceback" not in missing.stderr


# ---------------------------------------------------------------------------------------------------------------
# Who may read the secrets


def _config_with_inline_key(tmp: Path) -> Path:
    """The laptop config with one more node whose key is written inline, in a file only its owner can read."""
    cfg = _config(tmp, extra_node=f'  - id: "00000301"\n    name: river-1\n    kind: water_level\n    key: "{KEY_B}"\n')
    cfg.chmod(0o600)
    return cfg


def test_a_laptop_config_that_every_user_can_read_and_holds_a_key_is_not_flashed(tmp_path: Path,
                                                                                 card: Path) -> None:
    cfg = _config_with_inline_key(tmp_path)
    cfg.chmod(0o644)
    with pytest.raises(ConfigError) as err:
        fl.flash(cfg, card)
    [issue] = err.value.issues
    assert issue.key == "nodes[2].key" and "every user on this machine can read it (mode 644)" in issue.message
    assert KEY_B not in str(err.value)
    assert list(card.iterdir()) == []


def test_a_card_without_file_modes_is_flashed_and_the_gateway_runs_a_private_copy(
        tmp_path: Path, card: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """FAT (the boot partition) has no modes: every file on it shows as readable by all (here 0755, as with the
    usual fmask=0022). The copy on the card is still checked for content; the installed copy also for modes."""
    cfg = _config_with_inline_key(tmp_path)
    real = write_durable

    def like_fat(path: Path, data: bytes, mode: int = 0o600) -> bool:
        real(path, data, mode)
        os.chmod(path, 0o755)
        return False

    monkeypatch.setattr(fl, "write_durable", like_fat)
    result = fl.flash(cfg, card)
    monkeypatch.setattr(fl, "write_durable", real)
    assert not result.modes_kept
    bundle = card / "denen"
    assert stat.S_IMODE((bundle / "config.yaml").stat().st_mode) == 0o755
    assert stat.S_IMODE((bundle / "secrets" / "node-sos-1.key").stat().st_mode) == 0o755

    # `denen doctor` (report only) looks at the card itself: its modes are not held against it.
    state = tmp_path / "state"
    seen = boot.resolve_active_config(None, [str(bundle)], state_dir=state, install=False)
    assert seen.source == "flashed" and not seen.problems
    assert seen.on_card and seen.path == str(bundle / "config.yaml")
    assert load_config(seen.path, check_modes=not seen.on_card).nodes[2].key_bytes() == bytes.fromhex(KEY_B)
    # On boot the agent installs a copy with mode 600 and checks it, modes included.
    active = boot.resolve_active_config(None, [str(bundle)], state_dir=state)
    assert active.source == "flashed" and not active.problems and not active.on_card
    for f in [state / "flashed" / "config.yaml", *(state / "flashed" / "secrets").iterdir()]:
        assert stat.S_IMODE(f.stat().st_mode) == 0o600
    loaded = load_config(active.path)
    assert loaded.nodes[2].key_bytes() == bytes.fromhex(KEY_B)
    # No warning about the copy's file modes (the river node without a stage rule is warned about, as anywhere).
    assert [str(w) for w in loaded.warnings if "(mode " in str(w)] == []
    # The card's own copy, checked with modes, would be refused: that is why the gateway never runs it.
    with pytest.raises(ConfigError, match="every user on this machine"):
        load_config(bundle / "config.yaml")


def test_a_key_from_the_environment_is_not_copied_and_the_gateway_needs_the_variable(
        tmp_path: Path, card: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    key_c = "3c0000013c0000013c0000013c000001"
    monkeypatch.setenv("DENEN_TEST_KEY_RIVER_1", key_c)
    cfg = _config(tmp_path, extra_node='  - id: "00000301"\n    name: river-1\n    kind: water_level\n'
                                       "    key_env: DENEN_TEST_KEY_RIVER_1\n")
    result = fl.flash(cfg, card)  # the laptop has the variable: the config is checked with it
    bundle = card / "denen"
    assert "key_env: DENEN_TEST_KEY_RIVER_1" in (bundle / "config.yaml").read_text()
    assert not any("river" in s for s in result.secrets)
    assert all(key_c.encode() not in p.read_bytes() for p in bundle.rglob("*") if p.is_file())

    # A gateway without the variable refuses the flash, says which variable is missing, and runs its default.
    monkeypatch.delenv("DENEN_TEST_KEY_RIVER_1")
    fallback = tmp_path / "etc-denen-config.yaml"
    fallback.write_text("# the config written by hand\n")
    refused = boot.resolve_active_config(None, [str(bundle)], state_dir=tmp_path / "state",
                                         default_config=str(fallback))
    assert refused.source == "default"
    assert any("environment variable DENEN_TEST_KEY_RIVER_1 is not set" in p for p in refused.problems)
    # With it (systemd: EnvironmentFile=), the same bundle is installed and runs.
    monkeypatch.setenv("DENEN_TEST_KEY_RIVER_1", key_c)
    active = boot.resolve_active_config(None, [str(bundle)], state_dir=tmp_path / "state")
    assert active.source == "flashed" and load_config(active.path).nodes[2].key_bytes() == bytes.fromhex(key_c)


def test_a_config_with_tls_false_names_no_tls_files(tmp_path: Path) -> None:
    """``tls: false`` (plain TCP on a trusted network, said on purpose) is not a TLS section to bundle."""
    from agent.config import parse_config

    cfg = parse_config("gateway:\n  id: gw-a\n  site: s\njournal:\n  path: /tmp/j.db\nmqtt:\n  host: 10.1.2.3\n"
                       "  tls: false\nradios:\n  - name: lora0\n    driver: rak3172\n    port: loop://\n")
    assert cfg.mqtt.tls is False
    assert fl._secrets_of(cfg) == []
