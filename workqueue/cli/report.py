"""What the command line prints: stats, pending messages, dead letters and queues, as a table
for people or as JSON for programs. Reading only; changes are the Queue's."""

from __future__ import annotations

import json
import time
from typing import Any

from .. import message
from ..figures import show, when
from ..logs import printable
from ..message import MalformedMessage
from ..queue import Queue
from ..store.dead import DeadLetter
from ..store.stats import STATS_FIELDS, StatValue

CUT = 100  # characters of a body or a raw element shown on one line of a table


def cut(text: str) -> str:
    """Text for one line of a table: at most CUT characters, and printable whatever it holds
    (logs.printable)."""
    text = printable(text)
    return text if len(text) <= CUT else text[: CUT - 1] + "…"


def print_stats(queue: Queue, as_json: bool = False) -> None:
    """A queue's stats: one JSON object, or one labelled line per figure."""
    result = queue.stats()
    if as_json:
        print(json.dumps(result))
        return
    print(f"queue {queue.name} at {queue.location}")
    for name, value in result.items():
        print(f"  {name:<27}{show(value):>10}  {STATS_FIELDS[name]}")


def pending_json(raw: bytes) -> dict[str, Any]:
    """A pending element as JSON: the message, or, when it is not one, what the worker will
    dead-letter: `error` and `raw` (or `raw_base64`)."""
    try:
        return message.decode(raw).fields
    except MalformedMessage as error:
        wrapped: dict[str, Any] = json.loads(message.dead_letter_malformed(raw, str(error)))
        return wrapped


def print_peek(queue: Queue, count: int, as_json: bool) -> None:
    """The next `count` pending messages, head first, untouched."""
    entries = [pending_json(raw) for raw in queue.peek(count)]
    if as_json:
        print(json.dumps(entries))
        return
    for fields in entries:
        if "error" in fields and "id" not in fields:
            print(f"(malformed)  {cut(fields['error'])}: {cut(fields.get('raw', fields.get('raw_base64', '')))}")
        else:
            created = fields.get("created_at")
            created = created if type(created) in (int, float) else None
            print(f"{printable(fields['id'])}  attempts={fields.get('attempts', 0)}  created={when(created)}  {cut(json.dumps(fields.get('body')))}")


def dead_line(entry: DeadLetter) -> str:
    """One dead letter on one line: when, id, attempts, error (a malformed one with its text)."""
    if entry.msg is not None:
        return f"{when(entry.dead_lettered_at)}  {printable(entry.id or '')}  attempts={entry.attempts}  {cut(entry.error or '-')}"
    original = entry.original.get("raw", entry.original.get("raw_base64", ""))
    return f"{when(entry.dead_lettered_at)}  (malformed{' ' + printable(entry.id) if entry.id else ''})  {cut(entry.error or '-')}  {cut(original)}"


def print_dead(queue: Queue, count: int, as_json: bool) -> None:
    """The `count` newest dead letters, newest first."""
    entries = queue.dead.newest(count)
    if as_json:
        print(json.dumps([entry.to_json() for entry in entries]))
        return
    for entry in entries:
        print(dead_line(entry))


def print_queues(queue: Queue, as_json: bool) -> None:
    """Every registered queue on this Redis, with its counts."""
    columns = ("pending", "in_flight", "dead", "workers", "paused")
    rows: dict[str, dict[str, StatValue]] = {}
    for name in queue.registered_queues():
        try:
            rows[name] = Queue(name, queue.client).stats()
        except ValueError:  # registered before the queue-name rule refused such a name: no figures
            rows[name] = dict.fromkeys(columns)
    if as_json:
        print(json.dumps([{"queue": name, **{c: stats[c] for c in columns}} for name, stats in rows.items()]))
        return
    names = {name: printable(name) for name in rows}
    width = max([len("QUEUE"), *map(len, names.values())])
    print(f"{'QUEUE':<{width}}" + "".join(f"  {c.upper():>9}" for c in columns))
    for name, stats in rows.items():
        print(f"{names[name]:<{width}}" + "".join(f"  {show(stats[c]):>9}" for c in columns))


GROUP_POLL = 0.5  # how often (s) `group --wait` reads the group's progress
BAR_WIDTH = 30


def group_line(progress: dict[str, Any]) -> str:
    """One line of a group's progress: ended of total, completed, dead, pending, done."""
    ended = progress["completed"] + progress["dead"]
    return (f"group {printable(progress['group'])}: {ended}/{progress['total']} ended, {progress['completed']} completed, "
            f"{progress['dead']} dead, {progress['pending']} pending" + (", done" if progress["done"] else ""))


def print_group(queue: Queue, name: str, as_json: bool, wait: bool, terminal: bool) -> int:
    """Print a group's progress (GroupError when there is none). With `wait`, until it is done:
    a bar redrawn in place on a `terminal`, else a line each time the figures change. Returns
    0 when every member completed, 1 when any was dead-lettered (or, without wait, not done)."""
    progress = queue.group(name)
    shown = None
    while wait and not progress["done"]:  # until done: Ctrl-C stops it
        if terminal:
            ended, total = progress["completed"] + progress["dead"], max(progress["total"], 1)
            filled = BAR_WIDTH * ended // total
            print(f"\r[{'#' * filled}{'.' * (BAR_WIDTH - filled)}] {group_line(progress)}", end="", flush=True)
        elif progress != shown and not as_json:
            print(group_line(progress), flush=True)
            shown = progress
        time.sleep(GROUP_POLL)
        progress = queue.group(name)
    if terminal and wait:
        print("\r", end="")
    print(json.dumps(progress) if as_json else group_line(progress))
    return 0 if progress["done"] and progress["dead"] == 0 else 1
