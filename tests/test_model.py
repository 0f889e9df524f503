"""A model-checked protocol: random sequences of queue operations against a real redis-server.

Hypothesis drives the library's own calls (Queue.push/fetch/block/settle/recover/requeue, as a
worker and an operator make them) through pushes, garbage, batches, completions, failures,
workers that die, freeze and resume, time passing and Redis restarts from its AOF, and checks
after every step what must always hold:
- each pushed id is in at most one place (pending, delayed, one in-flight list, dead), and in
  none only once it completed;
- every pushed element that is not a message ends in the dead-letter list, or waits in a list;
- no non-empty in-flight list belongs to a worker that is not registered, and a live worker
  knows every element of its list (a request delayed past a rejoin is refused: fencing);
- `stats` balances to 0.
Pipelines too: completed tries emit follow-ups to a second queue, whose own worker runs them,
and groups of members end there; after every step each follow-up id is in at most one place
(pushed once, whatever was resent or recovered), and each group's completion message was
pushed at most once, and exactly once when no member is left, with counts that add up.

CI runs the bounded "ci" profile (tests/conftest.py); `scripts/test tests/test_model.py
--hypothesis-profile=long` runs many more examples, and longer ones.
"""

from __future__ import annotations

import contextlib
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TypeVar

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule, run_state_machine_as_test
from redis.exceptions import NoScriptError, ResponseError
from support import RedisServer

from workqueue import GroupError, Queue, message
from workqueue.message import MalformedMessage, Message
from workqueue.protocol import Outcomes
from workqueue.store.consumer import Consumer
from workqueue.store.outages import is_fenced
from workqueue.store.recovery import recover_dead_workers
from workqueue.store.transport import send_together

# Short enough that "time passes" is a short sleep; a live worker that is presumed dead by
# chance (a slow step) only exercises recovery more: the invariants hold either way.
WORKER_TIMEOUT = 0.05
T = TypeVar("T")
MAX_WORKERS = 4


def deep(levels: int) -> bytes:
    return b'{"id":"deep","body":' + b"[" * levels + b"]" * levels + b"}"


def is_malformed(raw: bytes) -> bool:
    try:
        message.decode(raw)
    except MalformedMessage:
        return True
    return False


GARBAGE = st.one_of(
    st.sampled_from([b"", b"\xff\xfe", b"[]", b'"text"', b'{"id":7}', b'{"id":"x","body":NaN}', deep(1000), deep(100_000)]),
    st.binary(max_size=40).filter(is_malformed),
)


@dataclass
class ModelWorker:
    """One worker's memory: what it believes it holds, and outcomes not yet confirmed."""

    id: str
    queue: Queue
    consumer: Consumer
    held: list[Message] = field(default_factory=list)
    outcomes: Outcomes = field(default_factory=Outcomes)
    state: str = "alive"  # alive, frozen or dead


def some_alive(model: QueueModel) -> bool:
    return any(w.state == "alive" for w in model.workers)


def some_holding(model: QueueModel) -> bool:
    return any(w.state == "alive" and w.held for w in model.workers)


def some_frozen(model: QueueModel) -> bool:
    return any(w.state == "frozen" for w in model.workers)


