"""The dedicated fuzz run: millions of generated inputs across every target, with crash and hang detection.

Usage::

    python -m tests.fuzz.run --inputs 1000000 [--seconds N] [--json PATH] [--seed S] [--jobs J]
                             [--targets lpp,frame,...] [--hang-seconds 2.0]
    python -m tests.fuzz.run --seed S --replay TARGET:INDEX      # re-run one input, with its traceback
    python -m tests.fuzz.run --bridge-path N [--bridge-db influx|victoria|both] [--bridge-driver mqtt|direct]
                             [--seed S] [--json PATH]           # N hostile messages through the whole bridge path

The inputs are shared among the targets by weight (``Target.weight``; the config loaders, at a few milliseconds
an input, get fewer) and cut into work units of about a second, handed round-robin to ``--jobs`` worker processes.
Input ``i`` of target ``t`` is generated from the seed string ``"<seed>/<t>/<i>"`` alone, so any input of any run
can be regenerated from the three numbers in the report (``--replay``) and nothing needs to be stored.

Per target the run counts inputs, accepted, ignored, rejected by reason, crashes (an exception that is not the
target's documented error), violations (the documented error without a specific reason, or wrong output; see
``Target.specific``) and hangs, and keeps the slowest inputs. It prints a table and exits with 1 on any crash,
violation or hang, 3 when ``--seconds`` ran out before ``--inputs`` were generated, 0 otherwise.

``--bridge-path N`` is a different run (:mod:`tests.fuzz.bridge_path`): it starts its own Mosquitto and database,
sends N hostile MQTT messages with a valid sentinel SOS from another gateway after every few, through a real
bridge (convert, encode, sink, dead-letter store), and checks that the bridge never stops, acknowledges everything,
stores every sentinel in time and writes or dead-letters every hostile message. It prints a summary and one JSON
line and exits with 1 on any problem.

Hangs are caught twice: a worker arms ``SIGALRM`` for ``--hang-seconds`` around each input, which interrupts
Python code and reports where it was; an input stuck in C code (a regular expression, a huge allocation) does
not see the signal, so the parent also watches each worker's current input and kills a worker that stays on one
input ``--hang-seconds`` + 10 s, records the hang, and restarts the unit after it. Workers run with an address
space limit (``--memory-mb``) so that an input that allocates without bound fails as a MemoryError crash instead
of taking the machine down.
"""

from __future__ import annotations

import argparse
import collections
import json
import logging
import math
import multiprocessing as mp
import os
import resource
import signal
import sys
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from multiprocessing.connection import Connection, wait
from typing import Any

from tests.fuzz.known import known_issue
from tests.fuzz.mutate import shrink
from tests.fuzz.targets import TARGETS, Target, Violation, regenerate, run_one, seeded

__all__ = ["Failure", "Report", "TargetStats", "main", "run", "run_unit"]

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
#: A worker stuck in C code for this long beyond the per-input bound is killed.
HARD_GRACE_S = 10.0
#: Failures kept per signature (the smallest inputs win).
EXAMPLES_PER_SIGNATURE = 3


class Hang(BaseException):
    """Raised by the SIGALRM handler inside an input that ran past the bound (BaseException: no ``except
    Exception`` in the code under test can swallow it)."""


@dataclass
class Failure:
    """One input that crashed, broke its target's contract, or hung.

    Attributes:
        kind: ``crash``, ``violation``, ``hang`` or ``harness`` (the generator itself failed: a bug in the fuzzer).
        target: target name.
        index: input index; with the seed it regenerates the input.
        signature: what identifies the bug: exception type and innermost project frame, or the oracle's check.
        exception: exception type name.
        message: the exception message (cut to 500 characters).
        traceback: the last frames.
        elapsed_s: how long the input ran, in seconds.
        input: a printable form of the input (cut).
        size: length of that printable form (smaller examples are kept).
        known: the regression test that documents this bug, when it is a known one.
        minimized: a smaller input with the same signature (filled in after the run), printable.
    """

    kind: str
    target: str
    index: int
    signature: str
    exception: str
    message: str
    traceback: str
    elapsed_s: float
    input: str
    size: int
    known: str | None = None
    minimized: str | None = None


