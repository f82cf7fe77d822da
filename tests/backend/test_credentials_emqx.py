"""The clustered path's EMQX gets what the shipped Mosquitto gets: the same logins from make-credentials.sh, and
access rules (deploy/backend/cluster/emqx/acl.conf) that decide as the shipped Mosquitto decides.

No EMQX runs here (no Docker engine), so acl.conf is evaluated by :func:`emqx_decides`, which follows EMQX 5's file
authorization (emqx_authz_rule: first match wins, ``{eq, T}`` compares the filter literally and fills in no
placeholder, a plain topic is a pattern with ``${username}`` filled in, the ``$share/<group>/`` prefix is stripped
before the check, ``no_match = deny``). Its answers are compared with the real shipped Mosquitto's SUBACK and PUBACK
codes for every login kind and every topic the agent, the bridge and the console use, and their neighbours.
"""

from __future__ import annotations

import csv
import re
import stat
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.shipped_broker import (
    Mqtt,
    ShippedBroker,
    copy_backend,
    make_credentials,
    password,
)

REPO = Path(__file__).resolve().parents[2]
EMQX = REPO / "deploy" / "backend" / "cluster" / "emqx"
GATEWAYS = ("gw-a", "gw-b")
LOGINS = (*GATEWAYS, "denen-bridge-1", "denen-console", "denen-console-cli", "denen-consumer-1", "denen-consumer-2")


def users_csv(backend: Path) -> dict[str, dict[str, str]]:
    with (backend / "secrets" / "emqx" / "users.csv").open(newline="") as f:
        return {row["user_id"]: row for row in csv.DictReader(f)}


def passwd_users(backend: Path) -> set[str]:
    text = (backend / "secrets" / "mosquitto" / "passwd").read_text()
    return {line.split(":", 1)[0] for line in text.splitlines() if line}


@pytest.fixture(scope="module")
def backend(tmp_path_factory: pytest.TempPathFactory) -> Path:
    made = copy_backend(tmp_path_factory.mktemp("backend"))
    proc = make_credentials(made, "-n", "mqtt.example.jp", "-b", "2", "-c", "2", *GATEWAYS)
    assert proc.returncode == 0, proc.stderr
    return made


def test_every_mosquitto_login_is_an_emqx_login_with_the_same_password(backend: Path) -> None:
    users = users_csv(backend)
    assert set(users) == passwd_users(backend) == {*LOGINS, "denen-bridge-2"}
    for user, row in users.items():
        assert row["password"] == password(backend, user) and row["is_superuser"] == "false"
    folder = backend / "secrets" / "emqx"
    for name in ("users.csv", "server.key"):
        assert stat.S_IMODE((folder / name).stat().st_mode) == 0o600, name
    # The nodes present the broker certificate; the bridges reach them as emqx1.denen .. emqx3.denen.
    for host in ("emqx1.denen", "emqx2.denen", "emqx3.denen", "mqtt.example.jp"):
        proc = subprocess.run(["openssl", "verify", "-CAfile", str(folder / "ca.crt"), "-verify_hostname", host,
                               str(folder / "server.crt")], capture_output=True, text=True, timeout=30)
        assert proc.returncode == 0, (host, proc.stdout, proc.stderr)
    # The file EMQX's authentication reads is the one the compose file mounts there.
    conf = (EMQX / "emqx.conf").read_text(encoding="utf-8")
    compose = (EMQX.parent / "docker-compose.yml").read_text(encoding="utf-8")
    assert 'bootstrap_file = "etc/denen/users.csv"' in conf and "bootstrap_type = plain" in conf
    assert "../secrets/emqx:/opt/emqx/etc/denen:ro" in compose


def test_rotated_and_revoked_logins_follow_in_users_csv_with_the_emqx_step_named(tmp_path: Path) -> None:
    made = copy_backend(tmp_path)
    assert make_credentials(made, "-n", "localhost", *GATEWAYS).returncode == 0
    old = users_csv(made)["gw-a"]["password"]
    rotated = make_credentials(made, "-R", "gw-a")
    assert rotated.returncode == 0, rotated.stderr
    assert users_csv(made)["gw-a"]["password"] == password(made, "gw-a") != old
    assert "password_based:built_in_database/users/" in rotated.stderr  # EMQX keeps a login it has
    revoked = make_credentials(made, "-X", "gw-b")
    assert revoked.returncode == 0, revoked.stderr
    assert "gw-b" not in users_csv(made) and "gw-b" not in passwd_users(made)
    assert "password_based:built_in_database/users/" in revoked.stderr
    # No password on the terminal.
    for proc in (rotated, revoked):
        assert password(made, "gw-a") not in proc.stdout + proc.stderr


