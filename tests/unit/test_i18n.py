"""Japanese for the installer-facing commands: the catalog against the code, the committed .mo against its .po,
and `denen doctor`, `status`, `monitor`, `flash` run in Japanese against a journal and config made here: Japanese
text, the same exit codes, the same --json, tables aligned by terminal cell width at 80 columns, and golden lines
for one error of each kind in both languages."""

from __future__ import annotations

import ast
import configparser
import io
import json
import os
import re
import socket
import string
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from babel.messages.extract import extract_from_file
from babel.messages.mofile import write_mo
from babel.messages.pofile import read_po
from rich.cells import cell_len

from agent import i18n
from agent.gateway.journal import Journal
from agent.gateway.reading import NodeState

REPO = Path(__file__).resolve().parents[2]
LOCALE = REPO / "agent" / "locale"
PO = LOCALE / "ja" / "LC_MESSAGES" / "denen.po"
MO = LOCALE / "ja" / "LC_MESSAGES" / "denen.mo"
KEYWORDS = {"_": None, "N_": None, "gettext": None, "ngettext": (1, 2)}
JA = {"LANG": "ja_JP.UTF-8", "LC_ALL": "", "LC_MESSAGES": "", "LANGUAGE": ""}
EN = {"LANG": "C.UTF-8", "LC_ALL": "", "LC_MESSAGES": "", "LANGUAGE": ""}


def _sources() -> list[Path]:
    """The files agent/locale/babel.cfg extracts from."""
    cfg = configparser.ConfigParser()
    cfg.read(LOCALE / "babel.cfg")
    patterns = [s.split(":", 1)[1].strip() for s in cfg.sections() if s.startswith("python:")]
    files = sorted({f for pattern in patterns for f in REPO.glob(pattern) if f.is_file()})
    assert patterns and files, patterns
    return files


def _catalog() -> Any:
    with PO.open("rb") as f:
        return read_po(f, locale="ja")


@pytest.fixture(autouse=True)
def _language_from_environment() -> Any:
    yield
    i18n.set_language(None)


# ---------------------------------------------------------------------------------------------------------------
# The catalog


def test_every_message_in_the_code_has_a_japanese_translation() -> None:
    used: set[str] = set()
    for path in _sources():
        for _lineno, message, _comments, _context in extract_from_file("python", str(path), keywords=KEYWORDS):
            used.add(message if isinstance(message, str) else message[0])
    catalog = _catalog()
    translated = {m.id: m.string for m in catalog if m.id}
    assert len(used) > 250
    assert sorted(used - set(translated)) == [], "run the commands in agent/locale/README.md"
    assert sorted(m for m in used if not translated[m].strip()) == []
    assert sorted(set(translated) - used) == [], "the .po holds messages no code uses: pybabel update"
    assert not any("fuzzy" in m.flags for m in catalog if m.id)


def _lookups(tree: ast.AST) -> list[ast.Call]:
    return [node for node in ast.walk(tree) if isinstance(node, ast.Call) and isinstance(node.func, ast.Name)
            and node.func.id in KEYWORDS]


def test_no_message_is_formatted_before_its_lookup() -> None:
    bad = []
    count = 0
    for path in _sources():
        for call in _lookups(ast.parse(path.read_text(encoding="utf-8"))):
            count += 1
            for arg in call.args[:2 if call.func.id == "ngettext" else 1]:
                formatted = (isinstance(arg, ast.JoinedStr | ast.BinOp)
                             or (isinstance(arg, ast.Call) and isinstance(arg.func, ast.Attribute)
                                 and arg.func.attr == "format"))
                if formatted:
                    bad.append(f"{path.relative_to(REPO)}:{call.lineno}")
    assert count > 250
    assert bad == []


def _binds_underscore(tree: ast.AST) -> list[int]:
    """Lines where ``_`` is bound (a throwaway ``for _ in``, ``a, _ = ...``, ``lambda *_``): inside a function it
    hides the lookup for the whole function."""
    found = [n.lineno for n in ast.walk(tree) if isinstance(n, ast.Name) and n.id == "_"
             and isinstance(n.ctx, ast.Store)]
    found += [n.lineno for n in ast.walk(tree) if isinstance(n, ast.arg) and n.arg == "_"]
    return found


def _imports_lookup(tree: ast.AST) -> bool:
    """The module takes ``_`` (the translation lookup) from agent.i18n."""
    return any(isinstance(n, ast.ImportFrom) and n.module == "agent.i18n" and any(a.name == "_" for a in n.names)
               for n in ast.walk(tree))


def test_no_module_hides_the_lookup_behind_a_throwaway_underscore() -> None:
    trees = {str(p.relative_to(REPO)): ast.parse(p.read_text(encoding="utf-8")) for p in _sources()}
    users = {name: tree for name, tree in trees.items() if _imports_lookup(tree)}
    assert len(users) >= 8, sorted(users)  # the commands that speak to installers
    bound = {name: _binds_underscore(tree) for name, tree in users.items()}
    assert {k: v for k, v in bound.items() if v} == {}
    assert _binds_underscore(ast.parse("def f():\n    for _ in x:\n        pass\n    a, _ = b\n")) == [2, 4]