@dataclass
class TargetStats:
    """Counts of one target (merged over work units)."""

    target: str
    inputs: int = 0
    accepted: int = 0
    ignored: int = 0
    rejected: collections.Counter[str] = field(default_factory=collections.Counter)
    crashes: int = 0
    violations: int = 0
    hangs: int = 0
    harness: int = 0
    busy_s: float = 0.0
    slowest: list[tuple[float, int]] = field(default_factory=list)  # (seconds, index), slowest first
    signatures: collections.Counter[str] = field(default_factory=collections.Counter)
    failures: dict[str, list[Failure]] = field(default_factory=dict)  # signature -> examples

    @property
    def rejected_total(self) -> int:
        return sum(self.rejected.values())

    @property
    def failed(self) -> int:
        return self.crashes + self.violations + self.hangs + self.harness

    def add_failure(self, f: Failure) -> None:
        counter = _COUNTER_OF[f.kind]
        setattr(self, counter, getattr(self, counter) + 1)
        self.signatures[f.signature] += 1
        examples = self.failures.setdefault(f.signature, [])
        examples.append(f)
        examples.sort(key=lambda x: x.size)
        del examples[EXAMPLES_PER_SIGNATURE:]

    def merge(self, other: TargetStats) -> None:
        self.inputs += other.inputs
        self.accepted += other.accepted
        self.ignored += other.ignored
        self.rejected.update(other.rejected)
        self.crashes += other.crashes
        self.violations += other.violations
        self.hangs += other.hangs
        self.harness += other.harness
        self.busy_s += other.busy_s
        self.slowest = sorted(self.slowest + other.slowest, reverse=True)[:3]
        self.signatures.update(other.signatures)
        for sig, examples in other.failures.items():
            mine = self.failures.setdefault(sig, [])
            mine.extend(examples)
            mine.sort(key=lambda x: x.size)
            del mine[EXAMPLES_PER_SIGNATURE:]


_COUNTER_OF = {"crash": "crashes", "violation": "violations", "hang": "hangs", "harness": "harness"}


# -- one input -----------------------------------------------------------------------------------------------------

_ARMED = [False]


def _on_alarm(signum: int, frame: Any) -> None:
    if _ARMED[0]:
        _ARMED[0] = False
        raise Hang("input ran past the time bound")


def _in_repo(filename: str) -> str:
    path = os.path.abspath(filename)
    return os.path.relpath(path, REPO_ROOT) if path.startswith(REPO_ROOT + os.sep) else path


def signature_of(kind: str, exc: BaseException) -> str:
    """What identifies a bug: for a violation, the oracle's check that failed (file:line in the fuzz harness); for a
    hang, the function of the project's code (agent/, drivers/) it was stuck in; otherwise the exception type and
    the innermost frame in the project's code."""
    frames = traceback.extract_tb(exc.__traceback__)
    if kind == "violation":
        # The oracle's check that failed (its message carries input data, so it is not part of the signature).
        caller = next((f for f in reversed(frames) if f.name != "check"), None)
        where = f"{_in_repo(caller.filename)}:{caller.lineno}" if caller else "?"
        return f"Violation at {where} ({caller.name if caller else '?'})"
    own = [f for f in frames if _in_repo(f.filename).startswith(("agent/", "drivers/"))]
    frame = (own or frames or [None])[-1]
    if frame is None:
        return f"{type(exc).__name__} at ?"
    if kind == "hang":  # interrupted anywhere in a loop: the function is what identifies it, not the line
        return f"Hang in {_in_repo(frame.filename)} {frame.name}()"
    return f"{type(exc).__name__} at {_in_repo(frame.filename)}:{frame.lineno}"


