"""Test parts for the console: a config writer, a fake gateway (a plain paho client that keeps a retained state
document and answers commands per the issue 11 contract) and a headless Chromium driven by selenium.

The fake gateway stands in for the real agent's command side, which is tested on its own; everything else here is
real: Mosquitto, InfluxDB, the console's HTTP server and the browser.
"""

from __future__ import annotations

import json
import os
import shutil
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion

from tests.support.field import write_config

SECRET = "k" * 24 + "-test-link-secret-of-48-bytes---"
PREFIX = "denen/v1"


def console_yaml(tmp: Path, *, broker_port: int, http_port: int, influx_url: str | None, retry_s: float = 0.5,
                 give_up_s: float = 30.0, registry: bool = True) -> Path:
    """A console config under ``tmp`` (link secret file mode 600, a gateway registry with gw-a's site)."""
    tmp.mkdir(parents=True, exist_ok=True)
    write_config(tmp / "link-secret", SECRET + "\n")
    (tmp / "gateways.yaml").write_text("gateways:\n  gw-a:\n    site: okutama\n    name: 奥多摩 日原林道\n",
                                       encoding="utf-8")
    sink = (f"sink:\n  type: v1\n  url: {influx_url}\n  database: denen\n  retry_min_s: 0.1\n  retry_max_s: 1\n"
            if influx_url else "")
    text = (f"http:\n  listen_host: 127.0.0.1\n  listen_port: {http_port}\n"
            f"  public_url: http://127.0.0.1:{http_port}\n"
            f"links:\n  secret_file: link-secret\n  ttl_s: 3600\n"
            f"mqtt:\n  host: 127.0.0.1\n  port: {broker_port}\n  topic_prefix: {PREFIX}\n  reconnect_min_s: 0.1\n"
            f"  reconnect_max_s: 1\n"
            f"commands:\n  retry_s: {retry_s}\n  give_up_s: {give_up_s}\n"
            + sink + ("gateways:\n  file: gateways.yaml\n" if registry else ""))
    return write_config(tmp / "console.yaml", text)


def sos_alert(node: str = "00a1b2c3", *, since_s_ago: float = 125.0, name: str = "沢の上 SOS-3",
              message: str = "SOS 発信 / SOS pressed", **extra: Any) -> dict[str, Any]:
    """An open SOS alert as a gateway's state document lists it."""
    alert = {"key": f"sos:{node}", "id": f"sos:{node}#7", "type": "sos", "node": node, "name": name,
             "severity": "emergency", "since_us": int((time.time() - since_s_ago) * 1e6), "message": message,
             "value": 1.0, "lat_deg": 35.8123, "lon_deg": 139.0456, "repeating": True, "acknowledged_by": None}
    alert.update(extra)
    return alert


class FakeGateway:
    """A gateway's command side over a real broker: retained ``state``, ``cmd/#`` in, ``results`` out.

    Args:
        answer: decides per received command whether to answer (False: the command is lost, as when the gateway is
            offline); default: always.
    """

    def __init__(self, port: int, gateway: str, alerts: list[dict[str, Any]], *, siren_alert: str | None = None,
                 siren: bool = True, answer: Callable[[str, dict[str, Any]], bool] | None = None) -> None:
        self.gateway = gateway
        self.alerts = {a["key"]: a for a in alerts}
        self.siren_configured = siren
        self.siren_alert = siren_alert
        self.silenced: list[str] = []
        self.answer = answer or (lambda name, doc: True)
        self.commands: list[tuple[str, dict[str, Any]]] = []
        self.results: list[dict[str, Any]] = []
        self._cond = threading.Condition()
        self._ready = threading.Event()
        self.client = mqtt.Client(callback_api_version=CallbackAPIVersion.VERSION2, client_id=gateway,
                                  protocol=MQTTProtocolVersion.MQTTv5)
        self.client.on_connect = lambda c, u, f, rc, p: c.subscribe(f"{PREFIX}/{gateway}/cmd/#", qos=1)
        self.client.on_subscribe = lambda c, u, mid, rcs, p: self._ready.set()
        self.client.on_message = self._on_message
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()
        if not self._ready.wait(5):
            raise RuntimeError("fake gateway could not subscribe")
        self.publish_state()

    def state(self) -> dict[str, Any]:
        return {"schema": "denen.state/1", "gateway": self.gateway, "ts_us": time.time_ns() // 1000,
                "siren": {"configured": self.siren_configured, "on": self.siren_alert is not None,
                          "why": "alert" if self.siren_alert else None, "alert": self.siren_alert,
                          "silenced": list(self.silenced)},
                "lamp": {"configured": True, "state": "alert" if self.alerts else "ok"}, "relays": [],
                "held": {"active": False, "reason": None, "count": 0, "until_us": None},
                "alerts": list(self.alerts.values())}

    def publish_state(self, doc: dict[str, Any] | bytes | None = None, *, wait: bool = True) -> None:
        # ASCII JSON (\u escapes): a hostile gateway may spell a lone surrogate that way.
        payload = doc if isinstance(doc, bytes) else json.dumps(doc or self.state()).encode()
        info = self.client.publish(f"{PREFIX}/{self.gateway}/state", payload, qos=1, retain=True)
        if wait:  # never from paho's own thread (a callback): it would wait for itself
            info.wait_for_publish(5)

    def _on_message(self, client: Any, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        name = msg.topic.rsplit("/", 1)[-1]
        doc = json.loads(msg.payload)
        with self._cond:
            self.commands.append((name, doc))
            self._cond.notify_all()
        if not self.answer(name, doc):
            return
        results = []
        if name == "alert-ack":
            for key in doc.get("keys", []):
                alert = self.alerts.get(key)
                if alert is None:
                    results.append({"target": key, "outcome": "not_active"})
                elif alert["acknowledged_by"]:
                    results.append({"target": key, "outcome": "already_acknowledged"})
                else:
                    alert.update(acknowledged_by=doc.get("by"), repeating=False)
                    results.append({"target": key, "outcome": "stopped"})
        elif name == "siren-silence":
            key = doc.get("key")
            if not self.siren_configured:
                results.append({"target": key, "outcome": "no_siren"})
            elif self.siren_alert == key:
                self.silenced.append(key)
                self.siren_alert = None
                results.append({"target": key, "outcome": "silenced"})
            else:
                results.append({"target": key, "outcome": "not_sounding"})
        elif name == "test-chirp":
            results.append({"target": None, "outcome": "chirped"})
        result = {"schema": "denen.result/1", "gateway": self.gateway, "ts_us": time.time_ns() // 1000,
                  "command": name, "request_id": doc.get("request_id"), "by": doc.get("by"), "via": doc.get("via"),
                  "results": results}
        # As the contract says: the state changed first, then the result.
        self.publish_state(wait=False)
        self.client.publish(f"{PREFIX}/{self.gateway}/results", json.dumps(result, ensure_ascii=False), qos=1)
        with self._cond:
            self.results.append(result)
            self._cond.notify_all()

    def wait_commands(self, n: int, timeout: float = 10.0) -> list[tuple[str, dict[str, Any]]]:
        with self._cond:
            self._cond.wait_for(lambda: len(self.commands) >= n, timeout)
            return list(self.commands)

    def close(self) -> None:
        self.client.publish(f"{PREFIX}/{self.gateway}/state", b"", qos=1, retain=True).wait_for_publish(5)
        self.client.loop_stop()
        self.client.disconnect()


CHROME_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
                "--disable-background-networking", "--disable-component-update", "--disable-sync")
