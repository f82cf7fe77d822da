"""Benchmark of the agent (and the backend) against same-run anchors: naive paho, a C client, raw disk and InfluxDB.

Usage::

    python -m tests.bench.run [--quick] [--json PATH] [--repeat N] [--only SECTIONS] [--profile DIR]

Sections (``--only`` takes a comma-separated list; default all):

``anchors``   raw fsync latency, SQLite WAL + synchronous=FULL commit rates (one row per commit and 1000 rows
              per commit), and the agent's decode path alone on one thread (a CPU anchor).
``ab``        (a) naive paho with its defaults (Nagle on), one reading per QoS 1 message, at most 100 unacknowledged,
              no journal, and the same with TCP_NODELAY; (b) the agent
              from pty line to PUBACK with the durable journal; and (a') the C anchor, ``mosquitto_pub -q 1 -l``
              publishing the same readings one per line, at most 100 in flight (timed by a C subscriber from the
              first to the last arrival, see ``_trials.c_anchor``); interleaved a, b, a', a, b, a' ...
              so machine noise hits all alike; ratios are taken per round and their median reported. Also naive
              variants.
``settings``  (b) again with other ``batch_max_readings`` / ``inflight_window`` settings.
``sos``       (c) SOS latency from pty line to PUBACK while a 100,000-reading backlog drains, and idle; with the
              default settings and (full run) a few other batch / window settings.
``rss``       (d) RSS of ``python -m agent.cli run`` with 200 and with 2,000 keyed nodes after start-up, after paced
              traffic and after a burst; its idle CPU; and bare-interpreter floors, with what each import step adds.
``idle``      (e) wakeups per second and CPU of an idle ``python -m agent.cli run`` (two simulated radios configured,
              broker connected, config defaults) over 60 s, in total and per thread, with where each thread waits.
``drain``     (f) time from broker-up to the last PUBACK for 1,000,000 readings already journaled (``--quick``:
              200,000, and it says so).
``bridge``    (g) ``tests.bench.bench_bridge``: the bridge against a raw InfluxDB 1.6.7 write, and 1 against 2
              ``denen bridge`` processes sharing the subscription.
``fleet``     (h) ``tests.bench.bench_fleet``: 1,000 gateways (own logins, production ACL) against one Mosquitto and
              one ``denen bridge``: lag per phase, rates, backlog drain, loss.
``startup``   ``tests.bench.bench_startup``: wall time of ``denen --help``, ``--version``, ``status -j J --json`` and
              ``config validate`` of a 2,000-node config beside ``python -c pass`` in the same run, and the heavy
              modules each one imports.
``field``     ``tests.bench.bench_field``: what a real ``denen run`` pays per reading at 2, 20 and 200 telemetry
              frames/s (``--quick``: 2 and 20, 10 s each) and per SOS at one a minute, on the journal's real disk:
              bytes written (write_bytes, wchar), CPU, commits, context switches, MQTT messages, SD-card life.

Every trial runs in a fresh Python process, so no trial inherits threads, memory or interpreter settings (the
gateway shortens the GIL switch interval) from another. Results are printed as a Markdown table and, with
``--json``, written as JSON with every repeat's raw figures.

With ``--profile DIR`` one more (b) run and one more (c) run are sampled with py-spy (``pip install py-spy``
into the venv; the measured runs are not profiled) and the time per thread and per function is summarised in the
notes under the table; the raw collapsed stacks stay in DIR.
"""

from __future__ import annotations

import argparse
import collections
import json
import math
import os
import platform
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from tests.bench import _common as c
from tests.bench import _trials

REPO = Path(__file__).resolve().parents[2]

#: Sizes of the full run and of ``--quick``.
PLANS: dict[str, dict[str, Any]] = {
    "full": {
        "n": 100_000, "repeat": 5, "nodes": 300, "fsyncs": 1000, "row_commits": 1000, "group_commits": 50,
        "decode_n": 50_000, "backlog": 100_000, "sos_min_samples": 200, "sos_max_rounds": 30, "idle_samples": 200,
        "rss_traffic": 20_000, "rss_paced": 5_000, "settings_repeat": 3,
        "settings": [(50, 8), (1000, 8), (200, 1), (200, 32), (1000, 32)],
        "sos_settings": [(50, 8), (1000, 8), (200, 2)], "sos_settings_samples": 100,
        "rss_nodes_large": 2000, "idle_window_s": 60, "idle_settle_s": 5, "drain_backlog": 1_000_000,
        "drain_rounds": 3,
    },
    "quick": {
        "n": 20_000, "repeat": 3, "nodes": 300, "fsyncs": 300, "row_commits": 300, "group_commits": 10,
        "decode_n": 20_000, "backlog": 100_000, "sos_min_samples": 30, "sos_max_rounds": 2, "idle_samples": 50,
        "rss_traffic": 5_000, "rss_paced": 1_000, "settings_repeat": 1,
        "settings": [(1000, 8)],
        "sos_settings": [], "sos_settings_samples": 0,
        "rss_nodes_large": 2000, "idle_window_s": 20, "idle_settle_s": 3, "drain_backlog": 200_000,
        "drain_rounds": 1,
    },
}
SECTIONS = ("anchors", "ab", "settings", "sos", "rss", "idle", "drain", "bridge", "fleet", "startup", "field")
NAIVE_WINDOW = 100
SOS_INTERVAL_S = 0.020
TARGET_RATIO = 3.0
TARGET_SOS_P99_MS = 5.0
TARGET_RSS_MIB = 45.0
TARGET_FSYNCS_PER_READING = 0.05
TARGET_WAKEUPS_PER_S = 2.0
TARGET_DRAIN_S = 60.0
#: Readings of the drain the target is stated for.
DRAIN_TARGET_READINGS = 1_000_000