def _failure(kind: str, target: Target, index: int, data: Any, exc: BaseException, elapsed: float) -> Failure:
    tb = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__, limit=-8))
    try:
        shown = target.describe(data)
    except Exception as describe_exc:  # noqa: BLE001 - a report must not fail on an odd input
        shown = f"<describe failed: {describe_exc!r}>"
    failure = Failure(kind, target.name, index, signature_of(kind, exc), type(exc).__name__, str(exc)[:500],
                      tb[-4000:], elapsed, shown, len(shown))
    if kind in ("crash", "violation", "hang"):
        try:
            failure.known = known_issue(target.name, data, exc)
        except Exception:  # noqa: BLE001 - an input the matchers do not expect is simply not a known one
            failure.known = None
    return failure


def execute_checked(target: Target, data: Any, hang_s: float) -> tuple[str, Any, float]:
    """Run one input under the alarm. Returns (``ok``/``crash``/``violation``/``hang``, outcome or exception,
    elapsed seconds)."""
    if signal.getsignal(signal.SIGALRM) is not _on_alarm:
        signal.signal(signal.SIGALRM, _on_alarm)
    t0 = time.perf_counter()
    try:
        try:
            _ARMED[0] = True
            signal.setitimer(signal.ITIMER_REAL, hang_s)
            result: tuple[str, Any] = ("ok", run_one(target, data))
            _ARMED[0] = False
        except Hang as exc:
            result = ("hang", exc)
        except Violation as exc:
            result = ("violation", exc)
        except Exception as exc:  # noqa: BLE001 - any other exception is exactly what the fuzzer looks for
            result = ("crash", exc)
        finally:
            _ARMED[0] = False
            signal.setitimer(signal.ITIMER_REAL, 0)
    except Hang as exc:  # the alarm went off while an exception was being handled
        result = ("hang", exc)
    return result[0], result[1], time.perf_counter() - t0


def run_unit(name: str, start: int, end: int, seed: int, hang_s: float, state: Any = None) -> TargetStats:
    """Generate and run inputs ``start .. end-1`` of target ``name``.

    Args:
        state: the worker's shared array for the parent's watchdog (target code, unit start, unit end, current
            index, monotonic start of the current input in ns or 0 between inputs), or None.
    """
    target = TARGETS[name]
    stats = TargetStats(name)
    slow: list[tuple[float, int]] = []
    for index in range(start, end):
        try:
            data = target.generate(seeded(seed, name, index))
        except Exception as exc:  # noqa: BLE001 - a bug in the generator is reported, not fatal
            stats.inputs += 1
            stats.add_failure(_failure("harness", target, index, None, exc, 0.0))
            continue
        if state is not None:
            state[3] = index
            state[4] = time.monotonic_ns()
        kind, result, elapsed = execute_checked(target, data, hang_s)
        if state is not None:
            state[4] = 0
        stats.inputs += 1
        stats.busy_s += elapsed
        if len(slow) < 3 or elapsed > slow[-1][0]:
            slow = sorted([*slow, (elapsed, index)], reverse=True)[:3]
        if kind == "ok":
            if result.status == "accepted":
                stats.accepted += 1
            elif result.status == "ignored":
                stats.ignored += 1
            else:
                stats.rejected[result.reason] += 1
        else:
            stats.add_failure(_failure(kind, target, index, data, result, elapsed))
    stats.slowest = slow
    return stats


# -- workers -------------------------------------------------------------------------------------------------------


def _worker(tasks: Connection, results: Connection, state: Any, seed: int, hang_s: float, memory_mb: int) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent handles Ctrl-C and stops the workers
    logging.disable(logging.CRITICAL)  # the code under test logs every rejected input
    if memory_mb:
        limit = memory_mb * 1024 * 1024
        _, hard = resource.getrlimit(resource.RLIMIT_AS)
        resource.setrlimit(resource.RLIMIT_AS, (limit if hard == resource.RLIM_INFINITY else min(limit, hard), hard))
    while True:
        task = tasks.recv()
        if task is None:
            return
        code, name, start, end = task
        state[0], state[1], state[2], state[3] = code, start, end, start
        results.send(run_unit(name, start, end, seed, hang_s, state))


@dataclass
class _Worker:
    proc: Any
    tasks: Connection
    results: Connection
    state: Any
    assigned: collections.deque[tuple[str, int, int]]


