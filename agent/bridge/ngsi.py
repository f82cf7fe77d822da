"""The NGSI sinks: an NGSI-LD context broker (``POST /ngsi-ld/v1/entityOperations/upsert?options=update``) or an
NGSI v2 one, Orion (``POST /v2/op/update``, ``actionType`` ``append``).

Like the InfluxDB sinks, :meth:`NgsiSink.write` takes one body of the bridge's line protocol and either returns
(every entity it maps to is stored) or raises one of :mod:`agent.bridge.errors`; the write policy
(:mod:`agent.bridge.policy`) retries, narrows and dead-letters the same way for every sink:

=============================================  ===============================================================
broker's answer                                what the sink raises
=============================================  ===============================================================
201, 204                                       nothing: stored
207 with per-entity errors                     the entities the broker stored are done; an entity refused with
                                               400/404/422 ... -> :class:`SinkRejected` quoting its lines, with
                                               the broker's reason (dead-lettered); an entity refused with 409
                                               (AlreadyExists: another writer created it in the same instant)
                                               or 5xx -> :class:`SinkUnavailable` (sent again: the upsert then
                                               finds it and updates it)
400, 413, 422 for the whole request            :class:`SinkRejected` (the policy halves the lines to find the
                                               bad entity; one entity alone: its lines, the broker's reason)
409 for the whole request                      :class:`SinkUnavailable` (a creation race; upsert again)
429, 5xx, timeout, connection error            :class:`SinkUnavailable` (backoff, ``Retry-After`` honoured)
401, 403, 404                                  :class:`SinkRefused` (credentials, tenant, URL)
=============================================  ===============================================================

One entity's fragments (several readings of a node in one batch) go in successive requests, oldest first: an
upsert names each entity once, and a broker with temporal history then records every reading, and the entity
ends with the newest values. Fragments already stored are remembered (bounded), so a body the policy sends again
after a partial failure or an outage does not store them twice.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections import OrderedDict, defaultdict
from collections.abc import Iterator
from typing import Any

import urllib3

from agent.bridge.config import SinkConfig
from agent.bridge.errors import (
    SinkRefused,
    SinkRejected,
    SinkUnavailable,
    _error_text,
    _retry_after,
)
from agent.bridge.ngsi_config import NgsiConfig
from agent.bridge.ngsi_entities import Fragment, fragments, to_v2
from agent.bridge.sinks import _connection_error

__all__ = ["LD_CONTEXT_REL", "UPSERT_PATH", "V2_UPDATE_PATH", "NgsiSink"]

log = logging.getLogger(__name__)

UPSERT_PATH = "/ngsi-ld/v1/entityOperations/upsert"
V2_UPDATE_PATH = "/v2/op/update"
LD_CONTEXT_REL = "http://www.w3.org/ns/json-ld#context"
#: Fragments remembered as stored (their digests), at most.
WRITTEN_MEMORY = 200_000
#: NGSI-LD problem types and the status they stand for, when a 207's error does not give one.
_PROBLEM_STATUS = {"BadRequestData": 400, "InvalidRequest": 400, "AlreadyExists": 409, "ResourceNotFound": 404,
                   "OperationNotSupported": 422, "InternalError": 500, "LdContextNotAvailable": 503,
                   "NonexistentTenant": 404, "TooManyResults": 403}


class NgsiSink:
    """Writes readings and alerts as NGSI-LD (``sink.type: ngsi-ld``) or NGSI v2 (``ngsi-v2``) entities."""

    def __init__(self, config: SinkConfig) -> None:
        self.config = config
        self.ngsi: NgsiConfig = config.ngsi if config.ngsi is not None else NgsiConfig()
        self.v2 = config.type == "ngsi-v2"
        self.target = config.target()
        self._url = config.url + (V2_UPDATE_PATH if self.v2 else UPSERT_PATH + "?options=update")
        timeout = urllib3.Timeout(connect=config.timeout_s, read=config.timeout_s)
        self._pool = urllib3.PoolManager(num_pools=1, maxsize=1, block=False, timeout=timeout, retries=False)
        self._written: OrderedDict[bytes, None] = OrderedDict()

    # -- one body of lines ------------------------------------------------------------------------------------
    def write(self, body: bytes) -> None:
        lines = body.decode("utf-8").split("\n")
        try:
            frags, _ = fragments(lines, self.ngsi.positions)
        except ValueError as exc:  # our own lines always parse; if one does not, it is refused, not retried
            raise SinkRejected(f"a line cannot be mapped to an NGSI entity: {exc}", status=None) from exc
        transient: SinkUnavailable | None = None
        refused: dict[str, list[int]] = {}
        for tenant, chunk in self._requests(frags):
            try:
                errors = self._post(tenant, chunk)
            except SinkRejected as exc:
                if len(chunk) > 1:
                    raise  # the policy halves the lines until one entity stands alone
                errors = [(chunk[0], exc.status or 400, exc.text)]
            for frag, status, reason in errors:
                if status == 409 or status == 429 or status >= 500:
                    transient = SinkUnavailable(f"{self.target}: {frag.id}: {reason}", status=status)
                else:
                    refused.setdefault(f"HTTP {status}: {reason}", []).extend(frag.lines)
        if refused:
            # The lines of the first reason; the policy writes the rest again (stored entities are skipped) and
            # meets the next reason, if any, in its next round.
            reason, indexes = next(iter(refused.items()))
            raise SinkRejected(f"{self.target}: {reason}", status=400,
                               quoted_lines=tuple(lines[i] for i in sorted(set(indexes))))
        if transient is not None:
            raise transient

    def close(self) -> None:
        self._pool.clear()

    # -- requests ---------------------------------------------------------------------------------------------
    def _requests(self, frags: list[Fragment]) -> Iterator[tuple[str | None, list[Fragment]]]:
        """(tenant, fragments) of each request: an entity at most once per request, its fragments oldest first,
        at most ``batch_size`` entities; fragments already stored are left out."""
        per_tenant: dict[str | None, dict[str, list[Fragment]]] = defaultdict(lambda: defaultdict(list))
        for frag in frags:
            per_tenant[self.ngsi.tenant_of(frag.site)][frag.id].append(frag)
        size = self.ngsi.batch_size
        for tenant, by_id in per_tenant.items():
            rounds: list[list[Fragment]] = []
            for versions in by_id.values():
                kept = [f for f in sorted(versions, key=lambda f: f.ts_us) if self._digest(tenant, f)
                        not in self._written]
                for k, frag in enumerate(kept):
                    if k == len(rounds):
                        rounds.append([])
                    rounds[k].append(frag)
            for round_ in rounds:
                for start in range(0, len(round_), size):
                    yield tenant, round_[start:start + size]

    def _digest(self, tenant: str | None, frag: Fragment) -> bytes:
        text = json.dumps([tenant, frag.id, frag.attrs], sort_keys=True, separators=(",", ":"))
        return hashlib.blake2b(text.encode(), digest_size=16).digest()

    def _stored(self, tenant: str | None, frag: Fragment) -> None:
        self._written[self._digest(tenant, frag)] = None
        if len(self._written) > WRITTEN_MEMORY:
            self._written.popitem(last=False)

    def _headers(self, tenant: str | None) -> dict[str, str]:
        headers = {"Accept": "application/json"}
        if self.v2:
            headers["Content-Type"] = "application/json"
            if tenant is not None:
                headers["Fiware-Service"] = tenant
            headers["Fiware-ServicePath"] = self.ngsi.service_path
        else:
            if self.ngsi.content_type == "json":
                headers["Content-Type"] = "application/json"
                headers["Link"] = (f'<{self.ngsi.context[0]}>; rel="{LD_CONTEXT_REL}"; '
                                   'type="application/ld+json"')
            else:
                headers["Content-Type"] = "application/ld+json"
            if tenant is not None:
                headers["NGSILD-Tenant"] = tenant
        token = self.config.token_value()  # read per request, so a rotated token file is picked up
        if token:
            headers["Authorization"] = f"Bearer {token}"
        return headers

    def _payload(self, chunk: list[Fragment]) -> bytes:
        if self.v2:
            doc: Any = {"actionType": "append", "entities": [to_v2(f) for f in chunk]}
        else:
            context = self.ngsi.context if self.ngsi.content_type == "ld+json" else None
            doc = [f.entity(context) for f in chunk]
        return json.dumps(doc, ensure_ascii=False, separators=(",", ":")).encode()

    def _post(self, tenant: str | None, chunk: list[Fragment]) -> list[tuple[Fragment, int, str]]:
        """Send one request; returns the entities the broker refused (fragment, status, reason), remembering the
        stored ones. Raises what the whole request's answer means (module table)."""
        try:
            resp = self._pool.request("POST", self._url, body=self._payload(chunk), headers=self._headers(tenant),
                                      retries=False, preload_content=True, redirect=False)
        except (urllib3.exceptions.HTTPError, OSError) as exc:
            raise _connection_error(exc, self.target) from exc
        status, data = resp.status, resp.data or b""
        if status in (200, 201, 204):
            for frag in chunk:
                self._stored(tenant, frag)
            return []
        if status == 207 and not self.v2:
            return self._partial(tenant, chunk, data)
        text = _problem_text(data)
        if status in (400, 413, 422):
            raise SinkRejected(text or f"HTTP {status}", status=status)
        if status == 409:
            raise SinkUnavailable(f"{self.target}: {text or 'conflict'}", status=status,
                                  hint="another writer created an entity in the same instant; upserting again")
        if status == 429 or status >= 500:
            raise SinkUnavailable(f"{self.target}: {text or 'server error'}", status=status,
                                  retry_after=_retry_after(resp.headers.get("Retry-After")))
        hints = {401: "check sink.token / token_file / token_env (a bearer token the broker accepts)",
                 403: "the token may not write to this tenant", 404: "check sink.url (the broker's base URL, "
                 "without /ngsi-ld or /v2) and the tenant (sink.ngsi.tenant / tenants)"}
        raise SinkRefused(text or f"HTTP {status}", status=status,
                          hint=hints.get(status, "unexpected answer: check that sink.url is the context broker"))

    def _partial(self, tenant: str | None, chunk: list[Fragment], data: bytes) -> list[tuple[Fragment, int, str]]:
        """A 207 BatchOperationResult: ``success`` ids stored, ``errors`` [{entityId, error: ProblemDetails}]."""
        try:
            doc = json.loads(data)
            ok = {str(i) for i in doc.get("success", [])}
            errors = {str(e["entityId"]): e.get("error") or {} for e in doc.get("errors", [])}
        except (ValueError, TypeError, KeyError, AttributeError) as exc:
            raise SinkUnavailable(f"{self.target}: a 207 answer that is not a BatchOperationResult: "
                                  f"{data[:200]!r}", status=207) from exc
        out: list[tuple[Fragment, int, str]] = []
        for frag in chunk:
            if frag.id in errors:
                problem = errors[frag.id]
                status = problem.get("status") if isinstance(problem, dict) else None
                if not isinstance(status, int):
                    kind = str(problem.get("type", "")).rsplit("/", 1)[-1] if isinstance(problem, dict) else ""
                    status = _PROBLEM_STATUS.get(kind, 400)
                out.append((frag, status, _problem_text(json.dumps(problem).encode())))
            elif frag.id in ok:
                self._stored(tenant, frag)
            else:  # neither stored nor refused: assume nothing, send it again
                out.append((frag, 503, "the broker's 207 answer does not name this entity"))
        return out


def _problem_text(data: bytes) -> str:
    """The readable part of an NGSI-LD ProblemDetails (type, title, detail) or an NGSI v2 error (error,
    description)."""
    try:
        doc = json.loads(data)
    except ValueError:
        return _error_text(data)[0]
    if isinstance(doc, dict):
        parts = [str(doc[k]) for k in ("type", "title", "detail", "error", "description") if doc.get(k)]
        if parts:
            return ": ".join(parts)[:1000]
    return _error_text(data)[0]
