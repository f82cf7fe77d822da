"""The MQTT connection of the gateway: broker, login, TLS and publishing limits."""

from __future__ import annotations

import ipaddress
import ssl
from typing import Annotated, Any, Literal, Protocol

from pydantic import Field, ValidationInfo, field_validator, model_validator

from agent.config.secrets import (
    SECRET_FILE,
    SecretEnv,
    WithSecrets,
    read_secret_file,
    secret_file,
    secret_source_problems,
    secret_text,
)
from agent.config.values import Found, _check_readable_file, _resolve_path
from drivers.settings import (
    N_,
    Count,
    Loc,
    Problem,
    Problems,
    Seconds,
    Section,
    Text,
    problem,
)


class TlsConfig(Section):
    """TLS settings for the MQTT connection. Every file named here must exist when the config is loaded."""

    ca_file: str | None = Field(
        default=None,
        description=N_("PEM file of the CA certificate(s) that signed the broker's certificate; null uses the "
        "system's trusted CAs."),
    )
    cert_file: str | None = Field(
        default=None, description=N_("PEM client certificate of this gateway (needs key_file). Optional.")
    )
    key_file: Annotated[str | None, SECRET_FILE] = Field(
        default=None,
        description=N_("PEM private key of the client certificate (needs cert_file). Optional. A secret: refused when "
        "other users can read it (chmod 600)."),
    )
    insecure: bool = Field(
        default=False,
        description=N_("Skip checking the broker's host name against its certificate. Only for tests; never in the "
        "field."),
    )

    @field_validator("ca_file", "cert_file", "key_file")
    @classmethod
    def _file_exists(cls, value: str | None, info: ValidationInfo) -> str | None:
        if value is None:
            return None
        path = _resolve_path(value, info)
        _check_readable_file(path, N_("TLS file"))
        return path

    @model_validator(mode="after")
    def _pairs(self) -> TlsConfig:
        if (self.cert_file is None) != (self.key_file is None):
            given, missing = ("cert_file", "key_file") if self.key_file is None else ("key_file", "cert_file")
            raise problem(
                N_("{given} is set but {missing} is not: a client certificate needs its private key"),
                N_("set both cert_file and key_file, or neither"),
                subloc=(given,), given=given, missing=missing,
            )
        return self


_Password = secret_text(hint=N_("put the {name} in quotes, or better use {name}_file"))
_PasswordFile = secret_file(N_("password file"))


#: An MQTT client id: 1 to 128 characters (MQTT 3.1.1 promises 23; Mosquitto takes far longer ones).
ClientId = Annotated[str, Field(min_length=1, max_length=128)]


class BrokerAddress(WithSecrets):
    """Where the MQTT broker is: the first keys of the gateway's, the bridge's and the console's ``mqtt:`` section
    (each adds its login, TLS and timing)."""

    host: str = Field(default="127.0.0.1", min_length=1, description=N_("Host name or IP address of the MQTT broker."))
    port: int = Field(
        default=1883, ge=1, le=65535, description=N_("TCP port of the MQTT broker (1883 plain, 8883 with TLS).")
    )


