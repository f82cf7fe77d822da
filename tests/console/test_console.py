"""The console end to end with real parts: Mosquitto, InfluxDB 1.6.7, the console's HTTP server, headless Chromium.

A fake gateway (tests/console/_rig.py) keeps a retained state document and answers commands per the issue 11
contract. The servers, the console and the browser are started once for the module (each test uses its own gateway
ids) to keep the module well under a minute.
"""

from __future__ import annotations

import json
import struct
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from agent.console.config import load_console_config
from agent.console.links import LinkSigner
from agent.console.service import ConsoleService
from agent.dev.devbroker import Mosquitto, free_port
from tests.console._rig import SECRET, FakeGateway, chromium, console_yaml, sos_alert
from tests.support.influx import InfluxDB1

pytestmark = pytest.mark.broker


@pytest.fixture(scope="module")
def console(servers: tuple[Mosquitto, InfluxDB1], tmp_path_factory: pytest.TempPathFactory
            ) -> Iterator[ConsoleService]:
    broker, influx = servers
    path = console_yaml(tmp_path_factory.mktemp("console"), broker_port=broker.port, http_port=free_port(),
                        influx_url=influx.url, retry_s=0.5, give_up_s=3.0)
    service = ConsoleService(load_console_config(path))
    service.start()
    assert service.link.wait_ready(10), "the console did not connect to the broker"
    yield service
    service.stop()


@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    driver = chromium(tmp_path_factory.mktemp("chromium") / "profile")
    driver.set_page_load_timeout(15)
    yield driver
    driver.quit()


def start_gateway(console: ConsoleService, gateways: list[FakeGateway], gateway: str, alerts: list[dict[str, Any]],
                  **kw: Any) -> FakeGateway:
    broker_port = console.config.mqtt.port
    gw = FakeGateway(broker_port, gateway, alerts, **kw)
    gateways.append(gw)
    assert console.states.wait_for(gateway, 5) is not None, "the console did not get the gateway's state"
    return gw


def http(url: str, form: dict[str, str] | None = None, headers: dict[str, str] | None = None
         ) -> tuple[int, str, dict[str, str]]:
    """GET (or POST ``form``) without following redirects: status, body, headers."""
    data = urllib.parse.urlencode(form).encode() if form is not None else None

    class NoRedirect(urllib.request.HTTPRedirectHandler):
        def redirect_request(self, *args: Any, **kwargs: Any) -> None:
            return None

    opener = urllib.request.build_opener(NoRedirect)
    try:
        with opener.open(urllib.request.Request(url, data=data, headers=headers or {}), timeout=10) as resp:
            return resp.status, resp.read().decode(), dict(resp.headers)
    except urllib.error.HTTPError as exc:
        with exc:
            return exc.code, exc.read().decode(), dict(exc.headers)


def audit_rows(influx: InfluxDB1, gateway: str, expect: int, timeout: float = 10.0) -> list[dict[str, Any]]:
    deadline = time.monotonic() + timeout
    while True:
        rows = influx.rows(f"SELECT * FROM alert_ack WHERE gateway = '{gateway}'", "denen")
        if len(rows) >= expect or time.monotonic() > deadline:
            return rows
        time.sleep(0.1)


def wait_text(browser: Any, css: str, predicate: Any, timeout: float = 10.0) -> str:
    from selenium.common.exceptions import WebDriverException
    from selenium.webdriver.common.by import By

    deadline = time.monotonic() + timeout
    while True:
        try:
            found = browser.find_elements(By.CSS_SELECTOR, css)
            text = found[0].get_attribute("data-outcome") if found else None
        except WebDriverException:  # the waiting page refreshed itself meanwhile (stale or detached node)
            text = None
        if text is not None and predicate(text):
            return text
        if time.monotonic() > deadline:
            raise AssertionError(f"{css} never matched; page: {browser.page_source[:3000]}")
        time.sleep(0.1)


