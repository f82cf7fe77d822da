"""The gateway's log lines for an operator (``journalctl -u denen``) in the language in use: one line of each kind
of module (receipts with their rate-limited drops, GPIO, the rules engine) and a driver's ``Text`` line through the
log formatters. The Japanese expectations are the catalog's translations (agent/locale/ja)."""

from __future__ import annotations

import io
import logging
import re
from collections.abc import Iterator

import pytest
from gpiozero.pins.mock import MockFactory

from agent import i18n, logsetup
from agent.gateway.fieldio import FieldIO
from agent.gateway.fieldio_config import GpioConfig
from agent.gateway.receipts import ReceiptSender
from agent.ratelog import RateLimitedLog
from agent.rules import RuleEngine, RulesConfig
from drivers.settings import N_, Text

T0 = 1_764_000_000_000_000  # µs since the epoch


@pytest.fixture(params=["en", "ja"])
def lang(request: pytest.FixtureRequest) -> Iterator[str]:
    i18n.set_language(request.param)
    try:
        yield request.param
    finally:
        i18n.set_language(None)


def _lines(caplog: pytest.LogCaptureFixture, logger: str) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == logger and r.levelno >= logging.INFO]


class _Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_receipt_lines_and_their_rate_limited_drops(lang: str, caplog: pytest.LogCaptureFixture) -> None:
    clock = _Clock()
    sender = ReceiptSender(lambda frame: None, sf=9, bw_khz=125, cr=0, preamble=8, frequency_hz=920_600_000,
                           clock=clock, max_pending=1)
    with caplog.at_level(logging.INFO, logger="agent.gateway.receipts"):
        sender.request(0x00A1B2C3, 42, None)
        for counter in (43, 44, 45):  # the queue holds one: each is dropped, the first in full
            sender.request(0x00A1B2C3, counter, None)
        clock.now += 61
        sender.pump()  # the minute has passed: the summary of the drops is written, then 42 is sent
    queued, dropped, summary, sent = _lines(caplog, "agent.gateway.receipts")
    if lang == "en":
        assert re.fullmatch(r"receipt for node 00a1b2c3 counter 42 queued \(\d+\.\d ms on air\)", queued)
        assert dropped == ("receipt for node 00a1b2c3 counter 43 dropped: 1 receipts already waiting "
                           "(receipts.max_pending)")
        assert sent == "receipt for node 00a1b2c3 counter 42 sent after 61.0 s"
        assert summary == "... 2 more queue_full receipts from node 00a1b2c3 in the last 61 s"
    else:
        assert re.fullmatch(r"ノード 00a1b2c3 カウンター 42 の受信確認を送信待ちにしました（送信時間 \d+\.\d ms）", queued)
        assert dropped == ("ノード 00a1b2c3 カウンター 43 の受信確認を捨てました: すでに 1 件の受信確認が待っています"
                           "（receipts.max_pending）")
        assert sent == "ノード 00a1b2c3 カウンター 42 の受信確認を 61.0 秒後に送りました"
        # The counter's name (queue_full) and the node id stay as they are, in Japanese too.
        assert summary == "… 直近 61 秒間に ノード 00a1b2c3 から queue_full の受信確認がさらに 2 件"


def test_a_summary_keeps_a_plain_subject_and_an_empty_noun_as_given(caplog: pytest.LogCaptureFixture) -> None:
    i18n.set_language("ja")
    try:
        clock = _Clock()
        rl = RateLimitedLog(logging.getLogger("test.ratelog"), clock=clock)
        with caplog.at_level(logging.WARNING, logger="test.ratelog"):
            for _n in range(3):
                rl.warning("bad_json", "gateway gw-x", "", "%s", "first")
            clock.now += 60
            rl.tick()
    finally:
        i18n.set_language(None)
    first, summary = _lines(caplog, "test.ratelog")
    assert first == "first"
    # "" is not looked up (the catalog's entry for "" is its header), a plain subject is shown as it is.
    assert "gateway gw-x" in summary and "Project-Id" not in summary and "bad_json" in summary


def test_gpio_lines(lang: str, caplog: pytest.LogCaptureFixture) -> None:
    factory = MockFactory()
    try:
        with caplog.at_level(logging.INFO, logger="agent.gateway.fieldio"):
            FieldIO(GpioConfig(siren={"pin": 22}), pin_factory=factory).close()
    finally:
        factory.reset()
    [line] = _lines(caplog, "agent.gateway.fieldio")
    # The config key (siren) and the factory's class name are machine words in both languages.
    assert line == ("gpio: siren on MockFactory" if lang == "en" else "gpio: siren（MockFactory）")


