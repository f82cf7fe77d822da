"""Start-up of the ``denen`` command against a bare interpreter measured in the same run.

Usage::

    python -m tests.bench.bench_startup [--quick] [--runs N] [--json PATH] [--keep]

Measured, each as the wall time of a fresh process (``subprocess``, output to /dev/null), median of N runs:

``anchor``    ``python -c pass`` with the same interpreter: what any Python command costs on this machine now.
``help``      ``denen --help``
``version``   ``denen --version``
``status``    ``denen status -j JOURNAL --json`` on a journal of 200 nodes and 2,000 unsent readings
``validate``  ``denen config validate CONFIG`` on a config of 2,000 keyed nodes (about 10,000 lines)

The commands run round-robin (anchor, help, version, status, validate, anchor, ...) so that the load of a shared
machine falls on all of them alike; the load average before and after is reported beside the figures, and each
command's time is also given as a ratio to the anchor. ``denen`` is the console script installed beside the
interpreter (as a user runs it), else ``python -m agent.cli``.

One more run of each command with ``PYTHONPROFILEIMPORTTIME=1`` (``-X importtime``) tells which heavy modules it
imports (:data:`HEAVY`) and how long its imports took in total; a command that should stay light and imports one
of them is named in the notes.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]

PLANS: dict[str, dict[str, Any]] = {
    "full": {"runs": 21, "config_nodes": 2000, "status_nodes": 200, "status_readings": 2000},
    "quick": {"runs": 7, "config_nodes": 2000, "status_nodes": 200, "status_readings": 2000},
}

#: Targets of the issue: wall time in seconds (None: no target, measured for the record).
TARGET_S: dict[str, float | None] = {"help": 0.10, "version": 0.10, "status": None, "validate": None}

#: Modules that cost tens of milliseconds or more to import (with what they pull in); the light commands should
#: load none of them. (The packages agent.bridge and agent.console themselves are light: their CLI parts live there.)
HEAVY: tuple[str, ...] = (
    "pydantic", "pydantic_core", "agent.config", "rich", "ruamel.yaml", "paho", "serial", "cryptography",
    "gpiozero", "urllib3", "influxdb_client", "sqlite3", "asyncio", "http.server",
)

#: Heavy modules each command is expected to do without (its own work needs none of them).
MUST_NOT_IMPORT: dict[str, tuple[str, ...]] = {
    "help": HEAVY,
    "version": HEAVY,
    "status": ("pydantic", "pydantic_core", "agent.config", "rich", "paho", "serial", "cryptography", "gpiozero",
               "urllib3", "influxdb_client", "asyncio", "http.server"),
}

LABELS: dict[str, str] = {
    "anchor": "`python -c pass` (anchor)",
    "help": "`denen --help`",
    "version": "`denen --version`",
    "status": "`denen status -j JOURNAL --json`",
    "validate": "`denen config validate` of a {config_nodes:,}-node config",
}


def denen_command() -> list[str]:
    """How a user starts ``denen`` with this interpreter: its console script if installed, else ``-m agent.cli``."""
    script = Path(sys.executable).parent / "denen"
    if script.is_file() and os.access(script, os.X_OK):
        return [str(script)]
    return [sys.executable, "-m", "agent.cli"]


def make_config(path: Path, nodes: int) -> Path:
    """A valid gateway config with ``nodes`` keyed nodes and no warnings (no river gauge without its stages)."""
    from tests.bench import _common as c  # noqa: PLC0415
    from tests.support.field import FieldNode  # noqa: PLC0415

    kinds = ("rain", "weather", "tilt", "trap", "sos")
    field = [FieldNode(c.TELEMETRY_BASE + i, kinds[i % len(kinds)]) for i in range(nodes)]
    text = c.config_text(port="/dev/ttyUSB0", mqtt_port=1883, journal=path.parent / "journal.db", nodes=field)
    return c.write_config(path, text)


def make_journal(path: Path, nodes: int, readings: int) -> Path:
    """A journal as a gateway leaves it: ``nodes`` known nodes and ``readings`` unsent readings."""
    from agent.gateway.journal import Journal  # noqa: PLC0415
    from tests.bench import _common as c  # noqa: PLC0415
    from tests.support.field import FieldNode  # noqa: PLC0415

    # No river gauges: their missing stage rules would only add warnings to the bench's output.
    kinds = ("rain", "weather", "tilt")
    field = [FieldNode(c.TELEMETRY_BASE + i, kinds[i % len(kinds)]) for i in range(nodes)]
    cfg = c.parse(c.config_text(port="/dev/ttyUSB0", mqtt_port=1883, journal=path, nodes=field))
    entries, decoder = c.decoded_entries(cfg, c.telemetry_frames(field, readings))
    j = Journal(path, quota_bytes=256 << 20)
    try:
        for off in range(0, len(entries), 5000):
            j.commit(entries=entries[off:off + 5000])
        j.commit(nodes=list(decoder.nodes.values()), meta={"gateway": c.GATEWAY_ID})
    finally:
        j.close()
    return path


def _time_once(argv: list[str], env: dict[str, str]) -> tuple[float, float, int]:
    """Wall time (s), CPU time of the process (user + system, s) and exit code of one run of ``argv``.

    The CPU time is much less disturbed by other work on a shared machine than the wall time.
    """
    t = time.perf_counter()
    proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            env=env, cwd=tempfile.gettempdir())
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t
    proc.returncode = os.waitstatus_to_exitcode(status)  # reaped here: keep Popen from waiting again
    return wall, usage.ru_utime + usage.ru_stime, proc.returncode


def imports_of(argv: list[str], env: dict[str, str]) -> dict[str, Any]:
    """Run ``argv`` once with ``-X importtime``: total import time (s), and the heavy modules it loaded."""
    proc = subprocess.run(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                          env={**env, "PYTHONPROFILEIMPORTTIME": "1"}, cwd=tempfile.gettempdir(), text=True)
    cumulative: dict[str, int] = {}
    total_us = 0
    for line in proc.stderr.splitlines():
        # "import time:  self_us |  cumulative_us | <indent>module": one space of indent at the top level, two
        # more per level of nesting.
        parts = line.removeprefix("import time:").split("|")
        if not line.startswith("import time:") or len(parts) != 3 or not parts[1].strip().isdigit():
            continue
        cum_us, raw = int(parts[1]), parts[2].rstrip()
        name = raw.strip()
        if len(raw) - len(raw.lstrip()) <= 1:
            total_us += cum_us
        cumulative[name] = max(cumulative.get(name, 0), cum_us)
    heavy = {m: cumulative[m] / 1e6 for m in HEAVY if m in cumulative}
    return {"import_s": total_us / 1e6, "heavy": heavy, "modules": len(cumulative)}


def run(p: dict[str, Any]) -> dict[str, Any]:
    """One start-up run with plan ``p`` (see :data:`PLANS`; ``workdir`` optional). Returns every figure."""
    tmp = tempfile.mkdtemp(prefix="denen-bench-startup-", dir=p.get("workdir"))
    work = Path(tmp)
    try:
        config = make_config(work / "config.yaml", p["config_nodes"])
        journal = make_journal(work / "journal.db", p["status_nodes"], p["status_readings"])
        denen = denen_command()
        commands: dict[str, list[str]] = {
            "anchor": [sys.executable, "-c", "pass"],
            "help": [*denen, "--help"],
            "version": [*denen, "--version"],
            "status": [*denen, "status", "-j", str(journal), "--json"],
            "validate": [*denen, "config", "validate", str(config)],
        }
        env = {k: v for k, v in os.environ.items() if not k.startswith("PYTHONPROFILEIMPORT")}
        # One unmeasured round: the page cache and the .pyc files are warm for every measured run alike.
        rcs = {name: _time_once(argv, env)[2] for name, argv in commands.items()}
        failed = {name: rc for name, rc in rcs.items() if rc != 0}
        if failed:
            raise RuntimeError(f"commands failed before measuring: {failed} (run them by hand: "
                               f"{ {n: ' '.join(commands[n]) for n in failed} })")
        load_before = os.getloadavg()
        times: dict[str, list[float]] = {name: [] for name in commands}
        cpu: dict[str, list[float]] = {name: [] for name in commands}
        for _ in range(p["runs"]):
            for name, argv in commands.items():
                secs, cpu_s, rc = _time_once(argv, env)
                if rc != 0:
                    raise RuntimeError(f"{' '.join(argv)} exited {rc} during the measurement")
                times[name].append(secs)
                cpu[name].append(cpu_s)
        load_after = os.getloadavg()
        imports = {name: imports_of(argv, env) for name, argv in commands.items()}
        return {
            "runs": p["runs"], "config_nodes": p["config_nodes"], "status_nodes": p["status_nodes"],
            "status_readings": p["status_readings"], "config_lines": config.read_text().count("\n"),
            "denen": " ".join(denen), "python": platform.python_version(), "cpus": os.cpu_count(),
            "load_before": list(load_before), "load_after": list(load_after),
            "times_s": times,
            "median_s": {name: statistics.median(v) for name, v in times.items()},
            "cpu_s": cpu,
            "median_cpu_s": {name: statistics.median(v) for name, v in cpu.items()},
            "imports": imports,
        }
    finally:
        if not p.get("keep"):
            shutil.rmtree(work, ignore_errors=True)


def _spread(values: list[float]) -> str:
    """p10..p90 of the runs in ms (nearest rank), the spread the median hides."""
    s = sorted(values)
    lo, hi = s[int(0.1 * (len(s) - 1))], s[int(round(0.9 * (len(s) - 1)))]
    return f"{lo * 1e3:.0f}..{hi * 1e3:.0f} ms (p10..p90)"


def add_rows(table: Any, r: dict[str, Any]) -> None:
    """The figures of :func:`run` as rows of the bench table (``tests.bench._common.Table``)."""
    sec = "startup"
    med = r["median_s"]
    anchor_s = med["anchor"]
    load = (f"load average {r['load_before'][0]:.2f} before, {r['load_after'][0]:.2f} after, "
            f"{r['cpus']} CPUs")
    table.add(sec, LABELS["anchor"], anchor_s * 1e3, "ms", spread=_spread(r["times_s"]["anchor"]),
              note=f"median of {r['runs']} runs, round-robin with the commands below; CPU "
              f"{r['median_cpu_s']['anchor'] * 1e3:.0f} ms; {load}")
    for name in ("help", "version", "status", "validate"):
        secs = med[name]
        target = TARGET_S.get(name)
        imp = r["imports"].get(name, {})
        heavy = imp.get("heavy", {})
        banned = [m for m in MUST_NOT_IMPORT.get(name, ()) if m in heavy]
        notes = [f"CPU {r['median_cpu_s'][name] * 1e3:.0f} ms ({r['median_cpu_s'][name] / r['median_cpu_s']['anchor']:.1f}× "
                 f"the anchor's)" if r["median_cpu_s"]["anchor"] else "",
                 f"imports {imp.get('import_s', 0) * 1e3:.0f} ms of it (the anchor's "
                 f"{r['imports']['anchor']['import_s'] * 1e3:.0f} ms)"]
        if heavy:
            notes.append("heavy modules: " + ", ".join(f"{m} {t * 1e3:.0f} ms" for m, t in
                                                       sorted(heavy.items(), key=lambda kv: -kv[1])))
        else:
            notes.append("no heavy module")
        if banned:
            notes.append("SHOULD NOT import " + ", ".join(banned))
        if name == "status":
            notes.append(f"{r['status_nodes']} nodes, {r['status_readings']:,} unsent readings")
        if name == "validate":
            notes.append(f"{r['config_lines']:,} lines")
        ok: bool | None = None
        if target is not None:
            ok = secs <= target
        elif name in MUST_NOT_IMPORT:
            ok = not banned
        table.add(sec, LABELS[name].format(**r), secs * 1e3, "ms", spread=_spread(r["times_s"][name]),
                  anchor=f"python -c pass {anchor_s * 1e3:.0f} ms", ratio=secs / anchor_s if anchor_s else None,
                  target=(f"≤ {target * 1e3:.0f} ms" if target is not None
                          else ("no pydantic / rich" if name == "status" else "")),
                  ok=ok, note="; ".join(n for n in notes if n))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m tests.bench.bench_startup", description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help=f"{PLANS['quick']['runs']} runs of each command "
                    f"instead of {PLANS['full']['runs']}")
    ap.add_argument("--runs", type=int, default=None, help="runs of each command (the median is reported)")
    ap.add_argument("--json", metavar="PATH", help="also write every figure as JSON")
    ap.add_argument("--keep", action="store_true", help="keep the work folder (config and journal)")
    args = ap.parse_args(argv)
    plan = dict(PLANS["quick" if args.quick else "full"])
    if args.runs:
        plan["runs"] = max(1, args.runs)
    plan["keep"] = args.keep
    from tests.bench import _common as c  # noqa: PLC0415

    r = run(plan)
    table = c.Table()
    add_rows(table, r)
    from tests.bench.run import _git_state  # noqa: PLC0415

    print(f"`python -m tests.bench.bench_startup {' '.join(argv if argv is not None else sys.argv[1:])}`: "
          f"denen = `{r['denen']}`, Python {r['python']}, code {_git_state()}")
    print()
    print(table.markdown())
    if args.json:
        c.write_json(args.json, {"plan": plan, "result": r, "rows": table.rows})
    missed = [row for row in table.rows if row["verdict"] == "MISSED"]
    return 1 if missed else 0


if __name__ == "__main__":
    sys.exit(main())
