"""The bridge's ``node_state`` section: each node's latest state republished for consumers
(:mod:`agent.bridge.nodestate`)."""

from __future__ import annotations

from pydantic import Field

from agent.config import ConfigSection
from drivers.settings import N_

__all__ = ["NodeStateConfig"]


class NodeStateConfig(ConfigSection):
    """Each node's latest state republished retained on ``<prefix>/<gateway>/nodes/<node>/state``
    (``denen.node_state/1``, :mod:`agent.bridge.nodestate`)."""

    publish: bool = Field(
        default=False,
        description=N_("Publish each node's newest stored reading retained, QoS 0, after the sink stored it; the "
        "bridge's login needs publish rights on <prefix>/+/nodes/+/state (the shipped ACL grants them)."),
    )
