"""Setting values: parsing and validating each kind, with errors that name what is allowed.

Settings (settings.py) uses these for every setting it reads; the entry scripts use the public
parsers for their own flags. A parser raises ValueError; parse_value() turns that into a
ConfigError naming the flag or variable the value came from.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from typing import Any
from urllib.parse import parse_qsl, urlsplit, urlunsplit


class ConfigError(Exception):
    """A setting has a value we cannot use; the message names the setting and what is allowed."""


def mask_url(url: str) -> str:
    """Return the URL with any password replaced by ***, safe to log."""
    try:
        parts = urlsplit(url)
        if parts.password is None:
            return url
        user = parts.username or ""
        host = parts.hostname or ""
        if ":" in host:  # an IPv6 literal needs its brackets back
            host = f"[{host}]"
        port = f":{parts.port}" if parts.port else ""
        return urlunsplit(parts._replace(netloc=f"{user}:***@{host}{port}"))
    except ValueError:
        return "<unparseable url>"


def redis_url(value: str) -> str:
    try:
        parts = urlsplit(value)
        _ = parts.port  # read only to validate: raises ValueError on a non-numeric port
    except ValueError:
        raise ValueError(f"is not a valid URL ({mask_url(value)})") from None
    if parts.scheme not in ("redis", "rediss", "unix"):
        raise ValueError("must start with redis://, rediss:// or unix://")
    if parts.scheme != "unix" and not parts.hostname:
        raise ValueError("must name a host, as in redis://localhost:6379/0")
    if parts.scheme == "unix" and not parts.path:
        raise ValueError("must name a socket path, as in unix:///run/redis.sock")
    db = parts.path.lstrip("/") if parts.scheme != "unix" else "0"
    if db and not db.isdigit():
        raise ValueError("must end with a database number, as in redis://localhost:6379/0")
    options = [name for name, _ in parse_qsl(parts.query, keep_blank_values=True) if name != "db"]
    if options:  # redis-py would apply them over ours (decode_responses, timeouts, retries): not ours to allow
        raise ValueError(f"may carry no option but db ({', '.join(sorted(set(options)))}): workqueue sets the client's options itself")
    return value


def readable_file(value: str) -> str:
    if not os.path.isfile(value):
        raise ValueError(f"names no file ({value})")
    if not os.access(value, os.R_OK):
        raise ValueError(f"names a file we may not read ({value})")
    return value


# Names starting with this are workqueue's own keys (the registry of queues, `workqueue:queues`).
RESERVED_PREFIX = "workqueue:"
MAX_QUEUE_NAME_BYTES = 200


def queue_name(value: str) -> str:
    """The one rule for a queue's name, which Queue, the settings and the CLI share: not empty,
    at most MAX_QUEUE_NAME_BYTES, no whitespace or control characters, not under
    RESERVED_PREFIX, and no braces but a leading Redis Cluster hash tag followed by more of
    the name, without colons (`{thumbs}convert`): queues with one tag share a slot, which a pipeline's hand-offs
    need on a cluster (store/keys.py). Other braces would break the tag that keeps a queue's
    keys in one slot, or name another queue's keys."""
    if not value:
        raise ValueError("must not be empty")
    if len(value.encode(errors="surrogatepass")) > MAX_QUEUE_NAME_BYTES:
        raise ValueError(f"must be at most {MAX_QUEUE_NAME_BYTES} bytes")
    rest = value
    if value.startswith("{"):
        tag, closed, rest = value[1:].partition("}")
        # A tagged queue's keys are its name and a suffix (`{t}a:dead`): a colon after the tag
        # would let one queue's name be another's key.
        if not closed or not tag or not rest or ":" in rest or "{" in tag:
            raise ValueError("may start with a hash tag only as {tag}name, a name without colons after it")
    bad = next((c for c in rest if c in "{}" or c.isspace() or not c.isprintable()), None)
    if bad is None and rest is not value:
        bad = next((c for c in value[: len(value) - len(rest)] if c.isspace() or not c.isprintable()), None)
    if bad is not None:
        raise ValueError(f"must hold no braces, whitespace or control characters (it holds {bad!r})")
    if value.startswith(RESERVED_PREFIX):
        raise ValueError(f"must not start with {RESERVED_PREFIX} (reserved for workqueue's own keys)")
    return value


def choice(*allowed: str) -> Callable[[str], str]:
    def parse(value: str) -> str:
        if value.lower() not in allowed:
            raise ValueError(f"must be one of {', '.join(allowed)}")
        return value.lower()

    return parse


def number(kind: type, minimum: float, maximum: float | None = None) -> Callable[[str], Any]:
    def parse(value: str) -> Any:
        try:
            number = kind(value)
        except ValueError:
            raise ValueError("must be a whole number" if kind is int else "must be a number") from None
        if not math.isfinite(number) or number < minimum or (maximum is not None and number > maximum):
            bound = f"from {minimum} to {maximum}" if maximum is not None else f"at least {minimum}"
            raise ValueError(f"must be {bound}")
        return number

    return parse


def parse_value(source: str, raw: str, parser: Callable[[str], Any]) -> Any:
    """Parse one raw value, raising ConfigError that names its source (flag or variable)."""
    try:
        return parser(raw.strip())
    except ValueError as error:
        raise ConfigError(f"{source} {error}") from None


def fraction(raw: str) -> float:
    """Parser for a probability from 0 to 1 (the demo's --fail-rate)."""
    value: float = number(float, 0, 1)(raw)
    return value


def seconds(raw: str) -> float:
    """Parser for a non-negative duration in seconds."""
    value: float = number(float, 0)(raw)
    return value


def count(raw: str) -> int:
    """Parser for a positive whole number."""
    value: int = number(int, 1)(raw)
    return value
