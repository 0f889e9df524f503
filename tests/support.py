"""Test helpers: throwaway redis-server processes and the project's scripts as subprocesses."""

from __future__ import annotations

import contextlib
import functools
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import pytest
import redis

from workqueue.settings import Settings

ROOT = Path(__file__).resolve().parents[1]
PYTHON = sys.executable


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextmanager
def running(worker: Any, timeout: float = 10) -> Iterator[threading.Thread]:
    """Run `worker` (a Worker) in a thread for the with-block, then stop it and wait for its end."""
    thread = threading.Thread(target=worker.run, daemon=True)
    thread.start()
    try:
        yield thread
    finally:
        worker.shutdown.request()
        thread.join(timeout=timeout)
    assert not thread.is_alive(), "the worker did not stop"


def wait_until(condition: Callable[[], Any], timeout: float, interval: float = 0.05) -> Any:
    """Poll `condition` until it returns something truthy, or fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = condition()
        if result:
            return result
        time.sleep(interval)
    raise AssertionError(f"condition not met within {timeout}s")


@dataclass(frozen=True)
class TlsCerts:
    """PEM files for a TLS redis-server: a CA, a server certificate it signed (for 127.0.0.1 and
    localhost), a client certificate it signed, and a second CA that signed neither."""

    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path
    other_ca: Path


def make_tls_certs(directory: Path) -> TlsCerts:
    """Make a CA and the certificates it signs with the openssl command (valid for 2 days)."""
    directory.mkdir(parents=True, exist_ok=True)

    def openssl(*args: str) -> None:
        subprocess.run(["openssl", *args], cwd=directory, check=True, capture_output=True, timeout=60)

    for ca in ("ca", "other-ca"):
        openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", f"/CN=workqueue test {ca}",
                "-keyout", f"{ca}.key", "-out", f"{ca}.pem")
    (directory / "server.ext").write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    (directory / "client.ext").write_text("extendedKeyUsage=clientAuth\n")
    for name in ("server", "client"):
        openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", f"/CN={name}", "-keyout", f"{name}.key", "-out", f"{name}.csr")
        openssl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial", "-days", "2",
                "-extfile", f"{name}.ext", "-out", f"{name}.pem")
    return TlsCerts(directory / "ca.pem", directory / "server.pem", directory / "server.key", directory / "client.pem",
                    directory / "client.key", directory / "other-ca.pem")


@functools.cache
def _server_says(*args: str) -> str:
    """What the redis-server first on PATH prints (REDIS_SERVER may put another engine there)."""
    try:
        done = subprocess.run(["redis-server", *args], capture_output=True, text=True, timeout=10, stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:  # it started after all: whatever was asked, it took
        return ""
    return done.stdout + done.stderr


def server_version() -> tuple[int, int]:
    """The engine's version, as (major, minor): Redis's or Valkey's own numbering."""
    found = re.search(r"v=(\d+)\.(\d+)", _server_says("--version"))
    return (int(found[1]), int(found[2])) if found else (0, 0)


def skip_unless_engine_can(feature: str) -> None:
    """Skip the calling test, saying why, when the server binary under test cannot do `feature`:
    "acl-file" (deploy/users.acl uses ACL selectors, Redis 7.0 and Valkey 7.2 on) or "tls" (a
    binary built without TLS refuses its options, or says it has no TLS)."""
    if feature == "acl-file" and server_version() < (7, 0):
        pytest.skip(f"deploy/users.acl needs ACL selectors (Redis 7.0 or newer); this server is {server_version()}")
    said = _server_says("--port", "0", "--tls-port", "1", "--tls-cert-file", "/nonexistent") if feature == "tls" else ""
    if "Bad directive" in said or "Failed finding TLS support" in said:  # Redis's words, Valkey's
        pytest.skip("this server binary was built without TLS")


