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
from agent.i18n import N_, _, local_time

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
        raise fail(_("config file not found"), _("check the path, or give the journal with -j")) from None
    except OSError as exc:
        raise fail(_("cannot read the config file: {error}").format(error=exc.strerror)) from None
    try:
        text = raw.decode("utf-8-sig")  # editors on Windows laptops often save a BOM
    except UnicodeDecodeError as exc:
        raise fail(_("the file is not valid UTF-8 text"), _("save the file as UTF-8"),
                   line=raw[: exc.start].count(b"\n") + 1) from None

    from ruamel.yaml import YAML  # noqa: PLC0415 - only this command needs YAML
    from ruamel.yaml.error import MarkedYAMLError, YAMLError  # noqa: PLC0415

    hint = _("run `denen config validate` on it for every problem")
    try:
        data = YAML(typ="safe").load(text)
    except MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        problem = " ".join(str(exc.problem or exc.context or "cannot parse the file").split())
        raise fail(_("YAML syntax error: {problem}").format(problem=problem), hint,
                   line=mark.line + 1 if mark else None, column=mark.column + 1 if mark else None) from None
    except YAMLError as exc:
        raise fail(_("YAML error: {error}").format(error=" ".join(str(exc).split())[:160]), hint) from None
    except Exception as exc:  # noqa: BLE001 - ruamel's constructors raise plain TypeError/ValueError on odd tags
        raise fail(_("YAML the loader cannot read ({error})").format(error=type(exc).__name__), hint) from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise fail(_("the top level must be a mapping of sections (gateway:, journal:, ...)"), hint)
    journal = data.get("journal")
    if journal is None:  # absent, or an empty section
        journal = {}
    if not isinstance(journal, dict):
        raise fail(_("must be a mapping (path:, quota_mb:)"), hint, key="journal")
    path = journal.get("path", DEFAULT_JOURNAL_PATH)
    if not isinstance(path, str) or not path:
        raise fail(_("must be a file path (text)"), hint, key="journal.path")
    if "\0" in path:
        raise fail(_("holds a NUL character"), hint, key="journal.path")
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
        raise AgentError(_("no journal at {path} (has the agent run with this config? see journal.path)")
                         .format(path=journal_path))
    try:
        db = sqlite3.connect(f"file:{journal_path}?mode=ro", uri=True, timeout=5)
        try:
            return _collect(db)
        finally:
            db.close()
    except sqlite3.Error as exc:
        raise AgentError(_("cannot read the journal {path}: {error}").format(path=journal_path, error=exc)) from exc


def _collect(db: sqlite3.Connection) -> dict[str, Any]:
    from agent.gateway.journal_schema import lane_counts  # noqa: PLC0415 - keeps this module's import cheap

    now_us = time.time_ns() // 1000
    depth = lane_counts(db)
    oldest = db.execute("SELECT MIN(ts_us) FROM reading").fetchone()[0]
    meta = dict(db.execute("SELECT key, value FROM meta"))
    counters = dict(db.execute("SELECT name, value FROM counter ORDER BY name"))
    nodes = _nodes(db, now_us)
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


