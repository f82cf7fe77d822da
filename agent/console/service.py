"""The console service: HTTP pages, the actions behind them, and their audit.

Routes (every answer is a whole HTML page, never a traceback; security headers on all of them)::

    GET  /a/<token>        the alert of a signed link, with the form (or why it cannot be used)
    POST /a/<token>        the form: csrf, action (ack | silence | test), by; re-verifies the link
    GET  /r/<request_id>   one command's progress and the gateway's answer (refreshes itself while waiting)
    GET  /healthz          200 "ok" when connected to the broker, else 503
    POST /hooks/grafana    Grafana's webhook contact point: mails a signed link per firing alert
                           (:mod:`agent.console.hooks`, which lists its answers); 404 without ``hooks:``

Answers to the POST:

=================================  =====  =====================================================================
link malformed / forged / expired  400/   the page says which; nothing is published
                                   403
form token wrong                   403    (a form not served for this link); nothing is published
no name                            400    nothing is published
gateway state not known yet        503    the console has no retained state of the gateway (just started, or
                                          the gateway never connected); nothing is published
alert not open                     409    not in the gateway's state (cleared, or never raised); nothing
                                          is published
confirm replayed                   409    "already acknowledged by X at T": the same link was confirmed
                                          before, another link of the same raise was, or the gateway
                                          reports the alert acknowledged; nothing is published
accepted                           303    to /r/<request_id>; the action is audited and its command sent
                                          until the gateway answers
=================================  =====  =====================================================================

Who acknowledged which raise is kept in memory (per link nonce until the link expires, per alert id); after a
restart the gateway's state (``acknowledged_by``) still answers a replay.
"""

from __future__ import annotations

import json
import logging
import re
import socket
import threading
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

from agent.bridge.registry import GatewayRegistry
from agent.console.audit import Action, Audit, now_us
from agent.console.commands import CommandLink, Pending, new_request_id
from agent.console.config import ConsoleConfig
from agent.console.hooks import GrafanaHook, Mailer
from agent.console.links import Link, LinkError, LinkSigner, clean_by
from agent.console.pages import alert_page, jst, message_page, result_page
from agent.console.state import AlertView, StateBook
from agent.i18n import N_, LazyText, _
from agent.ratelog import RateLimitedLog

__all__ = ["ACTION_COMMANDS", "ConsoleService", "Refusal", "command_doc"]

log = logging.getLogger("denen.console")

#: action -> command topic leaf.
ACTION_COMMANDS = {"ack": "alert-ack", "silence": "siren-silence", "test": "test-chirp"}
FORM_MAX_BYTES = 4096
#: Acknowledgement records kept at most (each lives until its link expires).
ACKS_MAX = 100_000
_REQUEST_ID_RE = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
_SECURITY_HEADERS = (
    ("Content-Security-Policy", "default-src 'none'; style-src 'unsafe-inline'; form-action 'self'; "
                                "frame-ancestors 'none'; base-uri 'none'"),
    ("X-Content-Type-Options", "nosniff"),
    ("X-Frame-Options", "DENY"),
    # The token is in the URL: it must not leave in a Referer (map links) nor stay in a cache.
    ("Referrer-Policy", "no-referrer"),
    ("Cache-Control", "no-store"),
)
_LINK_TEXT = {
    "malformed": ("リンクが壊れています", "This link is damaged",
                  "メールのリンク全体を開いてください。", "Open the whole link from the message."),
    "forged": ("無効なリンクです", "This link is not valid",
               "このリンクは当システムが発行したものではありません。", "This link was not issued by this system."),
    "expired": ("リンクの有効期限切れ", "This link has expired",
                "新しい通知のリンクを使うか、担当者に連絡してください。",
                "Use the link of a newer notification, or call the operator."),
}


def command_doc(action: str, key: str | None, by: str, via: str) -> dict[str, Any]:
    """The command document of ``action`` (the request id is added when it is sent)."""
    if action == "ack":
        return {"keys": [key], "by": by, "via": via}
    if action == "silence":
        return {"key": key, "by": by, "via": via}
    return {"by": by, "via": via}


@dataclass
class AckRecord:
    """Who confirmed, when (µs), with which request; ``expires_s`` is when the record may be forgotten."""

    by: str
    ts_us: int
    request_id: str | None
    expires_s: float


