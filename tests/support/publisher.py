"""FakePublisher: the gateway core's way to the broker, without a broker (in the style of httpx's MockTransport).

    fake = FakePublisher(lambda message: True)          # every reading message acknowledged at once
    gw = Gateway(config, publisher=fake, radios=[])     # the gateway binds it to its inbox
    fake.connect()                                      # posts Connected(1); the core sees it at its next step
    gw.on_uplinks([...]); gw.step()
    fake.readings("sos")                                # what went out, parsed

The handler decides each PUBACK of a message the core publishes with ``publish()`` (the journaled readings):
``True`` (success), ``False`` (refused, as an ACL would), an int (the MQTT v5 reason code, e.g.
``NO_MATCHING_SUBSCRIBERS``), or ``None`` (no PUBACK yet: the message stays in :attr:`FakePublisher.unacked` until
the test calls :meth:`FakePublisher.ack`). Documents published best effort (state, results) are recorded, never
acknowledged (the core waits for no PUBACK of theirs).
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from agent.gateway.events import Ack, Connected, Disconnected, Post
from agent.gateway.publisher import Topics

SUCCESS = 0x00
NO_MATCHING_SUBSCRIBERS = 0x10
NOT_AUTHORIZED = 0x87
_NAMES = {SUCCESS: "Success", NO_MATCHING_SUBSCRIBERS: "No matching subscribers", NOT_AUTHORIZED: "Not authorized"}


@dataclass(frozen=True)
class Message:
    """One message the core published."""

    topic: str
    payload: bytes
    retain: bool
    session: int
    mid: int | None  # None: published best effort (state, results)

    @property
    def kind(self) -> str:
        """The last topic level: ``sos`` ... ``diagnostics`` for readings, ``state``, ``results``."""
        return self.topic.rsplit("/", 1)[1]

    def json(self) -> Any:
        return json.loads(self.payload)


Handler = Callable[[Message], "bool | int | None"]


class FakePublisher:
    """A :class:`agent.gateway.events.Publisher` that records what the core publishes.

    Args:
        handler: decides each reading message's PUBACK (see the module); None: never acknowledged by itself.
        gateway: the gateway id and ``prefix`` the topic prefix, as in the gateway's config.
        on_publish: called with the message as it is published (before the handler), e.g. to take its time.
    """

    def __init__(self, handler: Handler | None = None, *, gateway: str = "gw-test-01", prefix: str = "denen/v1",
                 on_publish: Callable[[Message], None] | None = None) -> None:
        self.topics = Topics(prefix, gateway)
        self.handler = handler
        self.on_publish = on_publish
        self.messages: list[Message] = []
        self.unacked: list[Message] = []  # reading messages the handler left without a PUBACK
        self.session = 0
        self.started = self.stopped = False
        self._up = False
        self._post: Post | None = None
        self._lock = threading.Lock()

    # -- the Publisher protocol (called by the gateway) --------------------------------------------------------
    def bind(self, post: Post) -> None:
        self._post = post

    def start(self) -> None:
        self.started = True

    def stop(self, timeout: float = 5.0) -> None:
        self.stopped = True
        self._up = False

    @property
    def connected(self) -> bool:
        return self._up

    def publish(self, topic: str, payload: bytes) -> tuple[int, int] | None:
        with self._lock:
            if not self._up:
                return None
            message = Message(topic, bytes(payload), False, self.session, len(self.messages) + 1)
            self.messages.append(message)
        if self.on_publish is not None:
            self.on_publish(message)
        outcome = self.handler(message) if self.handler is not None else None
        if outcome is None:
            self.unacked.append(message)
        else:
            self._puback(message, outcome)
        assert message.mid is not None
        return message.session, message.mid

    def publish_best_effort(self, topic: str, payload: bytes, *, retain: bool = False) -> bool:
        with self._lock:
            if not self._up:
                return False
            self.messages.append(Message(topic, bytes(payload), retain, self.session, None))
        return True

    # -- the test's side ------------------------------------------------------------------------------------------
    def connect(self) -> int:
        """A new session: the broker accepted a connection. Posts ``Connected``; returns the session number."""
        self.session += 1
        self._up = True
        self._event(Connected(self.session))
        return self.session

    def disconnect(self, reason: str = "connection lost", *, tell: bool = True) -> None:
        """The session ends; ``tell=False``: the core is not told yet (it publishes into a dead link meanwhile)."""
        self._up = False
        self.unacked.clear()
        if tell:
            self._event(Disconnected(self.session, reason))

    def ack(self, message: Message | None = None, outcome: bool | int = True) -> None:
        """The PUBACK of ``message`` (default: the oldest unacknowledged one), as the handler would give it."""
        message = message if message is not None else self.unacked[0]
        self.unacked.remove(message)
        self._puback(message, outcome)

    def ack_all(self, outcome: bool | int = True) -> int:
        """The PUBACK of every unacknowledged message; how many."""
        n = len(self.unacked)
        for message in list(self.unacked):
            self.ack(message, outcome)
        return n

    def of(self, kind: str) -> list[Any]:
        """The documents published under the last topic level ``kind`` (``sos``, ``telemetry``, ``state`` ...), parsed."""
        return [m.json() for m in self.messages if m.kind == kind]

    def readings(self, lane: str | None = None) -> list[dict[str, Any]]:
        """Every reading published (in ``lane`` only, if given), in order, repeats included."""
        return [r for m in self.messages if m.mid is not None and (lane is None or m.kind == lane)
                for r in m.json()["readings"]]

    def _puback(self, message: Message, outcome: bool | int) -> None:
        code = (SUCCESS if outcome else NOT_AUTHORIZED) if isinstance(outcome, bool) else outcome
        assert message.mid is not None
        self._event(Ack(message.session, message.mid, code < 0x80, _NAMES.get(code, f"0x{code:02X}"), code))

    def _event(self, event: Any) -> None:
        assert self._post is not None, "FakePublisher: not bound to a gateway (Gateway(..., publisher=fake))"
        self._post(event)
