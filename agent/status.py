"""``denen status``: what the gateway's journal says, read without disturbing the running agent.

The journal is opened read-only beside the agent (WAL lets readers and the one writer work at once). What the
gateway last published on its retained state topic (siren, lamp, held readings, open alerts) is read from the copy
the agent keeps in the journal, so it shows without the broker.

Only the standard library is imported at the top: ``denen status --json`` finds the journal through
:func:`journal_path` without the pydantic models of :mod:`agent.config`, and rich is loaded only to render.
"""

from __future__ import annotations

import json
import os
import sqlite3
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from agent.errors import AgentError, ConfigError, ConfigIssue

if TYPE_CHECKING:
    from rich.console import Console

#: Where the journal lives when the config has no ``journal.path``; :class:`agent.config.JournalConfig` uses it too.
DEFAULT_JOURNAL_PATH = "/var/lib/denen/journal.db"


def journal_path(config_path: str) -> str:
    """The ``journal.path`` of a gateway config (its default when absent), read without validating the config.

    A relative path is resolved against the config file's directory, as :func:`agent.config.load_config` does.
    Only the YAML is parsed; the rest of the file is not checked (``denen config validate`` does that).

    Raises:
        ConfigError: one issue naming the file: unreadable, not UTF-8, not YAML, not a mapping, or a ``journal``
            section or ``journal.path`` of the wrong shape.
    """
    def fail(message: str, hint: str | None = None, line: int | None = None, column: int | None = None,
             key: str = "") -> ConfigError:
        return ConfigError([ConfigIssue(config_path, line, column, key, message, hint)])

    try:
        with open(config_path, "rb") as f:
            raw = f.read()
    except FileNotFoundError:
        raise fail("config file not found", "check the path, or give the journal with -j") from None
    except OSError as exc:
        raise fail(f"cannot read the config file: {exc.strerror}") from None
    try:
        text = raw.decode("utf-8-sig")  # editors on Windows laptops often save a BOM
    except UnicodeDecodeError as exc:
        raise fail("the file is not valid UTF-8 text", "save the file as UTF-8",
                   line=raw[: exc.start].count(b"\n") + 1) from None

    from ruamel.yaml import YAML  # noqa: PLC0415 - only this command needs YAML
    from ruamel.yaml.error import MarkedYAMLError, YAMLError  # noqa: PLC0415

    hint = "run `denen config validate` on it for every problem"
    try:
        data = YAML(typ="safe").load(text)
    except MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        problem = " ".join(str(exc.problem or exc.context or "cannot parse the file").split())
        raise fail(f"YAML syntax error: {problem}", hint, line=mark.line + 1 if mark else None,
                   column=mark.column + 1 if mark else None) from None
    except YAMLError as exc:
        raise fail(f"YAML error: {' '.join(str(exc).split())[:160]}", hint) from None
    except Exception as exc:  # noqa: BLE001 - ruamel's constructors raise plain TypeError/ValueError on odd tags
        raise fail(f"YAML the loader cannot read ({type(exc).__name__})", hint) from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise fail("the top level must be a mapping of sections (gateway:, journal:, ...)", hint)
    journal = data.get("journal")
    if journal is None:  # absent, or an empty section
        journal = {}
    if not isinstance(journal, dict):
        raise fail("must be a mapping (path:, quota_mb:)", hint, key="journal")
    path = journal.get("path", DEFAULT_JOURNAL_PATH)
    if not isinstance(path, str) or not path:
        raise fail("must be a file path (text)", hint, key="journal.path")
    if "\0" in path:
        raise fail("holds a NUL character", hint, key="journal.path")
    resolved = Path(path)
    if not resolved.is_absolute():
        resolved = Path(config_path).absolute().parent / resolved
    return str(resolved)


def collect(journal_path: str) -> dict[str, Any]:
    """Everything ``denen status`` shows, as plain data (the ``--json`` output).

    Raises:
        AgentError: the journal does not exist or cannot be read.
    """
    if not os.path.exists(journal_path):
        raise AgentError(f"no journal at {journal_path} (has the agent run with this config? see journal.path)")
    try:
        db = sqlite3.connect(f"file:{journal_path}?mode=ro", uri=True, timeout=5)
        try:
            return _collect(db)
        finally:
            db.close()
    except sqlite3.Error as exc:
        raise AgentError(f"cannot read the journal {journal_path}: {exc}") from exc


