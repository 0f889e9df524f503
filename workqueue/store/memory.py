"""Redis's memory as it concerns a queue: how full it is, and whether its `maxmemory-policy` may
drop the queue's keys when it is full.

Under `noeviction` (Redis's default) a full Redis refuses writes: producers and workers wait
that out (outages.py), and the scripts a worker must run while Redis is full are written so
Redis lets them (prelude.lua: `forget_expired`). A `volatile-*` policy evicts only keys with a
time to live, and no key of a queue has one, so to a queue it is `noeviction`. An `allkeys-*`
policy evicts any key, the queue list, in-flight lists and counters included, without an error
to anyone: messages vanish and `stats` cannot count them. Workers and producers refuse it.
"""

from __future__ import annotations

from dataclasses import dataclass

from redis.exceptions import ResponseError

from .handle import Store
from .outages import RedisRefused
from .transport import send_together


@dataclass(frozen=True)
class Memory:
    """What INFO memory says, or Nones when the Redis user may not run INFO."""

    used: int | None
    maximum: int | None  # 0: no limit
    policy: str | None

    @property
    def evicting(self) -> bool:
        """Whether a full Redis may evict the queue's own keys."""
        return self.policy is not None and self.policy.startswith("allkeys-")


def read_memory(store: Store) -> Memory:
    """INFO memory of the server (on a cluster, the node) holding the queue's keys."""
    try:
        [reply] = send_together(store.client, store.keys.pending, [("INFO", "memory")])
    except ResponseError:  # INFO not granted to this user (NOPERM), or renamed away
        return Memory(None, None, None)
    text = reply.decode(errors="replace") if isinstance(reply, bytes) else str(reply)
    fields = dict(line.split(":", 1) for line in text.splitlines() if ":" in line)

    def number(name: str) -> int | None:
        value = fields.get(name, "").strip()
        return int(value) if value.isdigit() else None

    policy = fields.get("maxmemory_policy")
    return Memory(number("used_memory"), number("maxmemory"), None if policy is None else policy.strip())


def refuse_evicting_policy(store: Store) -> None:
    """Raise RedisRefused when Redis may evict the queue's keys; a user that may not run INFO
    is not asked (the check is skipped)."""
    memory = read_memory(store)
    if memory.evicting:
        raise RedisRefused(
            f"maxmemory-policy is {memory.policy}: a full Redis would evict this queue's keys and lose messages "
            "without an error; set maxmemory-policy to noeviction (a volatile-* policy is safe too: no queue key "
            "expires)")
