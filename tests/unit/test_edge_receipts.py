"""Receipts go only to SOS frames that proved their sender: a forged unsigned SOS for a keyed node gets none."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from agent.config import parse_config
from agent.gateway import receipt_backup
from agent.gateway.edge import Edge
from agent.gateway.readings import FrameDecoder
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


def test_a_backup_gateway_answers_only_a_resend_and_after_the_answering_one(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Both gateways online: the answering one's receipt reaches the caller and the device stops; the backup heard
    the first SOS and sent nothing. A resend (the first receipt did not arrive) gets the backup's, 3 s later."""
    now = [1000.0]
    monkeypatch.setattr(receipt_backup.time, "monotonic", lambda: now[0])
    edge, sender, counts = _edge(tmp_path, receipt="backup")
    edge.on_sos_acked([_sos("mic", 41)])
    assert sender.sent == [] and counts["receipts.left_to_answering_gateway"] == 1
    now[0] += 20.0  # the device sends again: no receipt came
    edge.on_sos_acked([_sos("mic", 42)])
    assert sender.sent == [(0x101, 42, node_key(0x101))] and sender.delays == [receipt_backup.BACKUP_DELAY_S]
    now[0] += receipt_backup.RESEND_WINDOW_S + 1  # a new call much later: the answering gateway's again
    edge.on_sos_acked([_sos("mic", 50)])
    assert len(sender.sent) == 1 and counts["receipts.left_to_answering_gateway"] == 2


def test_a_backup_receipt_waits_its_delay_on_the_real_sender() -> None:
    from tests.unit.test_receipts import sending

    clock, radio, sender = sending()
    sender.request(0x101, 42, None, delay_s=receipt_backup.BACKUP_DELAY_S)
    assert sender.pump() == pytest.approx(receipt_backup.BACKUP_DELAY_S) and radio.sent == []
    clock.advance(receipt_backup.BACKUP_DELAY_S - 0.001)
    assert sender.pump() == pytest.approx(0.001) and radio.sent == []
    clock.advance(0.001)
    assert sender.pump() is None and len(radio.sent) == 1
