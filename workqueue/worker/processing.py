"""One message, as the worker loop hands it over: run the handler once (unless the message is
malformed or a duplicate) and record the outcome, its log event and its metrics. The outcome
waits in the pipeline's outcomes until the loop settles them with Redis."""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING

from structlog.typing import FilteringBoundLogger

from .. import message
from ..message import Emitted, GroupRef, MalformedMessage, Message
from ..protocol import RetryPolicy
from ..signing import MessagePolicy
from ..store.clock import RedisClock
from ..store.keys import keys_of, same_slot
from .handlers import HandlerRunner, JobTimeout, WorkerAborted, describe
from .held import Held
from .pipeline import RequestPipeline

if TYPE_CHECKING:  # metrics.py needs prometheus-client, an optional extra
    from ..metrics import WorkerMetrics


class MessageProcessor:
    """Runs one held message and records what became of it."""

    def __init__(self, runner: HandlerRunner, retry: RetryPolicy, pipeline: RequestPipeline,
                 log: FilteringBoundLogger, metrics: WorkerMetrics | None, clock: RedisClock | None = None,
                 follow_ups: FollowUpRules | None = None) -> None:
        """`metrics` is told every outcome (off, the cost is one `if` on the rarer paths);
        `clock` dates dead letters (the host's clock without one); `follow_ups` signs and checks
        what tries emit (without: as pushed unsigned, unchecked)."""
        self.retry = retry
        self.follow_ups = follow_ups or FollowUpRules(MessagePolicy())
        self.now = time.time if clock is None else clock.now
        self.pipeline = pipeline  # its outcomes are a new object after every send: read at each use
        self.log = log
        self.metrics = metrics
        self.job_timeout = runner.job_timeout
        self._run = runner if metrics is None else metrics.timed(runner)  # counts `completed` too
        self._log_processed = getattr(log, "is_enabled_for", lambda level: True)(logging.INFO)
        self._processed_line = getattr(log, "info_held", log.info)  # held: see logs.write_held_lines

    def _member(self, raw: bytes) -> Message | None:
        """A refused element that is still a group's member, refused for its size alone: its
        group must count it dead, or it would wait for it for ever. One whose signature was
        refused counts nowhere: its `group` is not to be trusted (anyone able to push could
        end another producer's group with it)."""
        try:
            msg = message.decode(raw)
            signing = self.follow_ups.policy.signing
            if msg.group is not None and signing is not None:
                signing.verify(msg.fields)
        except MalformedMessage:
            return None
        return msg if msg.group is not None else None

    def report_oversized(self, sizes: list[int], limit: int) -> None:
        """Log (and count) the elements Redis dead-lettered as too large to be messages: no
        worker ever received them (fetch.lua)."""
        for size in sizes:
            error = f"malformed message: too large: {size} bytes, over MAX_MESSAGE_BYTES ({limit})"
            self.log.error("message_dead_lettered", id=None, attempts=None, error=error)
            if self.metrics is not None:
                self.metrics.failed(dead=True)
        sizes.clear()

    def process(self, held: Held) -> None:
        log, msg, outcomes = self.log, held.message, self.pipeline.outcomes
        if msg is None:
            outcomes.dead(held.raw, message.dead_letter_malformed(held.raw, held.problem, self.now()),
                          member=self._member(held.raw))
            log.error("message_dead_lettered", id=None, attempts=None, error=f"malformed message: {held.problem}")
            if self.metrics is not None:
                self.metrics.failed(dead=True)
            return
        if held.duplicate:
            outcomes.duplicate(held.raw, msg.id, msg.group)
            log.info("message_duplicate_skipped", id=msg.id, attempts=msg.attempts)
            if self.metrics is not None:
                self.metrics.duplicate_skipped()
            return
        # Read before the handler runs, which may change the fields (not msg.id and msg.attempts:
        # each is a call, and this runs per message).
        fields = msg.fields
        message_id, attempts = fields["id"], fields.get("attempts", 0)
        try:
            self._run(msg)
        except JobTimeout as error:
            self._failed(held, f"job timeout after {self.job_timeout:g} s", error)
        except WorkerAborted:
            raise
        except BaseException as error:  # the handler is user code: whatever it raises fails its try
            self._failed(held, describe(error), error)
        else:
            if msg.emitted or msg.group is not None:
                if self._completed(held, message_id, msg.emitted) and self._log_processed:
                    self._processed_line("message_processed", id=message_id, attempts=attempts, emitted=len(msg.emitted))
                return
            outcomes.done(held.raw, message_id)
            if self._log_processed:  # below INFO, not even the arguments are built
                self._processed_line("message_processed", id=message_id, attempts=attempts)

    def _completed(self, held: Held, message_id: str, emitted: list[Emitted]) -> bool:
        """Record a completed try that emitted follow-ups or belongs to a group; a follow-up the
        rules refuse fails the try instead. Returns whether it was recorded completed."""
        assert held.message is not None
        try:
            signed = self.follow_ups.signed(emitted, held.message.group)
        except BaseException as error:  # a handler may have put anything in the list
            self._failed(held, f"emit refused: {describe(error)}")
            return False
        self.pipeline.outcomes.done(held.raw, message_id, signed, held.message.group)
        return True

    def record(self, held: Held, outcome: str, error: str = "", trace: str = "", seconds: float = 0.0,
               emitted: list[Emitted] | None = None) -> None:
        """Record what a child process said became of a message (a supervisor's worker): done
        (with the follow-ups it emitted), released (never started: back untouched) or a failed
        try (failed, timeout, crashed), with its error and the text of its traceback."""
        if outcome == "done":
            assert held.message is not None  # only messages go to children
            fields = held.message.fields  # ours: the handler changed only the child's copy
            handed_on = emitted is not None or held.message.group is not None
            if handed_on:
                if not self._completed(held, fields["id"], emitted or []):
                    return
            else:
                self.pipeline.outcomes.done(held.raw, fields["id"])
            if self.metrics is not None:
                self.metrics.completed_elsewhere(seconds)
            if self._log_processed:
                if handed_on:
                    self._processed_line("message_processed", id=fields["id"], attempts=fields.get("attempts", 0),
                                         emitted=len(emitted or []))
                else:
                    self._processed_line("message_processed", id=fields["id"], attempts=fields.get("attempts", 0))
        elif outcome == "released":
            self.pipeline.outcomes.release(held.raw)
        else:
            self._failed(held, error, trace=trace)

    def record_all(self, finished: Iterable[tuple[Held, str, str, str, float, list[Emitted] | None]]) -> None:
        """record() each of what child processes said, in order: (held, outcome, error, trace,
        seconds, emitted). A completed try with nothing riding on it (no follow-ups, no group,
        no metrics or log line) goes to the outcomes the short way."""
        quiet = self.metrics is None and not self._log_processed
        done = self.pipeline.outcomes.done  # recording sends nothing: the same outcomes throughout
        for held, outcome, error, trace, seconds, emitted in finished:
            msg = held.message
            if quiet and outcome == "done" and emitted is None and msg is not None and msg.group is None:
                done(held.raw, msg.fields["id"])
            else:
                self.record(held, outcome, error, trace, seconds, emitted)

    def _failed(self, held: Held, text: str, error: BaseException | None = None, trace: str = "") -> None:
        """Record a failed try: a retry after backoff, or a dead letter once attempts are used up.
        Decided on the message as stored (the handler may have changed its fields); logged with
        the traceback of `error` (or its text, `trace`, from a child process)."""
        msg = message.decode(held.raw)  # decoded before: it decodes again
        dead, delay = self.retry.failed(self.pipeline.outcomes, msg, text, now=self.now())
        if self.metrics is not None:
            self.metrics.failed(dead)
        traceback: dict[str, object] = {"exc_info": error} if error is not None else {"exception": trace} if trace else {}
        if dead:
            self.log.error("message_dead_lettered", id=msg.id, attempts=msg.attempts + 1, error=text, **traceback)
        else:
            self.log.warning("message_retried", id=msg.id, attempts=msg.attempts + 1, error=text, retry_in=round(delay, 3), **traceback)


