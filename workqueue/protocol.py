"""The vocabulary of the worker protocol: delivery modes, outcome kinds, the batches of outcomes
settled in one call, what recovery found, the retry policy."""

from __future__ import annotations

import random
import time
from dataclasses import dataclass, field
from enum import Enum
from typing import Any


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
    """Settlements waiting to be sent to Redis in one `settle` call."""

    args: list[Any] = field(default_factory=list)
    first_at: float = 0.0  # time.monotonic() of the oldest one, to bound how long acks wait
    sequence: int = 1  # numbers each settle call; a resend of an applied one changes nothing

    def __bool__(self) -> bool:
        return bool(self.args)

    def add(self, op: Op, raw: bytes, new_raw: bytes = b"", arg: Any = "") -> None:
        if not self.args:
            self.first_at = time.monotonic()
        self.args += (op, raw, new_raw, arg)

    def clear(self) -> None:
        """Forget the outcomes once Redis confirmed them; the next batch gets a new number."""
        self.args = []
        self.sequence += 1


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
    """How many failed tries a message gets, and how long it waits between them."""

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