def _nodes(db: sqlite3.Connection, now_us: int) -> list[dict[str, Any]]:
    """The journal's node table: each node's last frame, counters and frame counts, by node id."""
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
            # The highest counter accepted either way; the two windows beside it (agent.gateway.readings).
            "last_fcnt": max((f for f in (fcnt_mic, fcnt_none) if f is not None), default=None),
            "fcnt_mic": fcnt_mic, "fcnt_unsigned": fcnt_none, "last_seen_us": seen,
            "last_seen_age_s": round((now_us - seen) / 1e6, 1) if seen else None,
            "radio": radio, "rssi": rssi, "snr": snr, "battery_v": batt, "frames_ok": ok, "frames_bad": bad,
        })
    return nodes


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
    """Print the status as a few tables an installer can read on one screen, in the user's language; times in the
    local zone (:func:`agent.i18n.local_time`)."""
    def say(text: str) -> None:
        # Names, users and details come from the config and the journal: printed as text, never markup.
        console.print(text, markup=False, highlight=False)

    agent = status["agent"]
    state = (_("running (pid {pid})").format(pid=agent["pid"]) if agent["running"] else _("not running"))
    say(_("gateway {gateway}   agent {state}   version {version}").format(
        gateway=status["gateway"], state=state, version=agent["version"]))
    if agent.get("config"):
        say(_("active {config}").format(config=agent["config"]))
    j = status["journal"]
    age = j["oldest_unsent_age_s"]
    say(_("journal: {depths}   oldest unsent: {age}").format(
        depths="  ".join(f"{lane} {n}" for lane, n in j["depth"].items()),
        age="-" if age is None else _("{seconds} s").format(seconds=f"{age:.0f}")))
    console.print(_nodes_table(status["nodes"]))
    if status["bad_frames"]:
        say(_("bad frames: {counts}").format(
            counts=", ".join(f"{k} {v}" for k, v in sorted(status["bad_frames"].items()))))
    else:
        say(_("bad frames: none"))
    if status["reopens"]:
        say(_("port reopens: {counts}").format(counts=", ".join(f"{k} {v}" for k, v in status["reopens"].items())))
    other = {k: v for k, v in status["counters"].items()
             if not k.startswith("frames.") and not k.startswith("readings.")}
    if other:
        say(_("events: {counts}").format(counts=", ".join(f"{k} {v}" for k, v in other.items())))
    _render_quarantine(status.get("quarantine_recent", []), say)
    _render_state(status.get("gateway_state"), agent["running"], console)
    for r in status.get("requests_pending", []):
        say(_("pending request {id}: {action} node {node} by {user}").format(
            id=r["id"], action=r["action"], node=r["node"], user=r["user"]))
    for a in status.get("audit_recent", []):
        say(_("audit {time} {user}: {detail}").format(time=local_time(a["ts_us"]), user=a["user"],
                                                      detail=a["detail"]))


def _nodes_table(nodes: list[dict[str, Any]]) -> Any:
    """The node table of :func:`render` (a rich Table)."""
    from rich import box  # noqa: PLC0415 - rich only for the tables, not for --json
    from rich.cells import cell_len  # noqa: PLC0415
    from rich.table import Table  # noqa: PLC0415

    from agent.tools.monitor import NAME_CELLS, _fit_cells  # noqa: PLC0415 - the monitor's cut of wide names

    # Fits 80 terminal cells with Japanese headers and names (a wide character takes two cells): names are cut
    # to NAME_CELLS cells, figures share two-line columns, node ids are never cut.
    t = Table(title=_("nodes"), box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False, collapse_padding=True,
              padding=(0, 1))
    id_cells = max([cell_len(n["node"]) for n in nodes] + [8])
    t.add_column(_("node"), no_wrap=True, min_width=id_cells)
    t.add_column(_("name"), no_wrap=True)
    t.add_column(_("last seen"), justify="right", no_wrap=True)
    t.add_column(_("RSSI dBm\n/SNR dB"), justify="right", no_wrap=True)
    t.add_column(_("battery\nV"), justify="right", no_wrap=True)
    t.add_column(_("frames\nok/bad"), justify="right", no_wrap=True)
    t.add_column(_("fcnt\nMIC/none"), justify="right", no_wrap=True)
    for n in nodes:
        seen = (_("never") if n["last_seen_age_s"] is None
                else _("{seconds} s ago").format(seconds=f"{n['last_seen_age_s']:.0f}"))
        t.add_row(n["node"], _fit_cells(n["name"] or "?", NAME_CELLS), seen,
                  f"{_fmt(n['rssi'], 0)}/{_fmt(n['snr'])}", _fmt(n["battery_v"], 2),
                  f"{n['frames_ok']}/{n['frames_bad']}", f"{_fmt(n['fcnt_mic'])}/{_fmt(n['fcnt_unsigned'])}")
    return t