def allocate(inputs: int, targets: Sequence[Target]) -> dict[str, int]:
    """Share ``inputs`` among the targets by weight (largest remainder, every target at least one)."""
    total = sum(t.weight for t in targets)
    exact = {t.name: inputs * t.weight / total for t in targets}
    counts = {name: max(1, math.floor(x)) for name, x in exact.items()}
    rest = inputs - sum(counts.values())
    for name in sorted(exact, key=lambda n: exact[n] - math.floor(exact[n]), reverse=True)[:max(rest, 0)]:
        counts[name] += 1
    return counts


def plan_units(counts: dict[str, int]) -> list[tuple[str, int, int]]:
    """Work units interleaved across targets, so that a run cut short by --seconds covers every target evenly."""
    per_target = {name: [(name, s, min(s + TARGETS[name].unit, n)) for s in range(0, n, TARGETS[name].unit)]
                  for name, n in counts.items()}
    # Spread each target's units evenly over the schedule rather than bunching the short lists at the front.
    keyed = [(i / len(lst), k, u) for k, lst in enumerate(per_target.values()) for i, u in enumerate(lst)]
    return [u for _, _, u in sorted(keyed)]


@dataclass
class Report:
    """The outcome of a run (also written as JSON)."""

    command: str
    seed: int
    inputs_requested: int
    inputs_run: int
    elapsed_s: float
    jobs: int
    hang_seconds: float
    complete: bool
    targets: dict[str, TargetStats]

    @property
    def failures(self) -> int:
        return sum(s.failed for s in self.targets.values())

    @property
    def exit_code(self) -> int:
        if self.failures:
            return 1
        return 0 if self.complete else 3

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {k: v for k, v in asdict(self).items() if k != "targets"}
        out["rate_per_s"] = round(self.inputs_run / self.elapsed_s, 1) if self.elapsed_s else None
        out["failures"] = self.failures
        out["exit_code"] = self.exit_code
        out["targets"] = {}
        for name, s in self.targets.items():
            t = TARGETS[name]
            out["targets"][name] = {
                "error": t.error, "specific": t.specific, "inputs": s.inputs, "accepted": s.accepted,
                "ignored": s.ignored, "rejected": s.rejected_total,
                "rejected_by_reason": dict(s.rejected.most_common()),
                "crashes": s.crashes, "violations": s.violations, "hangs": s.hangs, "harness_errors": s.harness,
                "busy_s": round(s.busy_s, 3),
                "slowest": [{"seconds": round(sec, 6), "index": i, "replay": _replay_cmd(self.seed, name, i)}
                            for sec, i in s.slowest],
                "failures": [{"signature": sig, "count": s.signatures[sig],
                              "examples": [dict(asdict(f), replay=_replay_cmd(self.seed, name, f.index))
                                           for f in examples]}
                             for sig, examples in s.failures.items()],
            }
        return out


def _replay_cmd(seed: int, name: str, index: int) -> str:
    return f"python -m tests.fuzz.run --seed {seed} --replay {name}:{index}"


