"""Handlers for the supervisor's tests: each message's body says how its try behaves; every try
that runs to its end appends the message's id to the file TEST_RUNS_FILE names."""

import asyncio
import ctypes
import os
import sys
import time

HOLDING_THE_GIL = ctypes.PyDLL(None)  # its C functions run without releasing the GIL


class Unprintable(Exception):
    """An exception whose text cannot be built."""

    def __str__(self):
        raise RuntimeError("no text")

    def __repr__(self):
        raise RuntimeError("no repr")


class Custom(BaseException):
    """A BaseException of the handler's own."""


def _ran(message_id: str) -> None:
    with open(os.environ["TEST_RUNS_FILE"], "a") as runs:  # one short append: whole lines
        runs.write(message_id + "\n")


def handle(message) -> None:
    do, message_id = message.body.get("do", ""), message.id
    if do == "exit":
        os._exit(3)
    elif do == "segfault":
        ctypes.string_at(0)
    elif do == "sys.exit":
        sys.exit()
    elif do == "keyboard":
        raise KeyboardInterrupt
    elif do == "base":
        raise Custom("mine")
    elif do == "unprintable":
        raise Unprintable()
    elif do == "stuck":  # in C code holding the GIL, far past any time limit
        HOLDING_THE_GIL.sleep(60)
    elif do == "honest":  # in C code holding the GIL, longer than WORKER_TIMEOUT
        HOLDING_THE_GIL.sleep(int(message.body["seconds"]))
    elif do == "mangle":
        message.fields.clear()
    elif do == "sleep":
        time.sleep(float(message.body["seconds"]))
    _ran(message_id)


async def handle_async(message) -> None:
    await asyncio.sleep(float(message.body.get("seconds", 0)))
    _ran(message.id)


def _trace(what: str, message_id: str) -> None:
    with open(os.environ["TEST_TRACE_FILE"], "a") as trace:
        trace.write(f"{what} {message_id}\n")


def traced(message) -> None:
    """Sleeps as long as the body says, writing when it starts and ends."""
    message_id = message.id
    _trace("start", message_id)
    time.sleep(float(message.body["seconds"]))
    _trace("end", message_id)


async def traced_async(message) -> None:
    message_id = message.id
    _trace("start", message_id)
    await asyncio.sleep(float(message.body["seconds"]))
    _trace("end", message_id)


def noop(message) -> None:
    """Does nothing: for measuring the worker's own cost."""


def io_bound(message) -> None:
    time.sleep(0.01)


async def io_bound_async(message) -> None:
    await asyncio.sleep(0.01)


async def handle_async_misbehaving(message) -> None:
    """Sleeps as long as the body says, or raises."""
    if message.body.get("raise"):
        raise ValueError("async failure")
    await asyncio.sleep(float(message.body.get("seconds", 0)))
    _ran(message.id)


def busy_1ms(message) -> None:
    end = time.perf_counter() + 0.001
    while time.perf_counter() < end:
        pass
