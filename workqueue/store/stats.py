"""What `stats` reports: every figure of the queue, read from Redis at one instant by one script,
and beside them how full Redis is and what it does when full (memory.py).

The balance `unaccounted` is 0 when every message pushed is accounted for: processed, dead-
lettered, skipped as a duplicate, or still waiting, delayed or held by a worker.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import cast

from .handle import Store
from .memory import read_memory
from .transport import Key

# Every figure `stats` reports, in order, with what it counts: the CLI prints these labels.
STATS_FIELDS = {
    "pending": "waiting in the queue",
    "in_flight": "taken by a worker, not settled",
    "delayed": "failed, waiting out their backoff",
    "dead": "in the dead-letter list",
    "workers": "live workers",
    "paused": "paused: workers take no new messages",
    "oldest_pending_age_seconds": "age of the next message (0: none waiting)",
    "produced": "pushed by producers",
    "requeued": "dead letters sent back to the queue",
    "completed": "processed",
    "retried": "failed tries sent back for retry",
    "recovered": "taken back from dead workers",
    "dead_lettered": "dead-lettered",
    "duplicates_skipped": "duplicates skipped",
    "purged": "dead letters purged",
    "unaccounted": "messages unaccounted for (0: nothing lost)",
    "memory_used_bytes": "memory Redis uses, for every key it holds",
    "memory_limit_bytes": "its maxmemory (0: none)",
    "maxmemory_policy": "what a full Redis does (allkeys-*: evicts messages)",
}
# The counters the scripts keep in the stats hash, each in the step of the transition it counts.
COUNTERS = ("produced", "requeued", "completed", "retried", "recovered", "dead_lettered", "duplicates_skipped", "purged")
StatValue = int | float | bool | str | None


@dataclass(frozen=True)
class WorkerState:
    """One registered worker as stats saw it: how many messages it holds, and whether its
    heartbeat is current (a dead one keeps its messages until another worker recovers them)."""

    id: bytes
    in_flight: int
    alive: bool


@dataclass(frozen=True)
class Snapshot:
    """One consistent reading of a queue: `stats` (the fields of STATS_FIELDS) and its workers."""

    stats: dict[str, StatValue]
    workers: list[WorkerState]


def read(store: Store, attempts: int = 50) -> Snapshot:
    """Stats and each registered worker, read at one instant.

    One script reads everything. It needs the in-flight list of every registered worker as
    a key, so it refuses when a worker came or went since we listed them, and we list them
    again (bounded by `attempts`)."""
    k = store.keys
    for _ in range(attempts):
        ids = cast(list[bytes], store.client.zrange(k.workers, 0, -1))  # bytes: any id, as stored
        held_keys = [key for i in ids for key in (k.in_flight(i), k.landing(i))]
        keys: list[Key] = [k.pending, k.delayed, k.dead_letter, k.stats, k.workers, k.paused, *held_keys]
        reply = store.scripts.call("stats", keys, ids)
        if reply[0] == 1:
            break
    else:
        raise RuntimeError(f"workers kept coming and going; no consistent stats after {attempts} tries")
    (pending, delayed, dead, paused, oldest_ms), held, pairs = reply[1:4]
    workers = [WorkerState(ids[j], held[2 * j], held[2 * j + 1] == 1) for j in range(len(ids))]
    counters = {pairs[i].decode(): int(pairs[i + 1]) for i in range(0, len(pairs), 2)}
    in_flight = sum(w.in_flight for w in workers)
    result: dict[str, StatValue] = {
        "pending": pending, "in_flight": in_flight, "delayed": delayed, "dead": dead,
        "workers": sum(w.alive for w in workers), "paused": paused == 1,
        "oldest_pending_age_seconds": None if oldest_ms is None else oldest_ms / 1000,
    }
    c = {name: counters.get(name, 0) for name in COUNTERS}
    result.update(c)
    # `dead` is not in the balance: purging dead letters changes no message's fate.
    result["unaccounted"] = (
        c["produced"] + c["requeued"] - c["completed"] - c["dead_lettered"] - c["duplicates_skipped"]
        - pending - delayed - in_flight
    )
    memory = read_memory(store)  # beside the script: INFO may not be run by one
    result.update(memory_used_bytes=memory.used, memory_limit_bytes=memory.maximum, maxmemory_policy=memory.policy)
    return Snapshot({name: result[name] for name in STATS_FIELDS}, workers)