def test_the_checker_finds_a_formatted_lookup() -> None:
    source = 'a = _(f"{n} nodes")\nb = _("%d nodes" % n)\nc = _("{n} nodes".format(n=n))\nd = _("{n} nodes")\n'
    flagged = [c.lineno for c in _lookups(ast.parse(source))
               if isinstance(c.args[0], ast.JoinedStr | ast.BinOp)
               or (isinstance(c.args[0], ast.Call) and getattr(c.args[0].func, "attr", "") == "format")]
    assert flagged == [1, 2, 3]


def _placeholders(text: str, percent: bool) -> list[str]:
    if percent:  # argparse's own texts
        return sorted(re.findall(r"%\(\w+\)[a-z]|%[a-z]", text))
    return sorted(name for _, name, _, _ in string.Formatter().parse(text) if name is not None)


def test_placeholders_are_the_same_in_both_languages() -> None:
    percent = set(i18n.ARGPARSE_MESSAGES)
    wrong = [(m.id, m.string) for m in _catalog() if m.id
             and _placeholders(m.id, m.id in percent) != _placeholders(m.string, m.id in percent)]
    assert wrong == []


def test_the_committed_mo_is_what_the_po_compiles_to() -> None:
    out = io.BytesIO()
    write_mo(out, _catalog())
    assert MO.read_bytes() == out.getvalue(), "run pybabel compile (agent/locale/README.md)"


def test_language_from_the_environment_and_the_option(monkeypatch: pytest.MonkeyPatch) -> None:
    for var in ("LC_ALL", "LC_MESSAGES", "LANG"):
        monkeypatch.delenv(var, raising=False)
    cases = [({}, "en"), ({"LANG": "ja_JP.UTF-8"}, "ja"), ({"LANG": "ja_JP.UTF-8", "LC_MESSAGES": "C"}, "en"),
             ({"LANG": "C", "LC_MESSAGES": "ja_JP.UTF-8"}, "ja"), ({"LC_ALL": "ja_JP.eucJP", "LANG": "C"}, "ja"),
             ({"LANG": "de_DE.UTF-8"}, "en")]
    for env, want in cases:
        for var in ("LC_ALL", "LC_MESSAGES", "LANG"):
            monkeypatch.delenv(var, raising=False)
        for k, v in env.items():
            monkeypatch.setenv(k, v)
        i18n.set_language(None)
        assert i18n.language() == want, env
    i18n.set_language("ja")
    assert i18n._("nodes") == "ノード"
    assert i18n._("a text with no translation") == "a text with no translation"
    i18n.set_language("en")
    assert i18n._("nodes") == "nodes"
    with pytest.raises(ValueError, match="no messages in language 'fr'"):
        i18n.set_language("fr")


def test_local_time_names_the_zone(monkeypatch: pytest.MonkeyPatch) -> None:
    ts_us = 1796446992 * 1_000_000  # 2026-12-05 05:03:12 UTC
    for zone, want in (("Asia/Tokyo", "2026-12-05 14:03:12 JST"), ("UTC", "2026-12-05 05:03:12 UTC"),
                       ("Asia/Kolkata", "2026-12-05 10:33:12 IST"),
                       ("America/Sao_Paulo", "2026-12-05 02:03:12 -0300")):
        monkeypatch.setenv("TZ", zone)
        time.tzset()
        assert i18n.local_time(ts_us) == want, zone
    monkeypatch.setenv("TZ", "Asia/Tokyo")
    time.tzset()
    assert i18n.local_time(1796446992, us=False, date=False) == "14:03:12 JST"
    assert i18n.local_time(None) == "?" and i18n.local_time("soon") == "?"  # type: ignore[arg-type]
    monkeypatch.delenv("TZ")
    time.tzset()


def test_help_wraps_by_terminal_cells() -> None:
    lines = i18n.wrap_cells("設定ファイル（既定: /etc/denen/config.yaml）を  読む", 20)
    assert lines == ["設定ファイル（既定:", "/etc/denen/config.yaml", "）を 読む"]
    assert all(i18n.cell_width(line) <= 20 for line in lines if "/" not in line)
    assert i18n.wrap_cells("plain words wrap at spaces", 11) == ["plain words", "wrap at", "spaces"]
    assert i18n.cell_width("ノードabc") == 9


# ---------------------------------------------------------------------------------------------------------------
# The commands, in a fresh interpreter each


