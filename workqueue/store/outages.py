"""What a Redis error means: an outage to wait out, or a refusal that waiting will not change.

Outages (a lost connection, a timeout, a restart without the script cache, a full memory, a
replica after failover, a script running long, a push too few replicas confirmed) are retried
with a growing wait. Refusals (a wrong password, a missing permission, an unknown database, a
key of the wrong type) are configuration: the entry scripts print one line and exit. So is a
TLS server certificate that fails verification (the wrong CA file, a host name the certificate
does not name).

Redis Cluster: redis-py's cluster client follows MOVED and ASK itself (the command was not run)
and raises ClusterDownError, TryAgainError or "TTL exhausted." for a cluster between states,
all outages here. Its own RedisClusterException is no RedisError; cluster.py raises the outages
and refusals among them again as ClusterClientError (a RedisError), so every loop that catches
RedisError waits them out, and this module classifies one by the original. A cross-slot error
is a bug in the caller: neither outage nor refusal, it fails loudly wherever it is met.
"""

from __future__ import annotations

import random
import ssl
from collections.abc import Callable

from redis._parsers.base import BaseParser
from redis.exceptions import (
    AskError,
    AuthenticationError,
    AuthorizationError,
    ClusterCrossSlotError,
    ClusterDownError,
    ClusterError,
    ConnectionError,
    MovedError,
    NoPermissionError,
    NoScriptError,
    OutOfMemoryError,
    ReadOnlyError,
    RedisClusterException,
    RedisError,
    ResponseError,
    SlotNotCoveredError,
    TimeoutError,
    TryAgainError,
)
from structlog.typing import FilteringBoundLogger

from .. import shutdown


class ReplicasShortfall(RedisError):
    """A push that Redis stored but fewer replicas than PUSH_MIN_REPLICAS confirmed (WAIT) in
    time: a failover now could lose it, so it counts as failed and is pushed again (the copy
    that adds is skipped by id). An outage: it passes once the replicas catch up."""

    def __init__(self, confirmed: int, wanted: int, timeout: float) -> None:
        super().__init__(f"pushed, but only {confirmed} of {wanted} replicas confirmed within {timeout} s")
        self.confirmed = confirmed
        self.wanted = wanted


# Errors that mean "Redis cannot take our writes right now": back off and try again.
# NoScriptError means Redis restarted without its script cache: reload and re-read our state.
# OutOfMemoryError (maxmemory reached), ReadOnlyError (a replica after failover) and a cluster
# between masters pass too. Refusals are ConnectionErrors in redis-py (AuthenticationError), so
# callers ask is_outage(), never isinstance() with this tuple alone.
REDIS_UNAVAILABLE = (
    ConnectionError, TimeoutError, NoScriptError, OutOfMemoryError, ReadOnlyError, TryAgainError, ClusterDownError,
    AskError,  # a slot being migrated: the same command goes through once it has moved
    ClusterError,  # the cluster client's "TTL exhausted.": redirections that did not settle (resharding)
    SlotNotCoveredError,  # the cluster client's map of slots has a gap, until it reads the map again
    ReplicasShortfall,  # a push too few replicas confirmed: pushed again until they do
)
# Replies redis-py leaves as a plain ResponseError that are outages too: a script running too
# long, a failed snapshot stopping writes, too few replicas, a dataset still loading.
OUTAGE_REPLIES = ("BUSY ", "MISCONF ", "NOREPLICAS ", "LOADING ",
                  "GAP ")  # settle.lua: an earlier settle was refused; the worker resyncs, resending both
# What redis-py's cluster client says (as a RedisClusterException) while no node answers or
# while its map of slots is incomplete: it reads the map again on its next command.
CLUSTER_OUTAGES = ("TTL exhausted", "Redis Cluster cannot be connected", "All slots are not covered", "is not covered by the cluster")


_parse_error: Callable[[str], BaseException] = BaseParser.parse_error  # redis-py's: an error reply's class by its first word


def unwrapped(error: BaseException) -> BaseException:
    """The error a command inside a script replied, as redis-py would have raised it for the
    command alone: Redis 6.2 wraps it ("Error running script (call to f_...): @user_script:9:
    -OOM command not allowed ..."), so that OutOfMemoryError, ReadOnlyError and the like would
    arrive as a plain ResponseError. Any other error comes back as it is."""
    text = str(error)
    if not isinstance(error, ResponseError) or not text.startswith("Error running script"):
        return error
    _, found, reply = text.partition(": -")
    if not found:
        return error
    return _parse_error(reply)



class ClusterClientError(RedisError):
    """A RedisClusterException of redis-py's cluster client (which is no RedisError) that is an
    outage or a refusal, raised again as a RedisError (by cluster.py) so that every loop catching
    RedisError meets it. It is classified by the original, its __cause__."""


class RedisRefused(Exception):
    """Redis answers, and will keep answering no until someone changes the configuration: a
    wrong or missing password, a user without a permission we need, an unknown database, a key
    of the wrong type, a server without our commands. The text says which, never the password."""


