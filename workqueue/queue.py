"""Queue transitions: every change of a message's state is one Lua script or one MULTI.

A message is always in exactly one place: the queue list (`pending`), one worker's `in_flight`
list, the `delayed` retry set, or the `dead_letter` list, until it is completed. Counters in
the `stats` hash change in the same atomic step, so `stats` can prove that nothing was lost.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Iterable, Sequence

import redis

from . import message
from .connection import Scripts, connect
from .keys import QueueKeys
from .message import MalformedMessage, Message
from .settings import Settings

PUSH_CHUNK = 1000
COUNTERS = ("produced", "completed", "retried", "recovered", "dead_lettered", "duplicates_skipped")


@dataclass
class Outcomes:
    """Settlements waiting to be sent to Redis in one `settle` call."""

    args: list[Any] = field(default_factory=list)
    first_at: float = 0.0  # time.monotonic() of the oldest one, to bound how long acks wait

    def __len__(self) -> int:
        return len(self.args) // 4

    def add(self, op: str, raw: bytes, new_raw: bytes = b"", arg: Any = "") -> None:
        if not self.args:
            self.first_at = time.monotonic()
        self.args += (op, raw, new_raw, arg)

    def clear(self) -> None:
        self.args = []


@dataclass(frozen=True)
class Recovered:
    """One message taken back from a worker presumed dead."""

    worker_id: str
    message_id: str | None
    attempts: int
    dead_lettered: bool


class Queue:
    """One named queue on one Redis: push, fetch, settle, recover, inspect."""

    def __init__(
        self,
        name: str,
        client: redis.Redis,
        *,
        max_attempts: int = 3,
        retry_backoff: float = 1.0,
        retry_backoff_max: float = 300.0,
        dedup_ttl: float = 86400.0,
    ) -> None:
        self.name = name
        self.client = client
        self.keys = QueueKeys(name)
        self.scripts = Scripts(client)
        kw = client.connection_pool.connection_kwargs  # where, for logs: never the password
        self.location = f"{kw.get('host', kw.get('path'))}:{kw.get('port', '')}/{kw.get('db', 0)}"
        self.max_attempts = max_attempts
        self.retry_backoff = retry_backoff
        self.retry_backoff_max = retry_backoff_max
        self.dedup_ttl_ms = int(dedup_ttl * 1000)

    @classmethod
    def connect(cls, url: str = "redis://localhost:6379/0", name: str = "demo-1", **options: Any) -> "Queue":
        """Open a queue on the Redis at `url` (connections are made lazily, on first use)."""
        return cls(name, connect(url), **options)

    @classmethod
    def from_settings(cls, settings: Settings) -> "Queue":
        return cls.connect(
            settings.redis_url,
            settings.queue_name,
            max_attempts=settings.max_attempts,
            retry_backoff=settings.retry_backoff,
            retry_backoff_max=settings.retry_backoff_max,
            dedup_ttl=settings.dedup_ttl,
        )

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
        """Append encoded messages; each chunk is one MULTI with its `produced` count.

        After a connection error the caller may push the same messages again: a chunk that did
        reach Redis is then delivered twice, and the second copy is skipped by id.
        """
        for start in range(0, len(raws), PUSH_CHUNK):
            chunk = raws[start : start + PUSH_CHUNK]
            with self.client.pipeline(transaction=True) as pipe:
                pipe.rpush(self.keys.pending, *chunk)
                pipe.hincrby(self.keys.stats, "produced", len(chunk))
                pipe.execute()

    # -- consuming ---------------------------------------------------------------------------

    def fetch(self, worker_id: str, count: int, delivery: str, outcomes: Outcomes | None = None) -> tuple[list[bytes], int]:
        """Settle `outcomes` and take up to `count` messages, in one round trip.

        Returns (messages, wait_ms): when nothing was taken, wait_ms says how long until a retry
        is due (-1: none is waiting).
        """
        in_flight = self.keys.in_flight(worker_id)
        with self.client.pipeline(transaction=False) as pipe:
            if outcomes:
                self._settle(pipe, in_flight, delivery, outcomes.args)
            self.scripts.call("fetch", [self.keys.pending, in_flight, self.keys.delayed], [count, delivery], pipe)
            reply = pipe.execute()[-1]
        if outcomes:
            outcomes.clear()
        return reply[1:], int(reply[0])

    def block(self, worker_id: str, delivery: str, timeout: float) -> bytes | None:
        """Wait up to `timeout` seconds for one message (BLMOVE, or BLPOP in simple delivery)."""
        if delivery == "reliable":
            return self.client.blmove(self.keys.pending, self.keys.in_flight(worker_id), timeout, "LEFT", "RIGHT")
        popped = self.client.blpop([self.keys.pending], timeout)
        return popped[1] if popped else None

    def settle(self, worker_id: str, delivery: str, outcomes: Outcomes, *, recovering: bool = False) -> list[bool]:
        """Apply outcomes for messages held by `worker_id`; idempotent, so safe to resend.

        Returns, per outcome, whether it applied (False: another worker had recovered it)."""
        if not outcomes and not recovering:
            return []
        applied = self._settle(self.client, self.keys.in_flight(worker_id), delivery, outcomes.args, worker_id if recovering else "")
        outcomes.clear()
        return [bool(flag) for flag in applied]

    def _settle(self, target: Any, in_flight: str, delivery: str, args: list[Any], holder: str = "") -> Any:
        k = self.keys
        keys = [in_flight, k.pending, k.delayed, k.dead_letter, k.done, k.stats, k.workers]
        return self.scripts.call("settle", keys, [delivery, self.dedup_ttl_ms, holder, *args], None if target is self.client else target)

    def completed(self, message_ids: Sequence[str]) -> list[bool]:
        """Which of these ids were completed within the de-duplication window."""
        if not message_ids:
            return []
        return [score is not None for score in self.client.zmscore(self.keys.done, list(message_ids))]

    def in_flight(self, worker_id: str) -> list[bytes]:
        """What Redis says this worker holds (the truth after a lost reply)."""
        return self.client.lrange(self.keys.in_flight(worker_id), 0, -1)

    def retry_or_dead(self, outcomes: Outcomes, msg: Message, error: str, *, recovered: bool = False) -> tuple[bool, float]:
        """Record a failed try of `msg`: a retry after backoff, or the dead-letter list when its
        attempts are used up. Returns (dead_lettered, backoff seconds)."""
        new_raw = msg.failed(error)
        if msg.attempts + 1 >= self.max_attempts:
            outcomes.add("dead", msg.raw, new_raw, "1" if recovered else "")
            return True, 0.0
        if recovered:
            outcomes.add("requeue", msg.raw, new_raw)
            return False, 0.0
        delay = message.backoff_seconds(msg.attempts + 1, self.retry_backoff, self.retry_backoff_max)
        outcomes.add("retry", msg.raw, new_raw, int(delay * 1000))
        return False, delay

    # -- workers -----------------------------------------------------------------------------

    def heartbeat(self, worker_id: str, timeout: float) -> None:
        """Register `worker_id` as alive for `timeout` more seconds (by the Redis clock)."""
        self.scripts.call("heartbeat", [self.keys.workers, self.keys.in_flight(worker_id)], [worker_id, max(1, int(timeout * 1000))])

    def deregister(self, worker_id: str) -> bool:
        """Remove a worker that holds nothing; False (and still registered) if it holds messages."""
        return bool(self.scripts.call("heartbeat", [self.keys.workers, self.keys.in_flight(worker_id)], [worker_id, 0]))

    def recover_dead_workers(self, skip: str = "", limit: int = 100) -> list[Recovered]:
        """Take back what workers presumed dead were holding: each message returns to the queue
        with one more attempt, or goes to the dead-letter list when its attempts are used up.
        Safe to run from many workers at once: settle re-checks the heartbeat and moves a message
        only if it is still in the dead worker's list."""
        recovered: list[Recovered] = []
        for raw_id in self.scripts.call("expired", [self.keys.workers], [limit]):
            worker_id = raw_id.decode()
            if worker_id == skip:
                continue
            outcomes, found = Outcomes(), []
            for raw in self.in_flight(worker_id):
                try:
                    msg = message.decode(raw)
                except MalformedMessage as error:
                    outcomes.add("dead", raw, message.dead_letter_malformed(raw, str(error)), "1")
                    found.append(Recovered(worker_id, None, 0, True))
                    continue
                dead, _ = self.retry_or_dead(outcomes, msg, f"worker {worker_id} stopped responding", recovered=True)
                found.append(Recovered(worker_id, msg.id, msg.attempts + 1, dead))
            # Runs even with nothing held, so that the dead worker is deregistered.
            applied = self.settle(worker_id, "reliable", outcomes, recovering=True)
            recovered += [item for item, ok in zip(found, applied) if ok]
        return recovered

    # -- inspection --------------------------------------------------------------------------

    def stats(self) -> dict[str, int]:
        """Counts, counters and the balance of messages unaccounted for (0: nothing lost)."""
        k = self.keys
        in_flight_keys = list(self.client.scan_iter(match=k.in_flight_pattern, count=1000))
        with self.client.pipeline(transaction=True) as pipe:
            pipe.llen(k.pending)
            pipe.zcard(k.delayed)
            pipe.llen(k.dead_letter)
            pipe.hgetall(k.stats)
            pipe.time()
            pipe.zrange(k.workers, 0, -1, withscores=True)
            for key in in_flight_keys:
                pipe.llen(key)
            pending, delayed, dead, counters, server_time, workers, *held = pipe.execute()
        now_ms = server_time[0] * 1000 + server_time[1] // 1000
        result = {
            "pending": pending,
            "in_flight": sum(held),
            "delayed": delayed,
            "dead": dead,
            "workers": sum(1 for _, deadline in workers if deadline > now_ms),
        }
        result.update({name: int(counters.get(name.encode(), 0)) for name in COUNTERS})
        result["unaccounted"] = (
            result["produced"] - result["completed"] - result["dead_lettered"] - result["duplicates_skipped"]
            - pending - delayed - result["in_flight"]
        )
        return result

    def dead_letters(self, limit: int = 100) -> list[bytes]:
        """The oldest `limit` entries of the dead-letter list, as stored."""
        return self.client.lrange(self.keys.dead_letter, 0, limit - 1)
