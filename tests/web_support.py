"""Helpers of the dashboard's tests: the app served by uvicorn on a free loopback port, and HTTP calls."""

from __future__ import annotations

import http.client
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from urllib.parse import urlsplit

import pytest
from support import RedisServer, wait_until


@dataclass
class Answer:
    status: int
    headers: http.client.HTTPMessage
    body: str


@contextmanager
def serving(client, token: str = "", *, sample_interval: float = 60.0, locate_limit: int = 10_000) -> Iterator[str]:
    """The dashboard of `client`'s Redis served from a thread for the with-block; yields its base URL."""
    import uvicorn

    from workqueue.web.app import create_app
    from workqueue.web.command import listen

    sock = listen("127.0.0.1", 0)
    app = create_app(client, token, "test-redis", sample_interval=sample_interval, locate_limit=locate_limit)
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", access_log=False, lifespan="on"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        wait_until(lambda: server.started, timeout=10)
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        sock.close()
    assert not thread.is_alive(), "the dashboard did not stop"


def call(url: str, method: str = "GET", *, headers: dict[str, str] | None = None, body: str | None = None) -> Answer:
    """One HTTP request, redirects not followed."""
    parts = urlsplit(url)
    connection = http.client.HTTPConnection(parts.hostname, parts.port, timeout=30)
    try:
        target = parts.path + (f"?{parts.query}" if parts.query else "")
        sent = dict(headers or {})
        if body is not None:
            sent.setdefault("Content-Type", "application/x-www-form-urlencoded")
        connection.request(method, target, body=body, headers=sent)
        response = connection.getresponse()
        return Answer(response.status, response.headers, response.read().decode())
    finally:
        connection.close()


@pytest.fixture(scope="module", name="shared_redis")
def web_redis(tmp_path_factory):
    """A redis-server of the importing module's own, in place of the suite's shared one: the
    dashboard lists every queue on its Redis, and the shared server holds hundreds, which would
    slow each page and its sampler."""
    server = RedisServer(tmp_path_factory.mktemp("redis-web")).start()
    yield server
    server.stop()
