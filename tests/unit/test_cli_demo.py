"""``denen demo`` stops what it started (the broker, the simulators, the agent) however it ends: its duration,
Ctrl-C, SIGTERM, or a failure after the broker came up. Real Mosquitto, simulators on real ptys."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from tests.support.process import processes_mentioning

REPO = Path(__file__).resolve().parents[2]

pytestmark = [pytest.mark.broker, pytest.mark.slow]


def start_demo(work: Path, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-m", "agent.cli", "demo", "--workdir", str(work), *args], cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "COLUMNS": "120"})


@contextmanager
def demo_running(work: Path, *args: str) -> Iterator[subprocess.Popen[str]]:
    """A started demo; killed on the way out if it has not ended by then (a failed test leaves nothing behind)."""
    proc = start_demo(work, *args)
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()


def wait_for_broker(work: Path, proc: subprocess.Popen[str], timeout: float = 60) -> None:
    """Until the demo's Mosquitto runs (its config in the work folder is on its command line)."""
    deadline = time.monotonic() + timeout
    while not processes_mentioning(str(work / "broker")):
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, "the demo's broker did not start"
        time.sleep(0.05)


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c", "sigterm"])
def test_a_signal_while_running_stops_the_broker_and_simulators(tmp_path: Path, sig: signal.Signals) -> None:
    work = tmp_path / "demo"
    with demo_running(work) as proc:
        wait_for_broker(work, proc)
        deadline = time.monotonic() + 60
        while "readings" not in (work / "agent.log").read_text(errors="replace") and time.monotonic() < deadline:
            time.sleep(0.2)  # until the agent runs and logs
        proc.send_signal(sig)
        out, err = proc.communicate(timeout=60)
    assert "Traceback" not in err, err
    assert processes_mentioning(str(work)) == []
    assert not any(os.path.exists(work / "sim" / name) and os.path.islink(work / "sim" / name)
                   and os.path.exists(os.readlink(work / "sim" / name)) for name in ("lora0", "lora1"))


def test_a_signal_while_starting_stops_the_broker(tmp_path: Path) -> None:
    work = tmp_path / "demo"
    with demo_running(work) as proc:
        wait_for_broker(work, proc)  # the broker is up; the simulators and the agent are still starting
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=60)
    assert "Traceback" not in err, err
    assert proc.returncode in (0, 130)
    assert processes_mentioning(str(work)) == []


def test_a_failure_after_the_broker_started_stops_it(tmp_path: Path) -> None:
    work = tmp_path / "demo"
    work.mkdir()
    (work / "sim").write_text("a file where the simulators' link folder must go\n")
    proc = start_demo(work, "--duration", "20")
    out, err = proc.communicate(timeout=120)
    assert proc.returncode != 0
    assert "Traceback" not in err and "sim" in err, err
    assert len(err.strip().splitlines()) == 1, err
    assert (work / "broker" / "mosquitto.conf").exists()  # the broker had been started
    assert processes_mentioning(str(work)) == []


def test_the_demo_shows_readings_and_ends_clean(tmp_path: Path) -> None:
    work = tmp_path / "demo"
    proc = start_demo(work, "--duration", "10")
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err + out
    assert "gw-demo-01: online" in out and "trap-demo-1" in out
    assert processes_mentioning(str(work)) == []
