"""The worker's requests that overlap its work: outcomes settled without waiting for Redis's
reply, and the next batch asked for before the current one starts.

Every such request goes down one connection of the worker's own (a transport Channel), and its
reply is read later, oldest first. The ordering rule: settle calls reach Redis in the order of
their sequence numbers. Outcomes sent with number n are set aside until their reply is read,
and the ones gathered meanwhile get n + 1; one connection keeps the requests in that order.
After an error, the outcomes whose replies were not read are sent again, lowest number first,
before anything newer. A resend of an applied number changes nothing in Redis (settle.lua), so
resending is always safe; what must never happen is n + 1 applied and then n dropped as
"already applied".
"""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass

from ..protocol import Fetched, Outcomes, Taken
from ..store.consumer import Consumer
from ..store.transport import Command, Packed, pack

MAX_UNREAD = 8  # requests sent whose replies wait unread; bounds what an error makes us resend
ACK_DELAY = 0.005  # a finished message waits at most this long (s) for its outcome to be sent
# From this batch size on (handlers at 5 ms a message or faster, and a busy queue) the next
# batch is asked for before the current one starts, so Redis's work overlaps the handler's;
# the worker then holds up to two batches. Slower handlers would only hoard messages.
FETCH_AHEAD_BATCH = 10


@dataclass(frozen=True)
class _Request:
    """A request written to Redis whose reply is not read yet."""

    outcomes: Outcomes | None  # what it settles: sent again if its reply is lost
    fetch: bool  # whether its last reply is a batch of messages


