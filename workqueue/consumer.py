"""The worker's side of a queue: take messages, settle their outcomes, stay registered (taking
back what dead workers held is recovery.py's, on these calls).

A message is always in exactly one place: the queue list (`pending`), one worker's `in_flight`
list, the `delayed` retry set, or the `dead_letter` list, until it is completed. Each method
here is one Lua script call (or one write of several), so every move is atomic, and counters
in the `stats` hash change in the same step as the move they count.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, cast

from redis.exceptions import ResponseError

from .message import Message
from .outages import is_fenced
from .protocol import Delivery, Op, Outcomes
from .transport import BLOCK_SECONDS, Channel, Command, Key, send_together

if TYPE_CHECKING:
    from .queue import Queue

PAUSED = -2  # fetch's wait_ms when the queue is paused
Taken = list[tuple[bytes, bool]]  # (element, duplicate): duplicate when its id was completed already


def _ms(seconds: float) -> int:
    """A timeout in whole milliseconds for the scripts, at least 1 (0 would mean 'none')."""
    return max(1, int(seconds * 1000))


def parse_fetch(reply: list[Any]) -> tuple[Taken, int]:
    """The fetch script's reply [wait_ms, messages, positions of duplicates (from 1)] as
    (taken, wait_ms); a reply without messages is [wait_ms]."""
    if len(reply) == 1:
        return [], int(reply[0])
    messages, duplicates = reply[1], reply[2]
    if not duplicates:  # the usual case
        return [(raw, False) for raw in messages], 0
    flagged = set(duplicates)
    return [(raw, i in flagged) for i, raw in enumerate(messages, 1)], 0


class Consumer:
    """One worker's protocol on one queue: its id, delivery mode and heartbeat timeout are fixed."""

    def __init__(self, queue: Queue, worker_id: str, delivery: Delivery | str, worker_timeout: float) -> None:
        self.queue = queue
        self.worker_id = worker_id
        self.delivery = Delivery(delivery)
        self.worker_timeout = worker_timeout
        self.keys = queue.keys
        self.scripts = queue.scripts
        self.in_flight_key = queue.keys.in_flight(worker_id)
        self.landing_key = queue.keys.landing(worker_id)
        # Every request names the session it was made in; Redis refuses one of an older session.
        self.session = 0  # the session joined last (or being joined), 0 before the first join
        self._joined = 0  # the last session Redis confirmed we joined
        self._waits: Channel | None = None  # block()'s own connection

    def fetch(self, count: int, outcomes: Outcomes | None = None) -> tuple[Taken, int]:
        """Settle `outcomes` and take up to `count` messages, in one round trip.

        Returns (taken, wait_ms): when nothing was taken, wait_ms says how long until a retry is
        due (-1: none is waiting; PAUSED: the queue is paused). Joins first if we never did."""
        if not self.session:
            self.join()
        replies = send_together(self.queue.client, self.keys.pending, self.requests(count, outcomes))
        if outcomes:
            outcomes.clear()  # Redis applied them
        return parse_fetch(replies[-1])

    def requests(self, count: int | None, outcomes: Outcomes | None) -> list[Command]:
        """The commands that settle `outcomes` (if any) and then, given a `count`, take up to
        that many messages: the fetch script's reply comes last."""
        k = self.keys
        commands = []
        if outcomes:
            commands.append(self.settle_command(outcomes))
        if count is not None:
            keys = [k.pending, self.in_flight_key, k.delayed, k.done, k.workers, k.paused, k.sessions]
            args = [count, self.delivery, self.worker_id, _ms(self.worker_timeout), self.session]
            commands.append(self.scripts.command("fetch", keys, args))
        return commands

    def settle_command(self, outcomes: Outcomes) -> Command:
        """The settle script's call for our `outcomes`, for a Channel."""
        return self.scripts.command("settle", *self._settle_call(self.worker_id, outcomes, recovering=False))

    def channel(self) -> Channel:
        """A connection of our own for requests whose replies are read later, in order."""
        return Channel(self.queue.client, self.keys.pending)

    def block(self, timeout: float) -> Taken:
        """Wait up to `timeout` seconds for one message; returns [] or [(message, duplicate)].
        Joins first if we never did.

        Three commands go down one connection in one write, so Redis runs them back to back: the
        heartbeat script (refused if our session ended), BLMOVE into our landing list, and the
        small woken script, which moves the message into our in-flight list (in simple delivery
        it pops it) and checks its id against completed ones. Whatever else arrived meanwhile is
        taken by the next fetch. The write bypasses redis-py's Pipeline, whose bookkeeping would
        add tens of microseconds to this, the idle pickup path; and the connection is ours until
        close(), since taking one from redis-py's pool and giving it back costs as much again.

        A wait can outlive our session (we froze and were presumed dead, or the request was
        delayed in the network past a rejoin): the woken script then puts the message back on
        the queue, so it never strands in a list nobody knows of, whatever `timeout` is.
        """
        if not self.session:
            self.join()
        if self._waits is None:
            self._waits = self.channel()
        self._waits.send(self.wait_requests(timeout))
        _, _, checked = self._waits.read()  # an error drops the connection; the next wait opens one
        return [(checked[0], checked[1] == 1)] if checked else []

    def close(self) -> None:
        """Give back the connection block() keeps (a later block() takes one again)."""
        if self._waits is not None:
            self._waits.release()

    def wait_requests(self, timeout: float) -> list[Command]:
        """The three commands of block(), in our current session."""
        k = self.keys
        woken_keys = [self.landing_key, self.in_flight_key, k.done, k.sessions, k.pending, k.paused]
        return [
            self.scripts.command("heartbeat", *self._heartbeat_call("beat")),
            ("BLMOVE", k.pending, self.landing_key, "LEFT", "RIGHT", timeout),
            self.scripts.command("woken", woken_keys, [self.delivery, self.worker_id, self.session]),
        ]

    def wait_seconds(self, wait_ms: int) -> float:
        """How long block() may wait, given fetch's wait_ms (a retry due then, or -1). Short: a
        frozen worker's wait ends long before it can be presumed dead, so it keeps no message from
        the others for long (and woken.lua returns one that came too late)."""
        timeout = min(BLOCK_SECONDS, self.worker_timeout / 4)
        return timeout if wait_ms < 0 else min(timeout, max(wait_ms, 10) / 1000)

    def settle(self, outcomes: Outcomes) -> list[bool]:
        """Apply outcomes for messages we hold; idempotent, so safe to resend. Returns, per
        outcome, whether it applied (False: another worker had recovered it meanwhile)."""
        if not outcomes:
            return []
        applied = self.scripts.call("settle", *self._settle_call(self.worker_id, outcomes, recovering=False))
        outcomes.clear()
        return [bool(flag) for flag in applied]

    def settle_recovered(self, worker_id: Key, outcomes: Outcomes) -> list[Any]:
        """Apply a recovery's `outcomes` to the messages of `worker_id`, presumed dead, and
        deregister it once its list is empty; per outcome, whether it applied. Nothing happens
        (an empty list) while its heartbeat is alive after all."""
        return cast(list[Any], self.scripts.call("settle", *self._settle_call(worker_id, outcomes, recovering=True)))

    def _settle_call(self, worker_id: Key, outcomes: Outcomes, *, recovering: bool) -> tuple[list[Key], list[Any]]:
        """Keys and arguments of settle.lua, for our own outcomes or a dead worker's."""
        k = self.keys
        keys = [k.in_flight(worker_id), k.pending, k.delayed, k.dead_letter, k.done, k.stats, k.workers, k.settled,
                k.sessions, k.landing(worker_id)]
        # A recovery settles another worker's messages, always in reliable delivery (a simple
        # worker's list holds only what it adopted after a lost reply).
        delivery = Delivery.RELIABLE if recovering else self.delivery
        mode = ("recover", 0, 0) if recovering else ("own", outcomes.sequence, self.session)
        return keys, [delivery, self.queue.dedup_ttl_ms, worker_id, *mode, *outcomes.args]

    def completed(self, message_ids: Sequence[str]) -> list[bool]:
        """Whether each id was completed (within the de-duplication window)."""
        if not message_ids:
            return []
        return [score is not None for score in self.queue.client.zmscore(self.keys.done, list(message_ids))]

    def in_flight(self) -> list[bytes]:
        """What Redis says we hold (the truth after a lost reply)."""
        return cast(list[bytes], self.queue.client.lrange(self.in_flight_key, 0, -1))

    def retry_or_dead(self, outcomes: Outcomes, msg: Message, error: str, *, recovered: bool = False) -> tuple[bool, float]:
        """Record a failed try of `msg`: a retry after backoff, or the dead-letter list when its
        attempts are used up. Returns (dead_lettered, backoff seconds)."""
        if self.queue.retry.exhausted(msg.attempts + 1):
            outcomes.add(Op.DEAD, msg.raw, msg.failed(error, dead=True), "1" if recovered else "")
            return True, 0.0
        new_raw = msg.failed(error)
        if recovered:
            outcomes.add(Op.REQUEUE, msg.raw, new_raw)
            return False, 0.0
        delay = self.queue.retry.delay(msg.attempts + 1)
        outcomes.add(Op.RETRY, msg.raw, new_raw, int(delay * 1000))
        return False, delay

    # -- registration ------------------------------------------------------------------------

    def join(self) -> bool:
        """Start a new session: register us (for worker_timeout seconds), and from now on refuse
        every request of our older sessions, such as one delayed in the network. Returns whether
        our claim on what we hold survived; False when we were presumed dead meanwhile and our
        messages recovered (they are someone else's now: drop them, and their outcomes)."""
        # Above any session this id had: numbers from the clock in microseconds, so a worker id
        # reused by a new process (tests do) still starts above its predecessor's.
        self.session = max(self.session + 1, time.time_ns() // 1000)
        try:
            kept = self.scripts.call("heartbeat", *self._heartbeat_call("join"))
        except ResponseError as error:  # a newer session of this id (a process before us, its
            newer = str(error).rpartition(": ")[2]  # clock ahead of ours): join above it, once
            if not (is_fenced(error) and newer.isdigit()):
                raise
            self.session = int(newer) + 1
            kept = self.scripts.call("heartbeat", *self._heartbeat_call("join"))
        self._joined = self.session
        return bool(kept == 1)

    def heartbeat(self) -> None:
        """Stay registered as alive for worker_timeout more seconds (by the Redis clock). Raises
        a ResponseError, FENCED, when our session ended (outages.is_fenced)."""
        self.scripts.call("heartbeat", *self._heartbeat_call("beat"))

    def deregister(self) -> bool:
        """Leave the registry if we hold nothing; False (and still registered) if we hold messages."""
        return bool(self.scripts.call("heartbeat", *self._heartbeat_call("leave")))

    def _heartbeat_call(self, action: str) -> tuple[list[Key], list[Any]]:
        keys: list[Key] = [self.keys.workers, self.in_flight_key, self.keys.settled, self.keys.sessions, self.landing_key]
        return keys, [self.worker_id, action, _ms(self.worker_timeout), self.session, self._joined]
