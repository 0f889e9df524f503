"""Redis refusing us is configuration, not an outage: one line, the right exit code, at once."""

import subprocess

import pytest
from support import PYTHON, ROOT, RedisServer, run, run_raw, script_env, wait_until

PASSWORD = "hunter2-secret"


@pytest.fixture(scope="module")
def locked_redis(tmp_path_factory):
    """A redis-server with a password, and an ACL user allowed to connect but to run nothing else."""
    server = RedisServer(tmp_path_factory.mktemp("redis-locked"), password=PASSWORD).start()
    server.client().acl_setuser("weak", enabled=True, passwords=["+weakpass"], keys=["*"], commands=["+@connection"])
    # Everything but ZADD, which the scripts call: refused inside a script, as Redis 7.0 says it.
    server.client().acl_setuser("nozadd", enabled=True, passwords=["+nozaddpass"], keys=["*"], commands=["+@all", "-zadd"])
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
        "acl user without a command scripts use": (f"redis://nozadd:nozaddpass@127.0.0.1:{port}/0", "lacks a permission"),
    }


PROGRAMS = {
    "worker": (["worker/main.py"], 2),
    "producer": (["app/main.py", "--count", "1"], 2),
    "cli": (["-m", "workqueue", "stats"], 1),
}


CASES = [(refusal, program) for refusal in ("wrong password", "no password", "database 99", "acl user without permission")
         for program in PROGRAMS] + [("acl user without a command scripts use", "worker")]  # only the worker runs ZADD


@pytest.mark.parametrize("refusal, program", CASES)
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
    assert "Traceback" not in done.stderr and PASSWORD not in done.stderr and "weakpass" not in done.stderr and "nozaddpass" not in done.stderr
    assert "redis_unavailable" not in done.stderr


def test_a_server_without_a_command_the_queue_needs_is_a_refusal(tmp_path, queue_name):
    """A server on which BLMOVE is disabled (as on Redis before 6.2): the worker exits 2 naming it."""
    server = RedisServer(tmp_path / "redis", extra=("--rename-command", "BLMOVE", "")).start()
    try:
        code, stderr = run_raw("worker/main.py", env=script_env(server.url, queue_name), timeout=20)
    finally:
        server.stop()
    assert code == 2 and "lacks a command" in stderr.strip().splitlines()[-1] and "Traceback" not in stderr


OUTAGES = [
    "BUSY Redis is busy running a script. You can only call SCRIPT KILL or SHUTDOWN NOSCRIPT.",
    "MISCONF Redis is configured to save RDB snapshots, but it's currently unable to persist to disk.",
    "NOREPLICAS Not enough good replicas to write.",
]


@pytest.mark.parametrize("text", OUTAGES)
def test_states_redis_leaves_by_itself_are_outages_not_refusals(text):
    """BUSY, MISCONF and NOREPLICAS replies are waited out; they are never taken for configuration."""
    from redis.exceptions import ResponseError

    from workqueue.store.outages import is_outage, refusal

    assert is_outage(ResponseError(text)) and refusal(ResponseError(text)) is None


def test_a_busy_script_on_the_server_is_waited_out(tmp_path, queue_name):
    """A script that holds Redis past busy-reply-threshold makes the producer wait (redis_unavailable), then push."""
    import threading

    from redis.exceptions import ResponseError

    server = RedisServer(tmp_path / "redis").start()
    blocker = server.client()
    try:
        blocker.config_set("busy-reply-threshold", 100)
    except ResponseError:  # Redis 6.2 knows it by its older name
        blocker.config_set("lua-time-limit", 100)
    busy = threading.Thread(target=lambda: blocker.eval("local t = redis.call('TIME')[1] + 3 while tonumber(redis.call('TIME')[1]) < t do end", 0))
    busy.start()

    def server_busy() -> bool:
        try:
            server.client().ping()
        except ResponseError as error:
            return str(error).startswith("BUSY")
        return False

    try:
        wait_until(server_busy, timeout=5, interval=0.01)
        code, events, stderr = run("app/main.py", "--count", "1", env=script_env(server.url, queue_name), timeout=30)
    finally:
        busy.join(timeout=10)
        server.stop()
    assert code == 0, stderr
    assert any("BUSY" in e.get("error", "") for e in events if e["event"] == "redis_unavailable")
    assert len([e for e in events if e["event"] == "message_pushed"]) == 1


@pytest.mark.parametrize("reply, outage", [
    ("MOVED 3999 127.0.0.1:6381", False),  # another node owns the queue's slot: configuration
    ("ASK 3999 127.0.0.1:6381", True),  # the slot is being migrated: try again
    ("TRYAGAIN Multiple keys request during rehashing of slot", True),
    ("CLUSTERDOWN The cluster is down", True),
    ("MASTERDOWN Link with MASTER is down and replica-serve-stale-data is set to 'no'.", True),
    ("LOADING Redis is loading the dataset in memory", True),
    ("ERR Error running script (call to f_1): @user_script:1: WRONGTYPE Operation against a key holding the wrong kind of value", False),
    # A missing permission inside a script, as Redis 7.0 and as Redis 7.2+ and Valkey word it.
    ("ERR The user executing the script can't run this command or subcommand script: f_1, on @user_script:9.", False),
    ("ERR ACL failure in script: User worker has no permissions to run the 'zadd' command script: f_1, on @user_script:9.", False),
    # Redis 6.2 wraps the reply of a command a script ran: these wait, as they do unwrapped.
    ("ERR Error running script (call to f_1): @user_script:9: -OOM command not allowed when used memory > 'maxmemory'.", True),
    ("ERR Error running script (call to f_1): @user_script:9: -READONLY You can't write against a read only replica.", True),
    ("ERR Error running script (call to f_1): @user_script:9: -MISCONF Redis is configured to save RDB snapshots", True),
])
def test_cluster_and_script_replies_are_classified_as_redis_py_parses_them(reply, outage):
    """Replies parsed by redis-py's own parser: MOVED and WRONGTYPE (even wrapped by a script) refuse; ASK, TRYAGAIN, CLUSTERDOWN, MASTERDOWN, LOADING, and OOM, READONLY, MISCONF wrapped by a script, wait."""
    from redis._parsers.base import BaseParser

    from workqueue.store.outages import is_outage, refusal

    error = BaseParser.parse_error(reply)
    assert is_outage(error) is outage and (refusal(error) is None) is outage