def wait_body(browser: Any, text: str, timeout: float = 10.0) -> str:
    """The page's text once it holds ``text`` (a click's navigation may still be under way)."""
    from selenium.common.exceptions import WebDriverException
    from selenium.webdriver.common.by import By

    deadline = time.monotonic() + timeout
    body = ""
    while time.monotonic() < deadline:
        try:
            body = browser.find_element(By.TAG_NAME, "body").text
        except WebDriverException:
            body = ""
        if text in body:
            return body
        time.sleep(0.05)
    raise AssertionError(f"{text!r} never shown; page: {body[:2000]}")


def test_confirm_on_a_phone_stops_the_alert_and_is_audited(console: ConsoleService, browser: Any,
                                                           gateways: list[FakeGateway],
                                                           servers: tuple[Mosquitto, InfluxDB1],
                                                           tmp_path: Path) -> None:
    from selenium.webdriver.common.by import By

    _, influx = servers
    alert = sos_alert("00a1b2c3", since_s_ago=125)
    gw = start_gateway(console, gateways, "gw-a", [alert], siren_alert="sos:00a1b2c3")
    url = console.url_for("gw-a", "sos:00a1b2c3", recipient="山田")

    browser.get(url)
    page = browser.find_element(By.TAG_NAME, "body").text
    for text in ("警報の確認", "Acknowledge alert", "SOS（救助要請）", "沢の上 SOS-3 (00a1b2c3)", "奥多摩 日原林道 (gw-a)",
                 "JST", "2分前 / 2 min ago", "この警報で鳴動中", "repeating until acknowledged"):
        assert text in page, text
    gsi = browser.find_element(By.ID, "map").get_attribute("href")
    assert gsi == "https://maps.gsi.go.jp/#16/35.812300/139.045600/"

    # Phone width: the confirm button is on screen without scrolling sideways, and nothing overflows.
    shot = tmp_path / "phone-390x844.png"
    assert browser.save_screenshot(str(shot))
    png = shot.read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = struct.unpack(">II", png[16:24])
    inner = browser.execute_script("return [innerWidth, innerHeight, devicePixelRatio, "
                                   "document.scrollingElement.scrollWidth]")
    assert inner[0] == 390 and (width, height) == (390 * inner[2], 844 * inner[2])
    assert inner[3] <= inner[0], f"horizontal overflow: scrollWidth {inner[3]} > innerWidth {inner[0]}"
    confirm = browser.find_element(By.ID, "confirm")
    rect = browser.execute_script("const r = arguments[0].getBoundingClientRect(); "
                                  "return [r.left, r.right, r.top, r.bottom]", confirm)
    assert 0 <= rect[0] < rect[1] <= inner[0], rect
    assert confirm.is_displayed() and rect[1] - rect[0] > 300  # a thumb-sized, full-width button

    name = browser.find_element(By.ID, "by")
    assert name.get_attribute("value") == "山田"  # the link's recipient
    name.clear()
    name.send_keys("田中 花子")
    t_confirm = time.time()
    confirm.click()
    assert wait_text(browser, "#result", lambda o: o != "pending") == "stopped"
    assert "/r/" in browser.current_url
    assert "繰り返し通知を停止しました" in browser.find_element(By.TAG_NAME, "body").text

    (name_, doc), = gw.wait_commands(1)
    assert name_ == "alert-ack"
    assert doc["keys"] == ["sos:00a1b2c3"] and doc["by"] == "田中 花子" and doc["via"] == "console"
    request_id = doc["request_id"]
    assert browser.current_url.endswith(f"/r/{request_id}")

    rows = audit_rows(influx, "gw-a", 2)
    assert len(rows) == 2, rows
    first, second = sorted(rows, key=lambda r: r["time"])
    assert first["action"] == "ack" and first["site"] == "okutama" and first["type"] == "sos"
    assert first["node"] == "00a1b2c3" and first["by"] == "田中 花子" and first["from_ip"] == "127.0.0.1"
    assert first["request_id"] == request_id and first["alert_id"] == "sos:00a1b2c3#7"
    assert first["since_us"] == alert["since_us"]
    assert 120 < first["ack_delay_s"] < 125 + (time.time() - t_confirm) + 5
    assert second["result"] == "stopped" and second["request_id"] == request_id and second["by"] is None

    # The same link confirmed again (back, submit): refused, nothing new published, nothing new audited.
    browser.get(url)
    assert "確認済み（田中 花子）" in browser.find_element(By.TAG_NAME, "body").text
    browser.find_element(By.ID, "confirm").click()
    body = wait_body(browser, "Already acknowledged by")
    assert "Already acknowledged by 田中 花子 at" in body and "JST" in body and "Nothing was sent" in body
    # Another link to the same raise (a second person's e-mail): the same answer.
    status, text, _ = http(console.url_for("gw-a", "sos:00a1b2c3"))
    assert status == 200
    csrf = text.split('name="csrf" value="')[1].split('"')[0]
    other = console.url_for("gw-a", "sos:00a1b2c3")
    status, text, _ = http(other, {"csrf": console.signer.csrf(other.rsplit("/", 1)[1]), "action": "ack",
                                   "by": "佐藤"})
    assert status == 409 and "Already acknowledged by 田中 花子" in text
    assert csrf  # the page served a form token
    time.sleep(1.0)  # longer than commands.retry_s: a retry would have been sent by now
    assert len(gw.commands) == 1
    assert len(audit_rows(influx, "gw-a", 3, timeout=0.5)) == 2