def _collect(db: sqlite3.Connection) -> dict[str, Any]:
    from agent.journal import LANES  # noqa: PLC0415 - keeps this module's import cheap for journal_path

    now_us = time.time_ns() // 1000
    depth = dict.fromkeys(LANES, 0)
    for lane, n in db.execute("SELECT lane, COUNT(*) FROM reading GROUP BY lane"):
        depth[LANES[lane]] = n
    oldest = db.execute("SELECT MIN(ts_us) FROM reading").fetchone()[0]
    meta = dict(db.execute("SELECT key, value FROM meta"))
    counters = dict(db.execute("SELECT name, value FROM counter ORDER BY name"))
    nodes = []
    columns = {r[1] for r in db.execute("PRAGMA table_info(node)")}
    # A journal of schema 2 or older (a card's copy, an agent not yet upgraded) has one shared window.
    unsigned = "unsigned_fcnt" if "unsigned_fcnt" in columns else "last_fcnt"
    for row in db.execute(
        f"SELECT node, name, last_fcnt, {unsigned}, last_seen_us, radio, rssi, snr, battery_v, frames_ok, frames_bad"
        " FROM node ORDER BY node"
    ):
        node, name, fcnt_mic, fcnt_none, seen, radio, rssi, snr, batt, ok, bad = row
        nodes.append({
            "node": node, "name": name,
            # The highest counter accepted either way; the two windows beside it (agent.readings).
            "last_fcnt": max((f for f in (fcnt_mic, fcnt_none) if f is not None), default=None),
            "fcnt_mic": fcnt_mic, "fcnt_unsigned": fcnt_none, "last_seen_us": seen,
            "last_seen_age_s": round((now_us - seen) / 1e6, 1) if seen else None,
            "radio": radio, "rssi": rssi, "snr": snr, "battery_v": batt, "frames_ok": ok, "frames_bad": bad,
        })
    tables = {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    audit = [
        {"ts_us": ts, "user": user, "action": action, "node": node, "detail": detail}
        for ts, user, action, node, detail in db.execute(
            "SELECT ts_us, user, action, node, detail FROM audit ORDER BY id DESC LIMIT 10")
    ] if "audit" in tables else []
    pending = [
        {"id": rid, "ts_us": ts, "user": user, "action": action, "node": node}
        for rid, ts, user, action, node in db.execute(
            "SELECT id, ts_us, user, action, node FROM request WHERE done_us IS NULL ORDER BY id")
    ] if "request" in tables else []
    recent = [
        {"ts_us": ts, "radio": radio, "node": node, "reason": reason, "detail": detail}
        for ts, radio, node, reason, detail in db.execute(
            "SELECT ts_us, radio, node, reason, detail FROM quarantine ORDER BY id DESC LIMIT 10"
        )
    ]
    pid = meta.get("agent_pid") or ""
    running = bool(pid) and _alive(int(pid))
    return {
        "gateway": meta.get("gateway"),
        "agent": {"running": running, "pid": int(pid) if running else None, "version": meta.get("agent_version"),
                  "config": meta.get("active_config") or None,
                  "started_us": int(meta["agent_started_us"]) if meta.get("agent_started_us") else None},
        "journal": {"depth": depth, "unsent": sum(depth.values()),
                    "oldest_unsent_age_s": round((now_us - oldest) / 1e6, 1) if oldest else None},
        "bad_frames": {k.removeprefix("frames."): v for k, v in counters.items()
                       if k.startswith("frames.") and k != "frames.ok"},
        "reopens": {k.split(".")[0]: v for k, v in counters.items() if k.endswith(".reopen")},
        "counters": counters,
        "nodes": nodes,
        "quarantine_recent": recent,
        "audit_recent": audit,
        "requests_pending": pending,
        "gateway_state": _gateway_state(meta.get("gateway_state"), now_us),
    }


def _gateway_state(text: str | None, now_us: int) -> dict[str, Any] | None:
    """The last state document the agent recorded (README "State"), with ``age_s``; None before the first one."""
    if not text:
        return None
    try:
        doc = json.loads(text)
        if not isinstance(doc, dict) or not isinstance(doc.get("ts_us"), int):
            raise ValueError("not a state document")
    except ValueError as exc:
        return {"error": f"the recorded state cannot be read: {exc}"}
    return {**doc, "age_s": round((now_us - doc["ts_us"]) / 1e6, 1)}


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def render(status: dict[str, Any], console: Console) -> None:
    """Print the status as a few tables an installer can read on one screen."""
    from rich.table import Table  # noqa: PLC0415 - rich only for the tables, not for --json

    agent = status["agent"]
    state = f"[green]running[/] (pid {agent['pid']})" if agent["running"] else "[red]not running[/]"
    console.print(f"[bold]gateway[/] {status['gateway']}   agent {state}   version {agent['version']}")
    if agent.get("config"):
        console.print(f"active {agent['config']}")
    j = status["journal"]
    age = j["oldest_unsent_age_s"]
    console.print(
        "journal: " + "  ".join(f"{lane} {n}" for lane, n in j["depth"].items())
        + f"   oldest unsent: {'-' if age is None else f'{age:.0f} s'}"
    )
    t = Table(title="nodes", show_lines=False)
    for col in ("node", "name", "last seen", "RSSI dBm", "SNR dB", "battery V", "frames ok", "bad", "fcnt MIC",
                "fcnt no MIC"):
        t.add_column(col)
    for n in status["nodes"]:
        seen = "never" if n["last_seen_age_s"] is None else f"{n['last_seen_age_s']:.0f} s ago"
        t.add_row(n["node"], n["name"] or "?", seen, _fmt(n["rssi"]), _fmt(n["snr"]), _fmt(n["battery_v"], 2),
                  str(n["frames_ok"]), str(n["frames_bad"]), _fmt(n["fcnt_mic"]), _fmt(n["fcnt_unsigned"]))
    console.print(t)
    if status["bad_frames"]:
        console.print("bad frames: " + ", ".join(f"{k} {v}" for k, v in sorted(status["bad_frames"].items())))
    else:
        console.print("bad frames: none")
    if status["reopens"]:
        console.print("port reopens: " + ", ".join(f"{k} {v}" for k, v in status["reopens"].items()))
    other = {k: v for k, v in status["counters"].items() if not k.startswith("frames.") and not k.startswith("readings.")}
    if other:
        console.print("events: " + ", ".join(f"{k} {v}" for k, v in other.items()))
    _render_state(status.get("gateway_state"), agent["running"], console)
    for r in status.get("requests_pending", []):
        console.print(f"pending request {r['id']}: {r['action']} node {r['node']} by {r['user']}")
    for a in status.get("audit_recent", []):
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(a["ts_us"] / 1e6))
        console.print(f"audit {when} UTC {a['user']}: {a['detail']}", markup=False)


