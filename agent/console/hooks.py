"""``POST /hooks/grafana``: Grafana's webhook contact point, answered by mailing a signed link per firing alert.

Grafana cannot sign a link, so its webhook contact point posts here (``Authorization: Bearer <token>``, the token of
``hooks.grafana_token_file``) and the console mails, for each firing alert whose labels name ``gateway``, ``node``
and ``type``, a message in Japanese and English with the alert's summary and a link to the page of key
``<type>:<node>`` (:mod:`agent.console.links`). Resolved alerts are not mailed: the e-mail contact point already
says so, and a link to a cleared alert has nothing left to do. An alert without those three labels (a rule about
the whole stack) is skipped: it has no page.

Answers (JSON ``{"mailed": n, "resolved": n, "skipped": n, "bad": [...]}`` or ``{"error": ...}``); each refusal is
counted (:attr:`GrafanaHook.counts`) and logged rate-limited:

====================================  =====  ==================================================================
no ``hooks:`` in the config           404
token missing or wrong                401    compared with :func:`hmac.compare_digest`; the body is not read
no Content-Length                     411
body larger than ``max_body_bytes``   413    not read
not JSON, not Grafana's format        400    (``alerts`` a list of objects with ``status`` and string labels)
labels that are not a gateway id,     422    after mailing the alerts of the same body that are valid (Grafana
node or type                                 does not retry a 4xx, so they are not mailed twice)
SMTP server down or refusing          503    Grafana retries the whole body later; mails already sent by this
                                             request may then go out twice (twice beats never)
====================================  =====  ==================================================================
"""

from __future__ import annotations

import hmac
import json
import logging
import re
import smtplib
import ssl
import threading
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from email.message import EmailMessage
from email.utils import formatdate, make_msgid
from typing import Any

from agent.console.config import MailConfig
from agent.console.links import GATEWAY_RE, KEY_RE
from agent.errors import AgentError
from agent.i18n import N_, LazyText, _

__all__ = ["GrafanaHook", "HookAlert", "HookError", "MailError", "Mailer", "compose_mail", "parse_grafana"]

log = logging.getLogger("denen.console")

#: Label values that make a key: a type is a rule's name, a node a node id (or a gateway's own name for its own
#: conditions); neither may hold ':' (the key's separator).
TYPE_RE = re.compile(r"^[A-Za-z0-9_]{1,64}$")
NODE_RE = re.compile(r"^[A-Za-z0-9_.-]{1,63}$")
#: Longest annotation text put in a mail, in characters.
TEXT_MAX = 1000
_CONTROL_RE = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\ud800-\udfff]")


class HookError(AgentError):
    """A webhook request refused: ``status`` (4xx) and ``code`` (the counter's name)."""

    def __init__(self, status: int, code: str, detail: str) -> None:
        self.status = status
        self.code = code
        self.detail = detail
        super().__init__(f"{code}: {detail}")


class MailError(AgentError):
    """The SMTP server could not take the mail (down, refusing, TLS or login failed)."""


@dataclass(frozen=True, slots=True)
class HookAlert:
    """One firing alert of a Grafana notification that can be mailed."""

    gateway: str
    node: str
    type: str
    summary: str
    description: str
    starts_at: str

    @property
    def key(self) -> str:
        return f"{self.type}:{self.node}"


def _text(value: object, limit: int = TEXT_MAX) -> str:
    """An annotation as mail text: a string without control characters (newlines kept), at most ``limit``."""
    if not isinstance(value, str):
        return ""
    text = _CONTROL_RE.sub("", value).strip()
    return text if len(text) <= limit else text[: limit - 1] + "…"


