"""What a worker holds: messages taken from Redis and not started yet, each decoded once.

After an error the worker trusts Redis, not this memory: reconcile() keeps what its in-flight
list still has and returns what the list has that the worker never received (a lost reply).
"""

from __future__ import annotations

from collections import Counter, deque
from collections.abc import Callable, Sequence
from typing import NamedTuple, Protocol

from .. import message
from ..message import MalformedMessage, Message
from ..protocol import Outcomes, Taken
from ..signing import MessagePolicy


class Held(NamedTuple):
    """A message taken from Redis and not started yet."""

    raw: bytes
    message: Message | None  # None when malformed, too large or not signed
    problem: str = ""  # why it is not a message the worker may handle
    duplicate: bool = False


_new_tuple = tuple.__new__  # builds a Held without the Python-level __new__ NamedTuple generates


class Elsewhere(Protocol):
    """Messages a worker holds that are not in its Holdings: a supervisor's, in its children."""

    def raws(self) -> list[bytes]: ...

    def forget(self) -> list[Held]: ...


class Holdings(deque[Held]):
    """The messages a worker holds and has not started, oldest first (and, `elsewhere`, those
    it started in other processes)."""

    def __init__(self, policy: MessagePolicy | None = None) -> None:
        super().__init__()
        self.policy = policy or MessagePolicy()  # the queue's size limit and signing keys
        self.elsewhere: Elsewhere | None = None

    def accept(self, taken: Taken, earlier: frozenset[str] = frozenset()) -> frozenset[str]:
        """Decode new messages; `duplicate` comes from the fetch script's check of completed ids,
        or from `earlier`, the ids of a batch taken before this one but not yet settled. An
        element over the size limit (unread), not a message, or, with signing on, not signed
        by a key of ours is held as malformed, with the reason: the worker dead-letters it.
        Returns the ids of the messages accepted (the next batch's `earlier`)."""
        policy = self.policy
        # Signing off and within the limit (the usual case): decode() alone, no call between.
        decode, limit = message.decode if policy.signing is None else policy.admit, policy.max_bytes
        ids: set[str] = set()
        append, add = self.append, ids.add  # bound once: this loop runs for every message
        for raw, duplicate in taken:
            try:
                msg = decode(raw) if len(raw) <= limit else policy.admit(raw)
            except MalformedMessage as error:
                append(Held(raw, None, str(error)))
            else:
                message_id = msg.fields["id"]  # decode() checked it is a string
                append(_new_tuple(Held, (raw, msg, "", duplicate or message_id in earlier)))
                add(message_id)
        return frozenset(ids)

    def ids(self) -> frozenset[str]:
        return frozenset(h.message.id for h in self if h.message is not None)

    def reconcile(self, in_redis: Sequence[bytes], *, popped: bool) -> list[bytes]:
        """Keep only what Redis says we hold (`in_redis`, our in-flight list); with `popped`
        (simple delivery) messages in no list are ours too. Returns the elements of the list we
        did not know of, in order."""
        count = Counter(in_redis)
        for raw in self.elsewhere.raws() if self.elsewhere is not None else ():
            count[raw] -= 1  # running elsewhere: ours, and known
        kept = []
        for h in self:
            if count[h.raw] > 0:
                count[h.raw] -= 1
                kept.append(h)
            elif popped:  # popped, so in no Redis list, unless adopted earlier
                kept.append(h)
        self.clear()
        self.extend(kept)
        return list(count.elements())

    def adopt(self, orphans: list[bytes], completed: Callable[[list[str]], list[bool]]) -> None:
        """Take on messages Redis lists as ours whose fetch reply was lost, with that reply's
        duplicate check done again: an id completed already, held already, or seen earlier among
        the orphans marks a duplicate."""
        ids: list[str | None] = []
        for raw in orphans:
            try:
                ids.append(self.policy.admit(raw).id)
            except MalformedMessage:
                ids.append(None)  # accept() marks it malformed: it is dead-lettered
        valid = [i for i in ids if i is not None]
        done = dict(zip(valid, completed(valid), strict=True))
        seen = set(self.ids())
        flagged = []
        for raw, message_id in zip(orphans, ids, strict=True):
            flagged.append((raw, message_id is not None and (done[message_id] or message_id in seen)))
            if message_id is not None:
                seen.add(message_id)
        self.accept(flagged)

    def release(self, outcomes: Outcomes) -> int:
        """Give back every message held, to the head of the queue in order; returns how many."""
        for h in reversed(self):  # reversed: each release goes to the head of the queue
            outcomes.release(h.raw)
        released = len(self)
        self.clear()
        return released

    def forfeit(self, unconfirmed: list[Outcomes], taken: Taken) -> list[tuple[str | None, int | None, str]]:
        """Give up every message held, every one of `unconfirmed` outcomes and of a batch
        `taken` ahead (our claim on them was lost); returns (id, attempts, outcome) of each,
        outcome being the op or "not started"."""
        lost = [(raw, op.value) for outcomes in unconfirmed for op, raw in outcomes]
        lost += [(h.raw, "not started") for h in self] + [(raw, "not started") for raw, _ in taken]
        lost += [(h.raw, "running") for h in (self.elsewhere.forget() if self.elsewhere is not None else [])]
        self.clear()
        forfeited: list[tuple[str | None, int | None, str]] = []
        for raw, outcome in lost:
            try:
                msg = message.decode(raw)
            except MalformedMessage:
                forfeited.append((None, None, outcome))
            else:
                forfeited.append((msg.id, msg.attempts, outcome))
        return forfeited
