"""Signed links: what verifies, and every way a link is refused (unit tests: no server needed)."""

from __future__ import annotations

import base64
import json

import pytest

from agent.console.links import TOKEN_MAX, LinkError, LinkSigner, clean_by

SECRET = b"s" * 32
NOW = 1_800_000_000.0


def signer(secret: bytes = SECRET, now: float = NOW) -> LinkSigner:
    return LinkSigner(secret, clock=lambda: now)


def test_round_trip_carries_gateway_key_expiry_and_recipient() -> None:
    token = signer().sign("gw-a", "sos:00a1b2c3", 3600, recipient="山田 太郎")
    link = signer(now=NOW + 3599).verify(token)
    assert (link.gateway, link.key, link.expires_s, link.recipient) == ("gw-a", "sos:00a1b2c3", NOW + 3600,
                                                                       "山田 太郎")
    assert set(token) <= set("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_.")
    # Every link has its own nonce, so two links to one alert are told apart (replay is per link).
    assert signer().verify(signer().sign("gw-a", "sos:00a1b2c3", 60)).nonce != link.nonce


def test_expired_at_its_expiry_second() -> None:
    token = signer().sign("gw-a", "sos:00a1b2c3", 60)
    with pytest.raises(LinkError) as exc:
        signer(now=NOW + 60).verify(token)
    assert (exc.value.code, exc.value.status) == ("expired", 403)


def test_every_flipped_bit_is_refused() -> None:
    token = signer().sign("gw-a", "sos:00a1b2c3", 3600)
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    seen = set()
    for i, ch in enumerate(token):
        if ch == ".":
            continue
        # The base64url character whose value differs in its lowest bit: one bit of the token changed.
        other = alphabet[alphabet.index(ch) ^ 1]
        forged = token[:i] + other + token[i + 1:]
        with pytest.raises(LinkError) as exc:
            signer().verify(forged)
        seen.add(exc.value.code)
        assert exc.value.status in (400, 403)
    # Including the two bits base64 ignores in the signature's last character: only the canonical spelling verifies.
    assert seen == {"forged"} or seen == {"forged", "malformed"}


def test_other_secret_and_edited_payload_are_forged() -> None:
    token = signer().sign("gw-a", "sos:00a1b2c3", 3600)
    with pytest.raises(LinkError) as exc:
        signer(secret=b"t" * 32).verify(token)
    assert exc.value.code == "forged"
    payload, sig = token.split(".")
    doc = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    doc["g"] = "gw-b"  # the same link aimed at another gateway
    edited = base64.urlsafe_b64encode(json.dumps(doc, separators=(",", ":")).encode()).rstrip(b"=").decode()
    with pytest.raises(LinkError) as exc:
        signer().verify(f"{edited}.{sig}")
    assert (exc.value.code, exc.value.status) == ("forged", 403)


@pytest.mark.parametrize("token", ["", "abc", "a.b.c", "a..b", "abc.", ".abc", "a b.c", "äö.x", "ab=.cd",
                                   "x" * (TOKEN_MAX + 1), "eyJ9.AAAA"])
def test_malformed(token: str) -> None:
    with pytest.raises(LinkError) as exc:
        signer().verify(token)
    assert (exc.value.code, exc.value.status) == ("malformed", 400)


def test_signed_but_not_our_payload_is_malformed_not_a_crash() -> None:
    s = signer()
    for doc in (b"[]", b"not json", b'{"g":"GW A","k":"sos:1","e":1900000000,"n":"x"}',
                b'{"g":"gw-a","k":"sos:1","e":true,"n":"x"}', b'{"g":"gw-a","k":"sos:1","e":1900000000,"n":"x",'
                                                             b'"r":"a\\u0000b"}'):
        payload = base64.urlsafe_b64encode(doc).rstrip(b"=").decode()
        token = f"{payload}.{base64.urlsafe_b64encode(s._mac(b'denen.link/1.', payload)).rstrip(b'=').decode()}"
        with pytest.raises(LinkError) as exc:
            s.verify(token)
        assert exc.value.code == "malformed"


def test_form_token_is_bound_to_its_link() -> None:
    s = signer()
    a, b = s.sign("gw-a", "sos:00a1b2c3", 3600), s.sign("gw-a", "sos:00a1b2c3", 3600)
    assert s.check_csrf(a, s.csrf(a))
    assert not s.check_csrf(b, s.csrf(a))
    assert not s.check_csrf(a, "")
    assert not s.check_csrf(a, "ü" * 43)
    assert not signer(secret=b"t" * 32).check_csrf(a, s.csrf(a))


def test_sign_refuses_what_a_link_cannot_carry() -> None:
    for gateway, key, to in (("GW", "sos:1", None), ("gw-a", "sos 1", None), ("gw-a", "sos:1", "a\nb"),
                             ("gw-a", "sos:1", "x" * 101)):
        with pytest.raises(ValueError):
            signer().sign(gateway, key, 60, recipient=to)
    with pytest.raises(ValueError):
        LinkSigner(b"short")


def test_clean_by() -> None:
    assert clean_by("  山田  ") == "山田"
    assert clean_by("") is None and clean_by("   ") is None
    assert clean_by("a\tb") is None and clean_by("a\u202ab") == "a\u202ab"  # Cc only: bidi marks are Cf
    assert clean_by("x" * 100) == "x" * 100 and clean_by("x" * 101) is None
