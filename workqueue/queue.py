"""The queue as producers and operators see it: push messages, read stats, handle dead letters.

The worker's protocol (fetch, settle, heartbeat) is on a Consumer, made per worker with
Queue.consumer(). Every change of state is one Lua script (store/lua/).
"""

from __future__ import annotations

import secrets
from collections.abc import Iterable, Sequence
from typing import Any, cast

import redis

from . import message
from .message import GroupRef
from .protocol import Delivery, RetryPolicy
from .settings import Settings, TlsFiles
from .signing import COMPLETES_GROUP, GROUP_COUNTS, MessagePolicy, Signing
from .store import Store
from .store.cluster import cluster_of
from .store.consumer import Consumer
from .store.dead import DeadLetters
from .store.keys import QueueKeys, same_slot
from .store.memory import refuse_evicting_policy
from .store.outages import ReplicasShortfall
from .store.scripts import Scripts
from .store.stats import Snapshot, StatValue
from .store.stats import read as read_snapshot
from .store.transport import connect
from .values import queue_name

PUSH_CHUNK = 1000  # messages per script call of a push
_DEFAULTS = Settings()  # the one home of defaults


# What a group's progress is read from (its hash, prelude.lua).
_GROUP_FIELDS = ("on_complete", "total", "completed", "dead", "finished_at", "pushing")


class GroupError(Exception):
    """A group cannot take these members: it does not exist, it finished, or it sends its
    completion elsewhere; the text says which."""