def _local(ts_us: Any) -> str:
    if not isinstance(ts_us, int):
        return "?"
    return time.strftime("%Y-%m-%d %H:%M:%S %Z", time.localtime(ts_us / 1e6))


def _render_state(state: dict[str, Any] | None, running: bool, console: Console) -> None:
    """Siren, lamp, held readings and open alerts as the gateway last published them."""
    def say(text: str) -> None:
        # The document holds names and messages from the config and the backend: printed as text, never markup.
        console.print(text, markup=False, highlight=False)

    if state is None:
        say("outputs: no state recorded yet")
        return
    if "error" in state:
        say(f"outputs: {state['error']}")
        return
    when = f"state as of {_local(state['ts_us'])} ({state['age_s']:.0f} s ago)"
    say(when if running else f"{when}; the agent is not running, so this is its last state")
    siren = state.get("siren") or {}
    if not siren.get("configured"):
        line = "siren: none configured"
    elif siren.get("on"):
        why = siren.get("why")
        line = f"siren: SOUNDING for alert {siren.get('alert')}" if why == "alert" else f"siren: sounding ({why})"
    else:
        line = "siren: off"
    if siren.get("silenced"):
        line += f"   silenced for: {', '.join(siren['silenced'])}"
    say(line)
    lamp = state.get("lamp") or {}
    say(f"lamp: {lamp.get('state')}" + ("" if lamp.get("configured") else " (no lamp configured)"))
    held = state.get("held") or {}
    if held.get("active"):
        until = f", until {_local(held['until_us'])} at the latest" if held.get("until_us") else ""
        say(f"held readings: {held.get('count')} (clock not synchronised{until})")
    else:
        say("held readings: none")
    alerts = state.get("alerts") or []
    say(f"open alerts: {len(alerts)}" if alerts else "open alerts: none")
    for a in alerts:
        if a.get("acknowledged_by"):
            ack = f"acknowledged by {a['acknowledged_by']}"
        else:
            ack = "repeating until acknowledged" if a.get("repeating") else "not repeating"
        say(f"  {a.get('key')}  {a.get('severity')}  since {_local(a.get('since_us'))}  {ack}: {a.get('message')}")


def _fmt(v: float | int | None, digits: int = 1) -> str:
    if v is None:
        return "-"
    if isinstance(v, int):
        return str(v)
    return f"{v:.{digits}f}"
