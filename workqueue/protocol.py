"""The vocabulary of the worker protocol: delivery modes, outcome kinds, the retry policy."""

from __future__ import annotations

import random
from dataclasses import dataclass
from enum import Enum


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
