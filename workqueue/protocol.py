"""The vocabulary of the worker protocol: delivery modes, outcome kinds, the batch of outcomes
settled in one call, what a fetch found, what recovery found, and the retry policy."""

from __future__ import annotations

import random
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

from .message import Message

Taken = list[tuple[bytes, bool]]  # elements taken from the queue, each with whether its id was completed already


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
    wire form settle.lua reads: four values per outcome (op, raw, new_raw, arg)."""

    args: list[Any] = field(default_factory=list)
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

    def done(self, raw: bytes, message_id: str) -> None:
        """Completed: its id is remembered for de-duplication."""
        if not self.args:
            self.first_at = time.monotonic()
        self.args += (Op.DONE, raw, b"", message_id)  # written out: once per message settled

    def duplicate(self, raw: bytes) -> None:
        """Skipped without running: its id was completed already."""
        self._add(Op.DUPLICATE, raw, b"", "")

    def retry(self, raw: bytes, new_raw: bytes, delay_ms: int) -> None:
        """Failed: `new_raw` waits `delay_ms` in the delayed set."""
        self._add(Op.RETRY, raw, new_raw, delay_ms)

    def dead(self, raw: bytes, new_raw: bytes, *, recovered: bool = False) -> None:
        """`new_raw` goes to the dead-letter list (`recovered`: found held by a dead worker)."""
        self._add(Op.DEAD, raw, new_raw, "1" if recovered else "")

    def requeue(self, raw: bytes, new_raw: bytes) -> None:
        """Taken back from a dead worker: `new_raw` goes to the queue's tail."""
        self._add(Op.REQUEUE, raw, new_raw, "")

    def release(self, raw: bytes) -> None:
        """Never started: back to the queue's head untouched (release in reverse order)."""
        self._add(Op.RELEASE, raw, b"", "")

    def clear(self) -> None:
        """Forget the outcomes once Redis confirmed them; the next batch gets a new number."""
        self.args = []
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
            outcomes.dead(msg.raw, msg.failed(error, dead=True, now=now), recovered=recovered)
            return True, 0.0
        new_raw = msg.failed(error)
        if recovered:
            outcomes.requeue(msg.raw, new_raw)
            return False, 0.0
        delay = self.delay(msg.attempts + 1)
        outcomes.retry(msg.raw, new_raw, int(delay * 1000))
        return False, delay
