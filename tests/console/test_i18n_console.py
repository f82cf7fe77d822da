"""The staff console's log lines and errors in the operator's language: a command the gateway never answers (the
broker is unreachable) and a link the CLI cannot make, in English and in Japanese; gateway ids, request ids and
commands stay as they are in both."""

from __future__ import annotations

import logging
import socket
from collections.abc import Iterator

import pytest

from agent import i18n
from agent.console.commands import CommandLink
from agent.console.config import CommandsConfig, ConsoleMqttConfig
from agent.console.links import LinkSigner
from agent.console.service import ACTION_COMMANDS, command_doc
from agent.console.state import StateBook


@pytest.fixture(autouse=True)
def _language_from_environment() -> Iterator[None]:
    i18n.set_language("en")
    yield
    i18n.set_language(None)


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _given_up(caplog: pytest.LogCaptureFixture) -> tuple[str, str]:
    """A command to a gateway while the broker cannot be reached: (its request id, the give-up line)."""
    cfg = ConsoleMqttConfig(host="127.0.0.1", port=_closed_port(), tls=False, client_id="console-i18n")
    link = CommandLink(cfg, CommandsConfig(retry_s=0.1, give_up_s=0.5), states=StateBook())
    with caplog.at_level(logging.WARNING, logger="agent.console.commands"):
        link.start()
        try:
            item = link.submit("gw-i18n", ACTION_COMMANDS["silence"], command_doc("silence", "sos:00a1b2c3", "Sato",
                                                                                 "cli"))
            assert item.done.wait(10)
        finally:
            link.stop()
    assert item.outcome == "timeout"
    [line] = [r.getMessage() for r in caplog.records if item.request_id in r.getMessage()]
    return item.request_id, line


def test_a_command_given_up_in_english(caplog: pytest.LogCaptureFixture) -> None:
    request, line = _given_up(caplog)
    assert line == (f"command {ACTION_COMMANDS['silence']} to gw-i18n (request {request}): no answer after 0 sends "
                    "in 0.5 s; given up")


def test_a_command_given_up_in_japanese(caplog: pytest.LogCaptureFixture) -> None:
    i18n.set_language("ja")
    request, line = _given_up(caplog)
    assert line == (f"gw-i18n へのコマンド {ACTION_COMMANDS['silence']}（要求 {request}）: 0.5 秒間に 0 回送信しても"
                    "応答がありません。中止します")


def test_a_link_for_a_bad_recipient_says_why_in_both_languages() -> None:
    signer = LinkSigner(b"k" * 32)
    with pytest.raises(ValueError, match=r"^a recipient is 1\.\.100 characters without control characters$"):
        signer.sign("gw-i18n", "sos:00a1b2c3", 3600, recipient="\x07")
    i18n.set_language("ja")
    with pytest.raises(ValueError, match="^宛先は制御文字を含まない 1〜100 文字です$"):
        signer.sign("gw-i18n", "sos:00a1b2c3", 3600, recipient="\x07")
    # The link itself is the same in every language.
    assert signer.sign("gw-i18n", "sos:00a1b2c3", 3600).count(".") == 1
