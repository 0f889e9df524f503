"""The vocabulary of the worker protocol: delivery modes, outcome kinds, the batch of outcomes
settled in one call, what a fetch found, what recovery found, and the retry policy."""

from __future__ import annotations

import random
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

from .message import Emitted, GroupRef, Message

Taken = list[tuple[bytes, bool]]  # elements taken from the queue, each with whether its id was completed already
# What rides with an outcome (its number in the settle call, from 1): ("emit", n, Emitted (signed),
# its group or None) for a follow-up pushed if the outcome completes its message first, and
# ("member", n, group, message id) for a message whose end its group counts.
Extra = tuple[Any, ...]


class Delivery(str, Enum):
    """How a worker takes messages; the value is what settings and the Lua scripts say."""

    RELIABLE = "reliable"  # moved into the worker's in-flight list: at least once
    SIMPLE = "simple"  # popped, as in the tutorial: at most once


class Op(str, Enum):
    """What happened to a message a worker held: the op names settle.lua applies."""

    DONE = "done"  # completed; the id is remembered for de-duplication
    DUPLICATE = "dup"  # skipped: its id was completed already
    RETRY = "retry"  # failed; waits out its backoff in the delayed set
    DEAD = "dead"  # goes to the dead-letter list
    REQUEUE = "requeue"  # taken back from a dead worker: to the queue's tail
    RELEASE = "release"  # never started: back to the queue's head, untouched