def parse_grafana(body: bytes) -> tuple[list[HookAlert], int, int, list[str]]:
    """Grafana's webhook body: (firing alerts to mail, resolved count, skipped count, bad label descriptions).

    Raises:
        HookError: 400 when the body is not JSON or not Grafana's format.
    """
    try:
        doc = json.loads(body.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise HookError(400, "bad_json", "the body is not UTF-8 JSON") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("alerts"), list):
        raise HookError(400, "bad_format", "not a Grafana notification (no alerts list)")
    alerts: list[HookAlert] = []
    resolved = skipped = 0
    bad: list[str] = []
    for i, item in enumerate(doc["alerts"]):
        if not isinstance(item, dict) or item.get("status") not in ("firing", "resolved"):
            raise HookError(400, "bad_format", f"alerts[{i}] is not an alert with status firing or resolved")
        labels = item.get("labels", {})
        annotations = item.get("annotations", {})
        if not isinstance(labels, dict) or not all(isinstance(v, str) for v in labels.values()) \
                or not isinstance(annotations, dict):
            raise HookError(400, "bad_format", f"alerts[{i}]: labels or annotations are not string maps")
        if item["status"] == "resolved":
            resolved += 1
            continue
        names = ("gateway", "node", "type")
        if not all(n in labels for n in names):
            skipped += 1
            continue
        gateway, node, kind = (labels[n] for n in names)
        problems = [f"{n} {v!r}"[:80] for n, v, pattern in (("gateway", gateway, GATEWAY_RE), ("node", node, NODE_RE),
                                                            ("type", kind, TYPE_RE)) if not pattern.match(v)]
        if problems or not KEY_RE.match(f"{kind}:{node}"):
            bad.append(f"alerts[{i}]: not a valid " + (", ".join(problems) or "key"))
            continue
        alerts.append(HookAlert(gateway, node, kind, _text(annotations.get("summary"), 300),
                                _text(annotations.get("description")), _text(item.get("startsAt"), 40)))
    return alerts, resolved, skipped, bad


def compose_mail(alert: HookAlert, url: str, *, gateway_name: str | None, sender: str, to: list[str],
                 valid_h: float) -> EmailMessage:
    """The mail of one firing alert: Japanese, then English, with its link (valid ``valid_h`` hours)."""
    where = f"{gateway_name} ({alert.gateway})" if gateway_name else alert.gateway
    summary = alert.summary or f"{alert.type} {alert.node}"
    subject = _text(f"[denen] {summary} / {where}", 200).replace("\n", " ")
    lines = [
        "警報が発生しています。下のリンクを開き、確認（通知の停止）またはサイレン停止を行ってください。",
        "",
        f"概要: {summary}",
        f"ゲートウェイ: {where}",
        f"ノード: {alert.node}   種別: {alert.type}",
        f"発生: {alert.starts_at or '-'}",
    ]
    if alert.description:
        lines += [f"詳細: {alert.description}"]
    lines += [
        "",
        f"確認リンク（{valid_h:g} 時間有効）:",
        url,
        "",
        "-- English --",
        "An alert is open. Open the link to acknowledge it (stop the repeats) or silence the siren.",
        "",
        f"Summary: {summary}",
        f"Gateway: {where}",
        f"Node: {alert.node}   Type: {alert.type}",
        f"Since: {alert.starts_at or '-'}",
        "",
        f"Link (valid {valid_h:g} h):",
        url,
        "",
        "このリンクは転送しないでください。 / Do not forward this link: anyone holding it can acknowledge the alert.",
    ]
    msg = EmailMessage()
    msg["Subject"] = subject
    msg["From"] = sender
    msg["To"] = ", ".join(to)
    msg["Date"] = formatdate(localtime=False)
    msg["Message-ID"] = make_msgid(domain=sender.rpartition("@")[2])
    msg["Auto-Submitted"] = "auto-generated"
    msg.set_content("\n".join(lines) + "\n", charset="utf-8")
    return msg


class Mailer:
    """Sends mails through ``mail:``, one SMTP connection per batch."""

    def __init__(self, config: MailConfig) -> None:
        self.config = config

    def send(self, messages: list[EmailMessage]) -> None:
        """Send ``messages`` in one SMTP session.

        Raises:
            MailError: the server is down, refuses the login or every recipient, or TLS fails.
        """
        cfg = self.config
        try:
            if cfg.tls == "ssl":
                smtp: smtplib.SMTP = smtplib.SMTP_SSL(cfg.host, cfg.port, timeout=cfg.timeout_s,
                                                      context=ssl.create_default_context())
            else:
                smtp = smtplib.SMTP(cfg.host, cfg.port, timeout=cfg.timeout_s)
            with smtp:
                if cfg.tls == "starttls":
                    smtp.starttls(context=ssl.create_default_context())
                if cfg.username is not None:
                    smtp.login(cfg.username, cfg.password_value() or "")
                for msg in messages:
                    smtp.send_message(msg, from_addr=cfg.sender, to_addrs=cfg.to)
        except (OSError, smtplib.SMTPException) as exc:
            raise MailError(f"{type(exc).__name__}: {exc}"[:300]) from None


