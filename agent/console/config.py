"""The console's configuration: one YAML file (``denen console -c config/console/console.yaml``).

It loads through the agent's generic loader (:func:`agent.config.parse_yaml_model`), so a problem is reported the
same way as in a gateway or bridge config: ``file:line:column: key: message (hint: ...)``, every problem at once.
The ``sink:`` and ``gateways:`` sections are the bridge's own (:class:`agent.bridge.config.SinkConfig`,
:class:`agent.bridge.config.GatewaysConfig`).

Relative paths are resolved against the directory of the config file. Each secret (``links.secret``,
``mqtt.password``, the sink's password or token) is given in a file (``*_file``) or an environment variable
(``*_env``); the MQTT and sink secrets may also be inline, in a file only its owner can read. The link secret is
read once, when the config is loaded, and must be at least 32 bytes.

``hooks:`` (optional) turns on ``POST /hooks/grafana``: Grafana's webhook contact point, authenticated by a bearer
token (``grafana_token_file`` / ``grafana_token_env``, read once at load, at least 32 bytes), which the console
answers by mailing a signed link per firing alert through ``mail:`` (required with ``hooks:``).
"""

from __future__ import annotations

import ipaddress
import os
import socket
from typing import Literal
from urllib.parse import urlsplit

from pydantic import Field, PrivateAttr, SecretStr, field_validator, model_validator

from agent.bridge.config import GatewaysConfig, MqttLoginConfig, SinkConfig
from agent.config import (
    ConfigSection,
    Found,
    LogConfig,
    config_problems,
    is_loopback_host,
)
from agent.config.loader import ModelFile
from agent.config.mqtt import ClientId, mqtt_tls_warnings
from agent.config.secrets import (
    SecretEnv,
    WithSecrets,
    read_once,
    read_secret_file,
    secret_file,
)
from agent.config.values import TopLevel
from drivers.settings import N_, Seconds, Text, problem

__all__ = ["ConsoleConfig", "HOOK_TOKEN_MIN_BYTES", "HooksConfig", "LINK_SECRET_MIN_BYTES", "MailConfig",
           "load_console_config", "parse_console_config"]

#: A link secret shorter than this is refused: HMAC-SHA256 is only as strong as its key.
LINK_SECRET_MIN_BYTES = 32
#: A webhook token shorter than this is refused: it is all that stands between the internet and the mail out.
HOOK_TOKEN_MIN_BYTES = 32


_LinkSecretFile = secret_file(N_("link secret file"))
_HookTokenFile = secret_file(N_("webhook token file"))
_SmtpPasswordFile = secret_file(N_("SMTP password file"))


class HttpConfig(ConfigSection):
    """Where the acknowledgement pages are served, and the address their links carry."""

    listen_host: str = Field(
        default="127.0.0.1",
        min_length=1,
        description=N_("Address the HTTP server binds to: 127.0.0.1 behind a reverse proxy on the same host, 0.0.0.0 "
        "inside a container behind the compose stack's TLS proxy. The server speaks plain HTTP; never expose it "
        "to the internet without the proxy."),
    )
    listen_port: int = Field(default=8380, ge=1, le=65535, description=N_("TCP port of the HTTP server."))
    public_url: str = Field(
        description=N_("Base URL people open, as the TLS proxy publishes it, e.g. https://ack.example.jp (links are "
        "<public_url>/a/<token>)."),
    )
    trusted_proxies: list[str] = Field(
        default_factory=list,
        description=N_("Addresses or networks (CIDR, e.g. 172.16.0.0/12 for a proxy reaching a container) of reverse "
        "proxies whose X-Forwarded-For is believed (its last address is taken as the person's address in the "
        "audit). Empty: the peer address is recorded."),
    )

    @field_validator("public_url")
    @classmethod
    def _url(cls, value: str) -> str:
        parts = urlsplit(value)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise problem(N_("public_url '{value}' is not an http:// or https:// URL"),
                          N_("e.g. https://ack.example.jp (what the TLS reverse proxy publishes)"), value=value)
        if parts.query or parts.fragment:
            raise problem(N_("public_url must not carry a query (?...) or fragment"))
        return value.rstrip("/")

    @field_validator("trusted_proxies")
    @classmethod
    def _proxies(cls, value: list[str]) -> list[str]:
        for item in value:
            try:
                ipaddress.ip_network(item, strict=False)
            except ValueError:
                raise problem(N_("'{item}' is not an IP address or network"),
                              N_("list the proxies' addresses, e.g. 127.0.0.1 or 172.16.0.0/12"), item=item) from None
        return value

    def is_trusted_proxy(self, peer: str) -> bool:
        """Whether ``peer`` (an IP address) is one of ``trusted_proxies``."""
        try:
            address = ipaddress.ip_address(peer)
        except ValueError:
            return False
        return any(address in ipaddress.ip_network(p, strict=False) for p in self.trusted_proxies)


