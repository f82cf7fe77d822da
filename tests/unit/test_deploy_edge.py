"""deploy/edge: the systemd unit, the installer script and the udev rules, checked as the machine would read them."""

from __future__ import annotations

import fnmatch
import os
import re
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from agent.gateway import boot
from tests.support.field import example_key_env
from tests.support.mdwe import MDWE_PRELUDE

ROOT = Path(__file__).resolve().parents[2]
EDGE = ROOT / "deploy" / "edge"
UNIT = EDGE / "denen.service"
INSTALL = EDGE / "install.sh"
RULES = EDGE / "99-denen-lora.rules"


# ---------------------------------------------------------------------------------------------------------------
# The systemd unit


def _unit() -> dict[str, dict[str, list[str]]]:
    """The unit as systemd reads it: sections of keys, each key with all its values in order."""
    sections: dict[str, dict[str, list[str]]] = {}
    current = None
    for raw in UNIT.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            assert line.endswith("]"), raw
            current = sections.setdefault(line[1:-1], {})
            continue
        assert current is not None and "=" in line, f"not key=value: {raw!r}"
        key, value = line.split("=", 1)
        assert re.fullmatch(r"[A-Z][A-Za-z0-9]+", key), key
        current.setdefault(key, []).append(value)
    return sections


def test_unit_has_the_required_settings() -> None:
    unit = _unit()
    service = {k: v[-1] for k, v in unit["Service"].items()}
    assert service["Type"] == "notify"
    assert int(service["WatchdogSec"]) >= 10
    assert service["Restart"] == "always" and int(service["RestartSec"]) > 0
    assert unit["Unit"]["StartLimitIntervalSec"] == ["0"]  # never give up restarting
    assert service["ExecStart"] == "/opt/denen/venv/bin/denen run"
    assert service["User"] == "denen"
    assert set(service["SupplementaryGroups"].split()) == {"dialout", "gpio"}
    assert service["StateDirectory"] == "denen"
    assert service["StandardOutput"] == service["StandardError"] == "journal"
    for key in ("NoNewPrivileges", "ProtectHome", "PrivateTmp", "ProtectKernelTunables", "ProtectKernelModules",
                "ProtectControlGroups", "LockPersonality", "MemoryDenyWriteExecute"):
        assert service[key] == "yes", key
    assert service["ProtectSystem"] == "strict"
    assert service["RestrictAddressFamilies"].split() == ["AF_UNIX", "AF_INET", "AF_INET6"]
    allowed = {v.split()[0] for v in unit["Service"]["DeviceAllow"]}
    assert {"char-ttyUSB", "char-ttyACM", "char-gpiochip"} <= allowed
    assert service["DevicePolicy"] == "closed"
    assert unit["Install"]["WantedBy"] == ["multi-user.target"]


def test_unit_logs_to_journald_with_priorities() -> None:
    """The agent's <N> prefixes are read (not stored as text), lines without one are filed as errors, and
    nothing the agent logs is filtered away."""
    service = {k: v[-1] for k, v in _unit()["Service"].items()}
    assert service["SyslogIdentifier"] == "denen"
    assert service.get("SyslogLevelPrefix", "yes") == "yes"
    assert service["SyslogLevel"] == "err"
    assert "LogLevelMax" not in service


def test_unit_lets_the_agent_read_the_clock_sync_state() -> None:
    """agent/gateway/clock.py asks adjtimex() whether NTP synced; a filter that forbids it would mark every reading synced."""
    service = _unit()["Service"]
    assert service.get("ProtectClock", ["no"])[-1] != "yes"
    filters = " ".join(service.get("SystemCallFilter", []))
    if filters:
        assert "adjtimex" in filters.split() or "@clock" in filters.split()
    assert service.get("CapabilityBoundingSet") == [""]  # ... yet the clock cannot be set