def denen(*args: str, lang: dict[str, str], tz: str = "Asia/Tokyo") -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "agent.cli", *args], cwd=REPO, capture_output=True, text=True,
                          timeout=60, env={**os.environ, "COLUMNS": "80", "TZ": tz, **lang})


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def site(tmp_path: Path) -> dict[str, Path]:
    """A gateway config and its journal: a configured node heard now, one late, one never heard, and two nodes the
    config does not know whose names in the journal are Japanese (config node names are a-z, 0-9, _ and -); the
    broker's port is closed and the radio's device absent, so doctor fails the same way every time."""
    journal = tmp_path / "journal.db"
    cfg = tmp_path / "gw.yaml"
    cfg.write_text(f"""
gateway: {{id: gw-okutama-01, site: okutama}}
journal: {{path: {journal}}}
mqtt: {{host: 127.0.0.1, port: {_free_port()}}}
radios:
  - name: lora0
    driver: rak3172
    port: {tmp_path / "no-such-lora0"}
    p2p: {{spreading_factor: 10}}
nodes:
  - {{id: "00000101", name: sos-trailhead, kind: sos, unauthenticated: flag, interval_s: 3600}}
  - {{id: "00000201", name: trap-north-3, kind: trap, unauthenticated: flag, interval_s: 600}}
  - {{id: "00000301", name: rain-tama, kind: rain, unauthenticated: flag, interval_s: 600}}
unknown_nodes: accept
""", encoding="utf-8")
    now = time.time_ns() // 1000
    j = Journal(journal, quota_bytes=1 << 20)
    j.commit(nodes=[
        NodeState("00000101", "sos-trailhead", 7, now - 30_000_000, "lora0", -118.0, -9.0, 3.71, 40, 2),
        NodeState("00000201", "trap-north-3", 3, now - 3_600_000_000, "lora0", -131.0, -16.0, 2.9, 5, 9),
        NodeState("0000a001", "登山口SOS", 4, now - 20_000_000, "lora0", -121.0, -12.5, 3.3, 8, 0),
        NodeState("0000a002", "わな北3号多摩川水位計の長い名前", 2, now - 40_000_000, "lora0", -100.0, 2.0, 3.5, 3, 1),
        NodeState("0000ffff", None, 1, now - 1_000_000, "lora0", -80.0, 9.5, None, 1, 0),
    ])
    j.close()
    return {"config": cfg, "journal": journal}


def _table_rows(out: str) -> list[str]:
    """The lines of rich tables: bordered (│, ┃) or the monitor's simple head (a ━/─ rule below the header)."""
    return [line for line in out.splitlines() if "│" in line or "┃" in line]


def _assert_aligned(out: str) -> None:
    rows = _table_rows(out)
    assert rows, out
    widths = {cell_len(r) for r in rows}
    assert len(widths) == 1 and max(widths) <= 80, [(cell_len(r), r) for r in rows]
    # Column borders at the same cells in every row: a wide character counted as one would shift them.
    def borders(row: str) -> list[int]:
        cells, at = [], 0
        for ch in row:
            if ch in "│┃":
                cells.append(at)
            at += cell_len(ch)
        return cells
    assert len({tuple(borders(r)) for r in rows}) == 1, rows


def test_status_in_japanese(site: dict[str, Path]) -> None:
    ja = denen("status", "-j", str(site["journal"]), lang=JA)
    en = denen("status", "-j", str(site["journal"]), lang=EN)
    assert ja.returncode == en.returncode == 0, ja.stderr
    for word in ("ゲートウェイ", "エージェント", "ノード", "最終受信", "秒前", "登山口SOS", "わな北3号多摩…",
                 "不正フレーム"):
        assert word in ja.stdout, word
    assert "last seen" in en.stdout and "最終受信" not in en.stdout
    for out, ago in ((ja.stdout, "秒前"), (en.stdout, "s ago")):
        rows = [line for line in out.splitlines() if re.match(r"[0-9a-f]{8}  ", line)]
        assert len(rows) == 5, out
        # Right-aligned figures end at the same cell in every row, whatever the width of the name before them.
        assert len({cell_len(r) for r in rows}) == 1 and cell_len(rows[0]) <= 80, rows
        assert len({cell_len(r[:r.index(ago) + len(ago)]) for r in rows}) == 1, rows
        assert all(cell_len(line) <= 80 for line in out.splitlines())


def _without_ages(doc: Any) -> Any:
    """A JSON document without what changes between two runs a moment apart (ages, now)."""
    if isinstance(doc, dict):
        return {k: _without_ages(v) for k, v in doc.items() if not k.endswith(("age_s", "since_us")) and k != "ts_us"}
    if isinstance(doc, list):
        return [_without_ages(v) for v in doc]
    return doc


def test_status_json_is_the_same_in_both_languages(site: dict[str, Path]) -> None:
    ja = denen("status", "--json", "-j", str(site["journal"]), lang=JA)
    en = denen("status", "--json", "-j", str(site["journal"]), lang=EN)
    assert ja.returncode == en.returncode == 0
    assert _without_ages(json.loads(ja.stdout)) == _without_ages(json.loads(en.stdout))
    assert not re.search(r"[\u3040-\u30ff]", ja.stdout.replace("わな北3号多摩川水位計の長い名前", "")
                         .replace("登山口SOS", ""))


