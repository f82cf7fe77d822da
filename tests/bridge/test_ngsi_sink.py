"""The NGSI sink's HTTP exchange against tests/support/ngsi_server.py (real HTTP on loopback; the server checks
paths, headers, content types and batch limits, and injects 207/400/409/503 and stalls), through the bridge's
write policy as the bridge uses it."""

from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import Any

import pytest

from agent.bridge import load_bridge_config, parse_bridge_config
from agent.bridge.errors import SinkRefused, SinkUnavailable
from agent.bridge.lineproto import Serializer
from agent.bridge.ngsi import NgsiSink
from agent.bridge.ngsi_config import DEFAULT_CONTEXTS
from agent.bridge.policy import WritePolicy
from agent.bridge.registry import GatewayInfo, GatewayRegistry
from agent.bridge.sinks import make_sink
from agent.errors import ConfigError
from tests.bridge._helpers import T0_US, batch, reading, topic
from tests.support.ngsi_server import NgsiServer

REGISTRY = GatewayRegistry({"gw-a": GatewayInfo("okutama"), "gw-b": GatewayInfo("hinohara")})


#: One tenant per municipality.
TENANTS = "    tenants: {okutama: okutama, hinohara: hinohara}"


def sink_yaml(url: str, kind: str = "ngsi-ld", ngsi: str = TENANTS, secret: str = "token: test-token") -> str:
    return f"""
mqtt:
  client_id: bridge-ngsi-test
sink:
  type: {kind}
  url: {url}
  {secret}
  timeout_s: 0.5
  retry_min_s: 0.01
  retry_max_s: 0.05
  ngsi:
{ngsi}
"""


def make(url: str, **kwargs: Any) -> NgsiSink:
    sink = make_sink(parse_bridge_config(sink_yaml(url, **kwargs)).sink)
    assert isinstance(sink, NgsiSink)
    return sink


def write_all(url: str, ls: list[str], **kwargs: Any) -> list[Any]:
    """Write ``ls`` to a new sink (``make(url, **kwargs)``) through the bridge's WritePolicy with fast retries;
    returns the refused lines."""
    sink = make(url, **kwargs)
    try:
        return WritePolicy(sink, stop=threading.Event(), retry_min_s=0.01).write(ls)
    finally:
        sink.close()


def lines(gateway: str, readings: list[dict[str, Any]]) -> list[str]:
    conv = Serializer(registry=REGISTRY, now_us=lambda: T0_US + 10**10).convert(
        topic(gateway, readings[0]["lane"]), batch(gateway, readings))
    assert not conv.rejects
    return conv.lines


def levels(gateway: str, count: int, nodes: int) -> list[str]:
    """``count`` water_level readings round-robin over ``nodes`` nodes (each node several times when count >
    nodes)."""
    return lines(gateway, [reading(gateway, 0x300 + i % nodes, 1 + i // nodes, "water_level",
                                   {"level_cm": 100.0 + i, "battery_v": 3.6}) for i in range(count)])


def body(ls: list[str]) -> bytes:
    return "\n".join(ls).encode()


@pytest.fixture
def server() -> Any:
    with NgsiServer(max_batch=100) as srv:
        yield srv
        assert srv.violations == []


def test_upsert_request_follows_the_api_and_tenants_follow_the_site(server: NgsiServer) -> None:
    sink = make(server.url, ngsi="    tenant: default_town\n    tenants: {okutama: okutama}")
    try:
        sink.write(body(levels("gw-a", 3, 3) + levels("gw-b", 2, 2)))
    finally:
        sink.close()
    assert len(server.ids("okutama", "FloodMonitoring")) == 3
    assert len(server.ids("default_town", "Device")) == 2
    for request in server.requests:
        headers = {k.lower(): v for k, v in request["headers"].items()}
        assert headers["content-type"] == "application/ld+json" and "link" not in headers
        assert headers["authorization"] == "Bearer test-token"
        assert headers["ngsild-tenant"] in ("okutama", "default_town")
    assert set(server.answers) == {201}


def test_link_header_mode_and_the_token_from_a_file(server: NgsiServer, tmp_path: Path) -> None:
    token = tmp_path / "token"
    token.write_text("test-token\n")
    os.chmod(token, 0o600)
    sink = make(server.url, secret=f"token_file: {token}",
                ngsi="    content_type: json\n    context: [https://example.org/denen-context.jsonld]")
    try:
        sink.write(body(levels("gw-a", 2, 2)))
    finally:
        sink.close()
    headers = {k.lower(): v for k, v in server.requests[0]["headers"].items()}
    assert headers["content-type"] == "application/json"
    assert headers["link"] == ('<https://example.org/denen-context.jsonld>; '
                               'rel="http://www.w3.org/ns/json-ld#context"; type="application/ld+json"')
    assert "ngsild-tenant" not in headers and server.ids() and server.answers[201] == 1


def test_batch_limit_and_each_reading_of_a_node_in_its_own_request_oldest_first(server: NgsiServer) -> None:
    sink = make(server.url)
    try:
        sink.write(body(levels("gw-a", 750, 250)))  # 250 nodes, 3 readings each: 500 entities per round
    finally:
        sink.close()
    assert all(len(r["ids"]) <= 100 for r in server.requests) and len(server.requests) == 15
    seen = server.observations("currentLevel", "okutama")
    assert len(seen) == 750  # every reading kept by the broker's history
    node = server.entity("urn:ngsi-ld:FloodMonitoring:okutama:00000300", "okutama")
    assert node is not None and node["currentLevel"]["value"] == 600.0  # the newest of the node's three


