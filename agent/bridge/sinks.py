"""The two sinks: InfluxDB's v1 ``/write`` API (urllib3) and the v2 write API (influxdb-client).

A sink does one thing: send one body of line protocol and either return (the server accepted every line) or raise
one of the :mod:`agent.bridge.errors` classes. Neither retries by itself; :class:`agent.bridge.policy.WritePolicy`
decides what happens next, the same way for both.

Why two: InfluxDB 1.x before 1.8 (Debian's 1.6.7 among them) has no ``/api/v2/write`` (it answers 404), and
influxdb-client speaks only the v2 API. The v2 sink serves InfluxDB 2.x, 3.x, the 1.8+ compatibility endpoint and
VictoriaMetrics.
"""

from __future__ import annotations

import base64
import gzip as gzip_module
import logging
from typing import Any, Protocol
from urllib.parse import urlencode

import urllib3

from agent.bridge.config import SinkConfig
from agent.bridge.errors import (
    BridgeError,
    SinkError,
    SinkUnavailable,
    classify_response,
)
from agent.i18n import _

__all__ = ["Sink", "V1Sink", "V2Sink", "make_sink"]

log = logging.getLogger(__name__)


class Sink(Protocol):
    """Writes one body of line protocol (lines joined by ``\\n``, timestamps in µs)."""

    #: Where the writes go, for log lines (never a secret).
    target: str

    def write(self, body: bytes) -> None:
        """Send ``body``; return only when the server accepted all of it.

        Raises:
            SinkUnavailable, SinkRefused, SinkRejected: see :mod:`agent.bridge.errors`.
        """
        ...

    def close(self) -> None:
        """Release connections."""
        ...


def _connection_error(exc: BaseException, target: str) -> SinkUnavailable:
    """A failure without an HTTP answer, in words an operator understands."""
    text = str(exc)
    reason = getattr(exc, "reason", None)
    if isinstance(exc, urllib3.exceptions.NewConnectionError) or "Connection refused" in text:
        what = "connection refused (is the database running and listening?)"
    elif isinstance(exc, urllib3.exceptions.TimeoutError | TimeoutError):
        what = "timed out"
    elif isinstance(exc, urllib3.exceptions.SSLError):
        what = f"TLS error: {reason or text}"
    elif isinstance(exc, urllib3.exceptions.ProtocolError):
        what = "connection lost during the request"
    else:
        what = f"{type(exc).__name__}: {text}"
    return SinkUnavailable(f"{target}: {what}")


class V1Sink:
    """``POST <url>/write?db=<database>[&rp=<rp>]&precision=u`` with optional HTTP basic auth.

    Credentials travel in the ``Authorization`` header, never in the URL, so they cannot end up in a log line.
    """

    def __init__(self, config: SinkConfig) -> None:
        if config.database is None:
            raise ValueError("a v1 sink needs sink.database")
        self.config = config
        self.target = config.target()
        params = {"db": config.database, "precision": "u"}
        if config.rp:
            params["rp"] = config.rp
        self._url = f"{config.url}/write?{urlencode(params)}"
        timeout = urllib3.Timeout(connect=config.timeout_s, read=config.timeout_s)
        # One connection: the bridge writes one batch at a time, in order. retries=False: the policy retries.
        self._pool = urllib3.PoolManager(num_pools=1, maxsize=1, block=False, timeout=timeout, retries=False)

    def _headers(self) -> dict[str, str]:
        headers = {"Content-Type": "text/plain; charset=utf-8"}
        password = self.config.password_value()  # read per write, so a rotated password file is picked up
        if self.config.user is not None:
            cred = f"{self.config.user}:{password or ''}".encode()
            headers["Authorization"] = "Basic " + base64.b64encode(cred).decode()
        if self.config.gzip:
            headers["Content-Encoding"] = "gzip"
        return headers

    def write(self, body: bytes) -> None:
        data = gzip_module.compress(body, 1) if self.config.gzip else body
        try:
            resp = self._pool.request("POST", self._url, body=data, headers=self._headers(), retries=False,
                                      preload_content=True, redirect=False)
        except (urllib3.exceptions.HTTPError, OSError) as exc:
            raise _connection_error(exc, self.target) from exc
        error = classify_response(resp.status, resp.data or b"", resp.headers.get("Retry-After"), api="v1")
        if error is not None:
            raise error

    def close(self) -> None:
        self._pool.clear()


class V2Sink:
    """The v2 write API through influxdb-client (``SYNCHRONOUS`` mode: one call, one request, no retry of its own).

    influxdb-client raises ``ApiException`` for an HTTP error answer and lets urllib3's errors (a refused
    connection, a timeout) through unchanged; both are mapped to the bridge's errors here.
    """

    def __init__(self, config: SinkConfig) -> None:
        # Imported here: only the bridge needs influxdb-client (the "bridge" extra); the gateway never loads it.
        try:
            from influxdb_client import InfluxDBClient, WritePrecision  # noqa: PLC0415
            from influxdb_client.client.write_api import SYNCHRONOUS  # noqa: PLC0415
            from influxdb_client.rest import ApiException  # noqa: PLC0415
        except ImportError as exc:
            raise BridgeError(_("sink.type v2 needs influxdb-client, which is not installed ({error}): pip install "
                                "'denen-agent[bridge]' (or use sink.type v1 for InfluxDB 1.x)").format(
                error=exc.msg)) from exc

        self.config = config
        self.target = config.target()
        self._api_exception = ApiException
        self._precision = WritePrecision.US
        self._client = InfluxDBClient(url=config.url, token=config.token_value(), org=config.org,
                                      timeout=int(config.timeout_s * 1000), enable_gzip=config.gzip, retries=False)
        self._write_api = self._client.write_api(write_options=SYNCHRONOUS)

    def write(self, body: bytes) -> None:
        try:
            self._write_api.write(bucket=self.config.bucket, org=self.config.org, record=body,
                                  write_precision=self._precision)
        except self._api_exception as exc:
            headers: Any = exc.headers or {}
            error = classify_response(int(exc.status or 0), _body_bytes(exc.body), headers.get("Retry-After"),
                                      api="v2")
            if error is None:  # an ApiException with a 2xx status would be a client bug; never drop data on it
                error = SinkUnavailable(f"{self.target}: unexpected client error {exc.status}: {exc.reason}")
            raise error from exc
        except SinkError:
            raise
        except (urllib3.exceptions.HTTPError, OSError) as exc:
            raise _connection_error(exc, self.target) from exc

    def close(self) -> None:
        self._write_api.close()
        self._client.close()


def _body_bytes(body: object) -> bytes:
    if body is None:
        return b""
    if isinstance(body, bytes):
        return body
    return str(body).encode()


def make_sink(config: SinkConfig) -> Sink:
    """The sink for ``config.type``."""
    if config.type in ("ngsi-ld", "ngsi-v2"):
        from agent.bridge.ngsi import NgsiSink  # noqa: PLC0415 - only an NGSI sink needs it

        return NgsiSink(config)
    return V1Sink(config) if config.type == "v1" else V2Sink(config)
