"""Test helpers: throwaway redis-server processes and the project's scripts as subprocesses."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import redis

ROOT = Path(__file__).resolve().parents[1]
PYTHON = sys.executable


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_until(condition: Callable[[], Any], timeout: float, interval: float = 0.05) -> Any:
    """Poll `condition` until it returns something truthy, or fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = condition()
        if result:
            return result
        time.sleep(interval)
    raise AssertionError(f"condition not met within {timeout}s")


class RedisServer:
    """A redis-server of our own on a free loopback port, which tests may kill and restart."""

    def __init__(self, directory: Path, *, persistent: bool = False, port: int | None = None, password: str = "",
                 extra: tuple[str, ...] = ()) -> None:
        self.directory = directory
        self.persistent = persistent
        self.port = port or free_port()
        self.password = password
        self.extra = extra  # more redis-server options, as on its command line
        self.process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis://{':' + self.password + '@' if self.password else ''}127.0.0.1:{self.port}/0"

    def start(self) -> RedisServer:
        self.directory.mkdir(parents=True, exist_ok=True)
        persistence = ["--appendonly", "yes", "--appendfsync", "always"] if self.persistent else ["--appendonly", "no"]
        self.process = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--dir", str(self.directory), *persistence,
             *(["--requirepass", self.password] if self.password else []), *self.extra],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        client = self.client()
        wait_until(lambda: _pings(client), timeout=10)
        return self

    def kill(self) -> None:
        """SIGKILL the server: what it had not written to its AOF is gone."""
        if self.process and self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=10)

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.kill()

    def client(self) -> redis.Redis:
        return redis.Redis(host="127.0.0.1", port=self.port, socket_timeout=5, password=self.password or None)


def _pings(client: redis.Redis) -> bool:
    try:
        return client.ping()
    except redis.exceptions.RedisError:
        return False


SETTING_NAMES = (
    "REDIS_URL", "QUEUE_NAME", "MAX_ATTEMPTS", "LOG_LEVEL", "LOG_FORMAT", "DELIVERY", "PREFETCH",
    "WORKER_TIMEOUT", "RETRY_BACKOFF", "RETRY_BACKOFF_MAX", "DEDUP_TTL", "GRACE", "JOB_TIMEOUT",
)


def script_env(redis_url: str, queue: str, **overrides: Any) -> dict[str, str]:
    """An environment that sets every setting, so a developer's .env cannot leak into a test."""
    env = {k: v for k, v in os.environ.items() if k not in SETTING_NAMES}
    env.update(
        REDIS_URL=redis_url, QUEUE_NAME=queue, MAX_ATTEMPTS="3", LOG_LEVEL="info", LOG_FORMAT="json",
        DELIVERY="reliable", PREFETCH="100", WORKER_TIMEOUT="30", RETRY_BACKOFF="0.05",
        RETRY_BACKOFF_MAX="1", DEDUP_TTL="86400", GRACE="30", JOB_TIMEOUT="0", PYTHONUNBUFFERED="1",
    )
    env.update({k: str(v) for k, v in overrides.items()})
    return env


def parse_events(text: str) -> list[dict]:
    """Each log line as a dict; a line that is not a JSON object fails the test."""
    events = []
    for line in text.splitlines():
        if line.strip():
            event = json.loads(line)
            assert isinstance(event, dict), line
            events.append(event)
    return events


def run(script: str, *args: str, env: dict[str, str], timeout: float = 60) -> tuple[int, list[dict], str]:
    """Run app/main.py or worker/main.py to completion; returns (exit code, events, stderr)."""
    code, stderr = run_raw(script, *args, env=env, timeout=timeout)
    return code, parse_events(stderr), stderr


def run_raw(script: str, *args: str, env: dict[str, str], timeout: float = 60) -> tuple[int, str]:
    """Run a script to completion; returns (exit code, stderr as text)."""
    done = subprocess.run([PYTHON, script, *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
    return done.returncode, done.stderr


class Process:
    """A long-running script whose log events are collected as they arrive."""

    def __init__(self, script: str, *args: str, env: dict[str, str]) -> None:
        self.popen = subprocess.Popen(
            [PYTHON, script, *args], cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
        )
        self.events: list[dict] = []
        self.lines: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        for line in self.popen.stderr:
            self.lines.append(line)
            try:
                self.events.append(json.loads(line))
            except ValueError:
                pass

    def named(self, name: str) -> list[dict]:
        return [e for e in self.events if e.get("event") == name]

    def wait_for(self, name: str, timeout: float, count: int = 1) -> list[dict]:
        return wait_until(lambda: len(self.named(name)) >= count and self.named(name), timeout)

    def signal(self, signum: int = signal.SIGTERM) -> None:
        if self.popen.poll() is None:
            self.popen.send_signal(signum)

    def wait(self, timeout: float = 30) -> int:
        code = self.popen.wait(timeout=timeout)
        self._reader.join(timeout=5)
        return code

    def kill(self) -> None:
        if self.popen.poll() is None:
            self.popen.kill()
        self.wait()


def stats(url: str, queue: str) -> dict:
    """`python -m workqueue stats --json`, run as a user would."""
    done = subprocess.run(
        [PYTHON, "-m", "workqueue", "stats", "--json"], cwd=ROOT, env=script_env(url, queue),
        capture_output=True, text=True, timeout=30,
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)