def test_monitor_once_in_japanese(site: dict[str, Path]) -> None:
    ja = denen("monitor", "--once", "-c", str(site["config"]), lang=JA)
    en = denen("monitor", "--once", "-c", str(site["config"]), lang=EN)
    assert ja.returncode == en.returncode == 0, ja.stderr
    for word in ("ノード", "名前", "受信数", "最悪リンク", "遅延", "登山口SOS", "わな北3号", "履歴", "JST"):
        assert word in ja.stdout, word
    assert "worst" in en.stdout and "JST" in en.stdout
    for out in (ja.stdout, en.stdout):
        lines = out.splitlines()
        # The simple-head table: every row as wide as the rule under the header, within 80 cells.
        rule = next(i for i, line in enumerate(lines) if set(line.strip()) <= set("━─ ") and line.strip())
        body = [line for line in lines[rule - 2:rule + 5] if line.strip()]
        assert all(cell_len(line) <= 80 for line in lines), [(cell_len(x), x) for x in lines]
        assert all(cell_len(line) <= cell_len(lines[rule]) for line in body), body
        # Each node's name starts at the same cell in every row (the name column is aligned by cell width).
        starts = {cell_len(line[:line.index(name)]) for line in lines
                  for name in ("sos-trailhead", "trap-north-3", "登山口SOS", "わな北3号") if name in line}
        assert len(starts) == 1, lines


def test_monitor_wide_names_kinds_in_the_glossary_words(site: dict[str, Path]) -> None:
    out = subprocess.run([sys.executable, "-m", "agent.cli", "monitor", "--once", "--wide", "-c", str(site["config"])],
                         cwd=REPO, capture_output=True, text=True, timeout=60,
                         env={**os.environ, "COLUMNS": "160", "TZ": "Asia/Tokyo", **JA})
    assert out.returncode == 0, out.stderr
    rows = {line.split()[0]: line for line in out.stdout.splitlines() if re.match(r"[0-9a-f]{8} ", line)}
    assert " SOS " in rows["00000101"] and " わな " in rows["00000201"], out.stdout


def test_monitor_json_is_the_same_in_both_languages(site: dict[str, Path]) -> None:
    ja = denen("monitor", "--once", "--json", "-c", str(site["config"]), lang=JA)
    en = denen("monitor", "--once", "--json", "-c", str(site["config"]), lang=EN)
    assert ja.returncode == en.returncode == 0
    assert _without_ages(json.loads(ja.stdout)) == _without_ages(json.loads(en.stdout))


def test_doctor_in_japanese_fails_with_the_same_exit_code(site: dict[str, Path]) -> None:
    ja = denen("doctor", "-c", str(site["config"]), "--timeout", "1", lang=JA)
    en = denen("doctor", "-c", str(site["config"]), "--timeout", "1", lang=EN)
    assert ja.returncode == en.returncode == 2, ja.stdout + ja.stderr
    flat = " ".join(ja.stdout.split())
    for words in ("点検項目", "結果", "対処", "失敗", "ブローカー", "接続を拒否されました", "がありません", "JST"):
        assert words in flat, words
    assert "refused" in en.stdout and "not present" in " ".join(en.stdout.split())
    # Japanese runs have no spaces to wrap at: they fold at the cell's edge, never cut short with "…".
    assert "…" not in ja.stdout and "…" not in en.stdout
    _assert_aligned(ja.stdout)
    _assert_aligned(en.stdout)


def test_doctor_json_is_the_same_in_both_languages(site: dict[str, Path]) -> None:
    ja = denen("doctor", "--json", "-c", str(site["config"]), "--timeout", "1", lang=JA)
    en = denen("doctor", "--json", "-c", str(site["config"]), "--timeout", "1", lang=EN)
    assert ja.returncode == en.returncode == 2

    def steady(doc: dict[str, Any]) -> dict[str, Any]:
        for check in doc["checks"]:
            if check["name"] == "clock":
                check.pop("summary")
                check["details"].pop("now")
            if check["name"] == "journal":  # free disk space moves
                check.pop("summary")
                check["details"].pop("free_bytes")
        return doc

    assert steady(json.loads(ja.stdout)) == steady(json.loads(en.stdout))


def test_help_in_japanese_starts_without_heavy_modules() -> None:
    probe = ("import sys\nfrom agent.cli import main\ntry:\n    main(['--help'])\nexcept SystemExit:\n    pass\n"
             "print(sorted(m for m in ('rich', 'pydantic', 'babel') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", probe], cwd=REPO, capture_output=True, text=True, timeout=60,
                         env={**os.environ, **JA})
    assert out.stdout.startswith("使い方: denen")
    assert "コマンド:" in out.stdout and "オプション:" in out.stdout
    assert out.stdout.strip().splitlines()[-1] == "[]"
    for command in ("doctor", "monitor", "status", "flash", "config"):
        shown = denen(command, "--help", lang=JA)
        assert shown.returncode == 0 and "\n例:\n  denen " in shown.stdout, shown.stdout
        # Wrapped by terminal cells, as the terminal shows them (the examples keep their own layout).
        options = shown.stdout.split("\n例:")[0]
        assert max(cell_len(line) for line in options.splitlines()) <= 80, options
    assert "\n  denen monitor --wide " in denen("monitor", "--help", lang=JA).stdout
    forced = denen("--lang", "ja", "status", "--help", lang=EN)
    assert forced.returncode == 0 and "機械可読な出力" in forced.stdout
    english = denen("--lang", "en", "status", "--help", lang=JA)
    assert english.returncode == 0 and "machine-readable output" in english.stdout