def test_unit_searches_where_the_agent_searches() -> None:
    env = dict(v.split("=", 1) for v in _unit()["Service"]["Environment"])
    assert tuple(env["DENEN_FLASH_SEARCH"].split(":")) == boot.DEFAULT_SEARCH
    # The state folder the agent installs flashed configs into is the unit's StateDirectory.
    assert boot.DEFAULT_STATE_DIR == "/var/lib/" + _unit()["Service"]["StateDirectory"][-1]


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze not installed")
def test_systemd_analyze_verify_accepts_the_unit(tmp_path: Path) -> None:
    # The venv does not exist on a build machine; verify everything else with a command that does.
    text = UNIT.read_text().replace("/opt/denen/venv/bin/denen run", "/bin/true")
    (tmp_path / "denen.service").write_text(text)
    proc = subprocess.run(["systemd-analyze", "verify", str(tmp_path / "denen.service")],
                          capture_output=True, text=True, timeout=60)
    # verify reports unknown keys and bad values on stderr without failing; any output is a finding.
    problems = [ln for ln in proc.stderr.splitlines() if "denen.service" in ln or "Unknown" in ln]
    assert proc.returncode == 0 and problems == [], proc.stderr


_MDWE_PROBE = MDWE_PRELUDE + r"""
# What the agent does at start and at work, under W^X.
import ssl, sqlite3, tempfile, os
import serial, paho.mqtt.client, pydantic, ruamel.yaml, rich, gpiozero
from gpiozero.pins.mock import MockFactory
from gpiozero import LED
from drivers.codec import frame
from agent import cli, config, systemd
from agent.gateway import clock
from agent.gateway import core as gateway
from agent.gateway import journal
from agent.tools import status
from agent.tools import flash
from agent.tools import doctor
from agent.tools import monitor
assert len(frame.compute_mic(bytes(16), b"denen")) == 4   # AES-CMAC through libcrypto (ctypes calls)
ssl.create_default_context()
clock.kernel_synced()
cb = ctypes.CFUNCTYPE(ctypes.c_int)(lambda: 7)   # a libffi closure: needs W^X-free trampolines
assert cb() == 7
d = tempfile.mkdtemp()
j = journal.Journal(os.path.join(d, "j.db"), quota_bytes=1 << 20); j.commit(meta={"x": "1"}); j.close()
LED(17, pin_factory=MockFactory()).on()
config.load_config(sys.argv[1])
print("ok")
"""


def test_memory_deny_write_execute_does_not_break_the_agent() -> None:
    """MemoryDenyWriteExecute=yes in the unit: the same kernel rule (PR_SET_MDWE) applied to the agent's stack."""
    proc = subprocess.run([sys.executable, "-c", _MDWE_PROBE, str(ROOT / "config" / "demo.yaml")], cwd=ROOT,
                          capture_output=True, text=True, timeout=120,
                          env={**os.environ, **example_key_env()})  # demo.yaml's key_env variables
    if proc.returncode in (3, 4):
        pytest.skip(f"kernel without PR_SET_MDWE (Linux >= 6.3 needed): {proc.stdout.strip()}")
    assert proc.returncode == 0 and proc.stdout.strip().endswith("ok"), proc.stderr[-2000:]


# ---------------------------------------------------------------------------------------------------------------
# install.sh


def _install(*args: str, root: Path | None = None) -> subprocess.CompletedProcess[str]:
    cmd = ["bash", str(INSTALL), *args]
    if root is not None:
        cmd += ["--root", str(root)]
    env = {k: v for k, v in os.environ.items() if k != "SUDO_USER"}
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120, env=env)


def test_install_script_parses() -> None:
    assert subprocess.run(["bash", "-n", str(INSTALL)], capture_output=True, timeout=30).returncode == 0
    assert os.access(INSTALL, os.X_OK)


def test_dry_run_prints_every_step_and_changes_nothing(tmp_path: Path) -> None:
    target = tmp_path / "root"
    target.mkdir()
    proc = _install("--dry-run", "--operator", "nobody-such-user", root=target)
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert list(target.iterdir()) == []  # nothing written
    lines = [ln for ln in out.splitlines() if ln.startswith("+ ")]
    # Every step is there, in order, as a command a person could paste.
    expected_in_order = [
        "python3 -m venv --system-site-packages /opt/denen/venv",
        "/opt/denen/venv/bin/python -m pip install --quiet --upgrade " + str(ROOT),
        f"install -D -m 0644 {EDGE / 'denen.service'} {target}/etc/systemd/system/denen.service",
        f"install -D -m 0644 {RULES} {target}/etc/udev/rules.d/99-denen-lora.rules",
        f"install -d -m 0750 {target}/etc/denen",
        "udevadm control --reload-rules",
        "systemctl daemon-reload",
        "systemctl enable denen.service",
    ]
    positions = []
    for want in expected_in_order:
        hits = [i for i, ln in enumerate(lines) if want in ln.replace("\\ ", " ")]
        assert hits, f"missing step: {want}\n{out}"
        positions.append(hits[0])
    assert positions == sorted(positions)
    if subprocess.run(["id", "-u", "denen"], capture_output=True).returncode != 0:
        assert any(ln.startswith("+ useradd --system --user-group") and ln.endswith(" denen") for ln in lines)
    assert "operator nobody-such-user does not exist" in out


