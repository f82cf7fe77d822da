"""``POST /hooks/grafana`` end to end with real parts: Mosquitto, the console's HTTP server, a real SMTP server
(aiosmtpd) in the test process. A fake gateway keeps the alerts open (tests/console/_rig.py).

Each mailed link is followed: the console must serve the page of that gateway's alert, so a mail whose link is
wrong (another key, another secret) fails here.
"""

from __future__ import annotations

import html
import json
import re
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from agent.console.config import load_console_config
from agent.console.service import ConsoleService
from agent.dev.devbroker import Mosquitto, free_port
from tests.console._rig import HOOK_TOKEN, FakeGateway, SmtpSink, add_hooks, console_yaml, sos_alert
from tests.support.influx import InfluxDB1

pytestmark = pytest.mark.broker

LINK_RE = re.compile(r"http://127\.0\.0\.1:\d+/a/[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+")


def grafana_alert(status: str, labels: dict[str, str], summary: str) -> dict[str, Any]:
    """One alert as Grafana's webhook contact point sends it."""
    return {"status": status, "labels": {"alertname": "denen alert", "severity": "emergency", **labels},
            "annotations": {"summary": summary, "description": "詳細 / details"},
            "startsAt": "2026-12-06T02:30:00Z",
            "endsAt": "0001-01-01T00:00:00Z" if status == "firing" else "2026-12-06T02:40:00Z",
            "generatorURL": "http://grafana:3000/alerting/grafana/abc/view", "fingerprint": "5d3a9c1e2b4f6a70",
            "silenceURL": "", "dashboardURL": "", "panelURL": "", "values": {"A": 1}}


def grafana_body(alerts: list[dict[str, Any]]) -> bytes:
    """A whole notification in Grafana's webhook format (version 1)."""
    return json.dumps({"receiver": "denen-console", "status": "firing", "orgId": 1, "alerts": alerts,
                       "groupLabels": {"alertname": "denen alert"}, "commonLabels": {}, "commonAnnotations": {},
                       "externalURL": "http://grafana:3000/", "version": "1", "groupKey": "{}:{}",
                       "truncatedAlerts": 0, "title": "[FIRING:2]", "state": "alerting", "message": ""}).encode()


def post(url: str, body: bytes, token: str | None = HOOK_TOKEN) -> tuple[int, dict[str, Any]]:
    headers = {"Content-Type": "application/json"}
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    try:
        with urllib.request.urlopen(urllib.request.Request(url, data=body, headers=headers), timeout=20) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        with exc:
            return exc.code, json.loads(exc.read())


def get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=10) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as exc:
        with exc:
            return exc.code, exc.read().decode()


def make_console(tmp: Path, broker: Mosquitto, smtp_port: int) -> ConsoleService:
    path = add_hooks(console_yaml(tmp, broker_port=broker.port, http_port=free_port(), influx_url=None),
                     smtp_port=smtp_port, max_body_bytes=64 * 1024)
    service = ConsoleService(load_console_config(path))
    service.start()
    assert service.link.wait_ready(10), "the console did not connect to the broker"
    return service


@pytest.fixture(scope="module")
def smtp() -> Iterator[SmtpSink]:
    sink = SmtpSink(free_port())
    yield sink
    sink.stop()


@pytest.fixture(scope="module")
def console(servers: tuple[Mosquitto, InfluxDB1], smtp: SmtpSink, tmp_path_factory: pytest.TempPathFactory
            ) -> Iterator[ConsoleService]:
    service = make_console(tmp_path_factory.mktemp("console"), servers[0], smtp.port)
    yield service
    service.stop()


@pytest.fixture
def hook(console: ConsoleService) -> str:
    return f"http://127.0.0.1:{console.port}/hooks/grafana"


def test_two_firing_alerts_are_mailed_with_links_the_console_serves(
        console: ConsoleService, smtp: SmtpSink, hook: str) -> None:
    river = sos_alert("00000301", name="日原川 水位計", message="避難判断水位", key="river_stage:00000301",
                      id="river_stage:00000301#2", type="river_stage", severity="critical")
    gw = FakeGateway(console.config.mqtt.port, "gw-a", [sos_alert("00a1b2c3"), river])
    try:
        assert console.states.wait_for("gw-a", 5) is not None
        before = len(smtp.messages)
        status, answer = post(hook, grafana_body([
            grafana_alert("firing", {"gateway": "gw-a", "node": "00a1b2c3", "type": "sos"}, "SOS 発信 沢の上"),
            grafana_alert("resolved", {"gateway": "gw-a", "node": "000000ff", "type": "trap_fired"}, "わな作動"),
            grafana_alert("firing", {"gateway": "gw-a", "node": "00000301", "type": "river_stage"}, "避難判断水位"),
        ]))
        assert (status, answer) == (200, {"mailed": 2, "resolved": 1, "skipped": 0, "bad": []})
        mails = smtp.wait(before + 2)[before:]
        assert len(mails) == 2
        seen = {}
        for rcpts, msg in mails:
            assert rcpts == ["bousai@example.jp", "ranger@example.jp"]
            assert msg["From"] == "denen@example.jp"
            text = msg.get_content()
            assert "確認リンク" in text and "Link (valid 1 h)" in text and "奥多摩 日原林道 (gw-a)" in text
            links = set(LINK_RE.findall(text))
            assert len(links) == 1, text
            link = links.pop()
            verified = console.signer.verify(link.rsplit("/", 1)[1])
            assert verified.gateway == "gw-a"
            seen[verified.key] = (msg["Subject"], text)
            status, page = get(link)
            assert status == 200, page
            page = html.unescape(page)
            assert 'id="ackform"' in page and "奥多摩 日原林道 (gw-a)" in page
            assert f"({verified.key.split(':')[1]})" in page
        assert set(seen) == {"sos:00a1b2c3", "river_stage:00000301"}
        assert "SOS 発信 沢の上" in seen["sos:00a1b2c3"][0] and "SOS 発信 沢の上" in seen["sos:00a1b2c3"][1]
        assert "避難判断水位" in seen["river_stage:00000301"][1]
        assert console.grafana is not None and console.grafana.counts["resolved"] >= 1
    finally:
        gw.close()


