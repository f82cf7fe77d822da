"""The ``denen`` command.

    denen run [-c CONFIG]               run the gateway agent (without -c: the flashed or installed config)
    denen flash CONFIG TARGET           validate a config and write it, with its credentials, onto an SD card / USB
    denen doctor [-c CONFIG]            one-screen health check of a gateway, each problem with a fix hint
    denen monitor [-c CONFIG]           live per-node view for placing sensors (RSSI, SNR, link margin)
    denen config validate CONFIG...     check config files (gateway or bridge); file, line, key and a hint
    denen config schema [-o PATH]       write the JSON Schema of the config (editor completion)
    denen sim SCENARIO                  start simulated radio modules and nodes; prints their pty paths
    denen status -c CONFIG | -j JOURNAL journal depth, oldest unsent reading, nodes, bad frames, reopens
    denen demo                          simulated forest and river -> agent -> broker -> live view
    denen bridge -c BRIDGE_CONFIG       MQTT -> InfluxDB bridge, on the backend (config/bridge/bridge.yaml)

Errors are one clear line and a hint, never a traceback (``--debug`` shows it).
"""

from __future__ import annotations

import argparse
import json
import logging
import signal
import sys
import threading
from pathlib import Path
from typing import Any

from agent import __version__
from agent.errors import AgentError, ConfigError

log = logging.getLogger("denen")

