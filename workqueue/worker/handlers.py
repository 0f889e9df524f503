"""Running the user's handler: a plain function or an `async def`, with an optional time limit.

A plain handler past its time limit is interrupted from the housekeeping thread. In the main
thread (once install() ran) the housekeeper leaves JobTimeout in a slot and sends the process
SIGUSR2, whose handler raises what the slot holds: that lands at the handler's next Python
instruction and also cuts short a blocking call such as time.sleep() or a socket read. In any
other thread it asks CPython to raise JobTimeout there (PyThreadState_SetAsyncExc, as
Dramatiq's time limits do), which cannot cut a blocking call. A call stuck in C code that
never returns to Python is not cut; for that the housekeeper (housekeeper.py) has the process
ended once a try has run twice its limit. An async handler runs on an event loop of the
runner's own, cancelled at its limit.
"""

from __future__ import annotations

import asyncio
import ctypes
import inspect
import signal
import threading
import time
from collections.abc import Callable
from typing import Any

from ..message import Message

Handler = Callable[[Message], Any]

WAKE_SIGNAL = signal.SIGUSR2

_set_async_exc = ctypes.pythonapi.PyThreadState_SetAsyncExc
_set_async_exc.argtypes = [ctypes.c_ulong, ctypes.py_object]


class JobTimeout(BaseException):
    """Raised inside a handler that ran past its time limit. A BaseException, like
    KeyboardInterrupt, so that a handler's own `except Exception` does not swallow it; its
    `finally` blocks and context managers still run."""


class _Wake:
    """The exception WAKE_SIGNAL's handler raises in the main thread (None: nothing to raise)."""

    pending: type[BaseException] | None = None


def _raise_pending(signum: int, frame: object) -> None:
    """WAKE_SIGNAL's handler: raise the exception left for the main thread, if one still is."""
    exception, _Wake.pending = _Wake.pending, None
    if exception is not None:
        raise exception()


def _land_pending() -> None:
    """Let an exception sent to this thread land here, now: CPython runs a tripped signal
    handler, and raises an asynchronous exception, at its next check between bytecodes, which a
    loop's backward jump makes. (Withdrawing one with PyThreadState_SetAsyncExc(thread, NULL)
    leaves that check armed for good in CPython 3.11: under a tracer the process then spins.)"""
    for _ in range(2):
        pass


def close_interrupts(lock: threading.Lock, exception: type[BaseException], reset: Callable[[], bool]) -> None:
    """End, in the thread it concerns, a window in which `exception` may be sent to that thread:
    under `lock`, reset() ends it and says whether one may have been sent; one still waiting in
    the slot is dropped, and one already on its way lands and is caught here: the window was
    over. Another exception (a WorkerAborted at the end of a try) goes on, as it should. At
    most one more can be pending (nothing is sent once reset() ran), so two rounds do."""
    for _ in range(2):
        try:
            with lock:
                if reset():
                    if _Wake.pending is exception:
                        _Wake.pending = None
                    _land_pending()
            return
        except exception:
            continue


def _consume(generator: Any) -> None:
    """Run a generator a handler returned to its end: its body is the work (a generator function
    itself is refused as a handler, check_handler)."""
    for _ in generator:  # bounded by the handler, as any handler's work is
        pass


def check_handler(handler: Any) -> None:
    """Raise TypeError for what cannot be a handler: not callable, or a generator function
    (calling one runs none of its body, so every message would count as done unrun)."""
    if not callable(handler):
        raise TypeError(f"the handler must be callable, not {type(handler).__name__}")
    if inspect.isgeneratorfunction(handler) or inspect.isasyncgenfunction(handler):
        raise TypeError(f"the handler {getattr(handler, '__qualname__', handler)!r} is a generator function, which would run none of "
                        "its body when called: make it a plain or async def function")


def describe(error: BaseException) -> str:
    """`Type: text` of an exception, whatever its __str__ does (one that raises, or returns no
    text, gets its repr, else a note that its text could not be built)."""
    name = getattr(type(error), "__name__", "an exception")
    for render in (str, repr):
        try:
            text = render(error)
            if isinstance(text, str):
                return f"{name}: {text}"
        except BaseException:  # a broken __str__ is the handler's bug, not the worker's
            continue
    return f"{name}: (its text could not be built)"


