"""The transport: connections, and sends addressed by the key they touch (the Lua scripts they
run are registered in scripts.py).

We turn redis-py's own retries off: a retried BLMOVE or script whose first reply was lost may run
twice on the server, so the worker must see every connection error and re-read its in-flight
list itself. Blocking calls stay well below the socket timeout so a quiet queue is not an error.
Every command that changes state goes through here. A send is addressed by the key it touches,
and all of a queue's keys share one slot, so on a Redis Cluster (cluster.py) it goes to the node
that owns that slot.
"""

from __future__ import annotations

import socket
from collections import deque
from collections.abc import Sequence
from typing import Any

import hiredis
import redis
from redis.cluster import RedisCluster
from redis.connection import ConnectionPool
from redis.exceptions import ConnectionError

from ..settings import TlsFiles
from .cluster import ClusterAware, cluster_location, cluster_of, node_connection, redirected
from .outages import unwrapped

Key = str | bytes
Command = tuple[Any, ...]
Packed = bytes  # a command already in Redis's wire format: see pack()

# Blocking pops wait at most this long, then loop; the socket allows twice that plus slack.
BLOCK_SECONDS = 2.0
SOCKET_TIMEOUT = 2 * BLOCK_SECONDS + 5.0
CONNECT_TIMEOUT = 5.0
# TCP keepalive: an idle connection whose peer vanished (a host gone, a partition) is found dead
# after KEEPALIVE_IDLE + KEEPALIVE_COUNT * KEEPALIVE_INTERVAL = 25 s, not the kernel's 2 hours.
# A connection waiting for a reply is bounded sooner, by SOCKET_TIMEOUT.
KEEPALIVE_IDLE, KEEPALIVE_INTERVAL, KEEPALIVE_COUNT = 10, 5, 3


def connect(url: str, *, password: str | None = None, tls: TlsFiles | None = None) -> redis.Redis:
    """Open a client for `url` with explicit timeouts and no hidden retries (connections are
    made lazily, on first use). `password` is used when the URL holds none; `tls` names the CA,
    certificate and key files of a rediss:// URL. A rediss:// server's certificate is always
    verified, host name included: with `tls.ca_file`, or else the system's CA certificates.
    On a Redis Cluster node the client sends every command through redis-py's cluster client,
    with the same options for every node (cluster.py)."""
    options: dict[str, Any] = {
        "socket_timeout": SOCKET_TIMEOUT,
        "socket_connect_timeout": CONNECT_TIMEOUT,
        "socket_keepalive": True,
        "socket_keepalive_options": keepalive_options(),
        "health_check_interval": 0,
        "decode_responses": False,
    }
    if url.startswith("unix://"):  # a local socket: no TCP options (redis-py refuses them there)
        del options["socket_keepalive"], options["socket_keepalive_options"]
    if password is not None:
        options["password"] = password  # a password in the URL wins (redis-py's rule)
    if tls is not None:
        if not url.startswith("rediss://"):
            raise ValueError("TLS files are for a rediss:// URL")
        options.update(ssl_ca_certs=tls.ca_file, ssl_certfile=tls.cert_file, ssl_keyfile=tls.key_file)
    return ClusterAware.open(url, options)  # without retries (cluster.no_retries)


def keepalive_options() -> dict[int, int]:
    """The TCP keepalive timings, for the platforms that let a socket set them (Linux does)."""
    wanted = {"TCP_KEEPIDLE": KEEPALIVE_IDLE, "TCP_KEEPINTVL": KEEPALIVE_INTERVAL, "TCP_KEEPCNT": KEEPALIVE_COUNT}
    return {getattr(socket, name): value for name, value in wanted.items() if hasattr(socket, name)}


def location(client: redis.Redis | RedisCluster) -> str:
    """host:port/db (or the socket path) of a client, for log lines: never the password. For a
    cluster, the node the client was pointed at (or one it knows), and "(cluster)"."""
    if isinstance(client, RedisCluster):
        return cluster_location(client)
    kw = client.connection_pool.connection_kwargs
    if "path" in kw:  # a unix socket
        return f"unix://{kw['path']}" + (f"?db={kw['db']}" if kw.get("db") else "")
    where = f"{kw.get('host')}:{kw.get('port', '')}/{kw.get('db', 0)}"
    return where if cluster_of(client, ask=False) is None else f"{where} (cluster)"