INSTALL = "apt-get install -y --no-install-recommends chromium chromium-driver (bash deploy/dev.sh test does it)"


def chromium(profile: Path, *, width: int = 390, height: int = 844) -> Any:
    """A headless Chromium at phone size (a missing browser, driver or selenium fails the test, never skips)."""
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        pytest.fail("selenium is not installed: pip install -e '.[test]'")
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    driver = shutil.which("chromedriver") or ("/usr/lib/chromium/chromedriver"
                                             if os.access("/usr/lib/chromium/chromedriver", os.X_OK) else None)
    if browser is None or driver is None:
        pytest.fail(f"chromium and chromium-driver are needed for the console's page tests. Install them with: "
                    f"{INSTALL}")
    options = webdriver.ChromeOptions()
    options.binary_location = browser
    for flag in CHROME_FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={profile}")
    options.add_argument(f"--window-size={width},{height}")
    # Phone-like: a touch device of that width at 3x pixels, as Chrome's device mode does it.
    options.add_experimental_option("mobileEmulation", {"deviceMetrics": {"width": width, "height": height,
                                                                          "pixelRatio": 3.0, "touch": True}})
    return webdriver.Chrome(service=Service(driver), options=options)


HOOK_TOKEN = "grafana-hook-token-" + "t" * 32


def add_hooks(config: Path, *, smtp_port: int, token: str = HOOK_TOKEN, max_body_bytes: int = 256 * 1024) -> Path:
    """Append ``hooks:`` (token file mode 600) and ``mail:`` (plain SMTP on 127.0.0.1:``smtp_port``) to ``config``."""
    write_config(config.parent / "grafana-hook-token", token + "\n")
    text = config.read_text(encoding="utf-8") + (
        f"hooks:\n  grafana_token_file: grafana-hook-token\n  max_body_bytes: {max_body_bytes}\n"
        f"mail:\n  host: 127.0.0.1\n  port: {smtp_port}\n  tls: none\n  from: denen@example.jp\n"
        f"  to: [bousai@example.jp, ranger@example.jp]\n  timeout_s: 5\n")
    return write_config(config, text)


class SmtpSink:
    """A real SMTP server (aiosmtpd) on 127.0.0.1 that keeps every message it receives."""

    def __init__(self, port: int) -> None:
        try:
            from aiosmtpd.controller import Controller
        except ImportError:
            pytest.fail("aiosmtpd is not installed: pip install -e '.[test]'")
        self.messages: list[Any] = []
        self._cond = threading.Condition()
        sink = self

        class Handler:
            async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:  # noqa: N802
                import email
                from email import policy

                with sink._cond:
                    sink.messages.append((list(envelope.rcpt_tos),
                                          email.message_from_bytes(envelope.content, policy=policy.default)))
                    sink._cond.notify_all()
                return "250 OK"

        self.port = port
        self.controller = Controller(Handler(), hostname="127.0.0.1", port=port)
        self.controller.start()

    def wait(self, n: int, timeout: float = 10.0) -> list[Any]:
        with self._cond:
            self._cond.wait_for(lambda: len(self.messages) >= n, timeout)
            return list(self.messages)

    def stop(self) -> None:
        self.controller.stop()