# ---- acl.conf, evaluated as EMQX evaluates it -----------------------------------------------------------------------
# The two forms emqx_authz_rule:compile/1 takes: {Permission, all} and {Permission, Who, Action, Topics}. Anything
# else (a 3-tuple, say) makes EMQX refuse the whole file, so every term must parse as one of these.
RULE_RE = re.compile(r'\{(allow|deny),\s*(?:all\s*\}|(all|\{username,\s*\{re,\s*"([^"]+)"\}\}),\s*'
                     r'(publish|subscribe|all),\s*\[(.*?)\]\s*\})\.', re.DOTALL)
TOPIC_RE = re.compile(r'\{eq,\s*"([^"]+)"\}|"([^"]+)"')


def emqx_rules() -> list[tuple[str, str | None, str, list[tuple[bool, str]]]]:
    """(permission, login regex or None for all, action, [(literal, topic)]) of acl.conf, in order."""
    code = "\n".join(ln for ln in (EMQX / "acl.conf").read_text(encoding="utf-8").splitlines()
                     if not ln.lstrip().startswith("%%"))
    rules = []
    for m in RULE_RE.finditer(code):
        permission, _, who, action, topics = m.groups()
        parsed = [(bool(eq), eq or plain) for eq, plain in TOPIC_RE.findall(topics if topics is not None else '"#"')]
        rules.append((permission, who, action or "all", parsed))
    terms = len(re.findall(r"\}\.[ \t]*$", code, re.MULTILINE))
    assert rules and len(rules) == terms, f"{terms - len(rules)} term(s) of acl.conf are no rule EMQX compiles"
    return rules


def _matches(name: list[str], flt: list[str]) -> bool:
    """emqx_topic:match/2 on words: ``+`` one level, ``#`` the rest."""
    if not flt:
        return not name
    if flt[0] == "#":
        return True
    if not name:
        return False
    return (flt[0] == "+" or flt[0] == name[0]) and _matches(name[1:], flt[1:])


def emqx_decides(login: str, action: str, topic: str) -> bool:
    if action == "subscribe" and topic.startswith("$share/"):
        topic = topic.split("/", 2)[2]  # EMQX authorizes the filter without its group
    for permission, who, rule_action, topics in emqx_rules():
        if who is not None and not re.search(who, login):
            continue
        if rule_action not in ("all", action):
            continue
        for literal, t in topics:
            hit = (topic == t) if literal else _matches(topic.split("/"), t.replace("${username}", login).split("/"))
            if hit:
                return permission == "allow"
    return False  # no_match = deny


def probes() -> Iterator[tuple[str, str, str]]:
    """(login, action, topic): every topic the agent, bridge and console use, for their own and for others' trees."""
    for gw in GATEWAYS:
        for tail in ("status", "state", "results", "readings/sos", "readings/alarm", "readings/telemetry",
                     "readings/diagnostics", "cmd/alert-ack", "cmd/siren-silence", "cmd/test-chirp", "cmd/other",
                     "readings/other", "nodes/00d00001/state", "other"):
            for login in LOGINS:
                yield login, "publish", f"denen/v1/{gw}/{tail}"
        for login in LOGINS:
            yield login, "subscribe", f"denen/v1/{gw}/cmd/#"
            yield login, "subscribe", f"denen/v1/{gw}/readings/#"
            yield login, "subscribe", f"denen/v1/{gw}/nodes/00d00001/state"
    for flt in ("denen/v1/+/readings/#", "denen/v1/+/status", "denen/v1/+/state", "denen/v1/+/results",
                "denen/v1/+/nodes/+/state"):
        for login in LOGINS:
            yield login, "subscribe", f"$share/denen-bridge/{flt}"
            yield login, "subscribe", f"$share/denen-bridge-ngsi/{flt}"
            yield login, "subscribe", flt
    for login in LOGINS:
        yield login, "subscribe", "#"
        yield login, "subscribe", "denen/v1/+/cmd/#"
        yield login, "publish", "elsewhere/topic"


