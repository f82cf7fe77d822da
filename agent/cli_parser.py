"""The ``denen`` argument parser: every command's arguments, help texts and examples.

Building it imports the standard library and the light argument modules only (doctor, flash, monitor,
console.main, bridge.deadletter_cli, assets), and only the module of the command about to run: pydantic, rich,
paho, pyserial and ruamel.yaml load inside the command that needs them, so ``denen --help`` starts at once.
"""

from __future__ import annotations

import argparse
import importlib
import os
import textwrap
from collections.abc import Callable, Sequence
from typing import Any

from agent import __version__
from agent.i18n import N_, _

__all__ = ["build_parser", "lang_in"]

_RAW = argparse.RawDescriptionHelpFormatter

_MAIN_EPILOG = N_("""\
Examples:
  denen demo                                   simulated field -> agent -> MQTT -> live view (needs mosquitto)
  denen config example                         list the example configs
  denen config example forest-sos > config.yaml
  denen config validate config.yaml
  denen flash config.yaml /media/$USER/bootfs  onto the gateway's SD card
  denen COMMAND --help                         each command's options and examples
""")

_EPILOGS = {
    "run": N_("""\
Examples:
  denen run                               the config the agent would run: a flashed bundle (SD card / USB),
                                          else the installed copy, else /etc/denen/config.yaml
  denen run -c config.yaml                this file
  sudo systemctl start denen              on a gateway: the service runs `denen run` (denen.service)
"""),
    "doctor": N_("""\
Examples:
  denen doctor                            check the gateway of the config the agent would run
  denen doctor -c /etc/denen/config.yaml --json
Exit codes: 0 all ok, 1 warnings, 2 failures.
"""),
    "monitor": N_("""\
Examples:
  denen monitor                           live view of the active config's nodes; Ctrl-C stops
  denen monitor --once --json             one snapshot, as JSON
  sudo -u denen denen monitor -j /var/lib/denen/journal.db
"""),
    "config": N_("""\
Examples:
  denen config example                    list the example configs
  denen config example river-station > config.yaml
  denen config validate config.yaml       every problem: file, line, key and a hint
  denen config schema -o denen.schema.json
                                          for editor completion beside config.yaml
"""),
    "sim": N_("""\
Examples:
  denen sim demo                          the demo's scenario: modules at /tmp/denen-sim/lora0, lora1
  denen sim scenario.yaml --link-dir /tmp/sim --duration 60
"""),
    "status": N_("""\
Examples:
  denen status                            the journal of the config the agent would run
  denen status -c /etc/denen/config.yaml --json
  sudo -u denen denen status -j /var/lib/denen/journal.db
"""),
    "node": N_("""\
Examples:
  sudo -u denen denen node reset-counter trap-north-3
  sudo -u denen denen node reset-counter 0x00a1b2c3 -c /etc/denen/config.yaml
"""),
    "demo": N_("""\
Examples:
  denen demo                              until Ctrl-C
  denen demo --duration 60 --workdir /tmp/denen-demo
                                          keep the journal, broker and agent logs in /tmp/denen-demo
Needs Mosquitto (sudo apt-get install mosquitto); the demo starts its own on a free loopback port.
"""),
    "bridge": N_("""\
Examples:
  denen config example bridge > bridge.yaml        then set mqtt and sink
  denen bridge -c bridge.yaml
  denen bridge -c bridge.yaml --retire             take this bridge's client_id out of service
  denen bridge dead-letters list -c bridge.yaml    what could not be written, and why
The v2 sink (InfluxDB 2.x/3.x, VictoriaMetrics) needs the bridge extra: pipx install 'denen_agent-*.whl[bridge]'.
"""),
    "console": N_("""\
Examples:
  denen config example console > console.yaml      then set http, links and mqtt
  denen console -c console.yaml
"""),
    "ack": N_("""\
Examples:
  denen ack link gw-okutama-01 sos:00a1b2c3 --ttl 24h
  denen ack ack gw-okutama-01 sos:00a1b2c3 --by "山田"
  denen ack silence gw-kiso-river-02 river_stage:00000301 --by "山田"
  denen ack test-chirp gw-kiso-river-02 --by "山田"
"""),
    "config validate": N_("""\
Examples:
  denen config validate config.yaml
  set -a; . secrets.env; set +a; denen config validate gw-*/config.yaml bridge.yaml
"""),
    "config example": N_("""\
Examples:
  denen config example                    the list, one line each
  denen config example trap-field > config.yaml
"""),
    "config schema": N_("""\
Examples:
  denen config schema -o denen.schema.json                 the gateway config's schema
  denen config schema bridge -o bridge.schema.json
  denen config schema console | jq .properties.http
"""),
    "dead-letters": N_("""\
Examples:
  denen bridge dead-letters list -c /etc/denen/bridge.yaml
  denen bridge dead-letters show 42 -c /etc/denen/bridge.yaml
  denen bridge dead-letters replay --reason rejected_by_server -c /etc/denen/bridge.yaml
"""),
}


