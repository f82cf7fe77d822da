"""The ``denen`` command line itself: what starts fast, what it lists, its examples, closed pipes, the shipped
example configs and schemas, and how ``denen status`` finds its journal."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from agent import __version__, assets, cli, cli_config, cli_parser
from agent.gateway.boot import DEFAULT_CONFIG
from agent.gateway.journal import Journal
from agent.gateway.reading import NodeState
from agent.tools import flash as fl

REPO = Path(__file__).resolve().parents[2]

#: What building the parser must not load: each costs tens of milliseconds of every `denen --help`.
HEAVY = {"pydantic", "pydantic_core", "rich", "paho", "ruamel", "serial", "cryptography", "urllib3",
         "influxdb_client"}

#: Runs `denen ARGS` in a fresh interpreter and reports, on stderr's last line, which heavy packages it loaded.
_PROBE = """
import json, sys
from agent.cli import main
try:
    code = main(sys.argv[1:])
except SystemExit as exc:
    code = exc.code
sys.stdout.flush()
loaded = sorted({name.split(".")[0] for name in sys.modules} & set(json.loads(HEAVY)))
sys.stderr.write("\\nLOADED " + json.dumps(loaded) + "\\n")
""".replace("HEAVY", repr(json.dumps(sorted(HEAVY))))


def denen(*args: str, env: dict[str, str] | None = None, timeout: float = 60,
          **kwargs: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "agent.cli", *args], cwd=REPO, capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, "COLUMNS": "120", **(env or {})}, **kwargs)


def _verbs() -> dict[str, argparse.ArgumentParser]:
    """Every command and sub-action of the full parser, by its command line (``config schema``)."""
    found: dict[str, argparse.ArgumentParser] = {}

    def walk(parser: argparse.ArgumentParser, prefix: str) -> None:
        for action in parser._actions:  # noqa: SLF001 - argparse keeps its subcommands only here
            if isinstance(action, argparse._SubParsersAction):  # noqa: SLF001
                for name, sub in action.choices.items():
                    found[f"{prefix}{name}"] = sub
                    walk(sub, f"{prefix}{name} ")

    walk(cli_parser.build_parser(), "")
    return found


@pytest.mark.parametrize("args", [
    ["--help"], ["--version"], [], ["config", "--help"], ["config", "example", "--help"], ["doctor", "--help"],
    ["flash", "--help"], ["monitor", "--help"], ["status", "--help"], ["bridge", "--help"],
    ["bridge", "dead-letters", "--help"], ["console", "--help"], ["ack", "--help"], ["demo", "--help"],
], ids=lambda a: " ".join(a) or "(none)")
def test_building_the_parser_loads_no_heavy_package(args: list[str]) -> None:
    out = subprocess.run([sys.executable, "-c", _PROBE, *args], cwd=REPO, capture_output=True, text=True,
                         timeout=60)
    last = out.stderr.strip().splitlines()[-1]
    assert last.startswith("LOADED "), out.stderr
    assert json.loads(last[len("LOADED "):]) == [], f"denen {' '.join(args)} imported these at parser time"
    assert "Traceback" not in out.stderr


def test_denen_alone_lists_every_command() -> None:
    out = denen()
    assert out.returncode == 2
    for name in ("run", "flash", "doctor", "monitor", "config", "sim", "status", "node", "demo", "bridge",
                 "console", "ack"):
        assert f"\n    {name} " in out.stderr, name
    assert "Examples:" in out.stderr and out.stdout == ""


def test_every_command_help_shows_examples() -> None:
    verbs = _verbs()
    assert {"run", "flash", "doctor", "monitor", "config", "config validate", "config example", "config schema",
            "sim", "status", "node", "node reset-counter", "demo", "bridge", "bridge dead-letters", "console",
            "ack"} <= set(verbs)
    missing = [name for name, parser in verbs.items()
               if name.count(" ") < 2 and "example" not in parser.format_help().lower()]
    assert missing == []


def test_help_examples_keep_their_layout(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        cli.main(["config", "--help"])
    out = capsys.readouterr().out
    assert "\n  denen config example river-station > config.yaml\n" in out


def test_version() -> None:
    out = denen("--version")
    assert out.returncode == 0 and out.stdout.strip() == f"denen {__version__}"


def test_config_example_lists_each_example_on_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["config", "example"]) == 0
    lines = capsys.readouterr().out.splitlines()
    for name in ("forest-sos", "trap-field", "river-station", "demo", "bridge", "console", "gateways"):
        [line] = [s for s in lines if s.split(" ", 1)[0] == name]
        assert len(line.split(None, 1)[1]) > 20, line


@pytest.mark.parametrize("name", list(assets.EXAMPLES))
def test_config_example_prints_the_commented_file(name: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["config", "example", name]) == 0
    text = capsys.readouterr().out
    assert text == (REPO / assets.EXAMPLES[name].asset).read_text(encoding="utf-8")
    assert text.startswith("#")  # commented, as telegraf's sample config is


def test_an_unknown_example_names_the_ones_there_are() -> None:
    out = denen("config", "example", "forest")
    assert out.returncode == 2 and "invalid choice: 'forest'" in out.stderr and "forest-sos" in out.stderr


@pytest.mark.parametrize("kind", list(assets.SCHEMAS))
def test_shipped_schema_is_what_the_code_generates(kind: str) -> None:
    shipped = (REPO / assets.SCHEMAS[kind]).read_text(encoding="utf-8")
    assert shipped == cli_config.schema_text(kind), f"run: denen config schema {kind} -o {assets.SCHEMAS[kind]}"


@pytest.mark.parametrize("kind", list(assets.SCHEMAS))
def test_config_schema_goes_to_stdout_or_a_file(kind: str, tmp_path: Path,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    import jsonschema

    assert cli.main(["config", "schema", kind]) == 0
    schema = json.loads(capsys.readouterr().out)
    jsonschema.Draft202012Validator.check_schema(schema)
    assert schema["additionalProperties"] is False and schema["title"].startswith("denen ")
    target = tmp_path / "x.schema.json"
    assert cli.main(["config", "schema", kind, "-o", str(target)]) == 0
    assert json.loads(target.read_text(encoding="utf-8")) == schema
    assert capsys.readouterr().out == ""  # the note goes to stderr, so stdout stays pure JSON


def test_config_schema_into_a_missing_folder_is_one_line(tmp_path: Path) -> None:
    out = denen("config", "schema", "-o", str(tmp_path / "no" / "such" / "x.json"))
    assert out.returncode == 1 and "Traceback" not in out.stderr
    assert out.stderr.startswith("denen: error: cannot write ") and len(out.stderr.splitlines()) == 1


def _closed_pipe_run(*args: str) -> subprocess.CompletedProcess[str]:
    """`denen ARGS | head -0`, deterministically: stdout is a pipe whose reader is gone before denen starts."""
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        return subprocess.run([sys.executable, "-m", "agent.cli", *args], cwd=REPO, stdout=write_end,
                              stderr=subprocess.PIPE, text=True, timeout=60)
    finally:
        os.close(write_end)


@pytest.mark.parametrize("args", [["config", "example", "demo"], ["config", "schema"], ["config", "example"]],
                         ids=lambda a: " ".join(a))
def test_a_closed_pipe_ends_quietly(args: list[str]) -> None:
    out = _closed_pipe_run(*args)
    assert out.stderr == ""
    assert out.returncode == cli.EXIT_BROKEN_PIPE == 141


def test_help_into_a_closed_pipe_ends_quietly() -> None:
    out = _closed_pipe_run("--help")
    assert out.stderr == ""
    assert out.returncode in (0, 141)  # argparse itself drops the failed write of its help and exits 0


def test_status_json_into_a_closed_pipe_ends_quietly(tmp_path: Path) -> None:
    journal = tmp_path / "journal.db"
    Journal(journal, quota_bytes=1 << 20).close()
    out = _closed_pipe_run("status", "-j", str(journal), "--json")
    assert (out.returncode, out.stderr) == (141, "")


def _flashed_gateway(tmp_path: Path) -> tuple[Path, dict[str, str]]:
    """A config flashed onto a stand-in SD card, with a journal holding one node; the environment that makes
    `denen` search that card (and an empty state folder) for the active config."""
    journal = tmp_path / "var" / "journal.db"
    journal.parent.mkdir()
    src = tmp_path / "laptop"
    src.mkdir()
    (src / "trap-1.key").write_text("00000201000002010000020100000201\n")
    (src / "trap-1.key").chmod(0o600)
    cfg = src / "config.yaml"
    cfg.write_text(f"""gateway: {{id: gw-status-01, site: testville}}
