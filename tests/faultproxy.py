"""A TCP proxy on 127.0.0.1 that injects network faults between a client and a redis-server.

    with FaultProxy(server.port) as proxy:          # listens on a free loopback port
        env = script_env(proxy.url, queue)          # a script (or redis.Redis.from_url) goes through it
        proxy.partition(); ...; proxy.heal()        # faults, for every connection, now and later

Modes (each takes effect for every open and later connection before the call returns):
- forward(): bytes pass both ways. heal() is the same name for ending a partition.
- partition(): sockets stay open and nothing passes either way; what arrives is buffered, as
  packets held up in a network, and delivered in order when forwarding resumes. A close is held
  the same way: a client that timed out and closed its socket during a partition still has its
  buffered request delivered upstream on heal, after which the upstream socket is closed (so
  Redis runs a request late, after its client gave up on it). New connections are accepted,
  and their upstream connection opened, but pass nothing either.
- blackhole(): as partition, but what arrives is discarded (and what a partition held too):
  none of it is ever delivered. Only a close is kept (as TCP retransmits a FIN) and passed on
  once forwarding resumes, so no upstream connection is left open for good.
- stall(): the connections open now pass nothing (buffered, as in a partition) while new ones
  pass: a flow stuck in the network while the client reconnects around it. forward() delivers
  what the stalled ones held, late.
- reset(): every open connection is aborted with a TCP RST (SO_LINGER 0) on both sides; the
  mode becomes forward for new connections.
Counters: `accepted` (connections), `bytes_upstream` (bytes delivered to the server); also
`open_connections` and upstream_ports() (the ports Redis's CLIENT LIST shows as `addr`).
A connection's client side is accepted by the kernel whatever the mode, so a client that
connects during a fault waits out its read timeout, not its connect timeout.
One background thread does everything (select on non-blocking sockets); close() ends it.
"""

from __future__ import annotations

import select
import socket
import struct
import threading
from types import TracebackType

HOST = "127.0.0.1"  # loopback only, ever
TICK = 0.02  # the loop's longest sleep: how soon close() and delivery after heal() are noticed


class _Direction:
    """One way of one connection: bytes read from `src`, not yet written to `dst`, then maybe EOF."""

    def __init__(self, src: socket.socket, dst: socket.socket, upstream: bool) -> None:
        self.src, self.dst, self.upstream = src, dst, upstream
        self.buffer = bytearray()
        self.eof = False  # src closed: pass the close on once the buffer is delivered
        self.done = False  # the close was passed on


class _Link:
    def __init__(self, client: socket.socket, server: socket.socket) -> None:
        self.sockets = (client, server)
        self.ways = (_Direction(client, server, upstream=True), _Direction(server, client, upstream=False))
        self.stalled = False  # passes nothing until forward(), whatever the mode

    def close(self, rst: bool = False) -> None:
        for sock in self.sockets:
            if rst:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            sock.close()


class FaultProxy:
    """Forwards each connection to 127.0.0.1:`upstream_port`, with faults switched on demand."""

    def __init__(self, upstream_port: int) -> None:
        self.upstream = (HOST, upstream_port)
        self.accepted = 0
        self.bytes_upstream = 0
        self._mode = "forward"
        self._links: list[_Link] = []
        self._lock = threading.Lock()  # held by the loop while it moves bytes, and by every switch
        self._stop = threading.Event()
        self._listener = socket.create_server((HOST, 0))
        self._listener.setblocking(False)
        self.port: int = self._listener.getsockname()[1]
        self._thread = threading.Thread(target=self._run, name=f"faultproxy-{self.port}", daemon=True)
        self._thread.start()

    @property
    def url(self) -> str:
        return f"redis://{HOST}:{self.port}/0"

    @property
    def open_connections(self) -> int:
        with self._lock:
            return len(self._links)

    def upstream_ports(self) -> set[int]:
        """The local ports of the open upstream sockets: how the server's CLIENT LIST names them."""
        with self._lock:
            return {link.sockets[1].getsockname()[1] for link in self._links}

    def forward(self) -> None:
        with self._lock:
            self._mode = "forward"
            for link in self._links:
                link.stalled = False
            self._pump()

    heal = forward

    def partition(self) -> None:
        with self._lock:
            self._mode = "partition"

    def stall(self) -> None:
        with self._lock:
            for link in self._links:
                link.stalled = True

    def blackhole(self) -> None:
        with self._lock:
            self._mode = "blackhole"
            for link in self._links:  # what a partition held is lost too
                for way in link.ways:
                    way.buffer.clear()

    def reset(self) -> None:
        with self._lock:
            self._mode = "forward"
            for link in self._links:
                link.close(rst=True)
            self._links.clear()

    def close(self) -> None:
        """End the thread (bounded) and close every socket; idempotent."""
        self._stop.set()
        self._thread.join(timeout=5)
        if self._thread.is_alive():
            raise RuntimeError("the fault proxy's thread did not end within 5 s")

    def __enter__(self) -> FaultProxy:
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None, tb: TracebackType | None) -> None:
        self.close()

    # -- the loop (its own thread) ----------------------------------------------------------

    def _run(self) -> None:
        try:
            while not self._stop.is_set():  # bounded by close()
                with self._lock:
                    readers = [self._listener] + [w.src for link in self._links for w in link.ways if not w.eof]
                    writers = [w.dst for link in self._links for w in link.ways if w.buffer and self._mode == "forward" and not link.stalled]
                try:
                    readable, _, _ = select.select(readers, writers, [], TICK)
                except (OSError, ValueError):  # reset() closed a socket meanwhile: look again
                    continue
                with self._lock:
                    if self._listener in readable:
                        self._accept()
                    self._read(set(readable))
                    self._pump()
        finally:
            with self._lock:
                for link in self._links:
                    link.close()
                self._links.clear()
                self._listener.close()

    def _accept(self) -> None:
        try:
            client, _ = self._listener.accept()
        except (BlockingIOError, InterruptedError):
            return
        self.accepted += 1
        try:
            server = socket.create_connection(self.upstream, timeout=5)
        except OSError:
            client.close()  # the server is down: the client sees its connection closed
            return
        for sock in (client, server):
            sock.setblocking(False)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._links.append(_Link(client, server))

    def _read(self, readable: set[socket.socket]) -> None:
        for link in self._links:
            for way in link.ways:
                if way.eof or way.src not in readable:
                    continue
                try:
                    data = way.src.recv(65536)
                except (BlockingIOError, InterruptedError):
                    continue
                except OSError:  # reset by the peer: what came before it was read already
                    data = b""
                if not data:
                    way.eof = True
                elif self._mode != "blackhole":
                    way.buffer += data

    def _pump(self) -> None:
        """Deliver buffered bytes and closes (forward mode only); drop links that are finished."""
        if self._mode != "forward":
            return
        for link in list(self._links):
            if link.stalled:
                continue
            try:
                for way in link.ways:
                    if way.buffer:
                        sent = way.dst.send(way.buffer)
                        del way.buffer[:sent]
                        if way.upstream:
                            self.bytes_upstream += sent
                    if way.eof and not way.buffer and not way.done:
                        way.done = True
                        way.dst.shutdown(socket.SHUT_WR)
            except (BlockingIOError, InterruptedError):
                continue  # the destination's buffer is full: select says when it drains
            except OSError:  # the other side is gone: nothing more can pass on this link
                link.ways[0].done = link.ways[1].done = True
            if all(way.done for way in link.ways):
                link.close()
                self._links.remove(link)
