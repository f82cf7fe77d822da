"""Forged frames at volume (issue 4, "Authenticated frames end to end"): every forgery is rejected and counted under
its own reason, genuine traffic around it arrives exactly once, and the replay window survives a SIGKILL.

The path is the real one: simulated RAK3172 on a pty -> ``denen run`` (its own process) -> Mosquitto -> a
persistent MQTT subscriber. The field has keyed nodes with the default policy (``unauthenticated: reject``), one
keyed node and one keyless node with ``unauthenticated: flag`` (frames without MIC accepted, marked
``"auth": "none"``), SOS, alarm and telemetry lanes.

Genuine traffic at a steady rate is interleaved, in a seeded random order, with forgeries of every kind:

============================  ==============================================================  ================
kind                          what the attacker sends                                         reason expected
============================  ==============================================================  ================
``random_mic``                a keyed node's frame with 4 random bytes as MIC                 ``bad_mic``
``wrong_key``                 a keyed node's frame, correctly built, signed with another key  ``bad_mic``
``replay``                    an earlier genuine frame of the node, byte for byte             ``replay``, or
                                                                                              ``duplicate`` for
                                                                                              the node's latest
``rolled_back_counter``       a new frame below the node's last counter, signed with the      ``replay``
                              right key (stolen key, reset device); unsigned for the keyless
                              node, either for the keyed ``flag`` node
``no_mic_reject_policy``      a frame without MIC for a node whose policy is reject           ``mic_missing``
``mic_for_keyless_node``      a frame with a MIC for the node that has no key                 ``no_key``
``unknown_node``              a frame from a node id that is not in the config                ``unknown_node``
============================  ==============================================================  ================

Forgeries that carry a new counter use the node's next one (to pre-empt the genuine frame) or one far ahead (to
lock the node out); either would show up as lost genuine frames if it were accepted. Every forgery carries
``battery_v`` = 9.99 V, a value no genuine frame has, so forged content is recognisable wherever it ends up.
Frames without MIC for the keyed ``flag`` node, and all of the keyless node's traffic, are **not** forgeries: they
must be accepted and arrive flagged ``"auth": "none"``.

The expected reason of each frame is fixed when it is made, from the frames made before it (the agent handles one
radio's frames in the order the module wrote them, and a recorder on the module's port checks that every frame
went out, in that order). Before each SIGKILL the traffic pauses until every frame is journaled or quarantined and
every reading is acknowledged by the broker, so no frame is in flight at the kill: the kill tests what the journal
keeps, not what a power cut may lose (``test_power_cut.py`` does that). After the restart, genuine frames recorded
before the kill are played again: all must be rejected, because the window was restored from the journal.

Assertions are exact: the agent's ``frames.<reason>`` counters equal the frames made of each reason (and no other
reason appears), ``frames.ok`` and each node's ``frames_ok``, ``frames_bad`` and ``last_fcnt`` equal the model's,
and the subscriber receives each accepted frame once by (node, fcnt) with its values and its ``auth``, and nothing
else.
"""

from __future__ import annotations

import random
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from agent.dev.devbroker import Mosquitto
from drivers.codec import frame as nodeframe
from drivers.codec import kinds
from tests.support.fault_rig import (AgentProcess, WireRecorder, denen_status_json, gateway_config, journal_status,
                                     last_fcnt, readings_collector, readings_in, sized, write_gateway)
from tests.support.field import default_values, node_key, start_sim, wait_configured
from tests.support.gateway_config import NodeEntry
from tests.support.polling import wait_until

pytestmark = [pytest.mark.faults, pytest.mark.broker]