def _delay_ms(delay: float) -> int:
    if not delay >= 0:  # NaN too
        raise ValueError("delay must be a number of seconds of at least 0")
    return int(delay * 1000) if delay else 0

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

    def push(self, body: Any, *, message_id: str | None = None, delay: float = 0, group: str | None = None) -> str:
        """Append one message to the queue; returns its id. With `delay` (seconds) it waits in
        Redis's delayed set until due. With `group`, it joins that group, which push_many()
        started (GroupError when there is none, or it finished). Raises MessageTooLarge (a
        ValueError) when it is over MAX_MESSAGE_BYTES encoded, and ReplicasShortfall as
        push_encoded() does."""
        if group is None:
            message_id, raw = self.build(body, message_id)
            self.push_encoded([raw], delay=delay)
            return message_id
        ref = GroupRef(group, self.name, self._completion_queue(group))
        message_id, raw = self.build(body, message_id, ref)
        self._push_members(ref, [(message_id, raw)], "add", delay)
        return message_id

    def push_many(self, bodies: Iterable[Any], *, delay: float = 0, group: str | None = None,
                  on_complete: str | None = None) -> list[str]:
        """Append many messages, PUSH_CHUNK per script call; returns their ids in order. All are built
        and checked before any is pushed: one that cannot be raises, and none is pushed. Raises
        ReplicasShortfall as push_encoded() does.

        With `group`, they are the members of a group (started now, or one not finished with
        the same `on_complete`): when the last member ends, completed or dead-lettered, one
        message is pushed to the queue `on_complete`, whose body names the group and counts
        its members (Queue.group() reads the same). It cannot finish while this call (or
        another push_many of it) is still pushing. Follow-ups its members emit join it. Raises
        ValueError for no bodies. After a connection error, a retry pushes new members (ids are
        new on every call): pass the group's members once."""
        if group is None:
            if on_complete is not None:
                raise ValueError("on_complete needs a group")
            built = [self.build(body) for body in bodies]
            self.push_encoded([raw for _, raw in built], delay=delay)
            return [message_id for message_id, _ in built]
        if on_complete is None:
            raise ValueError("a group needs on_complete, the queue its completion message goes to")
        ref = GroupRef(group, self.name, on_complete)
        self._check_group(ref)
        built = [self.build(body, group=ref) for body in bodies]
        if not built:
            raise ValueError("a group needs at least one member")
        self._push_members(ref, built, "start", delay)
        return [message_id for message_id, _ in built]

    def build(self, body: Any, message_id: str | None = None, group: GroupRef | None = None) -> tuple[str, bytes]:
        """A new message (a member of `group`, if given), signed when the queue has a key: (id,
        encoded). Raises ValueError or TypeError for a body that is not JSON; push_encoded()
        checks the size."""
        message_id, raw = message.new(body, message_id, self.store.clock.now(), group)
        if self.policy.signing is not None:
            raw = self.policy.signing.sign(raw)
        return message_id, raw

    def push_encoded(self, raws: Sequence[bytes], *, delay: float = 0) -> None:
        """Append encoded messages as they are (unsigned unless build() made them); each chunk
        is one script call that also counts them. With `delay` (seconds), they go to the
        delayed set, due then. Raises MessageTooLarge, pushing none, when any is over the limit.

        With push_min_replicas, a WAIT follows each chunk in its round trip; ReplicasShortfall
        (an outage) is raised when fewer replicas confirmed it within push_replica_timeout.
        After that or a connection error the caller may push the same messages again: a chunk
        that did reach Redis is then delivered twice, and the second copy is skipped by id.
        """
        self.policy.check_sizes(raws)
        if not self._registered:
            self.register()
        # Only the keys this push touches: a producer's Redis user may be allowed no others.
        delay_ms = _delay_ms(delay)
        keys = [self.keys.pending, self.keys.stats] + ([self.keys.delayed] if delay_ms else [])
        head = [delay_ms, "", "", "", 0, ""]
        for start in range(0, len(raws), PUSH_CHUNK):
            self._push_chunk(keys, [*head, *raws[start : start + PUSH_CHUNK]])

    def _push_chunk(self, keys: list[str], args: list[Any]) -> None:
        """One call of push.lua (followed by a WAIT with push_min_replicas)."""
        wanted = self.push_min_replicas
        if not wanted:
            self.scripts.call_kept("push", keys, args)
            return
        _, confirmed = self.scripts.call_confirmed("push", keys, args, wanted, self.push_replica_timeout)
        if confirmed < wanted:
            raise ReplicasShortfall(confirmed, wanted, self.push_replica_timeout)

    def _push_members(self, ref: GroupRef, built: Sequence[tuple[str, bytes]], mode: str, delay: float) -> None:
        """Push members of group `ref`, PUSH_CHUNK a call: `mode` 'add' (to a group that exists)
        or 'start' (push_many: the group cannot finish before the last call, push.lua's 'once', or
        'open', 'more'..., 'close'). Raises GroupError as push.lua refuses."""
        self.policy.check_sizes([raw for _, raw in built])
        if not self._registered:
            self.register()
        done = QueueKeys(ref.on_complete)
        keys = [self.keys.pending, self.keys.stats, self.keys.delayed, self.keys.group(ref.name),
                self.keys.group_members(ref.name), done.pending, done.stats, self.keys.groups]
        completion = self._completion(ref) if mode != "add" else b""
        ttl_ms = int(self.dedup_ttl * 1000)
        for start in range(0, len(built), PUSH_CHUNK):
            chunk = built[start : start + PUSH_CHUNK]
            first, last = start == 0, start + PUSH_CHUNK >= len(built)
            chunk_mode = "add" if mode == "add" else "once" if first and last else "open" if first else "close" if last else "more"
            pairs = [value for message_id, raw in chunk for value in (raw, message.member_name(self.name, message_id))]
            try:
                self._push_chunk(keys, [_delay_ms(delay), chunk_mode, ref.on_complete, completion, ttl_ms, ref.name, *pairs])
            except redis.ResponseError as error:
                if str(error).startswith("GROUP "):
                    raise GroupError(f"group {ref.name!r}: {str(error)[6:]}") from None
                raise

    def _completion(self, ref: GroupRef) -> bytes:
        """The completion message of group `ref`, its counts unknown (push.lua fills them in)."""
        fields = {"id": secrets.token_hex(16), "attempts": 0, "created_at": round(self.store.clock.now(), 6),
                  "body": {"group": ref.name, "queue": ref.queue, **dict.fromkeys(GROUP_COUNTS, -1)}, COMPLETES_GROUP: True}
        raw = message.encode(fields)
        return raw if self.policy.signing is None else self.policy.signing.sign(raw)

    def _check_group(self, ref: GroupRef) -> None:
        """Refuse names the rules refuse, and, on Redis Cluster, a group or completion queue in
        another slot than this queue (one script must reach them all)."""
        for what, name in (("group", ref.name), ("on_complete", ref.on_complete)):
            try:
                queue_name(name)
            except ValueError as error:
                raise ValueError(f"the {what} name {name!r} {error}") from None
        if cluster_of(self.client) is not None and not same_slot(self.keys.pending, QueueKeys(ref.on_complete).pending):
            raise ValueError(f"on Redis Cluster a group's queues must share a slot: name them with one hash tag, as "
                             f"{{tag}}{self.name.split('}')[-1]} and {{tag}}{ref.on_complete.split('}')[-1]} (see docs/pipelines.md)")

    def _completion_queue(self, group: str) -> str:
        """The on_complete of a group started on this queue; GroupError when there is none."""
        found = self.client.hget(self.keys.group(group), "on_complete")
        if found is None:
            raise GroupError(f"group {group!r} does not exist on queue {self.name!r}: start it with push_many(group=...)")
        return cast(bytes, found).decode()

    def groups(self, count: int = 100) -> list[dict[str, Any]]:
        """The progress of up to `count` groups started on this queue: the open ones, then the
        finished ones not yet expired, most recently finished first (two round trips)."""
        names = [name.decode(errors="replace") for name in cast(list[bytes], self.client.zrange(
            self.keys.groups, "+inf", self.store.clock.now() * 1000, byscore=True, desc=True, offset=0, num=count))]
        reads = self.client.pipeline(transaction=False)
        for name in names:
            reads.hmget(self.keys.group(name), *_GROUP_FIELDS)
        found = (self._progress(name, fields) for name, fields in zip(names, reads.execute() if names else [], strict=True))
        return [progress for progress in found if progress is not None]  # None: expired since

    def group(self, name: str) -> dict[str, Any]:
        """Progress of a group started on this queue: total, completed, dead, pending (members
        not ended), done (its completion was pushed), and on_complete; GroupError when there is
        no such group (never started, or finished and expired)."""
        progress = self._progress(name, cast(list[bytes | None], self.client.hmget(self.keys.group(name), *_GROUP_FIELDS)))
        if progress is None:
            raise GroupError(f"group {name!r} does not exist on queue {self.name!r} (never started, or finished and expired)")
        return progress

    def _progress(self, name: str, fields: list[bytes | None]) -> dict[str, Any] | None:
        """A group's progress from its hash's _GROUP_FIELDS, or None when it has no hash."""
        on_complete, total_text, completed_text, dead_text, finished_at, pushing = fields
        if on_complete is None:
            return None
        total, completed, dead = (int(value or 0) for value in (total_text, completed_text, dead_text))
        return {"group": name, "queue": self.name, "on_complete": on_complete.decode(), "total": total, "completed": completed,
                "dead": dead, "pending": total - completed - dead, "sealed": int(pushing or 0) <= 0, "done": finished_at is not None}

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