def test_files_only_install_into_an_image_root_is_idempotent(tmp_path: Path) -> None:
    target = tmp_path / "image"
    proc = _install("--files-only", root=target)
    assert proc.returncode == 0, proc.stderr
    unit = target / "etc/systemd/system/denen.service"
    rules = target / "etc/udev/rules.d/99-denen-lora.rules"
    assert unit.read_bytes() == UNIT.read_bytes() and rules.read_bytes() == RULES.read_bytes()
    assert stat.S_IMODE(unit.stat().st_mode) == 0o644
    assert stat.S_IMODE((target / "etc/denen").stat().st_mode) == 0o750
    assert "SystemMaxUse=" in (target / "etc/systemd/journald.conf.d/denen.conf").read_text()
    assert (target / "opt/denen/share/README.md").read_bytes() == (EDGE / "README.md").read_bytes()
    assert (target / "opt/denen/share/config-examples/forest-sos.yaml").exists()
    # Only files: no user, venv or service was touched (the image has no /opt/denen/venv).
    assert not (target / "opt/denen/venv").exists()

    again = _install("--files-only", root=target)
    assert again.returncode == 0
    assert "denen.service is up to date" in again.stdout
    assert not [ln for ln in again.stdout.splitlines() if ln.startswith("+ ")]


def test_install_script_refuses_bad_usage(tmp_path: Path) -> None:
    assert _install("--bogus").returncode == 64
    refused = _install(root=tmp_path)  # --root alone would run apt etc. on this machine
    assert refused.returncode == 64 and "--files-only" in refused.stderr
    assert list(tmp_path.iterdir()) == []
    helped = _install("--help")
    assert helped.returncode == 0 and "--dry-run" in helped.stdout and "set -euo" not in helped.stdout


# ---------------------------------------------------------------------------------------------------------------
# udev rules

_TOKEN = re.compile(r'\s*(?P<key>[A-Z_]+)(?:\{(?P<attr>[^}]+)\})?\s*(?P<op>==|!=|\+=|-=|:=|=)\s*"(?P<value>[^"]*)"\s*')
_KEYS = {"ACTION", "SUBSYSTEM", "KERNEL", "ATTRS", "ENV", "SYMLINK", "GROUP", "MODE", "GOTO", "LABEL"}


def _parse_rule(line: str) -> list[tuple[str, str | None, str, str]]:
    """A rule line as (key, attribute, operator, value) tuples; asserts the key=value syntax of udev(7)."""
    tokens = []
    pos = 0
    while pos < len(line):
        m = _TOKEN.match(line, pos)
        assert m is not None, f"bad udev syntax at {line[pos:]!r} in {line!r}"
        tokens.append((m["key"], m["attr"], m["op"], m["value"]))
        pos = m.end()
        if pos < len(line):
            assert line[pos] == ",", f"expected ',' at {line[pos:]!r}"
            pos += 1
    assert tokens
    for key, _, op, _ in tokens:
        assert key in _KEYS, key
        if key in ("GOTO", "LABEL", "GROUP", "MODE"):
            assert op == "=", (key, op)
    return tokens


def _rules() -> list[list[tuple[str, str | None, str, str]]]:
    return [_parse_rule(ln.strip()) for ln in RULES.read_text().splitlines() if ln.strip() and not ln.startswith("#")]


def _template_rules() -> list[list[tuple[str, str | None, str, str]]]:
    return [_parse_rule(ln[2:].strip()) for ln in RULES.read_text().splitlines()
            if ln.startswith("# ") and ("ATTRS{serial}" in ln or "ID_PATH" in ln) and "SYMLINK" in ln]


