"""The message format: one JSON object per list element, readable with redis-cli.

    {"id": "<unique string>", "attempts": 0, "created_at": <epoch seconds>, "body": {...}}

`attempts` counts failed tries. A retried or dead-lettered message also carries `error`, the
text of its last failure. A member of a group carries `group` (GroupRef), a follow-up staged by
Message.emit() `parent`, the id of the message whose try emitted it. Fields we do not know are
kept as they are.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import json
import secrets
import time
from typing import Any, NamedTuple

import orjson

from .values import queue_name

# A malformed element larger than this is dead-lettered as its first KEPT_PART bytes, its size
# and its hash: whole, escaped (up to twice its size) or in base64 (four thirds), it could pass
# Redis's 512 MB string limit, or a command's, and never be settled.
KEEP_WHOLE = 64 * 1024 * 1024
KEPT_PART = 64 * 1024
# Deeper documents are malformed: far below Python's recursion limit (about 1000 frames, which
# json's C code counts too), so a message that decodes can always be encoded again from inside
# a handler's failure path, and below Lua cjson's own limit of 1000 used by the scripts.
MAX_NESTING = 100
# The `error` a failed try stores is cut to this many characters (the log line has it whole), so
# failed tries grow a message by a bounded amount (signing.RETRY_ROOM).
MAX_ERROR_CHARS = 1000
# The fields failed tries add or change (and a requeue takes off): outside a message's
# signature, and outside its size as pushed.
FAILURE_FIELDS = ("attempts", "error", "dead_lettered_at")


def _not_json(constant: str) -> Any:
    raise ValueError(f"{constant} is not JSON")


# Made once: json.dumps with separators builds a new encoder on every call, and json.loads
# checks its argument's type and encoding; this is the hot path of producers and workers.
# NaN and Infinity are not JSON: never written, and refused when read.
_dumps = json.JSONEncoder(separators=(",", ":"), allow_nan=False).encode
_loads = json.JSONDecoder(parse_constant=_not_json).decode
_raw_decode = json.JSONDecoder(parse_constant=_not_json).raw_decode  # without decode()'s two whitespace regexes
# orjson decodes a message in a fifth of the time, and refuses whatever the standard library
# refuses too (NaN, lone surrogates, trailing data), so its refusals go to the standard library,
# which decides, and says why. One thing it reads differently: an integer beyond 64 bits becomes
# a float. Any run of 19 digits sends an element to the standard library, which keeps it exact
# (found by turning every digit into 0, in C: a regular expression costs four times as much).
_fast_loads = orjson.loads
_fast_dumps = orjson.dumps
_FAST_DUMPS_OPTIONS = orjson.OPT_PASSTHROUGH_DATACLASS | orjson.OPT_PASSTHROUGH_DATETIME | orjson.OPT_PASSTHROUGH_SUBCLASS
_DIGITS_TO_ZERO = bytes.maketrans(b"123456789", b"000000000")
_LONG_NUMBER = b"0" * 19
_new_tuple = tuple.__new__  # builds a Message without the Python-level __new__ NamedTuple generates


class MalformedMessage(ValueError):
    """Raised for list elements that are not a message; the text is the reason."""


class GroupRef(NamedTuple):
    """The group a message belongs to: its name, the queue it was started on (its bookkeeping
    lives with that queue's keys) and the queue its completion message goes to."""

    name: str
    queue: str
    on_complete: str

    def as_field(self) -> dict[str, str]:
        return {"name": self.name, "queue": self.queue, "on_complete": self.on_complete}


class Emitted(NamedTuple):
    """A follow-up a try staged with Message.emit(): pushed only if the try completes."""

    queue: str
    message_id: str
    raw: bytes  # encoded as message.new() does, unsigned: the worker signs it with the queue's key


class Message(NamedTuple):
    """A decoded message. `raw` is the exact stored text, which identifies it in Redis lists."""

    raw: bytes
    fields: dict[str, Any]
    emitted: list[Emitted]  # this try's follow-ups (emit())
    group: GroupRef | None  # read when decoded: the handler may change `fields`

    def emit(self, queue: str, body: Any, *, key: str | None = None) -> str:
        """Stage a follow-up message for `queue`, pushed if and only if this try completes, in
        the same step that acknowledges it; returns its id. The id comes from this message's id,
        the queue and `key` (by default the emit's position in this try), so every try of this
        message gives the same ids and the target queue skips a second copy as a duplicate. A
        follow-up of a group member joins its group. Raises ValueError for a queue name the
        rule refuses, a key used twice in one try, or a body that is not JSON (as push does)."""
        try:
            _checked_queue_name(queue)
        except ValueError as error:
            raise ValueError(f"the queue name {queue!r} {error}") from None
        key = str(len(self.emitted)) if key is None else str(key)
        message_id = follow_up_id(self.id, queue, key)
        if any(e.message_id == message_id and e.queue == queue for e in self.emitted):
            raise ValueError(f"key {key!r} was emitted to {queue!r} already in this try")
        fields: dict[str, Any] = {"id": message_id, "attempts": 0, "created_at": round(time.time(), 6), "body": body,
                                  "parent": self.id}
        if self.group is not None:
            fields["group"] = self.group.as_field()
        self.emitted.append(Emitted(queue, message_id, encode(fields)))
        return message_id

    @property
    def id(self) -> str:
        message_id: str = self.fields["id"]  # decode() checked the type
        return message_id

    @property
    def attempts(self) -> int:
        attempts: int = self.fields.get("attempts", 0)  # decode() checked the type
        return attempts

    @property
    def body(self) -> Any:
        return self.fields.get("body")

    def failed(self, error: str, *, dead: bool = False, now: float | None = None) -> bytes:
        """Encode this message after one more failed try, carrying the error (and, when it goes
        to the dead-letter list, `dead_lettered_at`: `now`, Unix seconds, the host's clock by default). Built from the stored text,
        not from `fields`, which the handler may have changed (or filled with things JSON
        cannot hold): the retry gets the message as it was pushed. An `error` longer than
        MAX_ERROR_CHARS is cut there, ending in an ellipsis."""
        stored = _loads(self.raw.decode())
        if len(error) > MAX_ERROR_CHARS:
            error = error[: MAX_ERROR_CHARS - 1] + "\u2026"
        changes: dict[str, Any] = {"attempts": stored.get("attempts", 0) + 1, "error": error}
        if dead:
            changes["dead_lettered_at"] = round(time.time() if now is None else now, 6)
        return rewrite(self.raw, stored, changes)

    def as_pushed(self) -> bytes:
        """This message as a producer pushed it: attempts 0, without what failed tries added
        (the form a requeued dead letter takes, and the one the size limit measures)."""
        return rewrite(self.raw, self.fields, {"attempts": 0}, drop=FAILURE_FIELDS[1:])


# A handler emits to a few queues, again and again: each name is checked once.
_checked_queue_name = functools.lru_cache(maxsize=1024)(queue_name)


def encode_text(text: str) -> bytes:
    """A string as encode() writes it inside a message (a JSON string, ASCII only)."""
    if text.isascii() and text.isalnum():  # ids as emit() makes them: nothing to escape
        return b'"' + text.encode() + b'"'
    return _dumps(text).encode()


def encode(fields: dict[str, Any]) -> bytes:
    """Encode new fields; raises ValueError for NaN, Infinity or nesting deeper than MAX_NESTING,
    TypeError for what JSON cannot hold (a set, bytes, a date). An Enum member is written as its
    value and a UUID as its text (orjson's reading; the standard library refused both)."""
    # orjson writes a message in a tenth of the time. Whatever it might write otherwise than the
    # standard library goes to the latter, which decides: text outside ASCII (we write ASCII
    # only, so that any text survives, even lone surrogates from odd exception messages), a null
    # (orjson writes NaN and Infinity as null, where they must be refused), and whatever it
    # refuses (keys that are not strings, integers beyond 64 bits, subclasses, dates).
    try:
        raw = _fast_dumps(fields, option=_FAST_DUMPS_OPTIONS)
    except TypeError:  # orjson.JSONEncodeError is one
        raw = b""
    if not raw or not raw.isascii() or raw.find(b"null") >= 0:
        raw = _dumps(fields).encode()
    if _too_deep(raw, fields):
        raise ValueError(f"nested deeper than {MAX_NESTING} levels")
    return raw


def rewrite(raw: bytes, stored: dict[str, Any], changes: dict[str, Any], drop: tuple[str, ...] = ()) -> bytes:
    """The message stored as `raw` (decoded: `stored`) with `changes` made and `drop` removed.
    Never raises for a message decode() accepted: its depth was checked there, and a number too
    large for a float (read as inf, which JSON cannot write) keeps its stored text, the changes
    appended after it (the last of repeated names is the one JSON readers take)."""
    fields = {name: value for name, value in stored.items() if name not in drop}
    try:
        return _dumps({**fields, **changes}).encode()
    except ValueError:
        extra = {**dict.fromkeys(drop), **changes}
        text = raw.decode().rstrip()
        return (text[:-1] + "".join(f",{_dumps(name)}:{_dumps(value)}" for name, value in extra.items()) + "}").encode()


def new(body: Any, message_id: str | None = None, now: float | None = None, group: GroupRef | None = None) -> tuple[str, bytes]:
    """Build a fresh message created at `now` (Unix seconds; the host's clock by default), a
    member of `group` if given; returns its id and its encoded form. A body that is not JSON
    (NaN, a set, too deep) raises ValueError or TypeError here rather than poison a worker later."""
    message_id = message_id or secrets.token_hex(16)
    created = round(time.time() if now is None else now, 6)
    fields: dict[str, Any] = {"id": message_id, "attempts": 0, "created_at": created, "body": body}
    if group is not None:
        fields["group"] = group.as_field()
    return message_id, encode(fields)


def follow_up_id(parent_id: str, queue: str, key: str) -> str:
    """The id of the follow-up a try of `parent_id` emits to `queue` under `key`: the same on every try."""
    text = f"{parent_id}\0{queue}\0{key}".encode(errors="surrogatepass")
    return hashlib.blake2b(text, digest_size=16).hexdigest()


def member_name(queue: str, message_id: str) -> str:
    """How a group names a member: its queue and its id (queue names hold no spaces)."""
    return f"{queue} {message_id}"


def group_ref(value: Any) -> GroupRef:
    """The `group` field of a message, checked; raises MalformedMessage saying what is wrong."""
    if type(value) is not dict:
        raise MalformedMessage("'group' must be an object with name, queue and on_complete")
    parts = []
    for part in ("name", "queue", "on_complete"):
        text = value.get(part)
        if type(text) is not str:
            raise MalformedMessage(f"'group' needs a string {part!r}")
        try:
            queue_name(text)
        except ValueError as error:
            raise MalformedMessage(f"'group' {part} {text!r} {error}") from None
        parts.append(text)
    return GroupRef(*parts)


def decode(raw: bytes) -> Message:
    """Decode one list element, or raise MalformedMessage saying why it is not a message."""
    try:
        if raw.translate(_DIGITS_TO_ZERO).find(_LONG_NUMBER) >= 0:  # not `in`: it tries an int first, and raises
            raise ValueError("for the standard library")
        fields = _fast_loads(raw)
    except ValueError:  # orjson.JSONDecodeError is one
        fields = _loads_exactly(raw)
    # type() rather than isinstance(): this runs for every message, and bool is not an int here.
    if type(fields) is not dict:
        raise MalformedMessage(f"not a JSON object but {type(fields).__name__}")
    if len(raw) > 2 * MAX_NESTING and _too_deep(raw, fields):  # each level takes two brackets
        raise MalformedMessage(f"not valid JSON: nested deeper than {MAX_NESTING} levels")
    message_id = fields.get("id")
    if type(message_id) is not str or not message_id:
        raise MalformedMessage("no id: a message needs a non-empty string 'id'")
    if not message_id.isascii():
        try:
            message_id.encode()
        except UnicodeEncodeError:
            raise MalformedMessage("'id' is not valid Unicode") from None
    attempts = fields.get("attempts", 0)
    if type(attempts) is not int or attempts < 0:
        raise MalformedMessage("'attempts' must be a whole number of at least 0")
    group = fields.get("group")
    return _new_tuple(Message, (raw, fields, [], None if group is None else group_ref(group)))


def _loads_exactly(raw: bytes) -> Any:
    """The standard library's reading of an element, or MalformedMessage saying why it has none."""
    try:
        text = raw.decode()
        fields, end = _raw_decode(text)
        if end != len(text):
            raise ValueError("not one JSON value alone")
    except (ValueError, RecursionError):  # UnicodeDecodeError is a ValueError too
        try:  # the full decoder allows surrounding whitespace, and says why it refuses
            fields = _loads(raw.decode())
        except RecursionError:
            raise MalformedMessage(f"not valid JSON: nested deeper than {MAX_NESTING} levels") from None
        except ValueError as error:
            raise MalformedMessage(f"not valid JSON: {error}") from None
    return fields


def _too_deep(raw: bytes, value: Any) -> bool:
    """Whether `value` (decoded from `raw`) nests more than MAX_NESTING levels. Counting brackets
    in C rules out almost every message; only one with that many is walked (without recursion)."""
    if raw.count(b"[") + raw.count(b"{") <= MAX_NESTING:
        return False
    stack = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if depth > MAX_NESTING:
            return True
        children = item.values() if type(item) is dict else item
        stack += [(child, depth + 1) for child in children if type(child) in (dict, list)]
    return False


def dead_letter_malformed(raw: bytes, reason: str, now: float | None = None) -> bytes:
    """Wrap an element that is not a message for the dead-letter list, keeping it whole: as
    text under `raw`, or, when it is not UTF-8 or escaping would more than double it (control
    characters), as base64 under `raw_base64`. An element over KEEP_WHOLE bytes keeps only its
    first KEPT_PART bytes, with its size and SHA-256 (`truncated` true): escaped or encoded
    whole, it could outgrow what Redis takes in one string or one command."""
    error, at = f"malformed message: {reason}", round(time.time() if now is None else now, 6)
    if len(raw) > KEEP_WHOLE:
        return _dumps({"error": error, "raw_base64": base64.b64encode(raw[:KEPT_PART]).decode(), "truncated": True,
                       "size": len(raw), "sha256": hashlib.sha256(raw).hexdigest(), "dead_lettered_at": at}).encode()
    try:
        wrapped = json.dumps({"error": error, "raw": raw.decode(), "dead_lettered_at": at}, ensure_ascii=False, separators=(",", ":")).encode()
        if len(wrapped) <= 2 * len(raw) + 1024:
            return wrapped
    except UnicodeDecodeError:
        pass
    return _dumps({"error": error, "raw_base64": base64.b64encode(raw).decode(), "dead_lettered_at": at}).encode()
