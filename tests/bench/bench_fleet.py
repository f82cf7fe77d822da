"""Many gateways: a load generator of 1,000 gateways against one Mosquitto and one ``denen bridge`` into InfluxDB 1.6.7.

Usage::

    python -m tests.bench.bench_fleet [--quick] [--gateways N] [--workers W] [--json PATH] [--keep]

The backend is set up as deploy/backend sets it up, on loopback and without TLS:

* Mosquitto 2 with ``allow_anonymous false``, a password file hashed by ``mosquitto_passwd -U`` holding one login
  per gateway (user name = gateway id, as make-credentials.sh makes them) and the bridge's ``denen-bridge-1`` login,
  client id bound to the login, and the rules of deploy/backend/mosquitto/acl in Mosquitto's acl_file form
  (:func:`acl_file_of_policy`; the shipped broker enforces them with the dynamic-security plugin, which also refuses
  foreign subscriptions; the bench measures load, not the rule engine): each gateway may publish only its own
  status and readings. Persistence, queue and keepalive settings as in deploy/backend/mosquitto/mosquitto.conf.
  Before the load starts, two checks show the ACL and the passwords are in force: a gateway publishing under
  another gateway's tree gets PUBACK 135 (not authorized), and a wrong password gets CONNACK 134/135.
* one ``python -m agent.cli bridge`` process (user ``denen-bridge-1``, default batching, persistent session, the
  shared subscription) writing to a real InfluxDB 1.6.7 through a small HTTP relay in this process. The relay notes
  when InfluxDB answered each write (204) and keeps the bodies; afterwards every ``node_health`` point is matched
  to the reading it came from, so the lag of every reading is known: reading ``ts_us`` (when the gateway heard
  it) -> InfluxDB acknowledged the write that carried it. The relay adds one loopback hop (well under 1 ms).

The gateways run in a few worker processes (``--workers``, default 4), each owning a few hundred paho clients in
one thread with a selector (``loop_read`` / ``loop_write`` / ``loop_misc``): no thread per client. Each gateway has
its own client id and login, sets the agent's Last Will, publishes the agent's retained online status, and sends
readings in the agent's format: the reading objects are real ones (built by the agent's own decoder from signed
frames) with each gateway's identity, ``fcnt`` and timestamp, in the agent's batch envelope
(``denen.readings/1``), QoS 1, to ``denen/v1/<gateway>/readings/telemetry``. Like the agent, a gateway keeps its
readings in a FIFO and has at most 8 messages awaiting PUBACK, each with at most 200 readings (the config
defaults ``inflight_window`` and ``batch_max_readings``).

Phases (full run; ``--quick`` is shorter and says so in its output):

``field``   60 s: every gateway sends one reading every 10 s (10 nodes each, so each node every 100 s), spread
            evenly in time: 100 readings/s over 1,000 gateways. Meanwhile 5 % of the gateways (every 20th) have
            no backhaul: they journal their readings (and hold 3,600 older ones from an outage before the run).
``flood``   60 s: every gateway sends one reading per second (10x), and the 5 % get their backhaul back at the
            start of the phase and drain their backlog (3,600 + what the field phase queued, each) behind which
            their live readings wait, as in the agent's FIFO lane.
``after``   30 s back at the field rate.

Reported per phase: readings/s published and written, the lag of live readings (p50 / p99 / max, gateways that
never had a backlog apart from the draining ones), the backlog drain (time from the phase start to the last
backlog point written, readings/s), CPU of every process, and loss: at the end every ``node_health`` point is
counted per (gateway, node, fcnt) in InfluxDB against every reading the broker acknowledged: 0 missing required.
"""

from __future__ import annotations

import argparse
import collections
import gzip
import heapq
import http.client
import http.server
import json
import logging
import multiprocessing as mp
import os
import platform
import random
import resource
import secrets
import selectors
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

from tests.bench import _common as c
from tests.support.process import end, end_workers

log = logging.getLogger(__name__)

REPO = Path(__file__).resolve().parents[2]
PRODUCTION_ACL = REPO / "deploy" / "backend" / "mosquitto" / "acl"
PREFIX = "denen/v1"
BRIDGE_USER = "denen-bridge-1"


def acl_file_of_policy(policy: str) -> str:
    """deploy/backend/mosquitto/acl (role, rule type, topic per line) as a Mosquitto acl_file: gateway rules become
    ``pattern`` lines (%u = the login), the bridge's become rules of the bench's bridge login."""
    gateway, bridge = [], []
    for line in policy.splitlines():
        parts = line.split()
        if len(parts) != 3 or line.lstrip().startswith("#"):
            continue
        role, rule, topic = parts
        access = "write" if rule == "publishClientSend" else "read"
        topic = topic.split("/", 2)[2] if topic.startswith("$share/") else topic  # acl_file checks the plain filter
        if role == "gateway":
            gateway.append(f"pattern {access} {topic}")
        elif role == "bridge":
            bridge.append(f"topic {access} {topic}")
    return "\n".join(gateway + ["", f"user {BRIDGE_USER}"] + sorted(set(bridge))) + "\n"
SITE = "fleet"
NODES_PER_GATEWAY = 10
WINDOW = 8  # the agent's mqtt.inflight_window default
BATCH = 200  # the agent's mqtt.batch_max_readings default
KEEPALIVE_S = 30  # the agent's mqtt.keepalive_s default
NODE_BASE = 0x00D00000

