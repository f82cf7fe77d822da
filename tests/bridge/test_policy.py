"""One error policy for both sinks: the same HTTP answers give the same outcome through the v1 sink (urllib3) and
the v2 sink (influxdb-client). The answers come from a small real HTTP server that plays scripted replies; the
refused lines of a real InfluxDB 1.6.7 are found in the last tests."""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from agent.bridge import Abandoned, V1Sink, V2Sink, WritePolicy
from agent.bridge.config import SinkConfig, parse_bridge_config
from agent.bridge.errors import SinkRefused, SinkRejected, SinkUnavailable
from agent.dev.devbroker import free_port
from tests.bridge._helpers import T0_US
from tests.support.influx import InfluxDB1

Reply = tuple[int, bytes, dict[str, str]]


class ScriptedServer:
    """An HTTP server on 127.0.0.1 answering writes from a script; records every request body.

    ``rule`` decides the reply from the body when the script is empty (default: 204).
    """

    def __init__(self, port: int | None = None, rule: Callable[[bytes], Reply] | None = None) -> None:
        self.port = port or free_port()
        self.script: list[Reply] = []
        self.bodies: list[bytes] = []
        self.paths: list[str] = []
        self.auth: list[str | None] = []
        self.rule = rule or (lambda body: (204, b"", {}))
        self.delay_s = 0.0
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server's name
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                outer.bodies.append(body)
                outer.paths.append(self.path)
                outer.auth.append(self.headers.get("Authorization"))
                if outer.delay_s:
                    time.sleep(outer.delay_s)
                status, text, headers = outer.script.pop(0) if outer.script else outer.rule(body)
                self.send_response(status)
                for k, v in headers.items():
                    self.send_header(k, v)
                self.send_header("Content-Length", str(len(text)))
                self.end_headers()
                self.wfile.write(text)

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.02},
                                       daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def sink_config(kind: str, url: str, timeout_s: float = 1.0, **extra: object) -> SinkConfig:
    lines = [f"  type: {kind}", f"  url: {url}", f"  timeout_s: {timeout_s}"]
    if kind == "v1":
        lines += ["  database: denen", "  user: writer", "  password: s3cret"]
    else:
        lines += ["  org: town", "  bucket: denen", "  token: tok-123"]
    lines += [f"  {k}: {v}" for k, v in extra.items()]
    text = "sink:\n" + "\n".join(lines) + "\ndead_letter:\n  path: /tmp/unused.db\nmqtt:\n  client_id: t\n"
    return parse_bridge_config(text).sink


def make(kind: str, url: str, **extra: object) -> V1Sink | V2Sink:
    cfg = sink_config(kind, url, **extra)
    return V1Sink(cfg) if kind == "v1" else V2Sink(cfg)


def policy(sink: V1Sink | V2Sink, stop: threading.Event | None = None) -> WritePolicy:
    return WritePolicy(sink, stop=stop or threading.Event(), retry_min_s=0.01, retry_max_s=0.05, stats=Counter())


LINES = [f"water_level,node=0000030{i} level_cm={i}.5 {T0_US + i}" for i in range(6)]

SINKS = ["v1", "v2"]


@pytest.fixture
def server() -> Iterator[ScriptedServer]:
    s = ScriptedServer()
    yield s
    s.close()


@pytest.mark.parametrize("kind", SINKS)
def test_both_sinks_send_the_same_body_to_their_api_with_credentials_in_headers(server: ScriptedServer,
                                                                                kind: str) -> None:
    sink = make(kind, server.url)
    assert policy(sink).write(LINES) == []
    [body] = server.bodies
    assert body == "\n".join(LINES).encode()
    if kind == "v1":
        assert server.paths == ["/write?db=denen&precision=u"]
        assert server.auth[0] is not None and server.auth[0].startswith("Basic ")
    else:
        assert server.paths[0].startswith("/api/v2/write?") and "precision=us" in server.paths[0]
        assert "bucket=denen" in server.paths[0] and "org=town" in server.paths[0]
        assert server.auth[0] == "Token tok-123"
    assert "s3cret" not in server.paths[0] and "tok-123" not in server.paths[0]  # never in a URL (logs)
    sink.close()


