"""What the gateway core's inbox carries, and the publisher the core sends through.

Every thread talks to the core by putting one event into its inbox (``Gateway.inbox``, a
``queue.SimpleQueue[Event]``); the core drains it at each wake-up (:func:`drain`) and handles the events in order:

    radio threads (drivers.radio.RadioWorker)   Uplinks, Incident
    the MQTT link (agent.gateway.publisher)      Connected, Ack, Disconnected, Command, Incident (radio "mqtt")
    the field I/O (the installer's button)       ButtonPressed
    anyone who only needs the core to look again Wake (stop, SIGUSR1, receipts due)

The :class:`Publisher` is the core's only way to the broker. The gateway builds an
:class:`~agent.gateway.publisher.MqttLink` unless it is given one (tests give ``tests.support.publisher.FakePublisher``);
either way it calls ``bind(inbox.put)`` once, before ``start()``, so the publisher can post the events above.
"""

from __future__ import annotations

import queue
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol, TypeAlias

if TYPE_CHECKING:
    from agent.gateway.publisher import Topics
    from drivers.types import Uplink


@dataclass(frozen=True, slots=True)
class Uplinks:
    """Frames one radio read in one chunk, in the order heard."""

    uplinks: list[Uplink]


@dataclass(frozen=True, slots=True)
class Incident:
    """Something a radio or the MQTT link met (a garbled line, a refused connect), counted as ``<radio>.<kind>``."""

    radio: str
    kind: str
    detail: str


@dataclass(frozen=True, slots=True)
class Connected:
    """The broker accepted a connection: MQTT session ``session`` begins (sessions count up from 1)."""

    session: int


@dataclass(frozen=True, slots=True)
class Disconnected:
    """MQTT session ``session`` ended; ``reason`` is a sentence for people."""

    session: int
    reason: str


@dataclass(frozen=True, slots=True)
class Ack:
    """The broker's PUBACK for message ``mid`` of ``session``.

    ``ok`` is False for an MQTT v5 failure code; ``code`` is the v5 reason code (0x10: no matching subscribers),
    ``reason`` its name.
    """

    session: int
    mid: int
    ok: bool
    reason: str
    code: int = 0


@dataclass(frozen=True, slots=True)
class Command:
    """A command from the backend, as received on ``<prefix>/<gateway>/cmd/...`` (payload not yet parsed)."""

    topic: str
    payload: bytes


@dataclass(frozen=True, slots=True)
class ButtonPressed:
    """The installer pressed the gateway's test button."""


@dataclass(frozen=True, slots=True)
class Wake:
    """No news: the core only looks again (stopping, a signal, receipts that fell due)."""


Event: TypeAlias = Uplinks | Incident | Connected | Disconnected | Ack | Command | ButtonPressed | Wake
Post: TypeAlias = Callable[[Event], None]


def drain(inbox: queue.SimpleQueue[Event], timeout: float, limit: int) -> list[Event]:
    """The events waiting in ``inbox``, oldest first: waits up to ``timeout`` s for the first, takes at most
    ``limit`` (the rest stays for the next wake-up)."""
    events: list[Event] = []
    try:
        events.append(inbox.get(timeout=timeout) if timeout > 0 else inbox.get_nowait())
    except queue.Empty:
        pass
    while len(events) < limit:
        try:
            events.append(inbox.get_nowait())
        except queue.Empty:
            break
    return events


class Publisher(Protocol):
    """The core's way to the broker (``MqttLink`` in a gateway, ``FakePublisher`` in tests).

    Life cycle: ``bind(post)`` once (where events go), ``start()``, then any number of publishes, ``stop()``.
    Publishing is QoS 1; a publisher reports ``Connected`` / ``Disconnected`` for each session and one ``Ack``
    per message that :meth:`publish` accepted, all through ``post``.
    """

    topics: Topics

    def bind(self, post: Post) -> None:
        """Post every event to ``post`` (thread-safe: it is the core's ``inbox.put``)."""

    def start(self) -> None:
        """Begin connecting; returns at once."""

    def stop(self, timeout: float = 5.0) -> None:
        """Say offline, disconnect and stop, within about ``timeout`` seconds."""

    @property
    def connected(self) -> bool:
        """Whether a session is up now."""

    def publish(self, topic: str, payload: bytes) -> tuple[int, int] | None:
        """Publish a message whose PUBACK matters: ``(session, mid)``, or None when not connected."""

    def publish_best_effort(self, topic: str, payload: bytes, *, retain: bool = False) -> bool:
        """Publish a document nothing waits the PUBACK of: False when not connected (it is dropped)."""
