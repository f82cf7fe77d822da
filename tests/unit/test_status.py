"""Tests of agent.tools.status.journal_path: the journal a config names, found without the pydantic models.

Each answer is compared with what the full loader (agent.config.load_config) says for the same file where the
file is valid, so the two cannot drift apart (default value, relative paths).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from agent.errors import ConfigError
from agent.tools.status import DEFAULT_JOURNAL_PATH, journal_path
from tests.support.gateway_config import MINIMAL_YAML as GATEWAY  # no journal section

REPO = Path(__file__).resolve().parents[2]



def _write(tmp_path: Path, text: str, name: str = "config.yaml") -> str:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    path.chmod(0o600)
    return str(path)


def _one_line(exc: ConfigError) -> str:
    text = str(exc)
    assert len(exc.issues) == 1
    assert "\n" not in text, text
    return text


def test_default_when_absent_matches_the_model(tmp_path: Path) -> None:
    from agent.config import load_config

    path = _write(tmp_path, GATEWAY)
    assert journal_path(path) == DEFAULT_JOURNAL_PATH == "/var/lib/denen/journal.db"
    assert load_config(path).journal.path == DEFAULT_JOURNAL_PATH


@pytest.mark.parametrize("section", ["journal:\n", "journal: {}\n", "journal:\n  quota_mb: 10\n"])
def test_default_when_the_section_has_no_path(tmp_path: Path, section: str) -> None:
    assert journal_path(_write(tmp_path, GATEWAY + section)) == DEFAULT_JOURNAL_PATH


def test_given_absolute_path(tmp_path: Path) -> None:
    path = _write(tmp_path, GATEWAY + "journal:\n  path: /srv/denen/j.db\n")
    assert journal_path(path) == "/srv/denen/j.db"


def test_relative_path_is_resolved_like_the_loader(tmp_path: Path) -> None:
    from agent.config import load_config

    (tmp_path / "etc").mkdir()
    path = _write(tmp_path / "etc", GATEWAY + "journal:\n  path: data/journal.db\n")
    assert journal_path(path) == str(tmp_path / "etc" / "data" / "journal.db")
    assert journal_path(path) == load_config(path).journal.path


def test_byte_order_mark_is_ignored(tmp_path: Path) -> None:
    path = tmp_path / "bom.yaml"
    path.write_bytes(b"\xef\xbb\xbf" + (GATEWAY + "journal:\n  path: /x/j.db\n").encode())
    assert journal_path(str(path)) == "/x/j.db"


def test_invalid_yaml_is_one_line_with_the_place(tmp_path: Path) -> None:
    path = _write(tmp_path, "gateway:\n  id: gw\njournal:\n  path: [unclosed\n")
    with pytest.raises(ConfigError) as info:
        journal_path(path)
    text = _one_line(info.value)
    assert text.startswith(f"{path}:")
    assert "YAML" in text
    assert info.value.issues[0].line is not None


def test_duplicate_journal_key_is_an_error(tmp_path: Path) -> None:
    path = _write(tmp_path, "journal:\n  path: /a.db\njournal:\n  path: /b.db\n")
    with pytest.raises(ConfigError) as info:
        journal_path(path)
    assert "journal" in _one_line(info.value)


@pytest.mark.parametrize("text", ["- gateway\n- journal\n", "just text\n", "42\n"])
def test_top_level_not_a_mapping(tmp_path: Path, text: str) -> None:
    with pytest.raises(ConfigError) as info:
        journal_path(_write(tmp_path, text))
    assert "top level must be a mapping" in _one_line(info.value)


@pytest.mark.parametrize("value", ["/var/lib/denen/journal.db", "[a, b]", "42"])
def test_journal_not_a_mapping(tmp_path: Path, value: str) -> None:
    with pytest.raises(ConfigError) as info:
        journal_path(_write(tmp_path, GATEWAY + f"journal: {value}\n"))
    assert info.value.issues[0].key == "journal"
    assert "must be a mapping" in _one_line(info.value)


@pytest.mark.parametrize("value", ["42", "''", "[a]", "{x: 1}", "null"])
def test_path_not_text(tmp_path: Path, value: str) -> None:
    with pytest.raises(ConfigError) as info:
        journal_path(_write(tmp_path, GATEWAY + f"journal:\n  path: {value}\n"))
    assert info.value.issues[0].key == "journal.path"
    _one_line(info.value)


def test_missing_and_unreadable_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        journal_path(str(tmp_path / "nope.yaml"))
    assert "not found" in _one_line(info.value)
    with pytest.raises(ConfigError) as info:
        journal_path(str(tmp_path))  # a directory
    assert "cannot read" in _one_line(info.value)


def test_not_utf8(tmp_path: Path) -> None:
    path = tmp_path / "latin1.yaml"
    path.write_bytes(b"gateway:\n  name: caf\xe9\n")
    with pytest.raises(ConfigError) as info:
        journal_path(str(path))
    assert info.value.issues[0].line == 2
    assert "UTF-8" in _one_line(info.value)


def test_odd_tag_is_one_line(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        journal_path(_write(tmp_path, "journal: !!python/object:os.system {}\n"))
    _one_line(info.value)


def test_example_configs_agree_with_the_loader(monkeypatch: pytest.MonkeyPatch) -> None:
    from agent.config import load_config
    from agent.dev.demo import EXAMPLE_KEYS, read_env_file

    for name, value in read_env_file(EXAMPLE_KEYS).items():
        monkeypatch.setenv(name, value)
    for example in ("forest-sos.yaml", "trap-field.yaml", "river-station.yaml", "demo.yaml"):
        path = str(REPO / "config" / example)
        assert journal_path(path) == load_config(path, check_modes=False).journal.path, example


def test_status_module_imports_no_pydantic_nor_rich() -> None:
    code = ("import sys, agent.tools.status; "
            "print(sorted(m for m in ('pydantic', 'rich', 'agent.config', 'ruamel.yaml') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def _imported(stderr: str) -> set[str]:
    """Module names from ``-X importtime`` output."""
    return {line.rsplit("|", 1)[-1].strip() for line in stderr.splitlines() if line.startswith("import time:")}


def test_status_json_loads_no_config_models_nor_rich(tmp_path: Path) -> None:
    from agent.gateway.journal import Journal

    Journal(tmp_path / "j.db", quota_bytes=1 << 20).close()
    config = _write(tmp_path, GATEWAY + "journal:\n  path: j.db\n")
    for where in (["-j", str(tmp_path / "j.db")], ["-c", config]):
        proc = subprocess.run([sys.executable, "-X", "importtime", "-m", "agent.cli", "status", *where, "--json"],
                              capture_output=True, text=True, timeout=60, cwd=tmp_path)
        assert proc.returncode == 0, proc.stderr[-2000:]
        assert json.loads(proc.stdout)["journal"]["unsent"] == 0
        loaded = _imported(proc.stderr)
        assert {"pydantic", "agent.config", "rich"} & loaded == set(), where


def test_human_view_shows_quarantined_frames_and_the_values_before_the_refused_part(tmp_path: Path) -> None:
    """An operator reads a quarantined SOS's position in `denen status` itself, not only in --json; the journal's
    words (lamp state, severity) come out in the user's language, the record as it is."""
    from agent.gateway.journal import Journal  # noqa: PLC0415
    from agent.gateway.reading import Quarantined  # noqa: PLC0415

    journal = tmp_path / "journal.db"
    j = Journal(journal, quota_bytes=1 << 20)
    values = '{"gps_lat_deg":35.78,"gps_lon_deg":139.02}'
    state = {"schema": 1, "gateway": "gw-1", "ts_us": 1796446992_000000,
             "siren": {"configured": True, "on": True, "why": "test", "alert": None, "silenced": []},
             "lamp": {"configured": True, "state": "no_backhaul"}, "held": {"active": False},
             "alerts": [{"key": "sos:0000a001", "severity": "emergency", "since_us": 1796446990_000000,
                         "message": "SOS発信", "repeating": True, "acknowledged_by": None}]}
    j.commit(quarantined=[
        Quarantined(1796446992_000000, "mesh0", "0000a001", "lpp_unknown_type",
                    f"LPP 0x99; values before it: {values}", b"\x01"),
        Quarantined(1796446993_000000, "lora0", None, "too_short", "frame of 3 bytes", b"\x01\x02\x03"),
    ], meta={"gateway_state": json.dumps(state)})
    j.close()
    run = [sys.executable, "-m", "agent.cli", "status", "-j", str(journal)]
    base = {k: v for k, v in os.environ.items() if k not in ("LC_ALL", "LC_MESSAGES", "LANGUAGE")}
    en = subprocess.run(run, capture_output=True, text=True, timeout=60,
                        env={**base, "LANG": "C.UTF-8", "TZ": "Asia/Tokyo", "COLUMNS": "80"})
    ja = subprocess.run(run, capture_output=True, text=True, timeout=60,
                        env={**base, "LANG": "ja_JP.UTF-8", "TZ": "Asia/Tokyo", "COLUMNS": "80"})
    assert en.returncode == ja.returncode == 0, en.stderr + ja.stderr
    lines = en.stdout.splitlines()
    at = lines.index("quarantined frames (latest 2):")
    # Newest first; the values on a line of their own, exactly as the gateway recorded them.
    assert lines[at + 1] == "  2026-12-05 14:03:13 JST  node ?  lora0  too_short: frame of 3 bytes"
    assert lines[at + 2] == "  2026-12-05 14:03:12 JST  node 0000a001  mesh0  lpp_unknown_type: LPP 0x99"
    assert lines[at + 3] == f"    values before it: {values}"
    assert "lamp: no backhaul" in en.stdout and "siren: sounding (test)" in en.stdout
    assert "  emergency  " in en.stdout
    assert "隔離したフレーム（最新 2 件）:" in ja.stdout and f"    隔離前に読めた値: {values}" in ja.stdout
    assert "表示灯: 回線断" in ja.stdout and "サイレン: 鳴動中（試験）" in ja.stdout and "  緊急  " in ja.stdout
