"""The bridge's configuration: one YAML file (``denen bridge -c config/bridge/bridge.yaml``).

It loads through the agent's generic loader (:func:`agent.config.parse_yaml_model`), so a problem is reported the
same way as in a gateway config: ``file:line:column: key: message (hint: ...)``, every problem at once.

Relative paths (``mqtt.password_file``, ``mqtt.tls.*_file``, ``sink.password_file``, ``sink.token_file``,
``dead_letter.path``) are resolved against the directory of the config file.

Each secret (``mqtt.password``, ``sink.password``, ``sink.token``) is given inline, in a file (``*_file``) or in
an environment variable (``*_env``, read when the config is loaded), at most one of them. The loader refuses a
config file holding an inline secret, or a secret file, that other users can read, as it does for a gateway
config (``agent.config``).
"""

from __future__ import annotations

import os
import re
import socket
from typing import Literal
from urllib.parse import urlsplit

from pydantic import Field, ValidationInfo, field_validator, model_validator

from agent.bridge.deadletter import DEFAULT_MAX_BYTES, DEFAULT_MAX_ITEM_BYTES
from agent.bridge.dedupe_config import DedupeConfig
from agent.bridge.ngsi_config import NgsiConfig, ngsi_sink_problems
from agent.bridge.nodestate_config import NodeStateConfig
from agent.config import (
    ConfigSection,
    Found,
    LogConfig,
    TlsConfig,
    check_readable_file,
    config_problems,
    is_loopback_host,
    resolve_config_path,
    secret_source_problems,
)
from agent.config.loader import ModelFile
from agent.config.mqtt import BrokerAddress, ClientId, mqtt_tls_warnings
from agent.config.secrets import (
    SecretEnv,
    SecretText,
    WithSecrets,
    read_secret_file,
    secret_file,
)
from agent.config.values import TopLevel
from drivers.settings import N_, Count, Period, Seconds, Text, problem

__all__ = [
    "BatchConfig",
    "BridgeConfig",
    "BridgeMqttConfig",
    "DeadLetterConfig",
    "DedupeConfig",
    "GatewaysConfig",
    "HealthConfig",
    "LimitsConfig",
    "MqttLoginConfig",
    "SinkConfig",
    "load_bridge_config",
    "looks_like_bridge_config",
    "parse_bridge_config",
]

_NAME = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"

#: MQTT caps Receive Maximum at 65535 (a two-byte property).
RECEIVE_MAXIMUM_CAP = 65535


_PasswordFile = secret_file(N_("password file"))
#: ``password_file`` or ``token_file`` of a sink.
_SinkSecretFile = secret_file(N_("{name} file"))