class RedisServer:
    """A redis-server of our own on a free loopback port, which tests may kill and restart.

    With `tls`, it speaks only TLS on that port (`--port 0 --tls-port`), and asks clients for a
    certificate when `tls_clients` is true. With `launcher` (a command that ends by running
    redis-server with the arguments it was given, such as deploy/redis-entrypoint.sh) and `env`,
    it is started through that; `username` and `password` are what client() logs in with."""

    def __init__(self, directory: Path, *, persistent: bool = False, port: int | None = None, password: str = "",
                 extra: tuple[str, ...] = (), tls: TlsCerts | None = None, tls_clients: bool = False,
                 launcher: tuple[str, ...] = ("redis-server",), env: dict[str, str] | None = None, username: str = "") -> None:
        self.directory = directory
        self.persistent = persistent
        self.port = port or free_port()
        self.password = password
        self.extra = extra  # more redis-server options, as on its command line
        self.tls = tls
        self.tls_clients = tls_clients
        self.launcher = launcher
        self.env = env
        self.username = username
        self.process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        scheme = "rediss" if self.tls else "redis"
        return f"{scheme}://{':' + self.password + '@' if self.password and not self.username else ''}127.0.0.1:{self.port}/0"

    def start(self) -> RedisServer:
        self.directory.mkdir(parents=True, exist_ok=True)
        persistence = ["--appendonly", "yes", "--appendfsync", "always"] if self.persistent else ["--appendonly", "no"]
        ports = ["--port", str(self.port)]
        if self.tls:
            ports = ["--port", "0", "--tls-port", str(self.port), "--tls-cert-file", str(self.tls.server_cert),
                     "--tls-key-file", str(self.tls.server_key), "--tls-ca-cert-file", str(self.tls.ca),
                     "--tls-auth-clients", "yes" if self.tls_clients else "no"]
        # A password for the user `default` only when no launcher brings users of its own.
        requirepass = ["--requirepass", self.password] if self.password and not self.username else []
        self.process = subprocess.Popen(
            [*self.launcher, *ports, "--bind", "127.0.0.1", "--save", "", "--dir", str(self.directory), *persistence,
             *requirepass, *self.extra],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            env=self.env,
        )
        client = self.client()
        wait_until(lambda: self.process is not None and self.process.poll() is None and _pings(client), timeout=10)
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

    def client(self, username: str | None = None, password: str | None = None) -> redis.Redis:
        """A client logged in as `username` with `password` (default: the server's own login)."""
        if username is None:
            username, password = self.username, self.password
        tls: dict[str, Any] = {}
        if self.tls:
            tls = {"ssl": True, "ssl_ca_certs": str(self.tls.ca), "ssl_certfile": str(self.tls.client_cert),
                   "ssl_keyfile": str(self.tls.client_key)}
        return redis.Redis(host="127.0.0.1", port=self.port, socket_timeout=5, username=username or None,
                           password=password or None, **tls)


def _pings(client: redis.Redis) -> bool:
    try:
        return client.ping()
    except redis.exceptions.RedisError:
        return False


SETTING_NAMES = tuple(field.name.upper() for field in fields(Settings))
# What the tests run with where it differs from the default (quick retries, a smaller batch).
TEST_SETTINGS = {"RETRY_BACKOFF": "0.05", "RETRY_BACKOFF_MAX": "1", "PREFETCH": "100", "LOG_FORMAT": "json"}


def script_env(redis_url: str, queue: str, **overrides: Any) -> dict[str, str]:
    """An environment that sets every setting, so a developer's .env cannot leak into a test:
    the defaults, TEST_SETTINGS, then `overrides` (a setting left empty counts as unset)."""
    env = {k: v for k, v in os.environ.items() if k not in SETTING_NAMES}
    defaults = Settings(log_format="json")
    env.update({name.upper(): str(getattr(defaults, name)) for name in (field.name for field in fields(Settings))})
    env.update(TEST_SETTINGS, REDIS_URL=redis_url, QUEUE_NAME=queue, PYTHONUNBUFFERED="1")
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


def process_groups(pid: int) -> list[int]:
    """The process group of a dict worker command (`pid`) and those of its queue workers, each in
    a session of its own (their children, the handlers' processes, are in theirs)."""
    workers = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as stat:
                    parent = int(stat.read().rsplit(")", 1)[1].split()[1])
            except (OSError, ValueError, IndexError):
                continue
            if parent == pid:
                workers.append(int(entry))
    return [pid, *workers]


def signal_all(pid: int, signum: int) -> None:
    for group in process_groups(pid):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(group, signum)
