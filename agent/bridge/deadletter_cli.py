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
from datetime import UTC, datetime
from typing import Any

__all__ = ["DEFAULT_CONFIG", "add_arguments", "main", "parse_time"]

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
    value = text.strip()
    match = _RELATIVE_RE.match(value)
    if match:
        return (time.time() if now is None else now) - float(match.group(1)) * _UNIT_S[match.group(2)]
    try:
        when = datetime.fromisoformat(value)
    except ValueError:
        raise ValueError(f"{text!r} is not a time: give an age (30m, 2h, 3d) or an ISO date/time (2026-12-01, "
                         "2026-12-01T08:30, 2026-12-01T08:30+09:00)") from None
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
        raise argparse.ArgumentTypeError(f"{text!r} is not an item id (the number in the first column of "
                                         "'denen bridge dead-letters list')") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not an item id (ids start at 1)")
    return value


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the actions ``list``, ``show``, ``replay`` and ``purge`` (dest ``dead_letter_action``) to ``parser``."""
    actions = parser.add_subparsers(dest="dead_letter_action", metavar="ACTION", required=True)

    def action(name: str, help_text: str, example: str) -> argparse.ArgumentParser:
        p = actions.add_parser(name, help=help_text, description=help_text, epilog=f"example:\n  {example}",
                               formatter_class=argparse.RawDescriptionHelpFormatter)
        p.add_argument("-c", "--config", default=DEFAULT_CONFIG, metavar="BRIDGE_CONFIG",
                       help=f"bridge config file (YAML) naming the store in dead_letter.path (default "
                            f"{DEFAULT_CONFIG})")
        return p

    ls = action("list", "list the items in the dead-letter store (oldest first)",
                "denen bridge dead-letters list -c /etc/denen/bridge.yaml --reason rejected_by_server --since 1d")
    ls.add_argument("--reason", help="only items of this reason (e.g. rejected_by_server, invalid_json)")
    ls.add_argument("--gateway", help="only items of this gateway id")
    ls.add_argument("--since", type=_time_arg, metavar="TIME",
                    help="only items stored since TIME: an age (30m, 2h, 3d) or an ISO date/time")
    ls.add_argument("--limit", type=int, default=1000, metavar="N",
                    help="list at most N items, the newest N when there are more (default 1000)")
    ls.add_argument("--json", action="store_true", help="one JSON object per line instead of a table")

    show = action("show", "show one item: reason, detail, topic, and its content with control characters escaped",
                  "denen bridge dead-letters show 42 -c /etc/denen/bridge.yaml")
    show.add_argument("id", type=_id_arg, metavar="ID", help="item id (first column of 'list')")
    show.add_argument("--json", action="store_true", help="print the item as one JSON object")

    replay = action("replay", "write items again through the bridge's write path; written items are removed, "
                    "items that fail again stay with their new reason",
                    "denen bridge dead-letters replay --reason rejected_by_server -c /etc/denen/bridge.yaml")
    replay.add_argument("ids", type=_id_arg, nargs="*", metavar="ID", help="item ids to replay")
    replay.add_argument("--reason", help="replay every item of this reason")
    replay.add_argument("--all", action="store_true", help="replay every item in the store")
    replay.add_argument("--timeout", type=float, default=60.0, metavar="SECONDS",
                        help="give up when the database cannot be reached for this long (default 60); nothing "
                             "that was not written is removed")

    purge = action("purge", "delete items from the store (they are evidence: needs --yes)",
                   "denen bridge dead-letters purge --before 30d --yes -c /etc/denen/bridge.yaml")
    purge.add_argument("ids", type=_id_arg, nargs="*", metavar="ID", help="item ids to delete")
    purge.add_argument("--reason", help="delete every item of this reason")
    purge.add_argument("--before", type=_time_arg, metavar="TIME",
                       help="delete items stored before TIME: an age (30d) or an ISO date/time")
    purge.add_argument("--all", action="store_true", help="delete every item in the store")
    purge.add_argument("--yes", action="store_true", help="really delete (without it, only say what would go)")


def main(args: argparse.Namespace) -> int:
    """Run one action; returns the exit code (0 done, 1 something failed or was refused)."""
    action = getattr(args, "dead_letter_action", None)
    handler = {"list": _list, "show": _show, "replay": _replay, "purge": _purge}.get(action or "")
    if handler is None:
        print("denen: bridge dead-letters needs an action: list, show, replay or purge", file=sys.stderr)
        return 2
    return handler(args)


def _list(args: argparse.Namespace) -> int:
    raise NotImplementedError


def _show(args: argparse.Namespace) -> int:
    raise NotImplementedError


def _replay(args: argparse.Namespace) -> int:
    raise NotImplementedError


def _purge(args: argparse.Namespace) -> int:
    raise NotImplementedError

