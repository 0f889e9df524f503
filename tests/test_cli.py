"""`python -m workqueue`: stats and dead letters from the command line."""

import json
import subprocess

from support import PYTHON, ROOT, free_port, script_env, stats

from workqueue import Queue, Worker

STATS_KEYS = ["pending", "in_flight", "delayed", "dead", "workers", "produced", "completed", "retried",
              "recovered", "dead_lettered", "duplicates_skipped", "unaccounted"]


def cli(*args, env):
    return subprocess.run([PYTHON, "-m", "workqueue", *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=30)


def test_stats_json_has_exactly_the_documented_keys_and_balance(shared_redis, client, queue_name):
    """stats --json prints one object with the documented keys; the balance is 0 after a clean run."""
    queue = Queue.connect(shared_redis.url, queue_name, max_attempts=1)
    queue.push_many([{"ok": True}, {"ok": False}, {"ok": True}])

    def handler(message):
        if not message.body["ok"]:
            raise RuntimeError("no")

    Worker(queue, handler, burst=True).run()
    queue.push({"later": 1})
    result = stats(shared_redis.url, queue_name)
    assert list(result) == STATS_KEYS
    assert result == {"pending": 1, "in_flight": 0, "delayed": 0, "dead": 1, "workers": 0, "produced": 4,
                                       "completed": 2, "retried": 0, "recovered": 0, "dead_lettered": 1,
                                       "duplicates_skipped": 0, "unaccounted": 0}


def test_stats_table_and_dead_listing(shared_redis, client, queue_name):
    """The plain stats table labels the balance; `dead` prints each dead letter as one JSON line."""
    client.rpush(queue_name, "garbage")
    Worker(Queue.connect(shared_redis.url, queue_name), print, burst=True).run()
    env = script_env(shared_redis.url, queue_name)
    table = cli("stats", env=env)
    assert table.returncode == 0
    assert "unaccounted" in table.stdout and "messages unaccounted for" in table.stdout
    dead = cli("dead", "--limit", "5", env=env)
    assert dead.returncode == 0
    assert [json.loads(line)["raw"] for line in dead.stdout.splitlines()] == ["garbage"]


def test_cli_errors_are_one_line_with_the_right_exit_code(queue_name):
    """Bad config exits 2; an unreachable Redis exits 1; one line each, password masked, no traceback."""
    bad = cli("stats", env=script_env("redis://127.0.0.1:1/0", queue_name, QUEUE_NAME="a b"))
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1 and "QUEUE_NAME" in bad.stderr
    down = cli("stats", env=script_env(f"redis://:hunter2@127.0.0.1:{free_port()}/0", queue_name))
    assert down.returncode == 1 and down.stderr.count("\n") == 1
    assert "hunter2" not in down.stderr and "***" in down.stderr and "Traceback" not in down.stderr


def test_requeue_dead_gives_dead_letters_another_round(shared_redis, client, queue_name):
    """requeue-dead moves dead messages back with attempts 0, leaves malformed ones, keeps the balance."""
    queue = Queue.connect(shared_redis.url, queue_name, max_attempts=1)
    failing = {"on": True}

    def handler(message):
        if failing["on"]:
            raise RuntimeError("downstream is down")

    message_id = queue.push({"n": 1})
    client.rpush(queue_name, "garbage")
    Worker(queue, handler, burst=True).run()
    assert client.llen(f"{{{queue_name}}}:dead") == 2
    done = cli("requeue-dead", env=script_env(shared_redis.url, queue_name))
    assert done.returncode == 0 and "requeued 1" in done.stdout and "left 1 malformed" in done.stdout
    [requeued] = [json.loads(raw) for raw in client.lrange(queue_name, 0, -1)]
    assert requeued["id"] == message_id and requeued["attempts"] == 0 and "error" not in requeued
    failing["on"] = False
    Worker(queue, handler, burst=True).run()
    result = stats(shared_redis.url, queue_name)
    assert result["dead"] == 1 and result["completed"] == 1 and result["produced"] == 2
    assert result["unaccounted"] == -1  # the hand-pushed "garbage": never produced, dead-lettered


def test_queue_option_works_after_the_command_and_an_error_names_the_option_typed(shared_redis, queue_name):
    """`stats --queue NAME` reads that queue; a bad --queue or --limit is reported under the flag the user typed."""
    Queue.connect(shared_redis.url, queue_name).push({"n": 1})
    env = script_env(shared_redis.url, "some-other-queue")
    after = cli("stats", "--queue", queue_name, "--json", env=env)
    before = cli("--queue", queue_name, "stats", "--json", env=env)
    assert json.loads(after.stdout)["pending"] == 1 == json.loads(before.stdout)["pending"]
    bad = cli("stats", "--queue", "a b", env=env)
    assert bad.returncode == 2 and bad.stderr.startswith("error: --queue ") and bad.stderr.count("\n") == 1
    limit = cli("dead", "--limit", "many", env=env)
    assert limit.returncode == 2 and limit.stderr.startswith("error: --limit ")


def test_stats_into_a_closed_pipe_ends_quietly_and_version_is_printed(shared_redis, queue_name):
    """`stats | head -1` prints one line and no traceback; --version names the package version."""
    done = subprocess.run(
        f"'{PYTHON}' -m workqueue stats | head -1", shell=True, cwd=ROOT, env=script_env(shared_redis.url, queue_name),
        capture_output=True, text=True, timeout=30,
    )
    assert done.stdout.startswith(f"queue {queue_name} at ") and done.stdout.count("\n") == 1
    assert done.stderr == ""
    from importlib.metadata import version

    assert cli("--version", env=script_env(shared_redis.url, queue_name)).stdout.strip() == f"workqueue {version('workqueue')}"


def test_cli_reads_the_nearest_env_file_from_the_working_directory(shared_redis, queue_name, tmp_path):
    """The CLI, like the scripts, takes settings from the nearest .env above the working directory."""
    Queue.connect(shared_redis.url, queue_name).push({"n": 1})
    (tmp_path / ".env").write_text(f"REDIS_URL={shared_redis.url}\nQUEUE_NAME={queue_name}\n")
    (tmp_path / "sub").mkdir()
    env = {k: v for k, v in script_env(shared_redis.url, queue_name).items() if k not in ("REDIS_URL", "QUEUE_NAME")}
    env["PYTHONPATH"] = str(ROOT)
    done = subprocess.run([PYTHON, "-m", "workqueue", "stats", "--json"], cwd=tmp_path / "sub", env=env,
                          capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["pending"] == 1