def run(names: Sequence[str], inputs: int, *, seed: int = 1, jobs: int = 2, seconds: float | None = None,
        hang_s: float = 2.0, memory_mb: int = 3072, hard_grace_s: float = HARD_GRACE_S,
        progress: Callable[[str], None] | None = None, command: str = "") -> Report:
    """Run ``inputs`` inputs over the targets ``names`` in ``jobs`` worker processes.

    Args:
        seconds: stop handing out work after this many seconds (the report then says ``complete: False``).
        hang_s: per-input time bound, in seconds.
        memory_mb: address space limit of each worker, in MiB (0: none).
        hard_grace_s: extra seconds before a worker stuck in C code is killed.
        progress: called with a status line about every 15 s.
    """
    targets = [TARGETS[n] for n in names]
    counts = allocate(inputs, targets)
    pending = collections.deque(plan_units(counts))
    stats = {n: TargetStats(n) for n in names}
    codes = {n: i for i, n in enumerate(names)}
    ctx = mp.get_context("fork")
    t_start = time.monotonic()
    deadline = t_start + seconds if seconds is not None else None

    def spawn() -> _Worker:
        task_r, task_w = ctx.Pipe(duplex=False)
        res_r, res_w = ctx.Pipe(duplex=False)
        state = ctx.RawArray("q", 5)
        proc = ctx.Process(target=_worker, args=(task_r, res_w, state, seed, hang_s, memory_mb), daemon=True)
        proc.start()
        task_r.close()
        res_w.close()
        return _Worker(proc, task_w, res_r, state, collections.deque())

    def top_up(w: _Worker) -> None:
        while len(w.assigned) < 2 and pending and (deadline is None or time.monotonic() < deadline):
            unit = pending.popleft()
            w.assigned.append(unit)
            w.tasks.send((codes[unit[0]], *unit))

    def lost_worker(w: _Worker, why: str, exc: BaseException) -> None:
        """The worker was killed or died on its current input: record it, requeue the rest of its work."""
        name, start, end = w.assigned.popleft()
        on_it = (int(w.state[0]), int(w.state[1]), int(w.state[2])) == (codes[name], start, end)
        index = int(w.state[3]) if on_it else start
        target = TARGETS[name]
        st = TargetStats(name, inputs=1)
        try:
            data = regenerate(seed, name, index)
        except Exception:  # noqa: BLE001 - reported as the input it was
            data = None
        st.add_failure(_failure("hang" if why == "hang" else "crash", target, index, data, exc,
                                (time.monotonic_ns() - int(w.state[4])) / 1e9 if w.state[4] else 0.0))
        stats[name].merge(st)
        # Inputs before the lost one are run again (their counts were in the lost unit's result).
        requeue = [(name, start, index)] if index > start else []
        requeue += [(name, index + 1, end)] if index + 1 < end else []
        pending.extendleft(reversed(requeue + list(w.assigned)))
        w.assigned.clear()

    for target in targets:
        target.prepare()
    workers = [spawn() for _ in range(max(1, jobs))]
    for w in workers:
        top_up(w)
    last_progress = time.monotonic()
    interrupted = False
    try:
        while any(w.assigned for w in workers):
            ready = wait([w.results for w in workers if w.assigned], timeout=0.5)
            for w in workers:
                if w.results in ready:
                    try:
                        result: TargetStats = w.results.recv()
                    except EOFError:
                        continue  # the worker died; handled below
                    w.assigned.popleft()
                    stats[result.target].merge(result)
                    top_up(w)
            now = time.monotonic()
            for i, w in enumerate(workers):
                if not w.assigned:
                    continue
                started = int(w.state[4])
                stuck = started and (time.monotonic_ns() - started) / 1e9 > hang_s + hard_grace_s
                if stuck or not w.proc.is_alive():
                    if stuck:
                        w.proc.kill()
                        w.proc.join()
                        lost_worker(w, "hang", Hang(f"no progress for {hang_s + hard_grace_s:.0f} s (stuck in C "
                                                    "code?): worker killed"))
                    else:
                        lost_worker(w, "died", RuntimeError(f"worker died with exit code {w.proc.exitcode}"))
                    w.tasks.close()
                    w.results.close()
                    workers[i] = spawn()
                    top_up(workers[i])
            if progress is not None and now - last_progress >= 15:
                last_progress = now
                done = sum(s.inputs for s in stats.values())
                rate = done / (now - t_start)
                eta = (inputs - done) / rate if rate else float("inf")
                progress(f"fuzz: {done}/{inputs} inputs, {rate:.0f}/s, {sum(s.failed for s in stats.values())} "
                         f"failures, about {eta:.0f} s left")
    except KeyboardInterrupt:
        interrupted = True
    finally:
        for w in workers:
            if interrupted:
                w.proc.kill()
            else:
                try:
                    w.tasks.send(None)
                except OSError:
                    pass
        for w in workers:
            w.proc.join(timeout=5)
            if w.proc.is_alive():
                w.proc.kill()
                w.proc.join()
    elapsed = time.monotonic() - t_start
    run_count = sum(s.inputs for s in stats.values())
    return Report(command, seed, inputs, run_count, elapsed, max(1, jobs), hang_s,
                  complete=run_count >= inputs and not interrupted, targets=stats)


