"""What a gateway pays per reading at field rates: disk bytes, CPU, commits, wake-ups and MQTT messages of a real
``denen run``, and the SD-card life they project to.

Usage::

    python -m tests.bench.bench_field [--quick] [--rates 2,20,200] [--seconds 30] [--json PATH] [--dir DIR]
                                      [--allow-tmpfs] [--no-strace] [--keep] [--no-sos]

For each rate a fresh ``denen run`` (its console script, a subprocess) listens to a simulated RAK3172 on a real pty
and publishes to a real Mosquitto, where a paho subscriber counts every message and every reading by (node, fcnt).
Telemetry frames of 200 keyed nodes (water level, rain, weather, tilt) are injected one frame per pty write, paced
by a monotonic schedule (frame k at t0 + k / rate, so sleep overshoot does not accumulate). Every node is heard
once first (the steady state of a gateway that knows its nodes), then after a warm-up at the rate the
steady window of ``--seconds`` starts and ends on the schedule; at both ends the bench reads, for the agent's pid:

``/proc/PID/io``        ``write_bytes`` (bytes sent to the block layer, counted by the kernel when a page cache page
                        goes from clean to dirty, so per 4 KiB page), ``wchar`` (bytes passed to write calls, any
                        file or socket), ``syscw``;
``/proc/PID/stat``      utime + stime of the whole process (clock ticks, converted to µs);
``/proc/PID/task/*/``   voluntary + involuntary context switches and ``schedstat`` run time, summed over threads.

Commits: the agent keeps no commit counter, so after the steady window ``strace`` (if installed) is attached for
a few more seconds at the same rate and counts ``fdatasync``/``fsync`` per file and the bytes of every
``pwrite64``/``write`` per file (the WAL, the database, the log). The traced seconds are not part of the measured
window (ptrace stops every system call of the agent while attached).

Then the same for SOS alone: a fresh agent, an idle window (the idle cost per second, an anchor), then one SOS per
minute (``--quick``: one per 10 s for 60 s), each SOS's cost with and without the idle cost of the minute around
it, and its latency from the pty write to the subscriber receiving it (an upper bound of pty -> PUBACK: the broker
sends the PUBACK and forwards the message at the same time).

Anchor in the same run and on the same folder: a bare SQLite WAL ``synchronous=FULL`` insert + commit of one
reading-sized row (the agent's pragmas), its bytes, CPU and context switches per commit. And the floor at 20/s: a
minimal Python process doing the same field work with no product logic (one select + read per pty frame, one SQLite
WAL synchronous=FULL commit of the window's rows every 250 ms, one paho QoS 1 publish per commit to Mosquitto), its
CPU per frame; the agent's CPU per reading at that rate is given against it (agent/floor: product logic or Python's
own cost of waking up per frame).

What ``write_bytes`` does not count: the ext4 journal (jbd2 writes metadata in a kernel thread, not the agent),
the SD card's own write amplification (flash pages, erase blocks), and ``-shm`` pages (SQLite's WAL index is an
``mmap`` of a file on the same disk; its dirty pages are written back by the kernel's flusher every few seconds
and counted only when they are dirtied again after that). Pages re-dirtied before their writeback count once;
with ``synchronous=FULL`` every commit writes its pages back, so each commit's pages count again.

The journal folder must be on a real disk: the bench says which filesystem it is on and refuses tmpfs/ramfs
unless ``--allow-tmpfs`` (then it says the bytes are meaningless).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from tests.support.process import end

REPO = Path(__file__).resolve().parents[2]

PLANS: dict[str, dict[str, Any]] = {
    "full": {"rates": [2, 20, 200], "seconds": 30.0, "warmup_s": 5.0, "trace_s": 10.0, "idle_s": 30.0,
             "sos_interval_s": 60.0, "sos_count": 5, "sos_traced": 2, "nodes": 200, "anchor_commits": 300},
    "quick": {"rates": [2, 20], "seconds": 10.0, "warmup_s": 3.0, "trace_s": 5.0, "idle_s": 10.0,
              "sos_interval_s": 10.0, "sos_count": 6, "sos_traced": 2, "nodes": 200, "anchor_commits": 100},
}

#: Frames per second at which every node is heard once before a rate's warm-up (see run_rate).
FIRST_SIGHT_RATE = 50

#: Targets of the field rate (issue "Pi-grade footprint"), at 20 telemetry frames/s.
TARGET_RATE = 20
TARGET_BYTES_PER_READING = 2048
TARGET_CPU_US_PER_READING = 300.0
TARGET_SOS_MS = 5.0

#: Card endurance assumed for the projected life: (label, capacity bytes, P/E cycles, write amplification, source).
#: Rated host-writable bytes = capacity x P/E / WA. The consumer figure is deliberately conservative: TLC NAND is
#: usually quoted at ~3,000 P/E cycles "but can be as low as 300" (micrometer.xyz/cdn/node/110, a summary of NAND
#: classes); 1,000 sits between. Industrial pSLC cards are rated 30,000-100,000 P/E (first-hk.com pSLC lifespan
#: guide); the lower end is taken. WA 4 is an assumption for small synchronous 4 KiB writes on a card whose FTL maps
#: pages; cheap cards that map erase blocks amplify such writes far more, so the consumer figure may be optimistic.
CARDS: tuple[tuple[str, float, int, float, str], ...] = (
    ("consumer 32 GB TLC microSD", 32e9, 1_000, 4.0,
     "TLC ~3,000 P/E typical, as low as 300 for some chips (micrometer.xyz/cdn/node/110); 1,000 taken"),
    ("industrial 32 GB pSLC microSD", 32e9, 30_000, 4.0,
     "pSLC rated 30,000-100,000 P/E (first-hk.com pSLC lifespan guide); 30,000 taken"),
)

#: Filesystems that keep everything in RAM: bytes "written" there never reach a device.
RAM_FILESYSTEMS = ("tmpfs", "ramfs", "devtmpfs")

#: The size of a telemetry reading's JSON body in the journal (see tests.bench._trials.disk).
ANCHOR_BODY_BYTES = 266


class BenchError(RuntimeError):
    """The bench cannot measure (a missing tool, an agent that did not come up, readings lost)."""


# -- the machine ------------------------------------------------------------------------------------------------
def filesystem_of(path: Path) -> dict[str, str]:
    """The mount holding ``path`` (longest mount point that is a prefix of its real path): type, device, options."""
    real = os.path.realpath(path)
    best: dict[str, str] = {"fstype": "unknown", "mount": "", "device": "", "options": ""}
    with open("/proc/mounts") as f:
        for line in f:
            parts = line.split()
            if len(parts) < 4:
                continue
            # /proc/mounts escapes spaces and a few other characters as octal (\040).
            mount = re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), parts[1])
            inside = real == mount or real.startswith(mount.rstrip("/") + "/")
            if inside and len(mount) >= len(best["mount"]):
                best = {"fstype": parts[2], "mount": mount, "device": parts[0], "options": parts[3]}
    return best


def _loadavg() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


# -- sampling /proc -------------------------------------------------------------------------------------------
_TICK_US = 1e6 / os.sysconf("SC_CLK_TCK")


def sample(pid: int) -> dict[str, float]:
    """Counters of process ``pid`` now: /proc/PID/io, CPU (utime+stime, µs), context switches and run time of all
    its threads (µs, from schedstat), and the monotonic time (s)."""
    out: dict[str, float] = {"t": time.monotonic()}
    with open(f"/proc/{pid}/io") as f:
        for line in f:
            key, _, value = line.partition(":")
            out[key.strip()] = int(value)
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rpartition(")")[2].split()
    # utime and stime (fields 14 and 15) include the threads that already ended; cutime and cstime (16, 17) are
    # the children it started and reaped (their I/O is in /proc/PID/io already, added by the kernel at reaping).
    out["cpu_us"] = (int(fields[11]) + int(fields[12])) * _TICK_US
    out["stime_us"] = int(fields[12]) * _TICK_US
    out["children_cpu_us"] = (int(fields[13]) + int(fields[14])) * _TICK_US
    vol = nonvol = run_ns = 0
    threads = 0
    for tid in os.listdir(f"/proc/{pid}/task"):
        base = f"/proc/{pid}/task/{tid}"
        try:
            with open(f"{base}/status") as f:
                for line in f:
                    if line.startswith("voluntary_ctxt_switches:"):
                        vol += int(line.split()[1])
                    elif line.startswith("nonvoluntary_ctxt_switches:"):
                        nonvol += int(line.split()[1])
            with open(f"{base}/schedstat") as f:
                run_ns += int(f.read().split()[0])
        except (FileNotFoundError, ProcessLookupError):
            continue  # a thread that ended while the folder was read
        threads += 1
    out.update(voluntary=vol, nonvoluntary=nonvol, run_us=run_ns / 1000, threads=threads)
    return out


def delta(a: dict[str, float], b: dict[str, float]) -> dict[str, float]:
    return {k: b[k] - a[k] for k in a if k in b and k != "threads"}


# -- the subscriber ---------------------------------------------------------------------------------------------
class Subscriber:
    """A paho MQTTv5 client subscribed to everything on the bench's broker (QoS 1): every message with its receive
    time (monotonic s), and for reading messages the (node, fcnt) of each reading."""

    def __init__(self, host: str, port: int) -> None:
        import paho.mqtt.client as mqtt  # noqa: PLC0415
        from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion  # noqa: PLC0415

        self.lock = threading.Lock()
        #: (receive time, topic, [(node, fcnt, kind)...] or None for a message that is not a reading batch)
        self.messages: list[tuple[float, str, list[tuple[str, int, str]] | None]] = []
        self.bad: list[str] = []
        self._subscribed = threading.Event()
        self.client = mqtt.Client(callback_api_version=CallbackAPIVersion.VERSION2, client_id="bench-field-sink",
                                  protocol=MQTTProtocolVersion.MQTTv5)
        self.client.on_connect = lambda cl, u, f, rc, p: cl.subscribe("#", qos=1)
        self.client.on_subscribe = lambda cl, u, mid, rcs, p: self._subscribed.set()
        self.client.on_message = self._on_message
        self.client.connect(host, port)
        self.client.loop_start()
        if not self._subscribed.wait(10):
            self.close()
            raise BenchError("the bench's subscriber could not subscribe to the broker")

    def _on_message(self, client: Any, userdata: Any, msg: Any) -> None:
        t = time.monotonic()
        readings: list[tuple[str, int, str]] | None = None
        if "/readings/" in msg.topic:
            try:
                doc = json.loads(msg.payload)
                readings = [(r["node"], int(r["fcnt"]), r.get("kind", "")) for r in doc["readings"]]
            except (ValueError, KeyError, TypeError) as exc:
                with self.lock:
                    self.bad.append(f"{msg.topic}: {type(exc).__name__}: {exc}")
                return
        with self.lock:
            self.messages.append((t, msg.topic, readings))

    def snapshot(self) -> list[tuple[float, str, list[tuple[str, int, str]] | None]]:
        with self.lock:
            return list(self.messages)

    def received(self) -> dict[tuple[str, int], list[float]]:
        """Receive times of each reading, by (node, fcnt)."""
        out: dict[tuple[str, int], list[float]] = {}
        for t, _, readings in self.snapshot():
            for node, fcnt, _ in readings or ():
                out.setdefault((node, fcnt), []).append(t)
        return out

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


# -- one agent on a simulated field ---------------------------------------------------------------------------
class Field:
    """A Mosquitto, the subscriber, a simulated RAK3172 on a pty and ``denen run`` listening to it."""

    def __init__(self, work: Path, nodes: list[Any], commit_window_ms: int | None = None) -> None:
        self.work = work
        self.nodes = nodes
        self.commit_window_ms = commit_window_ms  # None: the config's default
        self.broker: Any = None
        self.sub: Subscriber | None = None
        self.sim: Any = None
        self.proc: subprocess.Popen[bytes] | None = None
        self.journal = work / "journal.db"
        self.log = work / "agent.log"

    def __enter__(self) -> Field:
        import random  # noqa: PLC0415

        from agent.dev.devbroker import Mosquitto  # noqa: PLC0415
        from drivers.sim.rak3172 import SimRak3172  # noqa: PLC0415
        from tests.bench import _common as c  # noqa: PLC0415
        from tests.bench.bench_startup import denen_command  # noqa: PLC0415
        from tests.support.field import wait_configured  # noqa: PLC0415

        self.work.mkdir(parents=True, exist_ok=True)
        try:
            self.broker = Mosquitto(self.work / "broker")
            self.broker.start()
            self.sub = Subscriber(self.broker.host, self.broker.port)
            self.sim = SimRak3172(name=c.RADIO, link=str(self.work / "lora0"), boot_delay_s=0.02,
                                  rng=random.Random(7))
            self.sim.start()
            cfg = c.write_config(self.work / "gateway.yaml", c.config_text(
                port=self.sim.path, mqtt_port=self.broker.port, journal=self.journal, nodes=self.nodes,
                commit_window_ms=self.commit_window_ms))
            with self.log.open("ab") as logf:
                self.proc = subprocess.Popen([*denen_command(), "run", "-c", str(cfg)], cwd=REPO,
                                             stdin=subprocess.DEVNULL, stdout=logf, stderr=subprocess.STDOUT)
            if not wait_configured(self.sim, timeout=30) or not c.wait_until(
                    lambda: c.journal_counter(self.journal, "mqtt.connects") >= 1 or self.proc.poll() is not None,
                    30, 0.05) or self.proc.poll() is not None:
                raise BenchError(f"denen run did not come up (radio configured, MQTT connected): {self.log_tail()}")
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def log_tail(self) -> str:
        return self.log.read_text(errors="replace")[-1500:] if self.log.exists() else "(no log)"

    def inject(self, frame: bytes, i: int) -> None:
        if not self.sim.inject_uplink(frame, rssi=-80 - (i % 40), snr=8 - (i % 15)):
            raise BenchError("the simulated radio was not listening when a frame arrived")

    def alive(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            raise BenchError(f"denen run exited during the measurement: {self.log_tail()}")

    def __exit__(self, *exc: Any) -> None:
        end(self.proc, 30)
        if self.sub is not None:
            self.sub.close()
        if self.sim is not None:
            self.sim.stop()
        if self.broker is not None:
            self.broker.stop()


def pace(field: Field, frames: list[bytes], rate: float, t_next: float, first_index: int = 0) -> tuple[float, float]:
    """Inject ``frames`` one per pty write, frame k at ``t_next + k / rate`` (monotonic s); returns the schedule time
    of the frame after the last one and the largest lateness of a write (s)."""
    late = 0.0
    period = 1.0 / rate
    for k, frame in enumerate(frames):
        wait = t_next - time.monotonic()
        if wait > 0:
            time.sleep(wait)
        else:
            late = max(late, -wait)
        field.inject(frame, first_index + k)
        t_next += period
    return t_next, late


def sleep_until(t: float) -> None:
    wait = t - time.monotonic()
    if wait > 0:
        time.sleep(wait)


# -- strace -----------------------------------------------------------------------------------------------------
#: ``PID<comm> SECONDS.MICROS call(args...``; a descriptor argument is ``FD</resolved/path>`` (-y).
_STRACE_LINE = re.compile(r"^(\d+)(?:<([^>]*)>)?\s+(\d+\.\d+)\s+(\w+)\((.*)$")
_FD_ARG = re.compile(r"^(\d+)<([^>]*)>(.*)$")
_WRITE_SIZE = re.compile(r'^,\s*"[^"]*"(?:\.\.\.)?,\s*(\d+)')
_EXEC_PATH = re.compile(r'^"([^"]*)"')


class Strace:
    """``strace`` attached to every thread of the agent, recording journal-relevant calls with file names."""

    CALLS = "fdatasync,fsync,pwrite64,write,ftruncate,fallocate,execve"

    def __init__(self, pid: int, out: Path) -> None:
        self.out = out
        exe = shutil.which("strace")
        if exe is None:
            raise BenchError("strace is not installed")
        self.proc = subprocess.Popen([exe, "-f", "-qq", "-Y", "-ttt", "-y", "-s", "0", "-e", f"trace={self.CALLS}",
                                      "-p", str(pid), "-o", str(out)],
                                     stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)  # strace detaches from every thread and exits
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        err = self.proc.stderr.read().decode(errors="replace") if self.proc.stderr else ""
        if self.proc.stderr is not None:
            self.proc.stderr.close()
        if not self.out.exists():
            raise BenchError(f"strace wrote nothing: {err.strip()[-300:]}")

    def summary(self, t0_wall: float, t1_wall: float, journal: Path) -> dict[str, Any]:
        """Calls between the wall times ``t0_wall`` and ``t1_wall``: per file (db, wal, log, other), syncs, writes
        and bytes (page writes counted apart: a WAL frame is a 24-byte header then the page); the WAL pages
        of each commit (page writes between two WAL syncs); the programs the agent started (execve)."""
        per: dict[str, dict[str, int]] = {}
        real = os.path.realpath(journal)  # strace -y prints the descriptor's resolved path
        name_of = {real: "db", f"{real}-wal": "wal", f"{real}-shm": "shm"}
        commit_pages: list[int] = []
        pages = 0
        execs: dict[str, int] = {}
        for line in self.out.read_text(errors="replace").splitlines():
            m = _STRACE_LINE.match(line)
            if not m:
                continue  # signals, "<... resumed>" halves, exit notices
            t, call, args = float(m.group(3)), m.group(4), m.group(5)
            if not t0_wall <= t <= t1_wall:
                continue
            if call == "execve":
                e = _EXEC_PATH.match(args)
                prog = os.path.basename(e.group(1)) if e else "?"
                execs[prog] = execs.get(prog, 0) + 1
                continue
            fd = _FD_ARG.match(args)
            if not fd:
                continue
            path, rest = fd.group(2), fd.group(3)
            where = name_of.get(path, "log" if path.endswith(".log") else "other")
            d = per.setdefault(where, {"syncs": 0, "writes": 0, "bytes": 0, "page_writes": 0, "truncates": 0})
            if call in ("fdatasync", "fsync"):
                d["syncs"] += 1
                if where == "wal":
                    commit_pages.append(pages)
                    pages = 0
            elif call in ("pwrite64", "write"):
                w = _WRITE_SIZE.match(rest)
                size = int(w.group(1)) if w else 0
                d["writes"] += 1
                d["bytes"] += size
                if size >= 512:  # a page (SQLite's pages are 512 B to 64 KiB); WAL and frame headers are 32/24 B
                    d["page_writes"] += 1
                    if where == "wal":
                        pages += 1
            elif call in ("ftruncate", "fallocate"):
                d["truncates"] += 1
        sizes: dict[int, int] = {}
        for n in commit_pages:
            sizes[n] = sizes.get(n, 0) + 1
        return {"files": per, "commit_pages": sizes, "execs": execs}


# -- measurements -----------------------------------------------------------------------------------------------
def _per_reading(d: dict[str, float], n: int) -> dict[str, float]:
    return {
        "write_bytes": d["write_bytes"] / n, "cancelled_write_bytes": d.get("cancelled_write_bytes", 0) / n,
        "wchar": d["wchar"] / n, "syscw": d["syscw"] / n, "cpu_us": d["cpu_us"] / n, "run_us": d["run_us"] / n,
        "children_cpu_us": d["children_cpu_us"] / n, "stime_us": d["stime_us"] / n,
        "ctx": (d["voluntary"] + d["nonvoluntary"]) / n, "voluntary": d["voluntary"] / n,
        "nonvoluntary": d["nonvoluntary"] / n,
    }


def _traced(field: Field, work: Path, frames: list[bytes], rate: float, t_next: float, lead_s: float,
            first_index: int) -> tuple[dict[str, Any] | None, float, str]:
    """Attach strace, pace ``frames`` (the first ``lead_s`` of them while strace attaches), count what it saw."""
    if shutil.which("strace") is None:
        return None, t_next, "strace not installed: commits not counted"
    st = Strace(field.pid, work / "strace.txt")
    lead = min(len(frames), max(1, round(lead_s * rate)))
    try:
        t_next, _ = pace(field, frames[:lead], rate, t_next, first_index)
        tw0 = time.time()
        t_next, _ = pace(field, frames[lead:], rate, t_next, first_index + lead)
        sleep_until(t_next)
        tw1 = time.time()
    finally:
        st.stop()
    n = len(frames) - lead
    return {"readings": n, "seconds": tw1 - tw0, **st.summary(tw0, tw1, field.journal)}, t_next, ""


def run_rate(work: Path, rate: int, p: dict[str, Any], use_strace: bool) -> dict[str, Any]:
    """One fresh agent at ``rate`` telemetry frames/s: warm-up, the measured window, a traced tail, then drain."""
    from tests.bench import _common as c  # noqa: PLC0415

    nodes = c.telemetry_nodes(p["nodes"])
    # Every node is heard once before the warm-up (at FIRST_SIGHT_RATE or the rate, the faster): a gateway that has
    # run for a day knows its nodes, so the window measures no first sighting (node row and key index inserted,
    # CMAC key set up) that a real gateway pays once per node.
    n_seen = len(nodes)
    n_warm = n_seen + max(1, round(p["warmup_s"] * rate))
    n = max(1, round(p["seconds"] * rate))
    n_trace = max(2, round((p["trace_s"] + 1.0) * rate)) if use_strace else 0
    frames = c.telemetry_frames(nodes, n_warm + n + n_trace)
    sent = {(f"{nodes[i % len(nodes)].node_id:08x}", i // len(nodes) + 1) for i in range(len(frames))}
    with Field(work, nodes, p.get("commit_window_ms")) as field:
        time.sleep(1.0)  # the start-up commits and the retained status settle
        load_before = _loadavg()
        t_next, _ = pace(field, frames[:n_seen], max(rate, FIRST_SIGHT_RATE), time.monotonic())
        t_next, _ = pace(field, frames[n_seen:n_warm], rate, t_next, n_seen)
        sleep_until(t_next)
        s0 = sample(field.pid)
        t_next, late = pace(field, frames[n_warm:n_warm + n], rate, t_next, n_warm)
        sleep_until(t_next)  # the window is n / rate seconds on the schedule, whatever the last write took
        s1 = sample(field.pid)
        field.alive()
        load_after = _loadavg()
        wal = Path(f"{field.journal}-wal")
        sizes = {"db": field.journal.stat().st_size, "wal": wal.stat().st_size if wal.exists() else 0}
        traced, note = None, ""
        if use_strace:
            traced, t_next, note = _traced(field, work, frames[n_warm + n:], rate, t_next, 1.0, n_warm + n)
        # Every reading sent must reach the subscriber, once.
        assert field.sub is not None
        sub = field.sub
        c.wait_until(lambda: sent <= set(sub.received()), 60, 0.1)
        field.alive()
        got = sub.received()
        msgs = sub.snapshot()
    missing = len(sent - set(got))
    dups = sum(len(v) - 1 for v in got.values() if len(v) > 1)
    extra = len(set(got) - sent)
    in_window = [m for m in msgs if s0["t"] <= m[0] <= s1["t"]]
    reading_msgs = [m for m in in_window if m[2] is not None]
    d = delta(s0, s1)
    return {
        "rate": rate, "readings": n, "window_s": d["t"], "late_max_ms": late * 1e3, "load_before": load_before,
        "load_after": load_after, "delta": d, "per_reading": _per_reading(d, n),
        "messages": len(reading_msgs), "other_messages": len(in_window) - len(reading_msgs),
        "readings_in_messages": sum(len(m[2] or ()) for m in reading_msgs),
        "sent_total": len(sent), "missing": missing, "duplicated": dups, "unexpected": extra,
        "bad_messages": sub.bad[:5], "sizes": sizes, "trace": traced, "trace_note": note,
        "threads": s1["threads"],
    }


def run_sos(work: Path, p: dict[str, Any], use_strace: bool) -> dict[str, Any]:
    """A fresh agent: an idle window, then one SOS every ``sos_interval_s``; per-SOS cost and latency."""
    from tests.bench import _common as c  # noqa: PLC0415
    from tests.support.field import default_values  # noqa: PLC0415

    telemetry = c.telemetry_nodes(p["nodes"] - 1)
    button = c.sos_nodes(1)[0]
    count, traced_n, interval = p["sos_count"], p["sos_traced"] if use_strace else 0, p["sos_interval_s"]
    frames = [button.frame(default_values("sos", i), receipt=True) for i in range(count + traced_n)]
    written: dict[tuple[str, int], float] = {}
    with Field(work, [*telemetry, button], p.get("commit_window_ms")) as field:
        time.sleep(2.0)
        load_before = _loadavg()
        i0 = sample(field.pid)
        time.sleep(p["idle_s"])
        i1 = sample(field.pid)
        t_next = time.monotonic()
        s0 = sample(field.pid)
        for k in range(count):
            sleep_until(t_next)
            written[(button.hex, k + 1)] = time.monotonic()
            field.inject(frames[k], k)
            t_next += interval
        sleep_until(t_next)
        s1 = sample(field.pid)
        field.alive()
        load_after = _loadavg()
        traced, note = None, ""
        if traced_n and shutil.which("strace"):
            st = Strace(field.pid, work / "strace.txt")
            try:
                time.sleep(1.0)
                tw0 = time.time()
                for k in range(count, count + traced_n):
                    written[(button.hex, k + 1)] = time.monotonic()
                    field.inject(frames[k], k)
                    time.sleep(3.0)
                tw1 = time.time()
            finally:
                st.stop()
            traced = {"readings": traced_n, "seconds": tw1 - tw0, **st.summary(tw0, tw1, field.journal)}
        elif traced_n:
            note = "strace not installed: commits not counted"
        assert field.sub is not None
        sub = field.sub
        c.wait_until(lambda: set(written) <= set(sub.received()), 30, 0.05)
        field.alive()
        got = sub.received()
    idle = delta(i0, i1)
    d = delta(s0, s1)
    net = {k: d[k] - idle[k] * d["t"] / idle["t"] for k in d if k != "t"}
    net["t"] = d["t"]
    lat = [(got[k][0] - t) * 1e3 for k, t in written.items() if k in got]
    return {
        "count": count, "interval_s": interval, "window_s": d["t"], "idle_s": idle["t"], "load_before": load_before,
        "load_after": load_after, "idle": idle,
        "idle_per_s": {k: v / idle["t"] for k, v in idle.items() if k != "t"},
        "per_sos": _per_reading(d, count), "per_sos_net": _per_reading(net, count),
        "latency_ms": sorted(lat), "missing": len(set(written) - set(got)),
        "duplicated": sum(len(v) - 1 for k, v in got.items() if k in written and len(v) > 1),
        "trace": traced, "trace_note": note,
    }


_ANCHOR_CODE = r"""
import json, os, resource, sqlite3, sys
path, n, body = sys.argv[1], int(sys.argv[2]), "x" * int(sys.argv[3])
for suffix in ("", "-wal", "-shm"):
    try:
        os.unlink(path + suffix)
    except FileNotFoundError:
        pass
