"""The dead-letter list as an operator sees it: read it newest first, requeue, purge.

An entry is a message that used up its attempts (with its last `error`), or the wrapper of an
element that was not a message (`{"error": "malformed message: ...", "raw": "<the text>"}`, or
`raw_base64`), or, written by hand, anything at all. Whole-list operations walk it in pages of
the entries present when they started, and every change is one script call (requeue.lua,
purge.lua) that removes the stored text itself, so a concurrent worker or operator is never
overruled: an entry gone meanwhile is simply skipped.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from typing import Any, cast

from .. import message
from ..message import MalformedMessage, Message
from .handle import Store

PAGE = 1000  # entries read, and changed, per round trip


def _not_json(constant: str) -> Any:
    raise ValueError(f"{constant} is not JSON")


def _json(text: str) -> Any:
    """`text` decoded as JSON, or None when it is not (never raises, whatever the text)."""
    try:
        return json.loads(text, parse_constant=_not_json)
    except (ValueError, RecursionError):
        return None


def _number(value: Any) -> float | None:
    return float(value) if type(value) in (int, float) else None


@dataclass(frozen=True)
class DeadLetter:
    """One entry of the dead-letter list. `stored` is its exact text, which identifies it."""

    stored: bytes
    msg: Message | None  # None: malformed, it cannot be requeued
    id: str | None
    error: str | None
    dead_lettered_at: float | None
    original: dict[str, str] = field(default_factory=dict)  # malformed: {"raw": text} or {"raw_base64": ...}

    @classmethod
    def parse(cls, stored: bytes) -> DeadLetter:
        """Read an entry; never raises, whatever its bytes."""
        try:
            msg = message.decode(stored)
        except MalformedMessage:
            return cls._malformed(stored)
        error = msg.fields.get("error")
        return cls(stored, msg, msg.id, error if isinstance(error, str) else None, _number(msg.fields.get("dead_lettered_at")))

    @classmethod
    def _malformed(cls, stored: bytes) -> DeadLetter:
        try:
            text = stored.decode()
        except UnicodeDecodeError:
            return cls(stored, None, None, None, None, {"raw_base64": base64.b64encode(stored).decode()})
        fields = _json(text)
        wrapped = {k: fields[k] for k in ("raw", "raw_base64") if isinstance(fields, dict) and isinstance(fields.get(k), str)}
        if not wrapped:  # not our wrapper: the entry itself is what is broken
            return cls(stored, None, _id_in(text), None, None, {"raw": text})
        assert isinstance(fields, dict)
        error = fields.get("error")
        return cls(stored, None, _id_in(wrapped.get("raw", "")), error if isinstance(error, str) else None,
                   _number(fields.get("dead_lettered_at")), wrapped)

    @property
    def attempts(self) -> int | None:
        return None if self.msg is None else self.msg.attempts

    def to_json(self) -> dict[str, Any]:
        """The entry for `dead list --json`: `raw` (or `raw_base64`) only for a malformed one."""
        return {"id": self.id, "attempts": self.attempts, "error": self.error, "dead_lettered_at": self.dead_lettered_at,
                "body": None if self.msg is None else self.msg.body, "raw": None, **self.original}


def _id_in(text: str) -> str | None:
    """The string id a text has, if it is a JSON object with one."""
    fields = _json(text)
    found = fields.get("id") if isinstance(fields, dict) else None
    if not isinstance(found, str) or not found:
        return None
    try:
        found.encode()  # a lone surrogate could not even be printed
    except UnicodeEncodeError:
        return None
    return found


@dataclass
class Changed:
    """What a requeue or purge did: how many entries it changed, the ids asked for that it did
    not find, and the ids (or, without ids, the count) of malformed entries it had to leave."""

    changed: int = 0
    missing: list[str] = field(default_factory=list)
    malformed: list[str] = field(default_factory=list)
    malformed_left: int = 0


class DeadLetters:
    """The dead-letter list of one queue."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.client = store.client
        self.key = store.keys.dead_letter

    def newest(self, count: int) -> list[DeadLetter]:
        """The `count` most recent entries, newest first (dead letters are appended)."""
        stored = cast(list[bytes], self.client.lrange(self.key, -count, -1))
        return [DeadLetter.parse(raw) for raw in reversed(stored)]

    def page(self, skip: int, count: int) -> tuple[list[DeadLetter], int]:
        """Up to `count` entries after the `skip` newest, newest first, and how many entries the
        list holds (read just before): one page of the list for the dashboard, whatever its length."""
        total: int = self.client.llen(self.key)
        if skip >= total or count <= 0:
            return [], total
        stored = cast(list[bytes], self.client.lrange(self.key, -(skip + count), -(skip + 1)))
        return [DeadLetter.parse(raw) for raw in reversed(stored)], total

    def requeue(self, ids: Collection[str] | None = None) -> Changed:
        """Send the entries with these ids (None: every entry) back to the queue's tail with
        attempts 0 and no error, each in one step with its removal. Malformed entries stay."""
        k = self.store.keys

        def move(chosen: list[DeadLetter]) -> int:
            pairs = [part for entry in chosen if entry.msg is not None for part in (entry.stored, entry.msg.as_pushed())]
            moved: int = self.store.scripts.call("requeue", [k.dead_letter, k.pending, k.stats], pairs)
            return moved

        return self._walk(ids, lambda entry: entry.msg is not None, move)

    def purge(self, ids: Collection[str] | None = None, *, malformed_only: bool = False) -> Changed:
        """Remove the entries with these ids, or the malformed ones, for good."""
        def remove(chosen: list[DeadLetter]) -> int:
            removed: int = self.store.scripts.call("purge", [self.key, self.store.keys.stats], ["some", *(e.stored for e in chosen)])
            return removed

        return self._walk(ids, (lambda entry: entry.msg is None) if malformed_only else (lambda entry: True), remove)

    def purge_all(self) -> int:
        """Remove every entry, in one step; returns how many there were."""
        removed: int = self.store.scripts.call("purge", [self.key, self.store.keys.stats], ["all"])
        return removed

    def _walk(self, ids: Collection[str] | None, allowed: Callable[[DeadLetter], bool],
              act: Callable[[list[DeadLetter]], int]) -> Changed:
        """Page through the entries present now, oldest first, and `act` on those with one of
        `ids` (all when None) that `allowed` admits. What is acted on leaves the list, so the
        next page starts after the entries kept."""
        wanted = None if ids is None else set(ids)
        found: set[str] = set()
        outcome = Changed()
        remaining: int = self.client.llen(self.key)
        kept = 0
        while remaining > 0:
            page = [DeadLetter.parse(raw) for raw in
                    cast(list[bytes], self.client.lrange(self.key, kept, kept + min(PAGE, remaining) - 1))]
            if not page:
                break
            remaining -= len(page)
            chosen = []
            for entry in page:
                if wanted is not None and entry.id not in wanted:
                    continue
                if entry.id is not None:
                    found.add(entry.id)
                if allowed(entry):
                    chosen.append(entry)
                elif entry.msg is None:  # a requeue must leave it
                    outcome.malformed_left += 1
                    if entry.id is not None:
                        outcome.malformed.append(entry.id)
            kept += len(page) - len(chosen)
            if chosen:
                outcome.changed += act(chosen)
        outcome.missing = sorted(wanted - found) if wanted is not None else []
        return outcome