def _with_examples(parser: argparse.ArgumentParser, key: str) -> None:
    """Put the examples of ``key`` after a module's own epilog (kept, re-wrapped to the terminal's width: the
    examples are laid out by hand, so the raw formatter would leave a long legend on one line)."""
    own = parser.epilog
    if own and ("example" in own.lower() or _("Examples:") in own):
        return  # the module lays out its own examples
    parts = []
    if own:
        width = max(40, min(100, _terminal_columns() - 2))
        parts.append(textwrap.fill(own, width))
    parts.append(_(_EPILOGS[key]))
    parser.epilog = "\n\n".join(parts)
    parser.formatter_class = _RAW


def _terminal_columns() -> int:
    try:
        return int(os.environ.get("COLUMNS", "")) or os.get_terminal_size().columns
    except (ValueError, OSError):
        return 80


def _command_in(argv: Sequence[str]) -> str | None:
    """The command word of a ``denen`` command line: its first argument that is not an option or the value of
    ``--lang`` (the other top-level options take no value)."""
    skip = False
    for arg in argv:
        if skip:
            skip = False
            continue
        if arg == "--":
            return None
        if arg == "--lang":
            skip = True
            continue
        if not arg.startswith("-"):
            return arg
    return None


def lang_in(argv: Sequence[str]) -> str | None:
    """The value of ``--lang`` before the command word (None when absent or not a language denen has), so that the
    help texts are built in it; argparse checks the value itself."""
    from agent.i18n import LANGUAGES  # noqa: PLC0415

    for i, arg in enumerate(argv):
        if arg == "--lang":
            value = argv[i + 1] if i + 1 < len(argv) else None
        elif arg.startswith("--lang="):
            value = arg.removeprefix("--lang=")
        elif arg == "--" or not arg.startswith("-"):
            return None
        else:
            continue
        return value if value in LANGUAGES else None
    return None


def build_parser(argv: Sequence[str] | None = None) -> argparse.ArgumentParser:
    """The ``denen`` argument parser.

    Args:
        argv: the arguments about to be parsed. Only the command they name gets its full arguments, so only its
            module is imported (``denen --help`` imports none of them); the others get their name and help line.
            None builds every command in full.
    """
    chosen = None if argv is None else _command_in(argv)

    def full(name: str) -> bool:
        return argv is None or chosen == name

    p = argparse.ArgumentParser(prog="denen", description=_("denen edge monitoring agent: LoRa sensor nodes -> "
                                "gateway journal -> MQTT -> InfluxDB/Grafana"), epilog=_(_MAIN_EPILOG),
                                formatter_class=_RAW)
    p.add_argument("--version", action="version", version=f"denen {__version__}",
                   help=_("show program's version number and exit"))
    p.add_argument("--debug", action="store_true", help=_("show tracebacks and debug logs"))
    p.add_argument("--lang", choices=("ja", "en"), default=None,
                   help=_("language of messages: ja or en (default: from LC_ALL, LC_MESSAGES, LANG)"))
    sub = p.add_subparsers(dest="cmd", metavar="COMMAND", title=_("commands"))
    _add_gateway_commands(sub, full)
    _add_backend_commands(sub, full)
    return p