# -- minimisation and replay ------------------------------------------------------------------------------------------


def _smaller(value: Any) -> list[Any]:
    """Candidates a little smaller than ``value``: halves, then single elements, removed; recursing into tuples."""
    out: list[Any] = []
    if isinstance(value, bytes | str):
        n = len(value)
        size = n // 2
        while size >= 1:
            out += [value[:i] + value[i + size:] for i in range(0, n, size)]
            size //= 2
        if isinstance(value, str):
            lines = value.split("\n")
            out += ["\n".join(lines[:i] + lines[i + 1:]) for i in range(len(lines))] if len(lines) > 1 else []
    elif isinstance(value, tuple | list):
        if value and all(isinstance(v, bytes) for v in value) and len(value) > 1:
            out.append(type(value)([b"".join(value)]) if isinstance(value, list) else (b"".join(value),))
            out += [value[:i] + value[i + 1:] for i in range(len(value))]
        for i, v in enumerate(value):
            for smaller in _smaller(v)[:64]:
                out.append(value[:i] + type(value)([smaller]) + value[i + 1:])
    return out


def _size(value: Any) -> int:
    if isinstance(value, bytes | str):
        return len(value)
    if isinstance(value, tuple | list):
        return sum(_size(v) for v in value) + len(value)
    return 0


def minimize(target: Target, data: Any, signature: str, *, budget_s: float = 5.0, hang_s: float = 2.0) -> Any:
    """Greedily shrink ``data`` while the target still fails with ``signature``."""
    def still_fails(candidate: Any, best: Any) -> bool:
        if _size(candidate) >= _size(best):
            return False
        kind, result, _ = execute_checked(target, candidate, hang_s)
        return kind in ("crash", "violation") and signature_of(kind, result) == signature

    return shrink(data, _smaller, still_fails, time.monotonic() + budget_s)


def minimize_report(report: Report, *, budget_s: float = 5.0, limit: int = 40) -> None:
    """Fill ``Failure.minimized`` for the first example of each crash/violation signature."""
    done = 0
    for name, st in report.targets.items():
        for examples in st.failures.values():
            f = examples[0]
            if f.kind not in ("crash", "violation") or done >= limit:
                continue
            done += 1
            target = TARGETS[name]
            data = regenerate(report.seed, name, f.index)
            small = minimize(target, data, f.signature, budget_s=budget_s, hang_s=report.hang_seconds)
            f.minimized = repr(small) if len(repr(small)) <= 4000 else target.describe(small)


def replay(seed: int, spec: str, hang_s: float) -> int:
    """Re-run input ``TARGET:INDEX`` of a run with ``seed`` and print what happened."""
    name, _, index_text = spec.partition(":")
    target = TARGETS[name]
    data = regenerate(seed, name, int(index_text))
    print(f"input {name}:{index_text} (seed {seed}):\n{data!r}\n")
    kind, result, elapsed = execute_checked(target, data, hang_s)
    print(f"{kind} in {elapsed * 1000:.2f} ms")
    if kind == "ok":
        print(result)
        return 0
    traceback.print_exception(type(result), result, result.__traceback__)
    if kind in ("crash", "violation"):
        small = minimize(target, data, signature_of(kind, result), hang_s=hang_s)
        print(f"\nsignature: {signature_of(kind, result)}\nminimized: {small!r}")
        known = known_issue(name, data, result)
        if known:
            print(f"known issue: {known}")
    return 1


# -- output ----------------------------------------------------------------------------------------------------------