db = sqlite3.connect(path, isolation_level=None)
db.execute("PRAGMA journal_mode=WAL")
db.execute("PRAGMA synchronous=FULL")
db.execute("PRAGMA wal_autocheckpoint=256")
db.execute("CREATE TABLE reading (seq INTEGER PRIMARY KEY, lane INTEGER, node TEXT, fcnt INTEGER, ts_us INTEGER,"
           " body TEXT)")
def io():
    return {k.strip(): int(v) for k, v in (l.split(":") for l in open("/proc/self/io"))}
def commit(i):
    db.execute("BEGIN IMMEDIATE")
    db.execute("INSERT INTO reading VALUES (?,?,?,?,?,?)", (i + 1, 2, "00b00000", i, i, body))
    db.execute("COMMIT")
for i in range(20):  # warm: the WAL exists and has grown
    commit(i)
r0, io0 = resource.getrusage(resource.RUSAGE_SELF), io()
for i in range(20, 20 + n):
    commit(i)
r1, io1 = resource.getrusage(resource.RUSAGE_SELF), io()
print(json.dumps({"commits": n, "write_bytes": io1["write_bytes"] - io0["write_bytes"],
                  "wchar": io1["wchar"] - io0["wchar"],
                  "cpu_us": (r1.ru_utime + r1.ru_stime - r0.ru_utime - r0.ru_stime) * 1e6,
                  "ctx": r1.ru_nvcsw + r1.ru_nivcsw - r0.ru_nvcsw - r0.ru_nivcsw}))
