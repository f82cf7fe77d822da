"""The ``denen`` command.

    denen run [-c CONFIG]               run the gateway agent (without -c: the flashed or installed config)
    denen flash CONFIG TARGET           validate a config and write it, with its credentials, onto an SD card / USB
    denen doctor [-c CONFIG]            one-screen health check of a gateway, each problem with a fix hint
    denen monitor [-c CONFIG]           live per-node view for placing sensors (RSSI, SNR, link margin)
    denen config validate CONFIG...     check config files (gateway, bridge or console); file, line, key and a hint
    denen config example [NAME]         print a commented example config (without NAME: list them)
    denen config schema [KIND] [-o P]   the JSON Schema of a config kind (editor completion), to stdout or P
    denen sim SCENARIO                  start simulated radio modules and nodes; prints their pty paths
    denen status [-c CONFIG | -j JOURNAL]
                                        journal depth, oldest unsent reading, nodes, bad frames, reopens
    denen node reset-counter NODE [-c CONFIG]
                                        reset a node's replay windows (its firmware was re-flashed); audited
    denen demo                          simulated forest and river -> agent -> broker -> live view
    denen bridge -c BRIDGE_CONFIG       MQTT -> InfluxDB bridge, on the backend (denen config example bridge)
    denen bridge dead-letters list|show|replay|purge
                                        what the bridge could not write: read it, write it again, remove it
    denen console -c CONSOLE_CONFIG     alert acknowledgement pages for staff, on the backend
    denen ack link|ack|silence|test-chirp GATEWAY [KEY] [--by NAME]
                                        signed link to an alert's page; acknowledge, silence, test chirp

Errors are one clear line and a hint, never a traceback (``--debug`` shows it). Output cut short by a closed pipe
(``denen status --json | head -1``) ends quietly with exit code 141, as a command killed by SIGPIPE does.

Building the parser imports the standard library and the light argument modules only (doctor, flash, monitor,
console.main, bridge.deadletter_cli, assets): pydantic, rich, paho, pyserial and ruamel.yaml load
inside the command that needs them, so ``denen --help`` starts at once.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import re
import sys
import textwrap
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from agent import __version__
from agent.errors import AgentError, ConfigError
from agent.i18n import N_, _
from drivers.errors import DriverError

if TYPE_CHECKING:
    import sqlite3

log = logging.getLogger("denen")

#: Python modules that come only with an extra of the package: a missing one is named with the extra to install.
_EXTRA_OF_MODULE = {"influxdb_client": "bridge"}

#: Exit code of output cut short by a closed pipe: what a shell reports for a command killed by SIGPIPE (13).
EXIT_BROKEN_PIPE = 141

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


def _lang_in(argv: Sequence[str]) -> str | None:
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


def _parser(argv: Sequence[str] | None = None) -> argparse.ArgumentParser:
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

    def verb(name: str, help_text: str, **kwargs: Any) -> argparse.ArgumentParser:
        epilog = _EPILOGS.get(name)
        return sub.add_parser(name, help=help_text, epilog=_(epilog) if epilog else None, formatter_class=_RAW,
                              **kwargs)

    run = verb("run", _("run the gateway agent"))
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

    cfg = verb("config", _("validate a config, print an example, export its JSON Schema"))
    if full("config"):
        _add_config_actions(cfg)

    sim = verb("sim", _("run simulated radio modules and sensor nodes on ptys"))
    sim.add_argument("scenario", help=_("scenario file (YAML), or 'demo' for the demo's own scenario"))
    sim.add_argument("--link-dir", default="/tmp/denen-sim",
                     help=_("folder for the modules' stable device links (the demo config expects /tmp/denen-sim)"))
    sim.add_argument("--duration", type=float, default=None, help=_("stop after this many seconds"))

    st = verb("status", _("show the gateway's journal and node state"))
    src = st.add_mutually_exclusive_group()
    src.add_argument("-c", "--config", help=_("config file (its journal.path is read); default: the config the "
                     "agent would run (flashed, installed or /etc/denen/config.yaml)"))
    src.add_argument("-j", "--journal", help=_("journal file"))
    st.add_argument("--json", action="store_true", help=_("machine-readable output (English, times in UTC/epoch)"))

    node = verb("node", _("operator actions on one node's state in the gateway's journal"))
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

    demo = verb("demo", _("simulated forest and river -> agent -> MQTT broker -> live view"))
    demo.add_argument("--duration", type=float, default=None, help=_("stop after this many seconds"))
    demo.add_argument("--workdir", default=None,
                      help=_("folder for the demo's journal and broker (default: a temp dir)"))

    br = verb("bridge", _("MQTT -> InfluxDB bridge (runs on the backend, not on a gateway)"))
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

    con = verb("console", _("alert acknowledgement pages for staff (runs on the backend)"))
    ack = verb("ack", _("signed link to an alert's page; acknowledge, silence the siren, test chirp"),
               description=_("Operator commands to gateways through the console's MQTT login (config "
                             "console.yaml). Exit 0: done; 1: the gateway answered that nothing changed; "
                             "2: no answer, or a config error."))
    if full("console") or full("ack"):
        from agent.console import main as console_main  # noqa: PLC0415 - argparse only at import

        console_main.add_console_arguments(con)
        con.set_defaults(command_main=console_main.console_main)
        console_main.add_ack_arguments(ack)
        ack.set_defaults(command_main=console_main.ack_main)
    return p


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


def main(argv: list[str] | None = None) -> int:
    """Run one ``denen`` command; returns its exit code."""
    try:
        try:
            code = _main(argv)
        except SystemExit:  # --help, --version, a usage error: argparse has written what it had to say
            sys.stdout.flush()
            raise
        sys.stdout.flush()  # a closed pipe shows here, not in the interpreter's exit (where it prints a warning)
        return code
    except BrokenPipeError:
        return _broken_pipe()


def _broken_pipe() -> int:
    """The reader went away (``| head``): say nothing, and point stdout at /dev/null so the interpreter's final
    flush of what is still buffered cannot fail again."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError):
        pass
    return EXIT_BROKEN_PIPE