#: Words the gateway records in the journal (alert severity, lamp state, why the siren sounds), shown in the user's
#: language in the dashboards' terms; the journal and --json keep them as they are.
_JOURNAL_WORDS = {
    "emergency": N_("emergency"), "warning": N_("warning"), "info": N_("info"),
    "ok": N_("ok"), "no_backhaul": N_("no backhaul"), "alarm": N_("alarm"), "off": N_("off"), "test": N_("test"),
}

#: What the gateway appends to a quarantined frame's detail when values decoded before the refused part survive.
_VALUES_BEFORE = "; values before it: "


def _word(value: object) -> str:
    return _(_JOURNAL_WORDS[value]) if isinstance(value, str) and value in _JOURNAL_WORDS else str(value)


def _render_quarantine(rows: list[dict[str, Any]], say: Any) -> None:
    """The latest frames set aside, newest first: when, which node and radio, why, and the values decoded before
    the part that was refused (an SOS's position can be among them) on a line of their own."""
    if not rows:
        say(_("quarantined frames: none recent"))
        return
    say(_("quarantined frames (latest {count}):").format(count=len(rows)))
    for q in rows:
        detail = str(q.get("detail") or "")
        detail, _sep, values = detail.partition(_VALUES_BEFORE)
        say("  " + _("{time}  node {node}  {radio}  {reason}: {detail}").format(
            time=local_time(q.get("ts_us")), node=q.get("node") or "?", radio=q.get("radio") or "?",
            reason=q.get("reason"), detail=detail))
        if values:
            say("    " + _("values before it: {values}").format(values=values))


def _render_state(state: dict[str, Any] | None, running: bool, console: Console) -> None:
    """Siren, lamp, held readings and open alerts as the gateway last published them."""
    def say(text: str) -> None:
        # The document holds names and messages from the config and the backend: printed as text, never markup.
        console.print(text, markup=False, highlight=False)

    if state is None:
        say(_("outputs: no state recorded yet"))
        return
    if "error" in state:
        say(_("outputs: {error}").format(error=state["error"]))
        return
    when = _("state as of {time} ({seconds} s ago)").format(time=local_time(state["ts_us"]),
                                                           seconds=f"{state['age_s']:.0f}")
    say(when if running else _("{state}; the agent is not running, so this is its last state").format(state=when))
    siren = state.get("siren") or {}
    if not siren.get("configured"):
        line = _("siren: none configured")
    elif siren.get("on"):
        why = siren.get("why")
        line = (_("siren: SOUNDING for alert {alert}").format(alert=siren.get("alert")) if why == "alert"
                else _("siren: sounding ({reason})").format(reason=_word(why)))
    else:
        line = _("siren: off")
    if siren.get("silenced"):
        line += "   " + _("silenced for: {keys}").format(keys=", ".join(siren["silenced"]))
    say(line)
    lamp = state.get("lamp") or {}
    say(_("lamp: {state}").format(state=_word(lamp.get("state")))
        + ("" if lamp.get("configured") else " " + _("(no lamp configured)")))
    held = state.get("held") or {}
    if held.get("active"):
        if held.get("until_us"):
            say(_("held readings: {count} (clock not synchronised, until {time} at the latest)").format(
                count=held.get("count"), time=local_time(held["until_us"])))
        else:
            say(_("held readings: {count} (clock not synchronised)").format(count=held.get("count")))
    else:
        say(_("held readings: none"))
    alerts = state.get("alerts") or []
    say(_("open alerts: {count}").format(count=len(alerts)) if alerts else _("open alerts: none"))
    for a in alerts:
        if a.get("acknowledged_by"):
            ack = _("acknowledged by {name}").format(name=a["acknowledged_by"])
        else:
            ack = _("repeating until acknowledged") if a.get("repeating") else _("not repeating")
        say("  " + _("{key}  {severity}  since {time}  {ack}: {message}").format(
            key=a.get("key"), severity=_word(a.get("severity")), time=local_time(a.get("since_us")), ack=ack,
            message=a.get("message")))


def _fmt(v: float | int | None, digits: int = 1) -> str:
    if v is None:
        return "-"
    if isinstance(v, int):
        return str(v)
    return f"{v:.{digits}f}"
