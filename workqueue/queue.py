"""The queue as producers and operators see it: push messages, read stats, handle dead letters.

The worker's protocol (fetch, settle, heartbeat) is on a Consumer, made per worker with
Queue.consumer(). Every change of state is one Lua script (store/lua/).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any, cast

import redis

from . import message
from .protocol import Delivery, RetryPolicy
from .settings import Settings, TlsFiles
from .signing import MessagePolicy, Signing
from .store import Store
from .store.consumer import Consumer
from .store.dead import DeadLetters
from .store.keys import QueueKeys
from .store.memory import refuse_evicting_policy
from .store.outages import ReplicasShortfall
from .store.scripts import Scripts
from .store.stats import Snapshot, StatValue
from .store.stats import read as read_snapshot
from .store.transport import connect

PUSH_CHUNK = 1000  # messages per script call of a push
_DEFAULTS = Settings()  # the one home of defaults

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
        max_message_bytes: int = _DEFAULTS.max_message_bytes,
        signing_key: str = _DEFAULTS.message_signing_key,
        previous_signing_key: str = _DEFAULTS.message_signing_key_previous,
        push_min_replicas: int = _DEFAULTS.push_min_replicas,
        push_replica_timeout: float = _DEFAULTS.push_replica_timeout,
    ) -> None:
        """With `signing_key`, pushes are signed and workers take only messages signed with it
        or `previous_signing_key` (signing.py); larger than `max_message_bytes`, none. With
        `push_min_replicas`, a push succeeds once that many replicas hold it (push_encoded).
        Raises ValueError for a name the queue-name rule refuses (values.queue_name)."""
        self.name = name
        self.store = Store.open(client, name)
        self.retry = RetryPolicy(max_attempts, retry_backoff, retry_backoff_max)
        self.dedup_ttl = dedup_ttl
        signing = Signing(signing_key, previous_signing_key) if signing_key or previous_signing_key else None
        self.policy = MessagePolicy(max_message_bytes, signing)  # what workers accept; never logged
        self.push_min_replicas = push_min_replicas
        self.push_replica_timeout = push_replica_timeout
        self._registered = False  # in the registry of queues: done once, on the first push

    @classmethod
    def connect(cls, url: str = _DEFAULTS.redis_url, name: str = _DEFAULTS.queue_name, *, password: str | None = None,
                tls: TlsFiles | None = None, **options: Any) -> Queue:
        """Open a queue on the Redis at `url` (connections are made lazily, on first use);
        `password` and `tls` as for transport.connect()."""
        return cls(name, connect(url, password=password, tls=tls), **options)

    @classmethod
    def from_settings(cls, settings: Settings) -> Queue:
        return cls.connect(
            settings.redis_url, settings.queue_name, password=settings.redis_password or None, tls=settings.tls,
            max_attempts=settings.max_attempts, retry_backoff=settings.retry_backoff, retry_backoff_max=settings.retry_backoff_max,
            dedup_ttl=settings.dedup_ttl, max_message_bytes=settings.max_message_bytes,
            signing_key=settings.message_signing_key, previous_signing_key=settings.message_signing_key_previous,
            push_min_replicas=settings.push_min_replicas, push_replica_timeout=settings.push_replica_timeout,
        )

    @property
    def client(self) -> redis.Redis:
        return self.store.client

    @property
    def keys(self) -> QueueKeys:
        return self.store.keys

    @property
    def scripts(self) -> Scripts:
        return self.store.scripts

    @property
    def location(self) -> str:
        """Where the queue is, for log lines: host:port/db, never the password."""
        return self.store.location

    def consumer(self, worker_id: str, delivery: Delivery | str = _DEFAULTS.delivery,
                 worker_timeout: float = _DEFAULTS.worker_timeout) -> Consumer:
        """The worker protocol for one worker of this queue."""
        return Consumer(self.store, worker_id, delivery, worker_timeout, self.dedup_ttl, self.policy.max_bytes)

    # -- producing ---------------------------------------------------------------------------

    def push(self, body: Any, *, message_id: str | None = None) -> str:
        """Append one message to the queue; returns its id. Raises MessageTooLarge (a
        ValueError) when it is over MAX_MESSAGE_BYTES encoded, and ReplicasShortfall as
        push_encoded() does."""
        message_id, raw = self.build(body, message_id)
        self.push_encoded([raw])
        return message_id

    def push_many(self, bodies: Iterable[Any]) -> list[str]:
        """Append many messages, PUSH_CHUNK per script call; returns their ids in order. All are built
        and checked before any is pushed: one that cannot be raises, and none is pushed. Raises
        ReplicasShortfall as push_encoded() does."""
        built = [self.build(body) for body in bodies]
        self.push_encoded([raw for _, raw in built])
        return [message_id for message_id, _ in built]

    def build(self, body: Any, message_id: str | None = None) -> tuple[str, bytes]:
        """A new message, signed when the queue has a key: (id, encoded). Raises ValueError or
        TypeError for a body that is not JSON; push_encoded() checks the size."""
        message_id, raw = message.new(body, message_id, self.store.clock.now())
        if self.policy.signing is not None:
            raw = self.policy.signing.sign(raw)
        return message_id, raw

    def push_encoded(self, raws: Sequence[bytes]) -> None:
        """Append encoded messages as they are (unsigned unless build() made them); each chunk
        is one script call that also counts them. Raises MessageTooLarge, pushing none, when any
        is over the limit.

        With push_min_replicas, a WAIT follows each chunk in its round trip; ReplicasShortfall
        (an outage) is raised when fewer replicas confirmed it within push_replica_timeout.
        After that or a connection error the caller may push the same messages again: a chunk
        that did reach Redis is then delivered twice, and the second copy is skipped by id.
        """
        self.policy.check_sizes(raws)
        if not self._registered:
            self.register()
        keys, wanted = [self.keys.pending, self.keys.stats], self.push_min_replicas
        for start in range(0, len(raws), PUSH_CHUNK):
            chunk = raws[start : start + PUSH_CHUNK]
            if not wanted:
                self.scripts.call_kept("push", keys, chunk)
                continue
            _, confirmed = self.scripts.call_confirmed("push", keys, chunk, wanted, self.push_replica_timeout)
            if confirmed < wanted:
                raise ReplicasShortfall(confirmed, wanted, self.push_replica_timeout)

    def register(self) -> None:
        """List this queue in the registry of queues on its Redis (idempotent). Pushing does
        this once per Queue object; a starting worker calls it. Raises RedisRefused when Redis's
        maxmemory-policy may evict the queue's keys (memory.py)."""
        refuse_evicting_policy(self.store)
        self.scripts.call("register", [self.keys.registry], [self.name])
        self._registered = True

    def registered_queues(self) -> list[str]:
        """The names of every registered queue on this Redis, sorted."""
        return sorted(name.decode(errors="replace") for name in cast(set[bytes], self.client.smembers(self.keys.registry)))

    # -- operating ---------------------------------------------------------------------------

    def pause(self) -> bool:
        """Pause the queue: workers take no new messages until resume() (what they hold they
        finish). Returns False when it was paused already."""
        return bool(self.scripts.call("pause", [self.keys.paused], ["pause", repr(self.store.clock.now())]))

    def resume(self) -> bool:
        """Let workers take messages again. Returns False when the queue was not paused."""
        return bool(self.scripts.call("pause", [self.keys.paused], ["resume"]))

    def is_paused(self) -> bool:
        return bool(self.client.exists(self.keys.paused))

    # -- inspection --------------------------------------------------------------------------

    def stats(self, attempts: int = 50) -> dict[str, StatValue]:
        """Counts, counters and the balance of messages unaccounted for (0: nothing lost); the
        fields of STATS_FIELDS, in order."""
        return self.snapshot(attempts).stats

    def snapshot(self, attempts: int = 50) -> Snapshot:
        """Stats and each registered worker, read at one instant (stats.read)."""
        return read_snapshot(self.store, attempts)

    def peek(self, count: int = 10) -> list[bytes]:
        """The next `count` pending messages, head first, as stored; nothing is taken."""
        return cast(list[bytes], self.client.lrange(self.keys.pending, 0, count - 1))

    @property
    def dead(self) -> DeadLetters:
        """The dead-letter list: list newest first, requeue, purge."""
        return DeadLetters(self.store)