def _main(argv: list[str] | None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    from agent import i18n  # noqa: PLC0415 - stdlib only

    # Chosen before the parser is built: its help texts are looked up as it is built.
    i18n.set_language(_lang_in(argv) or None)
    parser = _parser(argv)
    args = parser.parse_args(argv)
    if getattr(args, "json", False):
        i18n.set_language("en")  # machine-readable output is the same whatever the language
    if args.cmd is None:
        parser.print_help(sys.stderr)
        return 2
    from agent.logsetup import configure_logging  # noqa: PLC0415 - stdlib only

    # Under systemd: <N> priority prefixes for journald and no timestamp of our own; elsewhere plain timestamped lines.
    configure_logging(debug=args.debug)
    try:
        return _dispatch(args)
    except ConfigError as exc:
        if args.debug:
            raise
        print(str(exc), file=sys.stderr)
        return 2
    except (AgentError, DriverError) as exc:  # DriverError: e.g. no usable libcrypto for the frame MIC
        if args.debug:
            raise
        print(_("denen: error: {message}").format(message=exc), file=sys.stderr)
        return 1
    except ModuleNotFoundError as exc:
        if args.debug or not exc.name:
            raise
        print(_missing_module(exc.name), file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


def _missing_module(name: str) -> str:
    """One line for a Python module this install lacks: the extra that brings it, else a broken install."""
    top = name.split(".")[0]
    extra = _EXTRA_OF_MODULE.get(top)
    if extra is not None:
        return _("denen: error: this needs the Python module {module}, which comes with the [{extra}] extra "
                 "(hint: pipx install --force 'denen_agent-*.whl[{extra}]', or pip install "
                 "'denen-agent[{extra}]')").format(module=top, extra=extra)
    return _("denen: error: the Python module {module} is missing: this install of denen is incomplete "
             "(hint: reinstall it: pipx install --force denen_agent-*.whl)").format(module=top)


def _dispatch(args: argparse.Namespace) -> int:
    if getattr(args, "command_main", None) is not None:
        if args.cmd == "bridge":
            _bridge_config_for_action(args)
        return int(args.command_main(args))
    if args.cmd == "run":
        return _run(args.config)
    if args.cmd == "config":
        if args.config_cmd == "validate":
            return _config_validate(args.files)
        if args.config_cmd == "example":
            return _config_example(args.name)
        return _config_schema(args.kind, args.output)
    if args.cmd == "status":
        return _status(args)
    if args.cmd == "node":
        return _node_reset_counter(args.node, args.config, wait_s=args.wait)
    if args.cmd == "sim":
        return _sim(args.scenario, args.link_dir, args.duration)
    if args.cmd == "demo":
        from agent.dev.demo import run_demo  # noqa: PLC0415

        return run_demo(duration=args.duration, workdir=args.workdir)
    if args.cmd == "bridge":
        if args.bridge_config is None:
            raise AgentError(_("denen bridge needs its config: denen bridge -c BRIDGE_CONFIG (hint: `denen config "
                               "example bridge > bridge.yaml` prints a commented one)"))
        return _bridge(args.bridge_config, retire=args.retire)
    raise AssertionError(args.cmd)


def _bridge_config_for_action(args: argparse.Namespace) -> None:
    """``denen bridge -c X dead-letters list``: the -c before the action names the config too (the action's own
    -c has a default, which argparse would otherwise put over X)."""
    from agent.bridge import deadletter_cli  # noqa: PLC0415

    given = getattr(args, "bridge_config", None)
    if given is None:
        return
    if args.config not in (deadletter_cli.DEFAULT_CONFIG, given):
        raise AgentError(_("two bridge configs given ({first} and {second}): give -c once").format(
            first=given, second=args.config))
    args.config = given


def _config_validate(files: list[str]) -> int:
    from agent.config import load_config  # noqa: PLC0415

    failed = 0
    for f in files:
        try:
            kind = _config_kind(f)
            if kind == "console":
                from agent.console.config import load_console_config  # noqa: PLC0415

                ccfg = load_console_config(f)
                print(_("{file}: ok (console {url}, MQTT {broker})").format(
                    file=f, url=ccfg.http.public_url, broker=f"{ccfg.mqtt.host}:{ccfg.mqtt.port}"))
                continue
            if kind == "bridge":
                from agent.bridge.config import load_bridge_config  # noqa: PLC0415

                bcfg = load_bridge_config(f)
                print(_("{file}: ok (bridge {client}, group {group} -> {sink})").format(
                    file=f, client=bcfg.mqtt.effective_client_id(), group=bcfg.mqtt.group, sink=bcfg.sink.target()))
                continue
            cfg = load_config(f)
        except ConfigError as exc:
            print(str(exc), file=sys.stderr)
            failed += 1
        else:
            print(_("{file}: ok (gateway {gateway}, {radios} radios, {nodes} nodes)").format(
                file=f, gateway=cfg.gateway.id, radios=len(cfg.radios), nodes=len(cfg.nodes)))
    return 2 if failed else 0


def _config_example(name: str | None) -> int:
    """``denen config example [NAME]``: the commented example on stdout, or the list of them."""
    from agent import assets  # noqa: PLC0415

    if name is None:
        for e in assets.EXAMPLES.values():
            print(f"{e.name:<15} {e.summary}")
        print("\n" + _("Print one with: denen config example NAME > config.yaml"))
        return 0
    sys.stdout.write(assets.read_text(assets.EXAMPLES[name].asset))
    return 0


def json_schema(kind: str) -> dict[str, Any]:
    """The JSON Schema of a config kind (``gateway``, ``bridge``, ``console``), as ``denen config schema`` writes
    it and as shipped in the files :data:`agent.assets.SCHEMAS` names."""
    if kind == "gateway":
        from agent.config import config_json_schema  # noqa: PLC0415

        return config_json_schema()
    if kind == "bridge":
        from agent.bridge.config import BridgeConfig as model  # noqa: PLC0415
        title = "denen bridge configuration"
    elif kind == "console":
        from agent.console.config import ConsoleConfig as model  # noqa: PLC0415
        title = "denen console configuration"
    else:
        raise ValueError(f"no config kind {kind!r}")
    schema = model.model_json_schema(mode="validation")
    return {"$schema": "https://json-schema.org/draft/2020-12/schema", **schema, "title": title}


def schema_text(kind: str) -> str:
    """:func:`json_schema` as the pretty-printed UTF-8 JSON text written to files and stdout."""
    import json  # noqa: PLC0415

    return json.dumps(json_schema(kind), indent=2, ensure_ascii=False) + "\n"


def _config_schema(kind: str, output: str) -> int:
    text = schema_text(kind)
    if output == "-":
        sys.stdout.write(text)
        return 0
    try:
        with open(output, "w", encoding="utf-8") as f:
            f.write(text)
    except OSError as exc:
        raise AgentError(_("cannot write {path}: {error} (hint: a folder you may write, e.g. "
                           "-o ./denen.schema.json)").format(path=output, error=exc.strerror)) from None
    print(_("wrote {path} ({kind} config schema)").format(path=output, kind=kind), file=sys.stderr)
    return 0


def _run(config_path: str | None) -> int:
    import signal  # noqa: PLC0415

    from agent.config import load_config  # noqa: PLC0415
    from agent.tools.flash import resolve_active_config  # noqa: PLC0415
    from agent.gateway.core import Gateway  # noqa: PLC0415

    active = resolve_active_config(config_path)
    for problem in active.problems:
        log.error("%s", problem)
    for note in active.notes:
        log.info("%s", note)
    cfg = load_config(active.path)
    logging.getLogger().setLevel(getattr(logging, cfg.log.level.upper()))
    gw = Gateway(cfg, active_config=active.describe())
    _stop_on_signals(gw.stop)
    # `denen node reset-counter` wakes the core this way, so a request is carried out at once (SimpleQueue.put
    # may be called from a signal handler).
    signal.signal(signal.SIGUSR1, lambda signum, frame: gw.inbox.put(("wake",)))
    log.info("denen %s: %s, gateway %s", __version__, active.describe(), cfg.gateway.id)
    gw.run()
    return 0


def _config_kind(path: str) -> str:
    """Which schema validates a file: ``console`` (top-level ``http:`` and ``links:``), ``bridge`` (``sink:``, no
    ``gateway:``), else ``gateway``."""
    from agent.bridge.config import looks_like_bridge_config  # noqa: PLC0415
    from agent.config import read_config_text  # noqa: PLC0415

    try:
        text = read_config_text(path)
    except ConfigError:
        return "gateway"  # unreadable: load_config reports it
    keys = set(re.findall(r"^([A-Za-z_][A-Za-z0-9_]*)\s*:", text, re.M))
    if {"http", "links"} <= keys and "gateway" not in keys:
        return "console"
    return "bridge" if looks_like_bridge_config(text) else "gateway"


def _bridge(config_path: str, *, retire: bool = False) -> int:
    import signal  # noqa: PLC0415
    import threading  # noqa: PLC0415

    from agent.bridge import Bridge, load_bridge_config  # noqa: PLC0415

    cfg = load_bridge_config(config_path)
    logging.getLogger().setLevel(getattr(logging, cfg.log.level.upper()))
    bridge = Bridge(cfg)

    def handler(signum: int, frame: Any) -> None:
        log.info("signal %d: stopping the bridge", signum)
        threading.Thread(target=bridge.request_stop, daemon=True).start()

    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, handler)
    log.info("denen %s bridge: config %s", __version__, config_path)
    if retire:
        if not bridge.retire():
            print(_("denen: the bridge stopped before its session was drained; the session stays on the broker "
                    "(run --retire again to finish)"), file=sys.stderr)
            return 1
        return 0
    bridge.run()
    return 0


def _stop_on_signals(stop: Any) -> None:
    import signal  # noqa: PLC0415
    import threading  # noqa: PLC0415

    def handler(signum: int, frame: Any) -> None:
        log.info("signal %d: stopping", signum)
        # stop() joins the core thread; the core runs in the main thread here, so only set the flag.
        threading.Thread(target=stop, kwargs={"timeout": 0}, daemon=True).start()

    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, handler)