class RequestPipeline:
    """Unsettled outcomes, and the requests sent without waiting (at most one of them a fetch)."""

    def __init__(self, consumer: Consumer) -> None:
        self.consumer = consumer
        self.outcomes = Outcomes()  # of messages finished since the last settle was sent
        self._channel = consumer.channel()
        self._sent: deque[_Request] = deque()  # oldest first, as their replies come
        self._next: Taken = []  # the next batch, read but not started
        self._ahead_of: frozenset[str] = frozenset()  # ids of the batch that was held meanwhile
        self._packed: tuple[Outcomes, tuple[int, int, int], Packed] | None = None  # see pack_ahead()

    @property
    def has_next(self) -> bool:
        """Whether a batch was fetched ahead, read or not."""
        return bool(self._next) or any(request.fetch for request in self._sent)

    @property
    def settled(self) -> bool:
        """Whether Redis confirmed every outcome (nothing to send again)."""
        return not self.outcomes and not any(request.outcomes for request in self._sent)

    def pack_ahead(self) -> None:
        """Pack the settle command of the outcomes so far now, while Redis works on our last
        request anyway (a quick batch just ended and the next one is on its way): the send after
        its reply then only writes it, and Redis does not sit idle while they are packed."""
        if self.outcomes:
            self._packed = (self.outcomes, self._packed_for(), pack(self.consumer.settle_command(self.outcomes)))

    def _packed_for(self) -> tuple[int, int, int]:
        """What a packed settle command depends on besides the outcomes' identity."""
        return self.outcomes.sequence, len(self.outcomes.args), self.consumer.session

    def _requests(self, count: int | None, outcomes: Outcomes | None) -> Sequence[Command | Packed]:
        """consumer.requests(), with the settle command packed ahead if it still is the one."""
        packed, self._packed = self._packed, None
        if outcomes is not None and packed is not None and packed[0] is outcomes and packed[1] == self._packed_for():
            return [packed[2], *self.consumer.requests(count, None)]
        return self.consumer.requests(count, outcomes)

    def _send(self, count: int | None) -> None:
        """Write the outcomes so far and, given a `count`, a fetch; the replies are read later."""
        outcomes = self.outcomes or None
        self._channel.send(self._requests(count, outcomes))
        self._sent.append(_Request(outcomes, count is not None))
        if outcomes is not None:
            self.outcomes = Outcomes(sequence=outcomes.sequence + 1)  # kept until those are confirmed

    def _read_all(self) -> Fetched:
        """Read every reply outstanding; a fetch's batch becomes the next one. Returns what the
        fetch found (nothing, when none was read). On an error the unread requests stay listed:
        settle_all() resends their outcomes, and the worker's resync adopts their messages."""
        fetched = Fetched([])
        while self._sent:
            replies = self._channel.read()
            if self._sent.popleft().fetch:
                fetched = self.consumer.fetched(replies[-1])
                self._next += fetched.taken
        return fetched

    def fetch_ahead(self, count: int, taken: Taken) -> bool:
        """Ask for the next batch of `count` (settling the outcomes so far) as soon as the
        `taken` one is read, before it is even decoded, when both are big enough: not for a
        woken worker's one message, whose start the send would delay. Returns whether it did;
        then say holding() what was held meanwhile."""
        if len(taken) >= FETCH_AHEAD_BATCH and count >= FETCH_AHEAD_BATCH and not self.has_next:
            self._send(count)
            return True
        return False

    def ask(self, count: int) -> None:
        """Ask for up to `count` messages (settling the outcomes so far) without waiting for
        them, unless a batch was asked for already; take_next() reads them."""
        if not self.has_next:
            self._send(count)

    def read_arrived(self) -> bool:
        """Read the replies that have arrived, oldest first, without waiting for others; True
        once a batch asked for is read (take_next() then returns it at once)."""
        while self._sent and self._channel.ready():
            replies = self._channel.read()
            if self._sent.popleft().fetch:
                self._next += self.consumer.fetched(replies[-1]).taken
                return True
        return not self._sent and bool(self._next)

    def fileno(self) -> int | None:
        """The socket replies come on, while a batch asked for is unread (else None)."""
        return self._channel.fileno() if any(request.fetch for request in self._sent) else None

    def holding(self, ids: frozenset[str]) -> None:
        """The ids of the batch held while the batch fetched ahead was asked for."""
        self._ahead_of = ids

    def take_next(self) -> tuple[Taken, frozenset[str]]:
        """The batch fetched ahead (read first), and the ids held when it was asked for: that
        fetch ran before those were settled, so Redis could not flag their copies as duplicates."""
        self._read_all()
        taken, self._next = self._next, []
        return taken, self._ahead_of

    def fetch(self, count: int) -> Fetched:
        """Settle the outcomes and take up to `count` messages, in one round trip."""
        self._read_all()
        self._send(count)
        fetched = self._read_all()
        self._next = []  # they are fetched.taken: nothing else was outstanding
        return fetched

    def settle(self) -> None:
        """Send the outcomes now (a slow batch), without waiting. Replies are read in bulk (one
        socket read takes several), when MAX_UNREAD requests wait or with the next fetch; by
        then they have had the time of a few handler runs to arrive."""
        if len(self._sent) >= MAX_UNREAD:
            self._read_all()
        self._send(None)

    def forget(self) -> tuple[list[Outcomes], Taken]:
        """Drop every outcome not confirmed by Redis and the batch fetched ahead, returning
        them: our session ended and what they concern is someone else's now."""
        self._channel.drop()
        unconfirmed = [request.outcomes for request in self._sent if request.outcomes]
        if self.outcomes:
            unconfirmed.append(self.outcomes)
        self._sent.clear()
        # The number the dropped outcomes had, never sent: the join said the next is this one.
        self.outcomes = Outcomes(sequence=self.outcomes.sequence)
        taken, self._next = self._next, []
        return unconfirmed, taken

    def settle_all(self) -> None:
        """Settle every outcome not confirmed by Redis, and wait for it (after an error, or to
        stop): first those whose replies were not read, lowest number first, then the newer
        ones. Unread requests are dropped with their connection: their replies may be lost."""
        self._channel.drop()
        for request in self._sent:
            if request.outcomes:
                self.consumer.settle(request.outcomes)
        self._sent.clear()
        self.consumer.settle(self.outcomes)
