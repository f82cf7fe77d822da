"""Requests a person left in the journal for the running core (``denen node reset-counter``).

The CLI cannot touch the core's memory, so it writes a request row; the core notices the journal changed, carries
the request out, and commits its audit line and result with its next transaction.
"""

from __future__ import annotations

import datetime
import logging
from collections.abc import Callable

from agent.gateway import clock
from agent.gateway.journal import Audit, Journal
from agent.gateway.readings import FrameDecoder
from agent.i18n import _

log = logging.getLogger(__name__)


def take_requests(journal: Journal, decoder: FrameDecoder, *, done: list[tuple[int, str]], audit: list[Audit],
                  count: Callable[..., None]) -> None:
    """Carry out the requests pending in ``journal``, appending (request id, result) to ``done`` and audit lines to
    ``audit``; requests already in ``done`` (not yet committed) are not taken again."""
    taken = {rid for rid, _result in done}
    for req in journal.pending_requests():
        if req.id in taken:
            continue
        when = _iso(req.ts_us)
        if req.action != "reset_counter":
            done.append((req.id, f"refused: unknown action {req.action!r}"))
            log.error("%s", _("request {id} from {user}: unknown action {action}; ignored").format(
                id=req.id, user=req.user, action=repr(req.action)))
            continue
        old = decoder.reset_windows(req.node)
        if old is None:
            result = f"refused: the gateway keeps no state for node {req.node}"
            log.error("%s", _("request {id} from {user} ({when}): {action} of node {node} refused: no such "
                              "node").format(id=req.id, user=req.user, when=when, action="reset-counter",
                                             node=req.node))
        else:
            name = decoder.nodes[req.node].name
            result = (f"node {req.node}{f' ({name})' if name else ''}: windows reset: with MIC "
                      f"{_window(old[0])} -> none, without MIC {_window(old[1])} -> none")
            # Audit: who asked, when, what it was and what it is now (the journal's audit table keeps it too).
            log.warning("%s", _("audit: {action} by user {user} (asked {when}): {result}").format(
                action="reset-counter", user=req.user, when=when, result=result))
            audit.append(Audit(clock.wall_us(), req.user, "reset_counter", req.node, result))
            count("nodes.window_resets")
        done.append((req.id, result))


def _window(fcnt: int | None) -> str:
    return "none" if fcnt is None else str(fcnt)


def _iso(ts_us: int) -> str:
    """µs since the epoch as an ISO 8601 UTC time, to the second."""
    return datetime.datetime.fromtimestamp(ts_us / 1e6, datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