#: Phases: (name, seconds, seconds between two readings of one gateway). The backlog gateways start draining at
#: the start of the phase named by ``drain_phase``.
PLANS: dict[str, dict[str, Any]] = {
    "full": {"gateways": 1000, "workers": 4, "phases": [("field", 60, 10.0), ("flood", 60, 1.0), ("after", 30, 10.0)],
             "drain_phase": "flood", "backlog_share": 0.05, "backlog": 3600, "drain_timeout_s": 180},
    "quick": {"gateways": 1000, "workers": 4, "phases": [("field", 10, 10.0), ("flood", 15, 1.0), ("after", 5, 10.0)],
              "drain_phase": "flood", "backlog_share": 0.05, "backlog": 600, "drain_timeout_s": 60},
}
TARGET_MISSING = 0


def gateway_id(i: int) -> str:
    return f"gw-fleet-{i:04d}"


def node_hex(gw: int, k: int) -> str:
    return f"{NODE_BASE + gw * 16 + k:08x}"


# -- the broker ------------------------------------------------------------------------------------------------
class FleetBroker:
    """Mosquitto with logins for every gateway and the bridge, and the production ACL, on a free loopback port."""

    def __init__(self, workdir: Path, gateways: list[str]) -> None:
        from agent.dev.devbroker import free_port  # noqa: PLC0415

        exe = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
        if not os.access(exe, os.X_OK) or shutil.which("mosquitto_passwd") is None:
            raise RuntimeError("mosquitto and mosquitto_passwd are needed (apt-get install mosquitto)")
        self.binary = exe
        self.host = "127.0.0.1"
        self.port = free_port()
        self.workdir = workdir
        (workdir / "persist").mkdir(parents=True, exist_ok=True)
        self.passwords = {g: secrets.token_hex(12) for g in gateways}
        self.passwords[BRIDGE_USER] = secrets.token_hex(12)
        passwd = workdir / "passwd"
        fd = os.open(passwd, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.writelines(f"{u}:{p}\n" for u, p in self.passwords.items())
        # As make-credentials.sh does: a plain-text file hashed in place.
        subprocess.run(["mosquitto_passwd", "-U", str(passwd)], check=True, capture_output=True, timeout=120)
        acl = workdir / "acl"
        acl.write_text(acl_file_of_policy(PRODUCTION_ACL.read_text(encoding="utf-8")), encoding="utf-8")
        self.conf = workdir / "mosquitto.conf"
        lines = [
            "per_listener_settings false",
            "allow_anonymous false",
            f"password_file {passwd}",
            f"acl_file {acl}",
            f"listener {self.port} 127.0.0.1",
            "use_username_as_clientid true",  # as shipped: the client id is the login
            "max_queued_messages 0",
            "persistent_client_expiration 30d",
            "persistence true",
            f"persistence_location {workdir / 'persist'}/",
            "autosave_interval 10",
            "set_tcp_nodelay true",
            "max_keepalive 300",
            f"log_dest file {workdir / 'mosquitto.log'}",
            "log_type error",
            "log_type warning",
        ]
        if os.geteuid() == 0:
            lines.insert(0, "user root")
        self.conf.write_text("\n".join(lines) + "\n")
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        def more_files() -> None:
            # A connection is a file descriptor: 1,000 gateways need more than the usual soft limit of 1,024.
            soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
            want = 65536 if hard == resource.RLIM_INFINITY else hard
            resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, want), hard))

        self.proc = subprocess.Popen([self.binary, "-c", str(self.conf)], stdout=subprocess.DEVNULL,
                                     stderr=subprocess.PIPE, preexec_fn=more_files)

        def listening() -> bool:
            if self.proc is not None and self.proc.poll() is not None:
                err = self.proc.stderr.read().decode(errors="replace") if self.proc.stderr else ""
                raise RuntimeError(f"mosquitto exited with {self.proc.returncode}: {err}")
            try:
                with socket.create_connection((self.host, self.port), timeout=0.2):
                    return True
            except OSError:
                return False

        if not c.wait_until(listening, 15, 0.02):
            raise RuntimeError(f"mosquitto did not listen on {self.port}")

    def stop(self) -> None:
        end(self.proc, 15)
        self.proc = None


def check_security(broker: FleetBroker, gateways: list[str]) -> dict[str, Any]:
    """Show that the ACL and the passwords are in force: a cross-tree publish and a wrong password are refused."""
    import paho.mqtt.client as mqtt  # noqa: PLC0415
    from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion  # noqa: PLC0415

    out: dict[str, Any] = {}
    a, b = gateways[0], gateways[1]
    got: dict[str, Any] = {}
    done = threading.Event()
    client = mqtt.Client(callback_api_version=CallbackAPIVersion.VERSION2, client_id=f"{a}-acl-check",
                         protocol=MQTTProtocolVersion.MQTTv5)
    client.username_pw_set(a, broker.passwords[a])

    def on_publish(cl: Any, ud: Any, mid: int, rc: Any, props: Any) -> None:
        got.setdefault("codes", []).append(int(rc.value))
        if len(got["codes"]) == 2:
            done.set()

    client.on_publish = on_publish
    client.connect(broker.host, broker.port)
    client.loop_start()
    try:
        if not c.wait_until(client.is_connected, 10, 0.01):
            raise RuntimeError(f"{a} could not log in with its own password")
        # Own tree first (a topic of its own the rules allow; "no matching subscribers" 16 is a success too).
        client.publish(f"{PREFIX}/{a}/results", b"{}", qos=1).wait_for_publish(10)
        client.publish(f"{PREFIX}/{b}/readings/telemetry", b"{}", qos=1).wait_for_publish(10)
        done.wait(10)
    finally:
        client.disconnect()
        client.loop_stop()
    codes = got.get("codes", [])
    out["own_tree_puback"], out["other_tree_puback"] = (codes + [None, None])[:2]
    if out["other_tree_puback"] != 135:
        raise RuntimeError(f"the ACL did not refuse {a} publishing under {b}'s tree: PUBACK codes {codes}")

    refused = threading.Event()
    reason: dict[str, int] = {}
    bad = mqtt.Client(callback_api_version=CallbackAPIVersion.VERSION2, client_id=f"{a}-bad-password",
                      protocol=MQTTProtocolVersion.MQTTv5)
    bad.username_pw_set(a, "not-the-password")

    def on_connect(cl: Any, ud: Any, flags: Any, rc: Any, props: Any) -> None:
        reason["code"] = int(rc.value)
        refused.set()

    bad.on_connect = on_connect
    bad.connect(broker.host, broker.port)
    bad.loop_start()
    refused.wait(10)
    bad.loop_stop()
    try:
        bad.disconnect()
    except (OSError, ValueError):
        pass
    out["bad_password_connack"] = reason.get("code")
    if reason.get("code") not in (134, 135):
        raise RuntimeError(f"a wrong password was not refused: CONNACK {reason}")
    return out


