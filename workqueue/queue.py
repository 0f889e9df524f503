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
from .connection import Scripts, Sent, connect, send_together
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
    sequence: int = 1  # numbers each settle call; a resend of an applied one changes nothing

    def __bool__(self) -> bool:
        return bool(self.args)

    def add(self, op: str, raw: bytes, new_raw: bytes = b"", arg: Any = "") -> None:
        if not self.args:
            self.first_at = time.monotonic()
        self.args += (op, raw, new_raw, arg)

    def clear(self) -> None:
        """Forget the outcomes once Redis confirmed them; the next batch gets a new number."""
        self.args = []
        self.sequence += 1


@dataclass(frozen=True)
class Recovered:
    """One message taken back from a worker presumed dead."""

    worker_id: str
    message_id: str | None
    attempts: int
    dead_lettered: bool


def _ms(seconds: float) -> int:
    """A timeout in whole milliseconds for the scripts, at least 1 (0 would mean 'none')."""
    return max(1, int(seconds * 1000))


def _pairs(reply: list[Any]) -> list[tuple[bytes, bool]]:
    """The fetch script's reply [wait_ms, message, done, message, done, ...] as pairs."""
    return [(reply[i], reply[i + 1] == 1) for i in range(1, len(reply), 2)]


class SentFetch:
    """A fetch (and the settlement riding with it) sent to Redis, its reply not read yet."""

    def __init__(self, sent: Sent, outcomes: Outcomes | None) -> None:
        self.sent = sent
        self.outcomes = outcomes

    def receive(self) -> tuple[list[tuple[bytes, bool]], int]:
        """Wait for the reply: ([(message, already_completed), ...], wait_ms) as from fetch."""
        reply = self.sent.replies()[-1]
        if self.outcomes:
            self.outcomes.clear()  # Redis applied them
        return _pairs(reply), int(reply[0])

    def abandon(self) -> None:
        """Drop the connection unread; the outcomes stay, to be resent (settling is idempotent)."""
        self.sent.abandon()


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
        """Append encoded messages; each chunk is one script call that also counts them.

        After a connection error the caller may push the same messages again: a chunk that did
        reach Redis is then delivered twice, and the second copy is skipped by id.
        """
        for start in range(0, len(raws), PUSH_CHUNK):
            self.scripts.call("push", [self.keys.pending, self.keys.stats], raws[start : start + PUSH_CHUNK])

    # -- consuming ---------------------------------------------------------------------------

    def fetch(
        self, worker_id: str, count: int, delivery: str, outcomes: Outcomes | None = None, *, worker_timeout: float = 30.0
    ) -> tuple[list[tuple[bytes, bool]], int]:
        """Settle `outcomes` and take up to `count` messages, in one round trip.

        Returns ([(message, already_completed), ...], wait_ms): when nothing was taken, wait_ms
        says how long until a retry is due (-1: none is waiting).
        """
        return self.send_fetch(worker_id, count, delivery, outcomes, worker_timeout=worker_timeout).receive()

    def send_fetch(
        self, worker_id: str, count: int, delivery: str, outcomes: Outcomes | None = None, *, worker_timeout: float = 30.0
    ) -> "SentFetch":
        """Send what `fetch` sends, without waiting: the reply is read by SentFetch.receive()."""
        k = self.keys
        commands = []
        if outcomes:
            commands.append(self.scripts.command("settle", *self._settle_call(worker_id, delivery, outcomes)))
        keys = [k.pending, k.in_flight(worker_id), k.delayed, k.done, k.workers]
        commands.append(self.scripts.command("fetch", keys, [count, delivery, worker_id, _ms(worker_timeout)]))
        return SentFetch(Sent(self.client, commands), outcomes)

    def block(self, worker_id: str, delivery: str, timeout: float, *, worker_timeout: float = 30.0) -> list[tuple[bytes, bool]]:
        """Wait up to `timeout` seconds for one message; returns [] or [(message, already_completed)].

        Three commands go down one connection in one write, so Redis runs them back to back: the
        heartbeat script (registering us before anything can enter our in-flight list), BLMOVE
        into our in-flight list, and the small woken script, which checks the moved message's id
        against completed ones (and in simple delivery pops it back out). Whatever else arrived
        meanwhile is taken by the next fetch. The write bypasses redis-py's Pipeline, whose
        bookkeeping would add tens of microseconds to this, the idle pickup path.

        A wait can outlive our registration (we froze, and were presumed dead): the woken
        script then puts the message back on the queue, so it never strands in a list nobody
        recovers, whatever `timeout` is (see woken.lua).
        """
        k = self.keys
        in_flight = k.in_flight(worker_id)
        _, moved, checked = send_together(self.client, [
            self.scripts.command("heartbeat", *self._heartbeat_call(worker_id, worker_timeout)),
            ("BLMOVE", k.pending, in_flight, "LEFT", "RIGHT", timeout),
            self.scripts.command("woken", [in_flight, k.done, k.workers, k.pending], [delivery, worker_id]),
        ])
        # After a timeout the reliable script reads an older element, if any, of our list: it was
        # not taken now. (What the simple script pops is ours either way, so it is returned.)
        if moved is None and delivery == "reliable":
            return []
        return [(checked[0], checked[1] == 1)] if checked else []

    def settle(self, worker_id: str | bytes, delivery: str, outcomes: Outcomes, *, recovering: bool = False) -> list[bool]:
        """Apply outcomes for messages held by `worker_id`; idempotent, so safe to resend.

        Returns, per outcome, whether it applied (False: another worker had recovered it)."""
        if not outcomes and not recovering:
            return []
        applied = self.scripts.call("settle", *self._settle_call(worker_id, delivery, outcomes, recovering))
        outcomes.clear()
        return [bool(flag) for flag in applied]

    def _settle_call(self, worker_id: str | bytes, delivery: str, outcomes: Outcomes, recovering: bool = False) -> tuple[list, list]:
        """Keys and arguments of settle.lua."""
        k = self.keys
        keys = [k.in_flight(worker_id), k.pending, k.delayed, k.dead_letter, k.done, k.stats, k.workers, k.settled]
        return keys, [delivery, self.dedup_ttl_ms, worker_id, 0 if recovering else outcomes.sequence, *outcomes.args]

    def completed(self, message_ids: Sequence[str]) -> list[bool]:
        """Whether each id was completed (within the de-duplication window)."""
        if not message_ids:
            return []
        return [score is not None for score in self.client.zmscore(self.keys.done, list(message_ids))]

    def in_flight(self, worker_id: str | bytes) -> list[bytes]:
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
        self.scripts.call("heartbeat", *self._heartbeat_call(worker_id, timeout))

    def deregister(self, worker_id: str) -> bool:
        """Remove a worker that holds nothing; False (and still registered) if it holds messages."""
        return bool(self.scripts.call("heartbeat", *self._heartbeat_call(worker_id, 0)))

    def _heartbeat_call(self, worker_id: str, timeout: float) -> tuple[list, list]:
        """Keys and arguments of heartbeat.lua; a timeout of 0 deregisters."""
        keys = [self.keys.workers, self.keys.in_flight(worker_id), self.keys.settled]
        return keys, [worker_id, _ms(timeout) if timeout > 0 else 0]

    def recover_dead_workers(self, skip: str = "", limit: int = 100) -> list[Recovered]:
        """Take back what workers presumed dead were holding: each message returns to the queue
        with one more attempt, or goes to the dead-letter list when its attempts are used up.
        Safe to run from many workers at once: settle re-checks the heartbeat and moves a message
        only if it is still in the dead worker's list."""
        recovered: list[Recovered] = []
        for worker_id in self.scripts.call("expired", [self.keys.workers], [limit]):
            # Kept as bytes: an id written by hand need not be UTF-8, and must not stop the rest.
            if worker_id == skip.encode():
                continue
            name = worker_id.decode(errors="replace")
            outcomes, found = Outcomes(), []
            for raw in self.in_flight(worker_id):
                try:
                    msg = message.decode(raw)
                except MalformedMessage as error:
                    outcomes.add("dead", raw, message.dead_letter_malformed(raw, str(error)), "1")
                    found.append(Recovered(name, None, 0, True))
                    continue
                dead, _ = self.retry_or_dead(outcomes, msg, f"worker {name} stopped responding", recovered=True)
                found.append(Recovered(name, msg.id, msg.attempts + 1, dead))
            # Runs even with nothing held, so that the dead worker is deregistered.
            applied = self.settle(worker_id, "reliable", outcomes, recovering=True)
            recovered += [item for item, ok in zip(found, applied) if ok]
        return recovered

    # -- inspection --------------------------------------------------------------------------

    def stats(self, attempts: int = 50) -> dict[str, int]:
        """Counts, counters and the balance of messages unaccounted for (0: nothing lost).

        One script reads everything at one instant. It needs the in-flight list of every
        registered worker as a key, so it refuses when a worker came or went since we listed
        them, and we list them again (bounded by `attempts`)."""
        k = self.keys
        for _ in range(attempts):
            ids = self.client.zrange(k.workers, 0, -1)  # bytes: any id, as stored
            keys = [k.pending, k.delayed, k.dead_letter, k.stats, k.workers, *(k.in_flight(i) for i in ids)]
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
        return result

    def dead_letters(self, limit: int = 100) -> list[bytes]:
        """The oldest `limit` entries of the dead-letter list, as stored."""
        return self.client.lrange(self.keys.dead_letter, 0, limit - 1)

    def requeue_dead(self, limit: int = 100) -> tuple[int, int]:
        """Give the oldest `limit` dead letters another round: back to the queue with attempts 0
        and no error. Malformed entries stay (there is no message to retry). Returns (moved,
        left as malformed)."""
        pairs, malformed = [], 0
        for raw in self.dead_letters(limit):
            try:
                fields = message.decode(raw).fields
            except MalformedMessage:
                malformed += 1
                continue
            fields = {name: value for name, value in fields.items() if name != "error"}
            pairs += (raw, message.encode_stored({**fields, "attempts": 0}))
        moved = 0
        for start in range(0, len(pairs), 2 * PUSH_CHUNK):
            moved += self.scripts.call("requeue", [self.keys.dead_letter, self.keys.pending, self.keys.stats], pairs[start : start + 2 * PUSH_CHUNK])
        return moved, malformed
