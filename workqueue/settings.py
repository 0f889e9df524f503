"""Settings: the one place that reads the environment.

Each setting comes from a command-line flag, else the environment variable of the same name in
upper case (a `.env` file has already been merged into the environment by the entry script,
with load_env_file), else its default. A bad value raises ConfigError naming the setting; entry scripts turn that into
one line on stderr and exit code 2.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import ssl
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields
from typing import Any
from urllib.parse import unquote, urlsplit

from dotenv import find_dotenv, load_dotenv

from .protocol import Delivery
from .values import ConfigError, choice, count, fraction, mask_url, number, parse_value, queue_name, readable_file, redis_url, seconds

__all__ = [
    "SUPERVISOR_ONLY", "ConfigError", "Settings", "TlsFiles", "add_flags", "count",
    "fraction", "load_env_file", "mask_url", "parse_value", "seconds",
]


def _default_log_format() -> str:
    return "console" if sys.stderr.isatty() else "json"


def _setting(default: Any, parse: Callable[[str], Any], *, flag: str = "", help: str = "", secret: bool = False) -> Any:
    """A field of Settings: its default, the parser of its raw value and, for a setting the
    worker command takes as a flag too, the flag and its help (add_flags). A secret one is left
    out of repr()."""
    return dataclasses.field(default=default, repr=not secret, metadata={"parse": parse, "flag": flag, "help": help})


DAY, WEEK, YEAR = 86400, 7 * 86400, 365 * 86400  # seconds

# Settings of the supervised worker (`workqueue worker`) alone: the demo's worker runs in-process.
SUPERVISOR_ONLY = ("processes", "concurrency")

# The password of the example files (.env.example, docker-compose.yml): worth a warning.
EXAMPLE_PASSWORD = "secret"


@dataclass(frozen=True)
class TlsFiles:
    """Files for a TLS connection (rediss://): the CA certificates that verify the server (None:
    the system's), and the client's certificate and key, when the server asks for one."""

    ca_file: str | None = None
    cert_file: str | None = None
    key_file: str | None = None


@dataclass(frozen=True)
class Settings:
    """Everything a producer, worker or CLI needs to know, validated: each field is one setting,
    read from the environment variable of its name in upper case, with its default and parser."""

    redis_url: str = _setting("redis://localhost:6379/0", redis_url, secret=True)  # may hold a password
    queue_name: str = _setting("demo-1", queue_name, flag="--queue", help="queue name")
    # Upper bounds keep every value one that works end to end (deadlines in ms stay exact in Lua).
    max_attempts: int = _setting(3, number(int, 1, 1_000_000), flag="--max-attempts", help="failed tries before a message is dead-lettered")
    log_level: str = _setting("info", choice("debug", "info", "warning", "error"))
    log_format: str = _setting("json", choice("json", "console"))  # load(): console on a terminal
    delivery: str = _setting("reliable", choice(*(mode.value for mode in Delivery)), flag="--delivery", help="reliable or simple")
    # Lua unpack() stays far below its stack limit.
    prefetch: int = _setting(200, number(int, 1, 1000), flag="--prefetch", help="most messages taken per round trip")
    worker_timeout: float = _setting(30.0, number(float, 1, DAY), flag="--worker-timeout",
                                     help="seconds of silence before a worker is presumed dead")
    retry_backoff: float = _setting(1.0, number(float, 0, WEEK))  # base of the exponential retry backoff, seconds
    retry_backoff_max: float = _setting(300.0, number(float, 0, WEEK))  # its cap
    dedup_ttl: float = _setting(86400.0, number(float, 0, YEAR))  # seconds a completed id is remembered
    grace: float = _setting(30.0, number(float, 0, DAY), flag="--grace", help="seconds a stopping worker may take to finish")
    job_timeout: float = _setting(0.0, number(float, 0, WEEK), flag="--job-timeout",
                                  help="seconds a try may run before it is interrupted, 0 for no limit")
    metrics_port: int = _setting(0, number(int, 0, 65535), flag="--metrics-port",
                                 help="serve Prometheus metrics on this port, every interface, 0 for off")
    processes: int = _setting(0, number(int, 0, 1024), flag="--processes",
                              help="child processes that run the handler, 0 for one per core")
    concurrency: int = _setting(1, number(int, 1, 1000), flag="--concurrency",
                                help="messages each child runs at once: async tasks, or threads for a plain function")
    # The password apart from REDIS_URL (one with @ : / needs no URL-encoding there); "": none.
    redis_password: str = _setting("", str, secret=True)
    redis_tls_ca_file: str = _setting("", readable_file)  # CA certificates (PEM) that verify a rediss:// server; "": the system's
    redis_tls_cert_file: str = _setting("", readable_file)  # the client's certificate (PEM), for a server that asks for one
    redis_tls_key_file: str = _setting("", readable_file)  # its private key (PEM, not encrypted)
    # HMAC key that producers sign messages with and workers verify them with; "": signing off.
    message_signing_key: str = _setting("", str, secret=True)
    # A key workers also accept while keys are rotated (never used for signing).
    message_signing_key_previous: str = _setting("", str, secret=True)
    # Larger messages are refused by push, dead-lettered by workers; Redis takes no larger string.
    max_message_bytes: int = _setting(1024 * 1024, number(int, 1, 512 * 1024 * 1024))
    push_min_replicas: int = _setting(0, number(int, 0, 100))  # replicas that must confirm each push (Redis WAIT); 0: no wait
    # Seconds a push waits for them; WAIT's timeout is in ms and 0 would block forever, and it
    # stays below the transport's socket timeout.
    push_replica_timeout: float = _setting(1.0, number(float, 0.001, 5))

    @classmethod
    def load(cls, environ: Mapping[str, str] | None = None, **flags: Any) -> Settings:
        """Build settings from flags (non-None values win), then the environment, then defaults."""
        environ = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        for field in fields(cls):
            env_name = field.name.upper()
            flag = flags.pop(field.name, None)
            if flag is not None:
                raw, source = str(flag), field.metadata["flag"] or "--" + field.name.replace("_", "-")
            elif environ.get(env_name, "") != "":
                raw, source = environ[env_name], env_name
            else:
                continue
            values[field.name] = parse_value(source, raw, field.metadata["parse"])
        if flags:
            raise TypeError(f"unknown settings: {', '.join(flags)}")
        values.setdefault("log_format", _default_log_format())
        return cls(**values)

    @classmethod
    def flagged(cls) -> tuple[str, ...]:
        """The settings a command-line flag may set (add_flags), by name."""
        return tuple(field.name for field in fields(cls) if field.metadata["flag"])

    def __post_init__(self) -> None:
        if self.message_signing_key_previous and not self.message_signing_key:
            raise ConfigError("MESSAGE_SIGNING_KEY_PREVIOUS is set but MESSAGE_SIGNING_KEY is not: set both, or neither")
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


def add_flags(parser: argparse.ArgumentParser, *names: str, exclude: tuple[str, ...] = ()) -> None:
    """Add to `parser` the flag of each setting named (all that have one when none is named,
    but those in `exclude`), with its help, the variable it overrides and its default: pass the
    parsed values to load()."""
    for field in fields(Settings):
        if field.metadata["flag"] and (not names or field.name in names) and field.name not in exclude:
            default = f"{field.default:g}" if isinstance(field.default, (int, float)) else field.default
            parser.add_argument(field.metadata["flag"], dest=field.name, help=f"{field.metadata['help']} ({field.name.upper()}, default {default})")


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
