"""Receipts go only to SOS frames that proved their sender: a forged unsigned SOS for a keyed node gets none."""

from __future__ import annotations

import random
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from agent.config import parse_config
from agent.gateway import receipt_backup
from agent.gateway.edge import Edge
from agent.gateway.readings import FrameDecoder
from drivers.airtime import time_on_air_ms
from drivers.codec.frame import parse
from drivers.errors import ModuleTimeout
from tests.support.field import FieldNode, config_text, node_key


class _Sender:
    def __init__(self) -> None:
        self.sent: list[tuple[int, int, bytes | None]] = []

        self.delays: list[float] = []

    def request(self, node: int, fcnt: int, key: bytes | None, *, delay_s: float = 0.0) -> None:
        self.sent.append((node, fcnt, key))
        self.delays.append(delay_s)


def _edge(tmp_path: Path, *, receipt: str = "send") -> tuple[Edge, _Sender, Counter[str]]:
    text = config_text(port="loop://", mqtt_port=1883, journal=tmp_path / "j.db", nodes=[FieldNode(0x101, "sos")])
    text = text.replace("    interval_s: 60", f"    interval_s: 60\n    unauthenticated: flag\n    receipt: {receipt}")
    cfg = parse_config(text)
    counts: Counter[str] = Counter()
    edge = Edge(cfg, FrameDecoder(cfg, {}), next_seq=iter(range(1, 10**6)).__next__,
                count=lambda name, n=1: counts.update({name: n}), post=lambda item: None, meta={})
    sender = _Sender()
    edge._senders["lora0"] = sender
    return edge, sender, counts


def _sos(auth: str, fcnt: int) -> dict[str, Any]:
    return {"node": "00000101", "fcnt": fcnt, "radio": "lora0", "receipt": True, "auth": auth, "kind": "sos"}


def test_signed_sos_gets_a_receipt_signed_with_the_node_key(tmp_path: Path) -> None:
    edge, sender, counts = _edge(tmp_path)
    edge.on_sos_acked([_sos("mic", 41)])
    assert sender.sent == [(0x101, 41, node_key(0x101))]
    assert counts["receipts.unauthenticated"] == 0


def test_unsigned_sos_claiming_a_keyed_node_gets_no_receipt(tmp_path: Path) -> None:
    edge, sender, counts = _edge(tmp_path)
    # A forger picks the counter of the real caller's next SOS: a signed receipt would stop the caller's resends.
    edge.on_sos_acked([_sos("none", 42)])
    assert sender.sent == []
    assert counts["receipts.unauthenticated"] == 1


def test_the_answering_gateway_answers_every_sos_at_once(tmp_path: Path) -> None:
    edge, sender, _ = _edge(tmp_path)
    edge.on_sos_acked([_sos("mic", 41)])
    edge.on_sos_acked([_sos("mic", 42)])
    assert [s[1] for s in sender.sent] == [41, 42] and sender.delays == [0.0, 0.0]


class _Draws(random.Random):
    """A random source whose ``uniform`` returns the given fractions of its range, in turn."""

    def __init__(self, *fractions: float) -> None:
        super().__init__(0)
        self.fractions = list(fractions)

    def uniform(self, a: float, b: float) -> float:
        return a + (b - a) * self.fractions.pop(0)


def _backup(edge: Edge, now: list[float], *fractions: float, running_s: float) -> None:
    """Give the edge a backup rule on the fake clock ``now``, as if the gateway had started ``running_s`` ago."""
    edge._backup = receipt_backup.BackupReceipts(lambda: now[0], _Draws(*fractions), started=now[0] - running_s)


def test_a_backup_gateway_answers_only_a_resend_and_after_the_answering_one(tmp_path: Path) -> None:
    """Both gateways online: the answering one's receipt reaches the caller and the device stops; the backup heard
    the first SOS and sent nothing. A resend (the first receipt did not arrive) gets the backup's, 3-8 s later."""
    now = [10_000.0]
    edge, sender, counts = _edge(tmp_path, receipt="backup")
    _backup(edge, now, 0.0, running_s=receipt_backup.RESEND_WINDOW_S + 1)
    edge.on_sos_acked([_sos("mic", 41)])
    assert sender.sent == [] and counts["receipts.left_to_answering_gateway"] == 1
    now[0] += 20.0  # the device sends again: no receipt came
    edge.on_sos_acked([_sos("mic", 42)])
    assert sender.sent == [(0x101, 42, node_key(0x101))] and sender.delays == [receipt_backup.BACKUP_DELAY_S]
    now[0] += receipt_backup.RESEND_WINDOW_S + 1  # a new call much later: the answering gateway's again
    edge.on_sos_acked([_sos("mic", 50)])
    assert len(sender.sent) == 1 and counts["receipts.left_to_answering_gateway"] == 2


