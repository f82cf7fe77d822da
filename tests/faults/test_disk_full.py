"""Disk full: the journal's filesystem fills up (ENOSPC) while the broker is away; the agent keeps running, keeps
the readings it cannot commit in memory, and when space returns commits and publishes them all, nothing lost,
nothing journaled twice. (The quota case of the disk is test_long_outage.py.)

The run, once per module (the first two tests check different things of it), on a 16 MB tmpfs:

1. the agent journals and publishes normally;
2. the broker goes away, so readings stay in the journal and it has to grow; a filler file takes every free block
   of the filesystem; frames keep coming until the agent logs that a commit failed, then 1000 more;
3. the broker returns while the disk is still full and an SOS is pressed: it must go out at once, from memory
   (an SOS never waits for a disk to be cleared); it is published again, same identity, once journaled, so
   the figure ``redelivered_messages`` counts the SOS readings of the run that were held in memory;
4. the filler is deleted; the agent commits what it held in memory and publishes everything.

Accounting is by (node, frame counter): every frame the module wrote into the pty (:class:`WireRecorder`) must
reach the subscriber, with one edge timestamp (MQTT may deliver a message twice across a broker restart; the same
reading with the same timestamp is an overwrite, README "Payload schema"). Filesystems are tmpfs mounts
(``mount -t tmpfs -o size=...``; the suite runs as root), unmounted at the end.

Why 16 MB for the filler test: room for the journal's write-ahead log. With SQLite's default checkpoint size
(about 4 MB) a smaller filesystem wedged the journal; it now checkpoints every ~1 MB and truncates the log when a
commit fails for lack of space, and the last test shows it keeps committing on a 2 MB filesystem.
"""

from __future__ import annotations

import errno
import os
import random
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from agent.dev.devbroker import Mosquitto
from tests.support.fault_rig import (AgentProcess, WireRecorder, denen_status_json, journal_status, journaled_once,
                                     readings_collector, readings_in, write_gateway)
from tests.support.field import FieldNode, default_values, start_sim, wait_configured
from tests.support.polling import wait_until

pytestmark = [pytest.mark.faults, pytest.mark.broker]

DISK = "16m"
SMALL_DISK = "2m"
FRAMES_WHILE_FULL = 1000  # frames sent while the disk is full, kept in the agent's memory


def _fill(path: Path) -> int:
    """Write zeros into ``path`` until the filesystem is full; returns the bytes written."""
    chunk = bytes(65536)
    written = 0
    with path.open("wb", buffering=0) as f:
        while True:
            try:
                written += f.write(chunk)
            except OSError as exc:
                if exc.errno != errno.ENOSPC:
                    raise
                if len(chunk) == 1:
                    return written
                chunk = chunk[: len(chunk) // 2]  # take the last blocks too


@contextmanager
def _tmpfs(where: Path, size: str) -> Iterator[Path]:
    """A tmpfs of ``size`` mounted at ``where``, unmounted afterwards."""
    out = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(where)], capture_output=True,
                         text=True)
    if out.returncode != 0:
        pytest.fail(f"cannot mount a tmpfs at {where} (the disk-full tests need root): {out.stderr.strip()}")
    try:
        yield where
    finally:
        subprocess.run(["umount", str(where)], check=False)
        if os.path.ismount(where):
            subprocess.run(["umount", "-l", str(where)], check=False)


