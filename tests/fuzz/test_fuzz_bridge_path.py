"""Hostile messages through the whole bridge path on real servers (tests.fuzz.bridge_path): a CI-sized run through
Mosquitto into InfluxDB 1.6.7, a smaller one into VictoriaMetrics, one through the direct driver, and one test per
poison the run found, each sending that one message and a sentinel SOS of another gateway behind it.

The big run is ``python -m tests.fuzz.run --bridge-path 100000`` (CI) or ``--bridge-path 1000000`` (by hand).
"""

from __future__ import annotations

import itertools
import json
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from agent.bridge import DeadLetterStore
from agent.bridge.deadletter import DeadLetter
from agent.dev.devbroker import Mosquitto
from tests.fuzz.bridge_path import (
    PREFIX,
    SENTINEL_GATEWAY,
    T0_US,
    Message,
    PathReport,
    Segment,
    Servers,
    captured_errors,
    message,
    publishable,
    run_bridge_path,
    sentinel,
)
from tests.support.influx import InfluxDB1, VictoriaMetrics
from tests.support.servers import broker_and_influx

pytestmark = pytest.mark.broker

# -- the runs --------------------------------------------------------------------------------------------------------


def _clean_run(tmp: Path, db: str, broker: Mosquitto, server: InfluxDB1 | VictoriaMetrics, inputs: int,
               **kw: Any) -> PathReport:
    """``inputs`` hostile messages through the bridge path into ``server`` (``db``: influx or victoria; ``kw``: seed,
    driver); its report, which must have found nothing."""
    servers = Servers(tmp, db, broker=broker, server=server)
    report = run_bridge_path(inputs, servers=servers, workdir=tmp / "run", minimize_s=10, max_findings_probed=3, **kw)
    assert report.ok, report.summary()
    return report


def test_20000_hostile_messages_through_mosquitto_bridge_and_influxdb(tmp_path: Path, broker: Mosquitto,
                                                                      influx: InfluxDB1) -> None:
    report = _clean_run(tmp_path, "influx", broker, influx, 20_000, seed=10)
    assert report.published > 19_000 and report.sentinels >= report.published // 50  # one after every 50th
    assert report.sentinels_missing == 0 and report.drain_s < 30
    # The run really went through every step: lines written, dead letters of many reasons, valid ones among them.
    assert report.written_lines > 1000
    assert len(report.dead_letters_by_reason) >= 5, report.dead_letters_by_reason


def test_3000_hostile_messages_through_the_bridge_into_victoriametrics(tmp_path: Path, broker: Mosquitto,
                                                                       victoria: VictoriaMetrics) -> None:
    report = _clean_run(tmp_path, "victoria", broker, victoria, 3000, seed=11)
    assert report.sentinels_missing == 0 and report.written_lines > 100


def test_the_direct_driver_runs_the_same_path_without_a_broker(tmp_path: Path, broker: Mosquitto,
                                                               influx: InfluxDB1) -> None:
    report = _clean_run(tmp_path, "influx", broker, influx, 3000, seed=12, driver="direct")
    assert report.sentinels_missing == 0 and report.written_lines > 100


def test_messages_are_a_pure_function_of_seed_and_index() -> None:
    # The report names a message by (seed, index); regenerating it must give the same bytes (apart from the
    # "in the future" timestamps, which follow the clock, none of which are in these).
    first = [message(3, i) for i in range(300)]
    again = [message(3, i) for i in reversed(range(300))][::-1]
    same = [a == b for a, b in zip(first, again, strict=True)]
    assert sum(same) >= 295
    labels = {m.label.split("+")[0] for m in first}
    assert {"string", "tree", "number", "timestamp", "bytes", "bad_utf8", "valid"} <= labels
    assert any(not publishable(m.topic) for m in first)  # topics Mosquitto refuses are generated (and skipped)


# -- one poison each -------------------------------------------------------------------------------------------------

_numbers = itertools.count(1)


@pytest.fixture(scope="module")
def servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Servers]:
    """One Mosquitto and one InfluxDB 1.6.7 for the poison tests (each has its own bridge and sentinel)."""
    work = tmp_path_factory.mktemp("poisons")
    with broker_and_influx(work) as (broker, influx):
        yield Servers(work, "influx", broker=broker, server=influx)


@dataclass
class Answer:
    """What the bridge did with one poison followed by one sentinel."""

    failure: BaseException | None
    counters: dict[str, int]
    dead: list[DeadLetter]
    errors: list[str]
    sentinel_stored: bool