def _read_long_secret(section: ConfigSection, name: str, where: str, what: str, min_bytes: int, make: str,
                      example: str, *, missing: str | None = None) -> tuple[str, str]:
    """The secret of ``section``'s ``<name>_file`` or ``<name>_env`` (exactly one given; ``where``: the section's
    key; ``what`` names it, marked with N_), at least ``min_bytes`` long (``make``: the command that makes one).
    Returns the text and the key it came from."""
    what_text = Text(what)
    needs = Text(missing) if missing else Text(N_("{where} needs {what}"), where=where, what=what_text)
    text, given = read_once(
        section, name, f"{where}.{name}_file",
        missing=(Text(N_("{needs}: {name}_file or {name}_env"), needs=needs, name=name), Text(example)),
        twice=(Text(N_("{what} is given twice"), what=what_text),
               Text(N_("keep {name}_file or {name}_env, not both"), name=name)))
    if len(text.encode()) < min_bytes:
        raise problem(N_("{what} is shorter than {min_bytes} bytes"), N_("make one with: {make}"), subloc=(given,),
                      what=what_text, min_bytes=min_bytes, make=make)
    return text, given


class LinksConfig(ConfigSection):
    """Signed links: the secret they are signed with and how long they are valid."""

    secret_file: _LinkSecretFile = Field(
        default=None,
        description=N_("Path of a file holding the link secret (at least 32 bytes, e.g. `openssl rand -base64 48`); "
        "refused when other users can read it. Changing it invalidates every link sent."),
    )
    secret_env: SecretEnv = Field(
        default=None,
        description=N_("Name of an environment variable holding the link secret (e.g. DENEN_CONSOLE_LINK_SECRET). "
        "Only one of secret_file and secret_env."),
    )
    ttl_s: int = Field(
        default=86400, ge=60, le=30 * 86400,
        description=N_("How long a link is valid, in seconds (default 24 h; 60 s .. 30 days)."),
    )

    _secret: SecretStr | None = PrivateAttr(default=None)

    @model_validator(mode="after")
    def _read(self) -> LinksConfig:
        text, _ = _read_long_secret(
            self, "secret", "links", N_("the link secret"), LINK_SECRET_MIN_BYTES, "openssl rand -base64 48",
            N_("e.g. secret_file: secrets/link-secret (openssl rand -base64 48 > it; chmod 600)"))
        self._secret = SecretStr(text)
        return self

    def secret(self) -> bytes:
        """The link secret's bytes (read when the config was loaded)."""
        assert self._secret is not None
        return self._secret.get_secret_value().encode()


class ConsoleMqttConfig(MqttLoginConfig):
    """The console's connection to the broker, with its own login (``denen-console`` in the shipped ACL)."""

    username: str | None = Field(
        default=None, min_length=1,
        description=N_("MQTT user name: denen-console for the service. Run `denen ack` with a config naming another "
        "login of the console role: the shipped broker binds the client id to the login, so a second connection "
        "with the same login disconnects the running service."),
    )
    client_id: ClientId | None = Field(
        default=None,
        description=N_("MQTT client id; null means the user name (the shipped broker uses the login as client id "
        "anyway), or 'denen-console-<host name>' without one."),
    )

    def effective_client_id(self) -> str:
        """``client_id``, else the user name, else ``denen-console-<host name>``."""
        return self.client_id or self.username or f"denen-console-{socket.gethostname()}"


class CommandsConfig(ConfigSection):
    """How commands are sent to a gateway until it answers."""

    retry_s: Seconds = Field(
        default=10.0, le=600,
        description=N_("Seconds between sends of a command the gateway has not answered yet (its session is clean, "
        "so a command sent while it was offline is lost)."),
    )
    give_up_s: Seconds = Field(
        default=600.0, le=86400,
        description=N_("Seconds after which an unanswered command is given up (result 'timeout' in the audit)."),
    )