class MqttLoginConfig(BrokerAddress):
    """A backend service's connection to the MQTT broker with its own login (the bridge, the console): host, TLS
    (required off this machine), the password given one of three ways, the topic prefix, reconnect timing."""

    username: str | None = Field(default=None, min_length=1, description=N_("MQTT user name of the bridge. Optional."))
    password: SecretText = Field(
        default=None,
        description=N_("MQTT password (secret: never printed or logged). Prefer password_file or password_env; a "
        "config file holding it must not be readable by other users (chmod 600)."),
    )
    password_file: _PasswordFile = Field(
        default=None,
        description=N_("Path of a file holding the MQTT password (trailing newline ignored); refused when other "
        "users can read it (chmod 600)."),
    )
    password_env: SecretEnv = Field(
        default=None,
        description=N_("Name of an environment variable holding the MQTT password (e.g. DENEN_BRIDGE_MQTT_PASSWORD), "
        "read when the config is loaded. Only one of password, password_file and password_env."),
    )
    tls: TlsConfig | Literal[False] | None = Field(
        default=None,
        description=N_("TLS settings. Required when host is not a loopback address; 'false' says plain TCP on "
        "purpose (a trusted private network), and the bridge warns about it at every start."),
    )
    client_id: ClientId | None = Field(
        default=None,
        description=N_("MQTT client id; the shipped broker makes the login the client id whatever is sent."),
    )
    topic_prefix: str = Field(
        default="denen/v1",
        description=N_("Topic prefix the gateways publish under (their mqtt.topic_prefix), e.g. denen/v1."),
    )
    keepalive_s: int = Field(default=30, ge=5, le=3600, description=N_("MQTT keepalive in seconds (5..3600)."))
    reconnect_min_s: Seconds = Field(
        default=1.0, le=3600, description=N_("First wait before reconnecting to the broker, in seconds.")
    )
    reconnect_max_s: Seconds = Field(
        default=30.0, le=86400, description=N_("Longest wait between reconnect attempts, in seconds.")
    )

    @field_validator("topic_prefix")
    @classmethod
    def _topic_prefix(cls, value: str) -> str:
        if not value or "+" in value or "#" in value or value.startswith(("/", "$")) or value.endswith("/") \
                or "//" in value or any(ch.isspace() or ch == "\x00" for ch in value):
            raise problem(N_("topic_prefix '{value}' is not a plain topic prefix"),
                          N_("use plain topic levels separated by '/', e.g. denen/v1 (the gateways' "
                             "mqtt.topic_prefix)"), value=value)
        return value

    @model_validator(mode="after")
    def _cross(self) -> MqttLoginConfig:
        problems = secret_source_problems(self, "password")
        given = [k for k in ("password", "password_file", "password_env") if getattr(self, k) is not None]
        if given and self.username is None:
            problems.append(((given[0],), Text(N_("a password is set but username is not")),
                             Text(N_("MQTT sends a password only with a user name: set mqtt.username"))))
        if self.reconnect_max_s < self.reconnect_min_s:
            problems.append((("reconnect_max_s",), Text(N_("reconnect_max_s is shorter than reconnect_min_s")),
                             Text(N_("reconnect_max_s must be at least reconnect_min_s"))))
        if self.tls is None and not is_loopback_host(self.host):
            problems.append((("host",), Text(N_("the broker {host} is not on this machine and tls is not set"),
                                             host=self.host),
                             Text(N_("add tls: {ca_file: <the CA of the broker's certificate>} (port 8883), or, "
                                     "only on a trusted private network, tls: false to send logins and readings in "
                                     "clear"))))
        if problems:
            raise config_problems(problems)
        self.keep_env_secrets("password")
        return self

    def tls_settings(self) -> TlsConfig | None:
        """The TLS settings, or None for plain TCP (``tls`` absent or ``false``)."""
        return self.tls or None

    def password_value(self) -> str | None:
        """The MQTT password from ``password``, ``password_env`` (read at load time) or ``password_file`` (read on
        every call), or None."""
        return self.secret_text("password", lambda path: read_secret_file(path, "mqtt.password_file"))


class BridgeMqttConfig(MqttLoginConfig):
    """Connection to the MQTT broker the gateways publish to, and the shared subscription."""

    client_id: ClientId | None = Field(
        default=None,
        description=N_("MQTT client id of this bridge process; null means 'denen-bridge-<host name>'. Each bridge "
        "process needs its own, and must keep it across restarts: the broker keeps the persistent session "
        "(with the messages not yet acknowledged) under this id."),
    )
    group: str = Field(
        default="denen-bridge",
        pattern=_NAME,
        description=N_("Shared subscription group: bridges with the same group share the messages "
        "($share/<group>/...), each message goes to one of them. Letters, digits, '_', '.', '-'."),
    )
    session_expiry_s: int = Field(
        default=7 * 86400,
        ge=60,
        le=0xFFFFFFFF,
        description=N_("How long the broker keeps this bridge's session, and the messages it has not acknowledged, "
        "while the bridge is away, in seconds (default 7 days). Longer than any outage you plan to survive."),
    )

    def effective_client_id(self) -> str:
        """``client_id``, or ``denen-bridge-<host name>`` when it is not set."""
        return self.client_id if self.client_id is not None else f"denen-bridge-{socket.gethostname()}"

    def subscriptions(self) -> tuple[str, ...]:
        """The shared subscriptions: reading batches, and the gateways' status, state and command result
        documents."""
        share = f"$share/{self.group}/{self.topic_prefix}"
        return f"{share}/+/readings/#", f"{share}/+/status", f"{share}/+/state", f"{share}/+/results"


_V1_ONLY = ("database", "rp", "user", "password", "password_file", "password_env")
_V2_ONLY = ("org", "bucket", "token", "token_file", "token_env")
_NGSI_OWN = ("token", "token_file", "token_env", "ngsi")
_NOT_NGSI = (*_V1_ONLY, "org", "bucket")
#: Per sink type: the keys it takes, and the keys of the other types it does not.
_SINK_KEYS = {"v1": (_V1_ONLY, _V2_ONLY), "v2": (_V2_ONLY, _V1_ONLY),
              "ngsi-ld": (_NGSI_OWN, _NOT_NGSI), "ngsi-v2": (_NGSI_OWN, _NOT_NGSI)}


