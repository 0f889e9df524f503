"""The supervisor's children: the processes that run the handler (child.py), started, fed,
watched and replaced here. The supervisor itself runs no handler code.

Each child has a pipe and an array shared with it, one place per slot: 0 while the message in
the slot has not started, its start time (time.monotonic(), one clock for every process on
Linux) once it has, DONE or FAILED once it ended. So when a child dies, whatever the cause,
Finished tells for each message it held what became of it: done (its result died with the
child), failed (its error had been sent), crashed (it was running: it gets its attempt), or
released (it never started: it goes back untouched).
"""

from __future__ import annotations

import mmap
import os
import select
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from typing import Any, NamedTuple

import orjson

from ..message import Emitted
from . import child
from .held import Held

# A try still running this long (s) past JOB_TIMEOUT, after the child was asked to cut it, has
# its child ended: the handler is stuck where Python cannot reach it (C code holding the GIL).
KILL_GRACE = 1.0
# Messages sent to a child beyond what it runs at once, so that a try ending starts the next
# without waiting for the supervisor: about BATCH_SECONDS of work at the handler's pace, as measured.
BATCH_SECONDS = 0.05
CRASH = "crashed: "  # how a try that ended its process is recorded; such a message then runs alone
# The end of the error of tries ended together past JOB_TIMEOUT: when C code holds the GIL, every
# try of that child stalls, and which one holds it cannot be told from outside. Each is charged,
# and runs alone next time, where only the culprit times out again.
SHARED = " (with other tries in its process, all stalled: it runs alone next time)"
# A child that ended sooner than this (s) after it started is replaced no sooner: a handler
# whose module cannot be imported in a child must not have children started in a tight loop.
RESTART_PAUSE = 1.0
STOPPED: frozenset[int] = frozenset()  # Child.killed_for of a child the supervisor ended itself: what it ran goes back
_new_tuple = tuple.__new__  # builds a Finished without the Python-level __new__ NamedTuple generates


class Finished(NamedTuple):
    """What became of one message a child held: `outcome` is done, failed, timeout, crashed or
    released; `error` and `trace` (the traceback's text) for the failed ones; `seconds` the try
    took, when it succeeded."""

    held: Held
    outcome: str
    error: str = ""
    trace: str = ""
    seconds: float = 0.0
    emitted: list[Emitted] | None = None  # the follow-ups a done try emitted


@dataclass
class Child:
    """One child process and what it holds."""

    process: subprocess.Popen[bytes]
    conn: Connection
    marks: Any  # the shared array: a double per slot (a memoryview of a mapping)
    sentinel: int  # readable once the process has ended (a pidfd), else the pipe's own
    pidfd: bool  # whether `sentinel` is a pidfd of its own (not the pipe's)
    pipe: Any  # a poll object watching the pipe alone: whether another frame waits, in one call
    slots: int
    held: dict[int, Held] = field(default_factory=dict)
    free: list[int] = field(default_factory=list)  # slots holding nothing
    alone: bool = False  # running a message that crashed a child before: nothing else beside it
    killed_for: frozenset[int] | None = None  # the slots it was ended for, past JOB_TIMEOUT; STOPPED: to stop
    window: int = 1  # messages it may hold: its concurrency, up to a batch's worth for quick handlers

    ended: bool = False  # found dead: wait() buries it, and replaces it once it may
    started_at: float = field(default_factory=time.monotonic)

    def __post_init__(self) -> None:
        self.free = list(range(self.slots - 1, -1, -1))

    def room(self) -> int:
        return 0 if self.alone or self.ended else max(0, self.window - len(self.held))

    def release(self, slot: int) -> Held:
        """The message in `slot`, whose slot is free again."""
        self.free.append(slot)
        return self.held.pop(slot)


def _suspect(held: Held) -> bool:
    """Whether a message's last try ended its process, or stalled with others: it runs alone."""
    error = held.message.fields.get("error") if held.message is not None else None
    return type(error) is str and (error.startswith(CRASH) or error.endswith(SHARED))