# -- the relay between the bridge and InfluxDB --------------------------------------------------------------------
class Relay:
    """An HTTP relay in front of InfluxDB that notes when each write was acknowledged, and keeps its body.

    One thread per connection (the bridge keeps one). The time is taken when InfluxDB's answer has arrived, before
    the answer is passed on; bodies are parsed only at the end, so the relay costs the run little CPU.
    """

    def __init__(self, upstream_host: str, upstream_port: int) -> None:
        from agent.dev.devbroker import free_port  # noqa: PLC0415

        self.host = "127.0.0.1"
        self.port = free_port()
        self.writes: list[tuple[int, bytes, bool]] = []  # (acknowledged at, µs since epoch; body; gzipped)
        self.node_health_lines = 0
        self.failed_writes = 0
        relay = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the base class's name
                pass

            def _forward(self) -> None:
                up = getattr(self, "_up", None)
                if up is None:
                    up = self._up = http.client.HTTPConnection(upstream_host, upstream_port, timeout=60)
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                headers = {k: v for k in ("Content-Type", "Content-Encoding", "Authorization")
                           if (v := self.headers.get(k)) is not None}
                up.request(self.command, self.path, body=body if self.command == "POST" else None, headers=headers)
                resp = up.getresponse()
                data = resp.read()
                t_us = time.time_ns() // 1000
                self.send_response(resp.status)
                for k in ("Content-Type", "X-Influxdb-Error", "X-Influxdb-Version", "Request-Id", "Retry-After"):
                    v = resp.getheader(k)
                    if v is not None:
                        self.send_header(k, v)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)
                if self.command == "POST" and self.path.startswith("/write"):
                    if resp.status == 204:
                        gz = self.headers.get("Content-Encoding") == "gzip"
                        relay.writes.append((t_us, body, gz))
                        if not gz:
                            relay.node_health_lines += body.count(b"\nnode_health,") + body.startswith(
                                b"node_health,")
                    else:
                        relay.failed_writes += 1

            do_POST = _forward  # noqa: N815 - http.server's naming
            do_GET = _forward  # noqa: N815

        self.server = http.server.ThreadingHTTPServer((self.host, self.port), Handler)
        self.server.daemon_threads = True
        self._thread = threading.Thread(target=self.server.serve_forever, name="relay", daemon=True)

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def written(self) -> dict[tuple[str, str, int], int]:
        """(gateway, node, ts_us) of every node_health point -> when its write was acknowledged (first time)."""
        out: dict[tuple[str, str, int], int] = {}
        for t_us, body, gz in self.writes:
            text = (gzip.decompress(body) if gz else body).decode()
            for line in text.split("\n"):
                if not line.startswith("node_health,"):
                    continue
                head, _, rest = line.partition(" ")
                ts = int(rest.rpartition(" ")[2])
                tags = dict(kv.split("=", 1) for kv in head.split(",")[1:])
                out.setdefault((tags["gateway"], tags["node"], ts), t_us)
        return out


# -- the gateways (worker processes) ------------------------------------------------------------------------------
def templates() -> dict[str, list[dict[str, Any]]]:
    """Reading objects built by the agent's own decoder from signed frames, 8 per telemetry kind."""
    nodes = c.telemetry_nodes(len(c.TELEMETRY_KINDS))
    cfg = c.parse(c.config_text(port="/dev/null", mqtt_port=1883, journal=Path("/nonexistent/unused.db"),
                                nodes=nodes))
    entries, _ = c.decoded_entries(cfg, c.telemetry_frames(nodes, 8 * len(nodes)))
    out: dict[str, list[dict[str, Any]]] = collections.defaultdict(list)
    for e in entries:
        body = json.loads(e.body)
        out[body["kind"]].append(body)
    return dict(out)


class _Gateway:
    """One simulated gateway: its paho client, its FIFO of reading bodies and its messages awaiting PUBACK."""

    __slots__ = ("idx", "gid", "client", "fifo", "inflight", "online", "topic", "fcnt", "connack", "sock",
                 "writing")

    def __init__(self, idx: int, gid: str) -> None:
        self.idx = idx
        self.gid = gid
        self.client: Any = None
        self.fifo: collections.deque[tuple[str, int]] = collections.deque()  # (body, record index)
        self.inflight: dict[int, list[int]] = {}
        self.online = True  # False while its "backhaul" is down: readings wait in the FIFO
        self.topic = f"{PREFIX}/{gid}/readings/telemetry"
        self.fcnt = [0] * NODES_PER_GATEWAY
        self.connack: int | None = None
        self.sock: Any = None
        self.writing = False


def workers_ready(pipes: list[Any], timeout_s: float) -> list[dict[str, Any]]:
    """The first message of each worker (:func:`worker_main`), in pipe order, once it has connected its gateways:
    raises RuntimeError when one reports an error or says nothing within ``timeout_s`` seconds."""
    hellos = []
    for pipe in pipes:
        if not pipe.poll(timeout_s):
            raise RuntimeError(f"a worker did not connect its gateways within {timeout_s:g} s")
        msg = pipe.recv()
        if "error" in msg:
            raise RuntimeError(f"worker: {msg['error']}")
        hellos.append(msg)
    return hellos