def test_backups_draw_their_wait_between_the_delay_and_the_delay_plus_jitter(tmp_path: Path) -> None:
    """Two or three backups hearing one resend must not all answer the same time after their acknowledgements."""
    low, high = receipt_backup.BACKUP_DELAY_S, receipt_backup.BACKUP_DELAY_S + receipt_backup.BACKUP_JITTER_S
    now = [10_000.0]
    edge, sender, _ = _edge(tmp_path, receipt="backup")
    _backup(edge, now, 1.0, 0.5, running_s=receipt_backup.RESEND_WINDOW_S + 1)
    for fcnt in (41, 42, 43):
        edge.on_sos_acked([_sos("mic", fcnt)])
        now[0] += 30.0
    assert sender.delays == [high, (low + high) / 2]
    # The real random source: every wait in range, and spread over it (several SF12 receipts long).
    rule = receipt_backup.BackupReceipts(lambda: now[0], random.Random(16), started=0.0)
    waits = [rule.delay_s(1) for _ in range(200)][1:]
    assert all(w is not None and low <= w <= high for w in waits)
    assert max(waits) - min(waits) > 4.0  # type: ignore[operator]
    sf12_receipt_s = time_on_air_ms(14, 12, 125) / 1e3
    assert low > sf12_receipt_s and receipt_backup.BACKUP_JITTER_S > 3 * sf12_receipt_s


def test_a_restarted_backup_answers_the_first_sos_it_hears_within_the_resend_window(tmp_path: Path) -> None:
    """The power cut that took the answering gateway down restarted the backup too: it does not know the node's
    last SOS, so for RESEND_WINDOW_S after its start it answers every SOS (delayed), not only a second one."""
    now = [10_000.0]
    edge, sender, counts = _edge(tmp_path, receipt="backup")
    _backup(edge, now, 0.0, 0.0, running_s=0.0)
    now[0] += 60.0
    edge.on_sos_acked([_sos("mic", 77)])  # the device has been resending through the outage
    assert sender.sent == [(0x101, 77, node_key(0x101))] and sender.delays == [receipt_backup.BACKUP_DELAY_S]
    assert counts["receipts.left_to_answering_gateway"] == 0
    # Once the window since the start has passed, a node's first SOS is the answering gateway's again.
    edge2, sender2, counts2 = _edge(tmp_path / "later", receipt="backup")
    _backup(edge2, now, 0.0, running_s=receipt_backup.RESEND_WINDOW_S + 1)
    edge2.on_sos_acked([_sos("mic", 78)])
    assert sender2.sent == [] and counts2["receipts.left_to_answering_gateway"] == 1


def test_a_backup_receipt_waits_its_delay_on_the_real_sender() -> None:
    from tests.unit.test_receipts import sending

    clock, radio, sender = sending()
    sender.request(0x101, 42, None, delay_s=receipt_backup.BACKUP_DELAY_S)
    assert sender.pump() == pytest.approx(receipt_backup.BACKUP_DELAY_S) and radio.sent == []
    clock.advance(receipt_backup.BACKUP_DELAY_S - 0.001)
    assert sender.pump() == pytest.approx(0.001) and radio.sent == []
    clock.advance(0.001)
    assert sender.pump() is None and len(radio.sent) == 1


def test_a_delayed_backup_receipt_does_not_hold_up_other_nodes_receipts() -> None:
    """A backup's receipt waiting its delay is first in the queue; another node's immediate receipt goes past it
    (after the pause), and the delayed one goes when its delay has passed."""
    from tests.unit.test_receipts import sending

    clock, radio, sender = sending()
    start = clock()
    delay = receipt_backup.BACKUP_DELAY_S + receipt_backup.BACKUP_JITTER_S
    sender.request(0x101, 42, None, delay_s=delay)
    sender.request(0x202, 7, None)
    sender.request(0x303, 9, None)
    while (wait := sender.pump()) is not None:
        clock.advance(wait)
    sent = [(round(t - start, 3), parse(p).node_id) for t, p in radio.sent]
    assert [n for _, n in sent] == [0x202, 0x303, 0x101]
    assert sent[0][0] == 0.0 and 0 < sent[1][0] < 1.0  # only the channel's pause between them
    assert sent[2][0] == pytest.approx(delay)


def test_a_retry_backoff_holds_whichever_receipt_goes_next() -> None:
    """The backoff after a failed send applies to the next send, not to the failed receipt alone."""
    from tests.unit.test_receipts import sending

    clock, radio, sender = sending(retry_min_s=2.0, retry_max_s=2.0)
    start = clock()
    sender.request(0x101, 42, None, delay_s=5.0)
    sender.request(0x202, 7, None)
    radio.fail_with.append(ModuleTimeout("no answer"))
    while (wait := sender.pump()) is not None:
        clock.advance(wait)
    assert [round(t - start, 3) for t in radio.attempts[:2]] == [0.0, pytest.approx(2.0, abs=0.01)]
    assert [parse(p).node_id for _, p in radio.sent] == [0x202, 0x101]
    assert radio.sent[1][0] - start == pytest.approx(5.0)
