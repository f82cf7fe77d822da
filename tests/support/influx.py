"""Real time-series servers for the bridge tests and benchmark, on free loopback ports with temporary data dirs.

* :class:`InfluxDB1` runs Debian's ``influxd`` (InfluxDB 1.6.7: the v1 ``/write`` and ``/query`` API, InfluxQL).
* :class:`VictoriaMetrics` runs ``victoria-metrics`` (accepts the InfluxDB v2 write API, queried with its own
  ``/api/v1/export``).

A missing binary raises :class:`ServerMissing` with the command that installs it; fixtures turn that into a test
failure, never a skip (``deploy/dev.sh test`` installs both). ``stop()`` / ``start()`` keep the data directory, so a
test can take the database away mid-stream and bring it back.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from agent.dev.devbroker import free_port

__all__ = ["InfluxDB1", "ServerMissing", "VictoriaMetrics"]


class ServerMissing(RuntimeError):
    """The server binary is not installed."""


def _binary(name: str, *fallbacks: str) -> str:
    found = shutil.which(name) or next((p for p in fallbacks if os.access(p, os.X_OK)), None)
    if found is None:
        raise ServerMissing(
            f"{name} is not installed; the bridge tests need a real server. Install it with: "
            f"apt-get install -y {'influxdb' if name == 'influxd' else name} (bash deploy/dev.sh test does this "
            f"when run as root)"
        )
    return found


class _Server:
    """A server process with a log file and an HTTP readiness probe."""

    name = "server"
    #: The readiness probe: a GET of this path answered with this status means the server takes requests.
    ready_path = "/"
    ready_status = 200

    def __init__(self, workdir: Path) -> None:
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.host = "127.0.0.1"
        self.port = free_port()
        self.log_path = self.workdir / f"{self.name}.log"
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def _command(self) -> list[str]:
        raise NotImplementedError

    def _ready(self) -> bool:
        try:
            status, _ = self._get(self.ready_path, timeout=0.5)
        except OSError:
            return False
        return status == self.ready_status

    def start(self, timeout: float = 15.0) -> None:
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(self._command(), stdout=log, stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL, cwd=self.workdir)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                tail = self.log_path.read_text(errors="replace")[-2000:]
                raise RuntimeError(f"{self.name} exited with {self.proc.returncode}:\n{tail}")
            if self._ready():
                return
            time.sleep(0.02)
        self.stop()
        raise RuntimeError(f"{self.name} did not answer on {self.url} within {timeout} s")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def _get(self, path: str, params: dict[str, str] | None = None, timeout: float = 10.0) -> tuple[int, bytes]:
        url = self.url + path + ("?" + urllib.parse.urlencode(params) if params else "")
        try:
            with urllib.request.urlopen(url, timeout=timeout) as resp:
                return resp.status, resp.read()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read()

    def _post(self, path: str, params: dict[str, str], body: bytes, timeout: float = 10.0,
              headers: dict[str, str] | None = None) -> tuple[int, bytes]:
        url = self.url + path + "?" + urllib.parse.urlencode(params)
        req = urllib.request.Request(url, data=body, method="POST", headers=headers or {})
        try:
            with urllib.request.urlopen(req, timeout=timeout) as resp:
                return resp.status, resp.read()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read()

    def __enter__(self) -> _Server:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


class InfluxDB1(_Server):
    """InfluxDB 1.x (Debian's 1.6.7) with its own config, data, WAL and meta dirs under ``workdir``.

    Args:
        workdir: folder for the config, the data and the log; kept across ``stop()`` / ``start()``.
        auth: enable HTTP authentication (create the admin with :meth:`create_admin` right after start).
    """

    name = "influxd"
    ready_path, ready_status = "/ping", 204

    def __init__(self, workdir: Path, *, auth: bool = False) -> None:
        self.binary = _binary("influxd", "/usr/bin/influxd")
        super().__init__(workdir)
        self.rpc_port = free_port()
        self.auth = auth
        self.admin: tuple[str, str] | None = None
        d = self.workdir
        # Monitoring, the subscriber service and continuous queries are off: they cost CPU on a 2-core machine and
        # add an _internal database the tests do not need. wal-fsync-delay 0 keeps the default durability.
        self.conf = d / "influxdb.conf"
        self.conf.write_text(f"""\
reporting-enabled = false
bind-address = "127.0.0.1:{self.rpc_port}"
[meta]
  dir = "{d / 'meta'}"
  logging-enabled = false
[data]
  dir = "{d / 'data'}"
  wal-dir = "{d / 'wal'}"
  index-version = "inmem"
  query-log-enabled = false
  trace-logging-enabled = false
[monitor]
  store-enabled = false
[subscriber]
  enabled = false
[continuous_queries]
  enabled = false
[http]
  bind-address = "127.0.0.1:{self.port}"
  auth-enabled = {'true' if auth else 'false'}
  log-enabled = false
  pprof-enabled = false
[logging]
  level = "warn"
  suppress-logo = true
""")

    def _command(self) -> list[str]:
        return [self.binary, "-config", str(self.conf)]

    # -- helpers for tests ------------------------------------------------------------------------------------
    def _auth_params(self) -> dict[str, str]:
        return {"u": self.admin[0], "p": self.admin[1]} if self.admin else {}

    def create_admin(self, user: str = "admin", password: str = "admin-secret") -> None:
        """Create the first admin user (allowed without credentials while no user exists)."""
        status, body = self._post("/query", {"q": f"CREATE USER \"{user}\" WITH PASSWORD '{password}' "
                                             "WITH ALL PRIVILEGES"}, b"")
        if status != 200:
            raise RuntimeError(f"CREATE USER failed: {status} {body!r}")
        self.admin = (user, password)

    def execute(self, q: str, db: str | None = None) -> dict[str, Any]:
        """Run an InfluxQL statement through POST /query; raises on an HTTP or statement error."""
        params = {"q": q, **self._auth_params()}
        if db:
            params["db"] = db
        status, body = self._post("/query", params, b"")
        doc = json.loads(body or b"{}")
        errors = [r["error"] for r in doc.get("results", []) if "error" in r]
        if status != 200 or errors or "error" in doc:
            raise RuntimeError(f"InfluxQL {q!r} failed: {status} {doc}")
        return doc

    def create_database(self, db: str) -> None:
        self.execute(f'CREATE DATABASE "{db}"')

    def query(self, q: str, db: str) -> list[dict[str, Any]]:
        """Run a SELECT/SHOW with ``epoch=u`` (timestamps as integer µs).

        Returns:
            One dict per series: ``{"name", "tags", "columns", "values"}`` (``tags`` is ``{}`` without GROUP BY);
            an empty list when nothing matched.
        """
        status, body = self._get("/query", {"q": q, "db": db, "epoch": "u", **self._auth_params()})
        doc = json.loads(body)
        if status != 200 or "error" in doc:
            raise RuntimeError(f"query {q!r} failed: {status} {doc}")
        out: list[dict[str, Any]] = []
        for result in doc["results"]:
            if "error" in result:
                raise RuntimeError(f"query {q!r} failed: {result['error']}")
            for s in result.get("series", []):
                out.append({"name": s["name"], "tags": s.get("tags", {}), "columns": s["columns"],
                            "values": s.get("values", [])})
        return out

    def rows(self, q: str, db: str) -> list[dict[str, Any]]:
        """Like :meth:`query`, flattened to one dict per row (columns plus the series' tags and ``_name``)."""
        out = []
        for s in self.query(q, db):
            for v in s["values"]:
                row = dict(zip(s["columns"], v, strict=True))
                row.update(s["tags"])
                row["_name"] = s["name"]
                out.append(row)
        return out

    def count(self, measurement: str, field: str, db: str, where: str = "") -> int:
        """Number of points of ``measurement`` that have ``field`` (0 when the measurement does not exist)."""
        rows = self.rows(f'SELECT count("{field}") FROM "{measurement}"{" WHERE " + where if where else ""}', db)
        return int(rows[0]["count"]) if rows else 0

    def write(self, lines: Iterable[str], db: str, precision: str = "u") -> tuple[int, bytes]:
        """Raw POST /write of line protocol; returns (status, body) without raising."""
        body = "\n".join(lines).encode()
        return self._post("/write", {"db": db, "precision": precision, **self._auth_params()}, body)


class VictoriaMetrics(_Server):
    """VictoriaMetrics single-node, data under ``workdir``.

    It takes the InfluxDB line protocol on ``/write`` and ``/api/v2/write`` and names each series
    ``<measurement>_<field>`` with the tags as labels. New samples become visible to ``/api/v1/export`` after its
    in-memory buffer is flushed (about 1-2 s); poll with :meth:`wait_export`.
    """

    name = "victoria-metrics"
    ready_path = "/health"

    def __init__(self, workdir: Path) -> None:
        self.binary = _binary("victoria-metrics", "/usr/bin/victoria-metrics")
        super().__init__(workdir)

    def _command(self) -> list[str]:
        return [
            self.binary,
            f"-storageDataPath={self.workdir / 'data'}",
            f"-httpListenAddr={self.host}:{self.port}",
            "-retentionPeriod=100y",  # test readings may carry any timestamp after 2020
            "-search.disableCache",
            "-loggerLevel=ERROR",
        ]

    def export(self, match: str) -> list[dict[str, Any]]:
        """All raw samples of the series matching the selector ``match`` (one dict per series from
        ``/api/v1/export``: ``metric`` labels, ``values``, ``timestamps`` in ms)."""
        status, body = self._get("/api/v1/export", {"match[]": match, "start": "0"})
        if status != 200:
            raise RuntimeError(f"export {match!r} failed: {status} {body!r}")
        return [json.loads(line) for line in body.splitlines() if line.strip()]

    def wait_export(self, match: str, predicate: Callable[[list[dict[str, Any]]], bool],
                    timeout: float = 15.0) -> list[dict[str, Any]]:
        """Poll :meth:`export` until ``predicate`` holds (VictoriaMetrics shows new data after ~1-2 s)."""
        deadline = time.monotonic() + timeout
        while True:
            self._get("/internal/force_flush")  # makes buffered samples searchable now (meant for tests)
            series = self.export(match)
            if predicate(series) or time.monotonic() > deadline:
                return series
            time.sleep(0.2)