class HooksConfig(ConfigSection):
    """Webhooks that ask the console to mail signed links: Grafana's webhook contact point."""

    grafana_token_file: _HookTokenFile = Field(
        default=None,
        description=N_("Path of a file holding the bearer token Grafana sends (Authorization: Bearer <token>; at least "
        "32 bytes, e.g. `openssl rand -hex 32`); refused when other users can read it."),
    )
    grafana_token_env: SecretEnv = Field(
        default=None,
        description=N_("Name of an environment variable holding that token (e.g. DENEN_CONSOLE_HOOK_TOKEN). Only one "
        "of grafana_token_file and grafana_token_env."),
    )
    max_body_bytes: int = Field(
        default=256 * 1024, ge=1024, le=16 * 1024 * 1024,
        description=N_("Largest webhook body accepted, in bytes (default 256 KiB); a larger one is answered 413 "
                       "unread."),
    )

    _token: SecretStr | None = PrivateAttr(default=None)

    @model_validator(mode="after")
    def _read(self) -> HooksConfig:
        text, given = _read_long_secret(
            self, "grafana_token", "hooks", N_("the webhook token"), HOOK_TOKEN_MIN_BYTES, "openssl rand -hex 32",
            N_("e.g. grafana_token_file: secrets/grafana-hook-token (openssl rand -hex 32 > it; chmod 600)"),
            missing=N_("hooks needs Grafana's token"))
        if any(ch.isspace() or not ch.isprintable() for ch in text):
            raise problem(N_("the webhook token holds spaces or control characters"), N_("make one with: {make}"),
                          subloc=(given,), make="openssl rand -hex 32")
        self._token = SecretStr(text)
        return self

    def grafana_token(self) -> bytes:
        """Grafana's bearer token (read when the config was loaded)."""
        assert self._token is not None
        return self._token.get_secret_value().encode()


class MailConfig(WithSecrets):
    """The SMTP server the console mails the links of Grafana's alerts through."""

    host: str = Field(min_length=1, description=N_("Host name or IP address of the SMTP server (relay)."))
    port: int = Field(default=587, ge=1, le=65535,
                      description=N_("TCP port: 587 with starttls, 465 with ssl, 25 none."))
    tls: Literal["starttls", "ssl", "none"] = Field(
        default="starttls",
        description=N_("starttls (upgrade after connecting, port 587), ssl (TLS from the start, port 465) or none "
        "(plain, only to a relay on this machine or a trusted private network). The server's certificate is "
        "checked against the system's CAs."),
    )
    sender: str = Field(alias="from", min_length=3, max_length=254,
                        description=N_("The From address, e.g. denen@example.jp."))
    to: list[str] = Field(min_length=1, max_length=100, description=N_("Recipients, e.g. [bousai@example.jp]."))
    username: str | None = Field(default=None, min_length=1, description=N_("SMTP login, if the server wants one."))
    password_file: _SmtpPasswordFile = Field(
        default=None, description=N_("Path of a file holding the SMTP password; refused when other users can read it."),
    )
    password_env: SecretEnv = Field(
        default=None, description=N_("Name of an environment variable holding the SMTP password."),
    )
    timeout_s: Seconds = Field(default=10.0, le=120,
                             description=N_("Seconds to wait for the SMTP server at each step."))

    @field_validator("sender")
    @classmethod
    def _sender(cls, value: str) -> str:
        return _address(value)

    @field_validator("to")
    @classmethod
    def _to(cls, value: list[str]) -> list[str]:
        return [_address(v) for v in value]

    @model_validator(mode="after")
    def _cross(self) -> MailConfig:
        problems: list[tuple[tuple[str, ...], str, str | None]] = []
        given = [k for k in ("password_file", "password_env") if getattr(self, k) is not None]
        if len(given) > 1:
            problems.append((("password_env",), Text(N_("give only one of password_file and password_env")), None))
        if given and self.username is None:
            problems.append(((given[0],), Text(N_("a password is set but username is not")),
                             Text(N_("set mail.username"))))
        if self.username is not None and not given:
            problems.append((("username",), Text(N_("username is set but no password")),
                             Text(N_("add password_file (or password_env)"))))
        if problems:
            raise config_problems(problems)
        self.keep_env_secrets("password")
        return self

    def password_value(self) -> str | None:
        """The SMTP password (``password_file`` read on every call), or None."""
        return self.secret_text("password", lambda path: read_secret_file(path, "mail.password_file"))


