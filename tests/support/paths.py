"""Where the repository's own files are, for tests that read or run what the project ships."""

from __future__ import annotations

from pathlib import Path

__all__ = ["BACKEND", "REPO"]

#: The checkout's top folder (the tests run the CLI from it and read config/ and deploy/ below it).
REPO = Path(__file__).resolve().parents[2]
#: The backend deployment the project ships: compose file, broker, bridge, Grafana provisioning.
BACKEND = REPO / "deploy" / "backend"