# ---------------------------------------------------------------------------------------------------------------
# Golden lines: one error of each kind, in both languages


def test_golden_usage_error() -> None:
    ja = denen("status", "--bogus", lang=JA)
    en = denen("status", "--bogus", lang=EN)
    assert ja.returncode == en.returncode == 2
    assert ja.stderr.splitlines() == ["使い方: denen [-h] [--version] [--debug] [--lang {ja,en}] COMMAND ...",
                                      "denen: エラー: 認識できない引数: --bogus"]
    assert en.stderr.splitlines() == ["usage: denen [-h] [--version] [--debug] [--lang {ja,en}] COMMAND ...",
                                      "denen: error: unrecognized arguments: --bogus"]


def test_golden_agent_error(tmp_path: Path) -> None:
    missing = tmp_path / "none.db"
    ja = denen("status", "-j", str(missing), lang=JA)
    en = denen("status", "-j", str(missing), lang=EN)
    assert ja.returncode == en.returncode == 1
    assert ja.stderr == (f"denen: エラー: {missing} にジャーナルがありません（この設定でエージェントを実行しましたか？ "
                         "journal.path を確認してください）\n")
    assert en.stderr == f"denen: error: no journal at {missing} (has the agent run with this config? see journal.path)\n"


def test_golden_config_error_keeps_its_machine_readable_prefix(tmp_path: Path) -> None:
    cfg = tmp_path / "gw.yaml"
    cfg.write_text("journal:\n  path: [1, 2]\n", encoding="utf-8")
    ja = denen("status", "-c", str(cfg), lang=JA)
    en = denen("status", "-c", str(cfg), lang=EN)
    assert ja.returncode == en.returncode == 2
    assert ja.stderr.startswith(f"{cfg}: journal.path: ファイルのパス（テキスト）にしてください")
    assert en.stderr.startswith(f"{cfg}: journal.path: must be a file path (text)")


def test_golden_flash_error(tmp_path: Path, site: dict[str, Path]) -> None:
    target = tmp_path / "no-card"
    ja = denen("flash", str(site["config"]), str(target), lang=JA)
    en = denen("flash", str(site["config"]), str(target), lang=EN)
    assert ja.returncode == en.returncode == 1
    assert ja.stderr == (f"denen: エラー: 書き込み先 {target} がありません（ヒント: SD カードか USB メモリーを挿し、"
                         "マウント先のフォルダーを指定してください。例 /media/$USER/bootfs。`lsblk -o NAME,MOUNTPOINT` "
                         "で一覧できます）\n")
    assert en.stderr == (f"denen: error: target {target} does not exist (hint: insert the SD card or USB stick and "
                         "give the folder it is mounted at, e.g. /media/$USER/bootfs; `lsblk -o NAME,MOUNTPOINT` "
                         "lists them)\n")


def test_golden_doctor_check(site: dict[str, Path]) -> None:
    from agent.tools import doctor  # noqa: PLC0415

    for lang, want in (("ja", f"{site['config'].parent / 'no-such-lora0'} がありません"),
                       ("en", f"{site['config'].parent / 'no-such-lora0'} is not present")):
        i18n.set_language(lang)
        [radio] = [c for c in doctor.run_checks(str(site["config"]), timeout_s=0.5) if c.name == "radio lora0"]
        assert (radio.status, radio.summary) == ("fail", want)



GOLDEN_CONFIG = """gateway: {id: gw-1, site: okutama}
journal: {path: journal.db, quota_mb: -5}
mqtt: {host: 127.0.0.1, port: notaport, username: denen, password_env: DENEN_TEST_UNSET_PASSWORD}
radios:
  - name: lora0
    driver: rak3172
    port: /dev/null
    p2p: {frequency_hz: 920700000, spreading_factr: 9}
nodes:
  - {id: "00000101", name: sos-trailhead, kind: sos, unauthenticated: flag, key: 73914}
"""