class SinkConfig(WithSecrets):
    """Where the readings go: InfluxDB's v1 ``/write`` API, or the v2 write API through influxdb-client."""

    type: Literal["v1", "v2", "ngsi-ld", "ngsi-v2"] = Field(
        description=N_("v1: the InfluxDB 1.x /write API (database, rp, user, password). v2: the v2 write API "
        "through influxdb-client (org, bucket, token), for InfluxDB 2.x, 3.x, the 1.8+ compatibility API and "
        "VictoriaMetrics. ngsi-ld / ngsi-v2: an NGSI-LD or NGSI v2 (Orion) context broker (sink.ngsi; bearer token in "
        "token, token_file or token_env)."),
    )
    url: str = Field(
        default="http://127.0.0.1:8086",
        description=N_("Base URL of the database, e.g. http://influxdb:8086 (https:// for TLS)."),
    )
    timeout_s: Seconds = Field(
        default=10.0, le=600, description=N_("Timeout of one write request (connect and read), in seconds.")
    )
    # v1
    database: str | None = Field(default=None, min_length=1, description=N_("v1: database name (required for v1)."))
    rp: str | None = Field(
        default=None, min_length=1, description=N_("v1: retention policy; null writes to the database's default.")
    )
    user: str | None = Field(default=None, min_length=1, description=N_("v1: user name, when auth is enabled."))
    password: SecretText = Field(
        default=None,
        description=N_("v1: password (secret: never printed or logged). Prefer password_file or password_env; a "
        "config file holding it must not be readable by other users (chmod 600)."),
    )
    password_file: _SinkSecretFile = Field(
        default=None, description=N_("v1: path of a file holding the password; refused when other users can read it.")
    )
    password_env: SecretEnv = Field(
        default=None,
        description=N_("v1: name of an environment variable holding the password (e.g. DENEN_INFLUX_PASSWORD), read "
        "when the config is loaded."),
    )
    # v2
    org: str | None = Field(default=None, min_length=1, description=N_("v2: organisation (required for v2)."))
    bucket: str | None = Field(
        default=None, min_length=1, description=N_("v2: bucket (required for v2); on the 1.8+ API 'database/rp'.")
    )
    token: SecretText = Field(
        default=None,
        description=N_("v2: API token (secret: never printed or logged); on the 1.8+ API 'user:password'. Prefer "
        "token_file or token_env; a config file holding it must not be readable by other users (chmod 600)."),
    )
    token_file: _SinkSecretFile = Field(
        default=None, description=N_("v2: path of a file holding the token; refused when other users can read it.")
    )
    token_env: SecretEnv = Field(
        default=None,
        description=N_("v2: name of an environment variable holding the token (e.g. DENEN_INFLUX_TOKEN), read when "
        "the config is loaded."),
    )
    gzip: bool = Field(default=False, description=N_("Compress request bodies (worth it over slow links)."))
    retry_min_s: Seconds = Field(
        default=0.5, le=600, description=N_("First wait before retrying a failed write, in seconds; doubled "
        "after each failure.")
    )
    retry_max_s: Seconds = Field(
        default=30.0, le=3600, description=N_("Longest wait between write retries, in seconds.")
    )
    ngsi: NgsiConfig | None = Field(
        default=None, description=N_("ngsi-ld / ngsi-v2: the context broker's settings (defaults when absent).")
    )

    @field_validator("url")
    @classmethod
    def _url(cls, value: str) -> str:
        parts = urlsplit(value)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise problem(N_("url '{value}' is not an http:// or https:// URL"),
                          N_("e.g. http://127.0.0.1:8086 (the database's HTTP API, without /write)"), value=value)
        if parts.query or parts.fragment:
            raise problem(N_("url must not carry a query (?...) or fragment"),
                          N_("give database/rp/bucket/org as their own keys"))
        return value.rstrip("/")

    @model_validator(mode="after")
    def _fits_type(self) -> SinkConfig:
        problems: list[tuple[tuple[str | int, ...], str, str | None]] = []
        own, other = _SINK_KEYS[self.type]
        for key in other:
            if getattr(self, key) is not None:
                problems.append(((key,), Text(N_("'{key}' is not used by a {type} sink"), key=key, type=self.type),
                                 Text(N_("a {type} sink takes: url, timeout_s, {keys}; remove '{key}' or change "
                                         "type"), type=self.type, keys=", ".join(own), key=key)))
        required = {"v1": ("database",), "v2": ("org", "bucket")}.get(self.type, ())
        for key in required:
            if getattr(self, key) is None:
                problems.append(((key,), Text(N_("a {type} sink needs '{key}'"), type=self.type, key=key), None))
        if self.type == "v2" and self.token is None and self.token_file is None and self.token_env is None:
            problems.append((("token",), Text(N_("a v2 sink needs token, token_file or token_env")),
                             Text(N_("an InfluxDB API token with write access to the bucket ('user:password' for "
                                     "the 1.8 compatibility API)"))))
        problems.extend(ngsi_sink_problems(self))
        problems.extend(secret_source_problems(self, "password", "token"))
        has_password = any(getattr(self, k) is not None for k in ("password", "password_file", "password_env"))
        if self.type == "v1" and has_password and self.user is None:
            problems.append((("user",), Text(N_("a password is set but user is not")), Text(N_("set sink.user"))))
        if self.retry_max_s < self.retry_min_s:
            problems.append((("retry_max_s",), Text(N_("retry_max_s is shorter than retry_min_s")),
                             Text(N_("retry_max_s must be at least retry_min_s"))))
        if problems:
            raise config_problems(problems)
        self.keep_env_secrets("password", "token")
        return self

    def password_value(self) -> str | None:
        """v1 password from ``password``, ``password_env`` (read at load time) or ``password_file`` (read on every
        call), or None."""
        return self.secret_text("password", lambda path: read_secret_file(path, "sink.password_file"))

    def token_value(self) -> str | None:
        """v2 token from ``token``, ``token_env`` (read at load time) or ``token_file`` (read on every call), or
        None."""
        return self.secret_text("token", lambda path: read_secret_file(path, "sink.token_file"))

    def target(self) -> str:
        """Where writes go, for log lines (never a secret)."""
        if self.type == "v1":
            return f"{self.url} database {self.database}" + (f" rp {self.rp}" if self.rp else "")
        if self.type != "v2":
            return f"{self.url} ({self.type})"
        return f"{self.url} org {self.org} bucket {self.bucket}"


