"""A worker's protocol calls on one queue: take messages, settle their outcomes, stay registered
(taking back what dead workers held is recovery.py's, on these calls).

A message is always in exactly one place: the queue list (`pending`), one worker's `in_flight`
list, the `delayed` retry set, or the `dead_letter` list, until it is completed. Each method
here is one Lua script call (or one write of several), so every move is atomic, and counters
in the `stats` hash change in the same step as the move they count.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any, cast

from redis.exceptions import ResponseError

from ..message import GroupRef, member_name
from ..protocol import Delivery, Extra, Fetched, Outcomes, Taken
from ..signing import RETRY_ROOM, MessagePolicy
from .cluster import cluster_of
from .handle import Store
from .keys import keys_of, same_slot
from .outages import is_fenced
from .transport import BLOCK_SECONDS, Channel, Command, Key, send_together

BATCH_BYTES = 1024 * 1024  # what a fetch's messages may add up to (its first is taken whatever its size)
REGROW_SECONDS = 600.0  # a lowered reply budget doubles back at most this often
PAGE_COUNT = 1000  # most elements of one page of an in-flight list


class ReplyBudget:
    """How many bytes of messages one reply may carry: BATCH_BYTES, halved each time Redis
    closes the connection while we wait for a reply. A client-output-buffer-limit does that to
    every reply over it, so batches shrink until they pass; a real outage costs only smaller
    batches for a while, as the budget doubles back at most every REGROW_SECONDS."""

    def __init__(self) -> None:
        self._bytes = BATCH_BYTES
        self._changed_at = 0.0

    def cut(self) -> int:
        """A reply was cut: halve the budget (one message a reply at the least); the new one."""
        self._bytes, self._changed_at = max(1, self._bytes // 2), time.monotonic()
        return self._bytes

    @property
    def bytes(self) -> int:
        if self._bytes < BATCH_BYTES and time.monotonic() - self._changed_at > REGROW_SECONDS:
            self._bytes, self._changed_at = min(BATCH_BYTES, self._bytes * 2), time.monotonic()
        return self._bytes


def _ms(seconds: float) -> int:
    """A timeout in whole milliseconds for the scripts, at least 1 (0 would mean 'none')."""
    return max(1, int(seconds * 1000))


class Consumer:
    """One worker's protocol on one queue: its id, delivery mode and heartbeat timeout are fixed."""

    def __init__(self, store: Store, worker_id: str, delivery: Delivery | str, worker_timeout: float, dedup_ttl: float,
                 max_message_bytes: int = MessagePolicy.max_bytes) -> None:
        """`dedup_ttl`: seconds a completed id is remembered to skip its copies. An element longer
        than `max_message_bytes` and the room failed tries may add is dead-lettered by Redis,
        never sent to us."""
        self.store = store
        self.client = store.client
        self.worker_id = worker_id
        self.delivery = Delivery(delivery)
        self.worker_timeout = worker_timeout
        self.dedup_ttl_ms = int(dedup_ttl * 1000)
        self.keys = store.keys
        self.scripts = store.scripts
        self.in_flight_key = store.keys.in_flight(worker_id)
        self.landing_key = store.keys.landing(worker_id)
        # Every request names the session it was made in; Redis refuses one of an older session.
        self.session = 0  # the session joined last (or being joined), 0 before the first join
        self._joined = 0  # the last session Redis confirmed we joined
        self._waits: Channel | None = None  # block()'s own connection
        self._next_sequence = 1  # of our settles, as the last join said (heartbeat.lua)
        self.max_message_bytes = max_message_bytes
        self._largest = max_message_bytes + RETRY_ROOM
        self.budget = ReplyBudget()
        self.oversized: list[int] = []  # sizes of elements Redis dead-lettered as too large, not yet reported

    def fetch(self, count: int, outcomes: Outcomes | None = None) -> Fetched:
        """Settle `outcomes` and take up to `count` messages, in one round trip. Joins first if
        we never did."""
        if not self.session:
            self.join()
        replies = send_together(self.client, self.keys.pending, self.requests(count, outcomes))
        if outcomes:
            outcomes.clear()  # Redis applied them
        return self.fetched(replies[-1])

    def fetched(self, reply: list[Any]) -> Fetched:
        """What fetch.lua's `reply` says; the sizes of elements it dead-lettered as too large
        are added to `oversized`, for the worker to report."""
        fetched = Fetched.from_reply(reply)
        if fetched.oversized:
            self.oversized += fetched.oversized
        return fetched

    def requests(self, count: int | None, outcomes: Outcomes | None) -> list[Command]:
        """The commands that settle `outcomes` (if any) and then, given a `count`, take up to
        that many messages: the fetch script's reply comes last."""
        k = self.keys
        commands = []
        if outcomes:
            commands.append(self.settle_command(outcomes))
        if count is not None:
            keys = [k.pending, self.in_flight_key, k.delayed, k.done, k.workers, k.paused, k.sessions, k.dead_letter, k.stats]
            args = [count, self.delivery, self.worker_id, _ms(self.worker_timeout), self.session, self.budget.bytes,
                    self.max_message_bytes, self._largest]
            commands.append(self.scripts.command("fetch", keys, args))
        return commands

    def settle_command(self, outcomes: Outcomes) -> Command:
        """The settle script's call for our `outcomes`, for a Channel."""
        return self.scripts.command("settle", *self._settle_call(self.worker_id, outcomes, recovering=False))

    def channel(self) -> Channel:
        """A connection of our own for requests whose replies are read later, in order."""
        return Channel(self.client, self.keys.pending)

    def block(self, timeout: float) -> Taken:
        """Wait up to `timeout` seconds for one message; returns [] or [(message, duplicate)].
        Joins first if we never did.

        Three commands go down one connection in one write, so Redis runs them back to back: the
        heartbeat script (refused if our session ended), BLMOVE into our landing list, and the
        small woken script, which moves the message into our in-flight list (in simple delivery
        it pops it) and checks its id against completed ones. Whatever else arrived meanwhile is
        taken by the next fetch. The write bypasses redis-py's Pipeline, whose bookkeeping would
        slow this, the idle pickup path; and the connection is ours until close(), since taking
        one from redis-py's pool and giving it back would slow it as much again.

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
        if len(checked) == 1:  # too large to be a message: Redis dead-lettered it
            self.oversized.append(int(checked[0]))
            return []
        return [(checked[0], checked[1] == 1)] if checked else []

    def close(self) -> None:
        """Give back the connection block() keeps (a later block() takes one again)."""
        if self._waits is not None:
            self._waits.release()

    def wait_requests(self, timeout: float) -> list[Command]:
        """The three commands of block(), in our current session."""
        k = self.keys
        woken_keys = [self.landing_key, self.in_flight_key, k.done, k.sessions, k.pending, k.paused, k.dead_letter, k.stats]
        woken_args = [self.delivery, self.worker_id, self.session, self.max_message_bytes, self._largest]
        return [
            self.scripts.command("heartbeat", *self._heartbeat_call("beat")),
            ("BLMOVE", k.pending, self.landing_key, "LEFT", "RIGHT", timeout),
            self.scripts.command("woken", woken_keys, woken_args),
        ]

    def wait_seconds(self, fetched: Fetched) -> float:
        """How long block() may wait after a fetch that took nothing: until a retry is due, and
        never long, so a frozen worker's wait ends long before it can be presumed dead and keeps
        no message from the others for long (woken.lua returns one that came too late)."""
        timeout = min(BLOCK_SECONDS, self.worker_timeout / 4)
        due_ms = fetched.next_retry_ms
        return timeout if due_ms is None else min(timeout, max(due_ms, 10) / 1000)

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
        args = [delivery, self.dedup_ttl_ms, worker_id, *mode, len(outcomes), *outcomes.args]
        if outcomes.extras:
            args += self._extras(outcomes.extras, keys)
        return keys, args

    def _extras(self, extras: list[Extra], keys: list[Key]) -> list[Any]:
        """settle.lua's arguments for what rides with the outcomes (follow-ups, group members),
        each key they touch added once to `keys`."""
        placed: dict[tuple[str, ...], int] = {}

        def place(what: tuple[str, ...], names: list[str]) -> int:
            if what not in placed:
                placed[what] = len(keys) + 1
                keys.extend(names)
            return placed[what]

        # On a cluster, a message's group in another slot than ours (written by hand: producers
        # refuse one) cannot be reached by our script: it is left out, rather than fail the call.
        cluster = cluster_of(self.client, ask=False) is not None

        def group_keys(group: GroupRef) -> int | None:
            home, done = keys_of(group.queue), keys_of(group.on_complete)
            if cluster and not (same_slot(self.keys.pending, home.pending) and same_slot(self.keys.pending, done.pending)):
                return None
            return place(("group", *group), [home.group(group.name), home.group_members(group.name), done.pending, done.stats,
                                             home.groups])

        args: list[Any] = []
        for extra in extras:
            if extra[0] == "emit":
                _, number, follow_up, group = extra
                target = keys_of(follow_up.queue)
                args += ("emit", number, place(("queue", follow_up.queue), [target.pending, target.stats]), follow_up.raw)
                if group is not None and (at := group_keys(group)) is not None:
                    args += ("join", number, at, member_name(follow_up.queue, follow_up.message_id))
            else:
                _, number, group, message_id = extra
                if (at := group_keys(group)) is not None:
                    args += ("member", number, at, member_name(self.keys.queue, message_id))
        return args

    def completed(self, message_ids: Sequence[str]) -> list[bool]:
        """Whether each id was completed (within the de-duplication window)."""
        if not message_ids:
            return []
        return [score is not None for score in self.client.zmscore(self.keys.done, list(message_ids))]

    def in_flight(self) -> list[bytes]:
        """What Redis says we hold (the truth after a lost reply)."""
        return self.read_list(self.in_flight_key)

    def read_list(self, key: Key, limit: int = 1_000_000) -> list[bytes]:
        """A list's elements, read in pages of at most the reply budget (page.lua), up to `limit`."""
        elements: list[bytes] = []
        while len(elements) < limit:
            page, more = self.scripts.call("page", [key], [len(elements), self.budget.bytes, PAGE_COUNT])
            elements += page
            if not more:
                break
        return elements

    # -- registration ------------------------------------------------------------------------

    def join(self, next_sequence: int = 1) -> bool:
        """Start a new session: register us (for worker_timeout seconds), and from now on refuse
        every request of our older sessions, such as one delayed in the network. Returns whether
        our claim on what we hold survived; False when we were presumed dead meanwhile and our
        messages recovered (they are someone else's now: drop them, and their outcomes, and go
        on with `next_sequence`, the number our next settle was to carry)."""
        self._next_sequence = next_sequence
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
        keys: list[Key] = [self.keys.workers, self.in_flight_key, self.keys.settled, self.keys.sessions, self.landing_key,
                           self.keys.done]
        return keys, [self.worker_id, action, _ms(self.worker_timeout), self.session, self._joined, self._next_sequence]