class MqttConfig(BrokerAddress):
    """Connection to the MQTT broker and publishing limits."""

    client_id: ClientId | None = Field(
        default=None, description=N_("MQTT client id; null means 'denen-<gateway.id>'. Must be unique on the broker.")
    )
    username: str | None = Field(default=None, min_length=1, description=N_("MQTT user name. Optional."))
    password: _Password = Field(
        default=None,
        description=N_("MQTT password (secret: never printed or logged). Prefer password_file or password_env; a "
        "config file holding it must not be readable by other users (chmod 600). Needs username."),
    )
    password_file: _PasswordFile = Field(
        default=None,
        description=N_("Path of a file holding the MQTT password (trailing newline ignored), read at every connect. "
        "Refused when other users can read it (chmod 600). Relative paths are resolved against the config file's "
        "directory."),
    )
    password_env: SecretEnv = Field(
        default=None,
        description=N_("Name of an environment variable holding the MQTT password, e.g. DENEN_MQTT_PASSWORD; read "
        "when the config is loaded and must be set then (systemd: EnvironmentFile=). Only one of password, "
        "password_file and password_env."),
    )
    tls: TlsConfig | Literal[False] | None = Field(
        default=None,
        description=N_("TLS settings. Required when host is not a loopback address (127.0.0.0/8, ::1, localhost); "
        "'false' says plain TCP on purpose (only on a trusted private network, e.g. a VPN), and the agent warns "
        "about it at every start."),
    )
    keepalive_s: int = Field(
        default=30,
        ge=5,
        le=3600,
        description=N_("MQTT keepalive in seconds (5..3600); the broker publishes the Last Will (offline status) "
        "after about 1.5 times this without contact."),
    )
    topic_prefix: str = Field(
        default="denen/v1",
        description=N_("First topic levels of everything this gateway publishes, e.g. denen/v1; no '+' or '#', no "
        "leading or trailing '/'."),
    )
    batch_max_readings: Count = Field(
        default=200, le=5000, description=N_("Most readings put in one MQTT message (1..5000).")
    )
    batch_max_kb: int = Field(
        default=256,
        ge=4,
        le=1024,
        description=N_("Largest MQTT message of readings, in KiB (4..1024): a batch closes when the next reading would "
        "make it larger (one reading always goes). The backend's broker (max_packet_size) and bridge "
        "(limits.max_message_kb) refuse larger messages, so this keeps every batch deliverable."),
    )
    inflight_window: Count = Field(
        default=8, le=100, description=N_("Most MQTT messages awaiting the broker's PUBACK at once (1..100).")
    )
    reconnect_min_s: Seconds = Field(
        default=1.0, le=3600,
        description=N_("First wait before reconnecting to the broker, in seconds; doubled after each failure."),
    )
    reconnect_max_s: Seconds = Field(
        default=60.0, le=86400,
        description=N_("Longest wait between reconnect attempts, in seconds; at least reconnect_min_s."),
    )

    @field_validator("topic_prefix")
    @classmethod
    def _topic_prefix(cls, value: str) -> str:
        hint = N_("use plain topic levels separated by '/', e.g. denen/v1")
        if not value:
            raise problem(N_("topic_prefix must not be empty"), hint)
        if "+" in value or "#" in value:
            raise problem(N_("topic_prefix '{value}' contains the MQTT wildcard '+' or '#'"), hint, value=value)
        if value.startswith("/") or value.endswith("/"):
            raise problem(N_("topic_prefix '{value}' must not start or end with '/'"), hint, value=value)
        if "//" in value:
            raise problem(N_("topic_prefix '{value}' has an empty topic level ('//')"), hint, value=value)
        if "\x00" in value or any(ch.isspace() for ch in value):
            raise problem(N_("topic_prefix must not contain spaces or control characters"), hint)
        return value

    @model_validator(mode="after")
    def _cross(self) -> MqttConfig:
        problems = [Problem(loc, msg, hint) for loc, msg, hint in secret_source_problems(self, "password")]
        given = [k for k in ("password", "password_file", "password_env") if getattr(self, k) is not None]
        if given and self.username is None:
            problems.append(
                Problem.of((given[0],), N_("a password is set but username is not"),
                           N_("MQTT sends a password only with a user name: set mqtt.username"))
            )
        if self.reconnect_max_s < self.reconnect_min_s:
            problems.append(
                Problem.of(
                    ("reconnect_max_s",),
                    N_("reconnect_max_s ({max} s) is shorter than reconnect_min_s ({min} s)"),
                    N_("reconnect_max_s must be at least reconnect_min_s"),
                    max=f"{self.reconnect_max_s:g}", min=f"{self.reconnect_min_s:g}",
                )
            )
        if self.tls is None and not is_loopback_host(self.host):
            problems.append(
                Problem.of(
                    ("host",),
                    N_("the broker {host} is not on this machine and tls is not set: the MQTT login and every reading "
                       "would cross the network in clear"),
                    N_("add tls: {{ca_file: <the CA of the broker's certificate>}} and port: 8883, or, only on a "
                       "trusted private network, tls: false"),
                    host=self.host,
                )
            )
        if problems:
            raise Problems(problems)
        self.keep_env_secrets("password")
        return self

    def tls_settings(self) -> TlsConfig | None:
        """The TLS settings, or None for plain TCP (``tls`` absent, which only a loopback host may have, or
        ``false``)."""
        return self.tls or None

    def password_value(self) -> str | None:
        """Return the MQTT password from ``password``, ``password_env`` or ``password_file``, or None when none is
        set.

        The variable was read when the config was loaded; the file is read on every call, so a rotated password
        is picked up on the next reconnect.

        Raises:
            ConfigError: the password file can no longer be read.
        """
        return self.secret_text("password", self._read_password_file)

    @staticmethod
    def _read_password_file(path: str) -> str:
        return read_secret_file(path, "mqtt.password_file", N_("the password file"))

    def effective_client_id(self, gateway_id: str) -> str:
        """Return ``client_id``, or ``denen-<gateway_id>`` when it is not set."""
        return self.client_id if self.client_id is not None else f"denen-{gateway_id}"


