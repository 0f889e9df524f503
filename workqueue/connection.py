"""Redis connections and the Lua scripts, registered once per client.

We turn redis-py's own retries off: a retried BLMOVE or script whose first reply was lost may run
twice on the server, so the worker must see every connection error and re-read its in-flight
list itself. Blocking calls stay well below the socket timeout so a quiet queue is not an error.
"""

from __future__ import annotations

import hashlib
import random
import time
from importlib.resources import files
from typing import Any, Callable, Sequence

import redis
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError, NoScriptError, OutOfMemoryError, ReadOnlyError, TimeoutError
from redis.retry import Retry

# Blocking pops wait at most this long, then loop; the socket allows twice that plus slack.
BLOCK_SECONDS = 2.0
SOCKET_TIMEOUT = 2 * BLOCK_SECONDS + 5.0

# Errors that mean "Redis cannot take our writes right now": back off and try again.
# NoScriptError means Redis restarted without its script cache: reload and re-read our state.
# OutOfMemoryError (maxmemory reached) and ReadOnlyError (a replica after failover) pass too.
REDIS_UNAVAILABLE = (ConnectionError, TimeoutError, NoScriptError, OutOfMemoryError, ReadOnlyError)

SCRIPT_NAMES = ("push", "fetch", "woken", "settle", "heartbeat", "expired", "stats", "requeue")


def connect(url: str) -> redis.Redis:
    """Open a client for `url` with explicit timeouts and no hidden retries."""
    return redis.Redis.from_url(
        url,
        socket_timeout=SOCKET_TIMEOUT,
        socket_connect_timeout=5.0,
        retry=Retry(NoBackoff(), 0),
        health_check_interval=0,
        decode_responses=False,
    )


def send_together(client: redis.Redis, commands: Sequence[tuple[Any, ...]]) -> list[Any]:
    """Write `commands` down one connection in one write, so Redis runs them back to back, and
    return their replies. This is for the idle pickup path, where redis-py's Pipeline
    bookkeeping would cost tens of microseconds. The first error reply is raised, and the
    connection is then dropped: its unread replies would confuse its next user."""
    pool = client.connection_pool
    conn = pool.get_connection()
    try:
        conn.send_packed_command(conn.pack_commands(commands))
        return [conn.read_response() for _ in commands]
    except BaseException:
        conn.disconnect()
        raise
    finally:
        pool.release(conn)


class Scripts:
    """The queue's Lua scripts, loaded from workqueue/lua/*.lua and called by SHA."""

    def __init__(self, client: redis.Redis) -> None:
        self.client = client
        self.source = {name: files("workqueue").joinpath(f"lua/{name}.lua").read_text() for name in SCRIPT_NAMES}
        # The SHA is known without asking Redis; scripts are loaded on the first NOSCRIPT reply.
        self.sha = {name: hashlib.sha1(source.encode()).hexdigest() for name, source in self.source.items()}

    def load(self) -> None:
        """Load every script into Redis: once per server, and again after it loses its cache."""
        for source in self.source.values():
            self.client.script_load(source)

    def call(self, name: str, keys: Sequence[str], args: Sequence[Any], pipe: Any = None) -> Any:
        """Run a script, on `pipe` when given (its reply comes from pipe.execute())."""
        target = pipe if pipe is not None else self.client
        try:
            return target.evalsha(self.sha[name], len(keys), *keys, *args)
        except NoScriptError:
            if pipe is not None:
                raise
            # Not run at all, so running it again after loading is safe.
            self.load()
            return self.client.evalsha(self.sha[name], len(keys), *keys, *args)


class Outage:
    """Backoff while Redis does not answer: growing waits with jitter, one warning per wait
    (so an outage logs a handful of lines, not one per millisecond), one info line when back."""

    def __init__(self, log: Any, first: float = 0.1, cap: float = 5.0) -> None:
        self.log = log
        self.first = first
        self.cap = cap
        self.failures = 0

    def failed(self, error: Exception, stop: Callable[[], bool] = lambda: False) -> None:
        """Log the failure and wait before the next try; returns early once stop() is true."""
        delay = min(self.cap, self.first * 2**self.failures) * random.uniform(0.5, 1.0)
        self.failures += 1
        self.log.warning("redis_unavailable", error=f"{type(error).__name__}: {error}", retry_in=round(delay, 2), failures=self.failures)
        deadline = time.monotonic() + delay
        while not stop() and time.monotonic() < deadline:  # bounded by delay <= cap
            time.sleep(min(0.05, delay))

    def succeeded(self) -> None:
        if self.failures:
            self.log.info("redis_available", failures=self.failures)
            self.failures = 0
