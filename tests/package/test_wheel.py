"""The wheel is the product: build it from this checkout, install it into a fresh virtual environment outside the
checkout, and use ``denen`` from a folder outside it too, as a new user with no repository at hand would.

The dependencies come from the package index (pip's cache makes a second run fast). The installed package must
not reach back into the checkout: every file it reads is its own package data.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tomllib
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.support.process import processes_mentioning

REPO = Path(__file__).resolve().parents[2]
VERSION = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))["project"]["version"]

# Building and installing takes minutes on a cold pip cache; the demo needs a real Mosquitto.
pytestmark = [pytest.mark.slow, pytest.mark.broker, pytest.mark.timeout(1500)]

#: What the build reads: the fixed top level of the repository, less tests/, docs/, .ci/ and .git.
BUILD_INPUTS = ("pyproject.toml", "README.md", "agent", "drivers", "config", "deploy")

#: Example configs that `denen config validate` checks (gateways is the bridge's registry, read by the bridge's).
CONFIG_EXAMPLES = ("forest-sos", "trap-field", "river-station", "river-modbus", "demo", "bridge", "bridge-ngsi",
                   "console")
#: Examples that need an extra the plain install lacks: validating one names the extra to install.
EXTRA_EXAMPLES = {"hiker-meshtastic": "denen-agent[meshtastic]"}


@dataclass
class Install:
    """A fresh venv holding only the wheel and its dependencies, and a work folder outside the checkout."""

    venv: Path
    work: Path
    wheel: Path

    def env(self, **extra: str) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}
        env.update(PATH=f"{self.venv / 'bin'}:{env.get('PATH', '/usr/bin:/bin')}", COLUMNS="120", **extra)
        return env

    def run(self, *args: str, timeout: float = 120, **extra_env: str) -> subprocess.CompletedProcess[str]:
        """``denen ARGS`` from the work folder, with the venv's entry point."""
        return subprocess.run([str(self.venv / "bin" / "denen"), *args], cwd=self.work, capture_output=True,
                              text=True, timeout=timeout, env=self.env(**extra_env))

    def python(self, code: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([str(self.venv / "bin" / "python"), "-c", code], cwd=self.work, capture_output=True,
                              text=True, timeout=120, env=self.env())


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Install:
    root = tmp_path_factory.mktemp("wheel")
    assert not root.is_relative_to(REPO)
    # The checkout's files, copied: a build inside the checkout would reuse its build/ folder, where a module
    # deleted since the last build still sits and would end up in the wheel.
    source = root / "source"
    for name in BUILD_INPUTS:
        if (REPO / name).is_dir():
            shutil.copytree(REPO / name, source / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        else:
            source.mkdir(exist_ok=True)
            shutil.copy2(REPO / name, source / name)
    dist = root / "dist"
    build = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(dist), str(source)],
                           capture_output=True, text=True, timeout=600)
    assert build.returncode == 0, build.stderr[-4000:]
    [wheel] = dist.glob("denen_agent-*.whl")
    venv = root / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=300)
    install = subprocess.run([str(venv / "bin" / "python"), "-m", "pip", "install", "-q", str(wheel)],
                             capture_output=True, text=True, timeout=1200)
    assert install.returncode == 0, install.stderr[-4000:]
    work = root / "work"
    work.mkdir()
    return Install(venv, work, wheel)


@pytest.fixture(autouse=True)
def nothing_left_running(installed: Install) -> None:
    yield
    assert processes_mentioning(str(installed.venv), str(installed.work)) == []


def test_the_installed_package_is_the_one_in_the_venv(installed: Install) -> None:
    out = installed.python("import agent, drivers\nfrom agent import assets\n"
                           "print(agent.__file__); print(drivers.__file__); print(assets.root())")
    assert out.returncode == 0, out.stderr
    site = installed.venv / "lib"
    for line in out.stdout.splitlines():
        assert Path(line).is_relative_to(site), line
        assert not Path(line).is_relative_to(REPO), line


def test_the_wheel_holds_the_runtime_files(installed: Install) -> None:
    names = ["config/scenarios/demo.yaml", "config/example-keys.env", "config/README.md",
             "config/denen.schema.json", "config/bridge/bridge.schema.json", "config/console/console.schema.json",
             "deploy/edge/denen.service", "deploy/edge/99-denen-lora.rules",
             "deploy/backend/grafana/provisioning/datasources/denen-influxdb.yaml",
             "deploy/backend/grafana/provisioning/dashboards/denen.yaml",
             "deploy/backend/grafana/dashboards/fleet-health.json"]
    code = ("import json, sys\nfrom agent import assets\n"
            f"print(json.dumps({{n: assets.read_text(n) for n in {names!r}}}))")
    out = installed.python(code)
    assert out.returncode == 0, out.stderr
    shipped = json.loads(out.stdout)
    for name in names:
        assert shipped[name] == (REPO / name).read_text(encoding="utf-8"), name