def _send(servers: Servers, tmp_path: Path, poison: Message) -> Answer:
    n = next(_numbers)
    k = 1000 + n  # each test its own sentinel
    with captured_errors() as errors:
        seg = Segment(servers, tmp_path, n, "mqtt")
        try:
            seg.send(poison)
            seg.send(sentinel(k))
            assert seg.sync(), "the broker did not take the messages"
            deadline = time.monotonic() + 15
            while seg.acked() < 2 and seg.failure() is None and time.monotonic() < deadline:
                time.sleep(0.02)
            stored = False
            while seg.failure() is None and time.monotonic() < deadline:
                if k + 1 in servers.sentinels():
                    stored = True
                    break
                time.sleep(0.05)
            failure = seg.failure()
            counters = seg.counters()
        finally:
            closed = seg.close(drop_session=True)
    store = DeadLetterStore(seg.dead_path)
    try:
        dead = store.items()
    finally:
        store.close()
    return Answer(failure or closed, counters, dead, [r.getMessage()[:300] for r in errors.records], stored)


def _assert_answered(a: Answer, *, written: bool | None = None) -> None:
    """The bridge kept running, acknowledged both messages, stored the sentinel, and gave the poison a specific
    answer: written, or dead-lettered with a reason other than ``internal_error`` (which means a step raised)."""
    assert a.failure is None, f"the bridge's writer died on the poison: {a.failure!r}"
    assert a.counters.get("messages_acked", 0) == 2, a.counters
    assert a.sentinel_stored, "the sentinel SOS behind the poison never reached the database"
    assert not a.errors, a.errors
    reasons = [d.reason for d in a.dead]
    assert "internal_error" not in reasons, [(d.reason, d.detail) for d in a.dead]
    for d in a.dead:
        assert isinstance(d.detail, str) and d.detail.strip()
        d.detail.encode()
        (d.topic or "").encode()
        if d.reason != "rejected_by_server":  # the database's own words may name anything
            assert not re.search(r"\b\w+(Error|Exception)\b", d.detail), f"a Python exception, not an answer: {d}"
    poison_lines = a.counters.get("lines_written", 0) - 2  # the sentinel makes two
    if written is True:
        assert poison_lines > 0 and not a.dead, (poison_lines, reasons)
    elif written is False:
        assert poison_lines == 0 and a.dead, (poison_lines, reasons)
    else:
        assert poison_lines > 0 or a.dead, "the poison was neither written nor dead-lettered"


def _batch(reading: dict, **doc: object) -> bytes:
    body = {"schema": "denen.readings/1", "gateway": "gw-fuzz-01", "site": "testville", "lane": reading["lane"],
            "sent_us": T0_US, "readings": [reading], **doc}
    return json.dumps(body, separators=(",", ":")).encode()  # ASCII: a lone surrogate travels as a \u escape


def _reading(**changes: object) -> dict:
    r = {"id": "gw-fuzz-01/0a000101/7", "node": "0a000101", "name": "river-1", "fcnt": 7, "kind": "water_level",
         "lane": "telemetry", "ts_us": T0_US + 7_000, "clock": "synced", "values": {"level_cm": 182.5}}
    r.update(changes)
    return r


def _alert(**changes: object) -> dict:
    alert = {"id": "gw-fuzz-01:river#1", "key": "river", "type": "river_stage", "state": "raised",
             "severity": "warning", "node": "0a000101", "name": "river-1", "message": "level 182.5 cm"}
    alert.update(changes)
    return {"id": "gw-fuzz-01/gateway/9", "node": "gateway", "name": "gw", "fcnt": 9, "kind": "alert",
            "lane": "alarm", "ts_us": T0_US + 9_000, "clock": "synced", "values": {"raised": 1.0}, "alert": alert}


TELEMETRY = f"{PREFIX}/gw-fuzz-01/readings/telemetry"
ALARM = f"{PREFIX}/gw-fuzz-01/readings/alarm"
STATUS = f"{PREFIX}/gw-fuzz-01/status"


def test_poison_lone_surrogate_in_status_agent(servers: Servers, tmp_path: Path) -> None:
    doc = {"schema": "denen.status/1", "gateway": "gw-fuzz-01", "state": "online", "agent": "0.1.0\ud800",
           "ts_us": T0_US}
    _assert_answered(_send(servers, tmp_path, Message(STATUS, json.dumps(doc).encode())))


def test_poison_lone_surrogate_in_reading_name(servers: Servers, tmp_path: Path) -> None:
    _assert_answered(_send(servers, tmp_path, Message(TELEMETRY, _batch(_reading(name="\ud800")))))


def test_poison_lone_surrogate_in_values_key(servers: Servers, tmp_path: Path) -> None:
    _assert_answered(_send(servers, tmp_path, Message(TELEMETRY, _batch(_reading(values={"\udfff": 0.5})))))


def test_poison_lone_surrogate_in_alert_message(servers: Servers, tmp_path: Path) -> None:
    _assert_answered(_send(servers, tmp_path, Message(ALARM, _batch(_alert(message="level \ud800")))))


def test_poison_lone_surrogate_in_unknown_batch_key(servers: Servers, tmp_path: Path) -> None:
    # The key ends up in the dead letter's detail, which SQLite must store.
    _assert_answered(_send(servers, tmp_path, Message(TELEMETRY, _batch(_reading(), **{"\ud800x": 1}))),
                     written=False)


