"""A Redis Cluster of three masters (no replicas) made of throwaway redis-server processes on
loopback ports, whose nodes tests may kill, restart, and move slots between."""

from __future__ import annotations

import socket
import subprocess
from pathlib import Path

import redis
from support import RedisServer, free_port, wait_until

BUS_OFFSET = 10000  # a node's cluster bus listens on its port + 10000


def _free(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def cluster_port() -> int:
    """A free loopback port below 55535 whose bus port (+10000) is free too."""
    for _ in range(200):
        port = free_port()
        if port < 55535 and _free(port + BUS_OFFSET):
            return port
    raise RuntimeError("no free port pair for a cluster node")


class Cluster:
    """Three masters with AOF (fsync always) that share the 16384 slots."""

    def __init__(self, directory: Path, size: int = 3) -> None:
        self.nodes = []
        for i in range(size):
            node_dir = directory / f"node{i}"
            options = ("--cluster-enabled", "yes", "--cluster-config-file", str(node_dir / "nodes.conf"),
                       "--cluster-node-timeout", "2000")
            self.nodes.append(RedisServer(node_dir, persistent=True, port=cluster_port(), extra=options))

    def start(self) -> Cluster:
        for node in self.nodes:
            node.start()
        addresses = [f"127.0.0.1:{node.port}" for node in self.nodes]
        subprocess.run(["redis-cli", "--cluster", "create", *addresses, "--cluster-yes"], check=True, capture_output=True, timeout=60)
        self.wait_ok()
        return self

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()

    def wait_ok(self, timeout: float = 30) -> None:
        """Wait until every node says cluster_state:ok and agrees on who owns every slot."""
        def ok() -> bool:
            try:
                maps = [self._slot_map(node) for node in self.nodes]
                return all(node.client().cluster("info")["cluster_state"] == "ok" for node in self.nodes) and all(m == maps[0] for m in maps)
            except redis.RedisError:
                return False

        wait_until(ok, timeout=timeout, interval=0.1)

    @staticmethod
    def _slot_map(node: RedisServer) -> list[tuple[int, int, int]]:
        return sorted((int(start), int(end), int(master[1])) for start, end, master, *_ in node.client().execute_command("CLUSTER", "SLOTS"))

    def node_id(self, node: RedisServer) -> str:
        return node.client().execute_command("CLUSTER", "MYID").decode()

    def slot(self, key: str) -> int:
        return int(self.nodes[0].client().execute_command("CLUSTER", "KEYSLOT", key))

    def owner(self, slot: int) -> RedisServer:
        """The master that owns `slot`, as the nodes agree (they all do after wait_ok)."""
        for start, end, port in self._slot_map(next(n for n in self.nodes if n.process and n.process.poll() is None)):
            if start <= slot <= end:
                return next(node for node in self.nodes if node.port == port)
        raise AssertionError(f"slot {slot} is not covered")

    def other_than(self, node: RedisServer) -> RedisServer:
        """A master that is not `node`."""
        return next(other for other in self.nodes if other is not node)

    def queue_on_each_master(self, prefix: str) -> list[str]:
        """One queue name per master: `prefix-N` whose slot that master owns."""
        found: dict[int, str] = {}
        for n in range(1000):  # bounded: the slots split three ways, so a few names suffice
            name = f"{prefix}-{n}"
            found.setdefault(self.owner(self.slot(name)).port, name)
            if len(found) == len(self.nodes):
                return [found[node.port] for node in self.nodes]
        raise AssertionError("could not place a queue on every master")

    def keys(self) -> dict[int, list[bytes]]:
        """Every key on every master, by the master's port."""
        return {node.port: list(node.client().scan_iter(count=1000)) for node in self.nodes}

    def cluster_client(self) -> redis.RedisCluster:
        return redis.RedisCluster(host="127.0.0.1", port=self.nodes[0].port, socket_timeout=5)

    def move_slot(self, slot: int, target: RedisServer, batch: int = 2) -> None:
        """Migrate `slot` to `target` as redis-cli --cluster reshard does: IMPORTING on the target,
        MIGRATING on the source, MIGRATE its keys a few at a time, then SETSLOT NODE everywhere."""
        source = self.owner(slot)
        source_id, target_id = self.node_id(source), self.node_id(target)
        target.client().execute_command("CLUSTER", "SETSLOT", slot, "IMPORTING", source_id)
        source.client().execute_command("CLUSTER", "SETSLOT", slot, "MIGRATING", target_id)
        for _ in range(10_000):  # bounded: each round moves up to `batch` keys
            keys = source.client().execute_command("CLUSTER", "GETKEYSINSLOT", slot, batch)
            if not keys:
                break
            source.client().execute_command("MIGRATE", "127.0.0.1", target.port, "", 0, 5000, "KEYS", *keys)
        target.client().execute_command("CLUSTER", "SETSLOT", slot, "NODE", target_id)
        source.client().execute_command("CLUSTER", "SETSLOT", slot, "NODE", target_id)
        for node in self.nodes:
            if node is not source and node is not target:
                node.client().execute_command("CLUSTER", "SETSLOT", slot, "NODE", target_id)
        self.wait_ok()