#: (place and key, English, Japanese) of each line `denen config validate` prints for GOLDEN_CONFIG.
GOLDEN_LINES = [
    ("2:29: journal.quota_mb",  # out of range, with its unit; the hint is the key's description
     "-5 MB is out of range: quota_mb must be above 0 MB (hint: Disk quota of the journal in megabytes (MB, 1 MB = "
     "1048576 bytes). When full, the lowest priority readings are evicted first, oldest first; SOS and alarms never "
     "are.)",
     "-5 MB は範囲外です: quota_mb は 0 MB より大きい値にしてください（ヒント: ジャーナルのディスク容量の上限（MB、1 MB = "
     "1048576 バイト）。いっぱいになると優先度の低い読み取りから、古い順に消します。SOS発信と警報は消しません。）"),
    ("3:25: mqtt.port",  # wrong type
     "port must be a whole number (got 'notaport') (hint: TCP port of the MQTT broker (1883 plain, 8883 with TLS).)",
     "port は整数にしてください（指定値: 'notaport'）（ヒント: MQTT ブローカーの TCP ポート（暗号化なしは 1883、TLS は 8883）。）"),
    ("3:58: mqtt.password_env",  # a secret that is not there
     "environment variable DENEN_TEST_UNSET_PASSWORD is not set (hint: set DENEN_TEST_UNSET_PASSWORD in the "
     "service's environment (systemd: EnvironmentFile=/etc/denen/secrets.env, mode 600); to check the file with "
     "denen config validate, export it in your shell too)",
     "環境変数 DENEN_TEST_UNSET_PASSWORD が設定されていません（ヒント: サービスの環境に DENEN_TEST_UNSET_PASSWORD を設定して"
     "ください（systemd: EnvironmentFile=/etc/denen/secrets.env、モード 600）。denen config validate で確認するときは、"
     "シェルでも export してください）"),
    ("8:11: radios[0].p2p.frequency_hz",  # a driver's own check (drivers/, which never imports the agent)
     "920700000 Hz is not on the 200 kHz channel grid; nearest channel: 920800000 Hz (hint: ARIB STD-T108 allows "
     "LoRa at 920600000..923400000 Hz in 200 kHz steps (920600000, 920800000, ... 923400000))",
     "920700000 Hz は 200 kHz 刻みのチャネルに乗っていません。最も近いチャネル: 920800000 Hz（ヒント: ARIB STD-T108 で LoRa "
     "に使えるのは 920600000〜923400000 Hz の 200 kHz 刻みです（920600000, 920800000, ... 923400000））"),
    ("8:36: radios[0].p2p.spreading_factr",  # unknown key
     "unknown key 'spreading_factr' (hint: did you mean 'spreading_factor'? valid keys here: frequency_hz, "
     "spreading_factor, bandwidth_khz, coding_rate, preamble, tx_power_dbm)",
     "不明なキー 'spreading_factr'（ヒント: 'spreading_factor' のことですか？ ここで使えるキー: frequency_hz, "
     "spreading_factor, bandwidth_khz, coding_rate, preamble, tx_power_dbm）"),
    ("10:77: nodes[0].key",  # a secret of the wrong shape: its length is told, never its digits
     "key must be 32 hex digits (16 bytes), but has 5 (hint: an AES-128 node key is 32 hex digits (16 bytes), e.g. "
     "generated with: openssl rand -hex 16)",
     "key の値は 16 進数 32 桁（16 バイト）にしてください。いまは 5 桁です（ヒント: AES-128 のノード鍵は 16 進数 32 桁"
     "（16 バイト）です。例えば openssl rand -hex 16 で作れます）"),
]


def _validate(path: Path, lang: dict[str, str]) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "DENEN_TEST_UNSET_PASSWORD"}
    return subprocess.run([sys.executable, "-m", "agent.cli", "config", "validate", str(path)], cwd=REPO,
                          capture_output=True, text=True, timeout=60, env={**env, "COLUMNS": "80", **lang})


def test_golden_config_errors_of_each_kind(tmp_path: Path) -> None:
    """Unknown key, wrong type, out of range with its unit, a missing secret, a driver's own check and a secret
    that is never shown: the same `file:line:col: key:` prefix in both languages, the rest in the user's."""
    ja, en = _assert_golden_lines(tmp_path / "gw.yaml", GOLDEN_CONFIG, GOLDEN_LINES)
    assert "73914" not in ja + en


def _assert_golden_lines(cfg: Path, text: str, lines: list[tuple[str, str, str]]) -> tuple[str, str]:
    """Validate ``text`` written to ``cfg`` in both languages, check each line (place, English, Japanese), and
    return the two outputs."""
    cfg.write_text(text, encoding="utf-8")
    cfg.chmod(0o600)
    ja, en = _validate(cfg, JA), _validate(cfg, EN)
    assert ja.returncode == en.returncode == 2
    assert en.stderr.splitlines() == [f"{cfg}:{place}: {english}" for place, english, _ in lines]
    assert ja.stderr.splitlines() == [f"{cfg}:{place}: {japanese}" for place, _, japanese in lines]
    return ja.stderr, en.stderr


def test_golden_yaml_syntax_error(tmp_path: Path) -> None:
    cfg = tmp_path / "gw.yaml"
    cfg.write_text("gateway:\n  id: gw-1\n  site: okutama: north\n", encoding="utf-8")
    ja, en = _validate(cfg, JA), _validate(cfg, EN)
    assert ja.returncode == en.returncode == 2
    # The parser's own words stay English in both: they are what a search for the error finds.
    assert en.stderr == (f"{cfg}:3:16: YAML syntax error: mapping values are not allowed here (hint: a value "
                         "containing ': ' must be put in quotes, or this line is indented wrongly)\n")
    assert ja.stderr == (f"{cfg}:3:16: YAML の構文エラー: mapping values are not allowed here（ヒント: ': ' を含む値は"
                         "引用符で囲んでください。または、この行の字下げが間違っています）\n")