def test_an_outage_is_retried_and_what_was_stored_is_not_sent_again(server: NgsiServer) -> None:
    sink = make(server.url, ngsi=TENANTS + "\n    batch_size: 10")
    policy = WritePolicy(sink, stop=threading.Event(), retry_min_s=0.01, retry_max_s=0.05)
    ls = levels("gw-a", 30, 30)
    server.fail(2, 503)
    with pytest.raises(SinkUnavailable):
        sink.write(body(ls))
    server.stall(1, 1.5)  # stored, answered after the client's timeout
    try:
        assert policy.write(ls) == []
    finally:
        sink.close()
    assert len(server.observations("currentLevel", "okutama")) == 30
    sent = [i for r in server.requests for i in r["ids"]]
    # 60 entities (Device and FloodMonitoring per reading); the 503s stored nothing; only the stalled request's
    # 10 entities were sent twice (the sink cannot know the broker stored them).
    assert len(set(sent)) == 60 and len(sent) == 60 + 10 + 10 * 2
    assert max(server.instances.values()) == 2


def test_per_entity_refusal_in_a_207_dead_letters_only_those_lines_with_the_servers_reason(
        server: NgsiServer) -> None:
    server.refuse_entities(lambda e: e["id"].endswith(":00000305") and e["type"] == "FloodMonitoring",
                           detail="currentLevel out of range for this station")
    ls = levels("gw-a", 20, 10)
    refused = write_all(server.url, ls)
    assert sorted(ls[r.index] for r in refused) == sorted(l for l in ls if l.startswith("water_level,")
                                                         and "node=00000305" in l)
    assert all("HTTP 400" in r.error and "currentLevel out of range for this station" in r.error for r in refused)
    assert 207 in server.answers
    assert len(server.ids("okutama", "FloodMonitoring")) == 9 and len(server.ids("okutama", "Device")) == 10


def test_a_whole_request_refused_with_400_is_narrowed_to_the_bad_entity(server: NgsiServer) -> None:
    server.refuse_requests(lambda e: e["id"] == "urn:ngsi-ld:Device:okutama:00000302")
    ls = levels("gw-a", 8, 8)
    refused = write_all(server.url, ls)
    assert [ls[r.index] for r in refused] == [l for l in ls if l.startswith("water_level,") and "00000302" in l]
    assert "refused by the test broker: urn:ngsi-ld:Device:okutama:00000302" in refused[0].error
    assert len(server.ids("okutama", "FloodMonitoring")) == 7


def test_409_is_a_creation_race_upserted_again(server: NgsiServer) -> None:
    server.fail(1, 409)
    refused_once = [True]
    server.refuse_entities(lambda e: refused_once.pop() if refused_once else False, status=409,
                           kind="AlreadyExists")
    assert write_all(server.url, levels("gw-a", 4, 4)) == []
    assert server.answers[409] == 1 and server.answers[207] == 1
    assert len(server.ids("okutama")) == 8


def test_bad_credentials_are_refused_with_a_hint(server: NgsiServer) -> None:
    sink = make(server.url, secret="token: wrong")
    try:
        with pytest.raises(SinkRefused, match="token"):
            sink.write(body(levels("gw-a", 1, 1)))
    finally:
        sink.close()
    assert server.answers == {401: 1} and not server.ids("okutama")


def test_ngsi_v2_append_with_fiware_headers_and_bisection_of_a_400() -> None:
    with NgsiServer("v2") as server:
        server.refuse_requests(lambda e: e["id"] == "urn:ngsi-ld:Device:okutama:00000303")
        ls = levels("gw-a", 6, 6)
        refused = write_all(server.url, ls, kind="ngsi-v2", ngsi="    tenant: okutama\n    service_path: /denen/rivers")
        assert [ls[r.index] for r in refused] == [l for l in ls if l.startswith("water_level,") and "00000303" in l]
        headers = {k.lower(): v for k, v in server.requests[0]["headers"].items()}
        assert headers["fiware-service"] == "okutama" and headers["fiware-servicepath"] == "/denen/rivers"
        stored = server.entity("urn:ngsi-ld:FloodMonitoring:okutama:00000300", "okutama")
        assert stored is not None and stored["currentLevel"]["metadata"]["unitCode"]["value"] == "CMT"
        assert server.violations == []


@pytest.mark.parametrize(("ngsi", "kind", "message"), [
    ("    content_type: json", "ngsi-ld", "exactly one URL"),
    ("    tenant: Bad Tenant", "ngsi-ld", "not a tenant name"),
    ("    positions: {xyz: {lat_deg: 1, lon_deg: 2}}", "ngsi-ld", "8 lowercase hex"),
    ("    service_path: denen", "ngsi-v2", "Fiware-ServicePath"),
    ("    batch_size: 5000", "ngsi-ld", "batch_size"),
])
def test_config_problems_are_reported(ngsi: str, kind: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        parse_bridge_config(sink_yaml("http://127.0.0.1:1026", kind=kind, ngsi=ngsi))


def test_an_influx_key_on_an_ngsi_sink_and_ngsi_on_an_influx_sink_are_refused() -> None:
    with pytest.raises(ConfigError, match="'database' is not used by a ngsi-ld sink"):
        parse_bridge_config(sink_yaml("http://127.0.0.1:1026", secret="database: denen"))
    with pytest.raises(ConfigError, match="'ngsi' is not used by a v1 sink"):
        parse_bridge_config(sink_yaml("http://127.0.0.1:8086", kind="v1", secret="database: denen"))


def test_the_shipped_example_validates_and_lists_the_default_contexts() -> None:
    config = load_bridge_config(Path(__file__).resolve().parents[2] / "config" / "bridge" / "ngsi-ld.yaml")
    assert config.sink.type == "ngsi-ld" and config.sink.ngsi is not None
    assert tuple(config.sink.ngsi.context) == DEFAULT_CONTEXTS
    assert config.sink.ngsi.positions["00000301"].lat_deg == 35.8094
