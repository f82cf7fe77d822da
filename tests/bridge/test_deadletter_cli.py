"""``denen bridge dead-letters list|show|replay|purge`` on real stores, a real broker and a real InfluxDB 1.6.7.

* replay: lines the database refused for a field type conflict are written, exactly once, after the cause is
  removed, and leave the store; lines whose cause stays are kept (same id) with the database's new error;
* list/show: filters and JSON; hostile bytes (terminal escape sequences, newlines, bytes that are not UTF-8) are
  shown escaped, never sent to the terminal as they are;
* purge: nothing goes without --yes; ids, --reason, --before, --all;
* a command beside a running bridge that dead-letters a flood: no "database is locked", and the bridge's count of
  the bytes it holds follows what the command removed.
"""

from __future__ import annotations

import argparse
import json
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from agent.bridge import Bridge, DeadLetterStore, parse_bridge_config
from agent.bridge import deadletter_cli as cli
from agent.bridge.deadletter import DeadLetter
from agent.dev.devbroker import Mosquitto
from tests.bridge._helpers import T0_US, Publisher, batch, bridge_config_text, reading, topic, v1_sink
from tests.support.influx import InfluxDB1
from tests.support.polling import wait_until

DB = "denen"
DAY_US = 86_400_000_000


def run(*argv: str) -> int:
    parser = argparse.ArgumentParser(prog="denen bridge dead-letters")
    cli.add_arguments(parser)
    return cli.main(parser.parse_args(list(argv)))


def write_config(tmp: Path, broker_host: str = "127.0.0.1", broker_port: int = 1883, influx_url: str =
                 "http://127.0.0.1:9", client_id: str = "bridge-dl-1") -> Path:
    class _Broker:
        host, port = broker_host, broker_port

    text = bridge_config_text(broker=_Broker(), sink=v1_sink(influx_url), dead_letter=tmp / "dead.db",  # type: ignore[arg-type]
                              client_id=client_id)
    text += "health:\n  enabled: false\n"
    path = tmp / "bridge.yaml"
    path.write_text(text)
    return path


HOSTILE = b"\x1b]0;owned\x07\x1b[2J\x1b[31mred\r\nsecond line\x9b\xff\xfe end \\x41 \xe6\x97\xa5\xe6\x9c\xac"


@pytest.fixture
def store_config(tmp_path: Path) -> Path:
    config = write_config(tmp_path)
    store = DeadLetterStore(tmp_path / "dead.db")
    try:
        store.add([DeadLetter("invalid_json", "payload is not UTF-8 JSON: \x1b[2Jboom", "payload", HOSTILE,
                              "denen/v1/gw-a/readings/telemetry")])
        store.add([DeadLetter("rejected_by_server", "field type conflict", "line", b"water_level level_cm=1 1",
                              "denen/v1/gw-b/readings/telemetry", "gw-b/00000301/7")])
        store.add([DeadLetter("internal_error", "writing this message raised: Traceback (most recent call last):\n"
                              "  File \"x.py\", line 1\nValueError: \x1b[31mbad", "payload", b"{}",
                              "denen/v1/gw-a/status")])
    finally:
        store.close()
    # The first item is old: stored 10 days ago.
    with sqlite3.connect(tmp_path / "dead.db") as db:
        db.execute("UPDATE dead_letter SET stored_us = stored_us - ? WHERE id = 1", (10 * DAY_US,))
    db.close()
    return config