class HandlerRunner:
    """Calls the handler once per try and enforces `job_timeout` (seconds; 0: no limit)."""

    def __init__(self, handler: Handler, job_timeout: float = 0.0) -> None:
        self.handler = handler
        self.job_timeout = job_timeout
        self._event_loop: asyncio.AbstractEventLoop | None = None
        # Guards the three fields below: a JobTimeout is only ever requested while the try it is
        # meant for is still running, and one that came too late is dropped.
        self._lock = threading.Lock()
        self._thread = 0  # ident of the thread running the current try
        self._deadline: float | None = None  # time.monotonic() past which a plain try is cut
        self._stuck_after: float | None = None  # past this, the running try is stuck beyond reach
        self._interrupted = False
        self._wake_installed = False  # without our handler, WAKE_SIGNAL would end the process

    def interrupt(self, thread_id: int, exception: type[BaseException]) -> None:
        """Raise `exception` in the thread `thread_id` at its next Python instruction; in the
        main thread (once install() ran) through WAKE_SIGNAL, which also cuts a blocking call."""
        if self._wake_installed and thread_id == threading.main_thread().ident:
            _Wake.pending = exception
            signal.pthread_kill(thread_id, WAKE_SIGNAL)
        else:
            _set_async_exc(thread_id, exception)

    def install(self) -> None:
        """Let WAKE_SIGNAL interrupt blocking calls; only possible (and only done) in the main thread."""
        if threading.current_thread() is threading.main_thread():
            signal.signal(WAKE_SIGNAL, _raise_pending)
            self._wake_installed = True

    def __call__(self, message: Message) -> None:
        """Run one try of the handler; raises what the handler raised, or JobTimeout."""
        if not self.job_timeout:
            result = self.handler(message)
            if result is not None:  # most handlers return None: skip the checks
                if inspect.isawaitable(result):
                    self._run_async(result)
                elif inspect.isgenerator(result):
                    _consume(result)
            return
        with self._lock:
            self._thread = threading.get_ident()
            started = time.monotonic()
            self._interrupted = False
            # An async handler is cut by its event loop, never from outside, so the loop stays
            # sound; it is stuck only if still running at twice the limit (a blocked loop).
            if inspect.iscoroutinefunction(self.handler):
                self._deadline, self._stuck_after = None, started + 2 * self.job_timeout
            else:
                self._deadline, self._stuck_after = started + self.job_timeout, None
        try:
            result = self.handler(message)
            if result is not None and inspect.isawaitable(result):  # most handlers return None: skip the check
                with self._lock:
                    self._deadline, self._stuck_after = None, time.monotonic() + 2 * self.job_timeout
                self._run_async(result)
            elif result is not None and inspect.isgenerator(result):
                _consume(result)
        finally:
            # The try is over; a JobTimeout requested too late (the handler had returned) lands
            # and is dropped here, and only then: anything else pending (a WorkerAborted) goes on.
            close_interrupts(self._lock, JobTimeout, self._end_try)

    def _end_try(self) -> bool:
        self._deadline = self._stuck_after = None
        interrupted, self._interrupted = self._interrupted, False
        return interrupted

    def _run_async(self, awaitable: Any) -> None:
        if self._event_loop is None:
            self._event_loop = asyncio.new_event_loop()
        self._event_loop.run_until_complete(self._await(awaitable))

    async def _await(self, awaitable: Any) -> None:
        task = asyncio.ensure_future(awaitable)
        # asyncio.wait, not wait_for: the handler's own TimeoutError must stay its own error.
        done, _ = await asyncio.wait({task}, timeout=self.job_timeout or None)
        if not done:
            task.cancel()
            await asyncio.wait({task})  # let its finally blocks run
            raise JobTimeout()
        try:
            task.result()
        except asyncio.CancelledError:  # a BaseException: make it an ordinary failed try
            raise RuntimeError("the handler was cancelled") from None

    def enforce(self) -> bool:
        """Called by the housekeeper: interrupt a plain try past its deadline. Returns True when
        a try still runs JOB_TIMEOUT after it was interrupted (stuck where Python cannot reach),
        or an async one at twice the limit: measured from the interrupt, so a housekeeper that
        was itself held up (Redis paused) never takes a try it has just cut for a stuck one."""
        with self._lock:
            now = time.monotonic()
            if self._deadline is not None and now > self._deadline:
                self._deadline, self._stuck_after = None, now + self.job_timeout
                self._interrupted = True
                self.interrupt(self._thread, JobTimeout)
                return False
            return self._stuck_after is not None and now > self._stuck_after

    def close(self) -> None:
        if self._event_loop is not None:
            self._event_loop.close()
            self._event_loop = None


class WorkerAborted(BaseException):
    """Raised in the worker's loop when a limit passed (grace, second signal, a stuck try) and
    no `abort` was given: run() then returns the exit code instead of working on."""


class LoopAbort:
    """The worker's default abort: raise WorkerAborted in the thread running its loop (waking a
    blocking call), only between open() and close(), so that it never lands in the caller's code."""

    def __init__(self, runner: HandlerRunner) -> None:
        self.runner = runner
        self.code: int | None = None  # the exit code, once an abort was sent
        self._thread = 0  # ident of the thread running the loop
        self._open = False
        self._lock = threading.Lock()

    def open(self) -> None:
        """The calling thread's loop starts: from now on an abort may be sent to it."""
        with self._lock:
            self._thread, self.code, self._open = threading.get_ident(), None, True

    def __call__(self, code: int) -> None:
        with self._lock:
            if self._open:
                self.code = code
                self.runner.interrupt(self._thread, WorkerAborted)

    def close(self) -> None:
        """No WorkerAborted after this: none is sent, and one sent but not landed is dropped."""

        def stop_sending() -> bool:
            self._open = False
            return self.code is not None

        close_interrupts(self._lock, WorkerAborted, stop_sending)