FORGED = sized(420, 10_000)  # forged frames in the mixed traffic (not counting the replays after restarts)
GENUINE = sized(600, 12_000)  # genuine signed frames in the mixed traffic
UNSIGNED_FLAGGED = sized(120, 2_000)  # frames without MIC for the keyed node whose policy is flag
RESTARTS = sized(1, 3)
REPLAYS_AFTER_RESTART = sized(60, 500)  # genuine frames from before the kill, played again after each restart
WARMUP = 3  # genuine frames per node before the first forgery: something to replay and to roll back under
RATE_HZ = 250  # frames per second offered to the module
FORGED_BATTERY_V = 9.99  # every forgery carries it; no genuine frame does
FORGERIES: dict[str, tuple[str, ...]] = {  # kind -> the reasons it may be rejected with
    "random_mic": ("bad_mic",),
    "wrong_key": ("bad_mic",),
    "replay": ("replay", "duplicate"),
    "rolled_back_counter": ("replay",),
    "no_mic_reject_policy": ("mic_missing",),
    "mic_for_keyless_node": ("no_key",),
    "unknown_node": ("unknown_node",),
}
_UINT32_MAX = 0xFFFF_FFFF


@dataclass(frozen=True)
class Node:
    """A configured node: its identity, kind, key (None: keyless) and policy for frames without MIC."""

    node_id: int
    kind: str
    key: bytes | None
    policy: str  # "reject" or "flag", as spelled in the config (nodes[].unauthenticated)

    @property
    def hex(self) -> str:
        return f"{self.node_id:08x}"


@dataclass(frozen=True)
class Sent:
    """One frame handed to the module, with the outcome the agent must give it.

    Attributes:
        kind: ``genuine``, ``unsigned_flagged`` (accepted unauthenticated), a key of FORGERIES, or
            ``replay_after_restart``.
        node: node id as 8 hex digits.
        fcnt: the frame counter in the frame.
        payload: the frame bytes.
        reason: the quarantine reason expected, or None when the frame must be accepted.
        auth: for an accepted frame, the ``auth`` its reading must carry (``mic`` or ``none``).
        values: the values in the frame's body.
    """

    kind: str
    node: str
    fcnt: int
    payload: bytes
    reason: str | None
    auth: str | None
    values: dict[str, float]


def _nodes() -> list[Node]:
    keyed = [(0x0F000000, "sos"), (0x0F000001, "trap"), (0x0F000002, "water_level"), (0x0F000003, "rain")]
    nodes = [Node(nid, kind, node_key(nid), "reject") for nid, kind in keyed]
    nodes.append(Node(0x0F000004, "weather", node_key(0x0F000004), "flag"))  # keyed, accepts frames without MIC
    nodes.append(Node(0x0F000005, "tilt", None, "flag"))  # no key: every frame it sends is unauthenticated
    return nodes


def _config(*, port: str, mqtt_port: int, journal: Path, nodes: list[Node]) -> str:
    """The fault rig's gateway config: the flag-policy nodes (``<kind>-flag-<id>``), then the keyed reject-policy
    ones (the config's default policy, so no ``unauthenticated:`` line)."""
    flag = [NodeEntry(n.node_id, n.kind, f"{n.kind.replace('_', '-')}-flag-{n.node_id & 0xFFFF:x}", n.key, 600,
                      "flag") for n in nodes if n.policy != "reject"]
    return gateway_config(port=port, mqtt_port=mqtt_port, journal=journal,
                          nodes=[*flag, *(n for n in nodes if n.policy == "reject")])


