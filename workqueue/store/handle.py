"""Store: the small handle on one queue's Redis side that the parts above pass around."""

from __future__ import annotations

from dataclasses import dataclass

import redis

from .clock import RedisClock
from .keys import QueueKeys
from .scripts import Scripts
from .transport import location


@dataclass(frozen=True)
class Store:
    """One queue on one Redis: the client, the queue's key names, its Lua scripts, where it is
    (host:port/db for log lines, never the password), and the Redis server's clock."""

    client: redis.Redis
    keys: QueueKeys
    scripts: Scripts
    location: str
    clock: RedisClock

    @classmethod
    def open(cls, client: redis.Redis, name: str) -> Store:
        """The store of queue `name` on `client`; raises ValueError for a name the queue-name
        rule refuses, before anything is written."""
        return cls(client, QueueKeys(name), Scripts(client), location(client), RedisClock(client))
