"""The worker's requests to Redis that overlap its work: outcomes waiting to be settled, and the
next batch asked for before the current one starts.

The ordering rule: settle calls reach Redis in the order of their sequence numbers. Outcomes
ride with the next fetch; when a fetch is sent ahead, the outcomes it carries get number n and
the ones gathered meanwhile n + 1. So before anything newer is settled, the reply of the fetch
sent ahead is read (its outcomes were applied), or, after an error, its outcomes are sent again
first. A resend of an applied number changes nothing in Redis (settle.lua), so resending is
always safe; what must never happen is n + 1 applied and then n dropped as "already applied".
"""

from __future__ import annotations

from .consumer import Consumer, Outcomes, SentFetch, Taken


class FetchAhead:
    """Unsettled outcomes, and at most one fetch in flight whose reply is read later."""

    def __init__(self, consumer: Consumer) -> None:
        self.consumer = consumer
        self.outcomes = Outcomes()  # of messages finished since the last settle was sent
        self._ahead: SentFetch | None = None  # the next batch, asked for; reply not read yet
        self._next: Taken = []  # the next batch, read but not started
        self._ahead_of: frozenset[str] = frozenset()  # ids of the batch that was held meanwhile

    @property
    def in_flight(self) -> bool:
        """Whether a fetch was sent ahead and its reply is not read yet."""
        return self._ahead is not None

    @property
    def has_next(self) -> bool:
        """Whether a batch was fetched ahead, read or not."""
        return self._ahead is not None or bool(self._next)

    @property
    def settled(self) -> bool:
        """Whether Redis confirmed every outcome (nothing to send again)."""
        return not self.outcomes and self._ahead is None

    def send(self, count: int, held_ids: frozenset[str]) -> None:
        """Ask for the next batch (settling the outcomes so far) before starting the held one,
        whose ids are `held_ids`."""
        self._ahead_of = held_ids
        sent = self.outcomes
        self._ahead = self.consumer.send_fetch(count, sent)
        self.outcomes = Outcomes(sequence=sent.sequence + 1)  # they wait until those are confirmed

    def receive(self) -> None:
        """Read the batch asked for ahead, if any. On an error it stays in flight: settle_all()
        resends its outcomes, and the worker's resync adopts its messages."""
        if self._ahead is not None:
            self._next, _ = self._ahead.receive()
            self._ahead = None

    def take_next(self) -> tuple[Taken, frozenset[str]]:
        """The batch fetched ahead (read first), and the ids held when it was asked for: that
        fetch ran before those were settled, so Redis could not flag their copies as duplicates."""
        self.receive()
        taken, self._next = self._next, []
        return taken, self._ahead_of

    def fetch(self, count: int) -> tuple[Taken, int]:
        """Settle the outcomes and take up to `count` messages, in one round trip."""
        self.receive()
        return self.consumer.fetch(count, self.outcomes)

    def settle(self) -> None:
        """Settle the outcomes now (a slow batch): the fetch sent ahead is read first, in order."""
        self.receive()
        self.consumer.settle(self.outcomes)

    def settle_all(self) -> None:
        """Settle every outcome not confirmed by Redis: first those that rode with a fetch whose
        reply was lost (the lower number), then the newer ones."""
        if self._ahead is not None:
            self._ahead.abandon()
            if self._ahead.outcomes:
                self.consumer.settle(self._ahead.outcomes)
            self._ahead = None
        self.consumer.settle(self.outcomes)
