"""Which site each gateway belongs to: the bridge's server-side gateway registry.

A gateway's login vouches only for its own topics (``<prefix>/<gateway>/...``), not for what it writes in them, so
the bridge takes ``site`` (and the display ``name`` and ``municipality``) from this registry, never from the payload.
The file is YAML (``deploy/backend/gateways.yaml`` is the shipped example)::

    gateways:
      gw-okutama-01:
        site: okutama            # required: ^[a-z0-9][a-z0-9_-]{0,62}$
        name: 奥多摩 日原林道     # optional free text, at most 200 characters
        municipality: 奥多摩町    # optional free text, at most 200 characters

Gateway ids follow the same pattern as ``site``. Free text holds no control characters and no lone surrogates,
so it can go into a line-protocol string field as it is.

A gateway the registry does not list is handled by the policy ``unknown``: ``accept`` writes its readings with
site :data:`UNKNOWN_SITE` (the converter notes ``unknown_gateway``), ``refuse`` dead-letters them
(``unknown_gateway``).
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, field_validator

from agent.config import ConfigSection, Found, parse_yaml_model, read_config_file
from agent.errors import ConfigError
from agent.i18n import _
from drivers.settings import N_, Text, problem

__all__ = ["UNKNOWN_SITE", "GatewayInfo", "GatewayRegistry"]

log = logging.getLogger(__name__)

#: The site of a gateway the registry does not list (policy ``accept``).
UNKNOWN_SITE = "unknown"

_ID = r"^[a-z0-9][a-z0-9_-]{0,62}$"
_ID_RE = re.compile(_ID)
#: Unicode category Cc (C0, DEL, C1) and lone surrogates: neither belongs in a display name.
_BAD_TEXT_RE = re.compile("[\x00-\x1f\x7f-\x9f\ud800-\udfff]")
_EXAMPLE = "deploy/backend/gateways.yaml"


@dataclass(frozen=True, slots=True)
class GatewayInfo:
    """What the registry knows about one gateway.

    Attributes:
        site: the site (municipality or area) its readings are written under; an id (``^[a-z0-9][a-z0-9_-]{0,62}$``).
        name: display name (free text), or None.
        municipality: the municipality (free text), or None.
    """

    site: str
    name: str | None = None
    municipality: str | None = None


class _Entry(ConfigSection):
    """One gateway of the registry file."""

    site: str = Field(pattern=_ID, description=N_("Site the gateway's readings are written under (an id)."))
    name: str | None = Field(default=None, min_length=1, max_length=200, description=N_("Display name (free text)."))
    municipality: str | None = Field(default=None, min_length=1, max_length=200,
                                     description=N_("Municipality (free text)."))

    @field_validator("name", "municipality")
    @classmethod
    def _text(cls, value: str | None) -> str | None:
        if value is not None and _BAD_TEXT_RE.search(value):
            raise problem(N_("holds a control character or a lone surrogate"),
                          N_("write the name as plain text on one line"))
        return value


class _RegistryFile(ConfigSection):
    """The whole registry file."""

    gateways: dict[str, _Entry] = Field(description=N_("Gateway id -> its site, name and municipality."))


class GatewayRegistry:
    """The gateways the bridge knows, with the policy for the others.

    Args:
        gateways: gateway id -> :class:`GatewayInfo`; None: none.
        unknown: ``accept`` (written with site :data:`UNKNOWN_SITE`) or ``refuse`` (dead-lettered).
        path: the file the registry was read from, for :meth:`refresh` and messages; None: not from a file.
    """

    def __init__(self, gateways: Mapping[str, GatewayInfo] | None = None, *,
                 unknown: Literal["accept", "refuse"] = "accept", path: Path | None = None) -> None:
        if unknown not in ("accept", "refuse"):
            raise ValueError(f"unknown must be 'accept' or 'refuse', not {unknown!r}")
        self.unknown: str = unknown
        self.path = Path(path) if path is not None else None
        # Replaced as a whole by refresh(), so a lookup from another thread sees the old or the new table.
        self._gateways: dict[str, GatewayInfo] = dict(gateways or {})
        self._stamp: tuple[int, int] | None = None
        if self.path is not None:
            self._stamp = self._stat()

    @classmethod
    def load(cls, path: str | os.PathLike[str], *, unknown: Literal["accept", "refuse"] = "accept"
             ) -> GatewayRegistry:
        """Read a registry file.

        Raises:
            ConfigError: the file is missing, unreadable or invalid; each issue names file:line and the key.
        """
        path = Path(path)
        stamp = _stat(path)
        registry = cls(_read(path), unknown=unknown, path=path)
        registry._stamp = stamp  # the stat of what was read, so a change while reading is seen by refresh()
        return registry

    def lookup(self, gateway: str) -> GatewayInfo | None:
        """The registry's entry for ``gateway``, or None when it is not listed."""
        return self._gateways.get(gateway)

    def __len__(self) -> int:
        return len(self._gateways)

    def __contains__(self, gateway: object) -> bool:
        return gateway in self._gateways

    def refresh(self) -> bool:
        """Read the file again when its modification time or size changed.

        A file that became invalid (or vanished) keeps the registry as it was, with one error logged per change of
        the file, so an editor's half-saved file never drops every gateway to ``unknown``.

        Returns:
            True when the registry was reloaded from a changed file.
        """
        if self.path is None:
            return False
        stamp = self._stat()
        if stamp == self._stamp:
            return False
        self._stamp = stamp
        try:
            gateways = _read(self.path)
        except ConfigError as exc:
            log.error("%s", _("gateway registry {path}: cannot reload it, keeping the {count} gateways read before: "
                              "{error}").format(path=self.path, count=len(self._gateways), error=exc))
            return False
        self._gateways = gateways
        log.info("%s", _("gateway registry {path}: reloaded, {count} gateways").format(path=self.path,
                                                                                     count=len(gateways)))
        return True

    def _stat(self) -> tuple[int, int] | None:
        assert self.path is not None
        return _stat(self.path)

    def __repr__(self) -> str:
        return f"GatewayRegistry({len(self)} gateways, unknown={self.unknown}, path={self.path})"


def _stat(path: Path) -> tuple[int, int] | None:
    try:
        st = path.stat()
    except OSError:
        return None
    return st.st_mtime_ns, st.st_size


def _read(path: Path) -> dict[str, GatewayInfo]:
    text, mode = read_config_file(path)
    model, _found = parse_yaml_model(text, _RegistryFile, source=str(path), checks=_id_problems, example=_EXAMPLE,
                                     sections=["gateways"], file_mode=mode)
    return {gw: GatewayInfo(e.site, e.name, e.municipality) for gw, e in model.gateways.items()}


def _id_problems(plain: dict[str, Any]) -> list[Found]:
    """Gateway ids (the mapping's keys) that are not ids, each at its own line; run with every other check."""
    gateways = plain.get("gateways")
    if not isinstance(gateways, dict):
        return []
    return [(("gateways", gw), Text(N_("{gateway} is not a gateway id"), gateway=repr(gw)),
             Text(N_("gateway ids are 1-63 of a-z, 0-9, '_' and '-', starting with a letter or digit: the gateway's "
                     "gateway.id"))) for gw in gateways
            if not isinstance(gw, str) or not _ID_RE.match(gw)]