class BatchConfig(ConfigSection):
    """How readings are grouped into writes."""

    max_lines: Count = Field(
        default=5000, le=1_000_000,
        description=N_("A write is sent when it holds this many lines (points; a reading makes 2 or 3)..."),
    )
    max_messages: Count = Field(
        default=500, le=RECEIVE_MAXIMUM_CAP // 2,
        description=N_("...or this many MQTT messages (1..32767). The bridge asks the broker for at most twice this "
        "many unacknowledged messages at once (MQTT Receive Maximum): one batch being written and the next one "
        "filling. It bounds the bridge's memory while the database is down (each message holds up to the "
        "gateways' mqtt.batch_max_readings readings)."),
    )
    max_wait_ms: int = Field(
        default=200,
        ge=1,
        le=60000,
        description=N_("...or when its first message has waited this long, in milliseconds (1..60000). This is the "
        "most an SOS waits in the bridge when the database is healthy."),
    )

    @property
    def receive_maximum(self) -> int:
        """MQTT Receive Maximum sent in CONNECT: one batch being written plus one being filled."""
        return min(RECEIVE_MAXIMUM_CAP, 2 * self.max_messages)


class DeadLetterConfig(ConfigSection):
    """The dead-letter store: what can never be written, kept with the reason."""

    path: str = Field(
        default="/var/lib/denen/bridge-dead-letter.db",
        min_length=1,
        description=N_("SQLite file for payloads, readings and lines that can never be written (not JSON, not our "
        "schema, timestamp before 2020, refused by the database), each with the reason and the server's error. "
        "Its directory is created if missing."),
    )

    max_mb: float = Field(
        default=DEFAULT_MAX_BYTES / 2**20,
        gt=0,
        le=1024 * 1024,
        description=N_("Content the store holds at most, in MiB (default 256); past it the oldest items are removed, "
        "counted and logged. A hostile gateway cannot fill the disk through it."),
    )
    max_item_kb: float = Field(
        default=DEFAULT_MAX_ITEM_BYTES / 1024,
        gt=0,
        le=1024 * 1024,
        description=N_("Content kept of one item at most, in KiB (default 1024); the rest is cut and the item's "
        "detail says how large it was."),
    )

    @field_validator("path")
    @classmethod
    def _resolve(cls, value: str, info: ValidationInfo) -> str:
        return resolve_config_path(value, info)

    @property
    def max_bytes(self) -> int:
        return int(self.max_mb * 2**20)

    @property
    def max_item_bytes(self) -> int:
        return int(self.max_item_kb * 1024)