journal: {{path: {journal}}}
mqtt: {{host: 127.0.0.1, port: 1883, tls: false}}
radios: [{{name: lora0, driver: rak3172, port: /dev/lora0}}]
nodes: [{{id: "00000201", name: trap-1, kind: trap, key_file: trap-1.key}}]
""")
    card = tmp_path / "bootfs"
    card.mkdir()
    fl.flash(cfg, card)
    j = Journal(journal, quota_bytes=1 << 20)
    j.commit(nodes=[NodeState(node="00000201", last_fcnt=7)])
    j.close()
    return journal, {"DENEN_FLASH_SEARCH": str(card / "denen"), "STATE_DIRECTORY": str(tmp_path / "state")}


def test_status_without_c_or_j_reads_the_journal_of_the_active_config(tmp_path: Path) -> None:
    _, env = _flashed_gateway(tmp_path)
    out = denen("status", "--json", env=env)
    assert out.returncode == 0, out.stderr
    [node] = json.loads(out.stdout)["nodes"]
    assert node["node"] == "00000201" and node["last_fcnt"] == 7
    assert not (tmp_path / "state").exists()  # status only looks: the new flash is not installed by it
    assert "pydantic" not in out.stderr


def test_status_without_any_config_is_one_line(tmp_path: Path) -> None:
    env = {"DENEN_FLASH_SEARCH": str(tmp_path / "nocard"), "STATE_DIRECTORY": str(tmp_path / "state")}
    out = denen("status", env=env)
    if Path(DEFAULT_CONFIG).exists():
        pytest.fail(f"{DEFAULT_CONFIG} exists on this machine: the test cannot show the no-config case")
    assert out.returncode == 1 and "Traceback" not in out.stderr
    assert out.stderr.startswith("denen: error: ") and len(out.stderr.strip().splitlines()) == 1


def test_bridge_without_a_config_says_how_to_get_one() -> None:
    out = denen("bridge")
    assert out.returncode == 1 and "Traceback" not in out.stderr
    assert "denen bridge -c BRIDGE_CONFIG" in out.stderr and "denen config example bridge" in out.stderr


def test_bridge_dead_letters_is_wired(tmp_path: Path) -> None:
    args = cli_parser.build_parser(["bridge", "dead-letters", "list", "-c", "b.yaml"]).parse_args(
        ["bridge", "dead-letters", "list", "-c", "b.yaml"])
    from agent.bridge import deadletter_cli

    assert args.command_main is deadletter_cli.main and args.config == "b.yaml"
    assert args.dead_letter_action == "list"
    # -c before the action names the config as well
    before = ["bridge", "-c", "b.yaml", "dead-letters", "list"]
    args = cli_parser.build_parser(before).parse_args(before)
    cli._bridge_config_for_action(args)
    assert args.config == "b.yaml"
    out = denen("bridge", "dead-letters", "list", "-c", str(tmp_path / "missing.yaml"))
    assert out.returncode != 0 and "Traceback" not in out.stderr and "missing.yaml" in out.stderr


def test_a_missing_optional_module_names_the_extra() -> None:
    line = cli._missing_module("influxdb_client.client.write_api")
    assert "[bridge]" in line and "influxdb_client" in line and "\n" not in line
    assert "reinstall" in cli._missing_module("serial")


def test_the_missing_module_line_is_what_the_user_sees(tmp_path: Path) -> None:
    """A command whose import fails with ModuleNotFoundError prints one line, not a traceback."""
    shadow = tmp_path / "shadow"
    (shadow / "drivers" / "sim").mkdir(parents=True)
    # A `drivers` package without the simulator's dependencies: importing drivers.sim.scenario fails.
    (shadow / "drivers" / "__init__.py").write_text("")
    (shadow / "drivers" / "sim" / "__init__.py").write_text("import no_such_module_for_denen\n")
    code = ("import sys; sys.path.insert(0, sys.argv.pop(1)); from agent.cli import main; "
            "sys.exit(main(['sim', 'demo', '--duration', '0']))")
    out = subprocess.run([sys.executable, "-c", code, str(shadow)], cwd=REPO, capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 1 and "Traceback" not in out.stderr, out.stderr
    assert out.stderr.strip() == cli._missing_module("no_such_module_for_denen")
