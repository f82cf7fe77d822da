"""The bridge's ``dedupe`` section: the shared redis in which the bridges of one group merge the copies of a node
frame heard by several gateways (the rule: :mod:`agent.bridge.dedupe`)."""

from __future__ import annotations

from urllib.parse import urlsplit

from pydantic import Field, field_validator

from agent.config import ConfigSection
from drivers.settings import N_, Seconds, problem

__all__ = ["DedupeConfig"]

_REDIS_SCHEMES = ("redis", "rediss", "unix")


class DedupeConfig(ConfigSection):
    """One point per node frame heard by several gateways, across every bridge of the group
    (:mod:`agent.bridge.dedupe`): the bridges share their claims in one redis."""

    redis_url: str = Field(
        min_length=1,
        description=N_("The redis every bridge of the group uses: redis://host:6379/0, rediss:// (TLS) or "
        "unix:///run/redis/redis.sock. A password in it (redis://:password@host:6379/0) is never logged; keep this "
        "file readable by the bridge's user only."),
    )
    window_s: Seconds = Field(
        default=3600, ge=10, le=7 * 86400,
        description=N_("How long a frame's claim lives, in seconds (10 s .. 7 days). A copy that arrives later (a "
        "gateway whose backhaul was down longer) is written as a second point. Each claim takes about 0.5 KB of "
        "redis memory for this long."),
    )
    timeout_s: Seconds = Field(
        default=0.5, le=5,
        description=N_("Longest wait for redis per batch, in seconds. When redis fails, frames are written as each "
        "gateway sent them (duplicates, nothing held back) and redis is tried again after a back-off."),
    )
    key_prefix: str = Field(
        default="denen:frame:", min_length=1, max_length=100, pattern=r"^[A-Za-z0-9_.:-]+$",
        description=N_("Prefix of every claim's key, so several installations can share one redis."),
    )

    @field_validator("redis_url")
    @classmethod
    def _url(cls, value: str) -> str:
        parts = urlsplit(value)
        scheme = parts.scheme
        try:
            parts.port  # noqa: B018 - raises ValueError for a port that is not a number 0..65535
        except ValueError:
            raise problem(N_("the port in redis_url is not a number 0..65535"), N_("e.g. redis://host:6379/0")) \
                from None
        if scheme not in _REDIS_SCHEMES:
            raise problem(N_("redis_url has no scheme") if not scheme
                          else N_("redis_url's scheme {scheme} is not one of {schemes}"),
                          N_("write redis://host:6379/0, rediss://host:6380/0 or unix:///path/to/redis.sock"),
                          scheme=scheme, schemes=", ".join(_REDIS_SCHEMES))
        return value
