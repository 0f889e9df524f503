"""Every Redis key name a queue uses, built in one place.

The queue itself is the list named exactly as the queue (`demo-1`), so `redis-cli lrange demo-1
0 -1` shows it as in the tutorial. Every other key is `{<queue>}:<what>`: the braces are a Redis
Cluster hash tag, and a key without braces hashes on its whole name, so `demo-1` and
`{demo-1}:dead` share one slot and multi-key scripts stay legal on a cluster. A queue named
with a hash tag of its own (`{thumbs}convert`) keeps it: its keys are `{thumbs}convert:<what>`,
in the slot of every queue whose name starts with `{thumbs}`, so that a pipeline's queues and
groups can hand off in one script on a cluster.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field

from redis.crc import key_slot

from ..values import RESERVED_PREFIX, queue_name

# Set of the names of every queue on this Redis, for `workqueue queues` (never KEYS or SCAN):
# added to when a Queue first pushes and when a worker starts. Not a queue's key, so it has no
# hash tag; no queue name may start with its prefix.
REGISTRY = RESERVED_PREFIX + "queues"


@dataclass(frozen=True)
class QueueKeys:
    """Key names for one queue."""

    queue: str
    prefix: str = field(init=False)

    def __post_init__(self) -> None:
        try:
            queue_name(self.queue)
        except ValueError as error:
            raise ValueError(f"the queue name {self.queue!r} {error}") from None
        # What every key but the queue list starts with: a hash tag of the queue's slot.
        object.__setattr__(self, "prefix", self.queue if self.queue.startswith("{") else f"{{{self.queue}}}")

    @property
    def pending(self) -> str:
        """List of messages waiting for a worker (RPUSH at the tail, taken from the head)."""
        return self.queue

    @property
    def dead_letter(self) -> str:
        """List of messages that will not be tried again, each with its reason."""
        return f"{self.prefix}:dead"

    @property
    def delayed(self) -> str:
        """Sorted set of failed messages waiting out their backoff, scored by due time (ms)."""
        return f"{self.prefix}:delayed"

    @property
    def workers(self) -> str:
        """Sorted set of worker ids, scored by the time (ms) their heartbeat runs out."""
        return f"{self.prefix}:workers"

    @property
    def done(self) -> str:
        """Sorted set of completed message ids, scored by the time (ms) they may be forgotten."""
        return f"{self.prefix}:done"

    @property
    def stats(self) -> str:
        """Hash of counters, each updated in the same atomic step as the transition it counts."""
        return f"{self.prefix}:stats"

    @property
    def settled(self) -> str:
        """Hash of worker id -> number of its last applied settle call, so a resend is a no-op."""
        return f"{self.prefix}:settled"

    @property
    def sessions(self) -> str:
        """Hash of worker id -> its current session number. A worker starts a new session each
        time it (re)joins, and every request it makes names its session: one from an older
        session (a request delayed in the network, or a worker presumed dead and recovered
        meanwhile, whose entry is gone) is refused, so it can change nothing."""
        return f"{self.prefix}:sessions"

    @property
    def paused(self) -> str:
        """String whose existence means the queue is paused (workers take no new messages); it
        holds the Unix time (seconds) it was paused at."""
        return f"{self.prefix}:paused"

    @property
    def registry(self) -> str:
        """Set of every queue's name on this Redis (the same key for all queues)."""
        return REGISTRY

    def in_flight(self, worker_id: str | bytes) -> str | bytes:
        """List of the messages one worker has taken and not yet settled. Only a worker listed
        in `workers` has a non-empty one, so recovery and stats find them all without SCAN.
        A worker id read back from Redis may be any bytes (one written by hand need not be
        UTF-8), so bytes give a bytes key."""
        return self._per_worker("in_flight", worker_id)

    def landing(self, worker_id: str | bytes) -> str | bytes:
        """List a waiting worker's BLMOVE moves one message into. The woken script, sent with it,
        moves the message on at once (into the worker's in-flight list, or back to the queue
        when the wait is stale), so it is empty but for that instant."""
        return self._per_worker("landing", worker_id)

    def _per_worker(self, what: str, worker_id: str | bytes) -> str | bytes:
        if isinstance(worker_id, bytes):
            return f"{self.prefix}:{what}:".encode() + worker_id
        return f"{self.prefix}:{what}:{worker_id}"

    def group(self, name: str) -> str:
        """Hash of a group started on this queue: its counts (total, completed, dead), where its
        completion goes and the message to send, how many push_many calls are still pushing, when it finished."""
        return f"{self.prefix}:group:{name}"

    @property
    def groups(self) -> str:
        """Sorted set of the names of the groups started on this queue, scored by when each may
        be forgotten (ms): +inf while open, its record's expiry once finished."""
        return f"{self.prefix}:groups"

    def group_members(self, name: str) -> str:
        """Set of the members of a group that have not ended yet, each "<queue> <id>"."""
        return f"{self.prefix}:members:{name}"


@functools.lru_cache(maxsize=1024)
def keys_of(queue: str) -> QueueKeys:
    """The keys of `queue`, made once per name (a worker's follow-ups name a few queues, again
    and again); raises ValueError as QueueKeys does."""
    return QueueKeys(queue)


def same_slot(key: str, other: str) -> bool:
    """Whether two keys hash to one Redis Cluster slot (as they must to meet in one script)."""
    return bool(key_slot(key.encode()) == key_slot(other.encode()))
