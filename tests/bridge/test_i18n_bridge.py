"""The bridge's log lines in the operator's language: a write failure, a dead letter and redis down, in English
and in Japanese; machine tokens (reasons, topics, the database's error) stay as they are in both; a rate-limited
line is neither looked up nor formatted when it is not written."""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent import i18n
from agent.bridge import Bridge, parse_bridge_config
from agent.bridge.dedupe import FrameClaims
from agent.bridge.errors import SinkUnavailable
from agent.bridge.policy import WritePolicy
from agent.bridge.receiving import InboxMessage
from agent.i18n import N_, LazyText
from agent.ratelog import RateLimitedLog
from tests.bridge._helpers import topic
from tests.bridge.test_dedupe import Recording, _config
from tests.support.redis_server import RedisServer


@pytest.fixture(autouse=True)
def _language_from_environment() -> Iterator[None]:
    i18n.set_language("en")
    yield
    i18n.set_language(None)


class FlakySink:
    """A database that is down for the first ``down`` writes, then takes everything."""

    target = "http://127.0.0.1:8086 (denen)"

    def __init__(self, down: int) -> None:
        self.down = down
        self.bodies: list[bytes] = []

    def write(self, body: bytes) -> None:
        if self.down > 0:
            self.down -= 1
            raise SinkUnavailable("connection refused (is the database running and listening?)")
        self.bodies.append(body)

    def close(self) -> None:
        pass


def _write_failure(caplog: pytest.LogCaptureFixture) -> tuple[str, str]:
    sink = FlakySink(down=1)
    policy = WritePolicy(sink, stop=threading.Event(), retry_min_s=0.01, retry_max_s=0.01)
    with caplog.at_level(logging.INFO, logger="agent.bridge.policy"):
        assert policy.write(["m f=1 1"]) == []
    assert sink.bodies == [b"m f=1 1"]
    [failed] = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    [again] = [r.getMessage() for r in caplog.records if r.levelno == logging.INFO]
    return failed, again


def test_a_write_failure_and_the_recovery_in_english(caplog: pytest.LogCaptureFixture) -> None:
    failed, again = _write_failure(caplog)
    assert failed == ("write to http://127.0.0.1:8086 (denen) failed, retrying with backoff (nothing is "
                      "acknowledged meanwhile): connection refused (is the database running and listening?)")
    assert again.startswith("writes to http://127.0.0.1:8086 (denen) work again after 1 failed attempts over ")


def test_a_write_failure_and_the_recovery_in_japanese(caplog: pytest.LogCaptureFixture) -> None:
    i18n.set_language("ja")
    failed, again = _write_failure(caplog)
    # The database's own words stay as it said them.
    assert failed == ("http://127.0.0.1:8086 (denen) への書き込みに失敗しました。間隔を空けて再試行します（その間は何も"
                      "受信確認しません）: connection refused (is the database running and listening?)")
    assert again.startswith("http://127.0.0.1:8086 (denen) への書き込みが復旧しました（")
    assert again.endswith("秒間に 1 回失敗）")