def test_expired_forged_and_malformed_links_are_refused_in_the_browser(console: ConsoleService, browser: Any,
                                                                        gateways: list[FakeGateway]) -> None:
    from selenium.webdriver.common.by import By

    gw = start_gateway(console, gateways, "gw-b", [sos_alert("00b00001")])
    base = console.config.http.public_url
    expired = LinkSigner(SECRET.encode(), clock=lambda: time.time() - 7200).sign("gw-b", "sos:00b00001", 3600)
    good = console.url_for("gw-b", "sos:00b00001").rsplit("/", 1)[1]
    payload, sig = good.split(".")
    flipped = payload[:-3] + ("A" if payload[-3] != "A" else "B") + payload[-2:] + "." + sig
    other_secret = LinkSigner(b"another secret of at least 32 bytes!").sign("gw-b", "sos:00b00001", 3600)
    cases = {expired: (403, "This link has expired"), flipped: (403, "This link is not valid"),
             other_secret: (403, "This link is not valid"), "not-a-token": (400, "This link is damaged"),
             good[:-1]: (400, "This link is damaged")}
    for token, (status, text) in cases.items():
        browser.get(f"{base}/a/{token}")
        body = browser.find_element(By.TAG_NAME, "body").text
        assert text in body, (token, body)
        assert not browser.find_elements(By.TAG_NAME, "form")
        got, page, headers = http(f"{base}/a/{token}")
        assert got == status and "Traceback" not in page
        # A POST with a bad link publishes nothing, whatever form it carries.
        got, page, _ = http(f"{base}/a/{token}", {"csrf": console.signer.csrf(token), "action": "ack", "by": "x"})
        assert got == status
    assert headers["Referrer-Policy"] == "no-referrer" and "default-src 'none'" in headers["Content-Security-Policy"]
    # The form token of one link is useless on another; a POST without one is refused too.
    other = console.url_for("gw-b", "sos:00b00001").rsplit("/", 1)[1]
    for csrf in (console.signer.csrf(other), "", "x" * 43):
        got, page, _ = http(f"{base}/a/{good}", {"csrf": csrf, "action": "ack", "by": "x"})
        assert got == 403 and "Form not valid" in page
    got, page, _ = http(f"{base}/a/{good}", {"csrf": console.signer.csrf(good), "action": "reboot", "by": "x"})
    assert got == 400
    got, page, _ = http(f"{base}/a/{good}", {"csrf": console.signer.csrf(good), "action": "ack", "by": "a\x00b"})
    assert got == 400 and "Your name is needed" in page
    time.sleep(0.7)
    assert gw.commands == []