def refusal(error: BaseException) -> RedisRefused | None:
    """The configuration problem `error` shows, or None (an outage, or an error of another kind)."""
    error = unwrapped(error)
    cause = error.__cause__ or error.__context__
    if isinstance(error, (ClusterClientError, RedisClusterException)) and cause is not None:
        refused = refusal(cause)  # the cluster client could not connect: why
        if refused is not None:
            return refused
    text = str(error)
    if isinstance(error, RedisClusterException) and ("``db``" in text or "'db'" in text):
        return RedisRefused(f"REDIS_URL names a database number other than 0, which a cluster does not have ({text})")
    if isinstance(error, (AuthenticationError, AuthorizationError)):
        return RedisRefused(f"authentication failed, check the user and password in REDIS_URL ({text})")
    # Inside a script, a missing ACL permission is a plain error: Redis 6.2 and 7.0 word it "The
    # user executing the script can't run...", Redis 7.2+ and Valkey "ACL failure in script: ...".
    if isinstance(error, NoPermissionError) or (isinstance(error, ResponseError) and (
            "user executing the script can't run" in text or "ACL failure in script" in text)):
        return RedisRefused(f"the Redis user lacks a permission workqueue needs ({text})")
    # Only a client that is not the cluster client meets MOVED (the cluster client follows it,
    # and cluster.py turns one read on a Channel into an outage): a cluster node whose user may
    # not run INFO, so that the cluster was not recognized.
    if isinstance(error, MovedError):
        return RedisRefused(f"this Redis node does not serve the queue's keys; a cluster node is recognized by INFO, "
                            f"which the Redis user must be allowed to run ({text})")
    unverified = _certificate_refused(error)
    if unverified is not None:
        return RedisRefused(
            f"the server's TLS certificate failed verification, check REDIS_TLS_CA_FILE and the host in REDIS_URL ({unverified.verify_message})"
        )
    if not isinstance(error, ResponseError):
        return None
    if "DB index is out of range" in text or "invalid DB index" in text or "SELECT is not allowed in cluster mode" in text:
        return RedisRefused(f"REDIS_URL names a database number the server does not have ({text})")
    if "WRONGTYPE" in text:  # from a script, Redis 6.2 wraps it in "Error running script"
        return RedisRefused(f"a key of this queue holds another type of value; is the name used by something else? ({text})")
    if text.startswith(("unknown command", "ERR unknown command")):
        return RedisRefused(f"the server lacks a command workqueue needs; Redis 6.2 or newer is required ({text})")
    return None


def _certificate_refused(error: BaseException) -> ssl.SSLCertVerificationError | None:
    """The certificate verification failure behind `error` (redis-py raises its own
    ConnectionError during one), or None. Waiting will not make a certificate valid."""
    cause: BaseException | None = error
    for _ in range(4):  # redis-py wraps the ssl error once; a chain is short
        if cause is None or isinstance(cause, ssl.SSLCertVerificationError):
            return cause
        cause = cause.__cause__ or cause.__context__
    return None


def is_outage(error: BaseException) -> bool:
    """Whether `error` is Redis being unreachable or unable for now: wait and try again. A
    cross-slot error (ClusterCrossSlotError, or the cluster client's "all keys must map to the
    same key slot") is a bug, never an outage; nor is a request refused as of an ended session."""
    if refusal(error) is not None or isinstance(error, ClusterCrossSlotError) or is_fenced(error):
        return False
    if isinstance(error, (ClusterClientError, RedisClusterException)) and not isinstance(error, SlotNotCoveredError):
        cause = error.__cause__ or error.__context__
        return (cause is not None and is_outage(cause)) or any(words in str(error) for words in CLUSTER_OUTAGES)
    error = unwrapped(error)
    return isinstance(error, REDIS_UNAVAILABLE) or (isinstance(error, ResponseError) and str(error).startswith(OUTAGE_REPLIES))


def raise_if_refused(error: Exception) -> None:
    """Raise RedisRefused (from None: a traceback of redis-py's would say nothing more) when
    `error` is a refusal; else return, and the caller asks is_outage()."""
    refused = refusal(error)
    if refused is not None:
        raise refused from None


def raise_unless_outage(error: Exception) -> None:
    """Return when `error` is an outage, to be waited out; raise RedisRefused for a refusal,
    and `error` itself for anything else."""
    raise_if_refused(error)
    if not is_outage(error):
        raise error


class Outage:
    """Backoff while Redis does not answer: growing waits with jitter, one warning per wait
    (so an outage logs a handful of lines, not one per millisecond), one info line when back."""

    def __init__(self, log: FilteringBoundLogger, first: float = 0.1, cap: float = 5.0) -> None:
        self.log = log
        self.first = first
        self.cap = cap
        self.failures = 0

    def failed(self, error: Exception, stop: Callable[[], bool] = lambda: False) -> None:
        """Log the failure and wait before the next try; returns early once stop() is true."""
        delay = min(self.cap, self.first * 2**self.failures) * random.uniform(0.5, 1.0)
        self.failures += 1
        self.log.warning("redis_unavailable", error=f"{type(error).__name__}: {error}", retry_in=round(delay, 2), failures=self.failures)
        shutdown.sleep(delay, stop)

    def succeeded(self) -> None:
        if self.failures:
            self.log.info("redis_available", failures=self.failures)
            self.failures = 0


def is_closed_by_server(error: BaseException) -> bool:
    """Whether Redis closed the connection while a reply was awaited: what it does to a client
    whose reply outgrows its client-output-buffer-limit (and, once, when it shuts down)."""
    return isinstance(error, ConnectionError) and "closed by server" in str(error)


def is_fenced(error: BaseException) -> bool:
    """Whether `error` is Redis refusing a request of a worker session that ended (keys.py:
    `sessions`): the worker rejoins and finds out whether it still holds its messages."""
    return isinstance(error, ResponseError) and str(error).startswith("FENCED")