def test_config_messages_keep_their_template_and_values() -> None:
    """A driver's message is English where it is built (drivers never import the agent) and carries its template,
    so the agent shows it in the user's language; a value is never looked up in the catalog."""
    from drivers.settings import N_, Problems, Text, problem  # noqa: PLC0415

    err = problem(N_("unknown radio driver '{value}'"), N_("valid drivers"), value="nodes")
    assert isinstance(err, Problems) and str(err) == "unknown radio driver 'nodes' (hint: valid drivers)"
    [found] = err.problems
    assert found.message == "unknown radio driver 'nodes'" and isinstance(found.message, Text)
    i18n.set_language("ja")
    assert i18n.translate(found.message) == "不明な無線ドライバー 'nodes'"
    assert i18n.translate(Text(N_("{what} {path} does not exist"), what=Text(N_("key file")), path="a.key")) == \
        "鍵ファイル a.key がありません"
    assert i18n.translate("not a message") == "not a message"
    i18n.set_language("en")
    assert i18n.translate(found.message) == "unknown radio driver 'nodes'"


def test_dead_letter_commands_in_japanese() -> None:
    from agent.bridge import deadletter_cli  # noqa: PLC0415

    for lang, want in (("ja", "'soon' は時刻ではありません"), ("en", "'soon' is not a time: give an age")):
        i18n.set_language(lang)
        with pytest.raises(ValueError) as err:
            deadletter_cli.parse_time("soon")
        assert str(err.value).startswith(want)
    shown = denen("bridge", "dead-letters", "purge", "--help", lang=JA)
    assert shown.returncode == 0, shown.stderr
    assert "保管庫から項目を削除する（証拠なので --yes が必要）" in shown.stdout
    assert "\n例:\n  denen bridge dead-letters purge --before 30d --yes" in shown.stdout


#: A bridge config (`denen config validate` picks the bridge's schema from its `sink:`) and the lines it gets:
#: a range error whose hint is the key's description, a required secret, and a key another sink type uses.
GOLDEN_BRIDGE = "mqtt: {client_id: bridge-1, keepalive_s: 2}\nsink:\n  type: v2\n  org: okutama\n  bucket: denen\n" \
    "  database: denen\n"
GOLDEN_BRIDGE_LINES = [
    ("1:29: mqtt.keepalive_s",
     "2 s is out of range: keepalive_s must be between 5 and 3600 s (hint: MQTT keepalive in seconds (5..3600).)",
     "2 s は範囲外です: keepalive_s は 5〜3600 s の範囲にしてください（ヒント: MQTT のキープアライブ（秒、5〜3600）。）"),
    ("2:1: sink.token",
     "a v2 sink needs token, token_file or token_env (hint: an InfluxDB API token with write access to the bucket "
     "('user:password' for the 1.8 compatibility API))",
     "v2 のシンクには token、token_file、token_env のどれかが必要です（ヒント: バケットへの書き込み権限のある InfluxDB の "
     "API トークン（1.8 互換 API では 'user:password'））"),
    ("6:3: sink.database",
     "'database' is not used by a v2 sink (hint: a v2 sink takes: url, timeout_s, org, bucket, token, token_file, "
     "token_env; remove 'database' or change type)",
     "'database' は v2 のシンクでは使いません（ヒント: v2 のシンクで使えるのは url, timeout_s, org, bucket, token, "
     "token_file, token_env です。'database' を削除するか、type を変えてください）"),
]

#: A console config (top-level `http:` and `links:`): a field's own check and a secret given neither way, whose
#: message is built of translated words ("the link secret").
GOLDEN_CONSOLE = "http:\n  public_url: ftp://ack.example.jp\nlinks:\n  ttl_s: 3600\n"
GOLDEN_CONSOLE_LINES = [
    ("2:3: http.public_url",
     "public_url 'ftp://ack.example.jp' is not an http:// or https:// URL (hint: e.g. https://ack.example.jp (what "
     "the TLS reverse proxy publishes))",
     "public_url 'ftp://ack.example.jp' は http:// か https:// の URL ではありません（ヒント: 例 https://ack.example.jp"
     "（TLS リバースプロキシが公開する URL））"),
    ("3:1: links",
     "links needs the link secret: secret_file or secret_env (hint: e.g. secret_file: secrets/link-secret (openssl "
     "rand -base64 48 > it; chmod 600))",
     "links にはリンクの秘密鍵が必要です: secret_file か secret_env（ヒント: 例 secret_file: secrets/link-secret"
     "（openssl rand -base64 48 で作り、chmod 600））"),
]


@pytest.mark.parametrize("name", ["bridge", "console"])
def test_golden_backend_config_errors(tmp_path: Path, name: str) -> None:
    """The bridge's and the console's config problems in both languages, with the same machine-readable prefix."""
    text, lines = {"bridge": (GOLDEN_BRIDGE, GOLDEN_BRIDGE_LINES),
                   "console": (GOLDEN_CONSOLE, GOLDEN_CONSOLE_LINES)}[name]
    _assert_golden_lines(tmp_path / f"{name}.yaml", text, lines)


