"""Redis Cluster: recognizing a cluster node, and redis-py's cluster client under our rules.

transport.connect() returns a ClusterAware client for every URL. On its first command it asks
the server `INFO cluster`; on a cluster node (`cluster_enabled:1`) it opens redis-py's
RedisCluster from the same URL and options, and every command goes through that from then on
(the node named in the URL is only where the map of slots is first read). No setting, and the
same URL form. A user that may not run INFO is taken to be on a single server.

Retries, as for a single server: none after a lost connection or a timeout (a retried BLMOVE
or script whose first reply was lost may run twice). The cluster client's own retry is set to
0 attempts, and it makes its per-node clients with none. What it still does by itself is safe:
following MOVED and ASK, and asking again after TRYAGAIN (the command was not run), a bounded
number of times ("TTL exhausted." after that, an outage).

Its RedisClusterException is no RedisError; the outages and refusals among them are raised
again as outages.ClusterClientError. A MOVED or ASK reply read on a transport Channel (a raw
connection to the node that owned the slot) patches the client's map of slots and is raised as
SlotMoved, an outage: the worker re-reads its state through the cluster client and goes on.
"""

from __future__ import annotations

import threading
from typing import Any, NoReturn, cast

import redis
from redis.backoff import NoBackoff
from redis.cluster import RedisCluster
from redis.connection import ConnectionPool
from redis.exceptions import AskError, ConnectionError, MovedError, NoPermissionError, RedisClusterException
from redis.retry import Retry

from .outages import ClusterClientError, is_outage, refusal


class SlotMoved(ConnectionError):
    """A MOVED or ASK reply read on a Channel of a cluster client: the queue's slot moved, or is
    being moved, to another node. Nothing was run; an outage, after which the worker re-reads
    its state and its next Channel goes to the node the slot map now names."""


def no_retries() -> Retry:
    """redis-py's retry object that never retries."""
    return Retry(NoBackoff(), 0)


def reraise(error: RedisClusterException) -> NoReturn:
    """Raise a cluster client's error again: as ClusterClientError (a RedisError) when it is an
    outage or a refusal, as it is otherwise (a cross-slot call is a bug: it fails loudly)."""
    if is_outage(error) or refusal(error) is not None:
        raise ClusterClientError(f"{type(error).__name__}: {error}") from error
    raise error


class ClusterAware(redis.Redis):
    """A redis.Redis that asks the server on first use whether it is a cluster node and, if it
    is, sends every command through redis-py's RedisCluster instead (made from the same URL and
    options). Use open(), not the constructor."""

    _url = ""
    _options: dict[str, Any] | None = None
    _lock: threading.Lock
    _cluster: RedisCluster | None = None
    _checked = False  # whether the server was asked

    @classmethod
    def open(cls, url: str, options: dict[str, Any]) -> ClusterAware:
        """A client for `url` with `options` (redis-py's connection options, the same for a
        single server and for each node of a cluster) and no retries. Connects on first use."""
        client = cast(ClusterAware, cls.from_url(url, retry=no_retries(), **options))
        client._url, client._options, client._lock = url, options, threading.Lock()
        return client

    def cluster_client(self) -> RedisCluster | None:
        """The cluster client when the server is a cluster node (asking it on first use), else
        None. Raises what asking raises (an outage, a refusal): asked again on the next call."""
        if self._checked:
            return self._cluster
        with self._lock:
            if not self._checked:
                self._cluster = self._detect()
                self._checked = True
        return self._cluster

    def _detect(self) -> RedisCluster | None:
        try:
            info = cast(Any, super()).execute_command("INFO", "cluster")
        except NoPermissionError:
            return None  # outages.refusal() names INFO should a MOVED reply then come
        if not isinstance(info, dict) or info.get("cluster_enabled") != 1:
            return None
        try:
            cluster = RedisCluster.from_url(self._url, retry=no_retries(), **(self._options or {}))
        except RedisClusterException as error:
            reraise(error)
        self.connection_pool.disconnect()  # not used again
        return cluster

    def execute_command(self, *args: Any, **options: Any) -> Any:
        cluster = self.cluster_client()
        if cluster is None:
            return cast(Any, super()).execute_command(*args, **options)
        try:
            return cast(Any, cluster).execute_command(*args, **options)
        except RedisClusterException as error:
            reraise(error)

    def pipeline(self, transaction: bool = True, shard_hint: Any = None) -> Any:
        """A pipeline: on a cluster, the cluster client's (which sends each command to its node)."""
        cluster = self.cluster_client()
        return super().pipeline(transaction, shard_hint) if cluster is None else cast(Any, cluster).pipeline(transaction=transaction)

    def close(self) -> None:
        super().close()
        if self._cluster is not None:
            self._cluster.close()


def cluster_of(client: redis.Redis | RedisCluster, *, ask: bool = True) -> RedisCluster | None:
    """The cluster client behind `client`, or None for a single server. With `ask` false, a
    ClusterAware client that has not asked its server yet is taken for a single server."""
    if isinstance(client, RedisCluster):
        return client
    if isinstance(client, ClusterAware):
        return client.cluster_client() if ask else client._cluster
    return None


def node_connection(cluster: RedisCluster, key: str | bytes) -> tuple[ConnectionPool, Any]:
    """A connection to the node that owns `key`'s slot (as the client's map says), and its pool."""
    try:
        node = cast(Any, cluster).get_node_from_key(key)
    except RedisClusterException as error:  # the map has a gap: it is read again on the next command
        reraise(error)
    pool: ConnectionPool = cluster.get_redis_connection(node).connection_pool
    return pool, pool.get_connection()


def redirected(client: redis.Redis | RedisCluster, error: BaseException) -> SlotMoved | None:
    """For a MOVED or ASK reply read on a Channel of a cluster client, the outage to raise
    instead, the client's map of slots patched first for MOVED (as the client itself does when
    it meets one); None for any other error, or a client that is not a cluster's."""
    cluster = cluster_of(client, ask=False)
    if cluster is None or not isinstance(error, AskError):  # MovedError is an AskError
        return None
    if isinstance(error, MovedError):
        cluster.nodes_manager.move_slot(error)
    return SlotMoved(f"the queue's slot is served elsewhere now: {type(error).__name__} {error}")


def cluster_location(cluster: RedisCluster) -> str:
    """host:port of one node of a cluster, for log lines: never the password."""
    nodes: Any = cluster  # redis-py's cluster client carries few type hints
    node = nodes.get_default_node() or next(iter(nodes.nodes_manager.startup_nodes.values()), None)
    return "cluster" if node is None else f"{node.host}:{node.port} (cluster)"
