"""The Redis server's clock on this host: Unix time as Redis tells it, so that every host's
timestamps (a message's created_at, a dead letter's dead_lettered_at, a pause's time) agree,
and ages that Redis computes from them (the oldest pending message's) are right whatever the
hosts' clocks say."""

from __future__ import annotations

import math
import time

import redis
from redis.exceptions import RedisError

REFRESH = 60.0  # seconds between two readings of Redis's TIME (one round trip each)


class RedisClock:
    """This host's clock plus its offset from Redis's, read with TIME at first use and again
    every REFRESH seconds. While Redis cannot be asked (an outage, a user that may not run TIME)
    the last offset stands, none at first: the host's own clock."""

    def __init__(self, client: redis.Redis) -> None:
        self.client = client
        self.offset = 0.0
        self._read_at = -math.inf  # time.monotonic() of the last reading

    def now(self) -> float:
        """Unix seconds by the Redis server's clock."""
        if time.monotonic() - self._read_at >= REFRESH:
            self._read()
        return time.time() + self.offset

    def _read(self) -> None:
        self._read_at = time.monotonic()  # also after a failure: asked again only at the next REFRESH
        try:
            before = time.time()
            seconds, micros = self.client.time()
            after = time.time()
        except (RedisError, OSError):
            return
        self.offset = seconds + micros / 1_000_000 - (before + after) / 2