def _dead_letter_line(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> str:
    bridge = Bridge(parse_bridge_config(_config(tmp_path, "")), sink=Recording())
    try:
        t = topic("gw-i18n")
        conv, body = bridge._convert(t, b"{not json")
        with caplog.at_level(logging.WARNING, logger="agent.bridge"):
            dead = bridge._write([InboxMessage(-1, 0, 0, t, conv, False, body)])
        assert [d.reason for items in dead for d in items] == ["invalid_json"]
        [line] = [r.getMessage() for r in caplog.records if "invalid_json" in r.getMessage()]
        return line
    finally:
        bridge.close()


def test_a_dead_letter_in_english(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    line = _dead_letter_line(tmp_path, caplog)
    assert line.startswith(f"bridge: invalid_json on {topic('gw-i18n')}: payload is not UTF-8 JSON")
    assert line.endswith(f" (kept in the dead-letter store {tmp_path / 'dl.db'})")


def test_a_dead_letter_in_japanese(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    i18n.set_language("ja")
    line = _dead_letter_line(tmp_path, caplog)
    # The reason and the topic are machine tokens: the same in both languages.
    assert line.startswith(f"ブリッジ: {topic('gw-i18n')} で invalid_json: payload is not UTF-8 JSON")
    assert line.endswith(f"（デッドレター保管庫 {tmp_path / 'dl.db'} に保管）")


def _redis_down_line(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> str:
    down = RedisServer(tmp_path / "never-started")  # a free port nobody listens on
    claims = FrameClaims(down.url, window_s=60, timeout_s=0.5)
    try:
        with caplog.at_level(logging.WARNING, logger="agent.bridge.dedupe"):
            assert claims.resolve([("k1", "m f=1 1")]) == [None]
    finally:
        claims.close()
    [line] = [r.getMessage() for r in caplog.records]
    assert down.url.split("://", 1)[1].split("/", 1)[0] in line
    return line


def test_redis_down_in_english(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    line = _redis_down_line(tmp_path, caplog)
    assert line.startswith("bridge: redis at redis://127.0.0.1:")
    assert line.endswith("frames are written as each gateway sent them (copies heard by several gateways make "
                         "several points) until it answers again")


def test_redis_down_in_japanese(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    i18n.set_language("ja")
    line = _redis_down_line(tmp_path, caplog)
    assert line.startswith("ブリッジ: redis://127.0.0.1:")
    assert line.endswith("復旧するまでフレームは各ゲートウェイが送ったとおりに書き込みます（複数のゲートウェイが受信したものは"
                         "複数のポイントになります）")


class Counted(LazyText):
    """A LazyText that counts how often it is shown."""

    __slots__ = ("shown",)

    def __init__(self, template: str, **params: object) -> None:
        super().__init__(template, **params)
        self.shown = 0

    def __str__(self) -> str:
        self.shown += 1
        return super().__str__()


def test_a_rate_limited_line_is_formatted_only_when_written(caplog: pytest.LogCaptureFixture) -> None:
    i18n.set_language("ja")
    limited = RateLimitedLog(logging.getLogger("agent.bridge.writing"), clock=lambda: 0.0)
    texts = [Counted(N_("bridge: {code} on {topic}: {detail}"), code="late", topic=f"t{i}", detail="d")
             for i in range(100)]
    with caplog.at_level(logging.WARNING, logger="agent.bridge.writing"):
        for text in texts:
            limited.warning("late", "gateway gw-x", N_("messages"), "%s", text)
    assert texts[0].shown >= 1  # once per handler that writes it
    assert [t.shown for t in texts[1:]] == [0] * 99
    assert len(caplog.records) == 1


def test_a_catalog_with_other_placeholders_shows_english_not_a_traceback(monkeypatch: pytest.MonkeyPatch) -> None:
    i18n.set_language("ja")
    monkeypatch.setattr("agent.i18n.gettext", lambda template: "壊れた {missing}")
    assert str(LazyText(N_("bridge: {code} on {topic}: {detail}"), code="c", topic="t", detail="d")) == \
        "bridge: c on t: d"


def test_the_status_line_in_japanese(tmp_path: Path) -> None:
    from agent.bridge.health import HealthMonitor

    i18n.set_language("ja")
    mon = HealthMonitor("b1")
    assert mon.status_line({}, db_ok=True) == "ブローカー停止, influx 正常, 0 読み取り/分, デッドレター 0"


def test_the_summary_line_keeps_its_counter_names(tmp_path: Path) -> None:
    from agent.bridge.writing import _summary_line

    counters = {"messages": 5, "dead_letters": 2, "dead_letters.invalid_json": 2, "frames_claimed": 3}
    en = _summary_line(counters, final=True, dedupe=True)
    assert en.startswith("bridge stopped: 5 messages (0 redelivered), 0 readings, 0 lines in 0 writes, "
                         "0 acknowledged, 2 dead letters (invalid_json 2), 0 failed write attempts; frames: 3 first "
                         "receptions, 0 merged into an earlier one, 0 written unmerged")
    i18n.set_language("ja")
    ja = _summary_line(counters, final=True, dedupe=True)
    assert ja.startswith("ブリッジ停止: メッセージ 5 件（再配信 0 件）")
    assert "デッドレター 2 件 (invalid_json 2)" in ja