class GatewaysConfig(ConfigSection):
    """The gateway registry: which site each gateway belongs to, kept on the backend (never taken from a payload)."""

    file: str = Field(
        min_length=1,
        description=N_("YAML file mapping each gateway id to its site (and optional name and municipality), e.g. "
        "deploy/backend/gateways.yaml. Read at start and again when it changes."),
    )
    unknown: Literal["accept", "refuse"] = Field(
        default="accept",
        description=N_("A gateway not in the file: accept writes its readings with site 'unknown' (counted and "
        "logged, so a new gateway is seen before it is registered); refuse puts them in the dead-letter store "
        "(reason unknown_gateway)."),
    )

    @field_validator("file")
    @classmethod
    def _resolve(cls, value: str, info: ValidationInfo) -> str:
        path = resolve_config_path(value, info)
        check_readable_file(path, N_("gateway registry"))
        return path


class LimitsConfig(ConfigSection):
    """Bounds on what one gateway's message can make the bridge do."""

    max_message_kb: float = Field(
        default=1024,
        gt=0,
        le=256 * 1024,
        description=N_("Largest MQTT message taken, in KiB (default 1024; a gateway's largest batch is far smaller). "
        "Larger messages are dead-lettered (reason too_large, content cut) and the broker is asked not to send "
        "them (MQTT v5 Maximum Packet Size)."),
    )
    max_future_s: Seconds = Field(
        default=300, le=366 * 86400,
        description=N_("A reading or a gateway document (status, state, command result) stamped more than this many "
        "seconds after the bridge's clock is dead-lettered (reason timestamp_in_future), so a wrong clock cannot "
        "pin a dashboard's last value."),
    )

    max_inflight_mb: float = Field(
        default=1024,
        gt=0,
        le=1024 * 1024,
        description=N_("Memory the messages in flight may take at most, in MiB: Receive Maximum (2 x "
        "batch.max_messages) times max_message_kb must fit (checked at load). Reached only while the database is "
        "down and gateways send messages of the largest size."),
    )

    @property
    def max_message_bytes(self) -> int:
        return int(self.max_message_kb * 1024)


class HealthConfig(ConfigSection):
    """The bridge's report on itself: ``bridge_health`` points in its database and the systemd status line."""

    enabled: bool = Field(
        default=True,
        description=N_("Write bridge_health points (readings written, dead letters by reason, lag, gateways heard, "
        "broker and database state) to the sink every interval_s; the fleet dashboard's bridge row shows them."),
    )
    interval_s: Period = Field(
        default=60.0, le=3600,
        description=N_("Seconds between bridge_health points (1..3600). A point that cannot be written (database "
        "failing) is dropped and counted, never queued."),
    )
    status_interval_s: Period = Field(
        default=5.0, le=600,
        description=N_("Seconds between updates of the systemd status line (STATUS=, shown by systemctl status)."),
    )
    max_gateways: Count = Field(
        default=1000, le=100_000,
        description=N_("Gateways reported per interval at most (one point each, only gateways heard in the "
        "interval); more are counted in the field gateways_over_limit."),
    )


