"""``denen node reset-counter``: a request left in the gateway's journal for the running agent, which owns the node
state, woken at once with SIGUSR1; the agent carries it out and writes the audit line."""

from __future__ import annotations

import os
import sys
from typing import TYPE_CHECKING, Any

from agent.errors import AgentError
from agent.i18n import _

if TYPE_CHECKING:
    import sqlite3

__all__ = ["reset_counter"]


def reset_counter(node_arg: str, config_path: str | None, *, wait_s: float) -> int:
    """``denen node reset-counter``: leave a request in the journal for the agent, which owns the node state.

    The agent carries it out at its next wake-up (at once: this command wakes it with SIGUSR1), or when it starts
    if it is not running; it logs and journals the audit line. Exit code 0 when done (or queued for an agent that
    is not running), 1 when refused or not done within ``wait_s``.
    """
    import sqlite3  # noqa: PLC0415

    from agent.config import load_config  # noqa: PLC0415
    from agent.gateway.journal import check_files  # noqa: PLC0415
    from agent.gateway.boot import resolve_active_config  # noqa: PLC0415

    active = resolve_active_config(config_path)
    cfg = load_config(active.path)
    node = _node_id(node_arg, cfg, active.path)
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
        return _request(db, cfg, node, user, wait_s)
    except sqlite3.Error as exc:
        raise AgentError(_("cannot write the request into the journal {path}: {error}").format(path=path, error=exc)
                         ) from None
    finally:
        db.close()


def _node_id(node_arg: str, cfg: Any, config_path: str) -> str:
    """The node id (8 lowercase hex digits) of a node name in ``cfg`` or of a node id as typed."""
    from agent.config import normalise_node_id  # noqa: PLC0415

    by_name = {n.name: n.id for n in cfg.nodes}
    if node_arg in by_name:
        return by_name[node_arg]
    value: object = node_arg
    if node_arg.lower().startswith("0x"):
        try:
            value = int(node_arg, 16)
        except ValueError:
            pass
    try:
        return normalise_node_id(value)
    except ValueError as exc:
        raise AgentError(_("{node!r} is neither a node name in {path} nor a node id (8 hex digits): "
                           "{error}").format(node=node_arg, path=config_path, error=exc)) from None


def _request(db: sqlite3.Connection, cfg: Any, node: str, user: str, wait_s: float) -> int:
    """Insert the request, wake the agent and wait for its answer; the exit code."""
    import time  # noqa: PLC0415

    from agent.gateway.journal import Journal  # noqa: PLC0415

    path = cfg.journal.path
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
