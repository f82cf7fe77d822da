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

The parser (:mod:`agent.cli_parser`) imports the standard library and the light argument modules only; each
command's own module (:mod:`agent.cli_config`, :mod:`agent.cli_node`, :mod:`agent.cli_run`, ...) is imported when
that command runs, and loads pydantic, rich, paho, pyserial and ruamel.yaml inside the function that needs them,
so ``denen --help`` starts at once.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys

from agent.cli_parser import build_parser, lang_in
from agent.errors import AgentError, ConfigError
from agent.i18n import _
from drivers.errors import DenenError

log = logging.getLogger("denen")

#: Python modules that come only with an extra of the package: a missing one is named with the extra to install.
_EXTRA_OF_MODULE = {"influxdb_client": "bridge"}

#: Exit code of output cut short by a closed pipe: what a shell reports for a command killed by SIGPIPE (13).
EXIT_BROKEN_PIPE = 141


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
    i18n.set_language(lang_in(argv) or None)
    parser = build_parser(argv)
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
    except DenenError as exc:  # every error of denen's own, e.g. no usable libcrypto for the frame MIC
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
        from agent.cli_run import run  # noqa: PLC0415

        return run(args.config)
    if args.cmd == "config":
        from agent import cli_config  # noqa: PLC0415

        if args.config_cmd == "validate":
            return cli_config.validate(args.files)
        if args.config_cmd == "example":
            return cli_config.example(args.name)
        return cli_config.schema(args.kind, args.output)
    if args.cmd == "status":
        return _status(args)
    if args.cmd == "node":
        from agent.cli_node import reset_counter  # noqa: PLC0415

        return reset_counter(args.node, args.config, wait_s=args.wait)
    if args.cmd == "sim":
        from agent.cli_run import sim  # noqa: PLC0415

        return sim(args.scenario, args.link_dir, args.duration)
    if args.cmd == "demo":
        from agent.dev.demo import run_demo  # noqa: PLC0415

        return run_demo(duration=args.duration, workdir=args.workdir)
    if args.cmd == "bridge":
        if args.bridge_config is None:
            raise AgentError(_("denen bridge needs its config: denen bridge -c BRIDGE_CONFIG (hint: `denen config "
                               "example bridge > bridge.yaml` prints a commented one)"))
        from agent.cli_run import bridge  # noqa: PLC0415

        return bridge(args.bridge_config, retire=args.retire)
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


def _status(args: argparse.Namespace) -> int:
    """``denen status``: the journal given with -j, or the journal.path of the config given with -c, else of the
    config the agent would run (found as ``denen run`` finds it, installing nothing). No config models load."""
    import json  # noqa: PLC0415

    from agent.tools import status  # noqa: PLC0415

    journal = args.journal
    if journal is None:
        config_path = args.config
        if config_path is None:
            from agent.gateway.boot import resolve_active_config  # noqa: PLC0415

            config_path = resolve_active_config(None, install=False).path
        journal = status.journal_path(config_path)
    data = status.collect(journal)
    if args.json:
        print(json.dumps(data, indent=2, ensure_ascii=False))
    else:
        from rich.console import Console  # noqa: PLC0415

        status.render(data, Console())
    return 0


if __name__ == "__main__":
    sys.exit(main())
