"""What the gateway core's inbox carries, and the publisher the core sends through.

Every thread talks to the core by putting one event into its inbox (``Gateway.inbox``, a
``queue.SimpleQueue[Event]``); the core drains it at each wake-up (:func:`drain`) and handles the events in order:

    radio threads (drivers.radio.RadioWorker)   Uplinks, Incident
    the MQTT link (agent.gateway.publisher)      Connected, Ack, Disconnected, Command, Incident (radio "mqtt")
    the field I/O (the installer's button)       ButtonPressed
    anyone who only needs the core to look again Wake (stop, SIGUSR1, receipts due)

While the core's thread sleeps, a radio thread that delivers frames handles them itself under the core's lock
(:class:`CoreTurn`), instead of waking the core: at field rates that is one wake-up per frame instead of two and a
GIL hand-off. Frames that find the core busy wait in :attr:`CoreTurn.frames` (a ``Heard`` in the inbox says so),
and PUBACKs of telemetry with nothing else to send wait in :attr:`CoreTurn.acks` for the core's next wake-up.

The :class:`Publisher` is the core's only way to the broker. The gateway builds an
:class:`~agent.gateway.publisher.MqttLink` unless it is given one (tests give ``tests.support.publisher.FakePublisher``);
either way it calls ``bind(inbox.put)`` once, before ``start()``, so the publisher can post the events above.
"""

from __future__ import annotations

import queue
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol, TypeAlias

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


@dataclass(frozen=True, slots=True)
class Heard:
    """Frames wait in :attr:`CoreTurn.frames`: a radio delivered them while the core was busy."""


@dataclass(frozen=True, slots=True)
class Rearm:
    """The core's next deadline moved earlier (work done on another thread opened the commit window): the core's
    thread only works out again how long it may sleep."""


Event: TypeAlias = Uplinks | Incident | Connected | Disconnected | Ack | Command | ButtonPressed | Wake | Heard | Rearm
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


#: How much sooner than planned the core's thread must look again to be woken for it, in seconds.
REARM_SLACK_S = 0.001
#: PUBACKs that may wait for the core's next wake-up instead of waking it: above this many, they wake it.
ACKS_WAITING_MAX = 64
#: Telemetry frames that may wait undecoded for the commit window's end (CoreTurn.deliver): an SOS heard meanwhile
#: is decoded after them (a node's frames keep their order), so this bounds what it waits for: 16 decodes back to
#: back, about half a millisecond. Beyond it, a frame is handled at once, with those waiting.
GATHERED_MAX = 16


class CoreTurn:
    """The core's lock, and what waits for the core besides its inbox.

    Whoever holds :attr:`lock` may change the core's state: the core's thread for each of its wake-ups, or, while
    :attr:`inline` (the core runs), a radio thread that delivers frames while the core sleeps: it handles them at
    once on its own thread. Frames that find the lock taken wait in :attr:`frames`, taken only under the lock, so
    one radio's frames keep the order heard. :attr:`acks` holds PUBACKs that need no prompt handling;
    :attr:`wake_at` is when the core's thread looks again by itself (monotonic s), set under the lock.

    Telemetry that only joins the open commit window is gathered: it waits in :attr:`frames` undecoded, and the
    core's thread decodes it with whatever it holds when the window closes (run once every 50 ms the per-frame path
    costs about six times what it costs back to back). :attr:`gathered` counts those frames, at most GATHERED_MAX,
    and :attr:`gathered_chunks` the chunks they came in; whoever takes the frames next takes them too.
    """

    def __init__(self, inbox: queue.SimpleQueue[Event]) -> None:
        self.inbox = inbox
        self.lock = threading.Lock()
        self.inline = False
        self.frames: deque[list[Uplink]] = deque()
        self.acks: deque[Ack] = deque()
        self.wake_at = 0.0
        self.gathered = 0
        self.gathered_chunks = 0

    def deliver(self, uplinks: list[Uplink], handle: Callable[[], None],
                gather: Callable[[list[Uplink], float], float] | None = None) -> None:
        """Frames from a radio: ``handle()`` takes them at once on this thread if the core's lock is free, else they
        wait (and a ``Heard`` in the inbox wakes the core). With the lock free, ``gather(uplinks, wake_at)`` (called
        under it, with when the core's thread looks next) may give the commit window's end (monotonic s) instead:
        they wait for it, and the core's thread looks again by then."""
        if self.inline and self.lock.acquire(blocking=False):
            try:
                if self.inline:
                    self.frames.append(uplinks)
                    if gather is not None and self.gathered + len(uplinks) <= GATHERED_MAX and self._gather(
                            gather, uplinks):
                        return
                    handle()
                    return
            finally:
                self.lock.release()
        self.frames.append(uplinks)
        self.inbox.put(Heard())

    def _gather(self, gather: Callable[[list[Uplink], float], float], uplinks: list[Uplink]) -> bool:
        try:
            due = gather(uplinks, self.wake_at)
        except Exception:  # noqa: BLE001 - a bug in the choice leaves the frames to handle(), which reports it
            return False
        if not due:
            return False
        self.rearm(due)
        self.gathered += len(uplinks)
        self.gathered_chunks += 1
        return True

    def plan(self, wait_s: Callable[[], float]) -> None:
        """The core's thread will look again in ``wait_s()`` seconds (call under :attr:`lock`)."""
        self.wake_at = time.monotonic() + wait_s()

    def rearm(self, wake_at: float) -> None:
        """Work done on another thread needs the core's thread to look again at ``wake_at`` (monotonic s): wake it if
        that is sooner than it planned (call under :attr:`lock`)."""
        if wake_at < self.wake_at - REARM_SLACK_S:  # the same deadline computed again is no news
            self.wake_at = wake_at
            self.inbox.put(Rearm())

    def sleep(self, timeout: float, limit: int) -> list[Event] | None:
        """The core's thread (not holding the lock) waits up to ``timeout`` s for events; None when it was only
        woken to work out its sleep again."""
        events = drain(self.inbox, timeout, limit)
        if events and all(type(e) is Rearm for e in events):
            return None
        return events

    def waiting(self, outbox: Any) -> bool:
        """Whether the core must look again at once: frames wait (other than those gathered for the commit
        window), or PUBACKs that free room for what ``outbox`` (an :class:`~agent.gateway.outbox.Outbox`) still
        has to send."""
        return len(self.frames) > self.gathered_chunks or (bool(self.acks) and not outbox.quiet)

    def has_frames(self) -> bool:
        """Whether frames a radio delivered while the lock was held wait for the core (any thread may ask)."""
        return bool(self.frames)

    def defer_ack(self, ack: Ack) -> bool:
        """Keep ``ack`` for the core's next wake-up; False when too many wait already (then the caller posts it)."""
        if not self.inline or len(self.acks) >= ACKS_WAITING_MAX:
            return False
        self.acks.append(ack)
        return True

    def take(self, events: list[Event], limit: int) -> list[Event]:
        """The waiting PUBACKs, ``events``, then up to ``limit`` chunks of waiting frames (call under :attr:`lock`)."""
        acks, frames = self.acks, self.frames
        if not acks and not frames:
            return events
        out: list[Event] = [acks.popleft() for _ in range(len(acks))]
        out.extend(events)
        while frames and limit > 0:
            out.append(Uplinks(frames.popleft()))
            limit -= 1
        self.gathered = self.gathered_chunks = 0  # any left over are handled at once (waiting())
        return out


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