@pytest.fixture(scope="module")
def mosquitto(backend: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ShippedBroker]:
    broker = ShippedBroker(backend, tmp_path_factory.mktemp("mosquitto"))
    broker.start()
    try:
        yield broker
    finally:
        broker.stop()


def mosquitto_decides(broker: ShippedBroker, cases: list[tuple[str, str, str]]) -> dict[tuple[str, str, str], bool]:
    """The shipped Mosquitto's answer to each case: SUBACK granted / PUBACK 0 or 16, or 135 (not authorized).

    Mosquitto 2.0.11 closes the connection after it refuses a QoS 1 publish (PUBACK 135 first), so the login
    connects again after each refusal."""
    out: dict[tuple[str, str, str], bool] = {}
    for login in LOGINS:
        client: Any = None
        try:
            for case in (c for c in cases if c[0] == login):
                if client is None:
                    client = Mqtt(broker, login, login)
                    assert client.connected() == 0, login
                _, action, topic = case
                code = client.subscribe(topic) if action == "subscribe" else client.publish(topic, b"{}")
                assert code in (0, 1, 16, 135), (case, code)  # anything else would not be an ACL answer
                out[case] = code != 135
                if code == 135 and action == "publish":
                    client.close()
                    client = None
        finally:
            if client is not None:
                client.close()
    return out


def _unshared(topic: str) -> str:
    return topic.split("/", 2)[2] if topic.startswith("$share/") else topic


def test_emqx_rules_decide_as_the_shipped_mosquitto_for_every_login_and_topic(mosquitto: ShippedBroker) -> None:
    cases = list(probes())
    real = mosquitto_decides(mosquitto, cases)
    # EMQX is never stricter: whatever the shipped broker lets a login do, EMQX lets it do.
    stricter = [case for case in cases if real[case] and not emqx_decides(*case)]
    assert not stricter, stricter
    # EMQX lets a login do more only in one way: it checks a subscription's filter without its $share group, so a
    # login allowed a filter in one form (plain, or in one group) has it in every form, shared or not.
    looser = {case for case in cases if emqx_decides(*case) and not real[case]}
    forms = {(login, _unshared(topic)) for (login, action, topic), ok in real.items() if ok and action == "subscribe"}
    unexplained = [c for c in looser if c[1] != "subscribe" or (c[0], _unshared(c[2])) not in forms]
    assert not unexplained, unexplained
    # Which logins that reaches, as docs/capacity.md states it: the bridges (any group, or none), the console
    # (the bridges' groups, for state and results) and the consumers (node states, shared too); never a gateway.
    assert {login for login, _, _ in looser} == {"denen-bridge-1", "denen-console", "denen-console-cli",
                                                 "denen-consumer-1", "denen-consumer-2"}
    assert ("denen-console", "subscribe", "$share/denen-bridge/denen/v1/+/state") in looser
    # The comparison is not empty on either side: each kind of login is both allowed and refused something.
    for login in LOGINS:
        assert {v for (who, _, _), v in real.items() if who == login} == {True, False}, login


def test_the_known_emqx_differences_stay_inside_what_the_doc_says() -> None:
    # A bridge login may join any group (EMQX checks the filter alone), but still only for the bridges' filters.
    assert emqx_decides("denen-bridge-1", "subscribe", "$share/any-group/denen/v1/+/readings/#")
    assert not emqx_decides("denen-bridge-1", "subscribe", "$share/any-group/denen/v1/+/cmd/#")
    # A gateway may narrow its own command filter, never reach another gateway's, nor readings of anyone.
    assert emqx_decides("gw-a", "subscribe", "denen/v1/gw-a/cmd/alert-ack")
    assert not emqx_decides("gw-a", "subscribe", "denen/v1/gw-b/cmd/alert-ack")
    assert not emqx_decides("gw-a", "subscribe", "$share/denen-bridge/denen/v1/+/readings/#")
    # The login's name is what ${username} becomes: the placeholder itself is no topic anyone may use.
    assert not emqx_decides("gw-a", "publish", "denen/v1/${username}/status")


def test_a_refused_publish_is_answered_as_mosquitto_answers_it() -> None:
    conf = (EMQX / "emqx.conf").read_text(encoding="utf-8")
    # Mosquitto answers PUBACK 0x87 and keeps the connection; EMQX does the same only with deny_action = ignore.
    assert re.search(r"^\s*deny_action = ignore\b", conf, re.MULTILINE)
    assert re.search(r"^\s*no_match = deny\b", conf, re.MULTILINE)
