"""``denen bridge dead-letters list|show|replay|purge``: read, replay and remove what the bridge could not write.

The dead-letter store (:mod:`agent.bridge.deadletter`) is an SQLite file in WAL mode; these commands open it
beside a running bridge (a busy timeout waits for the bridge's transaction instead of failing), so they may run
at any time.

* ``list`` -- one line per item: id, time stored, gateway, reason, size (``--json``: one object per item).
* ``show ID`` -- everything about one item: reason, detail (a traceback when the bridge stored one), topic,
  reading id, and the content with every control character escaped, so hostile bytes cannot drive the terminal.
* ``replay`` -- sends items through the bridge's own write path (the same converter, sink and dead-letter rules as
  a live message). An item that is written is removed; one that fails again stays with its new reason.
* ``purge`` -- deletes items; it destroys evidence, so it asks for ``--yes``.

Top-level imports are the standard library only: the CLI imports this module to build its parser.
"""

from __future__ import annotations

import argparse
import json
import logging
import re
import sys
import time
from typing import Any

from agent.i18n import N_, _, cell_width

__all__ = ["DEFAULT_CONFIG", "add_arguments", "escape", "main", "parse_time", "show_bytes"]

log = logging.getLogger(__name__)

#: The bridge config read when ``-c`` is not given.
DEFAULT_CONFIG = "/etc/denen/bridge.yaml"

