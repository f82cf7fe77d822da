"""The bridge's gateway registry for tests: the gateway ids the suites use, each with the site its payloads name."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

#: Site of every test gateway (tests.support.field's configs and tests.bridge._helpers' batches say "testville").
TEST_SITE = "testville"
#: Gateway ids the suites publish as; a bridge test under another id sees site "unknown" (registry policy accept).
TEST_GATEWAYS: tuple[str, ...] = (
    "gw-test-01", "gw-a", "gw-b", "gw-v2", "gw-fuzz-01", "gw-r", "gw-other", "gw-t", "gw-k", "gw-x", "gw-y", "gw-z",
    "gw-sentinel", "gw-fault-01", "gw-bench-01", "gw-honest", "gw-evil",
)


def write_registry(path: Path, gateways: Mapping[str, str] | None = None) -> Path:
    """Write a registry file: ``gateways`` maps id -> site (default: every TEST_GATEWAYS id -> TEST_SITE)."""
    entries = gateways if gateways is not None else dict.fromkeys(TEST_GATEWAYS, TEST_SITE)
    lines = ["gateways:"] + [f"  {gw}:\n    site: {site}" for gw, site in entries.items()]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path
