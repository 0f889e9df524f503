"""Recovery: taking back what workers presumed dead were holding. Any worker's housekeeper runs
it now and then; Redis decides (settle.lua re-checks each heartbeat), so many may run at once."""

from __future__ import annotations

from redis.exceptions import ResponseError

from .. import message
from ..message import MalformedMessage
from ..protocol import Outcomes, Recovered, RetryPolicy
from .consumer import Consumer


def recover_dead_workers(consumer: Consumer, retry: RetryPolicy, limit: int = 100) -> list[Recovered]:
    """Take back what up to `limit` workers presumed dead were holding, as `consumer`: each
    message returns to the queue with one more attempt, or goes to the dead-letter list when its
    attempts are used up (`retry`). Safe to run from many workers at once: settle re-checks the
    heartbeat and moves a message only if it is still in the dead worker's list."""
    keys, client, now = consumer.keys, consumer.client, consumer.store.clock.now()
    recovered: list[Recovered] = []
    for worker_id in consumer.scripts.call("expired", [keys.workers], [limit]):
        # Kept as bytes: an id written by hand need not be UTF-8, and must not stop the rest.
        if worker_id == consumer.worker_id.encode():
            continue
        name = worker_id.decode(errors="replace")
        outcomes, found = Outcomes(), []
        try:
            elements = consumer.read_list(keys.in_flight(worker_id))
        except ResponseError as error:
            if "WRONGTYPE" not in str(error):
                raise
            # Its "in-flight list" is no list: written by hand, it holds nothing we pushed.
            client.zrem(keys.workers, worker_id)
            recovered.append(Recovered(name, None, 0, False, dropped=f"its in-flight key is not a list ({error})"))
            continue
        for raw in elements:
            try:
                msg = message.decode(raw)
            except MalformedMessage as error:
                outcomes.dead(raw, message.dead_letter_malformed(raw, str(error), now), recovered=True)
                found.append(Recovered(name, None, 0, True))
                continue
            dead, _ = retry.failed(outcomes, msg, f"worker {name} stopped responding", recovered=True, now=now)
            found.append(Recovered(name, msg.id, msg.attempts + 1, dead))
        # Runs even with nothing held, so that the dead worker is deregistered.
        applied = consumer.settle_recovered(worker_id, outcomes)
        recovered += [item for item, ok in zip(found, applied, strict=False) if ok]  # applied is [] if it was alive
    return recovered
