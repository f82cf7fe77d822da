"""The console's HTML: Japanese with English alongside, one column that fits a phone, no script, no external asset.

Every text that comes from a gateway, a link or a form is escaped here (:func:`html.escape`), so a hostile name
or message is shown as text. Times are shown in JST (Japan has no daylight saving time, so a fixed UTC+9).
"""

from __future__ import annotations

import html
import time
from datetime import datetime, timedelta, timezone

from agent.console.state import AlertView, GatewayState, Result

__all__ = ["JST", "OUTCOMES", "alert_page", "jst", "message_page", "result_page"]

JST = timezone(timedelta(hours=9), "JST")

_CSS = """
*{box-sizing:border-box}
body{font-family:system-ui,"Hiragino Sans","Noto Sans CJK JP",sans-serif;font-size:17px;line-height:1.5;
margin:0 auto;padding:12px;max-width:40rem;overflow-wrap:anywhere;color:#111;background:#fff}
h1{font-size:1.3rem;margin:.2rem 0 .8rem}
.en{color:#555;font-size:.9em}
dl{margin:0 0 1rem}dt{font-weight:bold;margin-top:.5rem}dd{margin:0}
.sev{display:inline-block;padding:.1rem .5rem;border-radius:.3rem;background:#b00;color:#fff;font-weight:bold}
.box{border:2px solid #b00;border-radius:.5rem;padding:.8rem;margin:.8rem 0}
.ok{border-color:#070}.info{border-color:#555}
label{display:block;font-weight:bold;margin:.6rem 0 .2rem}
input[type=text]{width:100%;font-size:1.1rem;padding:.5rem}
button{display:block;width:100%;font-size:1.1rem;padding:.8rem;margin:.6rem 0;border-radius:.5rem;border:0;
color:#fff;background:#0a5}
button.alt{background:#555}
a{color:#04a}
"""

#: What each gateway outcome means, in Japanese / English.
OUTCOMES: dict[str, tuple[str, str]] = {
    "stopped": ("繰り返し通知を停止しました", "Repeats stopped"),
    "already_acknowledged": ("既に確認済みです（変更なし）", "Already acknowledged: nothing changed"),
    "not_active": ("この警報は有効ではありません（解除済み、変更なし）", "Alert not active (cleared): nothing changed"),
    "silenced": ("この警報のサイレンを停止しました", "Siren silenced for this alert"),
    "not_sounding": ("サイレンはこの警報で鳴っていません（変更なし）", "Siren not sounding for this alert: nothing changed"),
    "no_siren": ("サイレンが設定されていません", "No siren configured"),
    "chirped": ("テスト音を鳴らしました", "Test chirp sounded"),
    "no_outputs": ("出力が設定されていません", "No outputs configured"),
    "invalid": ("ゲートウェイが命令を不正として拒否しました", "The gateway refused the command as invalid"),
    "timeout": ("ゲートウェイから応答がありません", "No answer from the gateway"),
}

_TYPES: dict[str, tuple[str, str]] = {
    "sos": ("SOS（救助要請）", "SOS"),
    "trap_fired": ("わな作動", "Trap fired"),
    "river_rise": ("水位上昇", "River rising"),
    "river_stage": ("河川水位", "River stage"),
    "node_silent": ("ノード無応答", "Node silent"),
    "slope_tilt": ("斜面傾斜", "Slope tilt"),
    "slope_rate": ("斜面変動", "Slope moving"),
    "battery_low": ("電池残量低下", "Battery low"),
    "module_lost": ("無線モジュール断", "Radio module lost"),
    "journal_near_quota": ("記録容量不足", "Journal near its quota"),
}

_ACTIONS = {"ack": ("確認", "acknowledge"), "silence": ("サイレン停止", "siren silence"),
            "test": ("テスト音", "test chirp")}


def _e(text: object) -> str:
    return html.escape(str(text), quote=True)


def _both(ja: str, en: str) -> str:
    return f'{_e(ja)} <span class="en">/ {_e(en)}</span>'


def jst(ts_us: int, now_s: float | None = None) -> str:
    """``2024-05-01 13:05 JST (12分前 / 12 min ago)``."""
    now_s = time.time() if now_s is None else now_s
    when = datetime.fromtimestamp(ts_us / 1e6, JST).strftime("%Y-%m-%d %H:%M:%S JST")
    ago = max(0, int(now_s - ts_us / 1e6))
    if ago < 3600:
        rel = f"{ago // 60}分前 / {ago // 60} min ago"
    elif ago < 86400:
        rel = f"{ago // 3600}時間{ago % 3600 // 60}分前 / {ago // 3600} h {ago % 3600 // 60} min ago"
    else:
        rel = f"{ago // 86400}日前 / {ago // 86400} days ago"
    return f"{when} ({rel})"


def page(title_ja: str, title_en: str, body: str, *, refresh_s: int | None = None) -> bytes:
    """A whole page."""
    refresh = f'<meta http-equiv="refresh" content="{refresh_s}">' if refresh_s else ""
    return (f'<!DOCTYPE html><html lang="ja"><head><meta charset="utf-8">'
            f'<meta name="viewport" content="width=device-width, initial-scale=1">{refresh}'
            f'<meta name="referrer" content="no-referrer">'
            f"<title>{_e(title_ja)} / {_e(title_en)}</title><style>{_CSS}</style></head><body>"
            f"<h1>{_both(title_ja, title_en)}</h1>{body}</body></html>").encode("utf-8")


def message_page(title_ja: str, title_en: str, text_ja: str, text_en: str, *, kind: str = "info") -> bytes:
    """A page that only says something."""
    return page(title_ja, title_en, f'<div class="box {kind}" id="message"><p>{_e(text_ja)}</p>'
                                    f'<p class="en">{_e(text_en)}</p></div>')