@pytest.fixture(scope="module")
def disk(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    with _tmpfs(tmp_path_factory.mktemp("disk"), DISK) as where:
        yield where


@pytest.fixture(scope="module")
def run(disk: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """Drive the disk-full run once; the tests check its outcome."""
    tmp = tmp_path_factory.mktemp("diskfull")
    seed = int(os.environ.get("DENEN_FAULTS_SEED", "0")) or random.SystemRandom().randrange(1, 2**31)
    broker = Mosquitto(tmp / "broker")
    broker.start()
    kinds = ["sos", "trap", "water_level", "rain", "weather"]
    nodes = [FieldNode(0x0E000000 + i, k) for i, k in enumerate(kinds)]
    sim = start_sim(tmp, rng_seed=seed)
    wire = WireRecorder(sim)
    journal = disk / "journal.db"
    cfg = write_gateway(tmp, sim=sim, broker=broker, journal=journal, nodes=nodes, health_s=10)
    col = readings_collector(broker, "disk-collector")
    agent = AgentProcess(cfg, tmp / "agent.log")
    filler = disk / "filler"
    i = 0

    def send(count: int) -> None:
        nonlocal i
        for _ in range(count):
            i += 1
            n = nodes[i % len(nodes)]
            assert sim.inject_uplink(n.frame(default_values(n.kind, i)))

    def send_sos() -> None:
        assert sim.inject_uplink(nodes[0].frame(default_values("sos", 0)))

    def journaled() -> int:
        return journal_status(journal)["counters"].get("frames.ok", 0)

    out: dict[str, Any] = {"seed": seed}
    try:
        agent.start()
        assert wait_configured(sim, 0, 20), agent.run_log()
        send(50)
        assert col.wait_for(lambda m: len(readings_in(m)) >= 50, 20)

        broker.stop()
        out["filler_bytes"] = _fill(filler)
        # Frames until the agent reports a failed commit, then as many again while the disk stays full.
        sent_before_full = len(wire)
        deadline = time.monotonic() + 60
        while "journal commit failed" not in agent.run_log():
            assert time.monotonic() < deadline, "the journal never hit the full disk"
            send(20)
            time.sleep(0.05)
        out["frames_until_first_failure"] = len(wire) - sent_before_full
        out["journaled_when_full"] = journaled()
        for _ in range(FRAMES_WHILE_FULL // 25):
            send(25)
            time.sleep(0.05)
        time.sleep(3)  # a few retries (one a second) with the disk still full
        # The broker returns while the disk is still full, and an SOS is pressed: it goes out from memory.
        arrived_before = len(readings_in(col.messages))
        broker.start()
        time.sleep(2)
        sos_key = (nodes[0].hex, nodes[0].counter + 1)  # the frame send_sos() makes next
        send_sos()
        out["sos_while_full"] = col.wait_for(
            lambda m: any(r["kind"] == "sos" and (r["node"], r["fcnt"]) == sos_key for _, r in readings_in(m)), 5)
        time.sleep(1)
        out["published_while_full"] = len(readings_in(col.messages)) - arrived_before
        out["alive_while_full"] = agent.alive
        out["failures_logged"] = agent.run_log().count("journal commit failed")
        out["frames_while_full"] = len(wire) - sent_before_full
        out["journaled_while_full"] = journaled()

        filler.unlink()
        n = len(wire)
        out["recommitted"] = wait_until(lambda: journaled() >= n, 30)
        out["unsent_zero"] = wait_until(lambda: journal_status(journal)["journal"]["unsent"] == 0, 60)
        want = set(wire.snapshot())
        col.wait_for(lambda m: want <= {(r["node"], r["fcnt"]) for _, r in readings_in(m)}, 30)
        time.sleep(0.5)  # a duplicate, if any, would arrive now
        out["alive_at_end"] = agent.alive
        out["wire"] = wire.snapshot()
        out["readings"] = [r for _, r in readings_in(col.messages)]
        out["got"] = [(r["node"], r["fcnt"]) for r in out["readings"] if r["node"] != "gateway"]
        out["status"] = denen_status_json(cfg)
        out["log"] = agent.full_log()
        yield out
    finally:
        agent.stop()
        col.close()
        sim.stop()
        broker.stop()
        if filler.exists():
            filler.unlink()


def test_a_full_disk_stops_commits_but_not_the_agent_and_nothing_is_lost_when_space_returns(
        run: dict[str, Any], figures: dict[str, Any]) -> None:
    assert run["alive_while_full"] and run["alive_at_end"], run["log"][-3000:]
    assert run["failures_logged"] >= 1 and run["status"]["counters"].get("journal.commit_failed", 0) >= 2, \
        "the core should retry the commit (once a second)"
    assert run["sos_while_full"], "an SOS pressed while the disk was full was not published from memory"
    # While the disk was full nothing more became durable; the frames were kept in memory.
    assert run["journaled_while_full"] == run["journaled_when_full"], run["log"][-3000:]
    assert run["recommitted"], "the readings held in memory were not committed when space returned"
    assert run["unsent_zero"]
    got, wire = run["got"], run["wire"]
    twice = journaled_once(run["readings"])
    assert not twice, f"readings journaled twice (two timestamps): {twice[:10]}"
    missing = sorted(set(wire) - set(got))
    assert not missing, f"{len(missing)} readings lost, e.g. {missing[:10]}"
    assert set(got) == set(wire)
    figures.update({k: run[k] for k in ("seed", "filler_bytes", "frames_until_first_failure", "failures_logged",
                                        "frames_while_full", "published_while_full")},
                   frames=len(wire), arrived=len(set(got)), redelivered_messages=len(got) - len(set(got)),
                   disk=DISK)


def test_failed_commits_are_counted_in_denen_status(run: dict[str, Any]) -> None:
    counters = run["status"]["counters"]
    assert counters.get("journal.commit_failed", 0) >= 1, counters


def test_the_journal_keeps_committing_on_a_filesystem_smaller_than_its_wal(
        tmp_path: Path, broker: Mosquitto, figures: dict[str, Any]) -> None:
    nodes = [FieldNode(0x0E100000 + i, k) for i, k in enumerate(["water_level", "rain"])]
    sim = start_sim(tmp_path, rng_seed=3)
    wire = WireRecorder(sim)
    (tmp_path / "small").mkdir()
    col = readings_collector(broker, "small-disk-collector")
    agent: AgentProcess | None = None
    try:
        with _tmpfs(tmp_path / "small", SMALL_DISK) as small:
            journal = small / "journal.db"
            cfg = write_gateway(tmp_path, sim=sim, broker=broker, journal=journal, nodes=nodes)
            agent = AgentProcess(cfg, tmp_path / "agent.log")
            agent.start()
            assert wait_configured(sim, 0, 20), agent.run_log()
            # One frame at a time, each committed on its own and acknowledged: a quiet gateway's normal life. The
            # live data stays a few kB; 600 frames make over a thousand commits.
            for k in range(600):
                n = nodes[k % 2]
                assert sim.inject_uplink(n.frame(default_values(n.kind, k)))
                time.sleep(0.01)
            want = set(wire.snapshot())
            arrived = col.wait_for(lambda m: want <= {(r["node"], r["fcnt"]) for _, r in readings_in(m)}, 10)
            failures = agent.run_log().count("journal commit failed")
            wal = os.path.getsize(f"{journal}-wal") if os.path.exists(f"{journal}-wal") else 0
            figures.update(frames=len(want), commit_failures_logged=failures, wal_bytes=wal, disk=SMALL_DISK)
            agent.stop()
    finally:
        if agent is not None:
            agent.stop()
        col.close()
        sim.stop()
    assert failures == 0, f"{failures} commits failed on a {SMALL_DISK} filesystem (WAL {wal} bytes)"
    assert arrived