@pytest.mark.parametrize("kind", SINKS)
def test_5xx_and_429_are_retried_with_the_same_lines_until_written(server: ScriptedServer, kind: str) -> None:
    server.script = [(503, b'{"error":"engine busy"}', {}), (429, b"slow down", {"Retry-After": "0"}),
                     (500, b'{"code":"internal error","message":"timeout"}', {})]
    p = policy(make(kind, server.url))
    assert p.write(LINES) == []
    assert len(server.bodies) == 4 and len(set(server.bodies)) == 1
    assert p.stats["write_failures.unavailable"] == 3 and p.stats["write_requests"] == 4


@pytest.mark.parametrize("kind", SINKS)
def test_a_refused_connection_is_retried_until_the_database_listens(kind: str) -> None:
    port = free_port()
    p = policy(make(kind, f"http://127.0.0.1:{port}"))
    result: list[object] = []
    worker = threading.Thread(target=lambda: result.append(p.write(LINES)))
    worker.start()
    deadline = time.monotonic() + 5
    while p.stats["write_failures.unavailable"] < 3 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert p.stats["write_failures.unavailable"] >= 3  # connection refused: a urllib3 error, retried
    late = ScriptedServer(port)
    try:
        worker.join(5)
        assert result == [[]]
        assert late.bodies == ["\n".join(LINES).encode()]
    finally:
        late.close()


@pytest.mark.parametrize("kind", SINKS)
def test_a_timeout_is_retried(server: ScriptedServer, kind: str) -> None:
    server.delay_s = 0.6  # longer than timeout_s
    p = policy(make(kind, server.url, timeout_s=0.2))
    done: list[object] = []
    worker = threading.Thread(target=lambda: done.append(p.write(LINES)))
    worker.start()
    time.sleep(0.4)
    server.delay_s = 0.0
    worker.join(10)
    assert done == [[]] and p.stats["write_failures.unavailable"] >= 1