class QueueModel(RuleBasedStateMachine):
    def __init__(self, server: RedisServer) -> None:
        super().__init__()
        self.server = server
        self.name = f"model-{uuid.uuid4().hex[:8]}"
        self.operator = self._queue()
        self.admin = server.client()
        self.workers: list[ModelWorker] = []
        self.pushed: set[str] = set()
        self.garbage = 0
        # The second stage: follow-ups land on `later`, run by one worker that never fails us;
        # group completions land on `completions`, which nobody serves.
        self.later = Queue.connect(server.url, self.name + "-later", max_attempts=2, retry_backoff=0.001, retry_backoff_max=0.002)
        self.later_consumer = self.later.consumer("later-worker", "reliable", 600)
        self.later_outcomes = Outcomes()
        self.completions = Queue.connect(server.url, self.name + "-done")
        self.groups: list[str] = []

    def _queue(self) -> Queue:
        return Queue.connect(self.server.url, self.name, max_attempts=2, retry_backoff=0.001, retry_backoff_max=0.002)

    def _worker(self, index: int, state: str = "alive") -> ModelWorker | None:
        candidates = [w for w in self.workers if w.state == state]
        return candidates[index % len(candidates)] if candidates else None

    def _accept(self, worker: ModelWorker, taken: list[tuple[bytes, bool]]) -> None:
        """What the worker does with a fetch reply: dead-letter garbage, skip duplicates, hold the rest."""
        for raw, duplicate in taken:
            try:
                msg = message.decode(raw)
            except MalformedMessage as error:
                worker.outcomes.dead(raw, message.dead_letter_malformed(raw, str(error)))
                continue
            if duplicate:
                worker.outcomes.duplicate(raw, msg.id, msg.group)
            else:
                worker.held.append(msg)

    @initialize(workers=st.integers(1, 3), count=st.integers(0, 6))
    def start(self, workers: int, count: int) -> None:
        for _ in range(workers):
            self.start_worker()
        if count:
            self.push(count)

    # -- producers and operators ------------------------------------------------------------

    @rule(count=st.integers(1, 4))
    def push(self, count: int) -> None:
        self.pushed.update(self.operator.push_many({"n": i} for i in range(count)))

    @rule(count=st.integers(1, 4))
    def push_group(self, count: int) -> None:
        """A group of members whose completion goes to the completions queue."""
        name = f"g{len(self.groups)}"
        self.groups.append(name)
        self.pushed.update(self.operator.push_many(({"n": i} for i in range(count)), group=name, on_complete=self.completions.name))

    @rule(index=st.integers(0, 20))
    def add_to_a_group(self, index: int) -> None:
        """One more member for a group started before, unless it finished (then it is refused, and nothing is pushed)."""
        if not self.groups:
            return
        try:
            self.pushed.add(self.operator.push({"late": True}, group=self.groups[index % len(self.groups)]))
        except GroupError:
            pass

    @rule(count=st.integers(1, 3))
    def push_delayed(self, count: int) -> None:
        """Messages due a little later, waiting in the delayed set meanwhile."""
        self.pushed.update(self.operator.push_many(({"n": i} for i in range(count)), delay=WORKER_TIMEOUT))

    @rule(count=st.integers(1, 4), fail=st.booleans())
    def later_stage_runs(self, count: int, fail: bool) -> None:
        """The second stage's worker takes follow-ups and completes (or fails) them."""
        for raw, duplicate in self.later_consumer.fetch(count, self.later_outcomes).taken:
            msg = message.decode(raw)
            if duplicate:
                self.later_outcomes.duplicate(raw, msg.id, msg.group)
            elif fail:
                self.later.retry.failed(self.later_outcomes, msg, "model failure")
            else:
                self.later_outcomes.done(raw, msg.id, None, msg.group)
        self.later_consumer.settle(self.later_outcomes)

    @rule(raw=GARBAGE)
    def push_garbage(self, raw: bytes) -> None:
        self.operator.push_encoded([raw])  # counted as produced, so stats must account for it
        self.garbage += 1

    @rule(limit=st.integers(1, 5))
    def requeue_dead_letters(self, limit: int) -> None:
        """The oldest `limit` dead letters back to the queue, in one requeue call (malformed ones stay)."""
        keys = self.operator.keys
        oldest = self.operator.client.lrange(keys.dead_letter, 0, limit - 1)
        pairs = [part for raw in oldest if not is_malformed(raw) for part in (raw, message.decode(raw).as_pushed())]
        if pairs:
            self.operator.scripts.call("requeue", [keys.dead_letter, keys.pending, keys.stats], pairs)

    # -- workers ----------------------------------------------------------------------------

    @precondition(lambda self: sum(w.state != "dead" for w in self.workers) < MAX_WORKERS)
    @rule()
    def start_worker(self) -> None:
        worker_id, queue = f"w{len(self.workers)}", self._queue()
        worker = ModelWorker(worker_id, queue, queue.consumer(worker_id, "reliable", WORKER_TIMEOUT))
        worker.consumer.join()
        self.workers.append(worker)

    @precondition(some_alive)
    @rule(index=st.integers(0, MAX_WORKERS), count=st.integers(1, 5))
    def fetch_batch(self, index: int, count: int) -> None:
        worker = self._worker(index)
        if worker is None:
            return
        fetched = self._unless_fenced(worker, lambda: worker.consumer.fetch(count, worker.outcomes))
        if fetched is not None:
            self._accept(worker, fetched.taken)

    @precondition(some_alive)
    @rule(index=st.integers(0, MAX_WORKERS))
    def block_briefly(self, index: int) -> None:
        worker = self._worker(index)
        if worker is None:
            return
        self._accept(worker, self._unless_fenced(worker, lambda: worker.consumer.block(0.01)) or [])

    @precondition(some_holding)
    @rule(index=st.integers(0, MAX_WORKERS), successes=st.lists(st.booleans(), min_size=1, max_size=5), emit=st.booleans())
    def finish_some(self, index: int, successes: list[bool], worker: ModelWorker | None = None, emit: bool = True) -> None:
        """The handler ran on the first messages held: True succeeded (with `emit`, emitting a
        follow-up to the second stage), False failed."""
        if worker is None:
            holding = [w for w in self.workers if w.state == "alive" and w.held]
            worker = holding[index % len(holding)]
        for succeed in successes[: len(worker.held)]:
            msg = worker.held.pop(0)
            if succeed:
                if emit:
                    msg.emit(self.later.name, {"from": msg.id})
                worker.outcomes.done(msg.raw, msg.id, list(msg.emitted), msg.group)
            else:
                self.operator.retry.failed(worker.outcomes, msg, "model failure")

    @precondition(some_holding)
    @rule(index=st.integers(0, MAX_WORKERS), order=st.randoms(use_true_random=False), count=st.integers(1, 5))
    def finish_out_of_order(self, index: int, order, count: int) -> None:
        """Children of a supervisor finished some held messages in another order than they were taken."""
        holding = [w for w in self.workers if w.state == "alive" and w.held]
        worker = holding[index % len(holding)]
        for _ in range(min(count, len(worker.held))):
            msg = worker.held.pop(order.randrange(len(worker.held)))
            worker.outcomes.done(msg.raw, msg.id, None, msg.group)

    @precondition(some_holding)
    @rule(index=st.integers(0, MAX_WORKERS), started=st.integers(0, 3))
    def child_dies(self, index: int, started: int) -> None:
        """A supervisor's child died holding the first messages: those it had started are charged
        a crashed try, those it had not go back to the queue's head untouched, in their order."""
        holding = [w for w in self.workers if w.state == "alive" and w.held]
        worker = holding[index % len(holding)]
        taken, worker.held = worker.held[:started + 2], worker.held[started + 2:]
        for msg in taken[:started]:
            self.operator.retry.failed(worker.outcomes, msg, "crashed: the handler's process ended (signal SIGSEGV)")
        for msg in reversed(taken[started:]):
            worker.outcomes.release(msg.raw)

    @precondition(some_alive)
    @rule(index=st.integers(0, MAX_WORKERS))
    def settle(self, index: int, worker: ModelWorker | None = None) -> None:
        worker = worker or self._worker(index)
        if worker is not None:
            self._unless_fenced(worker, lambda: worker.consumer.settle(worker.outcomes))

    def _unless_fenced(self, worker: ModelWorker, call: Callable[[], T]) -> T | None:
        """call(), or None after a refusal because the worker's session ended, when the worker
        rejoins, as its loop does."""
        try:
            return call()
        except ResponseError as error:
            if not is_fenced(error):
                raise
        self.rejoin(0, worker)
        return None

    @precondition(some_alive)
    @rule(index=st.integers(0, MAX_WORKERS))
    def rejoin(self, index: int, worker: ModelWorker | None = None) -> None:
        """A connection error (or a refused request): the worker's resync, as Worker does it."""
        worker = worker or self._worker(index)
        if worker is None:
            return
        if not worker.consumer.join(worker.outcomes.sequence):  # presumed dead meanwhile: what it held is someone else's
            worker.held, worker.outcomes = [], Outcomes(sequence=worker.outcomes.sequence)
        worker.consumer.settle(worker.outcomes)
        in_redis = worker.consumer.in_flight()
        known = [m for m in worker.held if m.raw in in_redis]
        orphans = [raw for raw in in_redis if raw not in {m.raw for m in known}]
        worker.held = known
        flags = worker.consumer.completed([message.decode(raw).id for raw in orphans if not is_malformed(raw)])
        flagged = iter(flags)
        self._accept(worker, [(raw, False if is_malformed(raw) else next(flagged)) for raw in orphans])

    @precondition(some_alive)
    @rule(index=st.integers(0, MAX_WORKERS))
    def refuse_a_settle_and_apply_the_next(self, index: int) -> None:
        """A settle refused for a reason that clears (NOSCRIPT after another worker's script
        flush; BUSY, MISCONF alike) while the next, pipelined behind it, reaches Redis: the worker
        then resends both, lowest number first, as its pipeline does after an error."""
        worker = self._worker(index)
        if worker is None or len(worker.outcomes) < 2:
            return
        args, sequence, half = worker.outcomes.args, worker.outcomes.sequence, len(worker.outcomes) // 2 * 4
        first, second = Outcomes(list(args[:half]), sequence=sequence), Outcomes(list(args[half:]), sequence=sequence + 1)
        worker.outcomes = Outcomes(sequence=sequence + 2)
        refused = ("EVALSHA", "0" * 40, *worker.consumer.settle_command(first)[2:])  # a script Redis does not know
        with contextlib.suppress(NoScriptError):
            send_together(worker.queue.client, worker.queue.keys.pending, [refused, worker.consumer.settle_command(second)])
        unconfirmed = [first, second]
        for _ in range(4):  # a refusal as of an ended session: rejoin, then resend what is still ours
            try:
                while unconfirmed:
                    worker.consumer.settle(unconfirmed[0])
                    unconfirmed.pop(0)
                return
            except ResponseError as error:
                if not is_fenced(error):
                    raise
            if not worker.consumer.join(worker.outcomes.sequence):  # presumed dead: all of it is void
                worker.held, worker.outcomes = [], Outcomes(sequence=worker.outcomes.sequence)
                return
        raise AssertionError("refused again and again")

    @precondition(some_alive)
    @rule(index=st.integers(0, MAX_WORKERS), count=st.integers(1, 5), late=st.booleans())
    def lose_a_fetch_reply(self, index: int, count: int, late: bool) -> None:
        """A fetch whose reply is lost, the worker rejoining; with `late`, the request itself is
        delayed in the network and reaches Redis only after the rejoin (it must be refused)."""
        worker = self._worker(index)
        if worker is None:
            return
        commands = worker.consumer.requests(count, None)
        if not late:  # its reply is dropped (a refusal too: the worker rejoins below either way)
            try:
                send_together(worker.queue.client, worker.queue.keys.pending, commands)
            except ResponseError as error:
                if not is_fenced(error):
                    raise
        self.rejoin(0, worker)
        if late:  # refused, or else the invariant finds messages in its list it never received
            self._unless_fenced(worker, lambda: send_together(worker.queue.client, worker.queue.keys.pending, commands))

    @precondition(some_alive)
    @rule(index=st.integers(0, MAX_WORKERS))
    def recover(self, index: int) -> None:
        worker = self._worker(index)
        if worker is not None:
            recover_dead_workers(worker.consumer, self.operator.retry)

    @precondition(some_alive)
    @rule(index=st.integers(0, MAX_WORKERS))
    def die(self, index: int, worker: ModelWorker | None = None) -> None:
        """SIGKILL: its connections drop, its memory is gone; what it held is in Redis only."""
        worker = worker or self._worker(index)
        if worker is not None:
            worker.queue.client.connection_pool.disconnect()
            worker.state, worker.held, worker.outcomes = "dead", [], Outcomes()

    @precondition(some_alive)
    @rule(index=st.integers(0, MAX_WORKERS), others=st.integers(0, MAX_WORKERS))
    def freeze(self, index: int, others: int) -> None:
        """SIGSTOP for longer than WORKER_TIMEOUT: the others go on, and may recover its messages."""
        worker = self._worker(index)
        if worker is not None:
            worker.state = "frozen"
            self.time_passes(others)

    @precondition(some_alive)
    @rule(index=st.integers(0, MAX_WORKERS), others=st.integers(0, MAX_WORKERS))
    def freeze_while_waiting_then_die(self, index: int, others: int) -> None:
        """Frozen in BLMOVE past WORKER_TIMEOUT, presumed dead and deregistered while the wait is
        still pending in Redis; then a message arrives, and the frozen worker is killed."""
        worker = self._worker(index)
        if worker is None:
            return
        waiter = threading.Thread(target=self._unless_fenced, args=(worker, lambda: worker.consumer.block(0.5)))
        waiter.start()
        worker.state = "frozen"
        self.time_passes(others)
        self.push(1)
        waiter.join(timeout=5)
        self.die(0, worker)

    @precondition(some_frozen)
    @rule(index=st.integers(0, MAX_WORKERS), successes=st.lists(st.booleans(), max_size=5))
    def resume(self, index: int, successes: list[bool]) -> None:
        """SIGCONT: its housekeeper heartbeats, its handler finishes what it was running, and it
        settles, though what it remembers may be stale by now (recovered meanwhile)."""
        worker = self._worker(index, state="frozen")
        if worker is not None:
            worker.state = "alive"
            try:
                worker.consumer.heartbeat()
            except ResponseError as error:  # refused once it was recovered; settle finds out below
                if not is_fenced(error):
                    raise
            self.finish_some(self.workers.index(worker), successes, worker)
            self.settle(0, worker)

    @rule(index=st.integers(0, MAX_WORKERS))
    def time_passes(self, index: int) -> None:
        """Longer than WORKER_TIMEOUT: live workers' housekeepers heartbeat meanwhile, others
        don't, and one of the live ones looks for dead workers, as each does every second."""
        time.sleep(WORKER_TIMEOUT * 1.5)
        self._heartbeat_live_workers()
        self.recover(index)

    @rule()
    def restart_redis(self) -> None:
        """SIGKILL Redis and start it again from its AOF (fsync always); every client reconnects."""
        self.server.kill()
        self.server.start()
        for queue in [self.operator, self.later, self.completions, *(w.queue for w in self.workers)]:
            queue.client.connection_pool.disconnect()
            queue.scripts.load()
        self._heartbeat_live_workers()

    def _heartbeat_live_workers(self) -> None:
        for worker in self.workers:
            if worker.state == "alive":
                self._unless_fenced(worker, worker.consumer.heartbeat)

    # -- what must always hold ---------------------------------------------------------------

    @invariant()
    def every_message_is_in_one_place_and_the_balance_is_zero(self) -> None:
        keys = self.operator.keys
        places = {
            "pending": self.admin.lrange(keys.pending, 0, -1),
            "delayed": self.admin.zrange(keys.delayed, 0, -1),
            "dead": self.admin.lrange(keys.dead_letter, 0, -1),
        }
        registered = set(self.admin.zrange(keys.workers, 0, -1))
        prefix = keys.in_flight("").encode()
        for key in self.admin.scan_iter(match=prefix + b"*", count=1000):  # a test may SCAN
            held = self.admin.lrange(key, 0, -1)
            assert not held or key[len(prefix):] in registered, f"{key!r} holds messages but its worker is not registered"
            places[key.decode()] = held
        for key in self.admin.scan_iter(match=keys.landing("").encode() + b"*", count=1000):
            assert self.admin.llen(key) == 0, f"{key!r} holds a message between steps"
        for worker in self.workers:
            if worker.state == "alive":
                known = [m.raw for m in worker.held] + list(worker.outcomes.args[1::4])
                unknown = [raw for raw in self.admin.lrange(keys.in_flight(worker.id), 0, -1) if raw not in known]
                assert not unknown, f"{worker.id} holds {len(unknown)} messages it does not know of"
        copies: dict[str, int] = {}
        malformed = 0
        for elements in places.values():
            for raw in elements:
                try:
                    fields = message.decode(raw).fields
                except MalformedMessage:  # garbage, or a dead-letter entry wrapping garbage
                    malformed += 1
                    continue
                copies[fields["id"]] = copies.get(fields["id"], 0) + 1
        done = {raw.decode() for raw in self.admin.zrange(keys.done, 0, -1)}
        for message_id in self.pushed:
            assert copies.get(message_id, 0) <= 1, f"{message_id} is in {copies[message_id]} places"
            assert copies.get(message_id, 0) == 1 or message_id in done, f"{message_id} vanished"
        assert malformed == self.garbage, f"{self.garbage} garbage elements pushed, {malformed} found"
        assert self.operator.stats()["unaccounted"] == 0

    @invariant()
    def every_follow_up_is_pushed_once_and_every_group_completes_once(self) -> None:
        later = self.later.keys
        places = [self.admin.lrange(later.pending, 0, -1), self.admin.zrange(later.delayed, 0, -1),
                  self.admin.lrange(later.dead_letter, 0, -1), self.admin.lrange(later.in_flight(self.later_consumer.worker_id), 0, -1)]
        found = [message.decode(raw).id for elements in places for raw in elements]
        assert len(found) == len(set(found)), "a follow-up is in two places"
        completed = {raw.decode() for raw in self.admin.zrange(later.done, 0, -1)}
        # Pushed once each: what was produced is what is somewhere, or completed (and nowhere).
        assert self.later.stats()["produced"] == len(set(found) | completed)
        assert self.later.stats()["unaccounted"] == 0
        bodies = [message.decode(raw).body for raw in self.admin.lrange(self.completions.keys.pending, 0, -1)]
        for name in self.groups:
            ended = [body for body in bodies if body["group"] == name]
            assert len(ended) <= 1, f"group {name} completed {len(ended)} times"
            progress = self.operator.group(name)
            assert len(ended) == (progress["pending"] == 0), f"group {name}: {progress}, {len(ended)} completions"
            assert progress["pending"] == self.admin.scard(self.operator.keys.group_members(name))
            for body in ended:
                assert body["total"] == body["completed"] + body["dead"] == progress["total"]

    def teardown(self) -> None:
        self.admin.flushall()  # our own server, one queue per example


@pytest.fixture(scope="module")
def model_redis(tmp_path_factory):
    server = RedisServer(tmp_path_factory.mktemp("redis-model"), persistent=True).start()
    yield server
    server.stop()


@pytest.mark.slow
# A failure is shrunk, which takes a while; a pass takes well under a minute with the ci profile
# (the long profile, many more examples, gets its time in proportion).
@pytest.mark.timeout(30 * settings.default.max_examples)
def test_the_protocol_keeps_every_invariant_under_random_operations(model_redis):
    """Random pushes, garbage, fetches, outcomes, deaths, freezes, time and Redis restarts never break an invariant."""
    run_state_machine_as_test(lambda: QueueModel(model_redis), settings=settings(stateful_step_count=settings.default.stateful_step_count))