def _verb(sub: Any, name: str, help_text: str, **kwargs: Any) -> argparse.ArgumentParser:
    """A command with its examples (:data:`_EPILOGS`) as epilog."""
    epilog = _EPILOGS.get(name)
    return sub.add_parser(name, help=help_text, epilog=_(epilog) if epilog else None, formatter_class=_RAW,
                          **kwargs)


def _add_gateway_commands(sub: Any, full: Callable[[str], bool]) -> None:
    """``run``, ``flash``, ``doctor``, ``monitor``, ``config``, ``sim``, ``status``, ``node`` and ``demo``: the
    commands of a gateway and of the laptop that sets one up."""
    run = _verb(sub, "run", _("run the gateway agent"))
    run.add_argument("-c", "--config", default=None,
                     help=_("config file (YAML); default: a flashed bundle (SD card / USB), else the installed copy, "
                            "else /etc/denen/config.yaml"))

    fl = sub.add_parser("flash", help=_("write a validated config onto an SD card or USB stick"))
    if full("flash"):
        from agent.tools import flash  # noqa: PLC0415 - stdlib-only at top; heavy imports inside its main()

        flash.add_arguments(fl)  # lays out its own examples
        fl.set_defaults(command_main=flash.main)
    for name, text in (("doctor", _("check a gateway: ports, module, broker, clock, disk, GPIO")),
                       ("monitor", _("live per-node link view for placing sensors"))):
        sp = sub.add_parser(name, help=text)
        if full(name):
            module = importlib.import_module(f"agent.tools.{name}")
            module.add_arguments(sp)
            _with_examples(sp, name)
            sp.set_defaults(command_main=module.main)

    cfg = _verb(sub, "config", _("validate a config, print an example, export its JSON Schema"))
    if full("config"):
        _add_config_actions(cfg)

    sim = _verb(sub, "sim", _("run simulated radio modules and sensor nodes on ptys"))
    sim.add_argument("scenario", help=_("scenario file (YAML), or 'demo' for the demo's own scenario"))
    sim.add_argument("--link-dir", default="/tmp/denen-sim",
                     help=_("folder for the modules' stable device links (the demo config expects /tmp/denen-sim)"))
    sim.add_argument("--duration", type=float, default=None, help=_("stop after this many seconds"))

    st = _verb(sub, "status", _("show the gateway's journal and node state"))
    src = st.add_mutually_exclusive_group()
    src.add_argument("-c", "--config", help=_("config file (its journal.path is read); default: the config the "
                     "agent would run (flashed, installed or /etc/denen/config.yaml)"))
    src.add_argument("-j", "--journal", help=_("journal file"))
    st.add_argument("--json", action="store_true", help=_("machine-readable output (English, times in UTC/epoch)"))

    _add_node_actions(_verb(sub, "node", _("operator actions on one node's state in the gateway's journal")))

    demo = _verb(sub, "demo", _("simulated forest and river -> agent -> MQTT broker -> live view"))
    demo.add_argument("--duration", type=float, default=None, help=_("stop after this many seconds"))
    demo.add_argument("--workdir", default=None,
                      help=_("folder for the demo's journal and broker (default: a temp dir)"))


def _add_node_actions(node: argparse.ArgumentParser) -> None:
    """``denen node reset-counter``."""
    node_sub = node.add_subparsers(dest="node_cmd", required=True, metavar="ACTION")
    rc = node_sub.add_parser(
        "reset-counter", help=_("reset a node's replay windows, for a node whose firmware was re-flashed"),
        description=_("Reset both replay windows of one node (frames with and without MIC), so its next frame is "
                    "accepted whatever its counter: for a node whose firmware was re-flashed and counts from 0 "
                    "again. The running agent carries it out and writes an audit line to its log and journal. "
                    "Run it as the agent's user: sudo -u denen denen node reset-counter NODE"),
        epilog=_(_EPILOGS["node"]), formatter_class=_RAW)
    rc.add_argument("node", help=_("node id (8 hex digits, or 0x...) or node name"))
    rc.add_argument("-c", "--config", default=None,
                    help=_("config file whose journal.path is used; default: the one `denen run` uses"))
    rc.add_argument("--wait", type=float, default=30.0,
                    help=_("seconds to wait for the running agent to carry it out (default 30)"))