class BridgeConfig(TopLevel):
    """The whole bridge configuration (one YAML file)."""

    EMPTY_MEANS_DEFAULTS = ("mqtt", "batch", "dead_letter", "limits", "health", "log")

    mqtt: BridgeMqttConfig = Field(default_factory=BridgeMqttConfig,
                                   description=N_("The MQTT broker and subscription."))
    sink: SinkConfig = Field(description=N_("The database the readings are written to (required)."))
    batch: BatchConfig = Field(default_factory=BatchConfig, description=N_("Batching of writes."))
    dead_letter: DeadLetterConfig = Field(default_factory=DeadLetterConfig, description=N_("The dead-letter store."))
    gateways: GatewaysConfig | None = Field(
        default=None,
        description=N_("The gateway registry (site of each gateway). Without it every gateway's site is 'unknown'."),
    )
    limits: LimitsConfig = Field(default_factory=LimitsConfig, description=N_("Bounds on hostile input."))
    health: HealthConfig = Field(default_factory=HealthConfig, description=N_("The bridge's own health points."))
    node_state: NodeStateConfig = Field(
        default_factory=lambda: NodeStateConfig(),
        description=N_("Each node's latest state, retained on the broker for consumers (Node-RED, dashboards)."),
    )
    dedupe: DedupeConfig | None = Field(
        default=None,
        description=N_("Merge the copies of a node frame heard by several gateways into one point (plus one node_link "
        "point per reception), across every bridge sharing the same redis. Off without this section."),
    )
    log: LogConfig = Field(default_factory=LogConfig, description=N_("Logging."))

    @model_validator(mode="after")
    def _memory_bound(self) -> BridgeConfig:
        worst = self.batch.receive_maximum * self.limits.max_message_bytes
        if worst > self.limits.max_inflight_mb * 2**20:
            raise problem(N_("{count} messages in flight (2 x batch.max_messages) of up to {size} KiB can take "
                             "{worst} MiB, more than limits.max_inflight_mb ({limit})"),
                          N_("lower batch.max_messages or limits.max_message_kb, or raise limits.max_inflight_mb"),
                          subloc=("limits", "max_inflight_mb"), count=self.batch.receive_maximum,
                          size=f"{self.limits.max_message_kb:g}", worst=f"{worst / 2**20:.0f}",
                          limit=f"{self.limits.max_inflight_mb:g}")
        return self



def _warnings(config: BridgeConfig) -> list[Found]:
    found: list[Found] = []
    found.extend(mqtt_tls_warnings(config.mqtt, N_("the bridge's login and every reading travel in clear")))

    # Who can read the secrets is checked by the loader (agent.config), as for a gateway config.
    if config.mqtt.client_id is None:
        found.append((("mqtt",), Text(N_("mqtt.client_id is not set, so it is taken from the host name")),
                      Text(N_("set a stable, unique client_id per bridge process: the broker keeps unacknowledged "
                              "messages in the session of that id"))))
    sink = config.sink
    has_secret = any(getattr(sink, k) is not None for k in ("password", "password_file", "password_env", "token",
                                                            "token_file", "token_env"))
    if urlsplit(sink.url).scheme == "http" and has_secret:
        host = urlsplit(sink.url).hostname or ""
        if host not in ("127.0.0.1", "localhost", "::1"):
            found.append((("sink", "url"), Text(N_("credentials are sent over plain http to another host")),
                          Text(N_("use https:// unless the database is on a private network"))))
    return found


#: The bridge's config file, for the generic loader.
BRIDGE_FILE: ModelFile[BridgeConfig] = ModelFile(
    BridgeConfig, warnings=_warnings, example="config/bridge/bridge.yaml", sections=("mqtt", "sink"),
    service_user="the bridge's user")


_TOP_KEY_RE = re.compile(r"^([A-Za-z_][A-Za-z0-9_]*)\s*:", re.M)


def looks_like_bridge_config(text: str) -> bool:
    """Whether YAML text is a bridge config rather than a gateway config: a top-level ``sink:`` and no
    ``gateway:`` (so ``denen config validate config/*.yaml`` checks each file with the right schema)."""
    keys = set(_TOP_KEY_RE.findall(text))
    return "sink" in keys and "gateway" not in keys


def parse_bridge_config(text: str, *, source: str = "<string>",
                        base_dir: str | os.PathLike[str] | None = None) -> BridgeConfig:
    """Parse and validate bridge config text (from no file, so there is no file mode to check for inline secrets;
    secret files it names are checked).

    Raises:
        ConfigError: listing every problem found, each with file, line, column, key and hint.
    """
    return BRIDGE_FILE.parse(text, source=source, base_dir=base_dir)[0]


def load_bridge_config(path: str | os.PathLike[str]) -> BridgeConfig:
    """Read, parse and validate a bridge config file (relative paths are resolved against its directory).

    An inline secret in a file other users can read, or a secret file they can read, is refused.

    Raises:
        ConfigError: listing every problem found, each with file, line, column, key and hint.
    """
    return BRIDGE_FILE.load(path)[0]
