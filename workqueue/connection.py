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

import hiredis
import redis
from redis.backoff import NoBackoff
from redis.exceptions import (
    AskError, AuthenticationError, AuthorizationError, ClusterCrossSlotError, ClusterDownError, ConnectionError,
    NoPermissionError, NoScriptError, OutOfMemoryError, ReadOnlyError, RedisError, ResponseError, TimeoutError,
    TryAgainError,
)
from redis.retry import Retry

# Blocking pops wait at most this long, then loop; the socket allows twice that plus slack.
BLOCK_SECONDS = 2.0
SOCKET_TIMEOUT = 2 * BLOCK_SECONDS + 5.0

# Errors that mean "Redis cannot take our writes right now": back off and try again.
# NoScriptError means Redis restarted without its script cache: reload and re-read our state.
# OutOfMemoryError (maxmemory reached), ReadOnlyError (a replica after failover) and a cluster
# between masters pass too. Refusals (see refusal()) are ConnectionErrors in redis-py, but are
# never outages: callers ask is_outage(), not isinstance() with this tuple alone.
REDIS_UNAVAILABLE = (ConnectionError, TimeoutError, NoScriptError, OutOfMemoryError, ReadOnlyError, TryAgainError, ClusterDownError)
# Replies redis-py leaves as a plain ResponseError that are outages too: a script running too
# long, a failed snapshot stopping writes, too few replicas, a dataset still loading.
OUTAGE_REPLIES = ("BUSY ", "MISCONF ", "NOREPLICAS ", "LOADING ")


class RedisRefused(Exception):
    """Redis answers, and will keep answering no until someone changes the configuration: a
    wrong or missing password, a user without a permission we need, an unknown database, a key
    of the wrong type, a server without our commands. The text says which, never the password."""


def refusal(error: BaseException) -> RedisRefused | None:
    """The configuration problem `error` shows, or None (an outage, or an error of another kind)."""
    text = str(error)
    if isinstance(error, (AuthenticationError, AuthorizationError)):
        return RedisRefused(f"authentication failed, check the user and password in REDIS_URL ({text})")
    if isinstance(error, NoPermissionError):
        return RedisRefused(f"the Redis user lacks a permission workqueue needs ({text})")
    if isinstance(error, (AskError, ClusterCrossSlotError)):  # MovedError is an AskError
        return RedisRefused(f"this Redis node does not serve the queue's keys ({text})")
    if not isinstance(error, ResponseError):
        return None
    if "DB index is out of range" in text or "invalid DB index" in text:
        return RedisRefused(f"REDIS_URL names a database number the server does not have ({text})")
    if text.startswith("WRONGTYPE"):
        return RedisRefused(f"a key of this queue holds another type of value; is the name used by something else? ({text})")
    if text.startswith(("unknown command", "ERR unknown command")):
        return RedisRefused(f"the server lacks a command workqueue needs; Redis 6.2 or newer is required ({text})")
    return None


def is_outage(error: BaseException) -> bool:
    """Whether `error` is Redis being unreachable or unable for now: wait and try again."""
    if refusal(error) is not None:
        return False
    return isinstance(error, REDIS_UNAVAILABLE) or (isinstance(error, ResponseError) and str(error).startswith(OUTAGE_REPLIES))


def raise_if_refused(error: RedisError) -> None:
    """Raise RedisRefused (from None: a traceback of redis-py's would say nothing more) if `error` is one."""
    refused = refusal(error)
    if refused is not None:
        raise refused from None

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


class Sent:
    """Commands written down one connection in one write (so Redis runs them back to back),
    whose replies are read later: the caller can work while Redis does. This is for the worker's
    hot paths, where redis-py's Pipeline bookkeeping would cost tens of microseconds. On any
    error the connection is dropped, since its unread replies would confuse its next user."""

    def __init__(self, client: redis.Redis, commands: Sequence[tuple[Any, ...]]) -> None:
        self.pool = client.connection_pool
        self.count = len(commands)
        self.conn = self.pool.get_connection()
        try:
            # hiredis packs in C what redis-py would first walk argument by argument in Python
            # (a settle carries four per message); one bytes object makes it one write.
            self.conn.send_packed_command([b"".join(map(hiredis.pack_command, commands))])
        except BaseException:
            self.abandon()
            raise

    def replies(self) -> list[Any]:
        """Every command's reply, in order; the first error reply is raised."""
        conn, self.conn = self.conn, None
        if conn is None:  # read already, or dropped after an error: for the caller, an outage
            raise ConnectionError("the replies were read already or lost")
        try:
            return [conn.read_response() for _ in range(self.count)]
        except BaseException:
            conn.disconnect()
            raise
        finally:
            self.pool.release(conn)

    def abandon(self) -> None:
        """Give the connection back without reading the replies (after another error)."""
        conn, self.conn = self.conn, None
        if conn is not None:
            conn.disconnect()
            self.pool.release(conn)


def send_together(client: redis.Redis, commands: Sequence[tuple[Any, ...]]) -> list[Any]:
    """Send `commands` in one write and wait for their replies."""
    return Sent(client, commands).replies()


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

    def call(self, name: str, keys: Sequence[str], args: Sequence[Any]) -> Any:
        """Run a script and return its reply."""
        try:
            return self.client.evalsha(self.sha[name], len(keys), *keys, *args)
        except NoScriptError:
            # Not run at all, so running it again after loading is safe.
            self.load()
            return self.client.evalsha(self.sha[name], len(keys), *keys, *args)

    def command(self, name: str, keys: Sequence[str], args: Sequence[Any]) -> tuple[Any, ...]:
        """The EVALSHA command running a script, for Sent (a NOSCRIPT reply is raised there)."""
        return ("EVALSHA", self.sha[name], len(keys), *keys, *args)


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