def test_wrong_or_missing_token_is_401_and_mails_nothing(console: ConsoleService, smtp: SmtpSink,
                                                         hook: str) -> None:
    body = grafana_body([grafana_alert("firing", {"gateway": "gw-a", "node": "00a1b2c3", "type": "sos"}, "x")])
    before, refused = len(smtp.messages), console.grafana.counts["unauthorized"]
    for token in ("wrong-" + HOOK_TOKEN[6:], HOOK_TOKEN + "x", "", None):
        assert post(hook, body, token)[0] == 401
    req = urllib.request.Request(hook, data=body, headers={"Authorization": f"Basic {HOOK_TOKEN}"})
    with pytest.raises(urllib.error.HTTPError) as exc:
        urllib.request.urlopen(req, timeout=10)
    with exc.value:
        assert exc.value.code == 401 and exc.value.headers["WWW-Authenticate"].startswith("Bearer")
    assert console.grafana.counts["unauthorized"] == refused + 5
    assert smtp.wait(before + 1, timeout=0.5)[before:] == []


@pytest.mark.parametrize("body, code", [
    (b"not json", "bad_json"),
    (b"\xff\xfe{}", "bad_json"),
    (b"[" * 30_000 + b"]" * 30_000, "bad_json"),  # deeper than the parser recurses
    (b'{"alerts": "all of them"}', "bad_format"),
    (b'{"alerts": [{"status": "firing", "labels": {"gateway": 7}}]}', "bad_format"),
    (b'{"alerts": [{"status": "exploded", "labels": {}}]}', "bad_format"),
    (b'{"no_alerts": []}', "bad_format"),
])
def test_malformed_body_is_400(console: ConsoleService, smtp: SmtpSink, hook: str, body: bytes, code: str) -> None:
    before, counted = len(smtp.messages), console.grafana.counts[code]
    status, answer = post(hook, body)
    assert (status, answer["error"]) == (400, code)
    assert console.grafana.counts[code] == counted + 1
    assert len(smtp.messages) == before


def test_too_large_body_is_413_unread(console: ConsoleService, hook: str) -> None:
    counted = console.grafana.counts["too_large"]
    body = grafana_body([grafana_alert("firing", {"gateway": "gw-a", "node": "00a1b2c3", "type": "sos"},
                                       "x" * 70_000)])
    status, answer = post(hook, body)
    assert (status, answer["error"]) == (413, "too_large")
    assert console.grafana.counts["too_large"] == counted + 1
    # The service still answers afterwards.
    assert get(f"http://127.0.0.1:{console.port}/healthz")[0] == 200


def test_labels_that_make_no_link_are_422_and_the_valid_alert_is_still_mailed(
        console: ConsoleService, smtp: SmtpSink, hook: str) -> None:
    before = len(smtp.messages)
    status, answer = post(hook, grafana_body([
        grafana_alert("firing", {"gateway": "GW/../x", "node": "00a1b2c3", "type": "sos"}, "bad gateway"),
        grafana_alert("firing", {"gateway": "gw-a", "node": "00a1:b2c3", "type": "sos"}, "bad node"),
        grafana_alert("firing", {"gateway": "gw-a", "node": "00a1b2c3", "type": "sos\r\nBcc: x@evil"}, "bad type"),
        grafana_alert("firing", {"site": "okutama"}, "a stack-wide rule: no page, skipped"),
        grafana_alert("firing", {"gateway": "gw-a", "node": "00a1b2c3", "type": "sos"}, "good\r\nBcc: x@evil"),
    ]))
    assert status == 422
    assert (answer["mailed"], answer["skipped"], len(answer["bad"])) == (1, 1, 3)
    mails = smtp.wait(before + 1)[before:]
    assert len(mails) == 1
    rcpts, msg = mails[0]
    assert rcpts == ["bousai@example.jp", "ranger@example.jp"] and msg["Bcc"] is None
    assert "\n" not in msg["Subject"] and "good Bcc: x@evil" in msg["Subject"]


def test_smtp_down_is_503_so_grafana_retries(servers: tuple[Mosquitto, InfluxDB1],
                                             tmp_path_factory: pytest.TempPathFactory) -> None:
    service = make_console(tmp_path_factory.mktemp("console-down"), servers[0], free_port())  # nothing listens
    try:
        url = f"http://127.0.0.1:{service.port}/hooks/grafana"
        body = grafana_body([grafana_alert("firing", {"gateway": "gw-a", "node": "00a1b2c3", "type": "sos"}, "x")])
        status, answer = post(url, body)
        assert (status, answer["error"]) == (503, "smtp_down")
        assert service.grafana is not None and service.grafana.counts["smtp_down"] == 1
        # Resolved only: nothing to mail, so the mail server is not needed.
        assert post(url, grafana_body([grafana_alert("resolved", {"gateway": "gw-a", "node": "00a1b2c3",
                                                                  "type": "sos"}, "x")]))[0] == 200
    finally:
        service.stop()
