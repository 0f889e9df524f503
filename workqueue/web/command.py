"""`workqueue web`: serve the dashboard from this process with uvicorn until SIGINT or SIGTERM.

WEB_TOKEN is read here, from the environment into which the command line has merged the
nearest .env (the rule of every setting), rather than as a field of Settings: the worker,
the producer and the Compose file have no use for it.
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import signal
import socket
import sys
from collections.abc import Iterator, Mapping
from typing import Any

from ..queue import Queue
from ..values import ConfigError, number, parse_value

MIN_TOKEN_CHARS = 16


def web_token(environ: Mapping[str, str]) -> str:
    """WEB_TOKEN, checked: empty (read-only), or at least MIN_TOKEN_CHARS printable ASCII
    characters without spaces (it travels in a header). Raises ConfigError naming it, never
    showing it."""
    token = environ.get("WEB_TOKEN", "")
    if token and (len(token) < MIN_TOKEN_CHARS or not all("!" <= c <= "~" for c in token)):
        raise ConfigError(f"WEB_TOKEN must be at least {MIN_TOKEN_CHARS} printable ASCII characters without spaces "
                          "(python -c 'import secrets; print(secrets.token_urlsafe(32))' makes one)")
    return token


def listen(host: str, port: int) -> socket.socket:
    """A socket bound to host:port, listening; raises OSError."""
    family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
    sock = socket.socket(family, kind, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(address)
        sock.listen(128)
    except OSError:
        sock.close()
        raise
    return sock


def is_loopback(sock: socket.socket) -> bool:
    return ipaddress.ip_address(sock.getsockname()[0]).is_loopback


def run(queue: Queue, host: str, port_text: str, environ: Mapping[str, str] = os.environ) -> int:
    """Serve until stopped; the exit code. Bad settings, a missing extra or a port that cannot
    be bound: one line on stderr and 2."""
    try:
        port = parse_value("--port", port_text, number(int, 0, 65535))
        token = web_token(environ)
    except ConfigError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    try:
        import uvicorn

        from .app import create_app
    except ImportError as error:
        print(f"error: workqueue web needs the optional extra web ({error.name} is missing): pip install 'workqueue-redis[web]'",
              file=sys.stderr)
        return 2
    queue.registered_queues()  # Redis answers (else the command line's one line and exit 1), before we listen
    try:
        sock = listen(host, port)
    except OSError as error:
        print(f"error: --host/--port: cannot listen on {host}:{port}: {error.strerror or error}", file=sys.stderr)
        return 2
    address = sock.getsockname()
    url = f"http://{'[' + address[0] + ']' if ':' in address[0] else address[0]}:{address[1]}/"
    if not is_loopback(sock):
        if not token:
            print(f"warning: listening on {address[0]}, beyond this machine, without WEB_TOKEN: whoever reaches it reads every "
                  "queue's messages (actions stay off)", file=sys.stderr)
        else:
            print(f"warning: listening on {address[0]} over plain HTTP: put a TLS proxy in front, or the token travels in clear",
                  file=sys.stderr)
    print(f"workqueue web: serving {url} for the queues on Redis at {queue.location}; actions "
          + ("need WEB_TOKEN" if token else "off (read-only: WEB_TOKEN is not set)"), file=sys.stderr, flush=True)
    app = create_app(queue.client, token, queue.location)
    server = _server_ending_on_signals(uvicorn)(uvicorn.Config(app, log_level="warning", access_log=False, lifespan="on"))
    server.run(sockets=[sock])
    return 0


def _server_ending_on_signals(uvicorn: Any) -> Any:
    """uvicorn's Server, but SIGINT and SIGTERM end it cleanly with exit code 0: uvicorn's own
    handling raises the signal again once it has shut down, so the process would die of it."""

    class Server(uvicorn.Server):  # type: ignore[misc]  # uvicorn is imported lazily, as an optional extra
        @contextlib.contextmanager
        def capture_signals(self) -> Iterator[None]:
            previous = {number: signal.signal(number, self.handle_exit) for number in (signal.SIGINT, signal.SIGTERM)}
            try:
                yield
            finally:
                for number, handler in previous.items():
                    signal.signal(number, handler)

    return Server
