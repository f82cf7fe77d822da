"""The dedicated run's machinery on small runs: counting, crash and hang detection (Python-level and stuck in C
code), minimisation, replay, the time limit and the JSON report."""

from __future__ import annotations

import json
import random
import signal
import time
from pathlib import Path

import pytest

from tests.fuzz import run as fuzz
from tests.fuzz.targets import ACCEPTED, TARGETS, Target, regenerate, rejected


class _Selftest(Target):
    """A target with a bug on purpose: ``execute`` fails on inputs equal to zero."""

    error = "ValueError"
    specific = "-"
    weight = 1.0
    unit = 10

    def __init__(self, name: str, failure: str) -> None:
        self.name = name
        self.failure = failure

    def generate(self, rng: random.Random) -> bytes:
        return bytes(rng.randrange(1, 256) for _ in range(6)) + bytes([rng.randrange(12)])

    def valid(self, rng: random.Random) -> bytes:
        return b"\x01"

    def execute(self, data: bytes) -> object:
        if 0 in data:
            if self.failure == "crash":
                raise ZeroDivisionError("a zero byte")
            if self.failure == "sleep":
                time.sleep(30)  # the worker's alarm interrupts this
            if self.failure == "stuck":
                # Like C code that never checks for signals: the alarm cannot get in, only the parent's watchdog.
                signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGALRM})
                time.sleep(30)
        return ACCEPTED if data[0] % 2 else rejected("odd")


def _install(monkeypatch: pytest.MonkeyPatch, failure: str) -> str:
    name = f"selftest_{failure}"
    monkeypatch.setitem(TARGETS, name, _Selftest(name, failure))
    return name


def _bad(seed: int, name: str, n: int) -> list[int]:
    return [i for i in range(n) if 0 in regenerate(seed, name, i)]


def test_inputs_are_a_pure_function_of_seed_target_and_index() -> None:
    # Replay and the parent's watchdog regenerate inputs from (seed, target, index) alone, in another process and
    # after other inputs: generating must not depend on what was generated before.
    for name in [n for n in TARGETS if not n.startswith("selftest")]:
        first = [repr(regenerate(8, name, i)) for i in range(120)]
        again = [repr(regenerate(8, name, i)) for i in reversed(range(120))][::-1]
        assert first == again, name


def test_a_clean_run_counts_every_input_and_passes() -> None:
    report = fuzz.run(["lpp", "frame"], 3000, seed=5, jobs=2)
    assert report.complete and report.exit_code == 0 and report.inputs_run == 3000
    for s in report.targets.values():
        assert s.inputs == s.accepted + s.ignored + s.rejected_total > 0
        assert s.accepted and s.rejected_total and len(s.slowest) == 3
    assert sum(s.inputs for s in report.targets.values()) == 3000
    shares = fuzz.allocate(3000, [TARGETS["lpp"], TARGETS["frame"]])
    assert sum(shares.values()) == 3000
    assert abs(shares["lpp"] / 3000 - TARGETS["lpp"].weight / (TARGETS["lpp"].weight + TARGETS["frame"].weight)) < 1e-3


def test_crashes_are_counted_minimized_and_replayable(monkeypatch: pytest.MonkeyPatch,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    name = _install(monkeypatch, "crash")
    bad = _bad(3, name, 200)
    report = fuzz.run([name], 200, seed=3, jobs=2)
    stats = report.targets[name]
    assert stats.crashes == len(bad) > 0 and report.exit_code == 1
    [(signature, examples)] = stats.failures.items()
    assert signature.startswith("ZeroDivisionError at tests/fuzz/test_fuzz_run.py:")
    assert examples[0].index in bad and "a zero byte" in examples[0].message
    fuzz.minimize_report(report, budget_s=5)
    assert examples[0].minimized == repr(b"\x00")
    assert "[crash] selftest_crash" in fuzz.format_report(report)
    assert fuzz.main(["--seed", "3", "--replay", f"{name}:{bad[0]}"]) == 1
    assert "ZeroDivisionError" in capsys.readouterr().err


def test_a_slow_input_is_interrupted_and_reported_as_a_hang(monkeypatch: pytest.MonkeyPatch) -> None:
    name = _install(monkeypatch, "sleep")
    bad = _bad(4, name, 40)
    assert bad
    t0 = time.monotonic()
    report = fuzz.run([name], 40, seed=4, jobs=1, hang_s=0.2)
    assert time.monotonic() - t0 < 10 + 0.5 * len(bad)
    stats = report.targets[name]
    assert (stats.hangs, stats.inputs, report.exit_code) == (len(bad), 40, 1)
    assert stats.slowest[0][0] >= 0.2 and stats.slowest[0][1] in bad
    example = next(iter(stats.failures.values()))[0]
    assert example.kind == "hang" and "time.sleep" in example.traceback


def test_a_worker_stuck_in_c_code_is_killed_and_the_rest_of_its_work_still_runs(monkeypatch: pytest.MonkeyPatch,
                                                                                 ) -> None:
    name = _install(monkeypatch, "stuck")
    seed = next(s for s in range(100) if len(_bad(s, name, 30)) == 1)
    [bad] = _bad(seed, name, 30)
    report = fuzz.run([name], 30, seed=seed, jobs=1, hang_s=0.2, hard_grace_s=0.5)
    stats = report.targets[name]
    assert (stats.hangs, stats.inputs, report.exit_code) == (1, 30, 1)
    example = next(iter(stats.failures.values()))[0]
    assert example.index == bad and "worker killed" in example.message
    assert stats.accepted + stats.rejected_total == 29  # every other input ran once, none twice


def test_a_time_limit_stops_early_and_says_incomplete(tmp_path: Path) -> None:
    out = tmp_path / "report.json"
    assert fuzz.main(["--inputs", "1000", "--seconds", "0", "--targets", "lpp", "--json", str(out), "--quiet"]) == 3
    data = json.loads(out.read_text())
    assert data["complete"] is False and data["exit_code"] == 3 and data["inputs_run"] < 1000


def test_explain_lists_every_target(capsys: pytest.CaptureFixture[str]) -> None:
    assert fuzz.main(["--explain"]) == 0
    text = capsys.readouterr().out
    assert all(f"{name} (" in text for name in TARGETS)


def test_cli_writes_the_table_and_the_json_report(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "report.json"
    code = fuzz.main(["--inputs", "800", "--targets", "kinds,lpp", "--jobs", "1", "--seed", "9", "--json", str(out),
                      "--quiet"])
    assert code == 0
    table = capsys.readouterr().out
    assert "kinds" in table and "rejected by reason:" in table and "result: OK" in table
    data = json.loads(out.read_text())
    assert data["inputs_run"] == 800 and set(data["targets"]) == {"kinds", "lpp"}
    kinds = data["targets"]["kinds"]
    assert kinds["inputs"] == kinds["accepted"] + kinds["ignored"] + kinds["rejected"]
    assert sum(kinds["rejected_by_reason"].values()) == kinds["rejected"] and kinds["specific"]