def _status(args: argparse.Namespace) -> int:
    """``denen status``: the journal given with -j, or the journal.path of the config given with -c, else of the
    config the agent would run (found as ``denen run`` finds it, installing nothing). No config models load."""
    import json  # noqa: PLC0415

    from agent.tools import status  # noqa: PLC0415

    journal = args.journal
    if journal is None:
        config_path = args.config
        if config_path is None:
            from agent.tools.flash import resolve_active_config  # noqa: PLC0415

            config_path = resolve_active_config(None, install=False).path
        journal = status.journal_path(config_path)
    data = status.collect(journal)
    if args.json:
        print(json.dumps(data, indent=2, ensure_ascii=False))
    else:
        from rich.console import Console  # noqa: PLC0415

        status.render(data, Console())
    return 0


def _node_reset_counter(node_arg: str, config_path: str | None, *, wait_s: float) -> int:
    """``denen node reset-counter``: leave a request in the journal for the agent, which owns the node state.

    The agent carries it out at its next wake-up (at once: this command wakes it with SIGUSR1), or when it starts
    if it is not running; it logs and journals the audit line. Exit code 0 when done (or queued for an agent that
    is not running), 1 when refused or not done within ``wait_s``.
    """
    import sqlite3  # noqa: PLC0415
    import time  # noqa: PLC0415

    from agent.config import load_config, normalise_node_id  # noqa: PLC0415
    from agent.tools.flash import resolve_active_config  # noqa: PLC0415
    from agent.gateway.journal import Journal, check_files  # noqa: PLC0415

    active = resolve_active_config(config_path)
    cfg = load_config(active.path)
    by_name = {n.name: n.id for n in cfg.nodes}
    if node_arg in by_name:
        node = by_name[node_arg]
    else:
        value: object = node_arg
        if node_arg.lower().startswith("0x"):
            try:
                value = int(node_arg, 16)
            except ValueError:
                pass
        try:
            node = normalise_node_id(value)
        except ValueError as exc:
            raise AgentError(_("{node!r} is neither a node name in {path} nor a node id (8 hex digits): "
                               "{error}").format(node=node_arg, path=active.path, error=exc)) from None
    path = cfg.journal.path
    check_files(path)
    if not os.path.exists(path):
        raise AgentError(_("no journal at {path} (has the agent run with this config? see journal.path)").format(
            path=path))
    user = _os_user()
    try:
        db = sqlite3.connect(f"file:{path}?mode=rw", uri=True, timeout=10, isolation_level=None)
    except sqlite3.Error as exc:
        raise AgentError(_("cannot open the journal {path}: {error} (run as the agent's user: sudo -u denen ...)")
                         .format(path=path, error=exc)) from None
    try:
        tables = {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        pid = _agent_pid(db)
        if "request" not in tables:
            if pid is not None:
                raise AgentError(_("the running agent (pid {pid}) is older than this command; stop it "
                                   "(sudo systemctl stop denen), run this again, then start it").format(pid=pid))
            Journal(path, quota_bytes=int(cfg.journal.quota_mb * 1048576)).close()  # brings the schema up to date
        known = db.execute("SELECT 1 FROM node WHERE node=?", (node,)).fetchone() is not None
        if not known and int(node, 16) not in cfg.node_by_id:
            raise AgentError(_("node {node} is not in the config and the journal keeps no state for it: nothing to "
                               "reset").format(node=node))
        cur = db.execute("INSERT INTO request(ts_us, user, action, node) VALUES (?,?,?,?)",
                         (time.time_ns() // 1000, user, "reset_counter", node))
        rid = cur.lastrowid
        if pid is None:
            print(_("request {id} queued: the agent is not running; it resets node {node}'s windows when it "
                    "starts and logs the audit line then").format(id=rid, node=node))
            return 0
        _wake(pid)
        deadline = time.monotonic() + wait_s
        while True:
            row = db.execute("SELECT done_us, result FROM request WHERE id=?", (rid,)).fetchone()
            if row is not None and row[0] is not None:
                print(_("request {id} by {user}: {result}").format(id=rid, user=user, result=row[1]))
                return 1 if row[1].startswith("refused") else 0
            if time.monotonic() >= deadline:
                print(_("request {id} queued, but the agent (pid {pid}) has not carried it out within {seconds} s; "
                        "it will at its next wake-up (see `denen status`)").format(id=rid, pid=pid,
                                                                                   seconds=f"{wait_s:g}"),
                      file=sys.stderr)
                return 1
            time.sleep(0.1)
    except sqlite3.Error as exc:
        raise AgentError(_("cannot write the request into the journal {path}: {error}").format(path=path, error=exc)
                         ) from None
    finally:
        db.close()


def _os_user() -> str:
    """Who runs this command, for the audit trail: the OS user, and who became it through sudo."""
    import pwd  # noqa: PLC0415

    try:
        name = pwd.getpwuid(os.getuid()).pw_name
    except KeyError:
        name = f"uid {os.getuid()}"
    sudo = os.environ.get("SUDO_USER")
    return f"{name} (sudo from {sudo})" if sudo and sudo != name else name


def _agent_pid(db: sqlite3.Connection) -> int | None:
    """Pid of the agent running on this journal (from its meta row), or None."""
    row = db.execute("SELECT value FROM meta WHERE key='agent_pid'").fetchone()
    if row is None or not row[0]:
        return None
    pid = int(row[0])
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return None
    except PermissionError:
        pass
    return pid


def _wake(pid: int) -> None:
    """SIGUSR1 to the agent, only after checking that the pid is a `denen run` (a stale pid may be reused by a
    process SIGUSR1 would kill); without it the request waits for the core's next wake-up."""
    import signal  # noqa: PLC0415

    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            args = f.read().split(b"\0")
    except OSError:
        return
    if b"run" in args and any(a.endswith((b"denen", b"agent.cli")) for a in args):
        try:
            os.kill(pid, signal.SIGUSR1)
        except OSError:
            pass


def _sim(scenario_path: str, link_dir: str, duration: float | None) -> int:
    import signal  # noqa: PLC0415
    import threading  # noqa: PLC0415

    from drivers.sim.scenario import Scenario  # noqa: PLC0415

    from agent import assets  # noqa: PLC0415

    try:
        if scenario_path == "demo" and not os.path.exists(scenario_path):
            with assets.as_file(assets.DEMO_SCENARIO) as packaged:
                scenario = Scenario.from_file(packaged, link_dir=link_dir)
        else:
            scenario = Scenario.from_file(scenario_path, link_dir=link_dir)
    except (ValueError, OSError) as exc:
        raise AgentError(str(exc)) from exc
    done = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_args: done.set())
    signal.signal(signal.SIGINT, lambda *_args: done.set())
    scenario.start()
    try:
        for name, module in scenario.modules.items():
            print(f"{name}: {module.path} -> {module.port.slave_path}", flush=True)
        print(_("{count} nodes sending; Ctrl-C stops").format(count=len(scenario.nodes)), flush=True)
        done.wait(duration)
    finally:
        scenario.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