class _HeldJournal:
    """What ClockWatch reads of a journal: 2 readings of an earlier boot given up, 3 held now."""

    def adopt_boot(self, boot_id: object) -> int:
        return 2

    def unsynced_count(self, *lanes: object) -> int:
        return 3


@pytest.mark.parametrize("lang", ["en", "ja"])
def test_the_agents_clock_lines_in_the_operators_language(lang: str, caplog: pytest.LogCaptureFixture,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    from agent.gateway import clock, clockwatch  # noqa: PLC0415

    monkeypatch.setattr(clock, "synced", lambda: False)
    monkeypatch.setenv("TZ", "Asia/Tokyo")
    time.tzset()
    i18n.set_language(lang)
    caplog.set_level("INFO", logger="agent.gateway.clockwatch")
    watch = clockwatch.ClockWatch(_HeldJournal(), count=lambda *a: None, on_step=lambda step: None)
    watch.log_hold(_HeldJournal())  # type: ignore[arg-type]
    until = i18n.local_time(watch.hold_until_us)
    monkeypatch.delenv("TZ")
    time.tzset()
    assert until.endswith(" JST")
    assert [r.getMessage() for r in caplog.records] == {
        "en": ["2 readings were stamped before the clock synced in an earlier boot; they cannot be corrected and go "
               "out flagged unsynced",
               f"readings held: 3 stamped before the clock synchronised wait for the sync, until {until} at the "
               "latest; SOS and alarms go out at once"],
        "ja": ["以前の起動で時計の同期前に時刻を付けた読み取りが 2 件あります。時刻は直せないので、未同期の印を付けて送ります",
               f"読み取りを保留中: 時計の同期前に時刻を付けた 3 件は、遅くとも {until} まで同期を待ちます。SOS発信と警報はすぐに"
               "送ります"],
    }[lang]


def _names(text: str) -> set[str] | None:
    """The named placeholders of a message template; None if it has positional ones (not checked here)."""
    names = {name.split(".")[0].split("[")[0] for _, name, _, _ in string.Formatter().parse(text) if name is not None}
    return None if any(not n or n.isdigit() for n in names) else names


def _marked(node: ast.AST) -> str | None:
    """The literal of ``N_("...")`` or ``"..."``."""
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "N_" and node.args:
        node = node.args[0]
    return node.value if isinstance(node, ast.Constant) and isinstance(node.value, str) else None


def _unfilled_placeholders(tree: ast.AST) -> list[tuple[int, str]]:
    """Messages whose values do not fill every placeholder, which would raise KeyError where the message is shown
    (often an error path no test reaches): ``_("...").format(...)``, ``LazyText(N_("..."), ...)``,
    ``Text(N_("..."), ...)`` and ``problem(N_("..."), N_("hint"), ...)``."""
    found = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call):
            continue
        templates: list[str | None] = []
        call = node
        if (isinstance(node.func, ast.Attribute) and node.func.attr == "format" and isinstance(node.func.value, ast.Call)
                and isinstance(node.func.value.func, ast.Name) and node.func.value.func.id in ("_", "gettext")):
            templates = [_marked(node.func.value.args[0])] if node.func.value.args else []
            if node.args:
                continue  # positional values: not checked
        elif isinstance(node.func, ast.Name) and node.func.id in ("LazyText", "Text") and node.args:
            templates = [_marked(node.args[0])]
        elif isinstance(node.func, ast.Name) and node.func.id == "problem" and node.args:
            templates = [_marked(a) for a in node.args[:2]]
        else:
            continue
        if any(k.arg is None for k in call.keywords):
            continue  # **values: not known here
        given = {k.arg for k in call.keywords if k.arg} - {"subloc"}  # problem()'s location, not a value
        for template in templates:
            names = _names(template) if template is not None else None
            if names is None:
                continue
            if isinstance(node.func, ast.Name) and not given:
                continue  # Text, LazyText and problem show a template without values as it is (YAML braces)
            missing = names - given
            if missing:
                found.append((node.lineno, template))
    return found


def test_every_placeholder_of_a_message_is_given_a_value() -> None:
    bad = []
    for path in _sources():
        bad += [f"{path.relative_to(REPO)}:{line} {text!r}"
                for line, text in _unfilled_placeholders(ast.parse(path.read_text(encoding="utf-8")))]
    assert bad == []
    # The checker finds each kind.
    source = ('a = _("{n} of {m}").format(n=1)\nb = LazyText(N_("{x}"), y=1)\nc = Text(N_("{x} left"), y=2)\n'
              'd = problem(N_("{a}"), N_("try {b}"), a=1)\ne = _("{n}").format(n=1)\nf = Text(N_("add {a: 1}"))\n')
    assert [line for line, _text in _unfilled_placeholders(ast.parse(source))] == [1, 2, 3, 4]
