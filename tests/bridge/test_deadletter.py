"""The dead-letter store: bounded (oldest first), any text stored, owner-only, no symlinks."""

from __future__ import annotations

import os
import sqlite3
import stat
from pathlib import Path

import pytest

from agent.bridge.deadletter import DeadLetter, DeadLetterStore
from agent.bridge.errors import BridgeError


def _item(i: int, size: int = 1000, reason: str = "invalid_json") -> DeadLetter:
    return DeadLetter(reason, f"item {i}", "payload", bytes([i % 256]) * size, "denen/v1/gw-x/readings/sos")


def test_oldest_evicted_past_the_cap_and_counted(tmp_path: Path) -> None:
    store = DeadLetterStore(tmp_path / "dead.db", max_bytes=50_000)
    try:
        for i in range(200):  # 200 kB offered, 50 kB allowed
            store.add([_item(i)])
        assert store.bytes_held <= 50_000
        assert store.count() == 50
        assert store.evicted == 150
        kept = store.items()
        assert [d.detail for d in kept] == [f"item {i}" for i in range(150, 200)]  # the newest survive
    finally:
        store.close()
    # The held size is measured again on open, so the cap holds across restarts.
    again = DeadLetterStore(tmp_path / "dead.db", max_bytes=50_000)
    try:
        assert again.bytes_held == 50_000
        again.add([_item(999, 10_000)])
        assert again.count() == 50 - 10 + 1
    finally:
        again.close()


def test_one_batch_larger_than_the_cap_keeps_its_newest(tmp_path: Path) -> None:
    store = DeadLetterStore(tmp_path / "dead.db", max_bytes=10_000)
    try:
        store.add([_item(i) for i in range(30)])
        assert store.count() == 10 and store.evicted == 20
    finally:
        store.close()


def test_item_content_is_cut_and_says_so(tmp_path: Path) -> None:
    store = DeadLetterStore(tmp_path / "dead.db", max_item_bytes=4096)
    try:
        store.add([DeadLetter("too_large", "33 MB batch", "payload", b"x" * 5_000_000, "t")])
        (item,) = store.items()
        assert len(item.content) == 4096
        assert "first 4096 of 5000000 bytes" in item.detail
    finally:
        store.close()


def test_lone_surrogates_and_huge_text_are_stored(tmp_path: Path) -> None:
    store = DeadLetterStore(tmp_path / "dead.db")
    try:
        store.add([DeadLetter("invalid_schema", "unknown keys in the batch: k\ud800ey", "payload", b"{}",
                              "denen/v1/gw-\udfff/status", "gw/\ud83d/1")])
        store.add([DeadLetter("invalid_schema", "d" * 100_000, "payload", b"{}")])
        first, second = store.items()
        assert first.detail == "unknown keys in the batch: k\\ud800ey"
        assert first.topic == "denen/v1/gw-\\udfff/status" and first.reading_id == "gw/\\ud83d/1"
        assert len(second.detail) < 5000 and second.detail.endswith("more characters)")
    finally:
        store.close()


def test_created_owner_only(tmp_path: Path) -> None:
    old = os.umask(0o022)
    try:
        store = DeadLetterStore(tmp_path / "d" / "dead.db")
        store.add([_item(1)])
        store.close()
    finally:
        os.umask(old)
    for name in os.listdir(tmp_path / "d"):
        assert stat.S_IMODE(os.stat(tmp_path / "d" / name).st_mode) & 0o077 == 0, name


def test_symlink_refused(tmp_path: Path) -> None:
    (tmp_path / "dead.db").symlink_to(tmp_path / "nowhere" / "x.db")
    with pytest.raises(BridgeError, match="symbolic link"):
        DeadLetterStore(tmp_path / "dead.db")


def test_failed_write_raises_bridge_error_and_keeps_the_count(tmp_path: Path) -> None:
    store = DeadLetterStore(tmp_path / "dead.db")
    try:
        store.add([_item(1)])
        held = store.bytes_held
        # A read-only connection stands in for a disk that refuses writes.
        store._db.close()  # type: ignore[union-attr]
        store._db = sqlite3.connect(f"file:{tmp_path / 'dead.db'}?mode=ro", uri=True, isolation_level=None,
                                    check_same_thread=False)
        with pytest.raises(BridgeError, match="cannot write"):
            store.add([_item(2)])
        assert store.bytes_held == held
    finally:
        store.close()