@pytest.mark.parametrize("kind", SINKS)
@pytest.mark.parametrize(("status", "hint"), [(401, "token" ), (403, "token"), (404, "bucket")])
def test_401_403_404_are_retried_and_the_log_says_what_to_fix(server: ScriptedServer, kind: str, status: int,
                                                              hint: str, caplog: pytest.LogCaptureFixture) -> None:
    server.script = [(status, b'{"error":"nope"}', {})] * 3
    p = policy(make(kind, server.url))
    with caplog.at_level(logging.INFO, logger="agent.bridge.policy"):
        assert p.write(LINES) == []
    assert p.stats["write_failures.refused"] == 3 and len(server.bodies) == 4
    [line] = [r for r in caplog.records if r.levelno == logging.ERROR]  # once, not once per retry
    expected = hint if kind == "v2" else {"token": "sink.user", "bucket": "CREATE DATABASE"}[hint]
    assert str(status) in line.getMessage() and expected in line.getMessage()
    assert any("work again" in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize("kind", SINKS)
def test_stopping_while_the_database_fails_abandons_the_batch(server: ScriptedServer, kind: str) -> None:
    server.rule = lambda body: (503, b"down", {})
    stop = threading.Event()
    p = policy(make(kind, server.url), stop)
    errors: list[BaseException] = []

    def run() -> None:
        try:
            p.write(LINES)
        except Abandoned as exc:
            errors.append(exc)

    worker = threading.Thread(target=run)
    worker.start()
    time.sleep(0.2)
    stop.set()
    worker.join(5)
    assert not worker.is_alive() and len(errors) == 1


@pytest.mark.parametrize("kind", SINKS)
def test_a_400_naming_lines_rejects_exactly_those_and_writes_the_rest(server: ScriptedServer, kind: str) -> None:
    bad = ["garbage one", "water_level level_cm= 5"]
    lines = LINES[:3] + [bad[0]] + LINES[3:] + [bad[1]]
    server.script = [(400, ('{"error":"partial write: unable to parse \'garbage one\': invalid field format\\n'
                            'unable to parse \'water_level level_cm= 5\': missing field value dropped=0"}').encode(),
                      {})]
    p = policy(make(kind, server.url))
    refused = p.write(lines)
    assert sorted(lines[r.index] for r in refused) == sorted(bad)
    assert all("unable to parse" in r.error for r in refused)
    assert server.bodies[1] == "\n".join(LINES).encode() and len(server.bodies) == 2


@pytest.mark.parametrize("kind", SINKS)
def test_a_400_without_details_is_bisected_down_to_the_bad_lines(kind: str) -> None:
    def rule(body: bytes) -> Reply:
        return (400, b'{"error":"bad line somewhere"}', {}) if b"BAD" in body else (204, b"", {})

    server = ScriptedServer(rule=rule)
    try:
        lines = [*LINES[:2], "BAD one", *LINES[2:5], "BAD two", LINES[5]]
        p = policy(make(kind, server.url))
        refused = p.write(lines)
        assert sorted(lines[r.index] for r in refused) == ["BAD one", "BAD two"]
        stored = {ln for b in server.bodies if b"BAD" not in b for ln in b.decode().split("\n")}
        assert stored == set(LINES)
        assert len(server.bodies) < 2 * len(lines)  # bisection, not one request per line and no endless loop
    finally:
        server.close()


def test_the_error_tree_maps_http_answers() -> None:
    from agent.bridge.errors import classify_response

    assert classify_response(204, b"", None, api="v1") is None
    assert isinstance(classify_response(502, b"", "3", api="v1"), SinkUnavailable)
    assert classify_response(503, b"", "3", api="v1").retry_after == 3.0  # type: ignore[union-attr]
    assert isinstance(classify_response(401, b"", None, api="v2"), SinkRefused)
    rejected = classify_response(422, b'{"code":"unprocessable entity","message":"partial write: x dropped=2"}',
                                 None, api="v2")
    assert isinstance(rejected, SinkRejected) and rejected.dropped == 2 and rejected.text.startswith("partial")
    v3 = classify_response(400, b'{"error":"partial write of line protocol occurred","data":[{"original_line":'
                                b'"m x=bad","line_number":2,"error_message":"invalid"}]}', None, api="v2")
    assert isinstance(v3, SinkRejected) and v3.quoted_lines == ("m x=bad",)


# -- against the real InfluxDB 1.6.7 -----------------------------------------------------------------------------
def test_a_field_type_conflict_on_influxdb_rejects_only_the_conflicting_lines(influx: InfluxDB1,
                                                                             tmp_path: Path) -> None:
    # tips was first written as an integer (by some other tool): every float tips line now conflicts.
    assert influx.write([f"rain,node=00000999 tips=1i {T0_US}"], "denen")[0] == 204
    rain = [f"rain,node=0000040{i} rain_mm=0.5,tips={i}.0 {T0_US + i}" for i in range(5)]
    water = [f"water_level,node=0000030{i} level_cm={i}.5 {T0_US + i}" for i in range(5)]
    health = [f"node_health,node=0000040{i} fcnt={i}.0 {T0_US + i}" for i in range(5)]
    lines = [x for trio in zip(water, rain, health, strict=True) for x in trio]
    sink = make("v1", influx.url)
    sink.config = sink_config("v1", influx.url).model_copy(update={"user": None, "password": None})
    p = policy(sink)
    refused = p.write(lines)
    assert sorted(lines[r.index] for r in refused) == sorted(rain)
    assert all("field type conflict" in r.error and '"tips"' in r.error for r in refused)
    assert influx.count("water_level", "level_cm", "denen") == 5
    assert influx.count("node_health", "fcnt", "denen") == 5
    assert influx.count("rain", "tips", "denen") == 1  # only the seed
    assert p.stats["write_requests"] <= 4  # narrowed by the error text, not bisected line by line


def test_unparsable_lines_on_influxdb_are_rejected_with_the_servers_error(influx: InfluxDB1) -> None:
    sink = make("v1", influx.url)
    sink.config = sink_config("v1", influx.url).model_copy(update={"user": None, "password": None})
    lines = [LINES[0], "not line protocol", LINES[1], f"m,t=x y=inf {T0_US}", LINES[2]]
    refused = policy(sink).write(lines)
    assert sorted(r.index for r in refused) == [1, 3]
    assert all("unable to parse" in r.error for r in refused)
    assert influx.count("water_level", "level_cm", "denen") == 3