"""


def run_anchor(work: Path, commits: int) -> dict[str, Any]:
    """A bare SQLite WAL synchronous=FULL insert + commit of one reading-sized row, in its own interpreter, on the
    journal's folder: per commit, bytes written, CPU µs and context switches."""
    work.mkdir(parents=True, exist_ok=True)
    out = subprocess.run([sys.executable, "-c", _ANCHOR_CODE, str(work / "anchor.db"), str(commits),
                          str(ANCHOR_BODY_BYTES)], capture_output=True, text=True, timeout=300)
    if out.returncode != 0:
        raise BenchError(f"SQLite anchor failed: {out.stderr.strip()[-500:]}")
    r = json.loads(out.stdout)
    return {"commits": r["commits"], **{k: r[k] / r["commits"] for k in ("write_bytes", "wchar", "cpu_us", "ctx")}}


#: The floor anchor: the field work of a gateway with no product logic, in its own interpreter. It reads the
#: radio lines from a pty (one select + one read per wake-up), keeps each frame as a row, and at the end of each
#: window (FLOOR_WINDOW_S, the agent's default commit window, or the agent's --commit-window-ms) commits the
#: window's rows to SQLite (WAL, synchronous=FULL, one transaction) and publishes one MQTT QoS 1 message with them
#: (paho, the agent's client, MQTTv5, its network thread). argv: pty, database, broker host, port, frames to warm
#: up, frames to measure, window (s). Prints its CPU (utime+stime of all its threads, µs) and context switches
#: between the warm-up's end and the last measured frame's commit and PUBACK.
FLOOR_WINDOW_S = 0.25
_FLOOR_CODE = r"""
import json, os, resource, select, sqlite3, sys, time, tty
import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion
path, dbpath, host, port, warm, n = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5]), \
    int(sys.argv[6])
WINDOW_S = float(sys.argv[7])
fd = os.open(path, os.O_RDWR | os.O_NOCTTY | os.O_NONBLOCK)
tty.setraw(fd)
db = sqlite3.connect(dbpath, isolation_level=None)
db.execute("PRAGMA journal_mode=WAL")
db.execute("PRAGMA synchronous=FULL")
db.execute("CREATE TABLE IF NOT EXISTS frame (seq INTEGER PRIMARY KEY, ts_us INTEGER, rssi INTEGER, snr INTEGER,"
           " payload TEXT)")
client = mqtt.Client(callback_api_version=CallbackAPIVersion.VERSION2, client_id="floor",
                     protocol=MQTTProtocolVersion.MQTTv5)
client.connect(host, port)
client.loop_start()
rows, buf, count, deadline, last = [], b"", 0, 0.0, None
print("ready", flush=True)
def commit():
    db.execute("BEGIN IMMEDIATE")
    db.executemany("INSERT INTO frame (ts_us, rssi, snr, payload) VALUES (?,?,?,?)", rows)
    db.execute("COMMIT")
    return client.publish("floor/readings", json.dumps(rows), qos=1)
while count < warm + n or rows:
    now = time.monotonic()
    if rows and now >= deadline:
        last = commit()
        rows = []
        if count >= warm + n:
            break
        continue
    ready, _, _ = select.select([fd], [], [], max(0.0, deadline - now) if rows else 5.0)
    if not ready:
        if not rows:
            sys.exit("floor: no frame for 5 s")
        continue
    buf += os.read(fd, 4096)
    *lines, buf = buf.split(b"\r\n")
    for line in lines:
        if line.startswith(b"+EVT:RXP2P:"):
            _, _, rssi, snr, hexpayload = line.decode().split(":")
            if not rows:
                deadline = time.monotonic() + WINDOW_S
            rows.append((time.time_ns() // 1000, int(rssi), int(snr), hexpayload))
            count += 1
            if count == warm:
                r0 = resource.getrusage(resource.RUSAGE_SELF)
last.wait_for_publish(10)
r1 = resource.getrusage(resource.RUSAGE_SELF)
client.loop_stop()
client.disconnect()
print(json.dumps({"frames": n, "cpu_us": (r1.ru_utime + r1.ru_stime - r0.ru_utime - r0.ru_stime) * 1e6,
                  "ctx": r1.ru_nvcsw + r1.ru_nivcsw - r0.ru_nvcsw - r0.ru_nivcsw}), flush=True)
"""