def is_loopback_host(host: str) -> bool:
    """Whether ``host`` names this machine: ``localhost``, 127.0.0.0/8 or ::1 (no name lookup)."""
    if host.lower().rstrip(".") == "localhost":
        return True
    try:
        address = ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return False
    # Python >= 3.13 calls ::ffff:127.0.0.1 loopback; the rule is 127.0.0.0/8 and ::1 on every version.
    return address.is_loopback and getattr(address, "ipv4_mapped", None) is None


class BrokerSettings(Protocol):
    """What :func:`mqtt_tls_warnings` reads of an MQTT section (the gateway's, the bridge's, the console's)."""

    host: str
    tls: TlsConfig | Literal[False] | None


def mqtt_tls_warnings(mqtt: BrokerSettings, in_clear: str,
                      hint: str = N_("use tls: {ca_file: ...} unless this is a trusted private network")
                      ) -> list[Found]:
    """Warnings for an MQTT section (at ``mqtt``) that checks no host name, or sends in clear to another host
    (``in_clear`` says what crosses the network)."""
    found: list[Found] = []
    if mqtt.tls and mqtt.tls.insecure:
        found.append(tls_insecure_warning(("mqtt", "tls", "insecure")))
    if mqtt.tls is False and not is_loopback_host(mqtt.host):
        found.append((("mqtt", "tls"), Text(N_("plain TCP to the broker {host}: {in_clear}"), host=mqtt.host,
                                            in_clear=in_clear if isinstance(in_clear, Text) else Text(in_clear)),
                      Text(hint)))
    return found


def tls_insecure_warning(loc: Loc) -> Found:
    """The warning for ``tls.insecure: true`` at ``loc``."""
    return (loc, Text(N_("TLS host name checking is off")),
            Text(N_("anyone on the path can impersonate the broker; set insecure: false in the field")))


class LoginSettings(Protocol):
    """What :func:`apply_login` reads of an MQTT section (the gateway's, the bridge's, the console's)."""

    username: str | None

    def password_value(self) -> str | None: ...

    def tls_settings(self) -> TlsConfig | None: ...


def apply_login(client: Any, mqtt: LoginSettings) -> None:
    """Set the login (user name and password, the password file read now) and the TLS settings (the broker's
    certificate always checked against ``ca_file`` or the system's CAs) of an MQTT section on a paho client."""
    password = mqtt.password_value()
    if mqtt.username is not None:
        client.username_pw_set(mqtt.username, password)
    tls = mqtt.tls_settings()
    if tls is not None:
        client.tls_set(ca_certs=tls.ca_file, certfile=tls.cert_file, keyfile=tls.key_file,
                       cert_reqs=ssl.CERT_REQUIRED)
        client.tls_insecure_set(tls.insecure)
