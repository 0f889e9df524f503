"""The queue as producers and operators see it: push messages, read stats, handle dead letters.

The worker's protocol (fetch, settle, heartbeat, recovery) is on a Consumer, made per worker
with Queue.consumer(). Every change of state is one Lua script (workqueue/lua) or one MULTI.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any, cast

import redis

from . import message
from .consumer import Consumer
from .keys import QueueKeys
from .message import MalformedMessage
from .protocol import Delivery, RetryPolicy
from .settings import Settings
from .transport import Key, Scripts, connect, location

PUSH_CHUNK = 1000
_DEFAULTS = Settings()  # the one home of defaults

# Every figure `stats` reports, in order, with what it counts: the CLI prints these labels.
STATS_FIELDS = {
    "pending": "waiting in the queue",
    "in_flight": "taken by a worker, not settled",
    "delayed": "failed, waiting out their backoff",
    "dead": "in the dead-letter list",
    "workers": "live workers",
    "produced": "pushed by producers",
    "completed": "processed",
    "retried": "failed tries sent back for retry",
    "recovered": "taken back from dead workers",
    "dead_lettered": "dead-lettered",
    "duplicates_skipped": "duplicates skipped",
    "unaccounted": "messages unaccounted for (0: nothing lost)",
}
# The counters the scripts keep in the stats hash, each in the step of the transition it counts.
COUNTERS = ("produced", "completed", "retried", "recovered", "dead_lettered", "duplicates_skipped")


class Queue:
    """One named queue on one Redis."""

    def __init__(
        self,
        name: str,
        client: redis.Redis,
        *,
        max_attempts: int = _DEFAULTS.max_attempts,
        retry_backoff: float = _DEFAULTS.retry_backoff,
        retry_backoff_max: float = _DEFAULTS.retry_backoff_max,
        dedup_ttl: float = _DEFAULTS.dedup_ttl,
    ) -> None:
        self.name = name
        self.client = client
        self.keys = QueueKeys(name)
        self.scripts = Scripts(client)
        self.location = location(client)  # where, for logs: never the password
        self.retry = RetryPolicy(max_attempts, retry_backoff, retry_backoff_max)
        self.dedup_ttl_ms = int(dedup_ttl * 1000)

    @classmethod
    def connect(cls, url: str = _DEFAULTS.redis_url, name: str = _DEFAULTS.queue_name, **options: Any) -> Queue:
        """Open a queue on the Redis at `url` (connections are made lazily, on first use)."""
        return cls(name, connect(url), **options)

    @classmethod
    def from_settings(cls, settings: Settings) -> Queue:
        return cls.connect(
            settings.redis_url,
            settings.queue_name,
            max_attempts=settings.max_attempts,
            retry_backoff=settings.retry_backoff,
            retry_backoff_max=settings.retry_backoff_max,
            dedup_ttl=settings.dedup_ttl,
        )

    def consumer(self, worker_id: str, delivery: Delivery | str = _DEFAULTS.delivery,
                 worker_timeout: float = _DEFAULTS.worker_timeout) -> Consumer:
        """The worker protocol for one worker of this queue."""
        return Consumer(self, worker_id, delivery, worker_timeout)

    # -- producing ---------------------------------------------------------------------------

    def push(self, body: Any, *, message_id: str | None = None) -> str:
        """Append one message to the queue; returns its id."""
        message_id, raw = message.new(body, message_id)
        self.push_encoded([raw])
        return message_id

    def push_many(self, bodies: Iterable[Any]) -> list[str]:
        """Append many messages, pipelined in chunks; returns their ids in order."""
        built = [message.new(body) for body in bodies]
        self.push_encoded([raw for _, raw in built])
        return [message_id for message_id, _ in built]

    def push_encoded(self, raws: Sequence[bytes]) -> None:
        """Append encoded messages; each chunk is one script call that also counts them.

        After a connection error the caller may push the same messages again: a chunk that did
        reach Redis is then delivered twice, and the second copy is skipped by id.
        """
        for start in range(0, len(raws), PUSH_CHUNK):
            self.scripts.call("push", [self.keys.pending, self.keys.stats], raws[start : start + PUSH_CHUNK])

    # -- inspection --------------------------------------------------------------------------

    def stats(self, attempts: int = 50) -> dict[str, int]:
        """Counts, counters and the balance of messages unaccounted for (0: nothing lost).

        One script reads everything at one instant. It needs the in-flight list of every
        registered worker as a key, so it refuses when a worker came or went since we listed
        them, and we list them again (bounded by `attempts`)."""
        k = self.keys
        for _ in range(attempts):
            ids = cast(list[bytes], self.client.zrange(k.workers, 0, -1))  # bytes: any id, as stored
            keys: list[Key] = [k.pending, k.delayed, k.dead_letter, k.stats, k.workers, *(k.in_flight(i) for i in ids)]
            reply = self.scripts.call("stats", keys, ids)
            if reply[0] == 1:
                break
        else:
            raise RuntimeError(f"workers kept coming and going; no consistent stats after {attempts} tries")
        pending, delayed, dead, workers, in_flight = reply[1:6]
        counters = {reply[i].decode(): int(reply[i + 1]) for i in range(6, len(reply), 2)}
        result = {"pending": pending, "in_flight": in_flight, "delayed": delayed, "dead": dead, "workers": workers}
        result.update({name: counters.get(name, 0) for name in COUNTERS})
        result["unaccounted"] = (
            result["produced"] - result["completed"] - result["dead_lettered"] - result["duplicates_skipped"]
            - pending - delayed - in_flight
        )
        return {name: result[name] for name in STATS_FIELDS}

    def dead_letters(self, limit: int = 100) -> list[bytes]:
        """The oldest `limit` entries of the dead-letter list, as stored."""
        return cast(list[bytes], self.client.lrange(self.keys.dead_letter, 0, limit - 1))

    def requeue_dead(self, limit: int = 100) -> tuple[int, int]:
        """Give the oldest `limit` dead letters another round: back to the queue with attempts 0
        and no error. Malformed entries stay (there is no message to retry). Returns (moved,
        left as malformed)."""
        pairs: list[bytes] = []
        malformed = 0
        for raw in self.dead_letters(limit):
            try:
                fields = message.decode(raw).fields
            except MalformedMessage:
                malformed += 1
                continue
            pairs += (raw, message.rewrite(raw, fields, {"attempts": 0}, drop=("error",)))
        moved = 0
        for start in range(0, len(pairs), 2 * PUSH_CHUNK):
            moved += self.scripts.call("requeue", [self.keys.dead_letter, self.keys.pending, self.keys.stats], pairs[start : start + 2 * PUSH_CHUNK])
        return moved, malformed
