"""A local NGSI-LD / NGSI v2 context broker for tests: real HTTP on loopback that checks every request against the
API's rules and keeps what a broker would keep.

No FIWARE broker (Orion-LD, Scorpio, Stellio, Orion) can run on these machines, so this stands in for one. It
checks what a broker checks of a batch upsert (ETSI GS CIM 009 §5.6.8 / §6.15: ``POST
/ngsi-ld/v1/entityOperations/upsert``) or an NGSI v2 ``POST /v2/op/update``:

* the path, the method, ``options=update``;
* the content type: ``application/ld+json`` with an ``@context`` in every entity and no JSON-LD ``Link`` header,
  or ``application/json`` with exactly one ``Link`` header ``rel="http://www.w3.org/ns/json-ld#context"``
  ``type="application/ld+json"`` and no ``@context`` in the body;
* ``NGSILD-Tenant`` (``Fiware-Service``, ``Fiware-ServicePath`` for v2); a missing or wrong bearer token is
  answered 401;
* the body: a non-empty JSON array of at most ``max_batch`` entities, each id an absolute URI named once in the
  request, a type, and attributes of type Property (``value``), Relationship (``object``, a URI) or GeoProperty
  (a GeoJSON geometry with WGS84 coordinates); ``observedAt`` ISO 8601 UTC; ``unitCode`` a UN/CEFACT code; no
  null anywhere.

A request that breaks a rule is answered 400 BadRequestData and recorded in :attr:`NgsiServer.violations` (a test
asserts there are none). Faults are injected per request: :meth:`NgsiServer.fail`, :meth:`NgsiServer.stall`,
:meth:`NgsiServer.refuse_entities`. What the broker stores: :attr:`NgsiServer.entities` (per tenant; upsert with
``options=update`` merges attributes) and :attr:`NgsiServer.history` (every attribute instance by entity,
attribute and ``observedAt``, as a broker's temporal store keeps them).
"""

from __future__ import annotations

import datetime as dt
import json
import re
import threading
import time
from collections import Counter
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Self

__all__ = ["NgsiServer"]

_ISO_UTC_RE = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(?:\.\d{1,9})?Z\Z")
_UNIT_RE = re.compile(r"[A-Z0-9]{2,3}\Z")
_TENANT_RE = re.compile(r"[a-z0-9_][a-z0-9_-]{0,49}\Z")
_LINK_RE = re.compile(r'<([^>]+)>\s*;\s*rel="http://www\.w3\.org/ns/json-ld#context"\s*;\s*'
                      r'type="application/ld\+json"\Z')
_ATTR_NAME_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,255}\Z")
_PROBLEM = "https://uri.etsi.org/ngsi-ld/errors/"
UPSERT = "/ngsi-ld/v1/entityOperations/upsert"
V2_UPDATE = "/v2/op/update"


class _Bad(Exception):
    pass