def worker_main(conn: Any, spec: dict[str, Any]) -> None:
    """A worker process: connect its gateways, report ready, run the schedule it is sent, send back its records."""
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s worker: %(message)s")
    try:
        _worker(conn, spec)
    except Exception as exc:  # process top level: hand the failure to the coordinator
        log.exception("worker failed")
        conn.send({"error": f"{type(exc).__name__}: {exc}"})


def _worker(conn: Any, spec: dict[str, Any]) -> None:
    import paho.mqtt.client as mqtt  # noqa: PLC0415
    from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion  # noqa: PLC0415

    from agent import __version__  # noqa: PLC0415
    from agent.gateway.publisher import status_payload  # noqa: PLC0415
    from agent.gateway.readings import READING_SCHEMA  # noqa: PLC0415

    tpl: dict[str, list[dict[str, Any]]] = spec["templates"]
    kinds = list(c.TELEMETRY_KINDS)
    gws = [_Gateway(i, gateway_id(i)) for i in spec["gateway_indices"]]
    sel = selectors.DefaultSelector()
    # Records of every reading, as parallel lists: gateway index, node, fcnt, ts_us, phase (-1 backlog), the time
    # its message was handed to the socket and the time its PUBACK arrived (µs since the epoch), PUBACK code.
    r_gw: list[int] = []
    r_node: list[int] = []
    r_fcnt: list[int] = []
    r_ts: list[int] = []
    r_phase: list[int] = []
    r_pub: list[int] = []
    r_ack: list[int] = []
    r_code: list[int] = []
    dirty: set[_Gateway] = set()

    def new_reading(g: _Gateway, k: int, ts_us: int, phase: int) -> tuple[str, int]:
        g.fcnt[k] += 1
        fcnt = g.fcnt[k]
        kind = kinds[k % len(kinds)]
        body = dict(tpl[kind][fcnt % len(tpl[kind])])
        nh = node_hex(g.idx, k)
        body.update(id=f"{g.gid}/{nh}/{fcnt}", node=nh, name=f"{kind.replace('_', '-')}-{k + 1}", fcnt=fcnt,
                    ts_us=ts_us, rssi=-80 - (fcnt + k) % 40, snr=float(8 - (fcnt + k) % 15))
        idx = len(r_gw)
        r_gw.append(g.idx)
        r_node.append(k)
        r_fcnt.append(fcnt)
        r_ts.append(ts_us)
        r_phase.append(phase)
        r_pub.append(0)
        r_ack.append(0)
        r_code.append(-1)
        return json.dumps(body, separators=(",", ":"), ensure_ascii=False), idx

    def on_connect(client: Any, g: _Gateway, flags: Any, rc: Any, props: Any) -> None:
        g.connack = int(rc.value)
        if not rc.is_failure:
            # As the agent: a retained online status on every connect.
            client.publish(f"{PREFIX}/{g.gid}/status",
                           status_payload(g.gid, "online", version=__version__, ts_us=time.time_ns() // 1000),
                           qos=1, retain=True)
            dirty.add(g)

    def on_publish(client: Any, g: _Gateway, mid: int, rc: Any, props: Any) -> None:
        recs = g.inflight.pop(mid, None)
        if recs is None:
            return  # the status message
        t = time.time_ns() // 1000
        code = int(rc.value)
        for i in recs:
            r_ack[i] = t
            r_code[i] = code
        dirty.add(g)

    def want_write(g: _Gateway) -> None:
        w = g.client.want_write()
        if w != g.writing and g.sock is not None:
            sel.modify(g.sock, selectors.EVENT_READ | (selectors.EVENT_WRITE if w else 0), g)
            g.writing = w

    def pump(g: _Gateway) -> None:
        """Publish from the FIFO while the window allows, as the agent does (up to BATCH readings a message)."""
        while g.online and g.connack == 0 and g.fifo and len(g.inflight) < WINDOW:
            take = [g.fifo.popleft() for _ in range(min(BATCH, len(g.fifo)))]
            payload = (f'{{"schema":"{READING_SCHEMA}","gateway":"{g.gid}","site":"{SITE}","lane":"telemetry",'
                       f'"sent_us":{time.time_ns() // 1000},"readings":[' + ",".join(b for b, _ in take)
                       + "]}").encode()
            info = g.client.publish(g.topic, payload, qos=1)
            if info.rc != mqtt.MQTT_ERR_SUCCESS:
                g.fifo.extendleft(reversed(take))
                break
            t = time.time_ns() // 1000
            idxs = [i for _, i in take]
            for i in idxs:
                r_pub[i] = t
            g.inflight[info.mid] = idxs
        want_write(g)

    # Connect every gateway (blocking TCP connect and CONNECT; the CONNACKs are read by the loop below).
    for g in gws:
        cl = mqtt.Client(callback_api_version=CallbackAPIVersion.VERSION2, client_id=g.gid,
                         protocol=MQTTProtocolVersion.MQTTv5, userdata=g)
        cl.max_inflight_messages_set(0)
        cl.max_queued_messages_set(0)
        cl.username_pw_set(g.gid, spec["passwords"][g.gid])
        cl.will_set(f"{PREFIX}/{g.gid}/status", status_payload(g.gid, "offline", version=__version__), qos=1,
                    retain=True)
        cl.on_connect = on_connect
        cl.on_publish = on_publish
        cl.connect(spec["host"], spec["port"], keepalive=KEEPALIVE_S, clean_start=True)
        cl.socket().setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        g.client = cl
        g.sock = cl.socket()
        sel.register(g.sock, selectors.EVENT_READ, g)
        want_write(g)

    def service(timeout: float) -> None:
        for key, mask in sel.select(timeout):
            g = key.data
            if mask & selectors.EVENT_READ:
                rc = g.client.loop_read()
                if rc not in (mqtt.MQTT_ERR_SUCCESS, mqtt.MQTT_ERR_AGAIN):
                    raise RuntimeError(f"{g.gid}: connection lost ({mqtt.error_string(rc)})")
            if mask & selectors.EVENT_WRITE:
                g.client.loop_write()
            dirty.add(g)
        while dirty:
            pump(dirty.pop())

    deadline = time.monotonic() + 60
    while any(g.connack is None for g in gws):
        if time.monotonic() > deadline:
            raise RuntimeError(f"{sum(g.connack is None for g in gws)} gateways got no CONNACK within 60 s")
        service(0.2)
    refused = [g.gid for g in gws if g.connack != 0]
    if refused:
        raise RuntimeError(f"{len(refused)} gateways refused at connect, e.g. {refused[:3]}")

    # Backlog gateways: older readings journaled during an outage before the run, one a second across the nodes
    # (timestamps before now, so they never collide with live ones of the same node).
    backlog_set = set(spec["backlog_indices"])
    n = spec["backlog"]
    start_us = time.time_ns() // 1000 - (n + 5) * 1_000_000
    for g in gws:
        if g.idx in backlog_set:
            g.online = False
            for j in range(n):
                g.fifo.append(new_reading(g, j % NODES_PER_GATEWAY, start_us + j * 1_000_000 + g.idx, -1))
    conn.send({"ready": len(gws), "backlog_readings": sum(len(g.fifo) for g in gws)})

    # The schedule, once every worker is ready: each gateway's readings spread evenly over its interval, with a
    # random offset. Meanwhile keep the connections serviced.
    while not conn.poll(0):
        service(0.1)
    phases = conn.recv()["phases"]
    drain_at = next(p["start"] for p in phases if p["name"] == spec["drain_phase"])
    rng = random.Random(spec["seed"])
    heap: list[tuple[float, int, int]] = []
    for pi, ph in enumerate(phases):
        for gi, g in enumerate(gws):
            t = ph["start"] + rng.uniform(0, ph["interval"])
            while t < ph["end"]:
                heap.append((t, gi, pi))
                t += ph["interval"]
    heapq.heapify(heap)
    node_next = [0] * len(gws)
    end = phases[-1]["end"]
    drained_back = False
    next_misc = time.time() + 1.0
    while True:
        now = time.time()
        while heap and heap[0][0] <= now:
            _, gi, pi = heapq.heappop(heap)
            g = gws[gi]
            k = node_next[gi]
            node_next[gi] = (k + 1) % NODES_PER_GATEWAY
            g.fifo.append(new_reading(g, k, time.time_ns() // 1000, pi))
            dirty.add(g)
        if not drained_back and now >= drain_at:
            drained_back = True
            for g in gws:
                if not g.online:
                    g.online = True
                    dirty.add(g)
        while dirty:
            pump(dirty.pop())
        if now >= next_misc:
            for g in gws:
                g.client.loop_misc()
            next_misc = now + 1.0
        if now >= end and not any(g.fifo or g.inflight for g in gws):
            break
        if now >= end + spec["drain_timeout_s"]:
            log.warning("worker: %d readings still queued and %d messages unacknowledged at the deadline",
                        sum(len(g.fifo) for g in gws), sum(len(g.inflight) for g in gws))
            break
        wait = min(next_misc, heap[0][0] if heap else now + 0.2) - time.time()
        service(max(0.0, min(wait, 0.2)))

    for g in gws:
        g.client.disconnect()
    t_stop = time.monotonic() + 5
    while time.monotonic() < t_stop and any(g.client.want_write() for g in gws):
        service(0.05)
    conn.send({"records": (r_gw, r_node, r_fcnt, r_ts, r_phase, r_pub, r_ack, r_code)})


# -- the coordinator --------------------------------------------------------------------------------------------
def _rss_mib(pid: int, field: str = "VmRSS") -> float | None:
    try:
        return c.proc_status_kib(pid, field) / 1024
    except (FileNotFoundError, ProcessLookupError, KeyError):
        return None


def _influx_points(url: str, db: str) -> dict[tuple[str, str], list[int]]:
    """Every node_health point's fcnt per (gateway, node), read in chunks (the result is large)."""
    q = urllib.parse.urlencode({"db": db, "q": 'SELECT "fcnt" FROM "node_health" GROUP BY "gateway", "node"',
                                "epoch": "u", "chunked": "true", "chunk_size": "20000"})
    out: dict[tuple[str, str], list[int]] = collections.defaultdict(list)
    with urllib.request.urlopen(f"{url}/query?{q}", timeout=300) as resp:
        for raw in resp:
            if not raw.strip():
                continue
            doc = json.loads(raw)
            for result in doc.get("results", []):
                if "error" in result:
                    raise RuntimeError(f"InfluxDB query failed: {result['error']}")
                for s in result.get("series", []):
                    col = s["columns"].index("fcnt")
                    out[(s["tags"]["gateway"], s["tags"]["node"])].extend(int(v[col]) for v in s["values"])
    return out


def run(p: dict[str, Any]) -> dict[str, Any]:
    """One fleet run with plan ``p`` (see :data:`PLANS`; ``workdir`` optional). Returns every figure."""
    from tests.support.influx import InfluxDB1  # noqa: PLC0415

    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    tmp = tempfile.mkdtemp(prefix="denen-bench-fleet-", dir=p.get("workdir"))
    work = Path(tmp)
    n_gw = p["gateways"]
    gids = [gateway_id(i) for i in range(n_gw)]
    step = max(1, round(1 / p["backlog_share"])) if p["backlog_share"] else 0
    backlog_idx = list(range(step - 1, n_gw, step)) if step else []
    out: dict[str, Any] = {"plan": {k: v for k, v in p.items() if k != "workdir"}, "gateways": n_gw,
                           "backlog_gateways": len(backlog_idx), "nodes_per_gateway": NODES_PER_GATEWAY,
                           "window": WINDOW, "batch": BATCH}
    t_setup = time.monotonic()
    c.say(f"fleet: {n_gw} gateways in {p['workers']} workers, work folder {work}")
    broker = FleetBroker(work / "broker", gids)
    influx = InfluxDB1(work / "influx")
    relay: Relay | None = None
    bridge: subprocess.Popen[bytes] | None = None
    workers: list[Any] = []
    pipes: list[Any] = []
    try:
        broker.start()
        influx.start()
        influx.create_database("denen")
        out["security"] = check_security(broker, gids)
        relay = Relay(influx.host, influx.port)
        relay.start()
        (work / "bridge-password").write_text(broker.passwords[BRIDGE_USER] + "\n")
        os.chmod(work / "bridge-password", 0o600)
        bridge_cfg = work / "bridge.yaml"
        bridge_cfg.write_text(f"""\
mqtt:
  host: {broker.host}
  port: {broker.port}
  username: {BRIDGE_USER}
  password_file: {work / 'bridge-password'}
  client_id: denen-bridge-1
  group: denen-bridge
  topic_prefix: {PREFIX}
sink:
  type: v1
  url: {relay.url}
  database: denen
dead_letter:
  path: {work / 'dead-letter.db'}
log:
  level: info
""")
        bridge_log = work / "bridge.log"
        with bridge_log.open("ab") as lf:
            bridge = subprocess.Popen([sys.executable, "-m", "agent.cli", "bridge", "-c", str(bridge_cfg)], cwd=REPO,
                                      stdout=lf, stderr=subprocess.STDOUT)
        if not c.wait_until(lambda: "MQTT: subscribed" in bridge_log.read_text(errors="replace")
                          or bridge.poll() is not None, 60, 0.05) or bridge.poll() is not None:
            raise RuntimeError(f"the bridge did not subscribe: {bridge_log.read_text(errors='replace')[-2000:]}")

        tpl = templates()
        ctx = mp.get_context("spawn")  # this process runs the relay's threads: no fork
        backlog_set = set(backlog_idx)
        for w in range(p["workers"]):
            idxs = list(range(w, n_gw, p["workers"]))
            parent, child = ctx.Pipe()
            spec = {"host": broker.host, "port": broker.port, "gateway_indices": idxs,
                    "passwords": {gids[i]: broker.passwords[gids[i]] for i in idxs}, "templates": tpl,
                    "backlog_indices": [i for i in idxs if i in backlog_set], "backlog": p["backlog"],
                    "drain_phase": p["drain_phase"], "drain_timeout_s": p["drain_timeout_s"], "seed": 1000 + w}
            pipes.append(parent)
            proc = ctx.Process(target=worker_main, args=(child, spec), name=f"fleet-worker-{w}")
            proc.start()
            workers.append(proc)
        hellos = workers_ready(pipes, 180)
        ready = sum(msg["ready"] for msg in hellos)
        backlog_total = sum(msg["backlog_readings"] for msg in hellos)
        # Every gateway is connected and logged in: fix the schedule (wall clock, shared by all processes).
        start_at = time.time() + 1.0
        phases = []
        t = start_at
        for name, secs, interval in p["phases"]:
            phases.append({"name": name, "start": t, "end": t + secs, "interval": interval})
            t += secs
        for pipe in pipes:
            pipe.send({"phases": phases})
        out["setup_s"] = time.monotonic() - t_setup
        out["connected_gateways"] = ready
        c.say(f"fleet: {ready} gateways connected and logged in; load starts in {start_at - time.time():.1f} s")

        # CPU per process per phase, sampled at the phase boundaries.
        pids = {"mosquitto": broker.proc.pid if broker.proc else 0, "bridge": bridge.pid,
                "influxd": influx.proc.pid if influx.proc else 0, "relay (this process)": os.getpid()}
        worker_pids = [proc.pid for proc in workers]
        cpu: dict[str, dict[str, float]] = {}
        tck = os.sysconf("SC_CLK_TCK")

        def sample() -> dict[str, int]:
            s = {k: c.cpu_ticks(v) for k, v in pids.items()}
            s["generator workers"] = sum(c.cpu_ticks(x) for x in worker_pids)
            return s

        time.sleep(max(0.0, start_at - time.time()))
        prev, prev_t = sample(), time.time()
        for ph in phases:
            time.sleep(max(0.0, ph["end"] - time.time()))
            c.say(f"fleet: phase {ph['name']} done")
            now_s, now_t = sample(), time.time()
            cpu[ph["name"]] = {k: (now_s[k] - prev[k]) / tck / (now_t - prev_t) * 100 for k in now_s}
            prev, prev_t = now_s, now_t

        records: list[tuple[list[int], ...]] = []
        for pipe in pipes:
            if not pipe.poll(p["drain_timeout_s"] + 60):
                raise RuntimeError("a worker did not report its records")
            msg = pipe.recv()
            if "error" in msg:
                raise RuntimeError(f"worker: {msg['error']}")
            records.append(msg["records"])
        t_gen_done = time.time()
        acked = sum(1 for rec in records for code in rec[7] if code == 0)
        # Wait for the bridge to write what the broker acknowledged (node_health lines counted by the relay).
        c.wait_until(lambda: relay.node_health_lines >= acked, p["drain_timeout_s"], 0.1)
        cpu["end (queues drained)"] = {k: (v - prev[k]) / tck / max(1e-9, time.time() - prev_t) * 100
                                       for k, v in sample().items()}
        out["tail_s"] = time.time() - phases[-1]["end"]
        out["generator_done_after_end_s"] = t_gen_done - phases[-1]["end"]
        out["rss_mib"] = {"mosquitto": _rss_mib(pids["mosquitto"]), "bridge": _rss_mib(bridge.pid),
                          "bridge_peak": _rss_mib(bridge.pid, "VmHWM"), "influxd": _rss_mib(pids["influxd"])}
        out["cpu_pct"] = cpu
        end(bridge, 30)
        out["bridge_summary"] = [ln.split(": ", 1)[-1] for ln in bridge_log.read_text(errors="replace").splitlines()
                                 if "bridge stopped:" in ln][-1:]
        out["bridge_errors"] = [ln[:300] for ln in bridge_log.read_text(errors="replace").splitlines()
                                if " ERROR " in ln][:5]
        out["relay_failed_writes"] = relay.failed_writes
        out.update(_analyse(records, relay.written(), phases, p["drain_phase"], backlog_idx, influx.url,
                            backlog_total))
    finally:
        end_workers(pipes, workers)
        if bridge is not None and bridge.poll() is None:
            bridge.kill()
            bridge.wait()
        if relay is not None:
            relay.stop()
        influx.stop()
        broker.stop()
        if not p.get("keep"):
            shutil.rmtree(work, ignore_errors=True)
    return out


def _stats(lags_ms: list[float]) -> dict[str, float | int]:
    return {"n": len(lags_ms), "p50_ms": c.percentile(lags_ms, 50), "p99_ms": c.percentile(lags_ms, 99),
            "max_ms": max(lags_ms) if lags_ms else float("nan")}


def _analyse(records: list[tuple[list[int], ...]], written: dict[tuple[str, str, int], int],
             phases: list[dict[str, Any]], drain_phase: str, backlog_idx: list[int], influx_url: str,
             backlog_total: int) -> dict[str, Any]:
    """Lag per phase, rates, the backlog drain, and loss counted in InfluxDB."""
    backlog_set = set(backlog_idx)
    # phase -> (ts_us, lag in ms) of live readings, of gateways without a backlog and of the draining ones
    live: dict[str, list[tuple[int, float]]] = collections.defaultdict(list)
    live_backlog_gw: dict[str, list[tuple[int, float]]] = collections.defaultdict(list)
    published: dict[str, int] = collections.Counter()
    backlog_written: list[int] = []
    expected: dict[tuple[str, str], set[int]] = collections.defaultdict(set)
    not_acked = refused = no_subscriber = not_written = 0
    total = 0
    for r_gw, r_node, r_fcnt, r_ts, r_phase, _r_pub, _r_ack, r_code in records:
        for gw, k, fcnt, ts, ph, code in zip(r_gw, r_node, r_fcnt, r_ts, r_phase, r_code, strict=True):
            total += 1
            gid, nh = gateway_id(gw), node_hex(gw, k)
            if ph >= 0:
                published[phases[ph]["name"]] += 1
            if code != 0:
                if code == -1:
                    not_acked += 1
                elif code == 16:  # "no matching subscribers": nobody got it (the agent offers such readings again)
                    no_subscriber += 1
                else:
                    refused += 1
                continue
            expected[(gid, nh)].add(fcnt)
            t_w = written.get((gid, nh, ts))
            if t_w is None:
                not_written += 1
                continue
            if ph < 0:
                backlog_written.append(t_w)
                continue
            name = phases[ph]["name"]
            (live_backlog_gw if gw in backlog_set else live)[name].append((ts, (t_w - ts) / 1000))
    drain_start = next(ph["start"] for ph in phases if ph["name"] == drain_phase)
    drain: dict[str, Any] = {"readings": backlog_total, "written": len(backlog_written)}
    drain_end_us = None
    if backlog_written:
        drain_end_us = max(backlog_written)
        secs = drain_end_us / 1e6 - drain_start
        drain.update(seconds=secs, per_s=len(backlog_written) / secs)
    phase_out = []
    for ph in phases:
        name = ph["name"]
        lo, hi = ph["start"] * 1e6, ph["end"] * 1e6
        written_in = sum(1 for t in written.values() if lo <= t < hi)
        out = {"name": name, "seconds": ph["end"] - ph["start"], "interval_s": ph["interval"],
               "live": _stats([x for _, x in live[name]]),
               "live_of_draining_gateways": _stats([x for _, x in live_backlog_gw[name]]),
               "published_per_s": published[name] / (ph["end"] - ph["start"]),
               "written_per_s": written_in / (ph["end"] - ph["start"])}
        if name == drain_phase and drain_end_us is not None:
            # Live readings of the other gateways made while the backlog was being written, and after.
            out["live_during_drain"] = _stats([x for t, x in live[name] if t <= drain_end_us])
            out["live_after_drain"] = _stats([x for t, x in live[name] if t > drain_end_us])
        phase_out.append(out)

    stored = _influx_points(influx_url, "denen")
    missing = duplicates = extra = 0
    for key, fcnts in expected.items():
        have = stored.get(key, [])
        counts = collections.Counter(have)
        missing += sum(1 for f in fcnts if f not in counts)
        duplicates += sum(n - 1 for n in counts.values() if n > 1)
    extra = sum(len(v) for k, v in stored.items() if k not in expected)
    return {"phases": phase_out, "drain": drain, "readings_total": total,
            "loss": {"expected": sum(len(v) for v in expected.values()),
                     "stored": sum(len(v) for v in stored.values()), "missing": missing,
                     "duplicates": duplicates, "unexpected": extra, "not_acked_by_broker": not_acked,
                     "refused_by_broker": refused, "no_subscriber": no_subscriber,
                     "acked_but_not_seen_written": not_written}}


# -- the table -------------------------------------------------------------------------------------------------
def add_rows(table: c.Table, r: dict[str, Any]) -> None:
    """The figures of :func:`run` as rows of the bench table."""
    sec = "fleet"
    n, nb = r["gateways"], r["backlog_gateways"]
    for ph in r["phases"]:
        rate = ph["interval_s"]
        lv, lb = ph["live"], ph["live_of_draining_gateways"]
        cpu = r["cpu_pct"].get(ph["name"], {})
        cpu_s = ", ".join(f"{k} {c.fmt(v)} %" for k, v in cpu.items())
        what = (f"phase {ph['name']} ({ph['seconds']:g} s, 1 reading per gateway every {rate:g} s"
                + (f"; {nb} gateways drain their backlog" if ph["name"] == "flood" and nb else "") + ")")
        table.add(sec, f"{what}: live readings made / points written", ph["published_per_s"], "readings/s",
                  anchor=f"written {c.fmt(ph['written_per_s'])}/s", note=f"CPU: {cpu_s}")
        table.add(sec, f"phase {ph['name']}: lag reading ts_us → InfluxDB write acknowledged, p50", lv["p50_ms"], "ms",
                  note=f"p99 {c.fmt(lv['p99_ms'])} ms, max {c.fmt(lv['max_ms'])} ms, {lv['n']:,} live readings of "
                  f"{n - nb} gateways")
        for key, label in (("live_during_drain", "made while the backlog drained"),
                           ("live_after_drain", "made after the backlog drained")):
            st = ph.get(key)
            if st and st["n"]:
                table.add(sec, f"phase {ph['name']}: lag of live readings {label}, p50", st["p50_ms"], "ms",
                          note=f"p99 {c.fmt(st['p99_ms'])} ms, max {c.fmt(st['max_ms'])} ms, {st['n']:,} readings of "
                          f"{n - nb} gateways")
        if lb["n"] and ph["name"] == r["plan"]["drain_phase"]:
            table.add(sec, f"phase {ph['name']}: lag of live readings of the draining gateways (behind their "
                      "backlog), p50", lb["p50_ms"], "ms",
                      note=f"p99 {c.fmt(lb['p99_ms'])} ms, max {c.fmt(lb['max_ms'])} ms, {lb['n']:,} readings")
    d = r["drain"]
    if d.get("seconds"):
        table.add(sec, f"backlog drain: {d['readings']:,} journaled readings of {nb} gateways, phase start → last "
                  "point written", d["seconds"], "s", note=f"{c.fmt(d['per_s'])} readings/s alongside the flood")
    loss = r["loss"]
    table.add(sec, "readings missing in InfluxDB, per (gateway, node, fcnt)", loss["missing"], "readings",
              anchor=f"{loss['expected']:,} acknowledged by the broker", target="0", ok=loss["missing"] == 0,
              note=f"{loss['stored']:,} points stored, {loss['duplicates']} duplicates, {loss['unexpected']} "
              f"unexpected; not acknowledged by the broker {loss['not_acked_by_broker']}, refused "
              f"{loss['refused_by_broker']}")
    rss = r.get("rss_mib", {})
    table.add(sec, "bridge RSS at the end / peak", rss.get("bridge"), "MiB",
              note=f"peak {c.fmt(rss.get('bridge_peak'))} MiB; mosquitto {c.fmt(rss.get('mosquitto'))} MiB with "
              f"{n} sessions; influxd {c.fmt(rss.get('influxd'))} MiB")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m tests.bench.bench_fleet", description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="short phases (10 s, 15 s, 5 s) and a 600-reading backlog")
    ap.add_argument("--gateways", type=int, default=None, help="number of gateways (default 1000)")
    ap.add_argument("--workers", type=int, default=None, help="generator processes (default 4)")
    ap.add_argument("--json", help="also write every figure as JSON to this path")
    ap.add_argument("--keep", action="store_true", help="keep the work folder (broker, bridge and InfluxDB logs)")
    args = ap.parse_args(argv)
    plan = dict(PLANS["quick" if args.quick else "full"])
    if args.gateways:
        plan["gateways"] = args.gateways
    if args.workers:
        plan["workers"] = args.workers
    plan["keep"] = args.keep
    started = time.monotonic()
    r = run(plan)
    table = c.Table()
    add_rows(table, r)
    given = argv if argv is not None else sys.argv[1:]
    sec = r["security"]
    print(f"Command: `python -m tests.bench.bench_fleet {' '.join(given)}` ({time.monotonic() - started:.0f} s, "
          f"of which setup {r['setup_s']:.0f} s; {os.cpu_count()} CPUs, Python {platform.python_version()}; "
          f"load average at end {os.getloadavg()[0]:.2f})")
    print()
    print(f"{r['gateways']} gateways ({r['connected_gateways']} logged in, each its own client id and password; "
          f"ACL check: own tree PUBACK {sec['own_tree_puback']}, another gateway's tree PUBACK "
          f"{sec['other_tree_puback']}, wrong password CONNACK {sec['bad_password_connack']}), "
          f"{NODES_PER_GATEWAY} nodes each, window {WINDOW}, batch ≤ {BATCH}; one Mosquitto, one `denen bridge`, "
          f"InfluxDB 1.6.7. Bridge: {'; '.join(r['bridge_summary'])}")
    print()
    print(table.markdown())
    if args.json:
        c.write_json(args.json, {**r, "rows": table.rows})
    return 1 if r["loss"]["missing"] else 0


if __name__ == "__main__":
    sys.exit(main())