class Traffic:
    """Makes frames and knows, for each, what the agent must do with it.

    The model of the replay windows is the decoder's (agent.gateway.readings.FrameDecoder): a node has a window for frames
    with a verified MIC and one for frames without; a signed frame is accepted only above the signed window, an
    unsigned one only above both, and each accepted frame moves only its own window. A frame at or below is a
    ``duplicate`` when its counter equals its own window's last, else a ``replay``. Authentication is checked
    first, so a frame that fails it is rejected for that whatever its counter.
    """

    def __init__(self, nodes: list[Node], rng: random.Random) -> None:
        self.nodes = nodes
        self.rng = rng
        self.by_hex = {n.hex: n for n in nodes}
        self.last: dict[str, int] = {n.hex: 0 for n in nodes}  # last accepted counter per node, either window
        self.last_signed: dict[str, int] = {n.hex: 0 for n in nodes}  # the signed window
        self.last_unsigned: dict[str, int] = {n.hex: 0 for n in nodes}  # the unsigned window
        self.history: dict[str, list[Sent]] = {n.hex: [] for n in nodes}  # accepted frames per node, in order
        self.i = 0  # frames made so far (varies the genuine values)
        configured = {n.node_id for n in nodes}
        self._strangers = [nid for nid in (rng.randrange(1, _UINT32_MAX) for _ in range(16)) if nid not in configured]

    # -- accepted traffic ---------------------------------------------------------------------------------------
    def genuine(self, node: Node | None = None) -> Sent:
        """The node's next frame, as its firmware sends it: signed when it has a key, without MIC when not."""
        node = node or self.rng.choice(self.nodes)
        return self._accepted("genuine", node, node.key)

    def unsigned_flagged(self) -> Sent:
        """The keyed flag-policy node's next frame, without MIC: accepted, marked unauthenticated."""
        node = next(n for n in self.nodes if n.policy == "flag" and n.key is not None)
        return self._accepted("unsigned_flagged", node, None)

    def _accepted(self, kind: str, node: Node, key: bytes | None) -> Sent:
        self.i += 1
        values = self._genuine_values(node.kind, self.i)
        fcnt = self.last[node.hex] + 1
        sent = Sent(kind, node.hex, fcnt, _build(node, fcnt, values, key), None, "mic" if key else "none", values)
        self.last[node.hex] = fcnt
        (self.last_signed if key else self.last_unsigned)[node.hex] = fcnt
        self.history[node.hex].append(sent)
        return sent

    @staticmethod
    def _genuine_values(kind: str, i: int) -> dict[str, float]:
        values = dict(default_values(kind, i % 1000))
        values["battery_v"] = round(3.0 + (i % 100) / 100, 2)  # 3.00-3.99 V: never the forged 9.99 V
        return values

    # -- forgeries ----------------------------------------------------------------------------------------------
    def forged(self, kind: str) -> Sent:
        return getattr(self, f"_{kind}")()

    def replay_of(self, earlier: Sent, kind: str = "replay") -> Sent:
        """``earlier`` byte for byte: a duplicate when it is the latest accepted frame of its window, else a
        replay."""
        window = self.last_signed if earlier.auth == "mic" else self.last_unsigned
        reason = "duplicate" if earlier.fcnt == window[earlier.node] else "replay"
        return Sent(kind, earlier.node, earlier.fcnt, earlier.payload, reason, None, earlier.values)

    def _random_mic(self) -> Sent:
        node = self._pick(lambda n: n.key is not None)
        fcnt, values = self._ahead(node), self._forged_values(node.kind)
        signed = _build(node, fcnt, values, node.key)
        mic = signed[-nodeframe.MIC_SIZE:]
        while (fake := self.rng.randbytes(nodeframe.MIC_SIZE)) == mic:
            pass
        return Sent("random_mic", node.hex, fcnt, signed[:-nodeframe.MIC_SIZE] + fake, "bad_mic", None, values)

    def _wrong_key(self) -> Sent:
        node = self._pick(lambda n: n.key is not None)
        while (key := self.rng.randbytes(nodeframe.KEY_SIZE)) == node.key:
            pass
        fcnt, values = self._ahead(node), self._forged_values(node.kind)
        return Sent("wrong_key", node.hex, fcnt, _build(node, fcnt, values, key), "bad_mic", None, values)

    def _replay(self) -> Sent:
        node = self._pick(lambda n: bool(self.history[n.hex]))
        return self.replay_of(self.rng.choice(self.history[node.hex]))

    def _rolled_back_counter(self) -> Sent:
        node = self._pick(lambda n: self.last[n.hex] >= 2)
        values = self._forged_values(node.kind)
        # What a device reset to an old counter sends: signed with its (stolen) key; a node whose policy accepts
        # frames without MIC can be attacked without the key, so those go either way.
        key = node.key if node.policy == "reject" or (node.key is not None and self.rng.random() < 0.5) else None
        if key is not None and self.last_signed[node.hex] < 2:
            key = None  # a flag node whose accepted frames were unsigned: roll back without the key
        if key is not None:
            fcnt, reason = self.rng.randint(1, self.last_signed[node.hex] - 1), "replay"
        else:  # checked against both windows; a duplicate when it hits the unsigned window's last counter
            fcnt = self.rng.randint(1, self.last[node.hex] - 1)
            reason = "duplicate" if fcnt == self.last_unsigned[node.hex] else "replay"
        return Sent("rolled_back_counter", node.hex, fcnt, _build(node, fcnt, values, key), reason, None, values)

    def _no_mic_reject_policy(self) -> Sent:
        node = self._pick(lambda n: n.policy == "reject")
        fcnt, values = self._ahead(node), self._forged_values(node.kind)
        return Sent("no_mic_reject_policy", node.hex, fcnt, _build(node, fcnt, values, None), "mic_missing", None,
                    values)

    def _mic_for_keyless_node(self) -> Sent:
        node = self._pick(lambda n: n.key is None)
        fcnt, values = self._ahead(node), self._forged_values(node.kind)
        key = self.rng.randbytes(nodeframe.KEY_SIZE)
        return Sent("mic_for_keyless_node", node.hex, fcnt, _build(node, fcnt, values, key), "no_key", None, values)

    def _unknown_node(self) -> Sent:
        nid = self.rng.choice(self._strangers)
        kind = self.rng.choice(["sos", "trap", "water_level"])
        stranger = Node(nid, kind, node_key(nid), "reject")
        fcnt, values = self.rng.randint(1, 1_000_000), self._forged_values(kind)
        key = stranger.key if self.rng.random() < 0.5 else None
        return Sent("unknown_node", stranger.hex, fcnt, _build(stranger, fcnt, values, key), "unknown_node", None,
                    values)

    def _pick(self, fits: Callable[[Node], bool]) -> Node:
        return self.rng.choice([n for n in self.nodes if fits(n)])

    def _ahead(self, node: Node) -> int:
        """A counter a forger would use: the node's next one (pre-empting its genuine frame) or far ahead."""
        last = self.last[node.hex]
        return last + 1 if self.rng.random() < 0.5 else min(_UINT32_MAX, last + self.rng.randint(2, 1 << 30))

    def _forged_values(self, kind: str) -> dict[str, float]:
        values = dict(default_values(kind, self.rng.randrange(1000)))
        values["battery_v"] = FORGED_BATTERY_V
        return values