def run_floor(work: Path, rate: int, seconds: float, window_s: float = FLOOR_WINDOW_S) -> dict[str, Any]:
    """The floor anchor (:data:`_FLOOR_CODE`) at ``rate`` frames/s for ``seconds``, committing every ``window_s``:
    the same frames, one per pty write, on the same Mosquitto's kind of broker and the journal's folder. Per frame:
    CPU µs, context switches."""
    import tty  # noqa: PLC0415

    from agent.dev.devbroker import Mosquitto  # noqa: PLC0415
    from tests.bench import _common as c  # noqa: PLC0415

    work.mkdir(parents=True, exist_ok=True)
    warm, n = max(1, round(3 * rate)), max(1, round(seconds * rate))
    nodes = c.telemetry_nodes(200)
    lines = [f"+EVT:RXP2P:{-80 - i % 40}:{8 - i % 15}:{f.hex().upper()}\r\n".encode()
             for i, f in enumerate(c.telemetry_frames(nodes, warm + n))]
    master, slave = os.openpty()
    tty.setraw(slave)
    broker = Mosquitto(work / "broker")
    broker.start()
    proc = None
    try:
        proc = subprocess.Popen([sys.executable, "-c", _FLOOR_CODE, os.ttyname(slave), str(work / "floor.db"),
                                 broker.host, str(broker.port), str(warm), str(n), str(window_s)],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        assert proc.stdout is not None
        if proc.stdout.readline().strip() != "ready":
            raise BenchError(f"floor anchor did not start: {proc.stderr.read()[-500:] if proc.stderr else ''}")
        t_next, period = time.monotonic(), 1.0 / rate
        for line in lines:
            sleep_until(t_next)
            os.write(master, line)
            t_next += period
        out, err = proc.communicate(timeout=60)
    finally:
        end(proc, 10)
        if proc is not None and proc.stdout is not None:
            proc.stdout.close()
        broker.stop()
        os.close(master)
        os.close(slave)
    if proc.returncode != 0:
        raise BenchError(f"floor anchor failed: {err.strip()[-500:]}")
    r = json.loads(out.strip().splitlines()[-1])
    return {"rate": rate, "frames": r["frames"], "cpu_us": r["cpu_us"] / r["frames"], "ctx": r["ctx"] / r["frames"],
            "window_s": window_s}


def card_years(bytes_per_day: float) -> list[dict[str, Any]]:
    """Projected life of each assumed card (years) at ``bytes_per_day`` written by the agent."""
    out = []
    for label, cap, pe, wa, source in CARDS:
        budget = cap * pe / wa
        years = budget / bytes_per_day / 365.25 if bytes_per_day > 0 else float("inf")
        out.append({"card": label, "host_bytes": budget, "years": years,
                    "assumption": f"{cap / 1e9:.0f} GB x {pe:,} P/E / WA {wa:g}", "source": source})
    return out


def run(p: dict[str, Any]) -> dict[str, Any]:
    """The whole field-rate measurement with plan ``p`` (see :data:`PLANS`; plus ``dir``, ``allow_tmpfs``,
    ``strace``, ``keep``). Returns every figure."""
    base = Path(p["dir"]) if p.get("dir") else Path(tempfile.gettempdir())
    base.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="denen-bench-field-", dir=base))
    fs = filesystem_of(work)
    if fs["fstype"] in RAM_FILESYSTEMS and not p.get("allow_tmpfs"):
        shutil.rmtree(work, ignore_errors=True)
        raise BenchError(f"{work} is on {fs['fstype']} ({fs['mount']}): bytes written there never reach a disk. "
                         "Give --dir a folder on the disk the journal would use, or --allow-tmpfs to measure anyway")
    use_strace = bool(p.get("strace", True)) and shutil.which("strace") is not None
    try:
        print(f"field: journals in {work} on {fs['fstype']} ({fs['device']} at {fs['mount']})", file=sys.stderr)
        result: dict[str, Any] = {
            "plan": {k: v for k, v in p.items() if k not in ("dir",)}, "workdir": str(work), "filesystem": fs,
            "tmpfs_allowed": fs["fstype"] in RAM_FILESYSTEMS, "strace": shutil.which("strace"),
            "strace_used": use_strace, "python": platform.python_version(), "cpus": os.cpu_count(),
            "kernel": platform.release(), "load_start": _loadavg(), "page_size": os.sysconf("SC_PAGE_SIZE"),
            "cards": card_years(1.0),
        }
        t = time.monotonic()
        result["anchor"] = run_anchor(work / "anchor", p["anchor_commits"])
        print(f"  anchor {time.monotonic() - t:.1f} s", file=sys.stderr)
        t = time.monotonic()
        # The floor commits as often as the agent: its window, or the config's default.
        window_ms = p.get("commit_window_ms")
        result["floor"] = run_floor(work / "floor", TARGET_RATE, p["seconds"],
                                    FLOOR_WINDOW_S if window_ms is None else window_ms / 1000)
        print(f"  floor anchor at {TARGET_RATE}/s {time.monotonic() - t:.1f} s", file=sys.stderr)
        result["rates"] = []
        for rate in p["rates"]:
            t = time.monotonic()
            print(f"  {rate}/s for {p['seconds']:g} s ...", end="", flush=True, file=sys.stderr)
            r = run_rate(work / f"rate-{rate}", rate, p, use_strace)
            r["cards"] = card_years(r["per_reading"]["write_bytes"] * rate * 86400)
            result["rates"].append(r)
            print(f" {time.monotonic() - t:.1f} s", file=sys.stderr)
        if not p.get("sos", True):
            result["load_end"] = _loadavg()
            return result
        t = time.monotonic()
        print(f"  SOS: idle {p['idle_s']:g} s, then {p['sos_count']} SOS one per {p['sos_interval_s']:g} s ...",
              end="", flush=True, file=sys.stderr)
        result["sos"] = run_sos(work / "sos", p, use_strace)
        print(f" {time.monotonic() - t:.1f} s", file=sys.stderr)
        idle_bps = result["sos"]["idle_per_s"]["write_bytes"]
        result["idle_cards"] = card_years(idle_bps * 86400)
        result["load_end"] = _loadavg()
        return result
    finally:
        if not p.get("keep"):
            shutil.rmtree(work, ignore_errors=True)


