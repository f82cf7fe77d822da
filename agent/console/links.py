"""Signed acknowledgement links: ``<public_url>/a/<token>``.

Token format (URL-safe, no padding, no other characters)::

    token   = base64url(payload) "." base64url(HMAC-SHA256(secret, "denen.link/1." + base64url(payload)))
    payload = compact JSON {"g": gateway id, "k": alert key, "e": expiry (epoch s, int), "n": nonce,
                            "r": recipient (optional: who the link was sent to, the form's default name)}

The MAC covers the payload's base64 text exactly as sent, so no JSON canonicalisation is involved, and a domain
prefix keeps it apart from the per-page form token (:meth:`LinkSigner.csrf`, ``"denen.csrf/1." + token``): one
can never be used as the other. Checks, in this order, each with its own answer:

==============  =====  ======================================================================================
``malformed``   400    not two base64url parts, longer than :data:`TOKEN_MAX`, a MAC that is not 32 bytes
``forged``      403    the MAC is not spelled canonically (base64 ignores two bits of its last character), or
                       does not match (any bit changed, another secret): compared with :func:`hmac.compare_digest`
``malformed``   400    a correctly signed payload that is not the JSON above (only the holder of the secret
                       can make one: a bug, not an attack)
``expired``     403    ``e`` is in the past
==============  =====  ======================================================================================
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import re
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass

from agent.errors import AgentError
from agent.i18n import _

__all__ = ["GATEWAY_RE", "KEY_RE", "Link", "LinkError", "LinkSigner", "TOKEN_MAX", "clean_by"]

#: Gateway ids (the registry's and the broker's pattern).
GATEWAY_RE = re.compile(r"^[a-z0-9][a-z0-9_-]{0,62}$")
#: Alert keys as the edge rules make them: ``<type>:<node>``, ``module_lost:<radio>``, ``journal_near_quota``.
KEY_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.:-]{0,127}$")
#: Longest token accepted, in characters (a real one is about 200).
TOKEN_MAX = 1024
#: Longest ``by`` (who), in characters, as the command contract allows.
BY_MAX = 100

_B64_RE = re.compile(r"^[A-Za-z0-9_-]+$")
_LINK_DOMAIN = b"denen.link/1."
_CSRF_DOMAIN = b"denen.csrf/1."
# Unicode category Cc and lone surrogates.
_BAD_TEXT_RE = re.compile("[\x00-\x1f\x7f-\x9f\ud800-\udfff]")


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def clean_by(value: str) -> str | None:
    """``value`` as a ``by`` (who): stripped, 1..100 characters, no control characters; None when it is not one."""
    value = value.strip()
    if not value or len(value) > BY_MAX or _BAD_TEXT_RE.search(value):
        return None
    return value


class LinkError(AgentError):
    """A link that cannot be used.

    Attributes:
        code: ``malformed``, ``forged`` or ``expired``.
        status: the HTTP status to answer (400 or 403).
    """

    def __init__(self, code: str, status: int, detail: str) -> None:
        self.code = code
        self.status = status
        self.detail = detail
        super().__init__(f"{code}: {detail}")


@dataclass(frozen=True, slots=True)
class Link:
    """A verified link."""

    gateway: str
    key: str
    expires_s: int
    nonce: str
    recipient: str | None
    token: str


class LinkSigner:
    """Makes and checks links with one secret.

    Args:
        secret: the link secret (at least 32 bytes; checked by the config).
        clock: wall-clock seconds since the epoch (tests pass their own).
    """

    def __init__(self, secret: bytes, *, clock: Callable[[], float] = time.time) -> None:
        if len(secret) < 32:
            raise ValueError("the link secret must be at least 32 bytes")
        self._secret = secret
        self._clock = clock

    def _mac(self, domain: bytes, text: str) -> bytes:
        return hmac.new(self._secret, domain + text.encode("ascii"), hashlib.sha256).digest()

    def sign(self, gateway: str, key: str, ttl_s: float, *, recipient: str | None = None) -> str:
        """A token for alert ``key`` of ``gateway``, valid for ``ttl_s`` seconds from now.

        Raises:
            ValueError: a gateway id, key or recipient that a link cannot carry.
        """
        if not GATEWAY_RE.match(gateway):
            raise ValueError(_("'{gateway}' is not a gateway id (lower-case letters, digits, '_' and '-')").format(
                gateway=gateway))
        if not KEY_RE.match(key):
            raise ValueError(_("'{key}' is not an alert key (<type>:<node>, e.g. sos:00a1b2c3)").format(key=key))
        doc: dict[str, object] = {"g": gateway, "k": key, "e": int(self._clock() + ttl_s),
                                  "n": secrets.token_urlsafe(12)}
        if recipient is not None:
            cleaned = clean_by(recipient)
            if cleaned is None:
                raise ValueError(_("a recipient is 1..{max} characters without control characters").format(
                    max=BY_MAX))
            doc["r"] = cleaned
        payload = _b64(json.dumps(doc, separators=(",", ":"), ensure_ascii=False).encode())
        return f"{payload}.{_b64(self._mac(_LINK_DOMAIN, payload))}"

    def verify(self, token: str) -> Link:
        """The link ``token`` stands for.

        Raises:
            LinkError: malformed (400), forged (403) or expired (403).
        """
        if len(token) > TOKEN_MAX:
            raise LinkError("malformed", 400, f"token longer than {TOKEN_MAX} characters")
        parts = token.split(".")
        if len(parts) != 2 or not all(_B64_RE.match(p) for p in parts):
            raise LinkError("malformed", 400, "not <payload>.<signature> in base64url")
        payload, sig_text = parts
        try:
            sig = _unb64(sig_text)
        except (binascii.Error, ValueError):
            raise LinkError("malformed", 400, "signature is not base64url") from None
        if len(sig) != hashlib.sha256().digest_size:
            raise LinkError("malformed", 400, "signature is not 32 bytes")
        if _b64(sig) != sig_text:
            # Its last character has two bits base64 ignores: only the canonical spelling is a link, so no changed
            # bit of a token is ever accepted.
            raise LinkError("forged", 403, "signature is not in canonical base64url")
        if not hmac.compare_digest(sig, self._mac(_LINK_DOMAIN, payload)):
            raise LinkError("forged", 403, "signature does not match")
        try:
            doc = json.loads(_unb64(payload).decode("utf-8"))
        except (binascii.Error, ValueError, UnicodeDecodeError):
            raise LinkError("malformed", 400, "payload is not UTF-8 JSON") from None
        if not isinstance(doc, dict):
            raise LinkError("malformed", 400, "payload is not an object")
        gateway, key, expires, nonce, recipient = (doc.get(k) for k in ("g", "k", "e", "n", "r"))
        if not (isinstance(gateway, str) and GATEWAY_RE.match(gateway) and isinstance(key, str)
                and KEY_RE.match(key) and isinstance(expires, int) and not isinstance(expires, bool)
                and isinstance(nonce, str) and 0 < len(nonce) <= 64
                and (recipient is None or (isinstance(recipient, str) and clean_by(recipient) == recipient))):
            raise LinkError("malformed", 400, "payload fields are not a gateway, key, expiry and nonce")
        if expires <= self._clock():
            raise LinkError("expired", 403, f"expired at {expires}")
        return Link(gateway, key, expires, nonce, recipient, token)

    def csrf(self, token: str) -> str:
        """The form token of the page of ``token``: bound to that link, useless with any other."""
        return _b64(self._mac(_CSRF_DOMAIN, token))

    def check_csrf(self, token: str, value: str) -> bool:
        """Whether ``value`` is the form token of ``token``'s page."""
        return hmac.compare_digest(value.encode("utf-8", "replace"), self.csrf(token).encode("ascii"))