class GrafanaHook:
    """The handling of one ``POST /hooks/grafana`` body, apart from HTTP.

    Args:
        token: Grafana's bearer token.
        url_for: makes the signed link of (gateway, key).
        gateway_name: the registry's name of a gateway, or None.
        mailer: sends the mails.
        sender, to: the mails' From and To.
        valid_h: how long a link is valid, in hours (said in the mail).
        bad: rate-limited warning ``(reason, subject, text)`` of a :class:`~agent.i18n.LazyText`.
    """

    def __init__(self, token: bytes, *, url_for: Callable[[str, str], str],
                 gateway_name: Callable[[str], str | None], mailer: Mailer, sender: str, to: list[str],
                 valid_h: float, bad: Callable[..., None]) -> None:
        self._token = token
        self._url_for = url_for
        self._gateway_name = gateway_name
        self._mailer = mailer
        self._sender = sender
        self._to = to
        self._valid_h = valid_h
        self._bad = bad
        self._lock = threading.Lock()
        #: Requests and alerts by outcome (``mailed``, ``resolved``, ``skipped``, ``bad_labels``, ``unauthorized``,
        #: ``too_large``, ``bad_json``, ``bad_format``, ``smtp_down``, ...), since start.
        self.counts: Counter[str] = Counter()

    def count(self, name: str, n: int = 1) -> None:
        with self._lock:
            self.counts[name] += n

    def authorized(self, header: str | None) -> bool:
        """Whether ``Authorization`` header ``header`` carries the token."""
        scheme, _space, value = (header or "").partition(" ")
        return hmac.compare_digest(value.strip().encode("utf-8", "replace") if scheme.lower() == "bearer" else b"",
                                   self._token)

    def handle(self, body: bytes, peer: str) -> tuple[int, dict[str, Any]]:
        """Mail the links of ``body``'s firing alerts: (HTTP status, JSON answer)."""
        try:
            alerts, resolved, skipped, bad = parse_grafana(body)
        except HookError as exc:
            self.count(exc.code)
            self._bad(exc.code, peer, LazyText(N_("console: grafana hook from {ip} refused: {detail}"), ip=peer,
                                              detail=exc.detail))
            return exc.status, {"error": exc.code, "detail": exc.detail}
        messages = [compose_mail(a, self._url_for(a.gateway, a.key), gateway_name=self._gateway_name(a.gateway),
                                 sender=self._sender, to=self._to, valid_h=self._valid_h) for a in alerts]
        if messages:
            try:
                self._mailer.send(messages)
            except MailError as exc:
                self.count("smtp_down")
                self._bad("smtp_down", self._mailer.config.host, LazyText(
                    N_("console: grafana hook: cannot mail {count} link(s) through {host}:{port} (Grafana will "
                       "retry): {error}"), count=len(messages), host=self._mailer.config.host,
                    port=self._mailer.config.port, error=exc))
                return 503, {"error": "smtp_down", "detail": "the mail server cannot be reached; retry later"}
        for a in alerts:
            # Not the link itself: a whole token in a log is a usable link.
            log.info("%s", _("console: mailed the link of {gateway} {key} to {to}").format(
                gateway=a.gateway, key=a.key, to=", ".join(self._to)))
        self.count("mailed", len(alerts))
        self.count("resolved", resolved)
        self.count("skipped", skipped)
        answer = {"mailed": len(alerts), "resolved": resolved, "skipped": skipped, "bad": bad}
        if bad:
            self.count("bad_labels", len(bad))
            self._bad("bad_labels", peer, LazyText(
                N_("console: grafana hook from {ip}: {count} alert(s) with labels that make no link: {labels}"),
                ip=peer, count=len(bad), labels="; ".join(bad)[:500]))
            return 422, answer
        return 200, answer