# -- the table ----------------------------------------------------------------------------------------------------
def _commits(trace: dict[str, Any] | None) -> dict[str, float] | None:
    """From a strace summary: per reading, journal syncs (all files), WAL syncs (commits), db syncs (checkpoints),
    WAL pages and bytes written; and WAL pages per commit."""
    if not trace:
        return None
    n = trace["readings"]
    files = trace["files"]
    wal, db = files.get("wal", {}), files.get("db", {})
    wal_syncs = wal.get("syncs", 0)
    # A checkpoint syncs the WAL before copying it into the database: a WAL sync with no page written since the
    # last one. Every other WAL sync ends a commit.
    empty = trace.get("commit_pages", {}).get("0", trace.get("commit_pages", {}).get(0, 0))
    commits = wal_syncs - empty
    return {
        "syncs": (wal_syncs + db.get("syncs", 0)) / n, "commits": commits / n, "checkpoints": db.get("syncs", 0) / n,
        "wal_pages": wal.get("page_writes", 0) / n, "wal_bytes": wal.get("bytes", 0) / n,
        "db_pages": db.get("page_writes", 0) / n, "log_bytes": files.get("log", {}).get("bytes", 0) / n,
        "pages_per_commit": wal.get("page_writes", 0) / commits if commits else float("nan"),
        "seconds": trace["seconds"], "readings": n,
        "commit_pages": trace.get("commit_pages", {}), "execs": trace.get("execs", {}),
    }


