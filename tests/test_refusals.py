"""Redis refusing us is configuration, not an outage: one line, the right exit code, at once."""

import subprocess

import pytest

from support import PYTHON, ROOT, RedisServer, run_raw, script_env

PASSWORD = "hunter2-secret"


@pytest.fixture(scope="module")
def locked_redis(tmp_path_factory):
    """A redis-server with a password, and an ACL user allowed to connect but to run nothing else."""
    server = RedisServer(tmp_path_factory.mktemp("redis-locked"), password=PASSWORD).start()
    server.client().acl_setuser("weak", enabled=True, passwords=["+weakpass"], keys=["*"], commands=["+@connection"])
    yield server
    server.stop()


def urls(server: RedisServer) -> dict[str, tuple[str, str]]:
    """Each refusal: its URL, and a word the one-line error must contain."""
    port = server.port
    return {
        "wrong password": (f"redis://:wrong-{PASSWORD}@127.0.0.1:{port}/0", "authentication failed"),
        "no password": (f"redis://127.0.0.1:{port}/0", "authentication failed"),
        "database 99": (f"redis://:{PASSWORD}@127.0.0.1:{port}/99", "database number"),
        "acl user without permission": (f"redis://weak:weakpass@127.0.0.1:{port}/0", "lacks a permission"),
    }


PROGRAMS = {
    "worker": (["worker/main.py"], 2),
    "producer": (["app/main.py", "--count", "1"], 2),
    "cli": (["-m", "workqueue", "stats"], 1),
}


@pytest.mark.parametrize("program", PROGRAMS)
@pytest.mark.parametrize("refusal", ["wrong password", "no password", "database 99", "acl user without permission"])
def test_refusals_end_each_program_at_once_with_one_line(locked_redis, queue_name, program, refusal):
    """Wrong or no password, an unknown database, a user without permission: exit 2 (CLI 1) within seconds, one line naming it, no password, no traceback."""
    url, words = urls(locked_redis)[refusal]
    args, expected_code = PROGRAMS[program]
    done = subprocess.run([PYTHON, *args], cwd=ROOT, env=script_env(url, queue_name), capture_output=True, text=True, timeout=20)
    lines = done.stderr.strip().splitlines()
    # The worker and producer log JSON lines before they meet Redis; the refusal is the last line.
    assert done.returncode == expected_code, done.stderr
    assert lines[-1].startswith("error: ") and words in lines[-1], done.stderr
    assert all(line.startswith("{") for line in lines[:-1]), done.stderr
    assert "Traceback" not in done.stderr and PASSWORD not in done.stderr and "weakpass" not in done.stderr
    assert "redis_unavailable" not in done.stderr
