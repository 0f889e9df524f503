"""What the pages and the API show, read through the library: each registered queue's stats,
its workers, a page of its dead letters, and where a message is. Synchronous (redis-py); the
app runs these in its thread pool. Every Redis call is bounded by the client's timeouts.
"""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass
from typing import Any

import redis

from .. import message
from ..logs import printable
from ..message import MalformedMessage
from ..queue import Queue
from ..store.dead import DeadLetter
from ..store.lookup import Located, counters, heartbeat_deadlines, locate
from ..store.stats import StatValue


@dataclass(frozen=True)
class WorkerRow:
    """One registered worker of a queue, for the page and the API."""

    id: str
    host: str
    held: int
    alive: bool
    heartbeat_deadline: float | None  # Unix seconds (Redis's clock); past it, presumed dead

    def to_json(self) -> dict[str, Any]:
        return {"id": self.id, "host": self.host, "in_flight": self.held, "alive": self.alive,
                "heartbeat_deadline": self.heartbeat_deadline}


def text(raw: bytes) -> str:
    """Bytes read from Redis as text to show: undecodable bytes as escapes, control characters
    too (logs.printable); HTML escaping is the templates' (autoescape)."""
    return printable(raw.decode(errors="backslashreplace"))


def host_of(worker_id: str) -> str:
    """The host of a worker id, `<host>-<pid>-<random>` as workers make them ('' otherwise)."""
    parts = worker_id.rsplit("-", 2)
    return parts[0] if len(parts) == 3 and parts[1].isdigit() and parts[2] else ""


def element_json(raw: bytes) -> dict[str, Any]:
    """A stored element as JSON: the message's fields, or, when it is not one, its error and
    raw text (as a worker would dead-letter it)."""
    try:
        return message.decode(raw).fields
    except MalformedMessage as error:
        wrapped: dict[str, Any] = json.loads(message.dead_letter_malformed(raw, str(error)))
        return wrapped


class Library:
    """The dashboard's view of one Redis: a Queue per registered name, made once and kept."""

    def __init__(self, client: redis.Redis) -> None:
        self.client = client
        self._queues: dict[str, Queue] = {}
        self._lock = threading.Lock()
        self._any = Queue("workqueue-web", client)  # for the registry alone: never written to

    def names(self) -> list[str]:
        return self._any.registered_queues()

    def queue(self, name: str) -> Queue | None:
        """The registered queue of this name, or None (unregistered, or a name the rule refuses)."""
        with self._lock:
            known = self._queues.get(name)
        if known is not None:
            return known
        if name not in self.names():
            return None
        try:
            made = Queue(name, self.client)
        except ValueError:
            return None
        with self._lock:
            self._queues[name] = made
        return made

    def all_stats(self) -> list[tuple[str, dict[str, StatValue] | None]]:
        """Every registered queue with its stats (None: a name the queue-name rule refuses)."""
        rows: list[tuple[str, dict[str, StatValue] | None]] = []
        for name in self.names():
            queue = self.queue(name)
            rows.append((name, None if queue is None else queue.stats()))
        return rows

    def all_counters(self) -> dict[str, dict[str, int]]:
        """Every registered queue's counters, for the rate sampler."""
        found = {}
        for name in self.names():
            queue = self.queue(name)
            if queue is not None:
                found[name] = counters(queue.store)
        return found


def workers(queue: Queue) -> list[WorkerRow]:
    """The queue's registered workers, as stats sees them, with their heartbeat deadlines."""
    snapshot = queue.snapshot()
    deadlines = heartbeat_deadlines(queue.store)
    rows = []
    for worker in sorted(snapshot.workers, key=lambda w: w.id):
        name = text(worker.id)
        deadline = deadlines.get(worker.id)
        rows.append(WorkerRow(name, host_of(name), worker.in_flight, worker.alive, None if deadline is None else deadline / 1000))
    return rows


def found_json(located: Located) -> dict[str, Any]:
    """A lookup as the API answers it: each place found, and how far each place was looked at."""
    places = []
    for place in located.places:
        entry: dict[str, Any] = {"place": place.place}
        if place.index is not None:
            entry["index"] = place.index
        if place.worker is not None:
            entry["worker"] = text(place.worker)
        if place.place == "delayed" and place.at_ms is not None:
            entry["due_at"] = place.at_ms / 1000
        if place.place == "completed" and place.at_ms is not None:
            entry["remembered_until"] = place.at_ms / 1000
        if place.stored is not None:
            entry["message"] = DeadLetter.parse(place.stored).to_json() if place.place == "dead" else element_json(place.stored)
        places.append(entry)
    looked = {name: {"looked": part.looked, "total": part.total} for name, part in located.looked.items()}
    return {"found": places, "looked": looked, "complete": located.complete}


def find(queue: Queue, message_id: str, limit: int) -> Located:
    return locate(queue.store, message_id, limit)