DEFAULT_SCHEMA_PATH = Path(__file__).resolve().parent.parent / "config" / "denen.schema.json"


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="denen", description="denen edge monitoring agent")
    p.add_argument("--version", action="version", version=f"denen {__version__}")
    p.add_argument("--debug", action="store_true", help="show tracebacks and debug logs")
    sub = p.add_subparsers(dest="cmd", required=True, metavar="COMMAND")

    run = sub.add_parser("run", help="run the gateway agent")
    run.add_argument("-c", "--config", default=None,
                     help="config file (YAML); default: a flashed bundle (SD card / USB), else the installed copy, "
                          "else /etc/denen/config.yaml")

    from agent import doctor, flash, monitor  # noqa: PLC0415 - light modules; heavy imports stay inside main()

    for name, module, text in (("flash", flash, "write a validated config onto an SD card or USB stick"),
                               ("doctor", doctor, "check a gateway: ports, module, broker, clock, disk, GPIO"),
                               ("monitor", monitor, "live per-node link view for placing sensors")):
        sp = sub.add_parser(name, help=text)
        module.add_arguments(sp)
        sp.set_defaults(command_main=module.main)

    cfg = sub.add_parser("config", help="validate a config or export its JSON Schema")
    cfg_sub = cfg.add_subparsers(dest="config_cmd", required=True, metavar="ACTION")
    val = cfg_sub.add_parser("validate", help="check config files")
    val.add_argument("files", nargs="+")
    sch = cfg_sub.add_parser("schema", help="write the JSON Schema for editor completion")
    sch.add_argument("-o", "--output", default=str(DEFAULT_SCHEMA_PATH), help="where to write it ('-' for stdout)")

    sim = sub.add_parser("sim", help="run simulated radio modules and sensor nodes on ptys")
    sim.add_argument("scenario", help="scenario file (YAML)")
    sim.add_argument("--link-dir", default="/tmp/denen-sim",
                     help="folder for the modules' stable device links (config/demo.yaml expects /tmp/denen-sim)")
    sim.add_argument("--duration", type=float, default=None, help="stop after this many seconds")

    st = sub.add_parser("status", help="show the gateway's journal and node state")
    src = st.add_mutually_exclusive_group(required=True)
    src.add_argument("-c", "--config", help="config file (its journal.path is read)")
    src.add_argument("-j", "--journal", help="journal file")
    st.add_argument("--json", action="store_true", help="machine-readable output")

    demo = sub.add_parser("demo", help="simulated forest and river -> agent -> MQTT broker -> live view")
    demo.add_argument("--duration", type=float, default=None, help="stop after this many seconds")
    demo.add_argument("--workdir", default=None, help="folder for the demo's journal and broker (default: a temp dir)")

    br = sub.add_parser("bridge", help="MQTT -> InfluxDB bridge (runs on the backend, not on a gateway)")
    br.add_argument("-c", "--config", required=True,
                    help="bridge config file (YAML), e.g. config/bridge/bridge.yaml")
    br.add_argument("--retire", action="store_true",
                    help="take this bridge's client_id out of service: write what its broker session still holds, "
                         "then remove the session (otherwise the broker keeps giving it a share of the messages)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.debug else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        return _dispatch(args)
    except ConfigError as exc:
        print(str(exc), file=sys.stderr)
        return 2
    except AgentError as exc:
        if args.debug:
            raise
        print(f"denen: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


def _dispatch(args: argparse.Namespace) -> int:
    if getattr(args, "command_main", None) is not None:
        return int(args.command_main(args))
    if args.cmd == "run":
        return _run(args.config)
    if args.cmd == "config":
        from agent.config import load_config, write_json_schema  # noqa: PLC0415

        if args.config_cmd == "validate":
            failed = 0
            for f in args.files:
                try:
                    if _is_bridge_config(f):
                        from agent.bridge.config import load_bridge_config  # noqa: PLC0415

                        bcfg = load_bridge_config(f)
                        print(f"{f}: ok (bridge {bcfg.mqtt.effective_client_id()}, group {bcfg.mqtt.group} -> "
                              f"{bcfg.sink.target()})")
                        continue
                    cfg = load_config(f)
                except ConfigError as exc:
                    print(str(exc), file=sys.stderr)
                    failed += 1
                else:
                    print(f"{f}: ok (gateway {cfg.gateway.id}, {len(cfg.radios)} radios, {len(cfg.nodes)} nodes)")
            return 2 if failed else 0
        if args.output == "-":
            from agent.config import config_json_schema  # noqa: PLC0415

            print(json.dumps(config_json_schema(), indent=2, ensure_ascii=False))
        else:
            write_json_schema(args.output)
            print(f"wrote {args.output}")
        return 0
    if args.cmd == "status":
        return _status(args)
    if args.cmd == "sim":
        return _sim(args.scenario, args.link_dir, args.duration)
    if args.cmd == "demo":
        from agent.demo import run_demo  # noqa: PLC0415

        return run_demo(duration=args.duration, workdir=args.workdir)
    if args.cmd == "bridge":
        return _bridge(args.config, retire=args.retire)
    raise AssertionError(args.cmd)


def _run(config_path: str | None) -> int:
    from agent.config import load_config  # noqa: PLC0415
    from agent.flash import resolve_active_config  # noqa: PLC0415
    from agent.gateway import Gateway  # noqa: PLC0415

    active = resolve_active_config(config_path)
    for problem in active.problems:
        log.error("%s", problem)
    for note in active.notes:
        log.info("%s", note)
    cfg = load_config(active.path)
    logging.getLogger().setLevel(getattr(logging, cfg.log.level.upper()))
    gw = Gateway(cfg, active_config=active.describe())
    _stop_on_signals(gw.stop)
    log.info("denen %s: %s, gateway %s", __version__, active.describe(), cfg.gateway.id)
    gw.run()
    return 0


def _is_bridge_config(path: str) -> bool:
    """A bridge config (``sink:``, no ``gateway:``) is validated as one; anything else as a gateway config."""
    from agent.bridge.config import looks_like_bridge_config  # noqa: PLC0415
    from agent.config import read_config_text  # noqa: PLC0415

    try:
        return looks_like_bridge_config(read_config_text(path))
    except ConfigError:
        return False  # unreadable: load_config reports it


def _bridge(config_path: str, *, retire: bool = False) -> int:
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
            print("denen: the bridge stopped before its session was drained; the session stays on the broker "
                  "(run --retire again to finish)", file=sys.stderr)
            return 1
        return 0
    bridge.run()
    return 0


def _stop_on_signals(stop: Any) -> None:
    def handler(signum: int, frame: Any) -> None:
        log.info("signal %d: stopping", signum)
        # stop() joins the core thread; the core runs in the main thread here, so only set the flag.
        threading.Thread(target=stop, kwargs={"timeout": 0}, daemon=True).start()

    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, handler)


def _status(args: argparse.Namespace) -> int:
    from rich.console import Console  # noqa: PLC0415

    from agent import status  # noqa: PLC0415

    journal = args.journal
    if journal is None:
        from agent.config import load_config  # noqa: PLC0415

        journal = load_config(args.config).journal.path
    data = status.collect(journal)
    if args.json:
        print(json.dumps(data, indent=2, ensure_ascii=False))
    else:
        status.render(data, Console())
    return 0


def _sim(scenario_path: str, link_dir: str, duration: float | None) -> int:
    from drivers.sim.scenario import Scenario  # noqa: PLC0415

    try:
        scenario = Scenario.from_file(scenario_path, link_dir=link_dir)
    except (ValueError, OSError) as exc:
        raise AgentError(str(exc)) from exc
    done = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: done.set())
    signal.signal(signal.SIGINT, lambda *_: done.set())
    scenario.start()
    try:
        for name, module in scenario.modules.items():
            print(f"{name}: {module.path} -> {module.port.slave_path}", flush=True)
        print(f"{len(scenario.nodes)} nodes sending; Ctrl-C stops", flush=True)
        done.wait(duration)
    finally:
        scenario.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
