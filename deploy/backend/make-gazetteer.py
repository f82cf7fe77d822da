#!/usr/bin/env python3
"""Write the map positions of fixed nodes for the Grafana overview map, from the gateways' config files.

    python3 make-gazetteer.py /path/to/gateway-configs/*.yaml > grafana/maps/denen-nodes.json

Readings carry no position except an SOS with a GPS fix, so the Geomap panel places every other node by looking
its node id up in this file (Grafana's "gazetteer" lookup; the worldmap format: key, name, latitude,
longitude). Only nodes with ``location: {lat, lon}`` in their gateway's config are listed. docker-compose.yml
mounts the file into Grafana as ``public/maps/denen-nodes.json``; reload the dashboard after changing it.

Needs Python 3 with ruamel.yaml (``pip install ruamel.yaml``, or the project's .venv). Exit status 2 when a file
cannot be read or a location is not a pair of numbers.
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path
from typing import Any

from ruamel.yaml import YAML
from ruamel.yaml.error import YAMLError

_NODE_ID = re.compile(r"^[0-9A-Fa-f]{8}$")


def gazetteer(paths: list[Path]) -> list[dict[str, Any]]:
    """One entry per located node, in file order; a node id seen again (another file) replaces the earlier one.

    Raises:
        ValueError: a file is not YAML, or a node's id or location is malformed (the message names the file).
    """
    yaml = YAML(typ="safe")
    entries: dict[str, dict[str, Any]] = {}
    for path in paths:
        try:
            doc = yaml.load(path.read_text(encoding="utf-8")) or {}
        except (OSError, YAMLError) as exc:
            raise ValueError(f"{path}: cannot read it: {exc}") from None
        nodes = doc.get("nodes") if isinstance(doc, dict) else None
        for i, node in enumerate(nodes or []):
            if not isinstance(node, dict) or node.get("location") is None:
                continue
            node_id = str(node.get("id", ""))
            if not _NODE_ID.match(node_id):
                raise ValueError(f"{path}: nodes[{i}].id {node_id!r} is not 8 hex digits")
            loc = node["location"]
            try:
                lat, lon = float(loc["lat"]), float(loc["lon"])
            except (TypeError, KeyError, ValueError):
                raise ValueError(f"{path}: nodes[{i}].location must be {{lat: <deg>, lon: <deg>}}") from None
            if not (-90 <= lat <= 90 and -180 <= lon <= 180):
                raise ValueError(f"{path}: nodes[{i}].location {lat}, {lon} is outside -90..90 / -180..180")
            key = node_id.lower()  # readings carry the id in lower case
            entries[key] = {"key": key, "name": str(node.get("name") or key), "latitude": lat, "longitude": lon}
    return list(entries.values())


def main(argv: list[str]) -> int:
    if not argv or argv[0] in ("-h", "--help"):
        print(__doc__.strip(), file=sys.stderr)
        return 64
    try:
        entries = gazetteer([Path(a) for a in argv])
    except ValueError as exc:
        print(f"make-gazetteer.py: {exc}", file=sys.stderr)
        return 2
    json.dump(entries, sys.stdout, ensure_ascii=False, indent=2)
    sys.stdout.write("\n")
    print(f"make-gazetteer.py: {len(entries)} located nodes", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