def test_an_alert_not_open_is_answered_and_nothing_is_published(console: ConsoleService,
                                                                gateways: list[FakeGateway]) -> None:
    gw = start_gateway(console, gateways, "gw-c", [sos_alert("00c00001")])
    url = console.url_for("gw-c", "sos:00c0dead")
    token = url.rsplit("/", 1)[1]
    status, page, _ = http(url)
    assert status == 200 and "This alert is not open any more (cleared)." in page and "<form" not in page
    for action in ("ack", "silence", "test"):
        status, page, _ = http(url, {"csrf": console.signer.csrf(token), "action": action, "by": "山田"})
        assert status == 409 and "Nothing was sent" in page
    # A gateway the console has no state of: said so, nothing published.
    unknown = console.url_for("gw-nowhere", "sos:00c00001")
    status, page, headers = http(unknown, {"csrf": console.signer.csrf(unknown.rsplit("/", 1)[1]), "action": "ack",
                                           "by": "山田"})
    assert status == 503 and "has not arrived yet" in page
    time.sleep(0.7)
    assert gw.commands == []


def test_silence_and_test_chirp_from_the_page(console: ConsoleService, gateways: list[FakeGateway],
                                              servers: tuple[Mosquitto, InfluxDB1]) -> None:
    _, influx = servers
    gw = start_gateway(console, gateways, "gw-d", [sos_alert("00d00001")], siren_alert="sos:00d00001")
    url = console.url_for("gw-d", "sos:00d00001", recipient="消防団 3分団")
    token = url.rsplit("/", 1)[1]
    outcomes = []
    for action in ("silence", "silence", "test"):
        # X-Forwarded-For from a peer that is not a trusted proxy is not believed.
        status, _, headers = http(url, {"csrf": console.signer.csrf(token), "action": action, "by": ""},
                                  {"X-Forwarded-For": "203.0.113.9"})
        assert status == 303
        result_url = headers["Location"]
        deadline = time.monotonic() + 5
        while 'data-outcome="pending"' in (page := http(result_url)[1]) and time.monotonic() < deadline:
            time.sleep(0.05)
        outcomes.append(page.split('id="result" data-outcome="')[1].split('"')[0])
    # Silenced once; the second finds it not sounding (nothing changed); the chirp is heard.
    assert outcomes == ["silenced", "not_sounding", "chirped"]
    names = [(n, d.get("key"), d["by"]) for n, d in gw.commands]
    assert names == [("siren-silence", "sos:00d00001", "消防団 3分団")] * 2 + [("test-chirp", None, "消防団 3分団")]
    rows = audit_rows(influx, "gw-d", 6)
    results = sorted((r["action"], r["result"]) for r in rows if r["result"])
    assert results == [("silence", "not_sounding"), ("silence", "silenced"), ("test", "chirped")]
    assert {r["from_ip"] for r in rows if r["by"]} == {"127.0.0.1"}