def format_report(report: Report) -> str:
    """The table, the rejection reasons, and every failure signature with an example and its replay command."""
    rate = report.inputs_run / report.elapsed_s if report.elapsed_s else 0.0
    lines = [
        f"denen fuzz run: seed {report.seed}, {report.inputs_run} of {report.inputs_requested} inputs in "
        f"{report.elapsed_s:.1f} s ({rate:.0f} inputs/s) on {report.jobs} workers; per-input bound "
        f"{report.hang_seconds:g} s",
        "",
        f"{'target':<14}{'inputs':>9}{'accepted':>10}{'ignored':>9}{'rejected':>10}{'crashes':>9}{'violations':>12}"
        f"{'hangs':>7}  slowest",
    ]
    total = TargetStats("total")
    for name, s in report.targets.items():
        total.merge(s)
        slowest = f"{s.slowest[0][0] * 1000:.1f} ms (#{s.slowest[0][1]})" if s.slowest else "-"
        lines.append(f"{name:<14}{s.inputs:>9}{s.accepted:>10}{s.ignored:>9}{s.rejected_total:>10}{s.crashes:>9}"
                     f"{s.violations:>12}{s.hangs:>7}  {slowest}")
    slowest_all = max(((sec, i, n) for n, s in report.targets.items() for sec, i in s.slowest), default=None)
    lines.append(f"{'total':<14}{total.inputs:>9}{total.accepted:>10}{total.ignored:>9}{total.rejected_total:>10}"
                 f"{total.crashes:>9}{total.violations:>12}{total.hangs:>7}  "
                 + (f"{slowest_all[0] * 1000:.1f} ms ({slowest_all[2]} #{slowest_all[1]})" if slowest_all else "-"))
    lines += ["", "rejected by reason:"]
    for name, s in report.targets.items():
        reasons = ", ".join(f"{r} {n}" for r, n in s.rejected.most_common())
        lines.append(f"  {name}: {reasons or '-'}")
    if report.failures:
        lines += ["", "failures (one line per bug signature; replay an input with the command shown):"]
        for name, s in report.targets.items():
            for sig, examples in s.failures.items():
                f = examples[0]
                lines.append(f"  [{f.kind}] {name}: {sig} -- {s.signatures[sig]} inputs"
                             + (f" (known: {f.known})" if f.known else " (NEW)"))
                lines.append(f"      {f.exception}: {f.message[:300]}")
                lines.append(f"      input #{f.index}: {f.input[:300]}")
                if f.minimized:
                    lines.append(f"      minimized: {f.minimized[:300]}")
                lines.append(f"      replay: {_replay_cmd(report.seed, name, f.index)}")
    if not report.complete:
        lines += ["", f"INCOMPLETE: {report.inputs_run} of {report.inputs_requested} inputs ran before the time "
                      "limit (--seconds) or an interrupt"]
    lines += ["", "result: " + ("OK, no crash, violation or hang" if report.exit_code == 0 else
                                f"FAILED ({report.failures} failing inputs)" if report.failures else "INCOMPLETE")]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    """The command line; logging is silenced while it runs and restored after (tests call it in-process)."""
    disabled = logging.root.manager.disable
    try:
        return _main(argv)
    finally:
        logging.disable(disabled)