def _apply(rules: list[list[tuple[str, str | None, str, str]]], device: dict[str, str]) -> dict[str, object]:
    """A small udev evaluator (match keys, GOTO/LABEL, assignments) for checking the rules' logic."""
    result: dict[str, object] = {"SYMLINK": [], "ENV": {}}
    env: dict[str, str] = dict(device.get("ENV", {}))  # type: ignore[arg-type]
    i = 0
    labels = {tok[3]: n for n, rule in enumerate(rules) for tok in rule if tok[0] == "LABEL"}
    while i < len(rules):
        rule = rules[i]
        i += 1
        matched = True
        for key, attr, op, value in rule:
            if op not in ("==", "!="):
                continue
            have = env.get(attr or "", "") if key == "ENV" else device.get(f"{key}{{{attr}}}" if attr else key, "")
            hit = any(fnmatch.fnmatchcase(have, alt) for alt in value.split("|"))
            if hit != (op == "=="):
                matched = False
                break
        if not matched:
            continue
        for key, attr, op, value in rule:
            if key == "GOTO":
                i = labels[value]
            elif key == "SYMLINK":
                number = re.sub(r"\D", "", device["KERNEL"])
                result["SYMLINK"].append(value.replace("%n", number))  # type: ignore[union-attr]
            elif key == "ENV" and op == "=":
                env[attr or ""] = value
            elif key in ("GROUP", "MODE") and op == "=":
                result[key] = value
    result["ENV"] = env
    return result


def test_udev_rules_parse_and_gotos_have_labels() -> None:
    rules = _rules()
    labels = {tok[3] for rule in rules for tok in rule if tok[0] == "LABEL"}
    gotos = {tok[3] for rule in rules for tok in rule if tok[0] == "GOTO"}
    assert gotos <= labels, gotos - labels
    templates = _template_rules()
    assert len(templates) == 2  # pin by serial number, pin by USB socket
    assert any(tok[:2] == ("ATTRS", "serial") for tok in templates[0])


@pytest.mark.parametrize(("vendor", "product", "bridge"), [
    ("10c4", "ea60", "CP210x"), ("1a86", "7523", "CH340"), ("1a86", "55d4", "CH9102"), ("0403", "6001", "FTDI"),
    ("0403", "6015", "FT231X"),
])
def test_common_bridges_get_a_lora_name_group_and_mode(vendor: str, product: str, bridge: str) -> None:
    kernel = "ttyACM1" if bridge == "CH9102" else "ttyUSB0"
    dev = {"ACTION": "add", "SUBSYSTEM": "tty", "KERNEL": kernel,
           "ATTRS{idVendor}": vendor, "ATTRS{idProduct}": product}
    got = _apply(_rules(), dev)
    assert got["SYMLINK"] == [f"lora{kernel[-1]}"], bridge
    assert got["GROUP"] == "dialout" and got["MODE"] == "0660"
    assert got["ENV"]["ID_MM_DEVICE_IGNORE"] == "1"  # type: ignore[index]


def test_other_devices_are_left_alone() -> None:
    mouse = {"ACTION": "add", "SUBSYSTEM": "tty", "KERNEL": "ttyUSB0", "ATTRS{idVendor}": "046d",
             "ATTRS{idProduct}": "c077"}
    assert _apply(_rules(), mouse)["SYMLINK"] == []
    console = {"ACTION": "add", "SUBSYSTEM": "tty", "KERNEL": "ttyAMA0", "ATTRS{idVendor}": "10c4",
               "ATTRS{idProduct}": "ea60"}
    assert _apply(_rules(), console)["SYMLINK"] == []
    gpio = _apply(_rules(), {"ACTION": "add", "SUBSYSTEM": "gpio", "KERNEL": "gpiochip0"})
    assert gpio["GROUP"] == "gpio" and gpio["SYMLINK"] == []


def test_a_pinned_module_keeps_its_name_and_skips_the_generic_rule() -> None:
    serial_pin = _template_rules()[0]
    rules = _rules()
    # Put the template where the file says (above the generic rules): right after the KERNEL filter.
    at = next(i for i, rule in enumerate(rules) if rule[0][:1] == ("KERNEL",)) + 1
    pinned = [*rules[:at], serial_pin, *rules[at:]]
    serial_value = next(tok[3] for tok in serial_pin if tok[:2] == ("ATTRS", "serial"))
    dev = {"ACTION": "add", "SUBSYSTEM": "tty", "KERNEL": "ttyUSB3", "ATTRS{idVendor}": "10c4",
           "ATTRS{idProduct}": "ea60", "ATTRS{serial}": serial_value}
    got = _apply(pinned, dev)
    assert got["SYMLINK"] == ["lora0"]  # the pinned name, not lora3
    other = dict(dev, **{"ATTRS{serial}": "somethingelse"})
    assert _apply(pinned, other)["SYMLINK"] == ["lora3"]