def _add_backend_commands(sub: Any, full: Callable[[str], bool]) -> None:
    """``bridge``, ``console`` and ``ack``: the commands of the backend."""
    br = _verb(sub, "bridge", _("MQTT -> InfluxDB bridge (runs on the backend, not on a gateway)"))
    br.add_argument("-c", "--config", dest="bridge_config", default=None, metavar="BRIDGE_CONFIG",
                    help=_("bridge config file (YAML); `denen config example bridge` prints a commented one"))
    br.add_argument("--retire", action="store_true",
                    help=_("take this bridge's client_id out of service: write what its broker session still "
                           "holds, then remove the session (otherwise the broker keeps giving it a share of the "
                           "messages)"))
    if full("bridge"):
        from agent.bridge import deadletter_cli  # noqa: PLC0415 - argparse only at import

        br_sub = br.add_subparsers(dest="bridge_cmd", metavar="ACTION",
                                   title=_("actions (without one: run the bridge)"))
        dl = br_sub.add_parser("dead-letters", help=_("list, show, replay or purge what the bridge could not write"),
                               description=_("The bridge's dead-letter store: what it could not write, and why."),
                               epilog=_(_EPILOGS["dead-letters"]), formatter_class=_RAW)
        deadletter_cli.add_arguments(dl)
        dl.set_defaults(command_main=deadletter_cli.main)

    con = _verb(sub, "console", _("alert acknowledgement pages for staff (runs on the backend)"))
    ack = _verb(sub, "ack", _("signed link to an alert's page; acknowledge, silence the siren, test chirp"),
                description=_("Operator commands to gateways through the console's MQTT login (config "
                              "console.yaml). Exit 0: done; 1: the gateway answered that nothing changed; "
                              "2: no answer, or a config error."))
    if full("console") or full("ack"):
        from agent.console import main as console_main  # noqa: PLC0415 - argparse only at import

        console_main.add_console_arguments(con)
        con.set_defaults(command_main=console_main.console_main)
        console_main.add_ack_arguments(ack)
        ack.set_defaults(command_main=console_main.ack_main)


def _add_config_actions(cfg: argparse.ArgumentParser) -> None:
    """``denen config validate|example|schema``."""
    from agent import assets  # noqa: PLC0415 - the example and schema names

    cfg_sub = cfg.add_subparsers(dest="config_cmd", required=True, metavar="ACTION")
    val = cfg_sub.add_parser("validate", help=_("check config files (gateway, bridge or console: told apart by "
                             "their sections)"), epilog=_(_EPILOGS["config validate"]), formatter_class=_RAW)
    val.add_argument("files", nargs="+", metavar="FILE")
    example_list = "\n".join(f"  {e.name:<15} {e.summary}" for e in assets.EXAMPLES.values())
    ex = cfg_sub.add_parser("example", help=_("print a commented example config (without NAME: list them)"),
                            description=_("Print a commented example config to stdout.") + f"\n\n{example_list}",
                            epilog=_(_EPILOGS["config example"]), formatter_class=_RAW)
    ex.add_argument("name", nargs="?", choices=list(assets.EXAMPLES), metavar="NAME",
                    help=_("one of: {names}").format(names=", ".join(assets.EXAMPLES)))
    sch = cfg_sub.add_parser("schema", help=_("the JSON Schema of a config, for editor completion"),
                             epilog=_(_EPILOGS["config schema"]), formatter_class=_RAW)
    sch.add_argument("kind", nargs="?", default="gateway", choices=list(assets.SCHEMAS), metavar="KIND",
                     help=_("gateway (default), bridge or console"))
    sch.add_argument("-o", "--output", default="-", metavar="PATH",
                     help=_("write it to this file (default: stdout)"))
