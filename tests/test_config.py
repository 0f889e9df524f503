"""Configuration: flags over environment over defaults; bad values exit 2 with one line."""

import re
import subprocess

import pytest
from support import PYTHON, Process, RedisServer, free_port, parse_events, run, run_raw, script_env, stats

from workqueue import Queue
from workqueue.settings import ConfigError, Settings, mask_url


def test_flags_override_environment_which_overrides_defaults():
    """A flag wins over its environment variable, which wins over the default."""
    settings = Settings.load({"MAX_ATTEMPTS": "5", "QUEUE_NAME": "jobs"}, max_attempts="7")
    assert settings.max_attempts == 7
    assert settings.queue_name == "jobs"
    assert settings.redis_url == "redis://localhost:6379/0"
    assert Settings.load({}).max_attempts == 3


@pytest.mark.parametrize(
    "name, value",
    [
        ("MAX_ATTEMPTS", "abc"), ("MAX_ATTEMPTS", "0"), ("REDIS_URL", "http://x"), ("REDIS_URL", "redis://:pw@host:notaport/0"),
        ("LOG_FORMAT", "xml"), ("LOG_LEVEL", "loud"), ("DELIVERY", "maybe"), ("QUEUE_NAME", "a{b}"), ("WORKER_TIMEOUT", "nan"),
        ("WORKER_TIMEOUT", "1e306"), ("DEDUP_TTL", "1e306"), ("RETRY_BACKOFF", "1e306"), ("RETRY_BACKOFF_MAX", "1e306"),
        ("GRACE", "1e306"), ("JOB_TIMEOUT", "1e306"), ("MAX_ATTEMPTS", "10000000000"),
        ("REDIS_URL", "redis://localhost:6379/0?decode_responses=True"), ("REDIS_URL", "redis://localhost:6379/0?socket_timeout=0.001"),
    ],
)
def test_bad_setting_raises_config_error_naming_it(name, value):
    """Each bad value raises ConfigError whose message starts with the setting's name."""
    with pytest.raises(ConfigError) as error:
        Settings.load({name: value})
    assert str(error.value).startswith(name + " ")


def test_password_is_masked_in_urls():
    """mask_url hides the password and keeps the rest."""
    assert mask_url("redis://:s3cret@127.0.0.1:6379/0") == "redis://:***@127.0.0.1:6379/0"
    assert mask_url("redis://user:s3cret@[::1]:6379/2") == "redis://user:***@[::1]:6379/2"
    assert mask_url("redis://127.0.0.1:6379/0") == "redis://127.0.0.1:6379/0"


@pytest.mark.parametrize("script", ["app/main.py", "worker/main.py"])
@pytest.mark.parametrize(
    "env_overrides, args, setting",
    [
        ({"MAX_ATTEMPTS": "abc"}, [], "MAX_ATTEMPTS"),
        ({"MAX_ATTEMPTS": "0"}, [], "MAX_ATTEMPTS"),
        ({"REDIS_URL": "redis://:hunter2@127.0.0.1:notaport/0"}, [], "REDIS_URL"),
        ({"LOG_FORMAT": "xml"}, [], "LOG_FORMAT"),
        ({}, ["--queue", "bad{name}"], "--queue"),
    ],
)
def test_bad_config_exits_2_with_one_line(shared_redis, queue_name, script, env_overrides, args, setting):
    """A bad setting stops either script with exit code 2 and one stderr line naming it, no traceback."""
    code, stderr = run_raw(script, *args, env=script_env(shared_redis.url, queue_name, **env_overrides), timeout=30)
    assert code == 2
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and setting in lines[0] and "Traceback" not in stderr
    assert "hunter2" not in stderr


def test_bad_demo_flag_exits_2_with_one_line(shared_redis, queue_name):
    """A --fail-rate outside 0..1 is a config error too."""
    code, stderr = run_raw("worker/main.py", "--fail-rate", "2", env=script_env(shared_redis.url, queue_name), timeout=30)
    assert code == 2 and stderr.strip().splitlines() == ["error: --fail-rate must be from 0 to 1"]


def test_password_never_reaches_logs(shared_redis, queue_name, tmp_path):
    """With a password in REDIS_URL, neither producer nor worker logs it, even when Redis refuses it."""
    server = RedisServer(tmp_path / "auth")
    server.start()
    try:
        server.client().config_set("requirepass", "hunter2-secret")
        good = f"redis://:hunter2-secret@127.0.0.1:{server.port}/0"
        env = script_env(good, queue_name)
        code, events, stderr = run("app/main.py", "--count", "3", "--interval", "0", env=env)
        assert code == 0 and len([e for e in events if e["event"] == "message_pushed"]) == 3
        code, events, stderr2 = run("worker/main.py", "--burst", env=env)
        assert code == 0 and len([e for e in events if e["event"] == "message_processed"]) == 3
        started = [e for e in events if e["event"] == "worker_started"][0]
        assert started["redis"] == f"127.0.0.1:{server.port}/0"
        assert "hunter2" not in stderr + stderr2
    finally:
        server.stop()


