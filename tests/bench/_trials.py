"""The measurements. Each trial runs in its own Python process (see ``run.py``) and returns a JSON-able dict.

A fresh process per trial keeps trials from disturbing each other: the gateway sets the interpreter's GIL switch
interval, and threads or memory left over from one trial would otherwise colour the next one.

Times are ``time.perf_counter()`` seconds unless a name says otherwise.
"""

from __future__ import annotations

import json
import logging
import os
import random
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

from tests.bench import _common as c
from tests.support.process import end

log = logging.getLogger(__name__)

REPO = Path(__file__).resolve().parents[2]


# -- anchors ----------------------------------------------------------------------------------------------

class _SubscribedMosquitto:
    """A Mosquitto with one subscriber to everything (a stand-in for the bridge).

    The agent keeps readings that the broker acknowledges with "no matching subscribers" (0x10) and offers them
    again, because nobody received them; a benchmark broker therefore needs a subscriber, as a real one has the
    bridge. The subscriber is the C client ``mosquitto_sub``, so it costs the Python processes nothing, and (a) and
    (b) both carry it.
    """

    def __init__(self, workdir: Path, *, record: Path | None = None) -> None:
        from agent.dev.devbroker import Mosquitto

        self._broker = Mosquitto(workdir)
        self._sub: subprocess.Popen[bytes] | None = None
        self._record = record  # where the subscriber writes every payload, one per line; None: nowhere

    def __getattr__(self, name: str) -> Any:
        return getattr(self._broker, name)

    def start(self) -> None:
        self._broker.start()
        self._sub = subprocess.Popen(
            ["mosquitto_sub", "-h", self._broker.host, "-p", str(self._broker.port), "-t", "denen/#", "-t", "bench/#",
             "-q", "1", "-i", f"bench-sink-{self._broker.port}"],
            stdout=self._record.open("wb") if self._record else subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(0.2)  # let it subscribe before anything is published

    def stop(self) -> None:
        if self._sub is not None:
            self._sub.terminate()
            self._sub.wait(5)
            if self._sub.stdout:
                self._sub.stdout.close()
            self._sub = None
        self._broker.stop()

    def received(self, lane: str) -> tuple[int, int]:
        """(distinct readings, duplicate copies) of ``lane`` that the subscriber recorded, by (node, fcnt)."""
        seen: set[tuple[str, int]] = set()
        copies = 0
        assert self._record is not None
        for line in self._record.read_bytes().splitlines():
            try:
                doc = json.loads(line)
            except ValueError:
                continue
            if not isinstance(doc, dict) or doc.get("lane") != lane:
                continue
            for r in doc.get("readings", ()):
                copies += 1
                seen.add((r["node"], r["fcnt"]))
        return len(seen), copies - len(seen)

def disk(p: dict[str, Any]) -> dict[str, Any]:
    """Raw fsync latency and SQLite WAL (synchronous=FULL) commit rates, on the folder the journals use."""
    work = Path(p["workdir"])
    work.mkdir(parents=True, exist_ok=True)
    out: dict[str, Any] = {}

    # fsync of a 4 KiB overwrite: what every durable commit pays at least once.
    path = work / "fsync.bin"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        block = os.urandom(4096)
        os.pwrite(fd, block * 64, 0)
        os.fsync(fd)
        lat = []
        for i in range(p["fsyncs"]):
            t = time.perf_counter()
            os.pwrite(fd, block, (i % 64) * 4096)
            os.fsync(fd)
            lat.append(time.perf_counter() - t)
    finally:
        os.close(fd)
    out["fsync_ms_p50"] = c.percentile(lat, 50) * 1e3
    out["fsync_ms_p99"] = c.percentile(lat, 99) * 1e3
    out["fsync_per_s"] = len(lat) / sum(lat)

    body = "x" * 266  # the size of a telemetry reading's JSON body

    def open_db(name: str) -> sqlite3.Connection:
        db_path = work / name
        for suffix in ("", "-wal", "-shm"):
            try:
                os.unlink(f"{db_path}{suffix}")
            except FileNotFoundError:
                pass
        db = sqlite3.connect(db_path, isolation_level=None)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=FULL")
        db.execute("CREATE TABLE reading (seq INTEGER PRIMARY KEY, lane INTEGER, node TEXT, fcnt INTEGER,"
                   " ts_us INTEGER, body TEXT)")
        return db

    db = open_db("per_row.db")
    t = time.perf_counter()
    for i in range(p["row_commits"]):
        db.execute("BEGIN IMMEDIATE")
        db.execute("INSERT INTO reading VALUES (?,?,?,?,?,?)", (i + 1, 2, "00b00000", i, i, body))
        db.execute("COMMIT")
    out["sqlite_row_commits_per_s"] = p["row_commits"] / (time.perf_counter() - t)
    db.close()

    db = open_db("grouped.db")
    t = time.perf_counter()
    seq = 0
    for _ in range(p["group_commits"]):
        db.execute("BEGIN IMMEDIATE")
        db.executemany("INSERT INTO reading VALUES (?,?,?,?,?,?)",
                       [(seq + j + 1, 2, "00b00000", seq + j, seq + j, body) for j in range(1000)])
        db.execute("COMMIT")
        seq += 1000
    out["sqlite_grouped_rows_per_s"] = seq / (time.perf_counter() - t)
    db.close()
    return out


def decode(p: dict[str, Any]) -> dict[str, Any]:
    """CPU anchor: the agent's decode path alone (parse, AES-CMAC check, replay window, LPP, JSON), one thread."""
    nodes = c.telemetry_nodes(p["nodes"])
    cfg = c.parse(c.config_text(port="/dev/null", mqtt_port=1883, journal=Path(p["workdir"]) / "unused.db",
                                nodes=nodes))
    frames = c.telemetry_frames(nodes, p["n"])
    t = time.perf_counter()
    entries, _ = c.decoded_entries(cfg, frames)
    dt = time.perf_counter() - t
    return {"decode_per_s": len(entries) / dt, "body_bytes": sum(len(e.body) for e in entries) / len(entries)}


# -- (a) naive paho ---------------------------------------------------------------------------------------
def naive(p: dict[str, Any]) -> dict[str, Any]:
    """One paho client, one reading per QoS 1 message, at most ``window`` unacknowledged, no journal.

    The payloads are the agent's own reading bodies, built before the clock starts, so this is the MQTT cost
    alone: a generous baseline.
    """
    import paho.mqtt.client as mqtt
    from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion

    work = Path(p["workdir"])
    n, window = p["n"], p["window"]
    payloads = c.reading_payloads(p["nodes"], n)

    broker = _SubscribedMosquitto(work / "broker")
    broker.start()
    try:
        proto = MQTTProtocolVersion.MQTTv5 if p["protocol"] == "v5" else MQTTProtocolVersion.MQTTv311
        client = mqtt.Client(callback_api_version=CallbackAPIVersion.VERSION2, client_id="bench-naive",
                             protocol=proto)
        # Our semaphore is the window; paho must send at once rather than hold messages in its own queue.
        client.max_inflight_messages_set(0)
        client.max_queued_messages_set(0)
        slots = threading.Semaphore(window)
        connected = threading.Event()
        done = threading.Event()
        state = {"acked": 0, "failed": 0, "t_end": 0.0}

        def on_connect(cl: Any, ud: Any, flags: Any, rc: Any, props: Any) -> None:
            connected.set()

        def on_publish(cl: Any, ud: Any, mid: int, rc: Any, props: Any) -> None:
            state["acked"] += 1
            if rc.is_failure:
                state["failed"] += 1
            slots.release()
            if state["acked"] == n:
                state["t_end"] = time.perf_counter()
                done.set()

        client.on_connect = on_connect
        client.on_publish = on_publish
        client.connect(broker.host, broker.port, keepalive=30)
        if p["nodelay"]:
            client.socket().setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        client.loop_start()
        if not connected.wait(10):
            raise RuntimeError("naive client did not connect")
        topic = f"denen/v1/{c.GATEWAY_ID}/readings/telemetry"
        t0 = time.perf_counter()
        for payload in payloads:
            slots.acquire()
            info = client.publish(topic, payload, qos=1)
            if info.rc != mqtt.MQTT_ERR_SUCCESS:
                raise RuntimeError(f"publish failed: {info.rc}")
        if not done.wait(p["timeout_s"]):
            raise RuntimeError(f"only {state['acked']} of {n} PUBACKs within {p['timeout_s']} s")
        dt = state["t_end"] - t0
        client.disconnect()
        client.loop_stop()
    finally:
        broker.stop()
    if state["failed"]:
        raise RuntimeError(f"{state['failed']} PUBACKs carried a failure code")
    return {"n": n, "seconds": dt, "per_s": n / dt, "protocol": p["protocol"], "window": window,
            "payload_bytes": sum(map(len, payloads)) / n}


# -- the agent in-process ---------------------------------------------------------------------------------
class Probe:
    """Counts and times what the core thread does, by wrapping a few methods of one Gateway instance.

    The wrappers run on the core thread (where the wrapped methods run) and only add to counters, so they cost
    a few microseconds per commit or message, not per reading.

    Args:
        gw: the gateway, not started yet.
        watch_upto: readings with ``seq`` up to this were pre-filled; :attr:`drained` is set when all of them
            have been deleted (acknowledged). 0 disables it.
        target_deleted: :attr:`all_deleted` is set once this many readings were deleted after their PUBACK.
    """

    def __init__(self, gw: Any, *, watch_upto: int = 0, target_deleted: int = 0) -> None:
        from agent.gateway.reading import SOS

        self.gw = gw
        self.commits = 0
        self.commit_s = 0.0
        self.inserted = 0
        self.deleted = 0
        self.messages = 0
        self.sent_readings = 0
        self.t_first_send: float | None = None
        self.t_journaled: float | None = None  # when `target_deleted` readings had been inserted
        self.t_all_deleted: float | None = None
        self.all_deleted = threading.Event()
        self.acked = 0  # readings the broker acknowledged (PUBACK success)
        self.t_all_acked: float | None = None  # when `target_deleted` readings had been acknowledged
        self.target_deleted = target_deleted
        self.watch_upto = watch_upto
        self.prefill_deleted = 0
        self.t_drained: float | None = None
        self.drained = threading.Event()
        # SOS tracing: (node, fcnt) -> times of each stage.
        self.sos_seq: dict[int, tuple[str, int]] = {}
        self.sos: dict[tuple[str, int], dict[str, float]] = {}

        # The probe wraps the publish/ack path (agent.gateway.outbox); a rename must fail the trial here, loudly,
        # rather than later as a time-out.
        outbox = gw.outbox
        for name in ("send_bodies", "on_ack", "inflight", "session"):
            if not hasattr(outbox, name):
                raise RuntimeError(f"Outbox has no {name}: the bench probe needs updating to the new core")
        journal_commit = gw.journal.commit
        send_bodies = outbox.send_bodies
        on_ack = outbox.on_ack

        def commit(*args: Any, **kw: Any) -> list[int]:
            t = time.perf_counter()
            seqs = journal_commit(*args, **kw)
            t_end = time.perf_counter()
            self.commits += 1
            self.commit_s += t_end - t
            entries = kw.get("entries") or ()
            self.inserted += len(entries)
            if self.target_deleted and self.t_journaled is None and self.inserted >= self.target_deleted:
                self.t_journaled = t_end
            for e, s in zip(entries, seqs, strict=True):
                if e.lane == SOS:
                    key = (e.node, e.fcnt)
                    self.sos_seq[s] = key
                    self.sos.setdefault(key, {}).update(commit_start=t, committed=t_end)
            acked = kw.get("acked") or ()
            if acked:
                self.deleted += len(acked)
                if self.watch_upto:
                    self.prefill_deleted += sum(1 for s in acked if s <= self.watch_upto)
                    if self.t_drained is None and self.prefill_deleted >= self.watch_upto:
                        self.t_drained = t_end
                        self.drained.set()
                if self.target_deleted and self.t_all_deleted is None and self.deleted >= self.target_deleted:
                    self.t_all_deleted = t_end
                    self.all_deleted.set()
            return seqs

        def send_bodies_(lane: int, bodies: list[str]) -> tuple[int, int] | None:
            sent = send_bodies(lane, bodies)
            t = time.perf_counter()
            if sent is not None:
                self.messages += 1
                self.sent_readings += len(bodies)
                if self.t_first_send is None and lane != SOS:
                    self.t_first_send = t
                if lane == SOS:
                    for body in bodies:  # an SOS message is small and rare: parsed for its identity
                        reading = json.loads(body)
                        stages = self.sos.get((reading["node"], reading["fcnt"]))
                        if stages is not None:
                            stages["sent"] = t
            return sent

        # When each PUBACK reached the gateway (the link's thread): a telemetry PUBACK may wait in CoreTurn.acks
        # for the core's next wake-up (up to ACK_FOLD_S), and the broker had the readings when it was sent.
        arrived: dict[tuple[int, int], float] = {}
        link_post = getattr(gw.link, "_post", None)
        if link_post is not None:
            def post_(event: Any) -> None:
                if type(event).__name__ == "Ack":
                    arrived[(event.session, event.mid)] = time.perf_counter()
                link_post(event)
            gw.link._post = post_

        def on_ack_(ack: Any) -> None:
            flight = outbox.inflight.get(ack.mid) if ack.session == outbox.session else None
            on_ack(ack)
            t_arrived = arrived.pop((ack.session, ack.mid), None)
            if flight is not None and ack.ok:
                self.acked += len(flight.seqs)
                if self.target_deleted and self.t_all_acked is None and self.acked >= self.target_deleted:
                    self.t_all_acked = t_arrived if t_arrived is not None else time.perf_counter()
            if flight is not None and ack.ok and flight.lane == SOS:
                t = time.perf_counter()
                for seq in flight.seqs:
                    key = self.sos_seq.get(seq)
                    if key is not None:
                        self.sos[key]["acked"] = t
                        # When the broker's PUBACK reached the gateway (it has the SOS), before the core took it.
                        self.sos[key]["puback"] = t_arrived if t_arrived is not None else t

        gw.journal.commit = commit
        outbox.send_bodies = send_bodies_
        outbox.on_ack = on_ack_


def _start_field(work: Path, nodes: list[Any], *, batch: int | None, window: int | None,
                 broker_running: bool = True, record: bool = False) -> tuple[Any, Any, Any, Path]:
    """A Mosquitto, a simulated RAK3172 on a pty and the config for a gateway listening to it; with ``record``,
    the broker's subscriber keeps every payload (:meth:`_SubscribedMosquitto.received`)."""
    from drivers.sim.rak3172 import SimRak3172

    broker = _SubscribedMosquitto(work / "broker", record=work / "received.jsonl" if record else None)
    if broker_running:
        broker.start()
    sim = SimRak3172(name=c.RADIO, link=str(work / "lora0"), boot_delay_s=0.02, rng=random.Random(7))
    sim.start()
    journal = work / "journal.db"
    cfg = c.parse(c.config_text(port=sim.path, mqtt_port=broker.port, journal=journal, nodes=nodes,
                                batch=batch, window=window))
    return broker, sim, cfg, journal


def _unsent(journal: Path) -> int:
    db = sqlite3.connect(f"file:{journal}?mode=ro", uri=True)
    try:
        return db.execute("SELECT COUNT(*) FROM reading").fetchone()[0]
    finally:
        db.close()


def _py_spy(pid: int, out: str, duration_s: float) -> subprocess.Popen[bytes] | None:
    exe = Path(sys.executable).with_name("py-spy")
    if not exe.exists():
        log.warning("py-spy is not installed in the venv (pip install py-spy); no profile taken")
        return None
    spy = subprocess.Popen([str(exe), "record", "--pid", str(pid), "--rate", "500", "--duration",
                            str(max(1, int(duration_s + 1))), "--format", "raw", "--threads", "--nonblocking",
                            "-o", out], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(0.5)  # py-spy attaches before the clock starts
    return spy


def agent(p: dict[str, Any]) -> dict[str, Any]:
    """(b) pty line -> RadioWorker -> decode -> durable journal -> MQTT -> PUBACK, N readings, verified at the
    subscriber; the time until they were also deleted beside it.

    The rate is taken at the last PUBACK, when the broker has every reading: the journal deletes acknowledged
    readings with its next commit, and when only deletions wait that commit comes up to ``ACK_FOLD_S`` (1 s)
    later, a fixed delay at the end of a run rather than a cost per reading (it folds into the next commit of
    readings under steady traffic)."""
    from agent.gateway.core import Gateway
    from tests.support.field import wait_configured

    work = Path(p["workdir"])
    n = p["n"]
    nodes = c.telemetry_nodes(p["nodes"])
    lines = c.telemetry_lines(nodes, n)  # built before the clock starts
    broker, sim, cfg, journal = _start_field(work, nodes, batch=p.get("batch"), window=p.get("window"), record=True)
    gw = Gateway(cfg)
    probe = Probe(gw, target_deleted=n)
    try:
        gw.start()
        if not wait_configured(sim, timeout=20) or not c.wait_until(lambda: gw.link.connected, 20, 0.005):
            raise RuntimeError("gateway did not come up (radio configured and MQTT connected)")
        # Let the start-up commits and the retained status message settle before the clock starts.
        time.sleep(0.3)
        base_commits, base_messages, base_commit_s = probe.commits, probe.messages, probe.commit_s
        spy = _py_spy(os.getpid(), p["profile"], p["profile_s"]) if p.get("profile") else None
        chunk = p["chunk"]
        t0 = time.perf_counter()
        for off in range(0, len(lines), chunk):
            sim.port.write(lines[off:off + chunk])
        t_written = time.perf_counter()
        if not probe.all_deleted.wait(p["timeout_s"]):
            raise RuntimeError(f"only {probe.deleted} of {n} readings acknowledged within {p['timeout_s']} s "
                               f"(journaled {probe.inserted}, counters {dict(gw.stats.counters)})")
        assert probe.t_all_deleted is not None and probe.t_all_acked is not None
        dt = probe.t_all_acked - t0
        counters = dict(gw.stats.counters)
        commits = probe.commits - base_commits
        messages = probe.messages - base_messages
        commit_s = probe.commit_s - base_commit_s
        if spy is not None:
            # Stop sampling now that the run is over: an idle core afterwards would dilute the profile.
            spy.send_signal(signal.SIGINT)
            spy.wait(30)
    finally:
        gw.stop()
        sim.stop()
        broker.stop()
    unsent = _unsent(journal)
    bad = {k: v for k, v in counters.items() if k.startswith("frames.") and k != "frames.ok"}
    received, duplicates = broker.received("telemetry")
    if counters.get("frames.ok") != n or counters.get("readings.acked") != n or unsent or bad or received != n:
        raise RuntimeError(f"wrong outcome: counters {counters}, unsent {unsent}, subscriber received {received}")
    return {
        "n": n, "seconds": dt, "per_s": n / dt, "deleted_s": probe.t_all_deleted - t0,
        "received": received, "duplicates": duplicates, "batch": cfg.mqtt.batch_max_readings,
        "window": cfg.mqtt.inflight_window, "nodes": len(nodes),
        "commits": commits, "commits_per_reading": commits / n, "commit_s": commit_s,
        "commit_share": commit_s / dt, "messages": messages, "readings_per_message": n / max(1, messages),
        "write_s": t_written - t0, "journaled_s": (probe.t_journaled or t0) - t0,
        "line_bytes": len(lines) / n,
    }


def sos(p: dict[str, Any]) -> dict[str, Any]:
    """(c) SOS latency, pty line -> PUBACK processed by the core, while a pre-filled backlog drains; and idle.

    Each round pre-fills a fresh journal with ``backlog`` telemetry readings (decoded by the real decoder, so
    the bodies are the agent's own), starts the gateway with the broker down, waits for the radio, then starts
    the broker: the drain begins, and one SOS line is written to the pty every ``interval_s``. Rounds repeat
    until ``min_samples`` SOS were written while the backlog was draining. The first round goes on pinging
    after the drain for the idle figure.
    """
    from agent.gateway.core import Gateway
    from agent.gateway.journal import Journal
    from tests.support.field import default_values, wait_configured

    base = Path(p["workdir"])
    backlog = p["backlog"]
    tele = c.telemetry_nodes(p["nodes"])
    buttons = c.sos_nodes(4)
    # The prefill is the same in every round (each round has a fresh journal), so decode it once.
    prefill_cfg = c.parse(c.config_text(port="/dev/null", mqtt_port=1883, journal=base / "unused.db",
                                        nodes=tele + buttons))
    entries, decoder = c.decoded_entries(prefill_cfg, c.telemetry_frames(tele, backlog))
    node_states = list(decoder.nodes.values())
    # SOS lines for every sample of every round, built up front (counters keep increasing across rounds, which
    # is harmless: each round's journal starts without any node state for the buttons).
    # Enough for the samples wanted even if half the SOS went missing, plus the idle ones; more rounds than
    # this budget covers would not be worth their time anyway.
    max_pings = 4 * p["min_samples"] + p["idle_samples"] + 50 * p["max_rounds"]
    sos_lines: list[tuple[tuple[str, int], bytes]] = []
    for i in range(max_pings):
        b = buttons[i % len(buttons)]
        frame = b.frame(default_values("sos", i), receipt=True)
        b.sent.clear()
        sos_lines.append(((b.hex, b.counter), c.rx_line(frame, rssi=-118, snr=-7)))

    under: list[dict[str, float]] = []
    idle: list[dict[str, float]] = []
    rounds: list[dict[str, Any]] = []
    lost = 0
    stuck = 0  # journaled but never published in the session (still in the journal when the round ended)
    next_line = 0
    rng = random.Random(11)
    for rnd in range(p["max_rounds"]):
        work = base / f"round{rnd}"
        work.mkdir(parents=True, exist_ok=True)
        broker, sim, cfg, journal = _start_field(work, tele + buttons, batch=p.get("batch"),
                                                 window=p.get("window"), broker_running=False)
        j = Journal(journal, quota_bytes=int(cfg.journal.quota_mb * 1048576))
        for off in range(0, backlog, 5000):
            j.commit(entries=entries[off:off + 5000], nodes=node_states if off == 0 else ())
        j.close()
        gw = Gateway(cfg)
        probe = Probe(gw, watch_upto=backlog)
        stop_pinging = threading.Event()
        writes: dict[tuple[str, int], float] = {}
        want_idle = p["idle_samples"] if rnd == 0 else 0

        def pinger() -> None:
            nonlocal next_line
            # A random phase, so that over several rounds the pings sample every part of the drain.
            t_next = time.perf_counter() + rng.uniform(0, p["interval_s"])
            time.sleep(max(0.0, t_next - time.perf_counter()))
            idle_from: float | None = None
            while not stop_pinging.is_set() and next_line < len(sos_lines):
                key, line = sos_lines[next_line]
                next_line += 1
                writes[key] = time.perf_counter()
                sim.port.write(line)
                if probe.t_drained is not None:
                    if idle_from is None:
                        idle_from = probe.t_drained + p["settle_s"]
                    if not want_idle or sum(1 for t in writes.values() if t > idle_from) >= want_idle:
                        return
                t_next += p["interval_s"]
                delay = t_next - time.perf_counter()
                if delay > 0:
                    time.sleep(delay)
                else:
                    t_next = time.perf_counter()  # fell behind (machine busy): keep the spacing, do not burst

        ping = threading.Thread(target=pinger, name="bench-sos", daemon=True)
        try:
            gw.start()
            if not wait_configured(sim, timeout=20):
                raise RuntimeError("radio not configured")
            time.sleep(0.2)
            spy = _py_spy(os.getpid(), f"{p['profile']}.round{rnd}", 120) if p.get("profile") else None
            broker.start()
            if not c.wait_until(lambda: gw.link.connected, 20, 0.005):
                raise RuntimeError("gateway did not connect to the broker")
            ping.start()
            if not probe.drained.wait(p["max_round_s"] * 3):
                raise RuntimeError(f"backlog not drained: {probe.prefill_deleted} of {backlog}")
            if spy is not None:
                spy.send_signal(signal.SIGINT)
                spy.wait(30)
            ping.join(p["max_round_s"] + p["idle_samples"] * p["interval_s"] * 3 + 10)
            stop_pinging.set()
            ping.join(5)
            # Give the last SOS time to be journaled and, once published, acknowledged. One journaled but never
            # published is not waited for: it stays in the journal until the next session (counted as stuck).
            c.wait_until(lambda: all("committed" in probe.sos.get(k, {}) for k in writes)
                       and all("acked" in st for st in probe.sos.values() if "sent" in st), 5, 0.02)
        finally:
            stop_pinging.set()
            gw.stop()
            sim.stop()
            broker.stop()
        assert probe.t_drained is not None and probe.t_first_send is not None
        drain_s = probe.t_drained - probe.t_first_send
        n_under = 0
        for key, t_w in writes.items():
            st = probe.sos.get(key, {})
            if "acked" not in st:
                lost += 1
                if "committed" in st and "sent" not in st:
                    stuck += 1
                continue
            sample = {"total": st["acked"] - t_w, "puback": st["puback"] - t_w, "to_commit": st["commit_start"] - t_w,
                      "commit": st["committed"] - st["commit_start"], "to_send": st["sent"] - st["committed"],
                      "to_ack": st["acked"] - st["sent"]}
            if t_w < probe.t_drained:
                under.append(sample)
                n_under += 1
            elif t_w > probe.t_drained + p["settle_s"]:
                idle.append(sample)
        rounds.append({"drain_s": drain_s, "drain_per_s": backlog / drain_s, "samples_under_backlog": n_under,
                       "commits": probe.commits, "messages": probe.messages})
        if len(under) >= p["min_samples"]:
            break

    def summary(samples: list[dict[str, float]]) -> dict[str, Any]:
        tot = [s["total"] * 1e3 for s in samples]
        out: dict[str, Any] = {"samples": len(samples), "p50_ms": c.percentile(tot, 50),
                               "p99_ms": c.percentile(tot, 99), "max_ms": max(tot) if tot else float("nan")}
        # pty line -> the broker's PUBACK reaching the gateway; "total" also waits for the core to take it.
        puback = [s["puback"] * 1e3 for s in samples]
        out.update(puback_p50_ms=c.percentile(puback, 50), puback_p99_ms=c.percentile(puback, 99),
                   puback_max_ms=max(puback) if puback else float("nan"))
        # Where the time goes, at the median and for the slowest 1 %.
        for stage in ("to_commit", "commit", "to_send", "to_ack"):
            vals = [s[stage] * 1e3 for s in samples]
            out[f"{stage}_p50_ms"] = c.percentile(vals, 50)
            out[f"{stage}_p99_ms"] = c.percentile(vals, 99)
        slow = sorted(samples, key=lambda s: s["total"])[-max(1, len(samples) // 100):]
        out["slowest_1pct_mean_ms"] = {k: sum(s[k] for s in slow) / len(slow) * 1e3 for k in slow[0]} if slow else {}
        return out

    return {
        "backlog": backlog, "interval_ms": p["interval_s"] * 1e3, "rounds": rounds, "lost": lost, "stuck": stuck,
        "written": next_line,
        "batch": cfg.mqtt.batch_max_readings, "window": cfg.mqtt.inflight_window,
        "drain_per_s": c.median([r["drain_per_s"] for r in rounds]),
        "under_backlog": summary(under), "idle": summary(idle),
    }


# -- (d) memory ---------------------------------------------------------------------------------------------
def rss(p: dict[str, Any]) -> dict[str, Any]:
    """(d) VmRSS of ``python -m agent.cli run`` with ``nodes`` keyed nodes: after start-up, after paced traffic
    (``paced`` readings at ``paced_per_s``, far above what a LoRa channel carries, so nothing queues up) and after a
    burst (``traffic`` readings written as fast as the pty takes them, so the agent's inbox fills up)."""
    from tests.support.field import default_values, wait_configured

    work = Path(p["workdir"])
    n_nodes = p["nodes"]
    tele = c.telemetry_nodes(n_nodes - 4)
    buttons = c.sos_nodes(4)
    frames = c.telemetry_frames(tele, p["paced"] + p["traffic"])
    lines = [c.rx_line(f) for f in frames]
    paced, burst = lines[:p["paced"]], b"".join(lines[p["paced"]:])
    sos_lines = [c.rx_line(b.frame(default_values("sos", i), receipt=True)) for i, b in enumerate(buttons)]
    broker, sim, cfg, journal = _start_field(work, tele + buttons, batch=None, window=None)
    cfg_path = work / "gateway.yaml"
    c.write_config(cfg_path, c.config_text(port=sim.path, mqtt_port=broker.port, journal=journal,
                                           nodes=tele + buttons))
    log_path = work / "agent.log"
    out: dict[str, Any] = {"nodes": len(cfg.nodes), "traffic": p["traffic"], "paced": p["paced"],
                           "paced_per_s": p["paced_per_s"]}
    proc = None
    try:
        with log_path.open("ab") as logf:
            proc = subprocess.Popen([sys.executable, "-m", "agent.cli", "run", "-c", str(cfg_path)], cwd=REPO,
                                    stdout=logf, stderr=subprocess.STDOUT)

        def counter(name: str) -> int:
            return c.journal_counter(journal, name)

        def drained(total: int) -> None:
            if not c.wait_until(lambda: counter("readings.acked") >= total and _unsent(journal) == 0,
                              p["timeout_s"], 0.1):
                raise RuntimeError(f"traffic not drained: acked {counter('readings.acked')} of {total}")
            time.sleep(p["settle_s"])

        if not wait_configured(sim, timeout=30) or not c.wait_until(lambda: counter("mqtt.connects") >= 1, 30, 0.05):
            raise RuntimeError(f"agent did not come up: {log_path.read_text()[-2000:]}")
        time.sleep(p["settle_s"])
        out["startup_mib"] = c.proc_status_kib(proc.pid, "VmRSS") / 1024
        out["startup_split_mib"] = _rss_split(proc.pid)
        out["idle_cpu_pct_startup"] = _cpu_pct(proc.pid, p["idle_window_s"])

        # Paced: a few lines every 20 ms, with the SOS presses among them.
        per_tick = max(1, round(p["paced_per_s"] * 0.02))
        t_next = time.monotonic()
        for i in range(0, len(paced), per_tick):
            sim.port.write(b"".join(paced[i:i + per_tick]))
            if i // per_tick < len(sos_lines):
                sim.port.write(sos_lines[i // per_tick])
            t_next += 0.02
            time.sleep(max(0.0, t_next - time.monotonic()))
        total = len(paced) + len(sos_lines)
        drained(total)
        out["after_paced_mib"] = c.proc_status_kib(proc.pid, "VmRSS") / 1024
        out["after_paced_split_mib"] = _rss_split(proc.pid)
        out["peak_paced_mib"] = c.proc_status_kib(proc.pid, "VmHWM") / 1024

        for off in range(0, len(burst), 65536):
            sim.port.write(burst[off:off + 65536])
        total += p["traffic"]
        drained(total)
        out["after_traffic_mib"] = c.proc_status_kib(proc.pid, "VmRSS") / 1024
        out["after_traffic_split_mib"] = _rss_split(proc.pid)
        # An idle agent should sleep; this catches a core loop that polls instead of blocking on its inbox.
        out["idle_cpu_pct_after_traffic"] = _cpu_pct(proc.pid, p["idle_window_s"])
        out["peak_mib"] = c.proc_status_kib(proc.pid, "VmHWM") / 1024
        out["threads"] = c.proc_status_kib(proc.pid, "Threads")
    finally:
        end(proc, 15)
        sim.stop()
        broker.stop()
    return out


def _rss_split(pid: int) -> dict[str, float]:
    """VmRSS split into anonymous memory (heap, stacks), file pages (libraries) and shared memory (SQLite's
    WAL index), in MiB."""
    return {k: c.proc_status_kib(pid, k) / 1024 for k in ("RssAnon", "RssFile", "RssShmem")}


def _cpu_pct(pid: int, window_s: float) -> float:
    """CPU used by process ``pid`` over the next ``window_s`` seconds, in % of one core."""

    def ticks() -> int:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rpartition(")")[2].split()
        return int(fields[11]) + int(fields[12])  # utime + stime (fields 14 and 15 of stat)

    t0, k0 = time.monotonic(), ticks()
    time.sleep(window_s)
    return (ticks() - k0) / os.sysconf("SC_CLK_TCK") / (time.monotonic() - t0) * 100


#: Import steps for the RSS breakdown: what each group of modules adds to a bare interpreter, in this order.
IMPORT_STEPS: tuple[tuple[str, str], ...] = (
    ("stdlib (sqlite3, json, logging, threading, socket)", "sqlite3, json, logging, threading, socket"),
    ("ssl (OpenSSL)", "ssl"),
    ("paho.mqtt", "paho.mqtt.client"),
    ("pyserial", "serial"),
    ("frame MIC (libcrypto through ctypes)", "drivers.codec.cmac"),
    ("pydantic", "pydantic"),
    ("ruamel.yaml", "ruamel.yaml"),
    ("agent.config (the config models)", "agent.config"),
    ("rest of agent + drivers", "agent.gateway.core, agent.cli, drivers.radio"),
)


def rss_floor(p: dict[str, Any]) -> dict[str, Any]:
    """RSS of bare interpreters: importing the agent's third-party libraries (the floor anchor), importing the
    agent's own modules, and what each import step adds (one interpreter, steps in order)."""
    out: dict[str, Any] = {}
    for name, imports in (("libs", "import paho.mqtt.client, pydantic, serial, ssl"),
                          ("agent_modules", "import agent.gateway.core, agent.cli, drivers.radio")):
        code = f"{imports}\nprint(open('/proc/self/status').read())"
        text = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True,
                              timeout=60).stdout
        kib = next(int(line.split()[1]) for line in text.splitlines() if line.startswith("VmRSS:"))
        out[f"{name}_mib"] = kib / 1024
    code = (
        "import json, sys\n"
        "def rss():\n"
        "    return next(int(l.split()[1]) for l in open('/proc/self/status') if l.startswith('VmRSS:')) / 1024\n"
        "steps = [('python', rss())]\n"
        "for label, mods in json.loads(sys.argv[1]):\n"
        "    exec('import ' + mods)\n"
        "    steps.append((label, rss()))\n"
        "print(json.dumps(steps))\n"
    )
    text = subprocess.run([sys.executable, "-c", code, json.dumps(IMPORT_STEPS)], cwd=REPO, capture_output=True,
                          text=True, check=True, timeout=60).stdout
    steps = json.loads(text)
    out["import_steps_mib"] = [(label, mib, mib - (steps[i - 1][1] if i else 0.0))
                               for i, (label, mib) in enumerate(steps)]
    return out


# -- C anchor: mosquitto_pub ---------------------------------------------------------------------------------
#: Lines per mosquitto_pub process (below its 65,535 message-id wrap, see c_anchor).
C_CHUNK = 50_000


def c_anchor(p: dict[str, Any]) -> dict[str, Any]:
    """``mosquitto_pub -q 1 -l``: the C client publishes one QoS 1 message per stdin line, ``window`` in flight.

    The lines are the same reading bodies (a) publishes, to the same topic on the same kind of broker, with the
    same kind of C subscriber (``mosquitto_sub``), which here also keeps time: it prints the arrival time of every
    message (``-F %U``, ns) and exits once all arrived (``-C``), so a missing message fails the trial. The rate is
    taken between the first and the last message's arrival, per process: ``mosquitto_pub -l`` sleeps 100 ms after
    its CONNACK before reading stdin and up to 100 ms before exiting, and timing the process from outside would
    count that (wall time per process is kept too, as ``raw_per_s``).

    ``mosquitto_pub -l`` 2.0.11 disconnects at the first PUBACK whose message id equals the id of its last
    message, and ids wrap at 65,535: with more lines it stops early (100,000 lines: after 34,465) and still exits
    0. So the lines go to one process per ``chunk`` lines (default :data:`C_CHUNK`), back to back.
    """
    import shutil  # noqa: PLC0415

    from agent.dev.devbroker import Mosquitto  # noqa: PLC0415

    exe = shutil.which("mosquitto_pub")
    if exe is None:
        raise RuntimeError("mosquitto_pub is not installed (apt-get install mosquitto-clients)")
    work = Path(p["workdir"])
    work.mkdir(parents=True, exist_ok=True)
    n, window = p["n"], p["window"]
    payloads = c.reading_payloads(p["nodes"], n)
    if any(b"\n" in x for x in payloads):
        raise RuntimeError("a reading body holds a newline; mosquitto_pub -l would split it")
    chunk = p.get("chunk", C_CHUNK)
    chunks = []
    for k, off in enumerate(range(0, n, chunk)):
        chunks.append((work / f"lines{k}.txt", min(chunk, n - off)))
        chunks[-1][0].write_bytes(b"\n".join(payloads[off:off + chunk]) + b"\n")
    topic = f"denen/v1/{c.GATEWAY_ID}/readings/telemetry"

    broker = Mosquitto(work / "broker")
    broker.start()
    arrivals = work / "arrivals.txt"
    with arrivals.open("wb") as af:
        sub = subprocess.Popen(["mosquitto_sub", "-h", broker.host, "-p", str(broker.port), "-t", "denen/#", "-q",
                                "1", "-i", f"bench-sink-{broker.port}", "-C", str(n), "-F", "%U"],
                               stdout=af, stderr=subprocess.DEVNULL)
    try:
        time.sleep(0.2)  # let it subscribe before anything is published
        cmd = [exe, "-h", broker.host, "-p", str(broker.port), "-q", "1", "-l", "-t", topic, "-V", "mqttv5",
               "-M", str(window), "--nodelay", "-i", "bench-c-anchor"]
        wall = 0.0
        for path, _ in chunks:
            with path.open("rb") as f:
                t = time.perf_counter()
                rc = subprocess.run(cmd, stdin=f, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                    timeout=p["timeout_s"]).returncode
                wall += time.perf_counter() - t
            if rc != 0:
                raise RuntimeError(f"mosquitto_pub exited {rc}")
        try:
            sub_rc = sub.wait(30)
        except subprocess.TimeoutExpired:
            raise RuntimeError(f"the subscriber did not receive all {n} messages within 30 s") from None
        if sub_rc != 0:
            raise RuntimeError(f"mosquitto_sub exited {sub_rc}")
    finally:
        if sub.poll() is None:
            sub.terminate()
            sub.wait(5)
        broker.stop()
    times = [float(x) for x in arrivals.read_text().split()]
    if len(times) != n:
        raise RuntimeError(f"{len(times)} arrivals recorded, expected {n}")
    # Messages arrive in publishing order, and each process ends before the next starts: chunk k is a slice.
    busy = 0.0
    intervals = 0
    off = 0
    for _, count in chunks:
        busy += times[off + count - 1] - times[off]
        intervals += count - 1
        off += count
    return {"n": n, "seconds": busy, "per_s": intervals / busy, "raw_seconds": wall, "raw_per_s": n / wall,
            "processes": len(chunks), "chunk": chunk, "window": window,
            "payload_bytes": sum(map(len, payloads)) / n}


# -- idle wakeups ---------------------------------------------------------------------------------------------
def idle(p: dict[str, Any]) -> dict[str, Any]:
    """Wakeups per second and CPU of an idle ``python -m agent.cli run``, per thread.

    The agent runs with two simulated radios (a RAK3172 and an ES920LR on ptys, like the demo config),
    ``nodes`` keyed nodes, the config's default health interval and MQTT keepalive, and a connected broker. After
    both radios are configured, MQTT is up and ``settle_s`` passed, the context switches and CPU ticks of every
    thread are read from /proc at the start and the end of ``window_s`` seconds in which nothing is sent. Then one
    ``py-spy dump`` (after the window, so it does not disturb it) maps the OS threads to Python thread names and
    says where each one waits.
    """
    from drivers.sim.es920lr import SimEs920lr  # noqa: PLC0415
    from drivers.sim.rak3172 import SimRak3172  # noqa: PLC0415

    work = Path(p["workdir"])
    nodes = c.telemetry_nodes(p["nodes"] - 4) + c.sos_nodes(4)
    broker = _SubscribedMosquitto(work / "broker")
    broker.start()
    rak = SimRak3172(name=c.RADIO, link=str(work / "lora0"), boot_delay_s=0.02, rng=random.Random(7))
    es = SimEs920lr(name=c.RADIO_ES920, link=str(work / "lora1"), boot_delay_s=0.02, rng=random.Random(8))
    rak.start()
    es.start()
    journal = work / "journal.db"
    cfg_path = work / "gateway.yaml"
    c.write_config(cfg_path, c.config_text(port=rak.path, extra_radios=c.ES920_RADIO.format(port=es.path),
                                           mqtt_port=broker.port, journal=journal, nodes=nodes, health_s=None,
                                           reconnect_s=None))
    cfg = c.parse(cfg_path.read_text())
    log_path = work / "agent.log"
    proc = None
    out: dict[str, Any] = {"nodes": len(cfg.nodes), "radios": [r.driver for r in cfg.radios],
                           "health_interval_s": cfg.health.interval_s, "keepalive_s": cfg.mqtt.keepalive_s,
                           "window_s": p["window_s"]}
    try:
        with log_path.open("ab") as logf:
            proc = subprocess.Popen([sys.executable, "-m", "agent.cli", "run", "-c", str(cfg_path)], cwd=REPO,
                                    stdout=logf, stderr=subprocess.STDOUT)

        def up() -> bool:
            if proc.poll() is not None:
                raise RuntimeError(f"agent exited with {proc.returncode}: {log_path.read_text()[-2000:]}")
            return all(c.journal_counter(journal, k) >= 1 for k in
                       (f"{c.RADIO}.configured", f"{c.RADIO_ES920}.configured", "mqtt.connects"))

        if not c.wait_until(up, 60, 0.1):
            raise RuntimeError(f"agent did not come up (radios configured, MQTT connected): "
                               f"{log_path.read_text()[-2000:]}")
        time.sleep(p["settle_s"])
        before = c.thread_stats(proc.pid)
        t0 = time.monotonic()
        time.sleep(p["window_s"])
        after = c.thread_stats(proc.pid)
        dt = time.monotonic() - t0
        if proc.poll() is not None:
            raise RuntimeError(f"agent exited during the window: {log_path.read_text()[-2000:]}")
        names, stacks = _py_spy_threads(proc.pid)
    finally:
        end(proc, 15)
        es.stop()
        rak.stop()
        broker.stop()
    tck = os.sysconf("SC_CLK_TCK")
    threads = []
    for tid, a in after.items():
        b = before.get(tid, {"voluntary": 0, "nonvoluntary": 0, "ticks": 0})
        vol = a["voluntary"] - b["voluntary"]
        nonvol = a["nonvoluntary"] - b["nonvoluntary"]
        threads.append({
            "tid": tid, "comm": a["comm"], "name": names.get(tid, ""), "waits_in": stacks.get(tid, ""),
            "wakeups_per_s": (vol + nonvol) / dt, "voluntary": vol, "nonvoluntary": nonvol,
            "cpu_pct": (a["ticks"] - b["ticks"]) / tck / dt * 100, "new": tid not in before,
        })
    threads.sort(key=lambda t: -t["wakeups_per_s"])
    out.update(seconds=dt, threads=threads, ended=[before[t]["comm"] for t in before if t not in after],
               wakeups_per_s=sum(t["wakeups_per_s"] for t in threads),
               cpu_pct=sum(t["cpu_pct"] for t in threads))
    return out


def _py_spy_threads(pid: int) -> tuple[dict[int, str], dict[int, str]]:
    """OS thread id -> Python thread name, and -> the innermost frames it waits in (``py-spy dump``).

    Empty when py-spy is missing or cannot attach; the caller then has only the OS names (``comm``, which
    Python 3.11 leaves as the process name for every thread).
    """
    exe = Path(sys.executable).with_name("py-spy")
    if not exe.exists():
        log.warning("py-spy is not installed in the venv (pip install py-spy); threads are not named")
        return {}, {}
    try:
        text = subprocess.run([str(exe), "dump", "--pid", str(pid), "--json"], capture_output=True, text=True,
                              timeout=60).stdout
        dump = json.loads(text)
    except (OSError, subprocess.SubprocessError, json.JSONDecodeError) as exc:
        log.warning("py-spy dump failed: %s", exc)
        return {}, {}
    names: dict[int, str] = {}
    stacks: dict[int, str] = {}
    for th in dump:
        tid = th.get("os_thread_id")
        if tid is None:
            continue
        names[tid] = th.get("thread_name") or ""
        frames = [f"{f['name']} ({f['short_filename']}:{f['line']})" for f in th.get("frames", [])[:3]]
        stacks[tid] = " < ".join(frames)
    return names, stacks


# -- drain of a journaled backlog ---------------------------------------------------------------------------------
def drain(p: dict[str, Any]) -> dict[str, Any]:
    """Time from broker-up to the last PUBACK for a backlog of ``backlog`` readings already in the journal.

    The journal is filled once through the real decode path (AES-CMAC, replay window, LPP, JSON: the bodies are
    the agent's own) and copied for each of ``rounds`` rounds. Each round starts the gateway (in this process,
    with the :class:`Probe`) with the broker down, waits until the radio is configured, then starts the broker:
    the clock runs from the broker listening to the commit that deletes the last backlog reading after its
    PUBACK. The reconnect backoff of the bench config (0.1..0.5 s) is inside that time; from the first message
    published is given too.
    """
    import shutil  # noqa: PLC0415

    from agent.gateway.core import Gateway  # noqa: PLC0415
    from agent.gateway.journal import Journal  # noqa: PLC0415
    from agent.gateway.readings import FrameDecoder  # noqa: PLC0415
    from drivers.types import Uplink  # noqa: PLC0415
    from tests.support.field import wait_configured  # noqa: PLC0415

    base = Path(p["workdir"])
    backlog = p["backlog"]
    nodes = c.telemetry_nodes(p["nodes"])
    cfg0 = c.parse(c.config_text(port="/dev/null", mqtt_port=1883, journal=base / "unused.db", nodes=nodes))
    template = base / "template" / "journal.db"
    template.parent.mkdir(parents=True)
    t = time.perf_counter()
    decoder = FrameDecoder(cfg0, {})
    j = Journal(template, quota_bytes=int(cfg0.journal.quota_mb * 1048576))
    body_bytes = 0
    now_us = time.time_ns() // 1000
    done = 0
    while done < backlog:
        count = min(50_000, backlog - done)
        entries = []
        for i, f in enumerate(c.telemetry_frames(nodes, count)):
            k = done + i
            out = decoder.decode(Uplink(c.RADIO, f, -80 - (k % 40), float(8 - (k % 15)), None, now_us + k))
            if out.entry is None:
                raise RuntimeError(f"bench frame {k} did not decode: {out.quarantined}")
            entries.append(out.entry)
            body_bytes += len(out.entry.body)
        for off in range(0, count, 5000):
            j.commit(entries=entries[off:off + 5000])
        done += count
    j.commit(nodes=list(decoder.nodes.values()))
    j.close()
    prefill_s = time.perf_counter() - t
    journal_mib = sum(os.path.getsize(f) for f in template.parent.iterdir()) / 1048576

    rounds = []
    for rnd in range(p["rounds"]):
        work = base / f"round{rnd}"
        work.mkdir()
        for f in template.parent.iterdir():
            shutil.copyfile(f, work / f.name)
        broker, sim, cfg, journal = _start_field(work, nodes, batch=p.get("batch"), window=p.get("window"),
                                                 broker_running=False)
        assert journal == work / "journal.db"
        gw = Gateway(cfg)
        probe = Probe(gw, watch_upto=backlog)
        try:
            gw.start()
            if not wait_configured(sim, timeout=30):
                raise RuntimeError("radio not configured")
            time.sleep(0.3)
            broker.start()
            t_up = time.perf_counter()
            if not probe.drained.wait(p["timeout_s"]):
                raise RuntimeError(f"backlog not drained within {p['timeout_s']} s: {probe.prefill_deleted} of "
                                   f"{backlog} acknowledged")
            counters = dict(gw.stats.counters)
        finally:
            gw.stop()
            sim.stop()
            broker.stop()
        assert probe.t_drained is not None and probe.t_first_send is not None
        left = _unsent(journal)
        if left:
            raise RuntimeError(f"{left} readings still in the journal after the drain")
        rounds.append({"broker_up_to_last_ack_s": probe.t_drained - t_up,
                       "first_send_to_last_ack_s": probe.t_drained - probe.t_first_send,
                       "broker_up_to_first_send_s": probe.t_first_send - t_up,
                       "commits": probe.commits, "messages": probe.messages,
                       "acked": counters.get("readings.acked", 0)})
        shutil.rmtree(work, ignore_errors=True)
    secs = [r["broker_up_to_last_ack_s"] for r in rounds]
    return {"backlog": backlog, "rounds": rounds, "prefill_s": prefill_s, "journal_mib": journal_mib,
            "body_bytes": body_bytes / backlog, "batch": cfg.mqtt.batch_max_readings,
            "window": cfg.mqtt.inflight_window, "seconds": c.median(secs),
            "per_s": backlog / c.median(secs),
            "first_send_per_s": backlog / c.median([r["first_send_to_last_ack_s"] for r in rounds]),
            "commits_per_reading": c.median([r["commits"] / backlog for r in rounds])}


# -- the bridge and fleet benches, as trials of the main run ---------------------------------------------------------
def bridge(p: dict[str, Any]) -> dict[str, Any]:
    """``tests.bench.bench_bridge``: the bridge against raw writes, and 1 against 2 bridge processes."""
    from tests.bench import bench_bridge  # noqa: PLC0415

    return bench_bridge.run_all(p)


def fleet(p: dict[str, Any]) -> dict[str, Any]:
    """``tests.bench.bench_fleet``: 1,000 gateways against one Mosquitto and one bridge."""
    from tests.bench import bench_fleet  # noqa: PLC0415

    return bench_fleet.run(p)


TRIALS = {"disk": disk, "decode": decode, "naive": naive, "agent": agent, "sos": sos, "rss": rss,
          "rss_floor": rss_floor, "c_anchor": c_anchor, "idle": idle, "drain": drain, "bridge": bridge,
          "fleet": fleet}


def run_trial(name: str, params: dict[str, Any], out_path: str) -> int:
    """Entry of a trial process: run one trial and write its result (or its error) as JSON."""
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        result = {"ok": True, "result": TRIALS[name](params)}
    except Exception as exc:  # trial process top level: hand the failure to the orchestrator as data
        log.exception("trial %s failed", name)
        result = {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
    c.write_json(out_path, result)
    return 0 if result["ok"] else 1


def params_json(params: dict[str, Any]) -> str:
    return json.dumps(params, sort_keys=True)
