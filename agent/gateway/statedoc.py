"""The gateway's state document (retained on ``<prefix>/<gateway>/state``) and the results of backend commands.

The state document says what the gateway shows and holds now: siren, lamp, open alerts, readings held for the
clock. It is recorded in the journal's meta when it changes (for ``denen status``) and published retained at every
connect, and on change at most every STATE_MIN_S, at once when an SOS or a person changed it. Command results go
out once, after the state document of the same wake-up; offline they are dropped (the sender retries).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any

from agent.gateway import clock
from agent.gateway.edge import Edge
from agent.gateway.events import Publisher
from agent.i18n import N_, _
from agent.ratelog import RateLimitedLog

STATE_MIN_S = 1.0  # the state document is published at most this often, unless an SOS or a person changed it, in s


class StateDocument:
    """The last state document and the results waiting to go out; called from the core's thread only.

    Args:
        publisher: where the documents go.
        edge: the edge logic, which builds the document and says when a change is urgent.
        build: builds the document now (the edge's, with the held readings), {} or None if it cannot.
        count: adds to one of the core's counters.
        warn: the core's rate-limited log.
    """

    def __init__(self, publisher: Publisher, edge: Edge, *, build: Callable[[], dict[str, Any] | None],
                 count: Callable[..., None], warn: RateLimitedLog) -> None:
        self._publisher = publisher
        self._edge = edge
        self._build = build
        self._count = count
        self._warn = warn
        self.doc: dict[str, Any] | None = None  # the last one recorded (without ts_us)
        self.next_at = 0.0  # monotonic s when it may be looked at again
        self.recheck = False  # a change may wait for next_at: the core must wake then
        self.force = False  # goes out whatever the limit (a new session)
        self.results: list[dict[str, Any]] = []  # result documents of this wake-up's commands

    def update(self, *, online: bool, meta: dict[str, str]) -> None:
        """Record the document in ``meta`` when it changed and publish it when due (see the module)."""
        now = time.monotonic()
        urgent = self._edge.state_urgent or self.force
        if not urgent and now < self.next_at:
            self.recheck = True  # the core's wait_s wakes it then, so a change is never left unpublished
            return
        self.recheck = False
        self._edge.state_urgent = False
        # Looked at no more often than published: a busy core does not build the document at every wake-up.
        self.next_at = now + STATE_MIN_S
        doc = self._build()
        if not doc:
            return
        changed = doc != self.doc
        if not changed and not self.force:
            return
        full = {"schema": doc["schema"], "gateway": doc["gateway"], "ts_us": clock.wall_us(), **doc}
        payload = json.dumps(full, separators=(",", ":"), ensure_ascii=False)
        if changed:
            self.doc = doc
            meta["gateway_state"] = payload
            self._count("state.changes")
        if not online:
            return  # the next session publishes it
        if not self._publisher.publish_best_effort(self._publisher.topics.state, payload.encode(), retain=True):
            self._count("state.unpublished")
            return
        self.force = False
        self._count("state.published")

    def publish_results(self, *, online: bool) -> None:
        """Publish the results of the commands carried out in this wake-up; offline, they are dropped (the
        sender retries a command until it sees its result)."""
        for doc in self.results:
            payload = json.dumps(doc, separators=(",", ":"), ensure_ascii=False).encode()
            if not online or not self._publisher.publish_best_effort(self._publisher.topics.results, payload):
                self._count("cmd.results_dropped")
                self._warn.warning("result_dropped", "mqtt", N_("results"), "%s", _(
                    "result of {command} (request {request}) dropped: not connected; the sender retries").format(
                    command=doc["command"], request=doc["request_id"] or "-"))
            else:
                self._count("cmd.results_sent")
        self.results.clear()