def test_list_filters_and_json(store_config: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert run("list", "-c", str(store_config)) == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    assert lines[0].split() == ["ID", "STORED", "GATEWAY", "REASON", "KIND", "SIZE"]
    assert [line.split()[0] for line in lines[1:]] == ["1", "2", "3"]
    assert "gw-b" in lines[2] and "rejected_by_server" in lines[2] and "24 B" in lines[2]
    assert run("list", "-c", str(store_config), "--reason", "rejected_by_server", "--json") == 0
    items = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [(i["id"], i["gateway"], i["reading_id"], i["size"]) for i in items] == [(2, "gw-b", "gw-b/00000301/7", 24)]
    assert run("list", "-c", str(store_config), "--gateway", "gw-a", "--json") == 0
    assert [json.loads(line)["id"] for line in capsys.readouterr().out.splitlines()] == [1, 3]
    assert run("list", "-c", str(store_config), "--since", "1d", "--json") == 0
    assert [json.loads(line)["id"] for line in capsys.readouterr().out.splitlines()] == [2, 3]
    assert run("list", "-c", str(store_config), "--reason", "too_large") == 0
    assert capsys.readouterr().out == "no dead letters matching the filters\n"


def test_show_escapes_every_control_character(store_config: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert run("show", "1", "-c", str(store_config)) == 0
    out = capsys.readouterr().out
    for raw in ("\x1b", "\x07", "\r", "\x9b", "\ufffd"):
        assert raw not in out, f"{raw!r} reached the terminal"
    content = out.split("content (control characters and bytes that are not UTF-8 escaped):\n  ", 1)[1]
    assert content == ("\\x1b]0;owned\\x07\\x1b[2J\\x1b[31mred\\r\\nsecond line\\x9b\\xff\\xfe end \\\\x41 日本\n")
    assert "detail:\n  payload is not UTF-8 JSON: \\x1b[2Jboom\n" in out
    # A stored traceback keeps its lines, each escaped.
    assert run("show", "3", "-c", str(store_config)) == 0
    out = capsys.readouterr().out
    assert ("  writing this message raised: Traceback (most recent call last):\n    File \"x.py\", line 1\n"
            "  ValueError: \\x1b[31mbad\n") in out
    assert run("show", "1", "-c", str(store_config), "--json") == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["content_encoding"] == "base64" and doc["reason"] == "invalid_json"
    import base64

    assert base64.b64decode(doc["content"]) == HOSTILE


def test_show_and_replay_of_an_unknown_id_and_a_missing_store(store_config: Path, tmp_path: Path,
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    assert run("show", "99", "-c", str(store_config)) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no dead letter with id 99" in err
    (tmp_path / "dead.db").rename(tmp_path / "elsewhere.db")
    assert run("list", "-c", str(store_config)) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no dead-letter store at" in err
    assert not (tmp_path / "dead.db").exists()  # reading never creates a store


def test_purge_needs_yes_and_deletes_what_it_names(store_config: Path, capsys: pytest.CaptureFixture[str]) -> None:
    def ids() -> list[int]:
        run("list", "-c", str(store_config), "--json")
        return [json.loads(line)["id"] for line in capsys.readouterr().out.splitlines()]

    assert run("purge", "-c", str(store_config)) == 1
    assert "say what to purge" in capsys.readouterr().err
    assert run("purge", "--all", "-c", str(store_config)) == 1
    assert "would delete 3 dead letters" in capsys.readouterr().out
    assert ids() == [1, 2, 3]
    assert run("purge", "--before", "1d", "--yes", "-c", str(store_config)) == 0
    assert "deleted 1 dead letters" in capsys.readouterr().out
    assert ids() == [2, 3]
    assert run("purge", "--reason", "internal_error", "--yes", "-c", str(store_config)) == 0
    assert "deleted 1 dead letters" in capsys.readouterr().out
    assert ids() == [2]
    assert run("purge", "2", "--yes", "-c", str(store_config)) == 0
    assert "deleted 1 dead letters" in capsys.readouterr().out
    assert ids() == []


def test_time_arguments() -> None:
    assert cli.parse_time("2h", now=10_000.0) == 10_000.0 - 7200
    assert cli.parse_time("2026-12-01T00:00:00+09:00") == 1_796_050_800.0
    with pytest.raises(ValueError, match="not a time"):
        cli.parse_time("yesterday")
    with pytest.raises(SystemExit):
        run("list", "--since", "yesterday")


def test_the_denen_command_runs_the_actions(store_config: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from agent.cli import main

    assert main(["bridge", "dead-letters", "list", "-c", str(store_config), "--json"]) == 0
    assert len(capsys.readouterr().out.splitlines()) == 3


# ---- replay on real parts ------------------------------------------------------------------------------------------


def _level_rows(influx: InfluxDB1) -> list[dict[str, Any]]:
    return influx.rows('SELECT "level_cm", "node", "fcnt" FROM "water_level"', DB)


def test_replay_writes_refused_lines_once_after_the_cause_is_removed(tmp_path: Path, broker: Mosquitto,
                                                                     influx: InfluxDB1,
                                                                     capsys: pytest.CaptureFixture[str]) -> None:
    # The causes: a string level_cm in water_level's shard, a string rain_mm in rain's (another shard).
    rain_ts = T0_US + 30 * DAY_US
    assert influx.write([f'water_level,node=ffffffff level_cm="broken" {T0_US}',
                         f'rain,node=ffffffff rain_mm="broken" {rain_ts}'], DB)[0] == 204
    config = write_config(tmp_path, broker.host, broker.port, influx.url)
    bridge = Bridge(parse_bridge_config(config.read_text(), base_dir=tmp_path))
    bridge.start()
    pub = Publisher(broker)
    try:
        assert bridge.wait_subscribed(10)
        levels = [reading("gw-test-01", 0x301, i, "water_level", {"level_cm": 120.5 + i, "battery_v": 3.6})
                  for i in (1, 2)]
        rain = reading("gw-test-01", 0x401, 1, "rain", {"rain_mm": 3.5}, ts_us=rain_ts)
        pub.publish([(topic("gw-test-01"), batch("gw-test-01", levels)),
                     (topic("gw-test-01"), batch("gw-test-01", [rain]))])
        assert wait_until(lambda: bridge.counters().get("dead_letters.rejected_by_server", 0) == 3, 15)
        assert run("list", "-c", str(config), "--json") == 0
        items = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
        assert [(i["reason"], i["kind"], i["reading_id"]) for i in items] == [
            ("rejected_by_server", "line", "gw-test-01/00000301/1"),
            ("rejected_by_server", "line", "gw-test-01/00000301/2"),
            ("rejected_by_server", "line", "gw-test-01/00000401/1")]
        rain_id = items[2]["id"]

        # Still refused: replayed, refused again, kept.
        assert run("replay", "--all", "-c", str(config)) == 1
        assert "0 written and removed from the store, 3 failed again and stay (rejected_by_server 3)" in \
            capsys.readouterr().out
        assert [r for r in _level_rows(influx) if r["node"] != "ffffffff"] == []

        # The operator removes the bad water_level data; the rain conflict stays. The bridge keeps running.
        influx.execute('DROP MEASUREMENT "water_level"', DB)
        assert run("replay", "--reason", "rejected_by_server", "-c", str(config)) == 1
        out = capsys.readouterr().out
        assert "replayed 3 items: 2 written and removed from the store, 1 failed again and stay" in out
        rows = _level_rows(influx)
        assert sorted((r["node"], r["fcnt"], r["level_cm"]) for r in rows) == [
            ("00000301", 1.0, 121.5), ("00000301", 2.0, 122.5)]
        assert run("list", "-c", str(config), "--json") == 0
        left = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
        assert [(i["id"], i["reason"]) for i in left] == [(rain_id, "rejected_by_server")]
        assert run("show", str(rain_id), "-c", str(config)) == 0
        assert "already exists as type string" in capsys.readouterr().out
        assert run("replay", "--all", "-c", str(config)) == 1  # nothing changed for it
        capsys.readouterr()
        assert len(_level_rows(influx)) == 2  # written once, whatever is replayed after
    finally:
        pub.close()
        bridge.stop()


def test_replay_of_a_payload_goes_through_the_converter(tmp_path: Path, broker: Mosquitto, influx: InfluxDB1,
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    """A payload and a reading stored by the converter's rules are judged by the same rules again: a reading of a
    gateway the registry refused is written once the registry knows it; an invalid payload stays."""
    config = write_config(tmp_path, broker.host, broker.port, influx.url)
    good = reading("gw-test-01", 0x301, 5, "water_level", {"level_cm": 150.25, "battery_v": 3.6})
    store = DeadLetterStore(tmp_path / "dead.db")
    try:
        store.add([DeadLetter("unknown_gateway", "not registered", "payload", batch("gw-test-01", [good]),
                              topic("gw-test-01")),
                   DeadLetter("invalid_reading", "was refused", "reading", json.dumps(good).encode(),
                              topic("gw-test-01"), good["id"]),
                   DeadLetter("invalid_json", "not JSON", "payload", b"{nope", topic("gw-test-01"))])
    finally:
        store.close()
    assert run("replay", "--all", "-c", str(config)) == 1
    out = capsys.readouterr().out
    assert "replayed 3 items: 2 written and removed from the store, 1 failed again and stay (invalid_json 1)" in out
    rows = _level_rows(influx)
    assert [(r["node"], r["fcnt"], r["level_cm"]) for r in rows] == [("00000301", 5.0, 150.25)]
    assert run("replay", "--all", "--timeout", "5", "-c", str(config)) == 1
    capsys.readouterr()


def test_replay_gives_up_when_the_database_is_down_and_removes_nothing(tmp_path: Path,
                                                                       capsys: pytest.CaptureFixture[str]) -> None:
    config = write_config(tmp_path)  # its sink is a closed port
    store = DeadLetterStore(tmp_path / "dead.db")
    try:
        store.add([DeadLetter("rejected_by_server", "x", "line", b"m f=1 1", topic("gw-test-01"))])
    finally:
        store.close()
    started = time.monotonic()
    assert run("replay", "--all", "--timeout", "1", "-c", str(config)) == 1
    assert time.monotonic() - started < 10
    err = capsys.readouterr().err
    assert "could not be written for 1 s" in err and "the rest stay in the store" in err
    assert run("list", "-c", str(config), "--json") == 0
    assert len(capsys.readouterr().out.splitlines()) == 1


# ---- beside a running bridge ----------------------------------------------------------------------------------------


def test_commands_beside_a_bridge_that_dead_letters_a_flood(tmp_path: Path, broker: Mosquitto, influx: InfluxDB1,
                                                            capsys: pytest.CaptureFixture[str]) -> None:
    config = write_config(tmp_path, broker.host, broker.port, influx.url)
    bridge = Bridge(parse_bridge_config(config.read_text(), base_dir=tmp_path))
    bridge.start()
    pub = Publisher(broker)
    errors: list[BaseException] = []
    stop = threading.Event()

    def flood() -> None:
        try:
            for i in range(40):
                if stop.is_set():
                    return
                pub.publish([(topic("gw-test-01"), b"{bad json %d" % j) for j in range(i * 25, i * 25 + 25)])
        except BaseException as exc:  # noqa: BLE001 - reported by the test
            errors.append(exc)

    try:
        assert bridge.wait_subscribed(10)
        feeder = threading.Thread(target=flood)
        feeder.start()
        purged = 0
        for _ in range(20):
            assert run("list", "-c", str(config), "--json", "--limit", "5") == 0
            assert run("purge", "--all", "--yes", "-c", str(config)) == 0
            purged += int(capsys.readouterr().out.rsplit("deleted ", 1)[1].split()[0])
        feeder.join(60)
        assert not errors
        assert wait_until(lambda: bridge.counters().get("dead_letters", 0) == 1000, 30)
        time.sleep(0.3)
        assert "database is locked" not in capsys.readouterr().err
        probe = DeadLetterStore(tmp_path / "dead.db")
        try:
            left = probe.count()
            held = probe.bytes_held
        finally:
            probe.close()
        assert purged + left == 1000
        # The bridge noticed what the commands removed: one more item, and its count of bytes held is exact.
        pub.publish([(topic("gw-test-01"), b"{one more")])
        # (counted before it is stored: wait for the store)
        assert wait_until(lambda: bridge._dead.bytes_held == held + len(b"{one more"), 10), bridge._dead.bytes_held
    finally:
        stop.set()
        pub.close()
        bridge.stop()


def test_a_command_run_as_root_leaves_the_store_files_to_their_owner(store_config: Path, tmp_path: Path) -> None:
    """sudo or docker compose exec beside a bridge that runs as its own user: SQLite's -wal and -shm files must not
    stay root's, or the bridge could not open its store afterwards."""
    import os

    if os.geteuid() != 0:
        pytest.fail("this test needs root (it checks what a command run as root leaves behind)")
    db = tmp_path / "dead.db"
    os.chown(db, 10001, 10001)
    # A connection that stays open keeps the WAL files (as a running bridge does).
    holder = sqlite3.connect(db)
    try:
        holder.execute("SELECT count(*) FROM dead_letter").fetchone()
        for suffix in ("-wal", "-shm"):
            if Path(f"{db}{suffix}").exists():
                os.chown(f"{db}{suffix}", 0, 0)
        assert run("purge", "--reason", "invalid_json", "--yes", "-c", str(store_config)) == 0
        for suffix in ("-wal", "-shm"):
            st = os.stat(f"{db}{suffix}")
            assert (st.st_uid, st.st_gid) == (10001, 10001), suffix
    finally:
        holder.close()