def test_command_sent_again_until_the_gateway_answers_or_given_up(console: ConsoleService,
                                                                  gateways: list[FakeGateway],
                                                                  servers: tuple[Mosquitto, InfluxDB1]) -> None:
    _, influx = servers
    # The first two sends are lost (the gateway is offline; its session is clean); the third is answered.
    lossy = start_gateway(console, gateways, "gw-e", [sos_alert("00e00001")],
                          answer=lambda name, doc: len(seen_e) > 2)
    seen_e = lossy.commands
    url = console.url_for("gw-e", "sos:00e00001")
    status, _, headers = http(url, {"csrf": console.signer.csrf(url.rsplit("/", 1)[1]), "action": "ack",
                                    "by": "山田"})
    assert status == 303
    deadline = time.monotonic() + 5
    while 'data-outcome="stopped"' not in (page := http(headers["Location"])[1]) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert 'data-outcome="stopped"' in page
    assert len(lossy.commands) == 3 and len({d["request_id"] for _, d in lossy.commands}) == 1

    # A gateway that never answers: given up after commands.give_up_s (3 s), "timeout" on the page and in the audit.
    mute = start_gateway(console, gateways, "gw-f", [sos_alert("00f00001")], answer=lambda name, doc: False)
    url = console.url_for("gw-f", "sos:00f00001")
    status, page, headers = http(url, {"csrf": console.signer.csrf(url.rsplit("/", 1)[1]), "action": "ack",
                                       "by": "山田"})
    assert 'http-equiv="refresh"' in http(headers["Location"])[1]  # the waiting page refreshes itself
    deadline = time.monotonic() + 6
    while 'data-outcome="timeout"' not in (page := http(headers["Location"])[1]) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert 'data-outcome="timeout"' in page and "No answer from the gateway" in page
    assert 5 <= len(mute.commands) <= 8  # every 0.5 s for 3 s
    rows = audit_rows(influx, "gw-f", 2)
    assert sorted(r["result"] or "" for r in rows) == ["", "timeout"]


def test_hostile_gateway_text_is_shown_as_text(console: ConsoleService, browser: Any,
                                               gateways: list[FakeGateway]) -> None:
    from selenium.webdriver.common.by import By

    evil = sos_alert("00a0e011", name='<script>document.title="pwned"</script>',
                     message='"><img src=x onerror=alert(1)>\u0007 \ud800 end', lat_deg=35.0, lon_deg=139.0)
    gw = start_gateway(console, gateways, "gw-g", [evil])
    # Broken state documents from the same gateway are refused and counted; the last good one stays.
    before = sum(v for k, v in console.link.stats.items() if k.startswith("bad."))
    for payload in (b"\xff\xfe", b"[]", b'{"schema":"denen.state/1","gateway":"gw-x","ts_us":1}',
                    json.dumps({**gw.state(), "alerts": [{"key": "sos 1"}]}).encode()):
        gw.publish_state(payload)
    gw.publish_state()  # a good one after them: it arrived in order, so the bad ones were seen before it
    time.sleep(0.3)
    assert sum(v for k, v in console.link.stats.items() if k.startswith("bad.")) - before == 4
    browser.get(console.url_for("gw-g", "sos:00a0e011"))
    body = browser.find_element(By.TAG_NAME, "body").text
    assert '<script>document.title="pwned"</script>' in body and "<img src=x onerror=alert(1)>" in body
    assert browser.title != "pwned" and not browser.find_elements(By.TAG_NAME, "script")
    assert not browser.find_elements(By.TAG_NAME, "img")
    assert "\ufffd end" in body


def test_one_confirmation_stops_the_same_alert_on_every_gateway_that_raised_it(
        console: ConsoleService, gateways: list[FakeGateway], servers: tuple[Mosquitto, InfluxDB1]) -> None:
    """Overlapping valleys: two gateways heard the same caller and each sounds its siren for the SOS; a third holds
    another node's alert. The person confirms the link of one gateway: both sirens stop, each command audited."""
    _, influx = servers
    valley = start_gateway(console, gateways, "gw-valley-e", [sos_alert("00e00001")], siren_alert="sos:00e00001")
    relay = start_gateway(console, gateways, "gw-relay-e", [sos_alert("00e00001")], siren_alert="sos:00e00001")
    other = start_gateway(console, gateways, "gw-other-e", [sos_alert("00e00002")])
    url = console.url_for("gw-valley-e", "sos:00e00001")
    status, _, _ = http(url, {"csrf": console.signer.csrf(url.rsplit("/", 1)[1]), "action": "ack", "by": "山田"})
    assert status in (200, 303)
    for gw in (valley, relay):
        (name, doc), = gw.wait_commands(1)
        assert name == "alert-ack" and doc["keys"] == ["sos:00e00001"] and doc["by"] == "山田"
    assert {r["action"] for r in audit_rows(influx, "gw-relay-e", 1)} == {"ack"}
    time.sleep(0.7)
    assert other.commands == []