class ChildPool:
    """`processes` children, each running up to `concurrency` tries at once."""

    def __init__(self, spec: str, processes: int, concurrency: int, job_timeout: float, most: int,
                 log_level: str = "warning", log_format: str = "json", queue: str = "") -> None:
        """`most`: the most messages the pool holds at once (PREFETCH); `queue`: which handler
        of a dict `spec` names (spec.load_handler)."""
        self.spec = spec
        self.queue = queue
        self.processes = processes
        self.concurrency = concurrency
        self.job_timeout = job_timeout
        # A child may hold two batches' worth: the next arrives while it works on the last.
        self.slots = max(concurrency, 2 * most // processes + concurrency)
        self.log_level, self.log_format = log_level, log_format
        self.children: list[Child] = []
        self.exits: list[tuple[str, int]] = []  # children that ended unasked: how, and how many messages they held
        self._pace = 0.0  # seconds a try takes, as measured (0: not yet)
        self._poll = select.poll()  # the children's pipes and sentinels, registered while they live

    def start(self) -> None:
        self.children = [self._start() for _ in range(self.processes)]

    def _start(self) -> Child:
        """A new child: a fresh interpreter (`python -m workqueue.worker.child`: none of our
        threads, sockets or state), a socket pair, and the marks in a mapped file no other
        process can open (it is unlinked at once)."""
        ours, theirs = socket.socketpair()
        size = 8 * (self.slots + 1)  # a double per slot, and the stop flag, last
        with tempfile.TemporaryFile(dir="/dev/shm" if os.path.isdir("/dev/shm") else None) as shared:
            shared.truncate(size)
            mapping = mmap.mmap(shared.fileno(), size)
            process = subprocess.Popen(
                [sys.executable, "-m", "workqueue.worker.child", self.spec, str(theirs.fileno()), str(shared.fileno()),
                 str(self.concurrency), repr(self.job_timeout), self.log_level, self.log_format, self.queue],
                pass_fds=(theirs.fileno(), shared.fileno()), stdin=subprocess.DEVNULL,
            )
        theirs.close()
        conn = Connection(ours.detach())
        try:
            sentinel, pidfd = os.pidfd_open(process.pid), True
        except (AttributeError, OSError):  # not Linux 5.3+: the pipe's end tells, as the child's fds close
            sentinel, pidfd = conn.fileno(), False
        for fd in {conn.fileno(), sentinel}:
            self._poll.register(fd, select.POLLIN)
        pipe = select.poll()
        pipe.register(conn.fileno(), select.POLLIN)
        return Child(process, conn, memoryview(mapping).cast("d"), sentinel, pidfd, pipe, self.slots, window=self.concurrency)

    # -- what the worker loop asks -----------------------------------------------------------

    @property
    def busy(self) -> bool:
        """Whether any child holds a message."""
        return any(c.held for c in self.children)

    def room(self) -> int:
        """How many more messages the children can take now."""
        return sum(c.room() for c in self.children)

    def capacity(self) -> int:
        """How many messages the children may hold at most, now."""
        return sum(c.window for c in self.children if not c.ended)

    def held(self) -> list[Held]:
        """Every message the children hold, oldest first per child."""
        return [h for c in self.children for h in c.held.values()]

    def dispatch(self, messages: Sequence[Held]) -> list[Held]:
        """Send `messages` to the children with room, a message that crashed a child before
        alone to an idle child; returns those no child could take now."""
        left: list[Held] = []
        ordinary: list[Held] = []
        for held in messages:
            if held.message is not None and "error" in held.message.fields and _suspect(held):
                index = self._idle()
                if index < 0:
                    left.append(held)
                else:
                    self.children[index].alone = True
                    self._send(index, [held])
            else:
                ordinary.append(held)
        # Shared out evenly over the children with room, so that they work in parallel.
        rooms = [(c.room(), index) for index, c in enumerate(self.children)]
        open_rooms = sorted((pair for pair in rooms if pair[0] > 0), reverse=True)
        at = 0
        for position, (room, index) in enumerate(open_rooms):
            share = min(room, -(-(len(ordinary) - at) // (len(open_rooms) - position)))
            if share > 0:
                self._send(index, ordinary[at : at + share])
                at += share
        return left + ordinary[at:]

    def _send(self, index: int, messages: Sequence[Held]) -> None:
        """Give `messages` to child `index`, each in a free slot marked not started, in one frame."""
        target = self.children[index]
        free, marks, held_by = target.free, target.marks, target.held
        slots = []
        for held in messages:
            slot = free.pop()
            marks[slot] = 0.0
            held_by[slot] = held
            slots.append(slot)
        try:
            target.conn.send_bytes(child.pack(slots, [held.raw for held in messages]))
        except OSError:  # it died: found by wait()
            pass

    def _idle(self) -> int:
        """The index of a live child that holds nothing, or -1."""
        return next((i for i, c in enumerate(self.children) if not c.held and not c.ended), -1)

    def wait(self, timeout: float, also: int | None = None) -> list[Finished]:
        """What finished within `timeout` seconds (less once something did, or `also`, another
        descriptor, became readable): results the children sent, and every message of a child
        that died (replaced at once)."""
        poll = self._poll
        if also is not None:
            poll.register(also, select.POLLIN)
        try:  # one poll object kept: no selector made and filled for every wait
            ready = {fd for fd, _ in poll.poll(max(0.0, timeout) * 1000)}  # any event: readable, hung up or failed
        finally:
            if also is not None:
                poll.unregister(also)
        finished: list[Finished] = []
        for index, current in enumerate(self.children):
            if not current.ended:
                if current.conn.fileno() in ready:
                    finished += self._read(current)
                # A pidfd is readable once the process ended; the pipe's end needs asking too.
                if current.sentinel in ready or (not current.pidfd and current.process.poll() is not None):
                    current.ended = True
                    held = len(current.held)
                    finished += self._buried(current)
                    if current.killed_for is None:
                        self.exits.append((self._how(current), held))
            if current.ended and time.monotonic() - current.started_at >= RESTART_PAUSE:
                self.children[index] = self._start()
        self._adapt(finished)
        return finished

    def enforce(self) -> None:
        """End each child whose try ran past JOB_TIMEOUT and KILL_GRACE (found dead by wait())."""
        if not self.job_timeout:
            return
        now, limit = time.monotonic(), self.job_timeout + KILL_GRACE
        for current in self.children:
            late = frozenset(slot for slot in current.held if current.marks[slot] > 0 and now - current.marks[slot] > limit)
            if late and current.killed_for is None:
                current.killed_for = late
                current.process.kill()

    def raws(self) -> list[bytes]:
        """The stored bytes of every message the children hold (Holdings.reconcile counts them)."""
        return [h.raw for h in self.held()]

    def forget(self) -> list[Held]:
        """End every child and replace it, dropping what it held and whatever it would have
        said of it: our claim on those messages was lost (they are someone else's now)."""
        lost = self.held()
        for index, current in enumerate(self.children):
            current.process.kill()
            self._end(current)
            self.children[index] = self._start()
        return lost

    def stop_starting(self) -> None:
        """Ask every child to start no more tries (the worker is stopping)."""
        for current in self.children:
            current.marks[self.slots] = 1.0

    def running(self) -> bool:
        """Whether a try has started and not ended in some child."""
        return any(current.marks[slot] > 0 for current in self.children for slot in current.held)

    def take_back(self) -> list[Finished]:
        """End the children (after stop_starting(), once nothing runs) and say what became of
        every message they held: what never started goes back."""
        finished: list[Finished] = []
        for current in self.children:
            current.killed_for = STOPPED
            current.process.kill()
            finished += self._buried(current)
        self.children = []
        return finished

    def close(self, timeout: float = 5.0) -> None:
        """Ask every child to finish and exit; kill what is still running after `timeout`."""
        for current in self.children:
            try:
                current.conn.send_bytes(b"")
            except OSError:
                pass
        deadline = time.monotonic() + timeout
        for current in self.children:
            try:
                current.process.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                current.process.kill()
            self._end(current)
        self.children = []

    def _end(self, current: Child) -> None:
        """Reap an ended (or killed) child and close what we kept of it."""
        try:
            current.process.wait(5.0)
        except subprocess.TimeoutExpired:  # a kill takes effect at once: not expected
            pass
        if current.sentinel != -1:
            for fd in {current.conn.fileno(), current.sentinel}:
                self._poll.unregister(fd)
            if current.pidfd:
                os.close(current.sentinel)
            current.sentinel = -1
        current.conn.close()

    # -- inside ------------------------------------------------------------------------------

    def _read(self, current: Child) -> list[Finished]:
        """The results `current` sent (all of them, when it has died: a pipe keeps what was written)."""
        finished: list[Finished] = []
        while True:  # bounded by what the child wrote
            try:
                if not current.pipe.poll(0):  # Connection.poll() would make and fill a selector
                    return finished
                frame = current.conn.recv_bytes()
            except (EOFError, OSError):
                return finished
            result = orjson.loads(frame)
            free, held_by, add = current.free, current.held, finished.append
            for entry in result["done"]:  # [slot, seconds], or with the follow-ups a try emitted
                free.append(entry[0])  # Child.release(), written out: once per message
                follow_ups = None if len(entry) == 2 else [Emitted(queue, message_id, raw.encode()) for queue, message_id, raw in entry[2]]
                add(_new_tuple(Finished, (held_by.pop(entry[0]), "done", "", "", entry[1], follow_ups)))
            for slot, error, trace, timed_out in result["failed"]:
                add(Finished(current.release(slot), "timeout" if timed_out else "failed", error, trace))
            if not current.held:
                current.alone = False

    def _buried(self, current: Child) -> list[Finished]:
        """Every message of a child that died, by what its marks say."""
        finished = self._read(current)
        self._end(current)
        how = self._how(current)
        for slot, held in current.held.items():
            mark = current.marks[slot]
            if mark == child.DONE:
                finished.append(Finished(held, "done"))
            elif current.killed_for and slot in current.killed_for:
                shared = SHARED if len(current.killed_for) > 1 else ""
                finished.append(Finished(held, "timeout", f"job timeout after {self.job_timeout:g} s{shared}"))
            elif mark > 0 and current.killed_for is None:
                finished.append(Finished(held, "crashed", f"{CRASH}the handler's process ended ({how})"))
            else:  # never started, cut short by our kill for another message's time limit, or done
                # with follow-ups that died with the child (child.EMITTED): it runs again
                finished.append(Finished(held, "released"))
        current.held.clear()
        return finished

    @staticmethod
    def _how(current: Child) -> str:
        """How an ended child ended: its exit code, or the signal that ended it."""
        code = current.process.returncode
        if code is not None and code < 0:
            try:
                return f"signal {signal.Signals(-code).name}"
            except ValueError:  # a signal Python has no name for
                return f"signal {-code}"
        return f"exit code {code}"

    def _adapt(self, finished: list[Finished]) -> None:
        """Size each child's window: its concurrency, and about BATCH_SECONDS of work at the
        measured pace waiting behind it (none for tries longer than that)."""
        timed = [f.seconds for f in finished if f.seconds > 0]
        if not timed:
            return
        pace = sum(timed) / len(timed)
        self._pace = pace if not self._pace else 0.8 * self._pace + 0.2 * pace
        window = min(self.slots, self.concurrency + int(self.concurrency * BATCH_SECONDS / max(self._pace, 1e-6)))
        for current in self.children:
            current.window = window