def _address(value: str) -> str:
    value = value.strip()
    local, at, domain = value.rpartition("@")
    if not at or not local or not domain or "." not in domain or any(
            ch.isspace() or not ch.isprintable() or ch in "<>,;\"" for ch in value):
        raise problem(N_("'{value}' is not a plain e-mail address"), N_("e.g. bousai@example.jp"), value=value)
    return value


class ConsoleConfig(TopLevel):
    """The whole console configuration (one YAML file)."""

    EMPTY_MEANS_DEFAULTS = ("mqtt", "commands", "log")

    http: HttpConfig = Field(description=N_("The HTTP server and the public base URL (required)."))
    links: LinksConfig = Field(description=N_("The link secret and lifetime (required)."))
    mqtt: ConsoleMqttConfig = Field(default_factory=ConsoleMqttConfig, description=N_("The MQTT broker and login."))
    commands: CommandsConfig = Field(default_factory=CommandsConfig, description=N_("Command retries."))
    sink: SinkConfig | None = Field(
        default=None,
        description=N_("Where the audit (alert_ack) is written: the bridge's sink section. Without it the audit goes "
        "to the log only."),
    )
    gateways: GatewaysConfig | None = Field(
        default=None, description=N_("The gateway registry (site and name of each gateway), as the bridge's."),
    )
    log: LogConfig = Field(default_factory=LogConfig, description=N_("Logging."))
    hooks: HooksConfig | None = Field(
        default=None,
        description=N_("Webhooks (POST /hooks/grafana): Grafana's alerts mailed with a signed link. Needs mail. "
        "Without it the route answers 404."),
    )
    mail: MailConfig | None = Field(default=None, description=N_("The SMTP server for the hooks' mails."))

    @model_validator(mode="after")
    def _hooks_need_mail(self) -> ConsoleConfig:
        if self.hooks is not None and self.mail is None:
            raise problem(N_("hooks needs a mail section: the links are mailed"),
                          N_("add mail: {host: ..., from: ..., to: [...]}"), subloc=("hooks",))
        return self


def _warnings(config: ConsoleConfig) -> list[Found]:
    found: list[Found] = []
    found.extend(mqtt_tls_warnings(config.mqtt, N_("the console's login travels in clear")))
    if urlsplit(config.http.public_url).scheme == "http" and not is_loopback_host(
            urlsplit(config.http.public_url).hostname or ""):
        found.append((("http", "public_url"),
                      Text(N_("links are plain http://: anyone on the path can read and use them")),
                      Text(N_("publish the console through the TLS reverse proxy (https://)"))))
    if config.mail is not None and config.mail.tls == "none" and not is_loopback_host(config.mail.host):
        found.append((("mail", "tls"), Text(N_("plain SMTP to {host}: the links (and any login) travel in clear"),
                                            host=config.mail.host),
                      Text(N_("use tls: starttls or ssl unless this is a trusted private network"))))
    if config.sink is None:
        found.append((("sink",), Text(N_("no sink: acknowledgements are audited in the log only")),
                      Text(N_("add the bridge's sink section so alert_ack points reach the dashboards"))))
    return found


#: The console's config file, for the generic loader.
CONSOLE_FILE: ModelFile[ConsoleConfig] = ModelFile(
    ConsoleConfig, warnings=_warnings, example="config/console/console.yaml", sections=("http", "links"),
    service_user="the console's user")


def parse_console_config(text: str, *, source: str = "<string>",
                         base_dir: str | os.PathLike[str] | None = None) -> ConsoleConfig:
    """Parse and validate console config text (secret files it names are checked).

    Raises:
        ConfigError: listing every problem found, each with file, line, column, key and hint.
    """
    return CONSOLE_FILE.parse(text, source=source, base_dir=base_dir)[0]


def load_console_config(path: str | os.PathLike[str]) -> ConsoleConfig:
    """Read, parse and validate a console config file (relative paths against its directory).

    Raises:
        ConfigError: listing every problem found, each with file, line, column, key and hint.
    """
    return CONSOLE_FILE.load(path)[0]
