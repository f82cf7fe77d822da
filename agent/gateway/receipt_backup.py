"""Which gateway answers an SOS that several gateways hear.

Where valleys overlap or a relay is added, one SOS reaches two or three gateways. Each sends a receipt once its
broker acknowledged the SOS, and two receipts at nearly the same moment collide at the caller's device: gateways in
different valleys often cannot hear each other's carrier, so carrier sense (LBT) does not keep them apart. The rule,
set per node in each gateway's config (``nodes[].receipt``):

* ``send`` (the default): this gateway answers every SOS of the node as soon as its broker acknowledged it.
* ``backup``: this gateway answers only an SOS the node sent again: one acknowledged within
  :data:`RESEND_WINDOW_S` of an earlier SOS of the same node. Firmware sends an SOS again, with a new counter, at
  most :data:`RESEND_WINDOW_S` apart until a receipt arrives, and accepts a receipt for any of its SOS counters
  still outstanding (docs/protocols.md §9), so a resend means the answering gateway's receipt did not reach the
  device (that gateway is down, has lost its backhaul, or its receipt was lost on air). The backup's receipt goes a
  random :data:`BACKUP_DELAY_S` to ``BACKUP_DELAY_S + BACKUP_JITTER_S`` after its acknowledgement: the answering
  gateway's receipt to the same resend, if any, is on air first, and two or more backups that heard the resend
  draw different waits, so they rarely overlap (and a collision is not repeated for the next resend, which draws
  again).
* A backup that just started knows no node's last SOS: it may have restarted in the power cut that took the
  answering gateway down, while the device kept resending. For :data:`RESEND_WINDOW_S` after its start it treats
  every SOS of a backup node as a resend and answers it, with the same wait; if the answering gateway is up, its
  receipt went first and the device has stopped, so the backup's one costs airtime but cannot collide.

So with both gateways online and the first receipt received, one receipt goes on air per SOS; a caller whose
answering gateway is down gets the backup's receipt for the first resend. Give each node one ``send`` gateway and
make the others that hear it ``backup``.
"""

from __future__ import annotations

import random
import time
from collections import OrderedDict
from collections.abc import Callable

__all__ = ["BACKUP_DELAY_S", "BACKUP_JITTER_S", "RESEND_WINDOW_S", "BackupReceipts"]

#: An SOS acknowledged within this many seconds of the node's previous one is a resend (firmware resends every
#: 30–120 s and never more than this apart; a new press later than this is a new call, which the answering gateway
#: answers). Also how long after its start a backup answers every SOS of its backup nodes.
RESEND_WINDOW_S = 300.0
#: Shortest wait of a backup gateway's receipt after its acknowledgement, in seconds: longer than a receipt's time
#: on air at SF12 (about 1.2 s for 14 bytes), so the answering gateway's receipt to the same resend ends first.
BACKUP_DELAY_S = 3.0
#: The wait is drawn uniformly from BACKUP_DELAY_S to BACKUP_DELAY_S + this, in seconds: several receipt lengths at
#: SF12, so backups that heard the same resend seldom transmit at once.
BACKUP_JITTER_S = 5.0
_NODES_MAX = 10_000  # nodes remembered (a config lists at most a few thousand; bounded against anything else)


class BackupReceipts:
    """The ``backup`` half of the rule: remembers when each node's last SOS was acknowledged here.

    Args:
        clock: monotonic seconds (default ``time.monotonic``).
        rng: random source of the wait's jitter (default: a new ``random.Random``).
        started: clock time this gateway started, in seconds (default: now, on ``clock``).
    """

    def __init__(self, clock: Callable[[], float] | None = None, rng: random.Random | None = None, *,
                 started: float | None = None) -> None:
        self._clock = clock or time.monotonic
        self._rng = rng or random.Random()
        self._started = self._clock() if started is None else started
        self._last: OrderedDict[int, float] = OrderedDict()

    def delay_s(self, node_id: int) -> float | None:
        """For an SOS of ``node_id`` just acknowledged by the broker: seconds to wait before its receipt, or None
        when a backup gateway leaves it to the answering one (the node's first SOS in the window, once this
        gateway has run for :data:`RESEND_WINDOW_S`)."""
        now = self._clock()
        last = self._last.pop(node_id, None)
        self._last[node_id] = now
        if len(self._last) > _NODES_MAX:
            self._last.popitem(last=False)
        if last is None:
            # What came before the start is unknown: a restarted backup must not miss the resend it is there for.
            if now - self._started > RESEND_WINDOW_S:
                return None
        elif now - last > RESEND_WINDOW_S:
            return None
        return BACKUP_DELAY_S + self._rng.uniform(0.0, BACKUP_JITTER_S)