def _build(node: Node, fcnt: int, values: dict[str, float], key: bytes | None) -> bytes:
    body = kinds.encode_values(node.kind, values)
    return nodeframe.build(node.node_id, fcnt, kinds.KIND_CODES[node.kind], body, key=key)


def _handled(journal: Path) -> int:
    """Frames the agent has journaled or quarantined (``frames.ok`` plus every ``frames.<reason>``)."""
    c = journal_status(journal)["counters"]
    return sum(v for k, v in c.items() if k.startswith("frames."))


def test_forged_replayed_and_rolled_back_frames_are_rejected_and_counted_and_the_window_survives_sigkill(
        tmp_path: Path, broker: Mosquitto, rng: random.Random, figures: dict[str, Any]) -> None:
    nodes = _nodes()
    traffic = Traffic(nodes, random.Random(rng.random()))
    sim = start_sim(tmp_path, rng_seed=rng.random())
    wire = WireRecorder(sim)
    journal = tmp_path / "journal.db"
    cfg = write_gateway(tmp_path, sim=sim, broker=broker, journal=journal, config=_config, nodes=nodes)
    col = readings_collector(broker, "forgery-collector")
    agent = AgentProcess(cfg, tmp_path / "agent.log")
    sent: list[Sent] = []

    # The mixed traffic, in a random order, cut into one segment per agent run.
    per_kind = {k: FORGED // len(FORGERIES) + (1 if i < FORGED % len(FORGERIES) else 0)
                for i, k in enumerate(FORGERIES)}
    schedule = ["genuine"] * GENUINE + ["unsigned_flagged"] * UNSIGNED_FLAGGED + \
        [k for k, n in per_kind.items() for _ in range(n)]
    rng.shuffle(schedule)
    cut = len(schedule) // (RESTARTS + 1)
    segments = [schedule[r * cut:(r + 1) * cut if r < RESTARTS else None] for r in range(RESTARTS + 1)]

    next_at = time.monotonic()

    def inject(frame: Sent) -> None:
        """One frame at the steady rate; the radio must be listening (the agent configured it)."""
        nonlocal next_at
        assert sim.inject_uplink(frame.payload), "the module was not listening"
        sent.append(frame)
        next_at += 1.0 / RATE_HZ
        delay = next_at - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        elif delay < -1.0:
            next_at = time.monotonic()  # fell behind (machine busy): do not burst to catch up

    def settle() -> None:
        """Traffic paused: wait until every frame is handled and every reading acknowledged by the broker."""
        assert wait_until(lambda: _handled(journal) >= len(sent), 60), \
            (journal_status(journal)["counters"], len(sent), agent.diagnose())
        assert wait_until(lambda: journal_status(journal)["journal"]["unsent"] == 0, 60), \
            journal_status(journal)["journal"]
        assert agent.alive, agent.diagnose()

    replayed_after_restart: Counter[str] = Counter()
    started = time.monotonic()
    try:
        agent.start()
        assert wait_configured(sim, 0, 20), agent.run_log()
        next_at = time.monotonic()
        for _ in range(WARMUP):
            for n in nodes:
                inject(traffic.genuine(n))
        for r, segment in enumerate(segments):
            if r:
                settle()
                window = last_fcnt(journal)
                assert window == traffic.last, ("the journal's replay window is not the model's", window,
                                                traffic.last)
                before_kill = {n: list(h) for n, h in traffic.history.items()}
                agent.kill9()
                since = len(sim.commands)
                agent.start()
                assert wait_configured(sim, since, 20), agent.run_log()[-3000:]
                next_at = time.monotonic()
                # Genuine frames from before the kill, byte for byte: the restored window must refuse them all,
                # the latest of each node included (a duplicate).
                for n in nodes:
                    frame = traffic.replay_of(before_kill[n.hex][-1], "replay_after_restart")
                    inject(frame)
                    replayed_after_restart[str(frame.reason)] += 1
                earlier = [s for h in before_kill.values() for s in h]
                for _ in range(REPLAYS_AFTER_RESTART - len(nodes)):
                    frame = traffic.replay_of(traffic.rng.choice(earlier), "replay_after_restart")
                    inject(frame)
                    replayed_after_restart[str(frame.reason)] += 1
            for kind in segment:
                if kind == "genuine":
                    inject(traffic.genuine())
                elif kind == "unsigned_flagged":
                    inject(traffic.unsigned_flagged())
                else:
                    inject(traffic.forged(kind))
        settle()
        assert wait_until(lambda: len(wire) >= len(sent), 5)
        accepted = [s for s in sent if s.reason is None]
        expected_keys = {(s.node, s.fcnt) for s in accepted}
        assert col.wait_for(lambda m: expected_keys <= {(r["node"], r["fcnt"]) for _, r in readings_in(m)}, 30), \
            "not every accepted frame reached the subscriber"
        time.sleep(0.5)  # a duplicate or a forged reading, if any, would arrive now
        assert agent.alive, agent.diagnose()
        status = denen_status_json(cfg)
    finally:
        agent.stop()
        col.close()
        sim.stop()
    seconds = round(time.monotonic() - started, 1)

    # Every frame made went out on the wire, in order: the expected reasons were fixed in the order the agent
    # handled the frames.
    assert wire.payloads_snapshot() == [s.payload for s in sent], "the module did not write every frame, in order"
    assert "Traceback" not in agent.full_log(), agent.full_log()[-3000:]

    # The subscriber: each accepted frame exactly once, with its values and auth; nothing else from the nodes.
    names = {n.hex for n in nodes}
    readings = [r for _, r in readings_in(col.messages) if r["kind"] != "alert" and r["node"] != "gateway"]
    strangers = [r for r in readings if r["node"] not in names]
    assert not strangers, f"readings from unknown nodes were published: {strangers[:3]}"
    arrived = Counter((r["node"], r["fcnt"]) for r in readings)
    twice = sorted(k for k, c in arrived.items() if c > 1)
    assert not twice, f"{len(twice)} readings arrived more than once, e.g. {twice[:5]}"
    missing = sorted(expected_keys - set(arrived))
    assert not missing, f"{len(missing)} accepted frames never arrived, e.g. {missing[:10]}"
    invented = sorted(set(arrived) - expected_keys)
    assert not invented, f"{len(invented)} readings no accepted frame carried, e.g. {invented[:10]}"
    by_key = {(s.node, s.fcnt): s for s in accepted}
    for r in readings:
        s = by_key[(r["node"], r["fcnt"])]
        assert r["auth"] == s.auth, (r, s.kind)
        assert r["values"] == pytest.approx(s.values, abs=0.006), (r["values"], s.values)
    assert not [r for r in readings if r["values"].get("battery_v") == pytest.approx(FORGED_BATTERY_V)], \
        "forged content was published"
    forged_only = {(s.node, s.fcnt) for s in sent if s.reason is not None} - expected_keys
    assert not forged_only & set(arrived)

    # The agent's counters: exactly the frames of each reason, and no other reason.
    expected_reasons = Counter(s.reason for s in sent if s.reason is not None)
    assert status["bad_frames"] == dict(expected_reasons), (status["bad_frames"], dict(expected_reasons))
    assert status["counters"].get("frames.ok") == len(accepted)
    for s in sent:
        if s.reason is not None and s.kind in FORGERIES:
            assert s.reason in FORGERIES[s.kind], s
    # Per node: frames accepted and refused (from authentication on) and the window, as the journal keeps them.
    journal_nodes = {n["node"]: n for n in status["nodes"]}
    assert set(journal_nodes) == names, "the journal holds state for nodes that are not configured"
    for n in nodes:
        ok = sum(1 for s in accepted if s.node == n.hex)
        bad = sum(1 for s in sent if s.node == n.hex and s.reason is not None)
        got = journal_nodes[n.hex]
        assert (got["frames_ok"], got["frames_bad"], got["last_fcnt"]) == (ok, bad, traffic.last[n.hex]), \
            (n.hex, got)

    forged = [s for s in sent if s.kind in FORGERIES]
    figures.update(
        genuine=sum(1 for s in accepted if s.auth == "mic"),
        accepted_unauthenticated=sum(1 for s in accepted if s.auth == "none"),
        accepted_unauthenticated_keyed_flag_node=sum(1 for s in accepted if s.kind == "unsigned_flagged"),
        forged=len(forged),
        forged_by_kind=dict(Counter(s.kind for s in forged)),
        rejected_by_reason=dict(sorted(expected_reasons.items())),
        restarts=RESTARTS,
        replayed_after_restart_rejected=sum(replayed_after_restart.values()),
        replayed_after_restart_by_reason=dict(replayed_after_restart),
        frames_on_wire=len(sent),
        rate_hz=RATE_HZ,
        seconds=seconds,
    )