def test_worker_waits_for_redis_at_startup(queue_name, tmp_path):
    """A worker started before Redis warns and retries, then works once Redis answers."""
    port = free_port()
    env = script_env(f"redis://127.0.0.1:{port}/0", queue_name)
    worker = Process("worker/main.py", env=env)
    try:
        warnings = worker.wait_for("redis_unavailable", timeout=15)
        assert warnings[0]["level"] == "warning" and worker.popen.poll() is None
        server = RedisServer(tmp_path / "late", port=port).start()
        try:
            worker.wait_for("redis_available", timeout=15)
            assert run("app/main.py", "--count", "2", "--interval", "0", env=env)[0] == 0
            worker.wait_for("message_processed", timeout=15, count=2)
            worker.signal()
            assert worker.wait(timeout=30) == 0
        finally:
            server.stop()
    finally:
        worker.kill()
    assert len(worker.named("redis_unavailable")) < 20  # backoff, not a line per millisecond


def test_json_log_lines_survive_any_text_and_keep_the_documented_fields():
    """Under the shipped JSON set-up every event is one JSON line with level and an ISO UTC timestamp, even with a lone surrogate or a huge integer in it."""
    code = (
        "from workqueue.logs import configure_logging; import structlog\n"
        "configure_logging('info', 'json'); log = structlog.get_logger().bind(queue='q')\n"
        "log.info('plain', n=1); log.warning('odd', error='cannot read /tmp/\\udcff', big=2**70)\n"
        "log.debug('hidden')\n"
    )
    done = subprocess.run([PYTHON, "-c", code], capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, done.stderr
    plain, odd = parse_events(done.stderr)
    assert plain["event"] == "plain" and plain["level"] == "info" and plain["queue"] == "q" and plain["n"] == 1
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z", plain["timestamp"])
    assert odd["error"] == "cannot read /tmp/\udcff" and odd["big"] == 2**70 and odd["level"] == "warning"


BAD_QUEUE_NAMES = ["", "{q}:dead", "{q}", "{}q", "{q}a:dead", "{q}a}", "{q{r}a", "a{b}c", "a b", "tab\there", "new\nline", "bell\x07", "del\x7f", "nb\u00a0sp", "x" * 201, "é" * 101,
                   "workqueue:queues", "workqueue:mine"]


@pytest.mark.parametrize("name", BAD_QUEUE_NAMES, ids=repr)
def test_one_queue_name_rule_for_the_library_the_settings_and_the_cli(name):
    """A name with braces (but a leading hash tag followed by a name without colons), whitespace or control characters, empty, over 200 bytes or under workqueue: is refused alike by Queue (before any write), Settings and the CLI."""
    unreachable = f"redis://127.0.0.1:{free_port()}/0"  # a write would fail with a connection error, not this one
    with pytest.raises(ValueError, match="queue name"):
        Queue.connect(unreachable, name)
    if name:  # an empty variable counts as unset
        with pytest.raises(ConfigError, match=r"^QUEUE_NAME "):
            Settings.load({"QUEUE_NAME": name})
    with pytest.raises(ConfigError, match=r"^--queue "):
        Settings.load({}, queue_name=name)
    done = subprocess.run([PYTHON, "-m", "workqueue", "--queue", name, "stats"], env=script_env(unreachable, "ignored"),
                          capture_output=True, text=True, timeout=30)
    assert done.returncode == 2 and done.stderr.startswith("error: --queue ") and done.stderr.count("\n") == 1


def test_the_longest_name_the_rule_allows_works_end_to_end(shared_redis):
    """A name of exactly 200 bytes, non-ASCII included, pushes and counts like any other."""
    name = "é" * 99 + "xy"
    assert len(name.encode()) == 200
    queue = Queue.connect(shared_redis.url, name)
    queue.push({"n": 1})
    assert queue.stats()["pending"] == 1


def test_unix_socket_urls_work_for_the_producer_the_worker_and_the_cli(tmp_path, queue_name):
    """With REDIS_URL unix://..., the producer pushes, the worker drains and the CLI reports, each exiting 0."""
    socket_path = tmp_path / "redis.sock"
    server = RedisServer(tmp_path / "redis", extra=("--unixsocket", str(socket_path))).start()
    try:
        env = script_env(f"unix://{socket_path}", queue_name)
        assert run("app/main.py", "--count", "5", "--interval", "0", env=env)[0] == 0
        code, events, _ = run("worker/main.py", "--burst", env=env)
        assert code == 0 and len([e for e in events if e["event"] == "message_processed"]) == 5
        assert [e["redis"] for e in events if e["event"] == "worker_started"] == [f"unix://{socket_path}"]
        done = subprocess.run([PYTHON, "-m", "workqueue", "stats", "--json"], env=env, capture_output=True, text=True, timeout=30)
        assert done.returncode == 0 and '"completed": 5' in done.stdout
    finally:
        server.stop()


def test_the_largest_values_the_settings_allow_work_end_to_end(queue_name, env):
    """Every time and count setting at the largest value it allows, and a URL with ?db=: the producer and the worker run three messages through."""
    env = env | {"WORKER_TIMEOUT": "86400", "DEDUP_TTL": str(365 * 86400), "RETRY_BACKOFF": str(7 * 86400), "RETRY_BACKOFF_MAX": str(7 * 86400),
                 "GRACE": "86400", "JOB_TIMEOUT": str(7 * 86400), "MAX_ATTEMPTS": "1000000", "REDIS_URL": env["REDIS_URL"] + "?db=0"}
    assert run("app/main.py", "--count", "3", "--interval", "0", env=env)[0] == 0
    code, events, _ = run("worker/main.py", "--burst", env=env)
    assert code == 0 and len([e for e in events if e["event"] == "message_processed"]) == 3
    assert stats(env["REDIS_URL"], queue_name)["completed"] == 3