def _commit_sizes(cm: dict[str, Any]) -> str:
    """``"5 pages ×40, 6 pages ×50"``: WAL pages per commit, the commonest sizes first (JSON keys are text)."""
    sizes = sorted(((int(k), v) for k, v in cm["commit_pages"].items() if int(k)), key=lambda kv: (-kv[1], kv[0]))
    return ", ".join(f"{k} pages ×{v}" for k, v in sizes[:4]) + (", ..." if len(sizes) > 4 else "")


def _execs(cm: dict[str, Any]) -> str:
    if not cm["execs"]:
        return "no programs started"
    per_min = 60 / cm["seconds"] if cm["seconds"] else 0
    return "programs started: " + ", ".join(f"{k} ×{v} ({v * per_min:.1f}/min)" for k, v in cm["execs"].items())


def add_rows(table: Any, r: dict[str, Any]) -> None:
    """The figures of :func:`run` as rows of the bench table (``tests.bench._common.Table``)."""
    from tests.bench import _common as c  # noqa: PLC0415

    sec = "field"
    fs = r["filesystem"]
    a = r["anchor"]
    kib = 1024.0
    fsnote = f"journal on {fs['fstype']} ({fs['device']})" + (" — RAM, NOT A DISK: bytes meaningless"
                                                                if r["tmpfs_allowed"] else "")
    table.add(sec, "anchor: bare SQLite WAL synchronous=FULL, insert + commit of one 266-byte row, same folder",
              a["write_bytes"] / kib, "KiB/commit",
              note=f"CPU {c.fmt(a['cpu_us'])} µs, {c.fmt(a['ctx'])} context switches, wchar "
              f"{c.fmt(a['wchar'] / kib)} KiB per commit; {a['commits']} commits; {fsnote}")
    fl = r.get("floor")
    if fl:
        table.add(sec, f"anchor: the floor, Python field work with no product logic, at {fl['rate']}/s", fl["cpu_us"],
                  "µs/frame", note=f"one select + read per pty frame, every {fl['window_s'] * 1e3:.0f} ms one SQLite WAL "
                  f"synchronous=FULL commit of the window's rows and one paho QoS 1 publish of them to Mosquitto; "
                  f"{c.fmt(fl['ctx'])} context switches per frame; {fl['frames']:,} frames")
    sos = r.get("sos")
    idle = sos["idle_per_s"] if sos else None
    if idle:
        table.add(sec, "idle agent (no frames), per second", idle["write_bytes"] / kib, "KiB/s",
                  note=f"CPU {c.fmt(idle['cpu_us'] / 1e4)} % of a core, "
                  f"{c.fmt(idle['voluntary'] + idle['nonvoluntary'])} wakeups/s, over {sos['idle_s']:.0f} s; "
                  "health every 3600 s in this config")
    for x in r["rates"]:
        rate, pr = x["rate"], x["per_reading"]
        at_target = rate == TARGET_RATE
        load = f"load {x['load_before'][0]:.2f}→{x['load_after'][0]:.2f}"
        head = f"{rate}/s"
        table.add(sec, f"{head}: written to disk (write_bytes) per reading", pr["write_bytes"] / kib, "KiB",
                  anchor=f"bare commit {c.fmt(a['write_bytes'] / kib)} KiB",
                  ratio=pr["write_bytes"] / a["write_bytes"] if a["write_bytes"] else None,
                  target=f"≤ {TARGET_BYTES_PER_READING / kib:g} KiB at {TARGET_RATE}/s" if at_target else "",
                  ok=pr["write_bytes"] <= TARGET_BYTES_PER_READING if at_target else None,
                  note=f"{x['readings']:,} readings in {x['window_s']:.1f} s; wchar {c.fmt(pr['wchar'] / kib)} KiB, "
                  f"{c.fmt(pr['syscw'])} write calls; {c.fmt(pr['write_bytes'] * rate * 86400 / 1e9)} GB/day; {load}; "
                  f"pacing late ≤ {c.fmt(x['late_max_ms'])} ms")
        cpu = pr["cpu_us"] + pr["children_cpu_us"]
        floor = fl if fl and fl["rate"] == rate else None
        table.add(sec, f"{head}: CPU (utime+stime, with reaped children) per reading", cpu, "µs",
                  anchor=f"floor {c.fmt(floor['cpu_us'])} µs" if floor else f"bare commit {c.fmt(a['cpu_us'])} µs",
                  ratio=cpu / (floor["cpu_us"] if floor else a["cpu_us"]) if (floor or a["cpu_us"]) else None,
                  target=f"≤ {TARGET_CPU_US_PER_READING:g} µs at {TARGET_RATE}/s" if at_target else "",
                  ok=cpu <= TARGET_CPU_US_PER_READING if at_target else None,
                  note=f"agent's threads {c.fmt(pr['cpu_us'])} µs (of which system {c.fmt(pr['stime_us'])} µs; "
                  f"schedstat run time {c.fmt(pr['run_us'])} µs), "
                  f"child processes {c.fmt(pr['children_cpu_us'])} µs (10 ms ticks); {c.fmt(cpu * rate / 1e4)} % of a "
                  f"core" + (f"; idle agent {c.fmt(idle['cpu_us'] / rate)} µs of it" if idle else ""))
        table.add(sec, f"{head}: context switches per reading", pr["ctx"], "",
                  anchor=f"bare commit {c.fmt(a['ctx'])}", ratio=pr["ctx"] / a["ctx"] if a["ctx"] else None,
                  note=f"{c.fmt(pr['voluntary'])} voluntary + {c.fmt(pr['nonvoluntary'])} involuntary; "
                  f"{x['threads']} threads")
        cm = _commits(x["trace"])
        if cm is not None:
            table.add(sec, f"{head}: commits (WAL fdatasync after page writes) per reading", cm["commits"], "",
                      note=f"strace, {cm['readings']:,} readings in {cm['seconds']:.0f} s after the window; all "
                      f"fdatasync {c.fmt(cm['syncs'])} per reading; WAL "
                      f"{c.fmt(cm['wal_pages'])} pages ({c.fmt(cm['wal_bytes'] / kib)} KiB) per reading, "
                      f"{c.fmt(cm['pages_per_commit'])} pages per commit; checkpoints (db fdatasync) "
                      f"{c.fmt(cm['checkpoints'])} and {c.fmt(cm['db_pages'])} db pages per reading; log "
                      f"{c.fmt(cm['log_bytes'])} B per reading; commits: {_commit_sizes(cm)}; {_execs(cm)}")
        else:
            table.add(sec, f"{head}: commits per reading", None, "",
                      note=x["trace_note"] or "not measured (--no-strace)")
        rpm = x["readings_in_messages"] / x["messages"] if x["messages"] else None
        table.add(sec, f"{head}: readings per MQTT message (at the subscriber)", rpm, "",
                  target="0 missing, 0 duplicated", ok=x["missing"] == 0 and x["duplicated"] == 0
                  and x["unexpected"] == 0 and not x["bad_messages"],
                  note=f"{x['messages']:,} reading messages + {x['other_messages']} others in the window; all "
                  f"{x['sent_total']:,} sent: {x['missing']} missing, {x['duplicated']} duplicated, "
                  f"{x['unexpected']} unexpected")
        life = x["cards"]
        table.add(sec, f"{head}: projected SD-card life, {life[0]['card']}", life[0]["years"], "years",
                  note="; ".join(f"{cd['card']}: {cd['assumption']} = {cd['host_bytes'] / 1e12:g} TB host writes"
                                 + ("" if cd is life[0] else f" → {c.fmt(cd['years'])} years") for cd in life)
                  + "; write_bytes only (ext4 journal and card-internal amplification beyond the WA not counted)")
    if sos:
        _add_sos_rows(table, sos, a)


