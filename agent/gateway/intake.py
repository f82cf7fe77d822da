"""Frames into readings: one chunk of uplinks decoded into journal entries (with the alerts they raise) or
quarantined frames; and the radios' incidents counted and logged. The per-frame path of the core; it runs under the
core's lock (agent.gateway.events.CoreTurn), on the core's thread or on the radio's that delivered the frames."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from agent.gateway.reading import SOS, Entry, Quarantined
from agent.gateway.readings import TELEMETRY_KINDS, Decoded, FrameDecoder
from agent.i18n import N_, LazyText, _
from agent.ratelog import RateLimitedLog
from drivers.codec.frame import FLAG_RECEIPT, HEADER_SIZE
from drivers.text import Text
from drivers.types import Uplink

log = logging.getLogger(__name__)


_KIND_AT = HEADER_SIZE - 1  # the kind code's byte in a node frame


def gatherable(uplinks: list[Uplink]) -> bool:
    """Whether every frame of a chunk says in clear that it is telemetry and asks no receipt: such frames may wait
    undecoded for the end of the commit window (agent.gateway.events.CoreTurn.deliver). Nothing is checked yet, so
    a forged frame may claim it; it then waits the window out itself and is refused when decoded, in arrival order
    with the rest. Anything else (an SOS, an alarm, a frame that does not parse) is handled at once."""
    for up in uplinks:
        payload = up.payload
        if len(payload) <= _KIND_AT or payload[_KIND_AT] not in TELEMETRY_KINDS or payload[0] & FLAG_RECEIPT:
            return False
    return True


def decode_chunk(uplinks: list[Uplink], decoder: FrameDecoder, on_reading: Callable[[dict[str, Any]], Any], *,
                 entries: list[Entry], quarantined: list[Quarantined], count: Callable[..., None],
                 warn: RateLimitedLog) -> bool:
    """Decode one chunk of frames into ``entries`` (and the alerts ``on_reading`` raises for each reading) or
    ``quarantined``; True if one is an SOS.

    A decoder bug quarantines the frame (``internal_error``) and a rules bug loses only the alerts: neither loses
    a frame nor stops the core. Names are bound once per chunk, and frames.ok counted once per chunk.
    """
    decode, ok, sos = decoder.decode, 0, False
    for up in uplinks:
        try:
            out = decode(up)
        except Exception as exc:  # noqa: BLE001 - a decoder bug must not lose the frame or stop the core
            log.exception("%s", _("decoding a frame from radio {radio} failed").format(radio=up.radio))
            out = Decoded(quarantined=Quarantined(up.received_us, up.radio, None, "internal_error",
                                                  f"decoder raised {type(exc).__name__}: {exc}",
                                                  up.payload, up.rssi, up.snr))
        entry = out.entry
        if entry is None:
            q = out.quarantined
            assert q is not None
            quarantined.append(q)
            count(f"frames.{q.reason}")
            warn.warning(q.reason, Text(N_("node {node}"), node=q.node or "?"), N_("frames"), "%s", LazyText(
                N_("frame quarantined from {node} via {radio}: {reason}: {detail} (rssi {rssi})"), node=q.node or "?",
                radio=q.radio, reason=q.reason, detail=q.detail, rssi=q.rssi))
            continue
        entries.append(entry)
        sos = sos or entry.lane == SOS
        ok += 1
        try:
            alerts = on_reading(out.body)
        except Exception:  # noqa: BLE001 - a rules bug never stops forwarding
            count("edge.internal_error")
            log.exception("%s", _("edge logic failed in {step}").format(step="on_reading"))
        else:
            if alerts:
                entries.extend(alerts)
    if ok:
        count("frames.ok", ok)
    return sos


def log_incident(radio: str, kind: str, detail: str, *, count: Callable[..., None], warn: RateLimitedLog) -> None:
    """Count ``<radio>.<kind>`` and log it: a configured module in full, anything else rate-limited."""
    count(f"{radio}.{kind}")
    if kind == "configured":
        log.info("%s", _("radio {radio}: {kind}: {detail}").format(radio=radio, kind=kind, detail=detail))
    else:
        # Garbled lines, CRC errors and bad hex come at the rate of the noise or of a hostile sender.
        warn.warning(kind, Text(N_("radio {radio}"), radio=radio), N_("incidents"), "%s",
                     LazyText(N_("radio {radio}: {kind}: {detail}"), radio=radio, kind=kind, detail=detail))
