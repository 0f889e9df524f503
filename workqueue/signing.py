"""What a worker accepts as a message: no larger than MAX_MESSAGE_BYTES and, with a signing key,
signed by a producer that holds it.

The signature, the field `sig`, is the lowercase hex HMAC-SHA256, keyed with the UTF-8 bytes of
MESSAGE_SIGNING_KEY, of the message's canonical form: the bytes of

    json.dumps(fields, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False)

(pure ASCII) over the message's fields without `sig`, `attempts`, `error` and `dead_lettered_at`:
the fields a failed try, a recovery or a requeue change, so a retried message needs no new
signature. `fields` is the message as JSON decodes it, so both sides sign the same values
whatever the producer's Python objects were (tuples, non-string keys). A worker also accepts a
signature made with MESSAGE_SIGNING_KEY_PREVIOUS, for rotating keys.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from . import message
from .message import MalformedMessage, Message
from .settings import Settings

SIGNATURE = "sig"
# Fields outside the signature: the signature itself, and what failures and requeues change.
UNSIGNED = frozenset({SIGNATURE, *message.FAILURE_FIELDS})
# An element up to this much over MAX_MESSAGE_BYTES is read to take off what failed tries added
# (`error`, cut to message.MAX_ERROR_CHARS characters of at most 12 bytes each escaped,
# `attempts`, `dead_lettered_at`) and measured as pushed; a larger one is refused unread.
RETRY_ROOM = 16 * 1024

# A group's completion message (Queue.push_many) is signed by the producer that starts the
# group, before its counts are known; Redis fills them in: they are outside its signature.
COMPLETES_GROUP = "completes_group"
GROUP_COUNTS = ("total", "completed", "dead")

_canonical = json.JSONEncoder(sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False).encode


def canonical(fields: dict[str, Any]) -> bytes:
    """The bytes a signature covers (see the module's docstring); raises ValueError for a
    number JSON cannot write (a float read as infinity)."""
    signed = {name: value for name, value in fields.items() if name not in UNSIGNED}
    body = fields.get("body")
    if fields.get(COMPLETES_GROUP) is True and type(body) is dict:
        signed["body"] = {name: value for name, value in body.items() if name not in GROUP_COUNTS}
    return _canonical(signed).encode()


class MessageTooLarge(ValueError):
    """Raised by Queue.push and push_many for an encoded message over MAX_MESSAGE_BYTES."""

    def __init__(self, size: int, limit: int) -> None:
        super().__init__(f"message of {size} bytes is over MAX_MESSAGE_BYTES ({limit})")
        self.size = size
        self.limit = limit


class Signing:
    """Signs with the current key; verifies with it or the previous one. Its repr shows no key."""

    __slots__ = ("_keys",)

    def __init__(self, key: str, previous: str = "") -> None:
        if not key:
            raise ValueError("the signing key is empty" + (" but a previous key is set" if previous else ""))
        self._keys = tuple(k.encode() for k in (key, previous) if k)

    def __repr__(self) -> str:
        return f"Signing(keys={len(self._keys)})"

    def signature(self, fields: dict[str, Any], key: int = 0) -> str:
        return hmac.new(self._keys[key], canonical(fields), hashlib.sha256).hexdigest()

    def sign(self, raw: bytes) -> bytes:
        """`raw`, a new message as message.new() encoded it (compact, no `sig`), with `sig`
        appended. Signed as a worker will read it: decoded from `raw`."""
        sig = self.signature(json.loads(raw))
        return raw[:-1] + b',"' + SIGNATURE.encode() + b'":"' + sig.encode() + b'"}'

    def verify(self, fields: dict[str, Any]) -> None:
        """Raise MalformedMessage, with a reason that says `signature`, unless the message's
        `sig` is its signature under one of the keys."""
        sig = fields.get(SIGNATURE)
        if sig is None:
            raise MalformedMessage("signature missing: MESSAGE_SIGNING_KEY is set and the message has no 'sig'")
        if type(sig) is not str or not sig.isascii():  # compare_digest takes ASCII text only
            raise MalformedMessage("signature does not verify: 'sig' is not a hex string")
        try:
            signed = canonical(fields)
        except ValueError:  # a number too large for a float: no producer of ours signed it
            raise MalformedMessage("signature does not verify: the message holds a number JSON cannot write back") from None
        for key in self._keys:
            if hmac.compare_digest(hmac.new(key, signed, hashlib.sha256).hexdigest(), sig):
                return
        raise MalformedMessage("signature does not verify with MESSAGE_SIGNING_KEY or MESSAGE_SIGNING_KEY_PREVIOUS")


@dataclass(frozen=True)
class MessagePolicy:
    """The size limit and the signing keys (None: signing off) of a queue, for its producers
    and its workers alike."""

    max_bytes: int = Settings().max_message_bytes
    signing: Signing | None = None

    def __post_init__(self) -> None:
        if self.max_bytes < 1:
            raise ValueError("the message size limit must be at least 1 byte")

    def check_sizes(self, raws: Sequence[bytes]) -> None:
        """Raise MessageTooLarge for the first encoded message over the limit."""
        for raw in raws:
            if len(raw) > self.max_bytes:
                raise MessageTooLarge(len(raw), self.max_bytes)

    def admit(self, raw: bytes) -> Message:
        """Decode one element a worker took, or raise MalformedMessage saying why it is not a
        message it may handle: too large (unread), not a message, or not signed."""
        msg = message.decode(raw) if len(raw) <= self.max_bytes else self._measured(raw)
        if self.signing is not None:
            self.signing.verify(msg.fields)
        return msg

    def _measured(self, raw: bytes) -> Message:
        """An element over the limit: too large, unless it is a message that only what failed
        tries added (`error`, `attempts`, `dead_lettered_at`) took over it."""
        size = len(raw)
        if size <= self.max_bytes + RETRY_ROOM:
            try:
                msg = message.decode(raw)
            except MalformedMessage:
                pass
            else:
                size = len(msg.as_pushed())
                if size <= self.max_bytes:
                    return msg
        raise MalformedMessage(f"too large: {size} bytes, over MAX_MESSAGE_BYTES ({self.max_bytes})")