def _add_sos_rows(table: Any, sos: dict[str, Any], a: dict[str, Any]) -> None:
    """The SOS-alone rows of the bench table (``a``: the anchor's figures)."""
    from tests.bench import _common as c  # noqa: PLC0415

    sec, kib = "field", 1024.0
    ps, net = sos["per_sos"], sos["per_sos_net"]
    per = f"one per {sos['interval_s']:g} s, {sos['count']} SOS"
    table.add(sec, f"SOS alone ({per}): written to disk per SOS, net of idle", net["write_bytes"] / kib, "KiB",
              anchor=f"bare commit {c.fmt(a['write_bytes'] / kib)} KiB",
              ratio=net["write_bytes"] / a["write_bytes"] if a["write_bytes"] else None,
              note=f"with the idle {sos['interval_s']:g} s around it {c.fmt(ps['write_bytes'] / kib)} KiB; wchar "
              f"{c.fmt(net['wchar'] / kib)} KiB net; load {sos['load_before'][0]:.2f}→{sos['load_after'][0]:.2f}")
    table.add(sec, "SOS alone: CPU per SOS, net of idle", net["cpu_us"], "µs",
              anchor=f"bare commit {c.fmt(a['cpu_us'])} µs",
              ratio=net["cpu_us"] / a["cpu_us"] if a["cpu_us"] else None,
              note=f"with idle {c.fmt(ps['cpu_us'])} µs; schedstat {c.fmt(net['run_us'])} µs net; child processes "
              f"{c.fmt(net['children_cpu_us'])} µs; context switches {c.fmt(net['ctx'])} net, "
              f"{c.fmt(ps['ctx'])} with idle")
    cm = _commits(sos["trace"])
    if cm is not None:
        table.add(sec, "SOS alone: commits (WAL fdatasync after page writes) per SOS", cm["commits"], "",
                  note=f"strace, {cm['readings']} more SOS 3 s apart; WAL {c.fmt(cm['wal_pages'])} pages per SOS, "
                  f"checkpoints {c.fmt(cm['checkpoints'])} per SOS; commits: {_commit_sizes(cm)}; {_execs(cm)}")
    lat = sos["latency_ms"]
    if lat:
        table.add(sec, "SOS alone: pty write → subscriber receives it, max", max(lat), "ms",
                  target=f"(PUBACK p99 ≤ {TARGET_SOS_MS:g} ms)",
                  note=f"{len(lat)} SOS (incl. the traced ones), median {c.fmt(sorted(lat)[len(lat) // 2])} ms; an "
                  f"upper bound of pty → PUBACK; {sos['missing']} missing, {sos['duplicated']} duplicated")