# ---------------------------------------------------------------------------------------------------------------
# The installer's guide

GUIDE = EDGE / "README.md"


def _sections(text: str) -> list[tuple[str, str]]:
    """The guide's '## ' sections in order: (title, body)."""
    parts = re.split(r"^## (.+)$", text, flags=re.M)
    return list(zip(parts[1::2], parts[2::2], strict=True))


def test_the_installer_guide_starts_with_denen_on_the_laptop() -> None:
    import tomllib

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    wheel = project["name"].replace("-", "_") + "-<version>-py3-none-any.whl"  # the wheel's file name (PEP 427)
    title, body = _sections(GUIDE.read_text())[0]
    assert "laptop" in title and title.startswith("1.")
    assert f"pipx install ./{wheel}" in body
    assert f"pip install --user ./{wheel}" in body
    assert "pip wheel --no-deps ." in body
    assert project["requires-python"] == ">=3.11" and "Python 3.11 or later" in GUIDE.read_text().split("## ")[0]
    # Every later step refers to a step that exists, by its number.
    numbers = [t.split(".", 1)[0] for t, _ in _sections(GUIDE.read_text()) if t[:1].isdigit()]
    assert numbers == [str(n) for n in range(1, len(numbers) + 1)]
    for ref in re.findall(r"\(steps? (\d+)", GUIDE.read_text()):
        assert ref in numbers, ref


def test_one_path_for_the_gateway_config() -> None:
    """/etc/denen/config.yaml, where flash and run look, is the only gateway config file named anywhere."""
    allowed = {boot.DEFAULT_CONFIG, "/etc/denen/bridge.yaml", "/etc/denen/console.yaml", "/etc/denen/gateways.yaml"}
    found: dict[str, set[str]] = {}
    for pattern in ("README.md", "config/**/*", "deploy/**/*", "agent/**/*.py", "drivers/**/*.py"):
        for path in ROOT.glob(pattern):
            if not path.is_file() or "secrets" in path.parts or path.suffix in (".json", ".db"):
                continue
            text = path.read_text(encoding="utf-8", errors="replace")
            for name in re.findall(r"/etc/denen/[\w.-]+\.ya?ml\b", text):
                found.setdefault(name, set()).add(str(path.relative_to(ROOT)))
    assert boot.DEFAULT_CONFIG == "/etc/denen/config.yaml"
    # Backend bridge processes (one config each: bridge.yaml, bridge-ngsi.yaml, the cluster's bridge-N.yaml) are not
    # gateway configs.
    assert {name: files for name, files in found.items()
            if name not in allowed and not re.fullmatch(r"/etc/denen/bridge(-[\w]+)?\.yaml", name)} == {}
    assert "deploy/edge/README.md" in found[boot.DEFAULT_CONFIG]


def test_install_sets_the_gateways_time_zone_and_refuses_an_unknown_one(tmp_path: Path) -> None:
    """Times shown to people are in the system's zone (2026-12-05 14:03:12 JST); install.sh sets Asia/Tokyo."""
    current = os.path.realpath("/etc/localtime").split("/zoneinfo/")[-1]
    for zone in ("Asia/Tokyo", "America/Sao_Paulo"):
        out = _install("--dry-run", "--no-operator", "--timezone", zone).stdout
        if current == zone:
            assert f"time zone {zone} already set" in out
        else:
            assert f"+ timedatectl set-timezone {zone}" in out, out
    assert "timedatectl set-timezone Asia/Tokyo" in _install("--dry-run", "--no-operator").stdout \
        or current == "Asia/Tokyo"
    assert "timedatectl" not in _install("--dry-run", "--no-operator", "--timezone", "keep").stdout
    for bad in ("Nowhere/City", "../../etc/passwd", "/etc/passwd"):
        proc = _install("--dry-run", "--timezone", bad)
        assert proc.returncode == 64 and "unknown time zone" in proc.stderr, proc.stderr
