"""RateLimitedLog: the first event of a key in full, the rest summarised once per window, keys bounded."""

from __future__ import annotations

import logging

import pytest

from agent.ratelog import RateLimitedLog


class _Clock:
    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


def test_first_in_full_then_one_summary_per_window(caplog: pytest.LogCaptureFixture) -> None:
    clock = _Clock()
    log = logging.getLogger("test.ratelog")
    rl = RateLimitedLog(log, interval_s=60, clock=clock)
    with caplog.at_level(logging.WARNING, logger="test.ratelog"):
        assert rl.warning("bad_mic", "node 00a1b2c3", "frames", "frame quarantined from %s", "00a1b2c3")
        for _ in range(2999):
            assert not rl.warning("bad_mic", "node 00a1b2c3", "frames", "frame quarantined from %s", "00a1b2c3")
        assert rl.warning("replay", "node 00a1b2c3", "frames", "replayed from %s", "00a1b2c3")
        assert len(caplog.records) == 2
        clock.t += 61
        rl.tick()
    lines = [r.getMessage() for r in caplog.records]
    assert lines[0] == "frame quarantined from 00a1b2c3"
    assert lines[2] == "... 2,999 more bad_mic frames from node 00a1b2c3 in the last 61 s"
    assert len(lines) == 3  # replay had no repeats: no summary for it
    assert rl.suppressed == 2999
    # A new window logs the first event in full again.
    with caplog.at_level(logging.WARNING, logger="test.ratelog"):
        assert rl.warning("bad_mic", "node 00a1b2c3", "frames", "again")


def test_distinct_keys_are_bounded(caplog: pytest.LogCaptureFixture) -> None:
    clock = _Clock()
    log = logging.getLogger("test.ratelog.keys")
    rl = RateLimitedLog(log, interval_s=60, max_keys=10, clock=clock)
    with caplog.at_level(logging.WARNING, logger="test.ratelog.keys"):
        for i in range(5000):
            rl.warning("unknown_node", f"node {i:08x}", "frames", "unknown node %08x", i)
        assert len(caplog.records) == 10
        assert len(rl._held) == 11  # ten keys and the overflow
        rl.flush(clock.t + 60)
    assert caplog.records[-1].getMessage().startswith("... 4,990 more frames of other kinds and senders")