def test_help_version_and_the_command_list(installed: Install) -> None:
    out = installed.run("--help")
    assert out.returncode == 0 and "commands:" in out.stdout and "Examples:" in out.stdout, out.stderr
    out = installed.run("--version")
    assert (out.returncode, out.stdout.strip()) == (0, f"denen {VERSION}")
    out = installed.run()
    assert out.returncode == 2 and "\n    demo " in out.stderr and "\n    bridge " in out.stderr


@pytest.mark.parametrize("args", [["bridge", "--help"], ["bridge", "dead-letters", "--help"], ["status", "--help"],
                                  ["config", "--help"], ["flash", "--help"], ["monitor", "--help"]],
                         ids=lambda a: " ".join(a))
def test_command_help(installed: Install, args: list[str]) -> None:
    out = installed.run(*args)
    assert out.returncode == 0, out.stderr
    assert "example" in out.stdout.lower() and "Traceback" not in out.stderr


def test_every_example_config_validates(installed: Install) -> None:
    """Each example printed into a file, laid out as their relative paths expect (the bridge beside its gateway
    registry, the console beside its link secret), with the example keys the package ships in the environment."""
    out = installed.run("config", "example")
    assert out.returncode == 0, out.stderr
    listed = [line.split()[0] for line in out.stdout.splitlines() if line and not line.startswith("Print")]
    assert set(CONFIG_EXAMPLES) | set(EXTRA_EXAMPLES) | {"gateways"} == set(listed)
    folder = installed.work / "examples"
    places = {"bridge": "bridge/bridge.yaml", "bridge-ngsi": "bridge/ngsi-ld.yaml", "gateways": "bridge/gateways.yaml",
              "console": "console/console.yaml"}
    files = []
    for name in listed:
        out = installed.run("config", "example", name)
        assert out.returncode == 0 and out.stdout.startswith("#"), (name, out.stderr)
        path = folder / places.get(name, f"{name}.yaml")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(out.stdout, encoding="utf-8")
        if name in CONFIG_EXAMPLES:
            files.append(str(path.relative_to(installed.work)))
    secret = folder / "console" / "secrets" / "link-secret"
    secret.parent.mkdir()
    secret.write_text("an example link secret of at least 32 bytes, never used\n")
    secret.chmod(0o600)
    keys = installed.python("from agent import assets\nprint(assets.read_text(assets.EXAMPLE_KEYS))")
    env = dict(re.findall(r"^([A-Z_][A-Z0-9_]*)=(\S+)$", keys.stdout, re.M))
    assert len(env) >= 20, keys.stderr
    out = installed.run("config", "validate", *files, **env)
    assert out.returncode == 0, out.stderr
    assert out.stdout.count(": ok (") == len(CONFIG_EXAMPLES) == len(files)
    for name, extra in EXTRA_EXAMPLES.items():
        out = installed.run("config", "validate", str(folder / f"{name}.yaml"), **env)
        assert out.returncode == 2 and f"pip install '{extra}'" in out.stderr, (name, out.stdout, out.stderr)


@pytest.mark.parametrize("kind", ["gateway", "bridge", "console"])
def test_config_schema(installed: Install, kind: str) -> None:
    shipped = {"gateway": "config/denen.schema.json", "bridge": "config/bridge/bridge.schema.json",
               "console": "config/console/console.schema.json"}[kind]
    out = installed.run("config", "schema", kind)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout) == json.loads((REPO / shipped).read_text(encoding="utf-8"))
    target = installed.work / f"{kind}.schema.json"
    out = installed.run("config", "schema", kind, "-o", target.name)
    assert out.returncode == 0 and json.loads(target.read_text(encoding="utf-8"))["title"].startswith("denen ")


def test_demo_shows_readings_flowing_and_leaves_nothing_running(installed: Install) -> None:
    work = installed.work / "demo"
    out = installed.run("demo", "--duration", "8", "--workdir", str(work), timeout=180)
    assert out.returncode == 0, out.stderr + out.stdout
    assert "gw-demo-01: online" in out.stdout
    readings = [int(n) for n in re.findall(r"readings (\d+)", out.stdout)]
    assert readings and max(readings) > 0, out.stdout
    assert "Traceback" not in out.stderr
    assert (work / "broker" / "mosquitto.conf").exists()  # its broker ran from the work folder...
    assert processes_mentioning(str(work)) == []  # ...and is gone, with the simulators


def test_status_of_the_demo_journal(installed: Install) -> None:
    journal = installed.work / "demo" / "journal.db"
    if not journal.exists():
        installed.run("demo", "--duration", "4", "--workdir", str(journal.parent), timeout=180)
    out = installed.run("status", "-j", str(journal), "--json")
    assert out.returncode == 0, out.stderr
    assert {n["name"] for n in json.loads(out.stdout)["nodes"]} >= {"trap-demo-1"}