def _main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.fuzz.run", description=__doc__.split("\n\n")[0])
    parser.add_argument("--inputs", type=int, default=100_000, help="inputs to generate across the targets")
    parser.add_argument("--seconds", type=float, default=None, help="stop handing out work after this long")
    parser.add_argument("--json", metavar="PATH", help="also write the report as JSON")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 1, help="worker processes (default: CPUs)")
    parser.add_argument("--targets", default=",".join(TARGETS), help="comma-separated subset of: "
                        + ", ".join(TARGETS))
    parser.add_argument("--hang-seconds", type=float, default=2.0, help="per-input time bound (default 2 s)")
    parser.add_argument("--memory-mb", type=int, default=3072, help="address space limit per worker, MiB")
    parser.add_argument("--replay", metavar="TARGET:INDEX", help="re-run one input of a run with --seed")
    parser.add_argument("--no-minimize", action="store_true", help="do not shrink failing inputs after the run")
    parser.add_argument("--quiet", action="store_true", help="no progress lines on stderr")
    parser.add_argument("--explain", action="store_true",
                        help="print each target's documented error and what a specific rejection is, then exit")
    bridge = parser.add_argument_group("the whole bridge path (real Mosquitto, bridge and database)")
    bridge.add_argument("--bridge-path", type=int, metavar="N", help="send N hostile messages through a real bridge "
                        "instead of the targets above")
    bridge.add_argument("--bridge-db", choices=("influx", "victoria", "both"), default="influx",
                        help="database behind the bridge (both: N messages to each)")
    bridge.add_argument("--bridge-driver", choices=("mqtt", "direct"), default="mqtt",
                        help="mqtt: published through Mosquitto; direct: handed to the bridge's MQTT callback")
    bridge.add_argument("--sentinel-every", type=int, default=50, help="hostile messages between two sentinels")
    bridge.add_argument("--stall-seconds", type=float, default=30.0,
                        help="no progress for this long is a stall; also the bound from last publish to last "
                        "sentinel stored")
    bridge.add_argument("--large", type=float, default=0.003, help="share of payloads of 64 KiB to 1.2 MB")
    bridge.add_argument("--workdir", help="keep servers' data and dead-letter stores here (default: removed)")
    args = parser.parse_args(argv)
    if args.bridge_path is not None:
        return _bridge_path(args)
    logging.disable(logging.CRITICAL)
    if args.explain:
        for name, target in TARGETS.items():
            print(f"{name} ({target.error}):\n    {target.specific}")
        return 0
    if args.replay:
        return replay(args.seed, args.replay, args.hang_seconds)
    names = [n.strip() for n in args.targets.split(",") if n.strip()]
    unknown = [n for n in names if n not in TARGETS]
    if unknown:
        parser.error(f"unknown targets {unknown}; known: {', '.join(TARGETS)}")
    command = "python -m tests.fuzz.run " + " ".join(sys.argv[1:] if argv is None else argv)
    progress = None if args.quiet else (lambda text: print(text, file=sys.stderr, flush=True))
    report = run(names, args.inputs, seed=args.seed, jobs=args.jobs, seconds=args.seconds, hang_s=args.hang_seconds,
                 memory_mb=args.memory_mb, progress=progress, command=command)
    if report.failures and not args.no_minimize:
        minimize_report(report)
    print(format_report(report))
    if args.json:
        with open(args.json, "w", encoding="utf-8") as fh:
            json.dump(report.to_json(), fh, indent=2, ensure_ascii=False)
    return report.exit_code


def _bridge_path(args: argparse.Namespace) -> int:
    """``--bridge-path N``: the run of :mod:`tests.fuzz.bridge_path` on its own servers; summary, JSON line."""
    from tests.fuzz.bridge_path import run_bridge_path  # noqa: PLC0415 - needs paho and the servers only here

    logging.disable(logging.NOTSET)  # the run checks the bridge's ERROR lines (and keeps them off the console)
    progress = None if args.quiet else (lambda text: print(text, file=sys.stderr, flush=True))
    dbs = ("influx", "victoria") if args.bridge_db == "both" else (args.bridge_db,)
    results = []
    for db in dbs:
        workdir = os.path.join(args.workdir, db) if args.workdir else None
        report = run_bridge_path(args.bridge_path, seed=args.seed, db=db, driver=args.bridge_driver, workdir=workdir,
                                 sentinel_every=args.sentinel_every, stall_s=args.stall_seconds, large=args.large,
                                 progress=progress, quiet=True)
        print(report.summary(), flush=True)
        data = report.to_json()
        print(json.dumps({k: data[k] for k in (
            "driver", "db", "seed", "inputs", "published", "rate_per_s", "elapsed_s", "drain_s",
            "dead_letters_by_reason", "sentinels", "sentinels_missing", "sentinels_blocked", "crashes", "stalls",
            "server_refused", "redelivered", "ok")} | {"problems": len(data["findings"])}, ensure_ascii=False),
            flush=True)
        results.append(data)
    if args.json:
        with open(args.json, "w", encoding="utf-8") as fh:
            json.dump(results if len(results) > 1 else results[0], fh, indent=2, ensure_ascii=False)
    return 0 if all(r["ok"] for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