def notes(r: dict[str, Any]) -> list[str]:
    """What the figures count and what they do not, for under the table."""
    fs = r["filesystem"]
    out = [
        f"Journal folder on {fs['fstype']} ({fs['device']} mounted at {fs['mount']}, {fs['options']})"
        + (" — tmpfs allowed by --allow-tmpfs: the disk bytes mean nothing" if r["tmpfs_allowed"] else "")
        + f"; load average {r['load_start'][0]:.2f} at start, {r['load_end'][0]:.2f} at end; {r['cpus']} CPUs.",
        "write_bytes is counted by the kernel when a page-cache page of a file goes from clean to dirty (4 KiB "
        "granularity), in the process that dirties it; with synchronous=FULL each commit's fdatasync cleans its "
        "pages, so every commit's WAL pages count again and so do checkpoint writes to the database (done by the "
        "committing thread). Not counted: the ext4 journal (jbd2), the -shm WAL index (an mmap, written back by the "
        "flusher), the card's internal write amplification.",
        "Commits come from strace attached after the measured window (the agent keeps no commit counter): WAL "
        "fdatasync = commits, database fdatasync = checkpoints; pwrite64 bytes per file give the WAL pages.",
        "SD-card assumptions: " + "; ".join(f"{cd['card']} = {cd['assumption']} = {cd['host_bytes'] / 1e12:g} TB "
                                            f"({cd['source']})" for cd in r["cards"]) + ".",
    ]
    idle_years = r.get("idle_cards")
    window = r["plan"].get("commit_window_ms")
    if window is not None:
        out.append(f"The agent ran with journal.commit_window_ms: {window} (--commit-window-ms), not the default.")
    if "sos" not in r:
        out.append("SOS alone and the idle agent not measured (--no-sos).")
    elif idle_years and r["sos"]["idle_per_s"]["write_bytes"] <= 0:
        out.append(f"An idle agent wrote nothing in {r['sos']['idle_s']:.0f} s (no wear while no frame arrives).")
    elif idle_years:
        years = ", ".join(f"{cd['card']}: {cd['years']:.0f} years" for cd in idle_years)
        out.append(f"An idle agent alone writes {r['sos']['idle_per_s']['write_bytes'] * 86400 / 1e6:.1f} MB/day "
                   f"({years}).")
    return out


def _parse_rates(text: str) -> list[int]:
    rates = []
    for part in text.split(","):
        part = part.strip()
        if not part:
            continue
        if not part.isdigit() or not 1 <= int(part) <= 2000:
            raise ValueError(f"rate {part!r} is not a whole number of frames per second from 1 to 2000")
        rates.append(int(part))
    if not rates:
        raise ValueError("no rate given")
    return rates


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m tests.bench.bench_field", description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="10 s at 2 and 20 frames/s, SOS one per 10 s for 60 s")
    ap.add_argument("--rates", help="comma-separated telemetry frames per second (default 2,20,200; quick 2,20)")
    ap.add_argument("--seconds", type=float, help="measured seconds per rate (default 30; quick 10)")
    ap.add_argument("--json", metavar="PATH", help="also write every figure as JSON")
    ap.add_argument("--dir", metavar="DIR", help="folder for the journals (default: the temp folder); must be on "
                    "the disk the journal would use")
    ap.add_argument("--allow-tmpfs", action="store_true", help="measure even if DIR is on tmpfs (bytes meaningless)")
    ap.add_argument("--no-strace", action="store_true", help="do not attach strace to count commits")
    ap.add_argument("--keep", action="store_true", help="keep the work folder (journals, logs, strace output)")
    ap.add_argument("--no-sos", action="store_true", help="measure the rates only (no idle agent, no SOS alone)")
    ap.add_argument("--commit-window-ms", type=int, metavar="MS", help="journal.commit_window_ms of the agent "
                    "(default: the config's), to measure what the window buys")
    args = ap.parse_args(argv)
    plan = dict(PLANS["quick" if args.quick else "full"])
    if args.rates is not None:
        try:
            plan["rates"] = _parse_rates(args.rates)
        except ValueError as exc:
            ap.error(f"--rates: {exc}")
    if args.seconds is not None:
        if not 1 <= args.seconds <= 3600:
            ap.error("--seconds: give 1 to 3600")
        plan["seconds"] = args.seconds
    plan.update(dir=args.dir, allow_tmpfs=args.allow_tmpfs, strace=not args.no_strace, keep=args.keep,
                sos=not args.no_sos, commit_window_ms=args.commit_window_ms)
    if args.commit_window_ms is not None and not 0 <= args.commit_window_ms <= 10_000:
        ap.error("--commit-window-ms: give 0 to 10000")
    if args.dir is not None and not Path(args.dir).is_dir():
        ap.error(f"--dir: {args.dir} is not a folder")
    from tests.bench import _common as c  # noqa: PLC0415
    from tests.bench.run import _git_state  # noqa: PLC0415

    command = "python -m tests.bench.bench_field " + " ".join(argv if argv is not None else sys.argv[1:])
    t = time.monotonic()
    git_start = _git_state()
    try:
        r = run(plan)
    except (BenchError, OSError, sqlite3.Error, subprocess.SubprocessError) as exc:
        print(f"bench_field: {exc}", file=sys.stderr)
        return 2
    r["command"] = command.strip()
    r["git_start"] = git_start
    r["git"] = _git_state()
    r["elapsed_s"] = time.monotonic() - t
    table = c.Table()
    add_rows(table, r)
    code = r["git"] if r["git"] == git_start else f"{git_start} at start, {r['git']} at end"
    print(f"`{r['command']}` ({r['elapsed_s']:.0f} s; code {code}; Python {r['python']}, {r['cpus']} CPUs, "
          f"kernel {r['kernel']})")
    print()
    print(table.markdown())
    print()
    for n in notes(r):
        print(f"- {n}")
    if args.json:
        c.write_json(args.json, {"result": r, "rows": table.rows, "notes": notes(r)})
    bad = [row for row in table.rows if row["verdict"] == "MISSED" and "missing" in row["target"]]
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
