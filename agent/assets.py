"""The files denen ships beside its code: example configs, the demo scenario, JSON Schemas, Grafana provisioning,
the systemd unit and the udev rules.

Every reader goes through this module, so the same name works in both places the files can be:

* an installed wheel: package data under ``agent/_data/`` (pyproject.toml maps the repository's ``config/`` and
  ``deploy/`` there), read with :mod:`importlib.resources`;
* a checkout (an editable install, the tests, ``python -m agent.cli``): the repository's own ``config/`` and
  ``deploy/``, so an edit there is what runs.

Names are paths relative to either root, with forward slashes: ``config/demo.yaml``,
``deploy/edge/denen.service``. The CLI imports this module to build its parser (the lists below), so its top level
imports only light standard-library modules.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from agent.errors import AgentError

if TYPE_CHECKING:
    from importlib.resources.abc import Traversable

__all__ = [
    "DEMO_SCENARIO",
    "EXAMPLES",
    "EXAMPLE_KEYS",
    "SCHEMAS",
    "Example",
    "as_file",
    "find",
    "read_text",
    "root",
]


@dataclass(frozen=True)
class Example:
    """One example config that ``denen config example NAME`` prints.

    Attributes:
        name: what the user types.
        asset: its file, relative to the asset root.
        summary: one line for the list.
    """

    name: str
    asset: str
    summary: str


#: The commented example configs, in the order ``denen config example`` lists them.
EXAMPLES: dict[str, Example] = {e.name: e for e in (
    Example("forest-sos", "config/forest-sos.yaml",
            "gateway: SOS buttons on a forest road (signed frames, GPS position, SOS first in line)"),
    Example("trap-field", "config/trap-field.yaml",
            "gateway: wildlife box traps and snares (fired / re-armed, daily heartbeat, silence alerts)"),
    Example("river-station", "config/river-station.yaml",
            "gateway: river gauge, rain gauges and slope tilt (stage alerts evaluated at the edge, siren)"),
    Example("river-modbus", "config/river-modbus.yaml",
            "gateway: wired river, rain and tilt gauges on RS-485 Modbus RTU (polled, same stage alerts)"),
    Example("hiker-meshtastic", "config/hiker-meshtastic.yaml",
            "gateway: hikers' Meshtastic radios: alert texts become SOS with position (needs [meshtastic])"),
    Example("demo", "config/demo.yaml",
            "gateway: the simulated field `denen demo` runs (modules at /tmp/denen-sim)"),
    Example("bridge", "config/bridge/bridge.yaml",
            "backend: MQTT -> InfluxDB bridge (`denen bridge -c`); it reads gateways.yaml beside it"),
    Example("bridge-ngsi", "config/bridge/ngsi-ld.yaml",
            "backend: MQTT -> FIWARE context broker (NGSI-LD or NGSI v2) bridge; gateways.yaml beside it"),
    Example("gateways", "config/bridge/gateways.yaml",
            "backend: the gateway registry of the bridge and the console (gateway id -> site)"),
    Example("console", "config/console/console.yaml",
            "backend: alert acknowledgement pages and `denen ack` (`denen console -c`)"),
)}

#: The simulated field of ``denen demo`` and ``denen sim demo``: nodes, radio modules and what they send.
DEMO_SCENARIO = "config/scenarios/demo.yaml"
#: The public node keys the example configs name (NAME=value lines, systemd's EnvironmentFile= format).
EXAMPLE_KEYS = "config/example-keys.env"

#: The JSON Schema shipped for each config kind (``denen config schema KIND``), relative to the asset root. Each
#: sits beside its examples, where their ``# yaml-language-server: $schema=`` line finds it.
SCHEMAS: dict[str, str] = {
    "gateway": "config/denen.schema.json",
    "bridge": "config/bridge/bridge.schema.json",
    "console": "config/console/console.schema.json",
}

#: Where the wheel puts the repository's config/ and deploy/ (pyproject.toml, [tool.setuptools.package-dir]).
_PACKAGED = "_data"


def _checkout_root() -> Path | None:
    """The repository this module runs from, or None when it runs from an installed wheel."""
    top = Path(__file__).resolve().parent.parent
    if (top / "pyproject.toml").is_file() and (top / "config").is_dir() and (top / "deploy").is_dir():
        return top
    return None


def root() -> Traversable:
    """The folder holding ``config/`` and ``deploy/``: the wheel's package data, else the checkout.

    Raises:
        AgentError: neither is there (an install that lost its data files).
    """
    import importlib.resources  # noqa: PLC0415 - the CLI's parser needs only the names above

    packaged = importlib.resources.files("agent") / _PACKAGED
    if packaged.is_dir():
        return packaged
    checkout = _checkout_root()
    if checkout is not None:
        return checkout
    raise AgentError("denen's data files (example configs, schemas, demo scenario) are missing from this install "
                     "(hint: reinstall it: pipx install --force denen_agent-*.whl)")


def find(name: str) -> Traversable:
    """The asset ``name`` (e.g. ``config/demo.yaml``).

    Raises:
        AgentError: no such file in this install.
    """
    node = root()
    for part in name.split("/"):
        node = node / part
    if not node.is_file():
        raise AgentError(f"{name} is missing from this install of denen (hint: reinstall it)")
    return node


def read_text(name: str) -> str:
    """The asset ``name`` as text (UTF-8)."""
    return find(name).read_text(encoding="utf-8")


@contextlib.contextmanager
def as_file(name: str) -> Iterator[Path]:
    """A real file system path of the asset ``name`` for the block (for readers that need a path: a config's
    relative paths, the simulator's scenario). Installed wheels and checkouts are plain folders, so this is the
    file itself; an install from a zip would get a temporary copy."""
    import importlib.resources  # noqa: PLC0415

    with importlib.resources.as_file(find(name)) as path:
        yield Path(path)