@dataclass(frozen=True)
class Refusal:
    """Why an action was not carried out: an HTTP status and the page's text."""

    status: int
    title: tuple[str, str]
    text: tuple[str, str]


class ConsoleService:
    """Everything ``denen console`` runs. ``start()`` / ``stop()``, or ``run()`` until ``request_stop()``."""

    def __init__(self, config: ConsoleConfig, *, clock: Any = time.time) -> None:
        self.config = config
        self._clock = clock
        self.signer = LinkSigner(config.links.secret(), clock=clock)
        self.states = StateBook()
        self.registry = (GatewayRegistry.load(config.gateways.file, unknown=config.gateways.unknown)
                         if config.gateways is not None else GatewayRegistry())
        self.audit = Audit(config.sink, self.registry)
        self.link = CommandLink(config.mqtt, config.commands, states=self.states, on_done=self._on_done)
        self._acks: dict[str, AckRecord] = {}
        self._lock = threading.Lock()
        self._badlog = RateLimitedLog(log)
        self._badlog_lock = threading.Lock()
        self._stop = threading.Event()
        self.grafana: GrafanaHook | None = None
        if config.hooks is not None and config.mail is not None:
            self.grafana = GrafanaHook(
                config.hooks.grafana_token(), url_for=lambda g, k: self.url_for(g, k),
                gateway_name=lambda g: (info.name if (info := self.registry.lookup(g)) else None),
                mailer=Mailer(config.mail), sender=config.mail.sender, to=config.mail.to,
                valid_h=config.links.ttl_s / 3600, bad=self.bad)
        self.http = ThreadingHTTPServer((config.http.listen_host, config.http.listen_port), _handler(self))
        self.http.daemon_threads = True
        self._http_thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        return int(self.http.server_address[1])

    # -- life cycle -------------------------------------------------------------------------------------------
    def start(self) -> None:
        self.audit.start()
        self.link.start()
        self._http_thread = threading.Thread(target=self.http.serve_forever, name="console-http", daemon=True)
        self._http_thread.start()
        log.info("%s", _("console: serving HTTP on {host}:{port}; links {url}/a/...").format(
            host=self.config.http.listen_host, port=self.port, url=self.config.http.public_url))

    def stop(self) -> None:
        self.http.shutdown()
        self.http.server_close()
        if self._http_thread is not None:
            self._http_thread.join(5)
        self.link.stop()
        self.audit.stop()

    def request_stop(self) -> None:
        self._stop.set()

    def run(self) -> None:
        self.start()
        try:
            self._stop.wait()
        finally:
            self.stop()

    # -- links ------------------------------------------------------------------------------------------------
    def url_for(self, gateway: str, key: str, *, ttl_s: float | None = None, recipient: str | None = None) -> str:
        """A signed link to the page of alert ``key`` of ``gateway``."""
        token = self.signer.sign(gateway, key, self.config.links.ttl_s if ttl_s is None else ttl_s,
                                 recipient=recipient)
        return f"{self.config.http.public_url}/a/{token}"

    def bad(self, reason: str, subject: str, text: LazyText) -> None:
        """A rate-limited warning (from any HTTP thread); ``text`` is looked up and formatted only when written."""
        with self._badlog_lock:
            self._badlog.warning(reason, subject, N_("requests"), "%s", text)

    # -- actions ----------------------------------------------------------------------------------------------
    def _replayed(self, link: Link, alert: AlertView | None) -> AckRecord | None:
        with self._lock:
            rec = self._acks.get(f"link:{link.gateway}:{link.nonce}")
            if rec is None and alert is not None:
                rec = self._acks.get(f"alert:{link.gateway}:{alert.id}")
        if rec is None and alert is not None and alert.acknowledged_by:
            rec = AckRecord(alert.acknowledged_by, 0, None, 0)
        return rec

    def _remember(self, link: Link, alert: AlertView, rec: AckRecord) -> None:
        with self._lock:
            now = self._clock()
            if len(self._acks) >= ACKS_MAX:
                for k in [k for k, v in self._acks.items() if v.expires_s < now]:
                    del self._acks[k]
            if len(self._acks) >= ACKS_MAX:  # all still valid: forget the oldest
                for k in list(self._acks)[: len(self._acks) // 10]:
                    del self._acks[k]
            self._acks[f"link:{link.gateway}:{link.nonce}"] = rec
            self._acks[f"alert:{link.gateway}:{alert.id}"] = rec

    def act(self, link: Link, action: str, by: str, from_ip: str) -> Pending | Refusal:
        """Carry out ``action`` (ack | silence | test) for a verified link: audit it and send its command, or say
        why not (then nothing is published)."""
        state = self.states.get(link.gateway)
        alert = state.alerts.get(link.key) if state is not None else None
        if action == "ack":
            rec = self._replayed(link, alert)
            if rec is not None:
                when = jst(rec.ts_us, self._clock()) if rec.ts_us else "-"
                log.info("%s", _("console: replayed confirm of {gateway} {key} by {by} from {ip}: already "
                                 "acknowledged by {acknowledged_by}").format(
                    gateway=link.gateway, key=link.key, by=by, ip=from_ip, acknowledged_by=rec.by))
                return Refusal(409, ("確認済み", "Already acknowledged"),
                               (f"{rec.by} が {when} に確認済みです。何も送信していません。",
                                f"Already acknowledged by {rec.by} at {when}. Nothing was sent."))
        if state is None:
            return Refusal(503, ("状態不明", "State not known yet"),
                           ("ゲートウェイの状態をまだ受信していません。しばらくして再度開いてください。何も送信していません。",
                            "The gateway's state has not arrived yet; open the link again in a minute. Nothing was "
                            "sent."))
        if alert is None:
            log.info("%s", _("console: {action} on {gateway} {key} by {by} from {ip} refused: the alert is not "
                             "open").format(action=action, gateway=link.gateway, key=link.key, by=by, ip=from_ip))
            return Refusal(409, ("警報は解除済み", "Alert no longer open"),
                           ("この警報は現在有効ではありません（解除済み）。何も送信していません。",
                            "This alert is not open any more (cleared). Nothing was sent."))
        request_id = new_request_id()
        record = Action(action=action, gateway=link.gateway, by=by, from_ip=from_ip, request_id=request_id,
                        ts_us=now_us(), type=alert.type, node=alert.node or link.gateway, alert_id=alert.id,
                        since_us=alert.since_us)
        if action == "ack":
            self._remember(link, alert, AckRecord(by, record.ts_us, request_id, link.expires_s))
        self.audit.record(record)
        pending = self.link.submit(link.gateway, ACTION_COMMANDS[action],
                                   command_doc(action, link.key, by, "console"), request_id=request_id,
                                   context={"action": record, "by": by})
        if action in ("ack", "silence"):
            self._fan_out(link, action, by, from_ip, alert.id)
        return pending

    def _fan_out(self, link: Link, action: str, by: str, from_ip: str, alert_id: str) -> None:
        """The same node's alert, raised by other gateways that heard the same event (overlapping valleys), is
        confirmed or silenced with it: one person's confirmation stops every siren sounding for it. Each command
        is audited on its own, naming the alert the person confirmed."""
        for gateway in self.states.holding(link.key, besides=link.gateway):
            state = self.states.get(gateway)
            alert = state.alerts.get(link.key) if state is not None else None
            if alert is None:
                continue
            request_id = new_request_id()
            record = Action(action=action, gateway=gateway, by=by, from_ip=from_ip, request_id=request_id,
                            ts_us=now_us(), type=alert.type, node=alert.node or gateway, alert_id=alert.id,
                            since_us=alert.since_us)
            log.info("%s", _("console: {action} of {key} on {gateway} by {by} also sent to {other}, which holds "
                             "the same alert ({alert})").format(action=action, key=link.key, gateway=link.gateway,
                                                                by=by, other=gateway, alert=alert_id))
            self.audit.record(record)
            self.link.submit(gateway, ACTION_COMMANDS[action], command_doc(action, link.key, by, "console"),
                             request_id=request_id, context={"action": record, "by": by})

    def _on_done(self, item: Pending) -> None:
        record = item.context.get("action")
        if isinstance(record, Action):
            result = ",".join(o for _target, o in item.result.results) if item.result is not None else "timeout"
            self.audit.record_result(record, result)


def _handler(service: ConsoleService) -> type[BaseHTTPRequestHandler]:
    class Handler(_ConsoleHandler):
        console = service

    return Handler


class _ConsoleHandler(BaseHTTPRequestHandler):
    console: ConsoleService
    server_version = "denen-console"
    sys_version = ""
    protocol_version = "HTTP/1.1"
    # A client that stops sending holds a thread at most this long (seconds).
    timeout = 15

    # -- plumbing ---------------------------------------------------------------------------------------------
    def log_message(self, format: str, *args: Any) -> None:
        # The default writes to stderr with the full path; the path holds a token, which is shortened here.
        log.debug("http %s %s", self.client_ip(), _redact(format % args))

    def client_ip(self) -> str:
        peer = self.client_address[0] if self.client_address else "-"
        if self.console.config.http.is_trusted_proxy(peer):
            forwarded = self.headers.get("X-Forwarded-For", "")
            last = forwarded.split(",")[-1].strip()
            if last and len(last) <= 64 and re.match(r"^[0-9A-Fa-f:.]+$", last):
                return last
        return peer

    def _send(self, status: int, body: bytes, *, content_type: str = "text/html; charset=utf-8",
              headers: tuple[tuple[str, str], ...] = ()) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for name, value in _SECURITY_HEADERS + headers:
            self.send_header(name, value)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _message(self, status: int, title: tuple[str, str], text: tuple[str, str], kind: str = "info") -> None:
        self._send(status, message_page(title[0], title[1], text[0], text[1], kind=kind))

    def _guard(self, route: Any) -> None:
        try:
            route()
        except (BrokenPipeError, ConnectionResetError, socket.timeout):
            pass
        except Exception:  # noqa: BLE001 - a bug answers 500, never a traceback to the person, never a crash
            log.exception("%s", _("console: {method} {path} failed").format(method=self.command,
                                                                            path=_redact(self.path)))
            try:
                self._message(500, ("内部エラー", "Internal error"),
                              ("処理できませんでした。担当者に連絡してください。",
                               "The request could not be handled. Call the operator."))
            except OSError:
                pass

    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        self._guard(self._get)

    def do_HEAD(self) -> None:  # noqa: N802
        self._guard(self._get)

    def do_POST(self) -> None:  # noqa: N802
        self._guard(self._post)

    def _not_found(self) -> None:
        self._message(404, ("ページがありません", "Not found"), ("URLを確認してください。", "Check the address."))

    def _verify(self, token: str) -> Link | None:
        try:
            return self.console.signer.verify(token)
        except LinkError as exc:
            self.console.bad(f"link_{exc.code}", self.client_ip(), LazyText(
                N_("console: {code} link from {ip}: {detail}"), code=exc.code, ip=self.client_ip(), detail=exc.detail))
            ja, en, tja, ten = _LINK_TEXT[exc.code]
            self._message(exc.status, (ja, en), (tja, ten), kind="bad")
            return None

    # -- routes -----------------------------------------------------------------------------------------------
    def _get(self) -> None:
        path = urlsplit(self.path).path
        if path == "/healthz":
            ok = self.console.link.wait_ready(0)
            self._send(200 if ok else 503, b"ok\n" if ok else b"no broker\n", content_type="text/plain")
        elif path.startswith("/a/"):
            self._alert(path[3:])
        elif path.startswith("/r/") and _REQUEST_ID_RE.match(path[3:]):
            self._result(path[3:])
        else:
            self._not_found()

    def _alert(self, token: str) -> None:
        link = self._verify(token)
        if link is None:
            return
        console = self.console
        state = console.states.get(link.gateway)
        if state is None:
            self._message(503, ("状態不明", "State not known yet"),
                          ("ゲートウェイの状態をまだ受信していません。しばらくして再度開いてください。",
                           "The gateway's state has not arrived yet; open the link again in a minute."))
            return
        alert = state.alerts.get(link.key)
        if alert is None:
            rec = console._replayed(link, None)
            if rec is not None:
                self._message(200, ("確認済み", "Already acknowledged"),
                              (f"{rec.by} が {jst(rec.ts_us)} に確認し、警報は解除されました。",
                               f"Acknowledged by {rec.by} at {jst(rec.ts_us)}; the alert has cleared since."), "ok")
                return
            self._message(200, ("警報は解除済み", "Alert no longer open"),
                          ("この警報は現在有効ではありません（解除済み）。", "This alert is not open any more (cleared)."))
            return
        info = console.registry.lookup(link.gateway)
        self._send(200, alert_page(state, alert, gateway_name=info.name if info else None,
                                   csrf=console.signer.csrf(link.token), default_by=link.recipient))

    def _result(self, request_id: str) -> None:
        item = self.console.link.get(request_id)
        if item is None:
            self._not_found()
            return
        self._send(200, result_page(item.command, item.gateway, outcome=item.outcome, result=item.result,
                                    sends=item.sends, by=item.context.get("by")))

    def _json(self, status: int, doc: dict[str, Any], headers: tuple[tuple[str, str], ...] = ()) -> None:
        self._send(status, json.dumps(doc, separators=(",", ":")).encode() + b"\n",
                   content_type="application/json", headers=headers)

    def _grafana(self) -> None:
        hook = self.console.grafana
        if hook is None:
            self._json(404, {"error": "not_found", "detail": "no hooks section in the console's config"})
            return
        peer = self.client_ip()
        if not hook.authorized(self.headers.get("Authorization")):
            hook.count("unauthorized")
            self.console.bad("hook_unauthorized", peer, LazyText(
                N_("console: grafana hook from {ip}: token missing or wrong"), ip=peer))
            self.close_connection = True  # the body is not read
            self._json(401, {"error": "unauthorized", "detail": "Authorization: Bearer <token> missing or wrong"},
                       headers=(("WWW-Authenticate", 'Bearer realm="denen-console"'),))
            return
        length = self.headers.get("Content-Length")
        if length is None or not length.isdigit():
            hook.count("no_length")
            self.close_connection = True
            self._json(411, {"error": "no_length", "detail": "Content-Length is missing"})
            return
        limit = self.console.config.hooks.max_body_bytes if self.console.config.hooks else 0
        if int(length) > limit:
            hook.count("too_large")
            self.console.bad("hook_too_large", peer, LazyText(
                N_("console: grafana hook from {ip}: body of {size} bytes refused (limit {limit})"), ip=peer,
                size=length[:20], limit=limit))
            self.close_connection = True
            self._json(413, {"error": "too_large", "detail": f"the body is larger than {limit} bytes"})
            return
        body = self.rfile.read(int(length))
        status, answer = hook.handle(body, peer)
        self._json(status, answer, headers=(("Retry-After", "60"),) if status == 503 else ())

    def _post(self) -> None:
        path = urlsplit(self.path).path
        if path == "/hooks/grafana":
            self._grafana()
            return
        if not path.startswith("/a/"):
            self._not_found()
            return
        length = self.headers.get("Content-Length")
        if length is None or not length.isdigit():
            self._message(411, ("不正な要求", "Bad request"), ("長さがありません。", "Content-Length is missing."))
            return
        if int(length) > FORM_MAX_BYTES:
            self.close_connection = True
            self._message(413, ("不正な要求", "Bad request"), ("フォームが大きすぎます。", "The form is too large."))
            return
        body = self.rfile.read(int(length))
        link = self._verify(path[3:])
        if link is None:
            return
        try:
            form = parse_qs(body.decode("utf-8"), keep_blank_values=True, max_num_fields=10)
        except (UnicodeDecodeError, ValueError):
            form = {}
        csrf, action, by = (form.get(k, [""])[0] for k in ("csrf", "action", "by"))
        console = self.console
        if not console.signer.check_csrf(link.token, csrf):
            console.bad("csrf", self.client_ip(), LazyText(N_("console: form token wrong for {gateway} {key} from "
                                                              "{ip}"), gateway=link.gateway, key=link.key,
                                                           ip=self.client_ip()))
            self._message(403, ("フォームが無効です", "Form not valid"),
                          ("リンクを開き直してから操作してください。何も送信していません。",
                           "Open the link again, then use the buttons. Nothing was sent."), "bad")
            return
        if action not in ACTION_COMMANDS:
            self._message(400, ("不正な要求", "Bad request"), ("操作が不明です。", "Unknown action."), "bad")
            return
        who = clean_by(by) if by.strip() else link.recipient
        if who is None:
            self._message(400, ("お名前が必要です", "Your name is needed"),
                          ("お名前（100文字以内）を入力してください。何も送信していません。",
                           "Type your name (up to 100 characters). Nothing was sent."), "bad")
            return
        outcome = console.act(link, action, who, self.client_ip())
        if isinstance(outcome, Refusal):
            self._message(outcome.status, outcome.title, outcome.text)
            return
        self._send(303, b"", headers=(("Location", f"{console.config.http.public_url}/r/{outcome.request_id}"),))


def _redact(text: str) -> str:
    """Log text with link tokens cut to their first 8 characters (a whole token in a log is a usable link)."""
    return re.sub(r"(/a/[A-Za-z0-9_-]{8})[A-Za-z0-9_.-]*", r"\1...", text)
