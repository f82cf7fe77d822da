"""``denen monitor``: a live per-node view for placing sensors on site.

For every node the gateway knows (from the config, and any other node the journal has heard): when it was last
heard, RSSI, SNR, battery, frames good and bad, and a **link margin** with a rating. The installer walks a node to
its spot, presses its test button, and watches the rating settle before fixing it to the tree.

The figures come from the journal the running agent keeps (``agent.tools.status.collect``, read-only), so the monitor
works beside the agent without disturbing it, and is refreshed every ``--interval`` seconds (default 2).

Link margin, in dB, is how far the last frame was above what the radio can still decode (agent/tools/linkmargin.py):
the SNR over the LoRa demodulation floor of the spreading factor (SF7 −7.5 dB ... SF12 −20), the RSSI over the
receiver sensitivity (at 125 kHz: SF7 −124.5 dBm, SF10 −132 dBm, SF12 −137 dBm), whichever is smaller of the two
that are known (the ES920LR reports no SNR, so only RSSI counts there).
Ratings (:data:`RATINGS`): **excellent** ≥ 10 dB, **good** ≥ 5 dB, **marginal** ≥ 0 dB, **poor** < 0 dB. Why
these lines: wet foliage, snow and seasonal growth in a forest take 5–10 dB off a path, so a node placed at
"excellent" keeps working all year, "good" usually does, and "marginal" will drop frames after the first rain.
Separately, RSSI within 6 dB of the sensitivity is flagged (``rssi_near_limit``): the frame was barely above the
noise whatever its SNR said. One frame is one sample; watch a few before deciding.

A node is **late** once it has been silent for ``rules.silence_factor`` × its ``interval_s`` (default 3 ×): the
threshold of the ``node_silent`` alert (agent/rules/), so LATE and the alert mean the same silence. They can still
differ in two ways, said in the legend: the alert does not count time the agent was stopped (and counts a node never
heard from the agent's start), while the monitor counts wall-clock time since the node's last frame in the journal,
so after an outage a node can show LATE before its alert is raised; and a node of a kind not in
``rules.silence_kinds`` raises no alert, so it shows ``LATE*``. Without a config the rules' defaults apply.

**History.** One frame says little about a spot in a forest: the monitor keeps, per node, the frames it has seen
over the last 15 minutes (:data:`HISTORY_S`) and shows the minimum and median RSSI and SNR, the frames heard in the
last 5 and 15 minutes, and the **worst** link margin (from the minimum RSSI and the minimum SNR), so an installer
sees the worst case, not only the last frame. The journal keeps only each node's last frame (its readings leave
once the broker has them), so the history is what the monitor saw while it ran: it samples the journal's node table
every refresh and counts the frames in between from ``frames_ok``; a node that sends several frames within one
refresh has them counted, with the last one's RSSI and SNR. ``history_since_us`` says where it starts; ``--once``
sees one frame per node.

Output: a rich table that fits 80 columns (Ctrl-C stops); ``--wide`` adds the last frame's figures, SF, both margins,
battery, frame counts and the gateway's time of the last frame. ``--once`` prints it once; ``--json`` prints the same
data as JSON (``"schema": "denen.monitor/1"``), once with ``--once``, else one document per line per refresh. Exit code
0; 1 when the journal cannot be read (with ``--once`` or ``--json``; the live view waits for it instead).
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import sys
import time
from typing import Any

from agent.errors import AgentError
from agent.i18n import N_, _, local_time
from agent.tools.linkmargin import (
    RATINGS,
    RSSI_NEAR_LIMIT_DB,
    SNR_FLOOR_DB,
    link_margin,
    sensitivity_dbm,
)
from agent.tools.standalone import run_standalone

__all__ = ["HISTORY_S", "History", "add_arguments", "collect", "main", "render"]

log = logging.getLogger(__name__)

MONITOR_SCHEMA = "denen.monitor/1"

_DEFAULT_SF = 10
_DEFAULT_BW_KHZ = 125.0
#: Span of the per-node history, in seconds, and the shorter count beside it.
HISTORY_S = 900
RECENT_S = 300
#: Bounds of the history: frames kept per node (a node sending every 2 s fills it in 15 min), nodes tracked.
HISTORY_MAX_FRAMES = 512
HISTORY_MAX_NODES = 4096


class History:
    """Frames seen per node across refreshes of the journal's node table, for the last :data:`HISTORY_S` seconds.

    Each refresh passes the node rows (:func:`agent.tools.status.collect`); a row whose ``last_seen_us`` changed is a
    new frame, and the growth of ``frames_ok`` says how many frames arrived since the previous refresh (all stamped
    with the last one's time, RSSI and SNR). Memory is bounded by :data:`HISTORY_MAX_FRAMES` per node and
    :data:`HISTORY_MAX_NODES` nodes (further nodes get no history).

    Args:
        window_s: how far back frames count, in seconds.
        max_frames: frames kept per node.
        max_nodes: nodes tracked.
    """

    def __init__(self, *, window_s: float = HISTORY_S, max_frames: int = HISTORY_MAX_FRAMES,
                 max_nodes: int = HISTORY_MAX_NODES) -> None:
        from collections import deque  # noqa: PLC0415

        self._deque = deque
        self.window_us = int(window_s * 1_000_000)
        self.max_frames = max_frames
        self.max_nodes = max_nodes
        self.since_us: int | None = None  # first refresh: frames before it are unknown
        # node -> (last_seen_us, frames_ok) at the previous refresh
        self._last: dict[str, tuple[int | None, int]] = {}
        # node -> deque of (ts_us, frames, rssi, snr)
        self._frames: dict[str, Any] = {}

    def observe(self, nodes: list[dict[str, Any]], now_us: int) -> None:
        """Take one refresh's node rows (``node``, ``last_seen_us``, ``frames_ok``, ``rssi``, ``snr``)."""
        if self.since_us is None:
            self.since_us = now_us
        for n in nodes:
            node = n["node"]
            seen = n.get("last_seen_us")
            ok = int(n.get("frames_ok") or 0)
            prev = self._last.get(node)
            if prev is None and len(self._last) >= self.max_nodes:
                continue
            self._last[node] = (seen, ok)
            if not seen or (prev is not None and prev[0] == seen):
                continue
            # First sight: the last frame is known, the ones before it are not. A counter that went back (a new
            # journal) still means one frame.
            count = 1 if prev is None else max(1, ok - prev[1])
            frames = self._frames.get(node)
            if frames is None:
                frames = self._frames[node] = self._deque(maxlen=self.max_frames)
            frames.append((int(seen), count, n.get("rssi"), n.get("snr")))
        cutoff = now_us - self.window_us
        for frames in self._frames.values():
            while frames and frames[0][0] < cutoff:
                frames.popleft()

    def stats(self, node: str, now_us: int) -> dict[str, Any]:
        """Minimum and median RSSI (dBm) and SNR (dB) of the frames in the window, and the frames heard in the
        last :data:`RECENT_S` and :data:`HISTORY_S` seconds (None where nothing is known)."""
        frames = [f for f in self._frames.get(node, ()) if f[0] >= now_us - self.window_us]
        recent = now_us - RECENT_S * 1_000_000
        rssi = [f[2] for f in frames if f[2] is not None]
        snr = [f[3] for f in frames if f[3] is not None]
        return {
            "samples": len(frames),
            "frames_5min": sum(f[1] for f in frames if f[0] >= recent),
            "frames_15min": sum(f[1] for f in frames),
            "rssi_min_dbm": min(rssi) if rssi else None,
            "rssi_median_dbm": _median(rssi),
            "snr_min_db": min(snr) if snr else None,
            "snr_median_db": _median(snr),
        }


def _median(values: list[float]) -> float | None:
    if not values:
        return None
    s = sorted(values)
    mid = len(s) // 2
    return float(s[mid]) if len(s) % 2 else (s[mid - 1] + s[mid]) / 2


def _radio_settings(config: Any) -> dict[str, tuple[int, float]]:
    """Spreading factor and bandwidth (kHz) of each configured LoRa radio, by name (from its driver's section)."""
    from drivers import registry  # noqa: PLC0415 - loads the drivers; the config that names them is loaded already

    out: dict[str, tuple[int, float]] = {}
    for radio in config.radios:
        section = registry.spec(radio.driver).section
        settings = getattr(radio, section, None) if section is not None else None
        sf, bw = getattr(settings, "spreading_factor", None), getattr(settings, "bandwidth_khz", None)
        if sf is not None and bw is not None:
            out[radio.name] = (int(sf), float(bw))
    return out


def collect(journal_path: str, config: Any | None = None, *, now_us: int | None = None,
            history: History | None = None) -> dict[str, Any]:
    """Everything the monitor shows, as plain data (the ``--json`` document).

    Args:
        journal_path: the agent's journal (read-only).
        config: the gateway config, for node names, kinds, expected intervals and each radio's SF and bandwidth;
            None shows only what the journal knows, rated at SF10/125 kHz.
        now_us: the time to compute ages from, µs since the epoch (default: now).
        history: the frames seen at earlier refreshes, updated with this one (None: this refresh alone).

    Raises:
        AgentError: the journal does not exist or cannot be read.
    """
    from agent.rules import RulesConfig  # noqa: PLC0415
    from agent.tools import status  # noqa: PLC0415

    data = status.collect(journal_path)
    now_us = time.time_ns() // 1000 if now_us is None else now_us
    # The node_silent alert's own threshold, so that LATE and the alert agree.
    rules = getattr(config, "rules", None) or RulesConfig()
    late_factor = float(rules.silence_factor)
    watched = set(rules.silence_kinds)
    radios = _radio_settings(config) if config is not None else {}
    only_radio = next(iter(radios.values())) if len(radios) == 1 else None
    configured = {n.id: n for n in config.nodes} if config is not None else {}
    heard = {n["node"]: n for n in data["nodes"]}
    if history is None:
        history = History()
    history.observe(data["nodes"], now_us)

    rows = [
        _node_row(node_id, heard.get(node_id, {}), configured.get(node_id), now_us=now_us, history=history,
                  radios=radios, fallback_radio=only_radio or (_DEFAULT_SF, _DEFAULT_BW_KHZ),
                  late_factor=late_factor, watched=watched)
        for node_id in [*configured, *sorted(set(heard) - set(configured))]
    ]
    return {
        "schema": MONITOR_SCHEMA,
        "gateway": data.get("gateway") or (config.gateway.id if config is not None else None),
        "gateway_name": getattr(getattr(config, "gateway", None), "name", None),
        "ts_us": now_us,
        "journal": journal_path,
        "agent_running": data["agent"]["running"],
        "bad_frames": data["bad_frames"],
        "thresholds": {"ratings_db": dict(RATINGS), "rssi_near_limit_db": RSSI_NEAR_LIMIT_DB,
                       "late_factor": late_factor, "silence_kinds": sorted(watched)},
        "history_s": history.window_us / 1e6,
        "history_since_us": history.since_us,
        "nodes": rows,
    }


def _node_row(node_id: str, n: dict[str, Any], cfg_node: Any | None, *, now_us: int, history: History,
              radios: dict[str, tuple[int, float]], fallback_radio: tuple[int, float], late_factor: float,
              watched: set[str]) -> dict[str, Any]:
    """One node of the ``--json`` document: ``n`` is its row of the journal's node table (empty if never heard),
    ``cfg_node`` its config entry (None if not configured)."""
    seen = n.get("last_seen_us")
    interval = cfg_node.interval_s if cfg_node is not None else None
    radio = n.get("radio") or (cfg_node.radio if cfg_node is not None else None)
    sf, bw = radios.get(radio or "", fallback_radio)
    ok = int(n.get("frames_ok") or 0)
    bad = int(n.get("frames_bad") or 0)
    margin = link_margin(n.get("rssi"), n.get("snr"), sf, bw)
    hist = history.stats(node_id, now_us)
    # The worst case: the weakest RSSI and the lowest SNR of the window, even if no one frame had both.
    worst = link_margin(hist["rssi_min_dbm"], hist["snr_min_db"], sf, bw)
    # As the rule: silent once now >= last heard + ceil(factor x interval) µs.
    late_after_us = None if interval is None else math.ceil(late_factor * interval * 1_000_000)
    if not seen:
        state = "never heard"
    elif late_after_us is not None and now_us - seen >= late_after_us:
        state = "late"
    else:
        state = "ok"
    return {
        "node": node_id,
        "name": cfg_node.name if cfg_node is not None else n.get("name"),
        "kind": cfg_node.kind if cfg_node is not None else None,
        "configured": cfg_node is not None,
        "state": state,
        "radio": radio,
        "last_seen_us": seen,
        "last_seen_age_s": None if not seen else round((now_us - seen) / 1e6, 1),
        "interval_s": interval,
        "late_after_s": None if late_after_us is None else late_after_us / 1e6,
        "silence_alert": cfg_node is not None and cfg_node.kind in watched,
        "rssi_dbm": n.get("rssi"),
        "snr_db": n.get("snr"),
        "battery_v": n.get("battery_v"),
        "frames_ok": ok,
        "frames_bad": bad,
        "bad_pct": round(100.0 * bad / (ok + bad), 1) if ok + bad else None,
        "spreading_factor": sf,
        "bandwidth_khz": bw,
        "snr_floor_db": SNR_FLOOR_DB[sf],
        "sensitivity_dbm": round(sensitivity_dbm(sf, bw), 1),
        "link_margin_db": margin.margin_db,
        "snr_margin_db": margin.snr_margin_db,
        "rssi_margin_db": margin.rssi_margin_db,
        "rating": margin.rating,
        "rssi_near_limit": margin.rssi_near_limit,
        "history": {**hist, "link_margin_min_db": worst.margin_db, "rating_worst": worst.rating,
                    "rssi_near_limit": worst.rssi_near_limit},
    }


_RATING_STYLE = {"excellent": "bold green", "good": "green", "marginal": "yellow", "poor": "bold red",
                 "unknown": "dim"}
_STATE_STYLE = {"ok": "", "late": "yellow", "never heard": "dim"}
#: Node kinds (machine-readable in ``--json``) in the words of the dashboards and docs/glossary.md.
_KIND_NAMES = {"sos": N_("SOS"), "trap": N_("trap"), "water_level": N_("water level"), "rain": N_("rain"),
               "tilt": N_("slope tilt"), "weather": N_("weather"), "heartbeat": N_("heartbeat")}
#: The ratings (machine-readable in ``--json``) as the table and its caption show them.
_RATING_NAMES = {"excellent": N_("excellent"), "good": N_("good"), "marginal": N_("marginal"), "poor": N_("poor"),
                 "unknown": N_("unknown")}


def _age_short(seconds: float | None) -> str:
    """``30s``, ``12m``, ``1.5h``, ``2.0d`` ago; ``never``."""
    if seconds is None:
        return _("never")
    if seconds < 120:
        return _("{n}s").format(n=f"{seconds:.0f}")
    if seconds < 7200:
        return _("{n}m").format(n=f"{seconds / 60:.0f}")
    if seconds < 172800:
        return _("{n}h").format(n=f"{seconds / 3600:.1f}")
    return _("{n}d").format(n=f"{seconds / 86400:.1f}")


def _num(value: float | None, digits: int = 0) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def _pair(a: float | None, b: float | None, digits: int = 0) -> str:
    """``min/median``; ``-`` when nothing is known."""
    if a is None and b is None:
        return "-"
    return f"{_num(a, digits)}/{_num(b, digits)}"


#: Widest a node name is shown, in terminal cells (a Japanese character takes two); longer ones end in "…".
NAME_CELLS = 14
NAME_CELLS_WIDE = 20


def _fit_cells(text: str, cells: int) -> str:
    """``text`` cut to at most ``cells`` terminal cells, ending in "…" when cut; never through a wide character."""
    from rich.cells import cell_len  # noqa: PLC0415

    if cell_len(text) <= cells:
        return text
    out, used = [], 0
    for ch in text:
        w = cell_len(ch)
        if used + w > cells - 1:
            break
        out.append(ch)
        used += w
    return "".join(out) + "…"


def _rating_text(rating: str, margin_db: float | None, near_limit: bool) -> Any:
    """``good 6.0`` in the rating's colour, with a red ``!`` when the RSSI was near the sensitivity."""
    from rich.text import Text  # noqa: PLC0415

    shown = _(_RATING_NAMES[rating]) if rating in _RATING_NAMES else rating
    text = Text(shown if margin_db is None else f"{shown} {margin_db:.1f}", style=_RATING_STYLE.get(rating, ""))
    if near_limit:
        text.append("!", style="bold red")
    return text


def render(data: dict[str, Any], *, wide: bool = False) -> Any:
    """The monitor's view of ``data`` (from :func:`collect`) as a rich renderable.

    The default view fits 80 columns: node id, name, age of the last frame, the history's min/median RSSI and SNR,
    frames in the last 5 and 15 minutes, and the worst link margin of the history with its rating. ``wide`` adds
    the kind, the last frame's RSSI, SNR, SF, SNR and RSSI margins and rating, battery, frame counts, and the
    gateway's time of the last frame.
    """
    table = _table(data, wide=wide)
    day = time.strftime("%Y-%m-%d", time.localtime(data["ts_us"] / 1e6))
    for n in data["nodes"]:
        table.add_row(*_row_cells(n, wide=wide, day=day))
    table.caption = _caption(data, wide=wide)
    return table


def _table(data: dict[str, Any], *, wide: bool) -> Any:
    """The empty table: its title and columns."""
    from rich import box  # noqa: PLC0415
    from rich.cells import cell_len  # noqa: PLC0415
    from rich.table import Table  # noqa: PLC0415

    stamp = local_time(data["ts_us"], date=False)
    running = _("agent running") if data["agent_running"] else _("agent NOT running")
    gateway = " ".join(x for x in (data.get("gateway"), data.get("gateway_name")) if x)
    table = Table(title=f"denen monitor  {gateway}  {stamp}  ({running})", expand=False,
                  box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False, collapse_padding=True, padding=(0, 1))
    # Node ids are never cut: the column is as wide as the longest.
    id_cells = max([cell_len(n["node"]) for n in data["nodes"]] + [4])
    table.add_column(_("node"), no_wrap=True, min_width=id_cells)
    table.add_column(_("name"), no_wrap=True, overflow="ellipsis")
    if wide:
        table.add_column(_("kind"), no_wrap=True, overflow="ellipsis", max_width=12)
        table.add_column(_("heard at"), no_wrap=True)
    table.add_column(_("seen"), justify="right", no_wrap=True)
    if wide:
        table.add_column(_("last\nRSSI/SNR"), justify="right", no_wrap=True)
        table.add_column("SF", justify="right", no_wrap=True)
        table.add_column(_("last margin\nSNR/RSSI"), justify="right", no_wrap=True)
        table.add_column(_("last\nlink"), no_wrap=True)
    # Two-line headers: the figures are narrower than their names.
    table.add_column(_("RSSI dBm\nmin/med"), justify="right", no_wrap=True)
    table.add_column(_("SNR dB\nmin/med"), justify="right", no_wrap=True)
    table.add_column(_("frames\n5m/15m"), justify="right", no_wrap=True)
    table.add_column(_("worst\nlink dB"), no_wrap=True)
    if wide:
        table.add_column(_("batt\nV"), justify="right", no_wrap=True)
        table.add_column(_("frames\nok/bad"), justify="right", no_wrap=True)
    return table


def _row_cells(n: dict[str, Any], *, wide: bool, day: str) -> list[Any]:
    """One node's cells; ``day`` is the date of the view (``%Y-%m-%d``, local time)."""
    from rich.text import Text  # noqa: PLC0415

    h = n["history"]
    if n["state"] != "late":
        late = ""
    else:
        late = " " + (_("LATE") if n["silence_alert"] else _("LATE*"))
    seen = Text(_age_short(n["last_seen_age_s"]) + late, style=_STATE_STYLE.get(n["state"], ""))
    row: list[Any] = [n["node"], _fit_cells(n["name"] or "?", NAME_CELLS_WIDE if wide else NAME_CELLS)]
    if wide:
        heard = "-"
        if n["last_seen_us"]:
            at = time.localtime(n["last_seen_us"] / 1e6)
            # The gateway's clock: the time alone today, with the date otherwise.
            heard = time.strftime("%H:%M:%S" if time.strftime("%Y-%m-%d", at) == day else "%m-%d %H:%M", at)
        kind = n["kind"]
        row += [_(_KIND_NAMES[kind]) if kind in _KIND_NAMES else (kind or "?"), heard]
    row.append(seen)
    if wide:
        last = _rating_text(n["rating"], None, n["rssi_near_limit"])
        last_rssi_snr = "-" if n["rssi_dbm"] is None and n["snr_db"] is None else \
            f"{_num(n['rssi_dbm'])}/{_num(n['snr_db'], 1)}"
        row += [last_rssi_snr, str(n["spreading_factor"]), _pair(n["snr_margin_db"], n["rssi_margin_db"], 1), last]
    digits = 1 if wide else 0
    frames = "-" if not h["samples"] else f"{h['frames_5min']}/{h['frames_15min']}"
    row += [_pair(h["rssi_min_dbm"], h["rssi_median_dbm"]), _pair(h["snr_min_db"], h["snr_median_db"], digits),
            frames, _rating_text(h["rating_worst"], h["link_margin_min_db"], h["rssi_near_limit"])
            if h["samples"] else "-"]
    if wide:
        bad = Text(str(n["frames_bad"]), style="yellow" if n["frames_bad"] else "")
        row += [_num(n["battery_v"], 2), Text.assemble(str(n["frames_ok"]), "/", bad)]
    return row


def _caption(data: dict[str, Any], *, wide: bool) -> str:
    """The legend under the table: the history's span, the ratings, and what LATE means."""
    lines = ", ".join(f"{_(_RATING_NAMES[name])} >= {low:g} dB" for name, low in RATINGS)
    factor = data["thresholds"]["late_factor"]
    window_min = data.get("history_s", HISTORY_S) / 60
    since_us = data.get("history_since_us")
    watched_s = None if since_us is None else (data["ts_us"] - since_us) / 1e6
    if watched_s is not None and watched_s < data.get("history_s", HISTORY_S):
        span = _("history: frames seen since {time} (the monitor's start; one frame per node until it has "
                 "watched)").format(time=local_time(since_us, date=False))
    else:
        span = _("history: the last {minutes} min").format(minutes=f"{window_min:g}")
    late_legend = _("LATE = silent >= {factor} x interval (rules.silence_factor), the threshold of the node_silent "
                    "alert (which does not count time the agent was stopped, so after an outage LATE can show "
                    "first); LATE* = no alert for this kind (rules.silence_kinds).").format(factor=f"{factor:g}")
    return (
        _("{history}; frames 5m/15m = frames heard in the last 5/15 min. worst link = margin (dB) from the lowest "
          "RSSI and the lowest SNR: {ratings}, {poor} below; ! = RSSI within {near} dB of the sensitivity.").format(
            history=span, ratings=lines, poor=_("poor"), near=f"{RSSI_NEAR_LIMIT_DB:g}")
        + " " + (_("link margin = min(SNR - floor of the SF, RSSI - sensitivity).") + " " if wide else "")
        + late_legend + ("" if wide else " " + _("--wide: more columns.")))


MONITOR_EPILOG = N_("""\
Examples:
  denen monitor                   live view of the active config's nodes
  denen monitor --wide            also the last frame's RSSI/SNR, SF, margins,
                                  battery, frame counts and times (160 columns)
  denen monitor -c config.yaml --interval 5
  denen monitor --once --json     one snapshot, as JSON
  sudo -u denen denen monitor -j /var/lib/denen/journal.db
                                  the journal alone (rated at SF10/125 kHz)

Placing a sensor: press the node's test button a few times and watch "worst
link" (the margin from the lowest RSSI and SNR seen in the last 15 min) and
"frames 5m/15m", not only the last frame. Fix the node where the worst link
stays "good" or better: rain, snow and leaves take 5-10 dB off a path.

LATE: silent for rules.silence_factor x the node's interval_s (default 3 x),
the threshold of the node_silent alert. The alert does not count time the
agent was stopped, so after an outage a node can be LATE before its alert; a
node of a kind not in rules.silence_kinds shows LATE* (LATE, no alert). With
-j and no config, the rules' defaults apply.
""")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``denen monitor``; its examples and the legend of its LATE mark as the help's epilog."""
    # The epilog is laid out by hand (examples in columns): the raw formatter keeps its lines.
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.epilog = _(MONITOR_EPILOG)
    src = parser.add_mutually_exclusive_group()
    src.add_argument("-c", "--config", default=None,
                     help=_("config file (default: the config the agent runs: flashed, installed or /etc/denen)"))
    src.add_argument("-j", "--journal", default=None, help=_("journal file, when there is no config at hand"))
    parser.add_argument("--json", action="store_true",
                        help=_("print the data as JSON (one document per refresh; English, times in UTC/epoch)"))
    parser.add_argument("--once", action="store_true", help=_("print once and exit"))
    parser.add_argument("--interval", type=float, default=2.0, metavar="S",
                        help=_("seconds between refreshes (default 2, at least 0.5)"))
    parser.add_argument("--count", type=int, default=None, metavar="N", help=_("stop after N refreshes"))
    parser.add_argument("--wide", action="store_true",
                        help=_("more columns: the last frame's RSSI, SNR, SF and margins, battery, frame counts, "
                               "the gateway's time of the last frame (about 160 columns)"))


def _sources(args: argparse.Namespace) -> tuple[str, Any | None]:
    """The journal path and the config (None when only a journal was given)."""
    from agent.config import load_config  # noqa: PLC0415

    if args.journal is not None:
        return args.journal, None
    path, on_card = args.config, False
    if path is None:
        from agent.gateway.boot import resolve_active_config  # noqa: PLC0415

        active = resolve_active_config(None, install=False)
        path, on_card = active.path, active.on_card
    # A card's own copy shows every file as readable by all (FAT): its modes say nothing.
    config = load_config(path, check_modes=not on_card)
    return config.journal.path, config


def main(args: argparse.Namespace) -> int:
    """``denen monitor``: returns 0; raises AgentError (exit 1) when the journal cannot be read once."""
    if args.interval < 0.5:
        raise AgentError(_("--interval {seconds} is too short (hint: 0.5 s or more; the agent's journal "
                           "changes at most a few times a second)").format(seconds=f"{args.interval:g}"))
    if args.count is not None and args.count < 1:
        raise AgentError(_("--count must be at least 1"))
    journal, config = _sources(args)
    count = 1 if args.once else args.count
    history = History()
    if args.json:
        done = 0
        try:
            while True:
                print(json.dumps(collect(journal, config, history=history), ensure_ascii=False,
                                 indent=2 if args.once else None), flush=True)
                done += 1
                if count is not None and done >= count:
                    return 0
                time.sleep(args.interval)
        except KeyboardInterrupt:
            return 0
    from rich.console import Console  # noqa: PLC0415

    console = Console()
    wide = bool(getattr(args, "wide", False))
    if args.once:
        console.print(render(collect(journal, config, history=history), wide=wide))
        return 0
    return _live(console, journal, config, args.interval, count, wide=wide, history=history)


def _view(journal: str, config: Any | None, *, wide: bool = False, history: History | None = None) -> Any:
    from rich.text import Text  # noqa: PLC0415

    try:
        return render(collect(journal, config, history=history), wide=wide)
    except AgentError as exc:
        # On site the agent may not have written its journal yet: keep watching instead of quitting.
        return Text(_("waiting: {error}").format(error=exc), style="yellow")


def _live(console: Any, journal: str, config: Any | None, interval: float, count: int | None, *,
          wide: bool = False, history: History | None = None) -> int:
    from rich.live import Live  # noqa: PLC0415

    history = History() if history is None else history
    done = 0
    try:
        with Live(_view(journal, config, wide=wide, history=history), console=console, auto_refresh=False) as live:
            done = 1
            while count is None or done < count:
                time.sleep(interval)
                live.update(_view(journal, config, wide=wide, history=history), refresh=True)
                done += 1
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(run_standalone("denen monitor", _("live per-node link view"), add_arguments, main))