def type_label(kind: str) -> tuple[str, str]:
    return _TYPES.get(kind, (kind, kind))


def _map_links(lat: float, lon: float) -> str:
    gsi = f"https://maps.gsi.go.jp/#16/{lat:.6f}/{lon:.6f}/"
    osm = f"https://www.openstreetmap.org/?mlat={lat:.6f}&amp;mlon={lon:.6f}#map=16/{lat:.6f}/{lon:.6f}"
    return (f'<a id="map" href="{gsi}" rel="noreferrer noopener">地理院地図 / GSI map</a> · '
            f'<a href="{osm}" rel="noreferrer noopener">OpenStreetMap</a> ({lat:.5f}, {lon:.5f})')


def alert_page(state: GatewayState, alert: AlertView, *, gateway_name: str | None, csrf: str,
               default_by: str | None, now_s: float | None = None) -> bytes:
    """The acknowledgement page of one open alert, with its form."""
    ja, en = type_label(alert.type)
    rows = [
        (("種別", "Type"), f'<span class="sev">{_e(alert.severity)}</span> {_both(ja, en)}'),
        (("ゲートウェイ", "Gateway"), _e(f"{gateway_name} ({state.gateway})" if gateway_name else state.gateway)),
        (("ノード", "Node"), _e(f"{alert.name} ({alert.node})" if alert.name and alert.node
                                 else alert.name or alert.node or "-")),
        (("発生時刻", "Since"), _e(jst(alert.since_us, now_s))),
        (("内容", "Message"), _e(alert.message)),
    ]
    if alert.value is not None:
        rows.append((("値", "Value"), _e(f"{alert.value:g}")))
    if alert.lat_deg is not None and alert.lon_deg is not None:
        rows.append((("場所", "Place"), _map_links(alert.lat_deg, alert.lon_deg)))
    if alert.acknowledged_by:
        status = _both(f"確認済み（{alert.acknowledged_by}）", f"acknowledged by {alert.acknowledged_by}")
    elif alert.repeating:
        status = _both("通知を繰り返し中", "repeating until acknowledged")
    else:
        status = _both("未確認", "not acknowledged")
    rows.append((("状態", "Status"), status))
    if state.siren_configured:
        sounding = state.siren_on and state.siren_alert == alert.key
        rows.append((("サイレン", "Siren"), _both("この警報で鳴動中", "sounding for this alert") if sounding
                     else _both("鳴っていない（この警報では）", "not sounding for this alert")))
    dl = "".join(f"<dt>{_both(*label)}</dt><dd>{value}</dd>" for label, value in rows)
    form = (f'<form method="post" id="ackform"><input type="hidden" name="csrf" value="{_e(csrf)}">'
            f'<label for="by">{_both("お名前", "Your name")}</label>'
            f'<input type="text" id="by" name="by" maxlength="100" required autocomplete="name" '
            f'value="{_e(default_by or "")}">'
            f'<button type="submit" id="confirm" name="action" value="ack">'
            f'{_both("確認しました（通知を止める）", "Confirm: we have it (stop repeats)")}</button>'
            f'<button type="submit" id="silence" class="alt" name="action" value="silence">'
            f'{_both("この警報のサイレンを止める", "Silence the siren for this alert")}</button>'
            f'<button type="submit" id="test" class="alt" name="action" value="test">'
            f'{_both("テスト音を鳴らす", "Run the test chirp")}</button></form>')
    return page("警報の確認", "Acknowledge alert", f'<div class="box" id="alert"><dl>{dl}</dl></div>{form}')


def result_page(command: str, gateway: str, *, outcome: str, result: Result | None, sends: int,
                by: str | None) -> bytes:
    """The page of one command: waiting (refreshes itself every 2 s), answered or given up."""
    action = {"alert-ack": "ack", "siren-silence": "silence", "test-chirp": "test"}.get(command, command)
    what_ja, what_en = _ACTIONS.get(action, (action, action))
    head = f"<p>{_both(f'{what_ja}: {gateway}', f'{what_en} on {gateway}')}"
    head += f"<br>{_both(f'操作者: {by}', f'by {by}')}</p>" if by else "</p>"
    if outcome == "pending":
        body = (f'<div class="box info" id="result" data-outcome="pending"><p>'
                f'{_both("ゲートウェイの応答を待っています", "Waiting for the gateway to answer")}'
                f' ({sends})</p></div>')
        return page("送信中", "Sending", head + body, refresh_s=2)
    if outcome == "timeout" or result is None:
        ja, en = OUTCOMES["timeout"]
        body = (f'<div class="box" id="result" data-outcome="timeout"><p>{_both(ja, en)}</p><p>'
                f'{_both(f"{sends}回送信しました。電話等で現地に連絡してください。", f"Sent {sends} times. Reach the site by phone.")}'
                f"</p></div>")
        return page("応答なし", "No answer", head + body)
    items = []
    for target, out in result.results:
        ja, en = OUTCOMES.get(out, (out, out))
        items.append(f'<li data-outcome="{_e(out)}">{_both(ja, en)}{f" ({_e(target)})" if target else ""}</li>')
    good = all(o in ("stopped", "silenced", "chirped", "already_acknowledged") for _, o in result.results)
    outcomes = " ".join(o for _, o in result.results)
    body = (f'<div class="box {"ok" if good else "info"}" id="result" data-outcome="{_e(outcomes)}">'
            f'<ul>{"".join(items)}</ul></div>')
    return page("ゲートウェイの応答", "Gateway's answer", head + body)
