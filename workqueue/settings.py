"""Settings: the one place that reads the environment.

Each setting comes from a command-line flag, else the environment variable of the same name in
upper case (a `.env` file has already been merged into the environment by the entry script,
with load_env_file), else its default. A bad value raises ConfigError naming the setting; entry scripts turn that into
one line on stderr and exit code 2.
"""

from __future__ import annotations

import dataclasses
import math
import os
import ssl
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields
from typing import Any
from urllib.parse import unquote, urlsplit, urlunsplit

from dotenv import find_dotenv, load_dotenv

from .protocol import Delivery


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


def _redis_url(value: str) -> str:
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
    return value


def _readable_file(value: str) -> str:
    if not os.path.isfile(value):
        raise ValueError(f"names no file ({value})")
    if not os.access(value, os.R_OK):
        raise ValueError(f"names a file we may not read ({value})")
    return value


def _queue_name(value: str) -> str:
    # Braces would break the Redis Cluster hash tag that keeps a queue's keys in one slot.
    if not value or any(c in value for c in "{} \t\r\n"):
        raise ValueError("must be non-empty, without spaces or braces")
    return value


def _choice(*allowed: str) -> Callable[[str], str]:
    def parse(value: str) -> str:
        if value.lower() not in allowed:
            raise ValueError(f"must be one of {', '.join(allowed)}")
        return value.lower()

    return parse


def _number(kind: type, minimum: float, maximum: float | None = None) -> Callable[[str], Any]:
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


def _default_log_format() -> str:
    return "console" if sys.stderr.isatty() else "json"


# name -> (parser, default); the environment variable is the name in upper case.
_PARSERS: dict[str, Callable[[str], Any]] = {
    "redis_url": _redis_url,
    "queue_name": _queue_name,
    "max_attempts": _number(int, 1),
    "log_level": _choice("debug", "info", "warning", "error"),
    "log_format": _choice("json", "console"),
    "delivery": _choice(*(mode.value for mode in Delivery)),
    "prefetch": _number(int, 1, 1000),  # Lua unpack() stays far below its stack limit
    "worker_timeout": _number(float, 1),
    "retry_backoff": _number(float, 0),
    "retry_backoff_max": _number(float, 0),
    "dedup_ttl": _number(float, 0),
    "grace": _number(float, 0),
    "job_timeout": _number(float, 0),
    "redis_password": str,
    "redis_tls_ca_file": _readable_file,
    "redis_tls_cert_file": _readable_file,
    "redis_tls_key_file": _readable_file,
}
# The command-line flag of a setting, where it is not the name with dashes.
_FLAGS = {"queue_name": "--queue"}


@dataclass(frozen=True)
class TlsFiles:
    """Files for a TLS connection (rediss://): the CA certificates that verify the server (None:
    the system's), and the client's certificate and key, when the server asks for one."""

    ca_file: str | None = None
    cert_file: str | None = None
    key_file: str | None = None


# The password of the example files (.env.example, docker-compose.yml): worth a warning.
EXAMPLE_PASSWORD = "secret"