_RELATIVE_RE = re.compile(r"^(\d+(?:\.\d+)?)\s*(s|m|min|h|d|w)$")
_UNIT_S = {"s": 1, "m": 60, "min": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def parse_time(text: str, *, now: float | None = None) -> float:
    """A time given on the command line, as seconds since the epoch.

    Accepts an age (``90s``, ``15m``, ``2h``, ``3d``, ``1w``: that long before now) or an ISO 8601 date or time
    (``2026-12-01``, ``2026-12-01T08:30``, ``2026-12-01 08:30:00+09:00``; without a zone: local time).

    Raises:
        ValueError: neither form, with a message naming both.
    """
    from datetime import datetime  # noqa: PLC0415 - kept off the CLI's start-up

    value = text.strip()
    match = _RELATIVE_RE.match(value)
    if match:
        return (time.time() if now is None else now) - float(match.group(1)) * _UNIT_S[match.group(2)]
    try:
        when = datetime.fromisoformat(value)
    except ValueError:
        raise ValueError(_("{text} is not a time: give an age (30m, 2h, 3d) or an ISO date/time (2026-12-01, "
                           "2026-12-01T08:30, 2026-12-01T08:30+09:00)").format(text=repr(text))) from None
    if when.tzinfo is None:
        when = when.astimezone()  # local time, as an operator at the console means it
    return when.timestamp()


def _time_arg(text: str) -> float:
    try:
        return parse_time(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _id_arg(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(_("{text} is not an item id (the number in the first column of "
                                           "'denen bridge dead-letters list')").format(text=repr(text))) from None
    if value < 1:
        raise argparse.ArgumentTypeError(_("{text} is not an item id (ids start at 1)").format(text=repr(text)))
    return value


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the actions ``list``, ``show``, ``replay`` and ``purge`` (dest ``dead_letter_action``) to ``parser``."""
    actions = parser.add_subparsers(dest="dead_letter_action", metavar="ACTION", required=True)

    def action(name: str, help_text: str, example: str) -> argparse.ArgumentParser:
        p = actions.add_parser(name, help=help_text, description=help_text,
                               epilog=_("example:") + f"\n  {example}",
                               formatter_class=argparse.RawDescriptionHelpFormatter)
        p.add_argument("-c", "--config", default=DEFAULT_CONFIG, metavar="BRIDGE_CONFIG",
                       help=_("bridge config file (YAML) naming the store in dead_letter.path (default "
                              "{path})").format(path=DEFAULT_CONFIG))
        return p

    ls = action("list", _("list the items in the dead-letter store (oldest first)"),
                "denen bridge dead-letters list -c /etc/denen/bridge.yaml --reason rejected_by_server --since 1d")
    ls.add_argument("--reason", help=_("only items of this reason (e.g. rejected_by_server, invalid_json)"))
    ls.add_argument("--gateway", help=_("only items of this gateway id"))
    ls.add_argument("--since", type=_time_arg, metavar="TIME",
                    help=_("only items stored since TIME: an age (30m, 2h, 3d) or an ISO date/time"))
    ls.add_argument("--limit", type=int, default=1000, metavar="N",
                    help=_("list at most N items, the newest N when there are more (default 1000)"))
    ls.add_argument("--json", action="store_true", help=_("one JSON object per line instead of a table"))

    show = action("show", _("show one item: reason, detail, topic, and its content with control characters escaped"),
                  "denen bridge dead-letters show 42 -c /etc/denen/bridge.yaml")
    show.add_argument("id", type=_id_arg, metavar="ID", help=_("item id (first column of 'list')"))
    show.add_argument("--json", action="store_true", help=_("print the item as one JSON object"))

    replay = action("replay", _("write items again through the bridge's write path; written items are removed, "
                                "items that fail again stay with their new reason"),
                    "denen bridge dead-letters replay --reason rejected_by_server -c /etc/denen/bridge.yaml")
    replay.add_argument("ids", type=_id_arg, nargs="*", metavar="ID", help=_("item ids to replay"))
    replay.add_argument("--reason", help=_("replay every item of this reason"))
    replay.add_argument("--all", action="store_true", help=_("replay every item in the store"))
    replay.add_argument("--timeout", type=float, default=60.0, metavar="SECONDS",
                        help=_("give up when the database cannot be reached for this long (default 60); nothing "
                               "that was not written is removed"))

    purge = action("purge", _("delete items from the store (they are evidence: needs --yes)"),
                   "denen bridge dead-letters purge --before 30d --yes -c /etc/denen/bridge.yaml")
    purge.add_argument("ids", type=_id_arg, nargs="*", metavar="ID", help=_("item ids to delete"))
    purge.add_argument("--reason", help=_("delete every item of this reason"))
    purge.add_argument("--before", type=_time_arg, metavar="TIME",
                       help=_("delete items stored before TIME: an age (30d) or an ISO date/time"))
    purge.add_argument("--all", action="store_true", help=_("delete every item in the store"))
    purge.add_argument("--yes", action="store_true", help=_("really delete (without it, only say what would go)"))


def main(args: argparse.Namespace) -> int:
    """Run one action; returns the exit code (0 done, 1 something failed or was refused)."""
    action = getattr(args, "dead_letter_action", None)
    handler = {"list": _list, "show": _show, "replay": _replay, "purge": _purge}.get(action or "")
    if handler is None:
        print(_("denen: bridge dead-letters needs an action: list, show, replay or purge"), file=sys.stderr)
        return 2
    return handler(args)


class _Refused(Exception):
    """A command that cannot go on: its message is printed as one line."""


def _open(args: argparse.Namespace) -> tuple[Any, Any]:
    """(config, store) of ``args.config``; the store must exist (a missing one is not created here)."""
    from pathlib import Path  # noqa: PLC0415

    from agent.bridge.config import load_bridge_config  # noqa: PLC0415
    from agent.bridge.deadletter import DeadLetterStore  # noqa: PLC0415

    config = load_bridge_config(args.config)
    path = Path(config.dead_letter.path)
    if not path.exists():
        raise _Refused(_("no dead-letter store at {path} (nothing was dead-lettered yet, or dead_letter.path in "
                         "{config} differs from the running bridge's)").format(path=path, config=args.config))
    store = DeadLetterStore(path, max_bytes=config.dead_letter.max_bytes,
                            max_item_bytes=config.dead_letter.max_item_bytes)
    return config, store


def _gateway(topic: str | None, reading_id: str | None, prefix: str) -> str:
    """The gateway an item came from: the topic's gateway level, else the reading id's first part, else ''."""
    head = prefix.rstrip("/") + "/"
    if topic and topic.startswith(head):
        return topic[len(head):].split("/", 1)[0]
    if reading_id and "/" in reading_id:
        return reading_id.split("/", 1)[0]
    return ""


_NAMED = {"\n": "\\n", "\r": "\\r", "\t": "\\t", "\\": "\\\\"}


def escape(text: str) -> str:
    """Text safe for a terminal: control characters (C0, DEL, C1: the start of every terminal escape sequence),
    line and paragraph separators and other unprintable characters become ``\\n``, ``\\xNN``, ``\\uNNNN``; a
    backslash is doubled so an escape cannot be faked. Printable text (Japanese among it) is kept.

    A character U+DC80..U+DCFF (how :func:`show_bytes` carries a byte that is not UTF-8) becomes ``\\xNN`` of
    that byte."""
    if text.isprintable() and "\\" not in text:
        return text
    out = []
    for c in text:
        o = ord(c)
        if c in _NAMED:
            out.append(_NAMED[c])
        elif c.isprintable():
            out.append(c)
        elif 0xDC80 <= o <= 0xDCFF:
            out.append(f"\\x{o - 0xDC00:02x}")
        elif o < 0x100:
            out.append(f"\\x{o:02x}")
        else:
            out.append(f"\\u{o:04x}" if o < 0x10000 else f"\\U{o:08x}")
    return "".join(out)


def show_bytes(content: bytes) -> str:
    """Stored bytes for the terminal, on one line: UTF-8 text as :func:`escape` shows it, each byte that is not
    UTF-8 as ``\\xNN``."""
    return escape(content.decode("utf-8", "surrogateescape"))


#: The columns of ``list``: heading and width in terminal cells.
_COLUMNS = (("ID", 7), (N_("STORED"), 25), (N_("GATEWAY"), 20), (N_("REASON"), 22), (N_("KIND"), 7), (N_("SIZE"), 0))


def _cells(text: str, width: int, *, right: bool = False) -> str:
    """``text`` padded to ``width`` terminal cells (a Japanese heading's characters take two each)."""
    pad = " " * max(0, width - cell_width(text))
    return pad + text if right else text + pad


def _when(us: int) -> str:
    from datetime import UTC, datetime  # noqa: PLC0415

    return datetime.fromtimestamp(us / 1e6, UTC).astimezone().isoformat(timespec="seconds")


def _size(n: int) -> str:
    if n < 1024:
        return f"{n} B"
    if n < 1024 * 1024:
        return f"{n / 1024:.1f} KiB"
    return f"{n / 2**20:.1f} MiB"


def _run(args: argparse.Namespace, body: Any) -> int:
    """Open the store, run ``body(config, store)``, close it. A refusal is one line on stderr and exit code 1;
    a config or store error (:class:`agent.errors.AgentError`) goes to the CLI, which prints it as one line."""
    try:
        config, store = _open(args)
    except _Refused as exc:
        print(f"denen: {exc}", file=sys.stderr)
        return 1
    try:
        return int(body(config, store))
    except _Refused as exc:
        print(f"denen: {exc}", file=sys.stderr)
        return 1
    finally:
        store.close()
        _keep_owner(store.path)


def _keep_owner(path: Any) -> None:
    """Run as root (``sudo``, ``docker compose exec``) beside a bridge that runs as its own user, SQLite may have
    created the store's ``-wal``/``-shm`` files owned by root, which the bridge could then not open: give them back
    to the store's owner."""
    import os  # noqa: PLC0415

    if not hasattr(os, "geteuid") or os.geteuid() != 0:
        return
    try:
        owner = os.stat(path)
    except OSError:
        return
    for suffix in ("-wal", "-shm", "-journal"):
        try:
            st = os.lstat(f"{path}{suffix}")
            if st.st_uid != owner.st_uid or st.st_gid != owner.st_gid:
                os.lchown(f"{path}{suffix}", owner.st_uid, owner.st_gid)
        except OSError:
            continue


def _list(args: argparse.Namespace) -> int:
    def body(config: Any, store: Any) -> int:
        since = int(args.since * 1e6) if args.since is not None else None
        prefix = config.mqtt.topic_prefix
        # The gateway is read from the topic, so its filter applies after the query; without it the limit does.
        limit = None if args.gateway else max(1, args.limit)
        rows = store.rows(reason=args.reason, since_us=since, limit=limit)
        shown = [(r, _gateway(r.item.topic, r.item.reading_id, prefix)) for r in rows]
        if args.gateway:
            shown = [(r, g) for r, g in shown if g == args.gateway][-max(1, args.limit):]
        if args.json:
            for r, g in shown:
                print(json.dumps({"id": r.id, "stored": _when(r.stored_us), "stored_us": r.stored_us, "gateway": g,
                                  "reason": r.item.reason, "kind": r.item.kind, "size": r.size,
                                  "topic": r.item.topic, "reading_id": r.item.reading_id}, ensure_ascii=False))
            return 0
        if not shown:
            print(_("no dead letters matching the filters") if args.reason or args.gateway or since
                  else _("no dead letters"))
            return 0
        print("  ".join(_cells(_(head), width, right=head == "ID") for head, width in _COLUMNS).rstrip())
        for r, g in shown:
            print(f"{r.id:>7}  {_when(r.stored_us):<25}  {escape(g)[:20]:<20}  {escape(r.item.reason)[:22]:<22}  "
                  f"{r.item.kind:<7}  {_size(r.size)}")
        total = store.count()
        if total > len(shown):
            print(_("({shown} shown of {total} in the store)").format(shown=len(shown), total=total))
        return 0

    return _run(args, body)


def _show(args: argparse.Namespace) -> int:
    def body(config: Any, store: Any) -> int:
        r = store.get(args.id)
        if r is None:
            raise _Refused(_("no dead letter with id {id} in {path} (see 'denen bridge dead-letters list')").format(
                id=args.id, path=store.path))
        d = r.item
        gateway = _gateway(d.topic, d.reading_id, config.mqtt.topic_prefix)
        if args.json:
            try:
                content: Any = d.content.decode("utf-8")
                encoding = "utf-8"
            except UnicodeDecodeError:
                import base64  # noqa: PLC0415

                content, encoding = base64.b64encode(d.content).decode(), "base64"
            print(json.dumps({"id": r.id, "stored": _when(r.stored_us), "stored_us": r.stored_us, "gateway": gateway,
                              "reason": d.reason, "detail": d.detail, "kind": d.kind, "topic": d.topic,
                              "reading_id": d.reading_id, "size": r.size, "content": content,
                              "content_encoding": encoding}, ensure_ascii=True))
            return 0
        fields = [(_("id:"), str(r.id)), (_("stored:"), _when(r.stored_us)), (_("reason:"), escape(d.reason)),
                  (_("gateway:"), escape(gateway) or "-"),
                  (_("topic:"), escape(d.topic) if d.topic is not None else "-"),
                  (_("reading id:"), escape(d.reading_id) if d.reading_id else "-"),
                  (_("kind:"), f"{d.kind} ({_size(r.size)})")]
        width = max(cell_width(label) for label, _value in fields) + 1
        for label, value in fields:
            print(f"{_cells(label, width)}{value}")
        print(_("detail:"))
        for line in d.detail.splitlines() or [""]:  # a stored traceback keeps its lines, each escaped
            print(f"  {escape(line)}")
        print(_("content (control characters and bytes that are not UTF-8 escaped):"))
        print(f"  {show_bytes(d.content)}")
        return 0

    return _run(args, body)


def _selection(args: argparse.Namespace, verb: str, extra: bool = False) -> None:
    given = bool(args.ids) + (args.reason is not None) + bool(args.all) + extra
    if given == 0:
        raise _Refused(_("say what to purge: item ids, --reason R, --before T or --all") if verb == "purge"
                       else _("say what to replay: item ids, --reason R or --all"))
    if args.all and given > 1:
        raise _Refused(_("--all cannot be combined with ids or other filters"))


def _replay(args: argparse.Namespace) -> int:
    def body(config: Any, store: Any) -> int:
        from agent.bridge.bridge import Bridge  # noqa: PLC0415
        from agent.bridge.policy import Abandoned  # noqa: PLC0415

        _selection(args, "replay")
        rows = store.rows(ids=args.ids or None, reason=args.reason)
        if args.ids:
            missing = sorted(set(args.ids) - {r.id for r in rows})
            if missing:
                raise _Refused(_("no dead letter with id {ids} in {path}").format(ids=", ".join(map(str, missing)),
                                                                                   path=store.path))
        if not rows:
            print(_("nothing to replay"))
            return 0
        # The bridge's own write path, with its health points and MQTT left out: nothing is subscribed to.
        bridge = Bridge(config.model_copy(update={"health": config.health.model_copy(update={"enabled": False})}))
        counts = {"removed": 0, "kept": 0, "split": 0, "gone": 0}
        reasons: dict[str, int] = {}
        try:
            chunk = config.batch.max_messages
            for i in range(0, len(rows), chunk):
                part = rows[i:i + chunk]
                items = [store.get(r.id) for r in part]
                present = [it for it in items if it is not None]
                try:
                    outcomes = bridge.replay([it.item for it in present], timeout_s=args.timeout)
                except Abandoned as exc:
                    raise _Refused(_("the database could not be written for {seconds} s ({error}); {count} items "
                                     "replayed so far, the rest stay in the store").format(
                        seconds=f"{args.timeout:g}", error=exc, count=counts["removed"])) from None
                for it, remaining in zip(present, outcomes, strict=True):
                    outcome = store.settle(it.id, remaining)
                    counts[outcome] += 1
                    for d in remaining:
                        reasons[d.reason] = reasons.get(d.reason, 0) + 1
        finally:
            bridge.close()
        failed = counts["kept"] + counts["split"]
        print(_replay_summary(len(rows), counts, failed, reasons))
        return 0 if failed == 0 else 1

    return _run(args, body)


def _replay_summary(total: int, counts: dict[str, int], failed: int, reasons: dict[str, int]) -> str:
    """The one line ``replay`` ends with: what was written, what failed again (and why), what changed meanwhile."""
    text = _("replayed {total} items: {removed} written and removed from the store, {failed} failed again and "
             "stay").format(total=total, removed=counts["removed"], failed=failed)
    if reasons:
        text += " ({reasons})".format(reasons=", ".join(f"{k} {v}" for k, v in sorted(reasons.items())))
    if counts["split"]:
        text += _("; {count} of them were written in part (the rest stored as new items)").format(
            count=counts["split"])
    if counts["gone"]:
        text += _("; {count} were purged meanwhile").format(count=counts["gone"])
    return text


def _purge(args: argparse.Namespace) -> int:
    def body(config: Any, store: Any) -> int:
        _selection(args, "purge", extra=args.before is not None)
        before = int(args.before * 1e6) if args.before is not None else None
        ids = args.ids or None
        if not args.yes:
            n = len(store.rows(ids=ids, reason=args.reason, before_us=before))
            print(_("would delete {count} dead letters from {path}; they are the only copy of what the bridge could "
                    "not write: add --yes to delete them").format(count=n, path=store.path))
            return 1
        n = store.delete(ids=ids, reason=args.reason, before_us=before, everything=bool(args.all))
        print(_("deleted {count} dead letters from {path}").format(count=n, path=store.path))
        return 0

    return _run(args, body)
