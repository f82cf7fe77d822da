"""The receipt senders of one gateway: one per radio that can transmit, sharing one airtime budget per channel, and
their state (airtime in the sliding hour, receipts waiting) saved and restored as one JSON text by radio name, which
the edge keeps in the journal's meta (``receipts_snapshot``). The sender itself: agent.gateway.receipts.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from typing import Any

from agent.gateway.receipt_airtime import AirtimeBudget, ReceiptError, ReceiptsConfig
from agent.gateway.receipts import ReceiptSender, build_receipt_sender
from agent.i18n import _

log = logging.getLogger("agent.gateway.edge")  # the edge's log: these are its receipts


def build_senders(receipts: ReceiptsConfig, radios: list[Any], *, wake: Callable[[], None]) -> dict[str, ReceiptSender]:
    """One sender per radio with P2P settings, by radio name; a radio whose channel or budget is outside the rules
    gets none (logged). ``wake`` is called when a receipt is requested from another thread."""
    senders: dict[str, ReceiptSender] = {}
    budgets: dict[int, AirtimeBudget] = {}
    for radio in radios:
        rc = getattr(radio, "config", None)
        p2p = getattr(rc, "p2p", None)
        if rc is None or p2p is None:
            continue  # ES920LR receipts would need the node's module address; not wired yet
        try:
            budget = budgets.get(p2p.frequency_hz)
            if budget is None:
                budget = budgets[p2p.frequency_hz] = AirtimeBudget(
                    receipts.rules_for(p2p.frequency_hz, bw_khz=p2p.bandwidth_khz))
            sender = build_receipt_sender(
                receipts, radio.transmit, frequency_hz=p2p.frequency_hz, sf=p2p.spreading_factor,
                bw_khz=p2p.bandwidth_khz, cr=p2p.coding_rate, preamble=p2p.preamble, budget=budget, wake=wake)
        except ReceiptError as exc:
            log.error("%s", _("receipts disabled on radio {radio}: {error}").format(radio=rc.name, error=exc))
            continue
        if sender is not None:
            senders[rc.name] = sender
    return senders


def restore_senders(senders: dict[str, Any], text: str, count: Callable[..., None]) -> None:
    """Give each sender back its state from ``text`` (:func:`senders_snapshot` before the restart); a bad snapshot
    costs only its own sender's history (counted ``receipts.restore_failed``)."""
    try:
        snaps = json.loads(text)
        if not isinstance(snaps, dict):
            raise ValueError("not an object of snapshots by radio")
    except ValueError as exc:
        count("receipts.restore_failed")
        log.error("%s", _("could not restore the SOS receipts' airtime and queue ({error}); starting afresh").format(
            error=exc))
        return
    for name, sender in senders.items():
        snap = snaps.get(name)
        restore = getattr(sender, "restore", None)
        if snap is None or restore is None:
            continue
        try:
            restore(snap)
        except Exception as exc:  # noqa: BLE001 - a damaged snapshot must cost the budget history, never the agent
            count("receipts.restore_failed")
            log.error("%s", _("receipts on radio {radio}: could not restore the airtime used and the receipts "
                              "waiting ({kind}: {error}); starting afresh").format(
                radio=name, kind=type(exc).__name__, error=exc))


def senders_snapshot(senders: dict[str, Any], count: Callable[..., None]) -> str | None:
    """Every sender's state as one JSON text (by radio), or None when no sender can snapshot; a sender whose
    snapshot fails is left out (counted ``receipts.snapshot_failed``)."""
    snaps: dict[str, Any] = {}
    for name, sender in senders.items():
        take = getattr(sender, "snapshot", None)
        if take is None:
            continue
        try:
            snaps[name] = take()
        except Exception as exc:  # noqa: BLE001 - as in restore_senders
            count("receipts.snapshot_failed")
            log.error("%s", _("receipts on radio {radio}: snapshot failed: {kind}: {error}").format(
                radio=name, kind=type(exc).__name__, error=exc))
    if not snaps:
        return None
    try:
        return json.dumps(snaps, separators=(",", ":"), sort_keys=True)
    except (TypeError, ValueError) as exc:
        count("receipts.snapshot_failed")
        log.error("%s", _("receipts: snapshot is not JSON-able: {error}").format(error=exc))
        return None