def test_poison_lone_surrogate_in_unknown_reading_key(servers: Servers, tmp_path: Path) -> None:
    _assert_answered(_send(servers, tmp_path, Message(TELEMETRY, _batch(_reading(**{"\udc80": 1})))), written=False)


def test_poison_json_nested_deeper_than_the_parser_recurses(servers: Servers, tmp_path: Path) -> None:
    # json.loads raises RecursionError (not ValueError): a specific answer is invalid_json, not internal_error.
    payload = b'{"schema":"denen.readings/1","readings":' + b"[" * 5000 + b"]" * 5000 + b"}"
    _assert_answered(_send(servers, tmp_path, Message(TELEMETRY, payload)), written=False)


def test_poison_status_topic_gateway_that_injects_a_site_tag(servers: Servers, tmp_path: Path) -> None:
    # The status document names the topic's gateway, so only a check of the topic's id can refuse it; written as
    # it is, it gives gateway_status a tag "site=victim" (and a line break or space in it breaks the line).
    gateway = "gw,site=victim"
    doc = {"schema": "denen.status/1", "gateway": gateway, "state": "online", "agent": "0.1.0", "ts_us": T0_US}
    _assert_answered(_send(servers, tmp_path, Message(f"{PREFIX}/{gateway}/status", json.dumps(doc).encode())),
                     written=False)
    assert not servers.schema_problems()


def test_poison_values_key_named_like_a_tag(tmp_path: Path, broker: Mosquitto, influx: InfluxDB1) -> None:
    # A field "gateway" on sos makes InfluxQL's WHERE "gateway" = '...' compare the field: every other gateway's
    # SOS drops out of the dashboards' queries. Its own database: the field would stay for the other tests.
    servers = Servers(tmp_path, "influx", broker=broker, server=influx)
    poison = _reading(kind="sos", lane="sos", values={"pressed": 1.0, "gateway": 1.0})
    _assert_answered(_send(servers, tmp_path, Message(f"{PREFIX}/gw-fuzz-01/readings/sos", _batch(poison))))
    assert not servers.schema_problems()
    rows = influx.rows(f"SELECT \"fcnt\" FROM \"sos\" WHERE \"gateway\" = '{SENTINEL_GATEWAY}'", "denen")
    assert rows, "the sentinel SOS is hidden from a query by gateway"


def test_poison_timestamp_past_the_end_of_influxdb_time(servers: Servers, tmp_path: Path) -> None:
    # 2**63 - 1 µs is far past 2262, where InfluxDB's (and VictoriaMetrics') time ends; VictoriaMetrics takes such
    # a line with 204 and stores nothing, so the bridge must refuse it itself (timestamp in the future).
    a = _send(servers, tmp_path, Message(TELEMETRY, _batch(_reading(ts_us=2**63 - 1))))
    _assert_answered(a, written=False)
    assert "rejected_by_server" not in [d.reason for d in a.dead], "left to the database to refuse"


# -- the harness itself ----------------------------------------------------------------------------------------------


def test_the_run_reports_a_step_that_raises_on_one_message(tmp_path: Path, broker: Mosquitto, influx: InfluxDB1,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    # A sink that raises on the lines of one node name stands in for a poison the bridge does not survive.
    from agent.bridge.sinks import V1Sink

    real_write = V1Sink.write

    def write(self: V1Sink, body: bytes) -> None:
        if "sos-7".encode() in body:
            raise ValueError("poisoned by the test")
        real_write(self, body)

    monkeypatch.setattr(V1Sink, "write", write)
    servers = Servers(tmp_path, "influx", broker=broker, server=influx)
    report = run_bridge_path(400, seed=13, driver="direct", servers=servers, workdir=tmp_path / "run", stall_s=10,
                             minimize_s=3, max_findings_probed=1)
    assert not report.ok
    kinds = {f.kind for f in report.findings.values()}
    assert kinds & {"writer_died", "step_error", "internal_error"}, report.summary()


def test_run_py_bridge_path_starts_its_own_servers_and_prints_a_json_line(tmp_path: Path,
                                                                          capsys: pytest.CaptureFixture[str]) -> None:
    from tests.fuzz import run as fuzz

    out = tmp_path / "report.json"
    code = fuzz.main(["--bridge-path", "300", "--seed", "14", "--json", str(out), "--quiet"])
    printed = capsys.readouterr().out
    line = json.loads(printed.strip().splitlines()[-1])
    data = json.loads(out.read_text())
    assert code == (0 if data["ok"] else 1)
    assert line["inputs"] == data["inputs"] == 300 and line["sentinels"] == data["sentinels"] >= 300 // 50
    assert {"rate_per_s", "dead_letters_by_reason", "sentinels_missing", "crashes", "stalls"} <= set(line)
    assert "bridge path (mqtt, influx, seed 14)" in printed