@dataclass
class Outcomes:
    """Outcomes waiting to be sent to Redis in one settle call, in the order they were recorded.

    One method per kind of outcome; iterating gives (op, element as stored) pairs. `args` is the
    wire form settle.lua reads: four values per outcome (op, raw, new_raw, arg); `extras` what
    rides with some of them (Extra), which Consumer turns into keys and arguments."""

    args: list[Any] = field(default_factory=list)
    extras: list[Extra] = field(default_factory=list)
    first_at: float = 0.0  # time.monotonic() of the oldest one, to bound how long acks wait
    sequence: int = 1  # numbers each settle call; a resend of an applied one changes nothing

    def __bool__(self) -> bool:
        return bool(self.args)

    def __len__(self) -> int:
        return len(self.args) // 4

    def __iter__(self) -> Iterator[tuple[Op, bytes]]:
        """Each outcome's kind and the element it settles, oldest first."""
        args = self.args
        return ((Op(args[i]), args[i + 1]) for i in range(0, len(args), 4))

    def _add(self, op: Op, raw: bytes, new_raw: bytes, arg: Any) -> None:
        if not self.args:
            self.first_at = time.monotonic()
        self.args += (op, raw, new_raw, arg)

    def done(self, raw: bytes, message_id: str, emitted: list[Emitted] | None = None, group: GroupRef | None = None) -> None:
        """Completed: its id is remembered for de-duplication; the follow-ups it `emitted`
        (signed) are pushed if this completes it first, and its `group` counts it completed."""
        if not self.args:
            self.first_at = time.monotonic()
        self.args += (Op.DONE, raw, b"", message_id)  # written out: once per message settled
        if emitted or group is not None:
            number = len(self.args) // 4
            self.extras += [("emit", number, follow_up, group) for follow_up in emitted or ()]
            if group is not None:
                self.extras.append(("member", number, group, message_id))

    def duplicate(self, raw: bytes, message_id: str = "", group: GroupRef | None = None) -> None:
        """Skipped without running: its id was completed already (so its `group` counts it
        completed, if it has not yet)."""
        self._add(Op.DUPLICATE, raw, b"", "")
        if group is not None:
            self.extras.append(("member", len(self.args) // 4, group, message_id))

    def retry(self, raw: bytes, new_raw: bytes, delay_ms: int) -> None:
        """Failed: `new_raw` waits `delay_ms` in the delayed set."""
        self._add(Op.RETRY, raw, new_raw, delay_ms)

    def dead(self, raw: bytes, new_raw: bytes, *, recovered: bool = False, member: Message | None = None) -> None:
        """`new_raw` goes to the dead-letter list (`recovered`: found held by a dead worker); when
        the message is a `member` of a group, the group counts it dead."""
        self._add(Op.DEAD, raw, new_raw, "1" if recovered else "")
        if member is not None and member.group is not None:
            self.extras.append(("member", len(self.args) // 4, member.group, member.id))

    def requeue(self, raw: bytes, new_raw: bytes) -> None:
        """Taken back from a dead worker: `new_raw` goes to the queue's tail."""
        self._add(Op.REQUEUE, raw, new_raw, "")

    def release(self, raw: bytes) -> None:
        """Never started: back to the queue's head untouched (release in reverse order)."""
        self._add(Op.RELEASE, raw, b"", "")

    def clear(self) -> None:
        """Forget the outcomes once Redis confirmed them; the next batch gets a new number."""
        self.args = []
        self.extras = []
        self.sequence += 1


@dataclass(frozen=True)
class Fetched:
    """What one fetch found: the messages taken and, when none were, why not."""

    taken: Taken
    paused: bool = False  # the queue is paused: nothing is taken until it is resumed
    next_retry_ms: int | None = None  # with nothing taken: ms until a retry is due; None: none waits
    oversized: tuple[int, ...] = ()  # sizes of elements too large to be messages, which Redis dead-lettered

    @classmethod
    def from_reply(cls, reply: list[Any]) -> Fetched:
        """fetch.lua's reply: {0, messages, positions of duplicates (from 1)} when something was
        taken, and then the sizes of elements it dead-lettered as too large, if any (with none
        taken, more may wait: as if a retry were due now); {-2} when the queue is paused, {-1}
        when no retry waits, else {ms until one is due}."""
        if len(reply) == 1:
            code = int(reply[0])
            return cls([], paused=code == -2, next_retry_ms=code if code > 0 else None)
        messages, duplicates = reply[1], reply[2]
        if not duplicates:  # the usual case
            taken = [(raw, False) for raw in messages]
        else:
            flagged = set(duplicates)
            taken = [(raw, i in flagged) for i, raw in enumerate(messages, 1)]
        if len(reply) == 3:
            return cls(taken)
        return cls(taken, next_retry_ms=None if messages else 1, oversized=tuple(int(size) for size in reply[3]))


@dataclass(frozen=True)
class Recovered:
    """One message taken back from a worker presumed dead (or, with `dropped`, a registration
    that held nothing of ours, dropped so that it stops nothing else)."""

    worker_id: str
    message_id: str | None
    attempts: int
    dead_lettered: bool
    dropped: str = ""


@dataclass(frozen=True)
class RetryPolicy:
    """How many failed tries a message gets, how long it waits between them, and what becomes
    of a failed try."""

    max_attempts: int
    backoff: float  # base of the exponential backoff, seconds
    backoff_max: float  # its cap, seconds

    def exhausted(self, attempts: int) -> bool:
        """Whether a message that failed `attempts` times goes to the dead-letter list."""
        return attempts >= self.max_attempts

    def delay(self, attempts: int) -> float:
        """Seconds before the next try after `attempts` failures: exponential, full jitter."""
        ceiling = min(self.backoff_max, self.backoff * 2 ** min(attempts - 1, 62))
        return random.uniform(0, ceiling)

    def failed(self, outcomes: Outcomes, msg: Message, error: str, *, recovered: bool = False,
               now: float | None = None) -> tuple[bool, float]:
        """Record a failed try of `msg` in `outcomes`: the dead-letter list once its attempts are
        used up, else a retry after backoff (or, `recovered` from a dead worker, straight back
        to the queue). `now` dates a dead letter (Message.failed). Returns (dead-lettered,
        backoff seconds)."""
        if self.exhausted(msg.attempts + 1):
            outcomes.dead(msg.raw, msg.failed(error, dead=True, now=now), recovered=recovered, member=msg)
            return True, 0.0
        new_raw = msg.failed(error)
        if recovered:
            outcomes.requeue(msg.raw, new_raw)
            return False, 0.0
        delay = self.delay(msg.attempts + 1)
        outcomes.retry(msg.raw, new_raw, int(delay * 1000))
        return False, delay
