"""Receipts go only to SOS frames that proved their sender: a forged unsigned SOS for a keyed node gets none."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

from agent.config import parse_config
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


def _edge(tmp_path: Path) -> tuple[Edge, _Sender, Counter[str]]:
    text = config_text(port="loop://", mqtt_port=1883, journal=tmp_path / "j.db", nodes=[FieldNode(0x101, "sos")])
    text = text.replace("    interval_s: 60", "    interval_s: 60\n    unauthenticated: flag")
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