@dataclass(frozen=True)
class Settings:
    """Everything a producer, worker or CLI needs to know, validated."""

    redis_url: str = dataclasses.field(default="redis://localhost:6379/0", repr=False)  # may hold a password
    queue_name: str = "demo-1"
    max_attempts: int = 3
    log_level: str = "info"
    log_format: str = "json"
    delivery: str = "reliable"
    prefetch: int = 200
    worker_timeout: float = 30.0
    retry_backoff: float = 1.0
    retry_backoff_max: float = 300.0
    dedup_ttl: float = 86400.0
    grace: float = 30.0
    job_timeout: float = 0.0  # seconds a try may run before it is interrupted; 0: no limit
    # The password apart from REDIS_URL (one with @ : / needs no URL-encoding there); "": none.
    redis_password: str = dataclasses.field(default="", repr=False)
    redis_tls_ca_file: str = ""  # CA certificates (PEM) that verify a rediss:// server; "": the system's
    redis_tls_cert_file: str = ""  # the client's certificate (PEM), for a server that asks for one
    redis_tls_key_file: str = ""  # its private key (PEM, not encrypted)

    @classmethod
    def load(cls, environ: Mapping[str, str] | None = None, **flags: Any) -> Settings:
        """Build settings from flags (non-None values win), then the environment, then defaults."""
        environ = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        for field in fields(cls):
            env_name = field.name.upper()
            flag = flags.pop(field.name, None)
            if flag is not None:
                raw, source = str(flag), _FLAGS.get(field.name, "--" + field.name.replace("_", "-"))
            elif environ.get(env_name, "") != "":
                raw, source = environ[env_name], env_name
            else:
                continue
            values[field.name] = parse_value(source, raw, _PARSERS[field.name])
        if flags:
            raise TypeError(f"unknown settings: {', '.join(flags)}")
        values.setdefault("log_format", _default_log_format())
        return cls(**values)

    def __post_init__(self) -> None:
        self.check_connection()

    def check_connection(self) -> None:
        """Raise ConfigError when the connection settings contradict each other, or a TLS file
        is not what it should be (a CA file that holds no certificate, a key that does not match
        the certificate): found here, at start, not at the first connection."""
        scheme = urlsplit(self.redis_url).scheme
        if self.redis_password and _url_password(self.redis_url):
            raise ConfigError("REDIS_PASSWORD is set and REDIS_URL holds a password too: keep one of them")
        tls_set = [name.upper() for name in ("redis_tls_ca_file", "redis_tls_cert_file", "redis_tls_key_file") if getattr(self, name)]
        if not tls_set:
            return
        if scheme != "rediss":
            raise ConfigError(f"{tls_set[0]} is set but REDIS_URL does not start with rediss:// (TLS)")
        if bool(self.redis_tls_cert_file) != bool(self.redis_tls_key_file):
            raise ConfigError("REDIS_TLS_CERT_FILE and REDIS_TLS_KEY_FILE go together: set both or neither")
        context = ssl.create_default_context()
        if self.redis_tls_ca_file:
            try:
                context.load_verify_locations(cafile=self.redis_tls_ca_file)
            except (ssl.SSLError, ValueError):
                raise ConfigError(f"REDIS_TLS_CA_FILE holds no PEM certificate ({self.redis_tls_ca_file})") from None
        if self.redis_tls_cert_file:
            try:
                # A password callback that gives none: an encrypted key fails here, never prompts.
                context.load_cert_chain(self.redis_tls_cert_file, self.redis_tls_key_file, password=lambda: b"")
            except (ssl.SSLError, ValueError):
                raise ConfigError(
                    f"REDIS_TLS_CERT_FILE and REDIS_TLS_KEY_FILE are not a PEM certificate and its unencrypted key "
                    f"({self.redis_tls_cert_file}, {self.redis_tls_key_file})"
                ) from None

    @property
    def masked_url(self) -> str:
        return mask_url(self.redis_url)

    @property
    def password(self) -> str | None:
        """The password we log in with, from REDIS_URL or REDIS_PASSWORD; None: none."""
        return self.redis_password or _url_password(self.redis_url)

    @property
    def tls(self) -> TlsFiles | None:
        """The TLS files to pass to transport.connect; None when none is set (a rediss:// URL
        then verifies the server with the system's CA certificates)."""
        if not (self.redis_tls_ca_file or self.redis_tls_cert_file):
            return None
        return TlsFiles(self.redis_tls_ca_file or None, self.redis_tls_cert_file or None, self.redis_tls_key_file or None)


def _url_password(url: str) -> str | None:
    """The password in a Redis URL, decoded, or None."""
    try:
        password = urlsplit(url).password
    except ValueError:  # not a URL: REDIS_URL's own check says so
        return None
    return None if password is None else unquote(password)


def weak_password_warning(settings: Settings) -> str | None:
    """Why the password the settings log in with is weak (none at all, or the example one), for
    one warning at start; None when it is neither. The text never holds the password."""
    password = settings.password
    if not password:
        return ("Redis is reached without a password: whoever can reach it can push messages that workers will run "
                "and read or delete the queue; set one (SECURITY.md)")
    if password == EXAMPLE_PASSWORD:
        return "the Redis password is the example one from .env.example and docker-compose.yml: set another (SECURITY.md)"
    return None


def load_env_file() -> str:
    """Merge the nearest `.env`, from the working directory upwards, into the environment; a
    variable already set wins. The entry scripts and the CLI call this, and nothing else does.
    Returns the file's path ('' when there is none)."""
    path = find_dotenv(usecwd=True)
    if path:
        load_dotenv(path, override=False)
    return path


def parse_value(source: str, raw: str, parser: Callable[[str], Any]) -> Any:
    """Parse one raw value, raising ConfigError that names its source (flag or variable)."""
    try:
        return parser(raw.strip())
    except ValueError as error:
        raise ConfigError(f"{source} {error}") from None


def fraction(raw: str) -> float:
    """Parser for a probability from 0 to 1 (the demo's --fail-rate)."""
    value: float = _number(float, 0, 1)(raw)
    return value


def seconds(raw: str) -> float:
    """Parser for a non-negative duration in seconds."""
    value: float = _number(float, 0)(raw)
    return value


def count(raw: str) -> int:
    """Parser for a positive whole number."""
    value: int = _number(int, 1)(raw)
    return value
