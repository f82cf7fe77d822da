"""The ``sink.ngsi`` section of a bridge config: where and how an NGSI-LD or NGSI v2 context broker takes the
readings (``sink.type: ngsi-ld`` or ``ngsi-v2``). The bearer token is the sink's ``token`` / ``token_file`` /
``token_env``, as for the InfluxDB v2 sink.
"""

from __future__ import annotations

import re
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from agent.config import ConfigSection
from drivers.settings import N_, Text, problem

__all__ = ["DEFAULT_CONTEXTS", "NGSI_TYPES", "NgsiConfig", "Position", "ngsi_sink_problems"]

#: The sink types this section serves.
NGSI_TYPES = ("ngsi-ld", "ngsi-v2")

#: The Smart Data Models contexts of the entity types the sink writes, then the NGSI-LD core context (last: a
#: broker applies it last whatever is sent, so nothing may depend on overriding it).
DEFAULT_CONTEXTS = (
    "https://raw.githubusercontent.com/smart-data-models/dataModel.Device/master/context.jsonld",
    "https://raw.githubusercontent.com/smart-data-models/dataModel.Weather/master/context.jsonld",
    "https://raw.githubusercontent.com/smart-data-models/dataModel.Environment/master/context.jsonld",
    "https://raw.githubusercontent.com/smart-data-models/dataModel.Alert/master/context.jsonld",
    "https://uri.etsi.org/ngsi-ld/v1/ngsi-ld-core-context-v1.6.jsonld",
)

_NODE_RE = re.compile(r"[0-9a-f]{8}\Z")
_SITE_RE = re.compile(r"[a-z0-9][a-z0-9_-]{0,62}\Z")
# NGSILD-Tenant: a name a broker can make a database of; Fiware-Service: lowercase letters, digits, '_'.
_TENANT_RE = re.compile(r"[a-z0-9_][a-z0-9_-]{0,49}\Z")
_SERVICE_PATH_RE = re.compile(r"/(?:[A-Za-z0-9_]{1,50}(?:/[A-Za-z0-9_]{1,50}){0,9})?\Z")


class Position(ConfigSection):
    """Where a node stands (WGS84)."""

    lat_deg: float = Field(ge=-90, le=90, description=N_("Latitude in degrees (WGS84)."))
    lon_deg: float = Field(ge=-180, le=180, description=N_("Longitude in degrees (WGS84)."))


class NgsiConfig(ConfigSection):
    """How readings and alerts become NGSI entities (README "NGSI-LD export")."""

    context: list[str] = Field(
        default_factory=lambda: list(DEFAULT_CONTEXTS), min_length=1, max_length=20,
        description=N_("ngsi-ld: the JSON-LD @context URLs of the entities, core context last. With content_type "
        "ld+json they go in every entity's @context; with json exactly one URL is allowed (sent in the Link "
        "header): a context file that lists the others."),
    )
    content_type: Literal["ld+json", "json"] = Field(
        default="ld+json",
        description=N_("ngsi-ld: application/ld+json (the @context in the body) or application/json (the @context "
        "as a Link header)."),
    )
    tenant: str | None = Field(
        default=None,
        description=N_("Tenant of every site not listed in tenants (NGSILD-Tenant, or Fiware-Service for ngsi-v2); "
        "null: the broker's default tenant."),
    )
    tenants: dict[str, str] = Field(
        default_factory=dict,
        description=N_("Tenant per site (the gateway registry's site, one per municipality), e.g. {okutama: okutama}."),
    )
    service_path: str = Field(
        default="/", description=N_("ngsi-v2: Fiware-ServicePath of every entity, e.g. /denen.")
    )
    batch_size: int = Field(
        default=100, ge=1, le=1000,
        description=N_("Entities in one upsert request at most (brokers limit a batch; Orion-LD's default is 100)."),
    )
    positions: dict[str, Position] = Field(
        default_factory=dict,
        description=N_("Node id (8 hex digits) -> its configured position; a position a node reports (an SOS with a "
        "GPS fix) wins for that reading."),
    )

    @field_validator("context")
    @classmethod
    def _contexts(cls, value: list[str]) -> list[str]:
        for url in value:
            if not re.match(r"https?://[^\s<>\"]+\Z", url):
                raise problem(N_("context '{url}' is not an http(s) URL"),
                              N_("list the JSON-LD context URLs, e.g. the Smart Data Models' context.jsonld"), url=url)
        return value

    @field_validator("tenant")
    @classmethod
    def _tenant(cls, value: str | None) -> str | None:
        if value is not None and not _TENANT_RE.match(value):
            raise problem(N_("tenant '{value}' is not a tenant name"),
                          N_("1-50 of lowercase letters, digits, '_' and '-'"), value=value)
        return value

    @field_validator("tenants")
    @classmethod
    def _tenants(cls, value: dict[str, str]) -> dict[str, str]:
        for site, tenant in value.items():
            if not _SITE_RE.match(site) or not _TENANT_RE.match(tenant):
                raise problem(N_("tenants: '{site}: {tenant}' is not a site id and a tenant name"),
                              N_("site ids as in the gateway registry; tenants 1-50 of a-z, 0-9, '_', '-'"),
                              site=site, tenant=tenant)
        return value

    @field_validator("service_path")
    @classmethod
    def _service_path(cls, value: str) -> str:
        if not _SERVICE_PATH_RE.match(value):
            raise problem(N_("service_path '{value}' is not a Fiware-ServicePath"),
                          N_("'/' or '/<level>[/<level>...]', levels of letters, digits and '_'"), value=value)
        return value

    @field_validator("positions")
    @classmethod
    def _positions(cls, value: dict[str, Position]) -> dict[str, Position]:
        for node in value:
            if not _NODE_RE.match(node):
                raise problem(N_("positions: node '{node}' is not 8 lowercase hex digits"),
                              N_("the node id as the gateway config has it, e.g. '00a1b2c3'"), node=node)
        return value

    @model_validator(mode="after")
    def _link_header(self) -> NgsiConfig:
        if self.content_type == "json" and len(self.context) != 1:
            raise problem(N_("content_type json sends the @context in one Link header, so context must be exactly "
                             "one URL"),
                          N_("host one context file listing the others, or use content_type ld+json"),
                          subloc=("context",))
        return self

    def tenant_of(self, site: str) -> str | None:
        """The tenant a site's entities go to (None: the broker's default)."""
        return self.tenants.get(site, self.tenant)


def ngsi_sink_problems(sink: Any) -> list[tuple[tuple[str | int, ...], str, str | None]]:
    """Problems of ``sink.ngsi`` against ``sink.type`` (for :class:`agent.bridge.config.SinkConfig`)."""
    if sink.type not in NGSI_TYPES and sink.ngsi is not None:
        return [(("ngsi",), Text(N_("'ngsi' is not used by a {type} sink"), type=sink.type),
                 Text(N_("remove 'ngsi' or change type to ngsi-ld / ngsi-v2")))]
    return []
