"""A live terminal view of what gateways publish: latest reading per node, alerts, gateway status.

Used by ``denen demo``; it is an MQTT subscriber like any backend, so it shows what really reached the broker.
"""

from __future__ import annotations

import json
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion
from rich.console import Group
from rich.panel import Panel
from rich.table import Table

_KIND_JA = {
    "sos": "SOS 救助要請", "trap": "わな trap", "water_level": "水位 river", "rain": "雨量 rain", "tilt": "傾斜 tilt",
    "weather": "気象 weather", "heartbeat": "死活 heartbeat", "gateway_health": "ゲートウェイ gateway",
}


@dataclass
class LiveState:
    """What the view shows; updated from the MQTT thread under ``lock``."""

    latest: dict[str, dict[str, Any]] = field(default_factory=dict)
    alerts: deque[str] = field(default_factory=lambda: deque(maxlen=12))
    status: dict[str, str] = field(default_factory=dict)
    readings: int = 0
    messages: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)


class LiveView:
    """Subscribes to ``<prefix>/+/#`` on a broker and renders a rich table."""

    def __init__(self, host: str, port: int, *, prefix: str = "denen/v1") -> None:
        self.state = LiveState()
        self._prefix = prefix
        self.client = mqtt.Client(callback_api_version=CallbackAPIVersion.VERSION2, client_id=f"denen-live-{time.time_ns()}",
                                  protocol=MQTTProtocolVersion.MQTTv5)
        self.client.on_connect = lambda c, u, f, rc, p: c.subscribe(f"{prefix}/+/#", qos=1)
        self.client.on_message = self._on_message
        self.client.connect(host, port)
        self.client.loop_start()

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()

    def _on_message(self, client: Any, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        try:
            doc = json.loads(msg.payload)
        except ValueError:
            return
        st = self.state
        with st.lock:
            st.messages += 1
            if msg.topic.endswith("/status"):
                st.status[doc.get("gateway", "?")] = doc.get("state", "?")
                return
            for r in doc.get("readings", []):
                st.readings += 1
                if r.get("kind") != "alert":
                    st.latest[r["node"]] = r
                alert = _alert_text(r)
                if alert:
                    st.alerts.appendleft(alert)

    def render(self) -> Group:
        st = self.state
        with st.lock:
            t = Table(title="nodes / ノード", expand=True)
            for col in ("time", "node", "name", "kind", "values", "RSSI", "SNR", "auth"):
                t.add_column(col)
            for node in sorted(st.latest):
                r = st.latest[node]
                vals = ", ".join(f"{k}={v:g}" for k, v in r.get("values", {}).items() if not k.startswith("depth_"))
                t.add_row(_hms(r["ts_us"]), node, r.get("name") or "", _KIND_JA.get(r["kind"], r["kind"]),
                          vals[:70], _opt(r.get("rssi")), _opt(r.get("snr")), r.get("auth", ""))
            gws = "  ".join(f"{g}: {'[green]online[/]' if s == 'online' else '[red]' + s + '[/]'}"
                            for g, s in st.status.items()) or "waiting for gateways..."
            alerts = "\n".join(st.alerts) or "none yet"
            return Group(
                Panel(f"{gws}    readings {st.readings}   messages {st.messages}", title="denen demo"),
                t,
                Panel(alerts, title="alerts / 警報", border_style="red"),
            )


def _alert_text(r: dict[str, Any]) -> str | None:
    """The gateway's own alerts (kind ``alert``), one line each, newest first."""
    a = r.get("alert")
    if r.get("kind") != "alert" or not isinstance(a, dict):
        return None
    colour = {"emergency": "bold red", "warning": "yellow"}.get(a.get("severity", ""), "cyan")
    state = "解除 cleared" if a.get("state") == "cleared" else "発報 raised"
    who = a.get("name") or a.get("node") or r.get("name") or ""
    return f"[{colour}]{_hms(r['ts_us'])} {who}: {a.get('message', a.get('type'))}[/] ({state})"


def _opt(v: object) -> str:
    return "-" if v is None else str(v)


def _hms(ts_us: int) -> str:
    return datetime.fromtimestamp(ts_us / 1e6).strftime("%H:%M:%S")