class NgsiServer:
    """The broker on ``127.0.0.1:<free port>``; ``url`` is its base URL.

    Args:
        mode: ``"ld"`` (NGSI-LD) or ``"v2"`` (NGSI v2).
        token: the bearer token it requires (None: no auth).
        max_batch: entities per request at most (a broker's batch limit).
    """

    def __init__(self, mode: str = "ld", *, token: str | None = "test-token", max_batch: int = 100) -> None:
        self.mode = mode
        self.token = token
        self.max_batch = max_batch
        self.lock = threading.Lock()
        self.entities: dict[str | None, dict[str, dict[str, Any]]] = {}
        self.history: dict[tuple[str | None, str, str, str], Any] = {}
        self.instances: Counter[tuple[str | None, str, str, str]] = Counter()
        self.violations: list[str] = []
        self.requests: list[dict[str, Any]] = []
        self.answers: Counter[int] = Counter()
        self._faults: list[Callable[[list[dict[str, Any]]], tuple[int, Any] | None]] = []
        self._refusals: list[tuple[Callable[[dict[str, Any]], bool], int, str, str]] = []
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length)
                status, answer, delay = server._handle(self.command, self.path, self.headers, body)
                if delay:
                    time.sleep(delay)
                data = b"" if answer is None else json.dumps(answer).encode()
                try:
                    self.send_response(status)
                    if data:
                        self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                except OSError:
                    pass  # the client gave up (a stalled answer): what a broker sees too

            do_GET = do_PUT = do_PATCH = do_DELETE = do_POST

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._httpd.server_address[1]}"
        self._thread = threading.Thread(target=self._httpd.serve_forever, name="ngsi-server", daemon=True)

    def start(self) -> Self:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(5)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- faults -----------------------------------------------------------------------------------------------
    def fail(self, count: int, status: int = 503, *, retry_after: float | None = None) -> None:
        """Answer the next ``count`` requests ``status`` with a ProblemDetails, storing nothing."""
        left = [count]

        def fault(_: list[dict[str, Any]]) -> tuple[int, Any] | None:
            if left[0] <= 0:
                return None
            left[0] -= 1
            kind = {503: "LdContextNotAvailable", 409: "AlreadyExists", 400: "BadRequestData"}.get(status,
                                                                                                     "InternalError")
            return status, {"type": _PROBLEM + kind, "title": f"injected {status}", "detail": "test fault"}

        with self.lock:
            self._faults.append(fault)

    def stall(self, count: int, seconds: float) -> threading.Event:
        """Store the next ``count`` requests, then answer each only after ``seconds`` (past the client's timeout:
        the client cannot know the write went through). The event returned is set once the last of them arrived."""
        left = [count]
        taken = threading.Event()

        def fault(_: list[dict[str, Any]]) -> tuple[int, Any] | None:
            if left[0] <= 0:
                return None
            left[0] -= 1
            if left[0] == 0:
                taken.set()
            return -1, seconds

        with self.lock:
            self._faults.append(fault)
        return taken

    def refuse_requests(self, match: Callable[[dict[str, Any]], bool], status: int = 400) -> None:
        """Refuse a whole request (``status``, nothing stored) whenever one of its entities ``match`` says yes to
        (for ever): a broker that judges a batch as one."""

        def fault(entities: list[dict[str, Any]]) -> tuple[int, Any] | None:
            bad = next((e for e in entities if match(e)), None)
            if bad is None:
                return None
            return status, self._error(status, "BadRequestData", f"refused by the test broker: {bad['id']}")

        with self.lock:
            self._faults.append(fault)

    def refuse_entities(self, match: Callable[[dict[str, Any]], bool], status: int = 400,
                        kind: str = "BadRequestData", detail: str = "refused by the test broker") -> None:
        """Refuse, in a 207 BatchOperationResult, every entity ``match`` says yes to (for ever)."""
        with self.lock:
            self._refusals.append((match, status, kind, detail))

    # -- reading what is stored -------------------------------------------------------------------------------
    def entity(self, entity_id: str, tenant: str | None = None) -> dict[str, Any] | None:
        with self.lock:
            return json.loads(json.dumps(self.entities.get(tenant, {}).get(entity_id)))

    def ids(self, tenant: str | None = None, type_: str | None = None) -> set[str]:
        with self.lock:
            return {i for i, e in self.entities.get(tenant, {}).items() if type_ is None or e["type"] == type_}

    def observations(self, attr: str, tenant: str | None = None) -> dict[tuple[str, str], Any]:
        """(entity id, observedAt) -> value of every instance of ``attr`` stored."""
        with self.lock:
            return {(i, at): v for (t, i, a, at), v in self.history.items() if t == tenant and a == attr}

    # -- one request ------------------------------------------------------------------------------------------
    def _handle(self, method: str, path: str, headers: Any, body: bytes) -> tuple[int, Any, float]:
        if self.token is not None and headers.get("Authorization") != f"Bearer {self.token}":
            with self.lock:
                self.answers[401] += 1
            return 401, self._error(401, "Unauthorized", "no valid bearer token"), 0.0
        try:
            tenant, entities = self._checked(method, path, headers, body)
        except _Bad as exc:
            with self.lock:
                self.violations.append(str(exc))
                self.answers[400] += 1
            return 400, self._error(400, "BadRequestData", str(exc)), 0.0
        with self.lock:
            self.requests.append({"tenant": tenant, "ids": [e["id"] for e in entities], "headers": dict(headers)})
            delay = 0.0
            for fault in self._faults:
                hit = fault(entities)
                if hit is None:
                    continue
                if hit[0] == -1:
                    delay = hit[1]
                    break
                self.answers[hit[0]] += 1
                return hit[0], hit[1], 0.0
            status, answer = self._store(tenant, entities)
            self.answers[status] += 1
        return status, answer, delay

    def _error(self, status: int, kind: str, detail: str) -> dict[str, Any]:
        if self.mode == "v2":
            return {"error": "BadRequest" if status == 400 else kind, "description": detail}
        return {"type": _PROBLEM + kind, "title": kind, "detail": detail}

    def _store(self, tenant: str | None, entities: list[dict[str, Any]]) -> tuple[int, Any]:
        store = self.entities.setdefault(tenant, {})
        created, success, errors = [], [], []
        for e in entities:
            refusal = next((r for r in self._refusals if r[0](e)), None)
            if refusal is not None:
                _, status, kind, detail = refusal
                errors.append({"entityId": e["id"], "error": {"type": _PROBLEM + kind, "title": kind,
                                                              "status": status, "detail": detail}})
                continue
            attrs = {k: v for k, v in e.items() if k not in ("id", "type", "@context")}
            if e["id"] not in store:
                store[e["id"]] = {"id": e["id"], "type": e["type"]}
                created.append(e["id"])
            elif store[e["id"]]["type"] != e["type"]:
                errors.append({"entityId": e["id"], "error": {"type": _PROBLEM + "BadRequestData", "status": 400,
                                                              "title": "type mismatch", "detail": e["type"]}})
                continue
            store[e["id"]].update(attrs)
            success.append(e["id"])
            for name, a in attrs.items():
                at = a.get("observedAt") or (a.get("metadata", {}).get("TimeInstant", {}).get("value"))
                if at is not None:
                    key = (tenant, e["id"], name, at)
                    value = a.get("value", a.get("object"))
                    if key in self.history and self.history[key] != value:
                        self.violations.append(f"{e['id']} {name} at {at}: {self.history[key]!r} then {value!r}")
                    self.history[key] = value
                    self.instances[key] += 1
        if self.mode == "v2":
            if errors:
                return 400, {"error": "BadRequest", "description": errors[0]["error"]["detail"]}
            return 204, None
        if errors:
            return 207, {"success": success, "errors": errors}
        return (201, created) if created else (204, None)

    # -- the API's rules --------------------------------------------------------------------------------------
    def _checked(self, method: str, path: str, headers: Any, body: bytes) -> tuple[str | None, list[dict[str, Any]]]:
        if method != "POST":
            raise _Bad(f"method {method} is not POST")
        try:
            doc = json.loads(body)
        except ValueError as exc:
            raise _Bad(f"the body is not JSON: {exc}") from None
        if self.mode == "v2":
            return self._checked_v2(path, headers, doc)
        if path != UPSERT + "?options=update":
            raise _Bad(f"path {path} is not {UPSERT}?options=update")
        tenant = headers.get("NGSILD-Tenant")
        if tenant is not None and not _TENANT_RE.match(tenant):
            raise _Bad(f"NGSILD-Tenant {tenant!r} is not a tenant name")
        ctype = (headers.get("Content-Type") or "").split(";")[0].strip()
        links = [v for k, v in headers.items() if k.lower() == "link" and "json-ld#context" in v]
        if ctype == "application/ld+json":
            if links:
                raise _Bad("application/ld+json with a JSON-LD Link header (the @context goes in the body)")
        elif ctype == "application/json":
            if len(links) != 1 or not _LINK_RE.match(links[0].strip()):
                raise _Bad(f"application/json needs exactly one JSON-LD context Link header, got {links!r}")
        else:
            raise _Bad(f"Content-Type {ctype!r} is neither application/json nor application/ld+json")
        if not isinstance(doc, list) or not doc:
            raise _Bad("the body is not a non-empty JSON array of entities")
        if len(doc) > self.max_batch:
            raise _Bad(f"{len(doc)} entities in one batch, more than {self.max_batch}")
        self._unique(doc)
        for e in doc:
            has_context = isinstance(e, dict) and "@context" in e
            if has_context != (ctype == "application/ld+json"):
                raise _Bad(f"entity {e.get('id') if isinstance(e, dict) else e!r}: @context "
                           f"{'present' if has_context else 'missing'} with {ctype}")
            if has_context and (not isinstance(e["@context"], list | str) or not e["@context"]):
                raise _Bad("@context is not a URL or a list of them")
            for name, a in e.items():
                if name not in ("id", "type", "@context"):
                    self._attribute(e["id"], name, a)
        return tenant, doc

    def _unique(self, doc: list[Any]) -> None:
        ids = []
        for e in doc:
            _no_null(e)
            if not isinstance(e, dict) or not isinstance(e.get("id"), str) or not isinstance(e.get("type"), str):
                raise _Bad(f"an entity without a string id and type: {str(e)[:200]}")
            if not re.match(r"[a-zA-Z][a-zA-Z0-9+.-]*:\S+\Z", e["id"]):
                raise _Bad(f"entity id {e['id']!r} is not an absolute URI")
            ids.append(e["id"])
        if len(set(ids)) != len(ids):
            raise _Bad(f"an entity named twice in one batch: {sorted(i for i in ids if ids.count(i) > 1)[:3]}")

    def _attribute(self, entity: str, name: str, a: Any) -> None:
        where = f"{entity} {name}"
        if not _ATTR_NAME_RE.match(name) or not isinstance(a, dict):
            raise _Bad(f"{where}: not an attribute name with an attribute object")
        kind = a.get("type")
        if kind == "Property":
            if "value" not in a:
                raise _Bad(f"{where}: a Property without value")
        elif kind == "Relationship":
            if not isinstance(a.get("object"), str) or ":" not in a["object"]:
                raise _Bad(f"{where}: a Relationship's object is not a URI")
        elif kind == "GeoProperty":
            _geometry(where, a.get("value"))
        else:
            raise _Bad(f"{where}: type {kind!r} is not Property, Relationship or GeoProperty")
        at = a.get("observedAt")
        if at is not None:
            _iso(where, at)
        unit = a.get("unitCode")
        if unit is not None and (not isinstance(unit, str) or not _UNIT_RE.match(unit)):
            raise _Bad(f"{where}: unitCode {unit!r} is not a UN/CEFACT code")

    def _checked_v2(self, path: str, headers: Any, doc: Any) -> tuple[str | None, list[dict[str, Any]]]:
        if path != V2_UPDATE:
            raise _Bad(f"path {path} is not {V2_UPDATE}")
        if (headers.get("Content-Type") or "").split(";")[0].strip() != "application/json":
            raise _Bad("NGSI v2 takes application/json")
        tenant = headers.get("Fiware-Service")
        if tenant is not None and not re.match(r"[a-z0-9_]{1,50}\Z", tenant):
            raise _Bad(f"Fiware-Service {tenant!r} is not lowercase letters, digits and '_'")
        spath = headers.get("Fiware-ServicePath", "/")
        if not spath.startswith("/"):
            raise _Bad(f"Fiware-ServicePath {spath!r} does not start with '/'")
        if not isinstance(doc, dict) or doc.get("actionType") != "append" or not isinstance(doc.get("entities"),
                                                                                             list):
            raise _Bad("not an append update: {actionType: append, entities: [...]}")
        entities = doc["entities"]
        if not entities or len(entities) > self.max_batch:
            raise _Bad(f"{len(entities)} entities: 1..{self.max_batch} allowed")
        self._unique(entities)
        for e in entities:
            for name, a in e.items():
                if name in ("id", "type"):
                    continue
                if not isinstance(a, dict) or "value" not in a or not isinstance(a.get("type"), str):
                    raise _Bad(f"{e['id']} {name}: a v2 attribute needs type and value")
                if a["type"] == "geo:json":
                    _geometry(f"{e['id']} {name}", a["value"])
                meta = a.get("metadata", {})
                if "TimeInstant" in meta:
                    _iso(f"{e['id']} {name}", meta["TimeInstant"].get("value"))
                value = a["value"]
                texts = [value] if isinstance(value, str) else value if isinstance(value, list) else []
                if any(isinstance(t, str) and re.search(r"[<>\"'=;()]", t) for t in texts):
                    raise _Bad(f"{e['id']} {name}: Orion forbids <>\"'=;() in text values")
        return tenant, entities


def _no_null(obj: Any) -> None:
    if obj is None:
        raise _Bad("a null in the entity (NGSI-LD forbids null values)")
    if isinstance(obj, dict):
        for v in obj.values():
            _no_null(v)
    elif isinstance(obj, list):
        for v in obj:
            _no_null(v)


def _iso(where: str, at: Any) -> None:
    if not isinstance(at, str) or not _ISO_UTC_RE.match(at):
        raise _Bad(f"{where}: observedAt {at!r} is not ISO 8601 UTC")
    dt.datetime.fromisoformat(at)


def _geometry(where: str, value: Any) -> None:
    if not isinstance(value, dict) or value.get("type") != "Point":
        raise _Bad(f"{where}: a GeoProperty value is not a GeoJSON Point")
    c = value.get("coordinates")
    if not isinstance(c, list) or len(c) not in (2, 3) or not all(isinstance(x, int | float) for x in c):
        raise _Bad(f"{where}: Point coordinates are not [lon, lat(, alt)]")
    if not (-180 <= c[0] <= 180 and -90 <= c[1] <= 90):
        raise _Bad(f"{where}: coordinates {c} are not WGS84 [lon, lat]")