def test_rules_engine_lines(lang: str, caplog: pytest.LogCaptureFixture) -> None:
    engine = RuleEngine(RulesConfig.model_validate({}), {}, start_us=T0)
    with caplog.at_level(logging.INFO, logger="agent.rules"):
        assert engine.on_gateway_event("fan_stopped", now_us=T0) == []
        [near] = engine.on_gateway_event("journal_usage", now_us=T0 + 1, pct=99.0)
    unknown, raised = _lines(caplog, "agent.rules")
    if lang == "en":
        assert unknown == "unknown gateway event 'fan_stopped' ignored by the rules"
        assert raised == f"alert raised: journal_near_quota warning: {near.message}"
    else:
        assert unknown == "不明なゲートウェイイベント 'fan_stopped' は規則では無視します"
        # The alert's own text is bilingual already; the key and severity are machine words.
        assert raised == f"警報発生: journal_near_quota warning: {near.message}"
        assert near.message.startswith("ジャーナル容量が上限に接近")


def _driver_record(*, as_msg: bool) -> logging.LogRecord:
    text = Text(N_("{radio}: ES920LR was already in operation mode; running with its previous settings"),
                radio="lora0")
    if as_msg:
        return logging.LogRecord("drivers.es920lr", logging.WARNING, __file__, 1, text, None, None)
    return logging.LogRecord("drivers.es920lr", logging.WARNING, __file__, 1, "%s", (text,), None)


@pytest.mark.parametrize("as_msg", [False, True], ids=["argument", "message"])
def test_a_driver_text_is_shown_in_the_language_in_use_by_both_formatters(lang: str, as_msg: bool) -> None:
    english = "lora0: ES920LR was already in operation mode; running with its previous settings"
    want = english if lang == "en" else "lora0: ES920LR はすでにオペレーションモードでした。以前の設定のまま動きます"
    record = _driver_record(as_msg=as_msg)
    assert logsetup.TextFormatter("%(levelname)s %(name)s: %(message)s").format(record) == (
        f"WARNING drivers.es920lr: {want}")
    assert logsetup.JournalFormatter().format(_driver_record(as_msg=as_msg)) == f"<4>WARNING drivers.es920lr: {want}"
    # The record itself stays English for every other handler (a test's capture, another formatter).
    assert record.getMessage() == english


def test_a_driver_text_with_a_nested_text_and_the_plain_handler(lang: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("JOURNAL_STREAM", raising=False)
    stream = io.StringIO()
    root = logging.getLogger()
    saved = (root.level, list(root.handlers))
    logsetup.configure_logging(stream=stream)
    try:
        logging.getLogger("drivers.meshtastic").warning("%s", Text(
            N_("radio {radio}: SOS from Meshtastic device {device} (node {node}), {position}: {text}"),
            radio="mesh0", device="!a1b2c3d4", node="3c000001", position=Text(N_("no position")), text="'help'"))
    finally:
        for h in [h for h in root.handlers if h not in saved[1]]:
            root.removeHandler(h)
        root.setLevel(saved[0])
    line = stream.getvalue().rstrip("\n").split(" ", 3)[3]  # after the date, the time and the zone
    if lang == "en":
        assert line == ("WARNING drivers.meshtastic: radio mesh0: SOS from Meshtastic device !a1b2c3d4 (node 3c000001), "
                        "no position: 'help'")
    else:
        assert line == ("WARNING drivers.meshtastic: 無線 mesh0: Meshtastic デバイス !a1b2c3d4（ノード 3c000001）から "
                        "SOS発信、位置なし: 'help'")


def test_a_catalog_that_cannot_be_used_leaves_the_english_line(monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(text: str) -> str:
        raise RuntimeError("catalog unreadable")

    monkeypatch.setattr(i18n, "translate", broken)
    record = _driver_record(as_msg=False)
    assert logsetup.TextFormatter("%(message)s").format(record) == (
        "lora0: ES920LR was already in operation mode; running with its previous settings")


def test_a_plain_record_is_not_copied() -> None:
    record = logging.LogRecord("agent", logging.INFO, __file__, 1, "%s readings", (3,), None)
    assert logsetup.localized(record) is record
