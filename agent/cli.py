"""The ``denen`` command.

    denen run [-c CONFIG]               run the gateway agent (without -c: the flashed or installed config)
    denen flash CONFIG TARGET           validate a config and write it, with its credentials, onto an SD card / USB
    denen doctor [-c CONFIG]            one-screen health check of a gateway, each problem with a fix hint
    denen monitor [-c CONFIG]           live per-node view for placing sensors (RSSI, SNR, link margin)
    denen config validate CONFIG...     check config files (gateway or bridge); file, line, key and a hint
    denen config schema [-o PATH]       write the JSON Schema of the config (editor completion)
    denen sim SCENARIO                  start simulated radio modules and nodes; prints their pty paths
    denen status -c CONFIG | -j JOURNAL journal depth, oldest unsent reading, nodes, bad frames, reopens
    denen node reset-counter NODE [-c CONFIG]
                                        reset a node's replay windows (its firmware was re-flashed); audited
    denen demo                          simulated forest and river -> agent -> broker -> live view
    denen bridge -c BRIDGE_CONFIG       MQTT -> InfluxDB bridge, on the backend (config/bridge/bridge.yaml)
    denen console -c CONSOLE_CONFIG     alert acknowledgement pages for staff, on the backend
    denen ack link|ack|silence|test-chirp GATEWAY [KEY] [--by NAME]
                                        signed link to an alert's page; acknowledge, silence, test chirp

Errors are one clear line and a hint, never a traceback (``--debug`` shows it).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import pwd
import re
import signal
import sqlite3
import sys
import threading
import time
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

    node = sub.add_parser("node", help="operator actions on one node's state in the gateway's journal")
    node_sub = node.add_subparsers(dest="node_cmd", required=True, metavar="ACTION")
    rc = node_sub.add_parser(
        "reset-counter", help="reset a node's replay windows, for a node whose firmware was re-flashed",
        description="Reset both replay windows of one node (frames with and without MIC), so its next frame is "
                    "accepted whatever its counter: for a node whose firmware was re-flashed and counts from 0 "
                    "again. The running agent carries it out and writes an audit line to its log and journal. "
                    "Run it as the agent's user: sudo -u denen denen node reset-counter NODE")
    rc.add_argument("node", help="node id (8 hex digits, or 0x...) or node name")
    rc.add_argument("-c", "--config", default=None,
                    help="config file whose journal.path is used; default: the one `denen run` uses")
    rc.add_argument("--wait", type=float, default=30.0,
                    help="seconds to wait for the running agent to carry it out (default 30)")

    demo = sub.add_parser("demo", help="simulated forest and river -> agent -> MQTT broker -> live view")
    demo.add_argument("--duration", type=float, default=None, help="stop after this many seconds")
    demo.add_argument("--workdir", default=None, help="folder for the demo's journal and broker (default: a temp dir)")

    br = sub.add_parser("bridge", help="MQTT -> InfluxDB bridge (runs on the backend, not on a gateway)")
    br.add_argument("-c", "--config", required=True,
                    help="bridge config file (YAML), e.g. config/bridge/bridge.yaml")
    br.add_argument("--retire", action="store_true",
                    help="take this bridge's client_id out of service: write what its broker session still holds, "
                         "then remove the session (otherwise the broker keeps giving it a share of the messages)")

    from agent.console import main as console_main  # noqa: PLC0415 - argparse only at import

    con = sub.add_parser("console", help="alert acknowledgement pages for staff (runs on the backend)")
    console_main.add_console_arguments(con)
    con.set_defaults(command_main=console_main.console_main)
    ack = sub.add_parser("ack", help="signed link to an alert's page; acknowledge, silence the siren, test chirp",
                         description="Operator commands to gateways through the console's MQTT login (config "
                                     "console.yaml). Exit 0: done; 1: the gateway answered that nothing changed; "
                                     "2: no answer, or a config error.")
    console_main.add_ack_arguments(ack)
    ack.set_defaults(command_main=console_main.ack_main)
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
                    kind = _config_kind(f)
                    if kind == "console":
                        from agent.console.config import load_console_config  # noqa: PLC0415

                        ccfg = load_console_config(f)
                        print(f"{f}: ok (console {ccfg.http.public_url}, MQTT {ccfg.mqtt.host}:{ccfg.mqtt.port})")
                        continue
                    if kind == "bridge":
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
    if args.cmd == "node":
        return _node_reset_counter(args.node, args.config, wait_s=args.wait)
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


def _node_reset_counter(node_arg: str, config_path: str | None, *, wait_s: float) -> int:
    """``denen node reset-counter``: leave a request in the journal for the agent, which owns the node state.

    The agent carries it out at its next wake-up (at once: this command wakes it with SIGUSR1), or when it starts
    if it is not running; it logs and journals the audit line. Exit code 0 when done (or queued for an agent that
    is not running), 1 when refused or not done within ``wait_s``.
    """
    from agent.config import load_config, normalise_node_id  # noqa: PLC0415
    from agent.flash import resolve_active_config  # noqa: PLC0415
    from agent.journal import Journal, check_files  # noqa: PLC0415

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
            raise AgentError(f"{node_arg!r} is neither a node name in {active.path} nor a node id (8 hex digits): "
                             f"{exc}") from None
    path = cfg.journal.path
    check_files(path)
    if not os.path.exists(path):
        raise AgentError(f"no journal at {path} (has the agent run with this config? see journal.path)")
    user = _os_user()
    try:
        db = sqlite3.connect(f"file:{path}?mode=rw", uri=True, timeout=10, isolation_level=None)
    except sqlite3.Error as exc:
        raise AgentError(f"cannot open the journal {path}: {exc} (run as the agent's user: sudo -u denen ...)") \
            from None
    try:
        tables = {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        pid = _agent_pid(db)
        if "request" not in tables:
            if pid is not None:
                raise AgentError(f"the running agent (pid {pid}) is older than this command; stop it "
                                 "(sudo systemctl stop denen), run this again, then start it")
            Journal(path, quota_bytes=int(cfg.journal.quota_mb * 1048576)).close()  # brings the schema up to date
        known = db.execute("SELECT 1 FROM node WHERE node=?", (node,)).fetchone() is not None
        if not known and int(node, 16) not in cfg.node_by_id:
            raise AgentError(f"node {node} is not in the config and the journal keeps no state for it: nothing to "
                             "reset")
        cur = db.execute("INSERT INTO request(ts_us, user, action, node) VALUES (?,?,?,?)",
                         (time.time_ns() // 1000, user, "reset_counter", node))
        rid = cur.lastrowid
        if pid is None:
            print(f"request {rid} queued: the agent is not running; it resets node {node}'s windows when it starts "
                  "and logs the audit line then")
            return 0
        _wake(pid)
        deadline = time.monotonic() + wait_s
        while True:
            row = db.execute("SELECT done_us, result FROM request WHERE id=?", (rid,)).fetchone()
            if row is not None and row[0] is not None:
                print(f"request {rid} by {user}: {row[1]}")
                return 1 if row[1].startswith("refused") else 0
            if time.monotonic() >= deadline:
                print(f"request {rid} queued, but the agent (pid {pid}) has not carried it out within {wait_s:g} s; "
                      "it will at its next wake-up (see `denen status`)", file=sys.stderr)
                return 1
            time.sleep(0.1)
    except sqlite3.Error as exc:
        raise AgentError(f"cannot write the request into the journal {path}: {exc}") from None
    finally:
        db.close()


def _os_user() -> str:
    """Who runs this command, for the audit trail: the OS user, and who became it through sudo."""
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