class FollowUpRules:
    """What a follow-up must be to be pushed: signed with the queue's key (emit() encodes it in
    the handler's process, which holds no key), no larger than MAX_MESSAGE_BYTES, and on Redis
    Cluster in the slot of the queue that emits it (one script pushes it with the settle)."""

    def __init__(self, policy: MessagePolicy, queue_key: str = "", cluster: Callable[[], bool] = lambda: False) -> None:
        """`cluster()` tells whether the queue's Redis is a cluster (asked at each check: the
        client learns it on its first command)."""
        self.policy = policy
        self.queue_key = queue_key
        self.cluster = cluster

    def signed(self, emitted: list[Emitted], group: GroupRef | None) -> list[Emitted]:
        """`emitted` by a member of `group` (or of none), signed; raises ValueError
        (MessageTooLarge) for one the rules refuse.

        The handler may have changed the list: each entry must still be a follow-up as emit()
        encodes it, whose stored id is the id its group counts (our encoder writes the id first)
        and whose group is its parent's (written last, so the one a reader takes)."""
        signing, signed, cluster = self.policy.signing, [], self.cluster()
        ending = _group_ending(group) if group is not None else b""
        for entry in emitted:
            if type(entry) is not Emitted:
                raise ValueError("the follow-ups were changed after emit()")
            queue, message_id, raw = entry
            if type(queue) is not str or type(message_id) is not str or type(raw) is not bytes:
                raise ValueError("the follow-ups were changed after emit()")
            keys_of(queue)  # the queue-name rule
            if not raw.startswith(b'{"id":' + message.encode_text(message_id) + b",") or not raw.endswith(ending):
                raise ValueError("a follow-up was changed after emit()")
            if cluster and not same_slot(self.queue_key, queue):
                raise ValueError(f"{queue!r} is in another Redis Cluster slot than this queue: a pipeline's queues share a "
                                 "hash tag ({tag}name)")
            if signing is not None:
                raw = signing.sign(raw)
            if len(raw) > self.policy.max_bytes:
                self.policy.check_sizes([raw])
            signed.append(Emitted(queue, message_id, raw))
        return signed


@functools.lru_cache(maxsize=256)
def _group_ending(group: GroupRef) -> bytes:
    """How a follow-up emitted by a member of `group` ends (emit() writes its group last)."""
    return b',"group":' + message.encode(group.as_field()) + b"}"