class Runner:
    """Starts trial processes and keeps their raw results."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.count = 0
        self.raw: dict[str, list[dict[str, Any]]] = collections.defaultdict(list)
        self.errors: list[str] = []

    def trial(self, name: str, label: str, params: dict[str, Any], timeout: float = 900) -> dict[str, Any] | None:
        self.count += 1
        work = self.workdir / f"{self.count:03d}-{label}"
        work.mkdir(parents=True)
        params = {**params, "workdir": str(work)}
        out = work / "result.json"
        err = work / "stderr.txt"
        t = time.monotonic()
        print(f"  {label} ...", end="", flush=True, file=sys.stderr)
        with err.open("wb") as ef:
            try:
                proc = subprocess.run(
                    [sys.executable, "-m", "tests.bench.run", "--trial", name, "--params",
                     _trials.params_json(params), "--out", str(out)],
                    cwd=REPO, stdout=ef, stderr=subprocess.STDOUT, timeout=timeout,
                )
                rc = proc.returncode
            except subprocess.TimeoutExpired:
                rc = None
        took = time.monotonic() - t
        result: dict[str, Any] | None = None
        if out.exists():
            data = json.loads(out.read_text())
            if data["ok"]:
                result = data["result"]
            else:
                self.errors.append(f"{label}: {data['error']}")
        else:
            tail = err.read_text(errors="replace")[-1500:]
            self.errors.append(f"{label}: trial process {'timed out' if rc is None else f'exited {rc}'}: {tail}")
        print(f" {took:.1f} s" + ("" if result is not None else "  FAILED"), file=sys.stderr)
        if result is not None:
            result["_wall_s"] = took
            self.raw[label].append(result)
        return result

    def values(self, label: str, key: str) -> list[float]:
        return [r[key] for r in self.raw.get(label, []) if r.get(key) is not None]


# -- profile summary ------------------------------------------------------------------------------------
def summarize_profile(paths: Path | list[Path], top: int = 12) -> dict[str, Any]:
    """Fold a py-spy ``raw`` (collapsed stacks) file: samples per thread, and per function on the core thread.

    Each line is ``frame;frame;...;frame COUNT`` with the thread as the first frame (``--threads``). Idle samples
    are not recorded (py-spy's default), so shares are of busy time (on CPU, or waiting for the GIL).
    """
    per_thread: collections.Counter[str] = collections.Counter()
    inclusive: dict[str, collections.Counter[str]] = collections.defaultdict(collections.Counter)
    leaf: dict[str, collections.Counter[str]] = collections.defaultdict(collections.Counter)
    total = 0
    text = "\n".join(p.read_text(errors="replace") for p in ([paths] if isinstance(paths, Path) else paths))
    for line in text.splitlines():
        stack, _, count_s = line.rpartition(" ")
        if not stack or not count_s.isdigit():
            continue
        count = int(count_s)
        frames = stack.split(";")
        # With --threads the first frame is "thread (0xTID): <name>"; the agent names its threads (core,
        # radio-<name>, mqtt-link, pty-<name>); the bench's own pty writer is the main thread.
        thread = frames[0].split(": ", 1)[-1]
        if thread.startswith("radio-"):
            thread = "radio"
        per_thread[thread] += count
        total += count
        seen = set()
        for f in frames[1:]:
            fn = _short(f)
            if fn not in seen and not fn.startswith(_PLUMBING):
                inclusive[thread][fn] += count
                seen.add(fn)
        if len(frames) > 1:
            leaf[thread][_short(frames[-1])] += count
    def share(counts: dict[str, collections.Counter[str]], thread: str, k: int) -> dict[str, float]:
        busy = per_thread[thread]
        return {f: n / busy for f, n in counts[thread].most_common(k)} if busy else {}

    return {
        "samples": total,
        "threads": {t: n / total for t, n in per_thread.most_common()} if total else {},
        "core_inclusive": share(inclusive, "core", top * 2),
        "core_self": share(leaf, "core", top),
        "radio_self": share(leaf, "radio", 6),
        "mqtt_self": share(leaf, "mqtt-link", 6),
    }


#: Frames every sample of a thread goes through; left out of the inclusive listing.
_PLUMBING = ("Thread._bootstrap", "Thread.run ", "Gateway.run ", "Probe.__init__.<locals>")


def _short(frame: str) -> str:
    """``func (path/to/file.py:123)`` -> ``func (file.py)``: group the lines of one function together."""
    name, _, where = frame.partition(" (")
    where = where.rstrip(")")
    file = where.rsplit(":", 1)[0]
    parts = file.split("/")
    if "site-packages" in parts:
        file = "/".join(parts[parts.index("site-packages") + 1:][:2])
    elif len(parts) > 2:
        file = "/".join(parts[-2:])
    return f"{name} ({file})"


# -- the table -------------------------------------------------------------------------------------------
Table = c.Table


def _nan(x: float | None) -> bool:
    return x is None or (isinstance(x, float) and math.isnan(x))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m tests.bench.run", description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="smaller sizes: a smoke run of about 5 minutes")
    ap.add_argument("--json", metavar="PATH", help="also write the table and every raw figure as JSON")
    ap.add_argument("--repeat", type=int, default=None, help="repeats of (a) and (b) (default 5, quick 3)")
    ap.add_argument("--only", default=",".join(SECTIONS), help=f"comma-separated sections: {','.join(SECTIONS)}")
    ap.add_argument("--profile", metavar="DIR",
                    help="sample one extra (b) and (c) run with py-spy; raw stacks kept in DIR")
    ap.add_argument("--keep", action="store_true", help="keep the work folder (journals, broker and trial logs)")
    # Internal: one trial in this process (the orchestrator starts these).
    ap.add_argument("--trial", help=argparse.SUPPRESS)
    ap.add_argument("--params", help=argparse.SUPPRESS)
    ap.add_argument("--out", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.trial:
        return _trials.run_trial(args.trial, json.loads(args.params), args.out)

    sections = [s.strip() for s in args.only.split(",") if s.strip()]
    unknown = set(sections) - set(SECTIONS)
    if unknown:
        ap.error(f"unknown section(s): {', '.join(sorted(unknown))}")
    plan = dict(PLANS["quick" if args.quick else "full"])
    if args.repeat:
        plan["repeat"] = args.repeat
    given = argv if argv is not None else sys.argv[1:]
    command = "python -m tests.bench.run " + " ".join(shlex.quote(a) for a in given)
    workdir = Path(tempfile.mkdtemp(prefix="denen-bench-"))
    runner = Runner(workdir)
    table = Table()
    t_start = time.monotonic()
    print(f"denen bench ({'quick' if args.quick else 'full'}), work folder {workdir}", file=sys.stderr)
    try:
        _run_sections(runner, table, plan, sections, args)
    finally:
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)
    elapsed = time.monotonic() - t_start

    host = {"git": _git_state(), "python": platform.python_version(), "machine": platform.machine(),
            "cpus": os.cpu_count(), "kernel": platform.release(), "load_avg_end": os.getloadavg()}
    try:
        import paho.mqtt

        host["paho"] = paho.mqtt.__version__
        host["mosquitto"] = subprocess.run(["mosquitto", "-h"], capture_output=True, text=True).stdout.splitlines()[0]
    except (OSError, IndexError, subprocess.SubprocessError):
        pass
    md = table.markdown()
    print()
    print(f"Command: `{command}` ({elapsed:.0f} s; code {host['git']}; {host.get('cpus')} CPUs, "
          f"Python {host['python']}, "
          f"paho {host.get('paho')}, {host.get('mosquitto', 'mosquitto ?')}; load average at end "
          f"{host['load_avg_end'][0]:.2f})")
    print()
    print(md)
    notes = _notes(runner)
    if notes:
        print()
        for n in notes:
            print(f"- {n}")
    if runner.errors:
        print("\nFailures:")
        for e in runner.errors:
            print(f"- {e}")
    if args.json:
        c.write_json(args.json, {"command": command, "elapsed_s": elapsed, "host": host, "plan": plan,
                                 "rows": table.rows, "markdown": md, "notes": notes, "errors": runner.errors,
                                 "raw": runner.raw})
        print(f"\nJSON written to {args.json}", file=sys.stderr)
    return 1 if runner.errors else 0


def _run_sections(runner: Runner, table: Table, plan: dict[str, Any], sections: list[str],
                  args: argparse.Namespace) -> None:
    n, nodes, repeat = plan["n"], plan["nodes"], plan["repeat"]
    fsync_p99 = sync_rate = decode_rate = None

    if "anchors" in sections:
        print("anchors", file=sys.stderr)
        for _ in range(3):
            runner.trial("disk", "disk", {"fsyncs": plan["fsyncs"], "row_commits": plan["row_commits"],
                                          "group_commits": plan["group_commits"]})
            runner.trial("decode", "decode", {"nodes": nodes, "n": plan["decode_n"]})
        fsync_p50 = c.median(runner.values("disk", "fsync_ms_p50"))
        fsync_p99 = c.median(runner.values("disk", "fsync_ms_p99"))
        fsync_rate = c.median(runner.values("disk", "fsync_per_s"))
        sync_rate = c.median(runner.values("disk", "sqlite_row_commits_per_s"))
        grouped = c.median(runner.values("disk", "sqlite_grouped_rows_per_s"))
        decode_rate = c.median(runner.values("decode", "decode_per_s"))
        table.add("anchor", "fsync of a 4 KiB overwrite, p50", fsync_p50, "ms",
                  spread=c.spread(runner.values("disk", "fsync_ms_p50")))
        table.add("anchor", "fsync of a 4 KiB overwrite, p99", fsync_p99, "ms",
                  spread=c.spread(runner.values("disk", "fsync_ms_p99")),
                  note=f"{c.fmt(fsync_rate)} fsync/s")
        table.add("anchor", "SQLite WAL, synchronous=FULL, 1 row per commit", sync_rate, "commits/s",
                  spread=c.spread(runner.values("disk", "sqlite_row_commits_per_s")),
                  anchor=f"fsync {c.fmt(fsync_rate)}/s", ratio=sync_rate / fsync_rate if fsync_rate else None)
        table.add("anchor", "SQLite WAL, synchronous=FULL, 1000 rows per commit", grouped, "rows/s",
                  spread=c.spread(runner.values("disk", "sqlite_grouped_rows_per_s")),
                  anchor=f"1 row/commit {c.fmt(sync_rate)}/s", ratio=grouped / sync_rate if sync_rate else None)
        table.add("anchor", "agent decode path alone, 1 thread (parse+CMAC+LPP+JSON)", decode_rate, "readings/s",
                  spread=c.spread(runner.values("decode", "decode_per_s")), note="CPU anchor")

    naive_p = {"nodes": nodes, "n": n, "window": NAIVE_WINDOW, "timeout_s": 600}
    agent_p = {"nodes": nodes, "n": n, "chunk": 65536, "timeout_s": 600}
    a_rate = None
    if "ab" in sections:
        print("(a) naive paho / (b) agent / (a') mosquitto_pub, interleaved", file=sys.stderr)
        ratios = []
        c_ratios = []  # (b) / (a')
        ca_ratios = []  # (a') / (a)
        nodelay_ratios = []  # (b) / (a) with TCP_NODELAY
        for _ in range(repeat):
            # The headline anchor is paho as a user writes it: its defaults, which leave Nagle on.
            a = runner.trial("naive", "a-naive-v5", {**naive_p, "protocol": "v5", "nodelay": False})
            an = runner.trial("naive", "a-naive-v5-nodelay", {**naive_p, "protocol": "v5", "nodelay": True})
            b = runner.trial("agent", "b-agent-default", agent_p)
            ca = runner.trial("c_anchor", "a-c-mosquitto-pub", {"nodes": nodes, "n": n, "window": NAIVE_WINDOW,
                                                                 "timeout_s": 600})
            if a and b:
                ratios.append(b["per_s"] / a["per_s"])
            if an and b:
                nodelay_ratios.append(b["per_s"] / an["per_s"])
            if b and ca:
                c_ratios.append(b["per_s"] / ca["per_s"])
            if a and ca:
                ca_ratios.append(ca["per_s"] / a["per_s"])
        for _ in range(max(1, repeat // 2)):
            runner.trial("naive", "a-naive-v311", {**naive_p, "protocol": "v311", "nodelay": True})
        a_vals = runner.values("a-naive-v5", "per_s")
        b_vals = runner.values("b-agent-default", "per_s")
        a_rate, b_rate = c.median(a_vals), c.median(b_vals)
        ratio = c.median(ratios)
        table.add("(a)", f"naive paho 2 MQTTv5, QoS 1, 1 reading/message, ≤{NAIVE_WINDOW} in flight, no journal",
                  a_rate, "readings/s", spread=c.spread(a_vals),
                  note=f"N={n:,}, {len(a_vals)} runs, paho's defaults (Nagle on)")
        for label, what in (("a-naive-v5-nodelay", "naive paho 2 MQTTv5 with TCP_NODELAY (same otherwise)"),
                            ("a-naive-v311", "naive paho 2 MQTT 3.1.1 with TCP_NODELAY")):
            vals = runner.values(label, "per_s")
            table.add("(a)", what, c.median(vals), "readings/s", spread=c.spread(vals),
                      anchor=f"(a) {c.fmt(a_rate)}/s", ratio=c.median(vals) / a_rate if a_rate else None)
        c_vals = runner.values("a-c-mosquitto-pub", "per_s")
        c_rate = c.median(c_vals)
        c0 = (runner.raw.get("a-c-mosquitto-pub") or [{}])[0]
        table.add("(a')", f"C anchor: mosquitto_pub -q 1 -l -V mqttv5 --nodelay -M {NAIVE_WINDOW}, one reading per "
                  "line", c_rate, "readings/s", spread=c.spread(c_vals), anchor=f"(a) {c.fmt(a_rate)}/s",
                  ratio=c.median(ca_ratios),
                  note=f"N={n:,}, {len(c_vals)} runs, same readings, topic and broker; timed by the C subscriber "
                  f"from first to last arrival, per process ({c0.get('processes', '?')} of ≤ {_trials.C_CHUNK:,} "
                  f"lines, message ids wrap); wall time of the processes: "
                  f"{c.fmt(c.median(runner.values('a-c-mosquitto-pub', 'raw_per_s')))}/s")
        b0 = runner.raw.get("b-agent-default", [{}])
        batch, window = (b0[0].get("batch"), b0[0].get("window")) if b0 else (None, None)
        received = runner.values("b-agent-default", "received")
        duplicates = runner.values("b-agent-default", "duplicates")
        table.add("(b)", f"agent pty line → journal (fsync) → PUBACK, batch {batch}, window {window} "
                  "(config defaults)", b_rate, "readings/s", spread=c.spread(b_vals),
                  anchor=f"(a) {c.fmt(a_rate)}/s", ratio=ratio, target=f"≥ {TARGET_RATIO:g}× (a)",
                  ok=None if _nan(ratio) else ratio >= TARGET_RATIO,
                  note=f"N={n:,}, {len(b_vals)} runs; ratio = median of per-pair ratios; at the subscriber "
                  f"{min(received, default=0):,}..{max(received, default=0):,} distinct readings per run, "
                  f"{int(sum(duplicates)):,} duplicates")
        deleted = [r["n"] / r["deleted_s"] for r in runner.raw.get("b-agent-default", []) if r.get("deleted_s")]
        table.add("(b)", "until also deleted from the journal (the last deletions wait up to 1 s for a commit)",
                  c.median(deleted), "readings/s", spread=c.spread(deleted), anchor=f"(b) {c.fmt(b_rate)}/s",
                  ratio=c.median(deleted) / b_rate if b_rate else None)
        ingest = [r["n"] / r["journaled_s"] for r in runner.raw.get("b-agent-default", []) if r.get("journaled_s")]
        table.add("(b)", "of which pty line → journaled (committed), all N", c.median(ingest), "readings/s",
                  spread=c.spread(ingest), anchor=f"(b) {c.fmt(b_rate)}/s",
                  ratio=c.median(ingest) / b_rate if b_rate else None)
        cpr = c.median(runner.values("b-agent-default", "commits_per_reading"))
        nodelay_rate = c.median(runner.values("a-naive-v5-nodelay", "per_s"))
        table.add("(b)", "agent vs naive paho with TCP_NODELAY", b_rate, "readings/s",
                  anchor=f"(a) TCP_NODELAY {c.fmt(nodelay_rate)}/s", ratio=c.median(nodelay_ratios),
                  note="ratio = median of per-round ratios")
        table.add("(b)", "agent vs the C anchor", b_rate, "readings/s", anchor=f"(a') {c.fmt(c_rate)}/s",
                  ratio=c.median(c_ratios), note="ratio = median of per-round ratios")
        table.add("(b)", "commits (fsyncs) per reading", cpr, "", spread=c.spread(
            runner.values("b-agent-default", "commits_per_reading")),
            target=f"≤ {TARGET_FSYNCS_PER_READING:g}", ok=None if _nan(cpr) else cpr <= TARGET_FSYNCS_PER_READING,
            note=f"{c.fmt(1 / cpr if cpr else math.nan)} readings per commit")
        share = c.median(runner.values("b-agent-default", "commit_share"))
        table.add("(b)", "share of (b) wall time inside journal.commit", share * 100 if not _nan(share) else None, "%")
        rpm = c.median(runner.values("b-agent-default", "readings_per_message"))
        table.add("(b)", "readings per MQTT message", rpm, "")
        if decode_rate:
            table.add("(b)", "agent rate vs its decode path alone", b_rate, "readings/s",
                      anchor=f"decode {c.fmt(decode_rate)}/s", ratio=b_rate / decode_rate,
                      note="what is left of one core for reading the pty, SQLite and MQTT")

    if "settings" in sections:
        print("(b) other batch / window settings", file=sys.stderr)
        for batch, window in plan["settings"]:
            for _ in range(plan["settings_repeat"]):
                runner.trial("agent", f"b-agent-{batch}x{window}", {**agent_p, "batch": batch, "window": window})
        base = c.median(runner.values("b-agent-default", "per_s"))
        for batch, window in plan["settings"]:
            label = f"b-agent-{batch}x{window}"
            vals = runner.values(label, "per_s")
            rate = c.median(vals)
            table.add("(b)", f"agent, batch {batch}, window {window}", rate, "readings/s", spread=c.spread(vals),
                      anchor=f"(a) {c.fmt(a_rate)}/s" if a_rate else "",
                      ratio=rate / a_rate if a_rate else None,
                      note=f"{c.fmt(c.median(runner.values(label, 'commits_per_reading')))} commits/reading"
                      + (f"; default batch/window {c.fmt(base)}/s" if not _nan(base) else ""))

    if args.profile and "ab" in sections:
        print("profile of one (b) run (py-spy)", file=sys.stderr)
        prof_dir = Path(args.profile)
        prof_dir.mkdir(parents=True, exist_ok=True)
        raw = prof_dir / "agent-b.pyspy.txt"
        r = runner.trial("agent", "b-agent-profiled", {**agent_p, "n": max(n, 100_000), "profile": str(raw),
                                                        "profile_s": 120})
        if r is not None and raw.exists():
            summary = summarize_profile(raw)
            runner.raw["profile"].append(summary)
            (prof_dir / "summary.json").write_text(json.dumps(summary, indent=2))

    if "sos" in sections:
        print("(c) SOS latency while a backlog drains", file=sys.stderr)
        sos_p = {"nodes": nodes, "backlog": plan["backlog"], "interval_s": SOS_INTERVAL_S,
                 "min_samples": plan["sos_min_samples"], "max_rounds": plan["sos_max_rounds"],
                 "idle_samples": plan["idle_samples"], "max_round_s": 30, "settle_s": 0.3}
        if args.profile:
            # A separate run: py-spy takes CPU from a 2-core machine, so the measured run is not profiled.
            print("profile of backlog drains with SOS pings (py-spy)", file=sys.stderr)
            Path(args.profile).mkdir(parents=True, exist_ok=True)
            sos_prof = Path(args.profile) / "sos-drain.pyspy.txt"
            pr = runner.trial("sos", "c-sos-profiled", {**sos_p, "min_samples": 60, "idle_samples": 0,
                                                         "profile": str(sos_prof)})
            files = sorted(sos_prof.parent.glob(sos_prof.name + ".round*"))
            if pr is not None and files:
                runner.raw["profile_sos_drain"].append(summarize_profile(files))
        r = runner.trial("sos", "c-sos", sos_p)
        sos_p99 = None
        if r is not None:
            sos_p99 = r["under_backlog"]["p99_ms"]
            u, i = r["under_backlog"], r["idle"]
            table.add("(c)", f"SOS pty line → PUBACK, p50, while {r['backlog']:,} readings drain", u["p50_ms"], "ms",
                      anchor=f"idle p50 {c.fmt(i['p50_ms'])} ms",
                      ratio=u["p50_ms"] / i["p50_ms"] if i["p50_ms"] else None,
                      note=f"{u['samples']} SOS, one per {SOS_INTERVAL_S * 1e3:.0f} ms, {len(r['rounds'])} drain(s)")
            table.add("(c)", "SOS p99 while draining, pty line → PUBACK reaching the gateway (the broker has it)",
                      u["puback_p99_ms"], "ms", anchor=f"idle p99 {c.fmt(i['puback_p99_ms'])} ms",
                      ratio=u["puback_p99_ms"] / i["puback_p99_ms"] if i["puback_p99_ms"] else None,
                      target=f"≤ {TARGET_SOS_P99_MS:g} ms",
                      ok=u["puback_p99_ms"] <= TARGET_SOS_P99_MS and r["lost"] == 0,
                      note=f"p50 {c.fmt(u['puback_p50_ms'])} ms, max {c.fmt(u['puback_max_ms'])} ms")
            table.add("(c)", "SOS p99 while draining, until the core has taken the PUBACK (receipts start)",
                      u["p99_ms"], "ms", anchor=f"idle p99 {c.fmt(i['p99_ms'])} ms; fsync p99 {c.fmt(fsync_p99)} ms",
                      ratio=u["p99_ms"] / i["p99_ms"] if i["p99_ms"] else None,
                      target=f"≤ {TARGET_SOS_P99_MS:g} ms", ok=u["p99_ms"] <= TARGET_SOS_P99_MS and r["lost"] == 0)
            table.add("(c)", "SOS max while draining", u["max_ms"], "ms", anchor=f"idle max {c.fmt(i['max_ms'])} ms")
            table.add("(c)", "SOS idle (no backlog) p50 / p99", i["p50_ms"], "ms",
                      note=f"p99 {c.fmt(i['p99_ms'])} ms, max {c.fmt(i['max_ms'])} ms, {i['samples']} SOS")
            drain = r["drain_per_s"]
            b_rate = c.median(runner.values("b-agent-default", "per_s"))
            table.add("(c)", "backlog drain throughput meanwhile (journal → MQTT → PUBACK → deleted)", drain,
                      "readings/s", spread=c.spread([x["drain_per_s"] for x in r["rounds"]]),
                      anchor=f"(b) {c.fmt(b_rate)}/s" if not _nan(b_rate) else "",
                      ratio=drain / b_rate if not _nan(b_rate) else None,
                      note=f"batch {r['batch']}, window {r['window']}")
            if r["lost"]:
                table.add("(c)", "SOS written to the pty but never acknowledged", r["lost"], "SOS",
                          anchor=f"of {r['written']} written", ratio=r["lost"] / r["written"], target="0", ok=False,
                          note=f"{r['stuck']} of them journaled but never published in that MQTT session")
        for batch, window in plan["sos_settings"]:
            label = f"c-sos-{batch}x{window}"
            r = runner.trial("sos", label, {**sos_p, "batch": batch, "window": window,
                                            "min_samples": plan["sos_settings_samples"], "idle_samples": 0})
            if r is None:
                continue
            u = r["under_backlog"]
            table.add("(c)", f"SOS p99 while draining, batch {batch}, window {window} (until the core has taken the "
                      f"PUBACK; reaching the gateway {c.fmt(u['puback_p99_ms'])} ms)", u["p99_ms"], "ms",
                      anchor=f"default settings p99 {c.fmt(sos_p99)} ms",
                      ratio=u["p99_ms"] / sos_p99 if sos_p99 else None,
                      target=f"≤ {TARGET_SOS_P99_MS:g} ms", ok=u["p99_ms"] <= TARGET_SOS_P99_MS and r["lost"] == 0,
                      note=f"p50 {c.fmt(u['p50_ms'])} ms, max {c.fmt(u['max_ms'])} ms, "
                      f"{u['samples']} SOS, drain {c.fmt(r['drain_per_s'])} readings/s"
                      + (f", {r['lost']} SOS lost" if r["lost"] else ""))

    if "rss" in sections:
        print("(d) RSS", file=sys.stderr)
        for _ in range(3):
            runner.trial("rss_floor", "d-floor", {})
        rss_p = {"traffic": plan["rss_traffic"], "paced": plan["rss_paced"], "paced_per_s": 500, "settle_s": 1.0,
                 "idle_window_s": 2.0, "timeout_s": 300}
        runner.trial("rss", "d-rss", {**rss_p, "nodes": 200})
        big = plan["rss_nodes_large"]
        runner.trial("rss", "d-rss-large", {**rss_p, "nodes": big})
        floor = c.median(runner.values("d-floor", "libs_mib"))
        mods = c.median(runner.values("d-floor", "agent_modules_mib"))
        table.add("(d)", "floor: bare python importing paho, pydantic, serial, cryptography", floor, "MiB",
                  spread=c.spread(runner.values("d-floor", "libs_mib")))
        table.add("(d)", "floor: bare python importing agent.gateway.core, agent.cli, drivers.radio", mods, "MiB",
                  anchor=f"libs floor {c.fmt(floor)} MiB", ratio=mods / floor if floor else None)
        rr = runner.raw.get("d-rss")
        if rr:
            r = rr[0]
            rows = (
                ("startup_mib", "agent RSS, 200 keyed nodes, after start-up", f"{r['threads']} threads"),
                ("after_paced_mib", f"agent RSS after {r['paced']:,} readings + 4 SOS at {r['paced_per_s']}/s",
                 f"peak so far {c.fmt(r['peak_paced_mib'])} MiB"),
                ("after_traffic_mib", f"agent RSS after a burst of {r['traffic']:,} more readings, drained", ""),
                ("peak_mib", "agent peak RSS (VmHWM), during the burst", ""),
            )
            for key, what, note in rows:
                split = r.get(key.replace("_mib", "_split_mib"))
                if split:
                    note = ", ".join(x for x in (note, f"anon {c.fmt(split['RssAnon'])} + file "
                                                       f"{c.fmt(split['RssFile'])} MiB") if x)
                table.add("(d)", what, r[key], "MiB", anchor=f"libs floor {c.fmt(floor)} MiB",
                          ratio=r[key] / floor if floor else None, target=f"≤ {TARGET_RSS_MIB:g} MiB",
                          ok=r[key] <= TARGET_RSS_MIB, note=note)
            table.add("(d)", "agent CPU while idle, after start-up / after traffic", r["idle_cpu_pct_startup"],
                      "% of a core", note=f"after traffic {c.fmt(r['idle_cpu_pct_after_traffic'])} %; "
                      "an idle agent should be near 0")
        rl = runner.raw.get("d-rss-large")
        if rl:
            r, small = rl[0], (rr[0] if rr else {})
            for key, what in (("startup_mib", "after start-up"), ("after_paced_mib", "after paced traffic"),
                              ("after_traffic_mib", "after the burst, drained"), ("peak_mib", "peak (VmHWM)")):
                split = r.get(key.replace("_mib", "_split_mib"))
                base = small.get(key)
                table.add("(d)", f"agent RSS, {r['nodes']:,} keyed nodes, {what}", r[key], "MiB",
                          anchor=f"200 nodes {c.fmt(base)} MiB" if base else "",
                          ratio=r[key] / base if base else None, target="(no target; 200 nodes: ≤ 45 MiB)",
                          note=f"anon {c.fmt(split['RssAnon'])} + file {c.fmt(split['RssFile'])} MiB" if split else "")

    if "idle" in sections:
        print("(e) idle wakeups", file=sys.stderr)
        r = runner.trial("idle", "e-idle", {"nodes": 200, "window_s": plan["idle_window_s"],
                                            "settle_s": plan["idle_settle_s"]})
        if r is not None:
            secs = r["seconds"]
            table.add("(e)", f"idle agent (`agent.cli run`, {r['nodes']} nodes, radios {' + '.join(r['radios'])} on "
                      f"simulated modules, broker connected): wakeups, all threads", r["wakeups_per_s"], "wakeups/s",
                      target=f"≤ {TARGET_WAKEUPS_PER_S:g}/s", ok=r["wakeups_per_s"] <= TARGET_WAKEUPS_PER_S,
                      note=f"voluntary + involuntary context switches over {secs:.0f} s"
                      + (" (--quick: shorter than the 60 s of the target)" if secs < 59 else "")
                      + f"; health every {r['health_interval_s']} s, keepalive {r['keepalive_s']} s")
            busiest = max((t["wakeups_per_s"] for t in r["threads"]), default=0.0)
            table.add("(e)", "idle agent CPU", r["cpu_pct"], "% of a core", target="no busy polling",
                      ok=r["cpu_pct"] < 0.5 and busiest <= TARGET_WAKEUPS_PER_S,
                      note=f"busiest thread {c.fmt(busiest)} wakeups/s")
            for t in r["threads"]:
                name = t["name"] or t["comm"]
                table.add("(e)", f"thread {name}", t["wakeups_per_s"], "wakeups/s",
                          note=f"{t['voluntary']} voluntary + {t['nonvoluntary']} involuntary in {secs:.0f} s, CPU "
                          f"{c.fmt(t['cpu_pct'])} %" + (f"; waits in {t['waits_in']}" if t["waits_in"] else ""))

    if "drain" in sections:
        print("(f) drain of a journaled backlog", file=sys.stderr)
        backlog = plan["drain_backlog"]
        r = runner.trial("drain", "f-drain", {"nodes": nodes, "backlog": backlog, "rounds": plan["drain_rounds"],
                                              "timeout_s": 600}, timeout=1800)
        if r is not None:
            secs = [x["broker_up_to_last_ack_s"] for x in r["rounds"]]
            full = backlog >= DRAIN_TARGET_READINGS
            sos_rate = c.median([x["drain_per_s"] for x in runner.raw.get("c-sos", [])])
            table.add("(f)", f"drain of {backlog:,} journaled readings: broker up → last PUBACK (deleted)",
                      r["seconds"], "s", spread=c.spread(secs),
                      anchor=f"(c) drain {c.fmt(sos_rate)}/s with SOS pings" if not _nan(sos_rate) else "",
                      target=f"≤ {TARGET_DRAIN_S:g} s for 1,000,000", ok=r["seconds"] <= TARGET_DRAIN_S if full else None,
                      note=f"{c.fmt(r['per_s'])} readings/s; {len(secs)} rounds, journal {c.fmt(r['journal_mib'])} MiB; "
                      f"batch {r['batch']}, window {r['window']}; reconnect backoff 0.1..0.5 s included"
                      + ("" if full else f"; --quick: {backlog:,} readings, not 1,000,000, so no verdict"))
            first = [x["first_send_to_last_ack_s"] for x in r["rounds"]]
            table.add("(f)", "of which first message published → last PUBACK", c.median(first), "s",
                      spread=c.spread(first), note=f"{c.fmt(r['first_send_per_s'])} readings/s")
            table.add("(f)", "commits (fsyncs) per reading during the drain", r["commits_per_reading"], "",
                      target=f"≤ {TARGET_FSYNCS_PER_READING:g}", ok=r["commits_per_reading"] <= TARGET_FSYNCS_PER_READING)

    if "bridge" in sections:
        print("(g) bridge (tests.bench.bench_bridge)", file=sys.stderr)
        from tests.bench import bench_bridge  # noqa: PLC0415

        bp = {**bench_bridge.PLANS["quick" if args.quick else "full"], "sections": list(bench_bridge.SECTIONS)}
        r = runner.trial("bridge", "g-bridge", bp, timeout=1800)
        if r is not None:
            bench_bridge.add_rows(table, r)

    if "fleet" in sections:
        print("(h) fleet of gateways (tests.bench.bench_fleet)", file=sys.stderr)
        from tests.bench import bench_fleet  # noqa: PLC0415

        r = runner.trial("fleet", "h-fleet", dict(bench_fleet.PLANS["quick" if args.quick else "full"]), timeout=1800)
        if r is not None:
            bench_fleet.add_rows(table, r)

    if "startup" in sections:
        print("startup (tests.bench.bench_startup)", file=sys.stderr)
        from tests.bench import bench_startup  # noqa: PLC0415

        # Every figure is a fresh `denen` process already, so this runs here rather than in a trial process.
        t = time.monotonic()
        try:
            r = bench_startup.run({**bench_startup.PLANS["quick" if args.quick else "full"],
                                   "workdir": str(runner.workdir)})
        except (OSError, RuntimeError, subprocess.SubprocessError) as exc:
            runner.errors.append(f"startup: {type(exc).__name__}: {exc}")
        else:
            r["_wall_s"] = time.monotonic() - t
            runner.raw["startup"].append(r)
            bench_startup.add_rows(table, r)

    if "field" in sections:
        print("field rates (tests.bench.bench_field)", file=sys.stderr)
        from tests.bench import bench_field  # noqa: PLC0415

        # Its own process (it starts `denen run`, a broker and a simulated radio itself), journals in the work
        # folder: the same disk as the other sections' journals, which bench_field checks is not tmpfs.
        out = runner.workdir / "field.json"
        argv = [sys.executable, "-m", "tests.bench.bench_field", "--json", str(out), "--dir", str(runner.workdir)]
        if args.quick:
            argv.append("--quick")
        t = time.monotonic()
        try:
            proc = subprocess.run(argv, cwd=REPO, capture_output=True, text=True, timeout=1800)
        except subprocess.TimeoutExpired:
            runner.errors.append("field: timed out after 1800 s")
        else:
            sys.stderr.write(proc.stderr)
            if out.exists():
                data = json.loads(out.read_text())
                r = data["result"]
                r["_wall_s"] = time.monotonic() - t
                r["_notes"] = data["notes"]
                runner.raw["field"].append(r)
                bench_field.add_rows(table, r)
            else:
                runner.errors.append(f"field: exited {proc.returncode}: {proc.stderr.strip()[-1000:]}")


def _git_state() -> str:
    """HEAD, and which files of the measured code differ from it (other work in progress is measured too)."""
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True,
                              timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--", "agent", "drivers"], cwd=REPO,
                               capture_output=True, text=True, timeout=10).stdout.split("\n")
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    changed = [line[3:] for line in dirty if line.strip()]
    return head + (f" + uncommitted changes in {', '.join(changed)}" if changed else "")


def _shares(fractions: dict[str, float], k: int) -> str:
    """The first ``k`` of ``name -> fraction`` as ``name 12 %, ...``."""
    return ", ".join(f"{name} {v * 100:.0f} %" for name, v in list(fractions.items())[:k])


def _notes(runner: Runner) -> list[str]:
    notes = []
    field = runner.raw.get("field")
    if field:
        notes.extend(f"field: {n}" for n in field[0].get("_notes", []))
    # (raw key, the run, the core thread's label, functions listed inclusive / self (0: not listed))
    for key, run, core, inclusive, own in (
            ("profile", "one (b) run ({n} samples), busy samples per thread", "core thread", 16, 10),
            ("profile_sos_drain", "(c) backlog drains with SOS pings ({n} samples), per thread",
             "core thread during the drains", 14, 0)):
        for p in runner.raw.get(key, [])[:1]:
            notes.append(f"py-spy, {run.format(n=p['samples'])}: {_shares(p['threads'], 6)}")
            notes.append(f"{core}, inclusive: {_shares(p['core_inclusive'], inclusive)}")
            if own:
                notes.append(f"{core}, self: {_shares(p['core_self'], own)}")
    floor = runner.raw.get("d-floor")
    if floor and floor[0].get("import_steps_mib"):
        steps = ", ".join(f"{label} +{c.fmt(add)}" for label, _, add in floor[0]["import_steps_mib"][1:])
        notes.append(f"RSS by import step (MiB, bare interpreter {c.fmt(floor[0]['import_steps_mib'][0][1])}): {steps}")
    sos = runner.raw.get("c-sos")
    if sos:
        u = sos[0]["under_backlog"]
        stages = ", ".join(f"{s} p50 {c.fmt(u[f'{s}_p50_ms'])} / p99 {c.fmt(u[f'{s}_p99_ms'])} ms"
                           for s in ("to_commit", "commit", "to_send", "to_ack"))
        notes.append(f"SOS under backlog by stage (write→commit start, commit, commit→publish, publish→PUBACK "
                     f"processed): {stages}")
        slow = u.get("slowest_1pct_mean_ms") or {}
        if slow:
            per_stage = ", ".join(f"{k} {c.fmt(v)} ms" for k, v in slow.items())
            notes.append(f"slowest 1 % of SOS, mean per stage: {per_stage}")
    return notes


if __name__ == "__main__":
    sys.exit(main())