def pack(command: Command) -> Packed:
    """`command` in Redis's wire format, packed in C by hiredis: what redis-py would first walk
    argument by argument in Python (a settle carries four per message)."""
    packed: bytes = hiredis.pack_command(command)
    return packed


def _connection_for(client: redis.Redis, key: Key) -> tuple[ConnectionPool, Any]:
    """A connection that reaches the server holding `key`, and the pool to give it back to.

    Below redis-py's public API, on purpose and only here: the worker's hot paths write several
    commands in one write and read the replies later, and redis-py's Pipeline bookkeeping would
    cost more than the commands themselves. With one Redis any pooled connection will do; on a cluster
    it is one of the node that owns the key's slot. pyproject.toml bounds redis-py to the
    versions this was tested with.
    """
    cluster = cluster_of(client)
    if cluster is not None:
        return node_connection(cluster, key)
    pool = client.connection_pool
    return pool, pool.get_connection()


class Channel:
    """One connection on which requests are written as they come and their replies read later,
    oldest first: Redis runs one connection's commands in the order they arrive, which is what
    keeps a worker's settles in sequence while it works on. Every command must touch only keys
    in the slot of `key`. On any error the connection is dropped with every unread reply, since
    those would confuse its next user; the caller resends what matters (settling is idempotent)."""

    def __init__(self, client: redis.Redis, key: Key) -> None:
        self.client = client
        self.key = key
        self._pool: ConnectionPool | None = None
        self._conn: Any = None  # redis-py's Connection: its methods here carry no type hints
        self._unread: deque[int] = deque()  # how many replies each request sent awaits, oldest first

    def fileno(self) -> int | None:
        """The connection's socket, to wait for replies with select (None: not connected)."""
        sock = getattr(self._conn, "_sock", None)
        return None if sock is None else int(sock.fileno())

    def ready(self) -> bool:
        """Whether a reply has begun to arrive (read() may still wait for its end)."""
        return bool(self._unread) and self._conn is not None and bool(self._conn.can_read(timeout=0))

    @property
    def unread(self) -> int:
        """How many requests were sent whose replies are not read yet."""
        return len(self._unread)

    def send(self, commands: Sequence[Command | Packed]) -> None:
        """Write `commands` (some perhaps packed already) in one write, so Redis runs them back to
        back; read their replies with read()."""
        if self._conn is None:
            self._pool, self._conn = _connection_for(self.client, self.key)
        try:
            self._conn.send_packed_command([b"".join(c if isinstance(c, bytes) else pack(c) for c in commands)])
        except BaseException:
            self.drop()
            raise
        self._unread.append(len(commands))

    def read(self) -> list[Any]:
        """The replies of the oldest unread request, in order; the first error reply is raised."""
        if not self._unread:  # read already, or dropped after an error: for the caller, an outage
            raise ConnectionError("the replies were read already or lost")
        count = self._unread.popleft()
        try:
            return [self._conn.read_response() for _ in range(count)]
        except BaseException as error:
            self.drop()
            moved = redirected(self.client, error)  # on a cluster, MOVED or ASK: an outage
            if moved is not None:
                raise moved from error
            inner = unwrapped(error)
            if inner is not error:
                raise inner from error
            raise

    def release(self) -> None:
        """Give the connection back to the pool: kept open when every reply was read."""
        if self._unread:
            self.drop()
        elif self._conn is not None and self._pool is not None:
            self._pool.release(self._conn)
            self._conn = None

    def drop(self) -> None:
        """Close the connection, forgetting every unread reply (after an error)."""
        conn, self._conn = self._conn, None
        self._unread.clear()
        if conn is not None and self._pool is not None:
            conn.disconnect()
            self._pool.release(conn)


def send_together(client: redis.Redis, key: Key, commands: Sequence[Command]) -> list[Any]:
    """Send `commands` in one write and wait for their replies."""
    channel = Channel(client, key)
    channel.send(commands)
    try:
        return channel.read()
    finally:
        channel.release()
