"""`workqueue` / `python -m workqueue`: every command, run as a user would, against our own redis-server."""

import json
import subprocess
import time
from importlib.metadata import entry_points
from pathlib import Path

import pytest
from support import PYTHON, ROOT, free_port, script_env, stats

from workqueue import Queue, Worker, message

STATS_KEYS = ["pending", "in_flight", "delayed", "dead", "workers", "paused", "oldest_pending_age_seconds", "produced",
              "requeued", "completed", "retried", "recovered", "dead_lettered", "duplicates_skipped", "purged", "unaccounted",
              "memory_used_bytes", "memory_limit_bytes", "maxmemory_policy"]


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
    age = result.pop("oldest_pending_age_seconds")
    assert 0 <= age < 30
    assert result.pop("memory_used_bytes") > 0 and result.pop("memory_limit_bytes") == 0
    assert result.pop("maxmemory_policy") == "noeviction"
    assert result == {"pending": 1, "in_flight": 0, "delayed": 0, "dead": 1, "workers": 0, "paused": False, "produced": 4,
                      "requeued": 0, "completed": 2, "retried": 0, "recovered": 0, "dead_lettered": 1,
                      "duplicates_skipped": 0, "purged": 0, "unaccounted": 0}


def test_stats_table_and_dead_listing(shared_redis, client, queue_name, env):
    """The plain stats table labels the balance and the pause flag; `dead list` prints one line per dead letter."""
    client.rpush(queue_name, "garbage")
    before = time.time()
    Worker(Queue.connect(shared_redis.url, queue_name), print, burst=True).run()
    table = cli("stats", env=env)
    assert table.returncode == 0
    assert "unaccounted" in table.stdout and "messages unaccounted for" in table.stdout
    assert any(line.split()[:2] == ["paused", "no"] for line in table.stdout.splitlines())
    dead = cli("dead", "list", "--count", "5", env=env)
    assert dead.returncode == 0
    [line] = dead.stdout.splitlines()
    assert "(malformed)" in line and line.endswith("garbage")
    listed = json.loads(cli("dead", "list", "--json", env=env).stdout)
    assert listed == [{"id": None, "attempts": None, "error": listed[0]["error"], "dead_lettered_at": listed[0]["dead_lettered_at"],
                       "body": None, "raw": "garbage"}]
    assert before <= listed[0]["dead_lettered_at"] <= time.time()  # the worker stamps when it dead-lettered it
    assert listed[0]["error"].startswith("malformed message: ")


COMMANDS = [("stats",), ("peek",), ("dead", "list"), ("dead", "requeue", "--id", "x"), ("dead", "purge", "--malformed"),
            ("queues",), ("pause",), ("resume",), ("top",)]


@pytest.mark.parametrize("command", COMMANDS, ids=" ".join)
def test_cli_errors_are_one_line_with_the_right_exit_code(queue_name, command):
    """Bad config exits 2; an unreachable Redis exits 1; one line each, password masked, no traceback."""
    bad = cli(*command, env=script_env("redis://127.0.0.1:1/0", queue_name, QUEUE_NAME="a b"))
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1 and "QUEUE_NAME" in bad.stderr
    down = cli(*command, env=script_env(f"redis://:hunter2@127.0.0.1:{free_port()}/0", queue_name))
    assert down.returncode == 1 and down.stderr.count("\n") == 1 and down.stdout == ""
    assert "hunter2" not in down.stderr and "***" in down.stderr and "Traceback" not in down.stderr


def test_every_command_has_help_with_an_example_and_the_console_script_is_declared(queue_name):
    """--help on each command says what it does and shows an example; pyproject declares the `workqueue` script."""
    env = script_env("redis://127.0.0.1:1/0", queue_name)
    for command in ["", *{c[0] if c[0] != "dead" else " ".join(c[:2]) for c in COMMANDS}, "dead"]:
        shown = cli(*command.split(), "--help", env=env)
        assert shown.returncode == 0 and "example" in shown.stdout and "python -m workqueue " in shown.stdout, command
    [script] = [e for e in entry_points(group="console_scripts") if e.name == "workqueue"]
    assert script.value == "workqueue.cli:main"
    installed = Path(PYTHON).parent / "workqueue"
    if installed.exists():  # the venv was installed after the script was declared
        done = subprocess.run([str(installed), "--help"], env=env, capture_output=True, text=True, timeout=30)
        assert done.returncode == 0 and done.stdout.startswith("usage: workqueue ")


def test_dead_requeue_all_gives_dead_letters_another_round(shared_redis, client, queue_name, env):
    """dead requeue --all --yes moves dead messages back with attempts 0, leaves malformed ones, counts requeued, keeps the balance."""
    queue = Queue.connect(shared_redis.url, queue_name, max_attempts=1)
    failing = {"on": True}

    def handler(message):
        if failing["on"]:
            raise RuntimeError("downstream is down")

    message_id = queue.push({"n": 1})
    queue.push_encoded([b"garbage"])  # counted as produced, so the balance is exact
    Worker(queue, handler, burst=True).run()
    assert client.llen(f"{{{queue_name}}}:dead") == 2
    unconfirmed = cli("dead", "requeue", "--all", env=env)
    assert unconfirmed.returncode == 2 and unconfirmed.stderr.count("\n") == 1 and "--yes" in unconfirmed.stderr
    assert client.llen(f"{{{queue_name}}}:dead") == 2
    done = cli("dead", "requeue", "--all", "--yes", env=env)
    assert done.returncode == 0 and "requeued 1 " in done.stdout and "left 1 malformed" in done.stdout
    [requeued] = [json.loads(raw) for raw in client.lrange(queue_name, 0, -1)]
    assert requeued["id"] == message_id and requeued["attempts"] == 0 and "error" not in requeued
    assert stats(shared_redis.url, queue_name)["unaccounted"] == 0
    failing["on"] = False
    Worker(queue, handler, burst=True).run()
    result = stats(shared_redis.url, queue_name)
    assert result["dead"] == 1 and result["completed"] == 1 and result["produced"] == 2 and result["requeued"] == 1
    assert result["dead_lettered"] == 2 and result["unaccounted"] == 0


def test_dead_requeue_and_purge_by_id_report_what_they_could_not_do(shared_redis, client, queue_name, env):
    """Requeue by id moves only those ids, with attempts 0, and a worker then processes them; an unknown or malformed id is one error line and exit 1; purge by id, --malformed and --all --yes keep the balance."""
    queue = Queue.connect(shared_redis.url, queue_name, max_attempts=1)
    ids = queue.push_many([{"n": i} for i in range(4)])
    queue.push_encoded([b'{"id":"bad","attempts":-1}'])
    Worker(queue, lambda m: 1 / 0, burst=True).run()
    done = cli("dead", "requeue", "--id", ids[0], ids[2], env=env)
    assert done.returncode == 0 and "requeued 2 " in done.stdout
    requeued = [json.loads(raw) for raw in client.lrange(queue_name, 0, -1)]
    assert sorted(m["id"] for m in requeued) == sorted([ids[0], ids[2]])
    assert all(m["attempts"] == 0 and "error" not in m and "dead_lettered_at" not in m for m in requeued)
    processed: list[str] = []
    Worker(queue, lambda m: processed.append(m.id), burst=True).run()  # a worker then processes exactly those
    assert sorted(processed) == sorted([ids[0], ids[2]])
    refused = cli("dead", "requeue", "--id", "bad", "nope", env=env)
    assert refused.returncode == 1 and "requeued 0 " in refused.stdout
    assert sorted(refused.stderr.splitlines()) == ["error: no dead letter with id nope", "error: the dead letter bad is malformed and cannot be requeued"]
    purged = cli("dead", "purge", "--id", ids[1], env=env)
    assert purged.returncode == 0 and "purged 1 " in purged.stdout
    assert cli("dead", "purge", "--malformed", env=env).stdout.startswith("purged 1 ")
    result = stats(shared_redis.url, queue_name)
    assert (result["dead"], result["purged"], result["requeued"], result["dead_lettered"], result["completed"], result["unaccounted"]) == (1, 2, 2, 5, 2, 0)
    assert cli("dead", "purge", "--all", env=env).returncode == 2
    assert cli("dead", "purge", "--all", "--yes", env=env).stdout.startswith("purged 1 ")
    result = stats(shared_redis.url, queue_name)
    assert (result["dead"], result["purged"], result["unaccounted"]) == (0, 3, 0)


def test_queue_option_works_after_the_command_and_an_error_names_the_option_typed(shared_redis, queue_name):
    """`stats --queue NAME` reads that queue; a bad --queue or --limit is reported under the flag the user typed."""
    Queue.connect(shared_redis.url, queue_name).push({"n": 1})
    env = script_env(shared_redis.url, "some-other-queue")
    after = cli("stats", "--queue", queue_name, "--json", env=env)
    before = cli("--queue", queue_name, "stats", "--json", env=env)
    assert json.loads(after.stdout)["pending"] == 1 == json.loads(before.stdout)["pending"]
    bad = cli("stats", "--queue", "a b", env=env)
    assert bad.returncode == 2 and bad.stderr.startswith("error: --queue ") and bad.stderr.count("\n") == 1
    limit = cli("dead", "list", "--count", "many", env=env)
    assert limit.returncode == 2 and limit.stderr.startswith("error: --count ")
    client = Queue.connect(shared_redis.url, queue_name).client
    client.rpush(f"{{{queue_name}}}:dead", b'{"error":"x","raw":"y"}')
    for args in (("--queue", queue_name, "dead", "list", "--json"), ("dead", "--queue", queue_name, "list", "--json"),
                 ("dead", "list", "--queue", queue_name, "--json")):
        assert [entry["raw"] for entry in json.loads(cli(*args, env=env).stdout)] == ["y"], args


def test_stats_into_a_closed_pipe_ends_quietly_and_version_is_printed(shared_redis, queue_name):
    """`stats | head -1` prints one line and no traceback; --version names the package version."""
    done = subprocess.run(
        f"'{PYTHON}' -m workqueue stats | head -1", shell=True, cwd=ROOT, env=script_env(shared_redis.url, queue_name),
        capture_output=True, text=True, timeout=30,
    )
    assert done.stdout.startswith(f"queue {queue_name} at ") and done.stdout.count("\n") == 1
    assert done.stderr == ""
    from importlib.metadata import version

    assert cli("--version", env=script_env(shared_redis.url, queue_name)).stdout.strip() == f"workqueue {version('workqueue-redis')}"


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


def test_peek_shows_the_next_messages_head_first_and_takes_nothing(client, queue_name, queue, env):
    """peek --count N lists the first N pending messages in order, garbage as its error and raw text, and leaves the list as it was."""
    ids = queue.push_many([{"n": i} for i in range(3)])
    client.rpush(queue_name, "not json")
    before = client.lrange(queue_name, 0, -1)
    shown = json.loads(cli("peek", "--count", "2", "--json", env=env).stdout)
    assert [(m["id"], m["attempts"], m["body"]) for m in shown] == [(ids[0], 0, {"n": 0}), (ids[1], 0, {"n": 1})]
    everything = json.loads(cli("peek", "--count", "10", "--json", env=env).stdout)
    assert everything[-1]["raw"] == "not json" and everything[-1]["error"].startswith("malformed message: ")
    lines = cli("peek", env=env).stdout.splitlines()
    assert [line.split()[0] for line in lines[:3]] == ids and lines[3].startswith("(malformed)")
    assert client.lrange(queue_name, 0, -1) == before


def test_dead_list_is_newest_first_with_the_time_each_was_dead_lettered(shared_redis, client, queue_name):
    """dead list --json shows the newest dead letter first, its dead_lettered_at when stored (null when not), and raw text only for unparseable ones."""
    dead = f"{{{queue_name}}}:dead"
    old = message.rewrite(*(lambda raw: (raw, json.loads(raw)))(message.new({"n": 1}, "old")[1]), {"attempts": 3, "error": "boom"})
    new = message.rewrite(*(lambda raw: (raw, json.loads(raw)))(message.new({"n": 2}, "new")[1]),
                          {"attempts": 3, "error": "bang", "dead_lettered_at": 1764400000.5})
    client.rpush(dead, old, b"\xff\xfe", new)
    listed = json.loads(cli("dead", "list", "--json", env=script_env(shared_redis.url, queue_name)).stdout)
    assert [(e["id"], e["error"], e["dead_lettered_at"], e["raw"]) for e in listed] == [
        ("new", "bang", 1764400000.5, None), (None, None, None, None), ("old", "boom", None, None)]
    assert listed[1]["raw_base64"] == "//4=" and listed[0]["body"] == {"n": 2} and listed[0]["attempts"] == 3
    assert [e["id"] for e in json.loads(cli("dead", "list", "--count", "1", "--json", env=script_env(shared_redis.url, queue_name)).stdout)] == ["new"]


def test_stats_gives_the_age_of_the_oldest_pending_message(shared_redis, client, queue_name):
    """oldest_pending_age_seconds is 0 for an empty queue, the head's age by its created_at, and null when the head has none."""
    queue = Queue.connect(shared_redis.url, queue_name)
    assert queue.stats()["oldest_pending_age_seconds"] == 0
    raw = message.encode({"id": "a", "attempts": 0, "created_at": time.time() - 100, "body": None})
    queue.push_encoded([raw])
    queue.push({"n": 1})
    assert 99 < queue.stats()["oldest_pending_age_seconds"] < 130
    client.lpush(queue_name, '{"body": {"created_at": 5}, "id": "hand-written"}')
    assert queue.stats()["oldest_pending_age_seconds"] is None
    client.lpush(queue_name, '{"created_at": %f, "id": "hand-written-2"}' % (time.time() - 50))
    assert 49 < queue.stats()["oldest_pending_age_seconds"] < 80


def test_pause_and_resume_set_the_flag_stats_shows(shared_redis, client, queue_name, env):
    """pause creates the queue's paused key and stats says so; pausing twice says it was paused already; resume deletes it."""
    queue = Queue.connect(shared_redis.url, queue_name)
    assert not queue.is_paused() and stats(shared_redis.url, queue_name)["paused"] is False
    assert cli("pause", env=env).stdout == f"queue {queue_name} paused\n"
    assert client.exists(f"{{{queue_name}}}:paused") and queue.is_paused() and stats(shared_redis.url, queue_name)["paused"] is True
    assert abs(float(client.get(f"{{{queue_name}}}:paused")) - time.time()) < 30
    assert "paused already" in cli("pause", env=env).stdout and queue.pause() is False
    assert cli("resume", env=env).stdout == f"queue {queue_name} resumed\n"
    assert not client.exists(f"{{{queue_name}}}:paused") and stats(shared_redis.url, queue_name)["paused"] is False
    assert "not paused" in cli("resume", env=env).stdout and queue.resume() is False


def test_queues_lists_every_queue_from_the_registry_without_keys_or_scan(tmp_path):
    """queues lists each queue that pushed or registered, with its counts, on a server where KEYS and SCAN do not exist."""
    from support import RedisServer

    server = RedisServer(tmp_path / "redis", extra=("--rename-command", "KEYS", "", "--rename-command", "SCAN", "")).start()
    try:
        Queue.connect(server.url, "alpha").push_many([{"n": 1}, {"n": 2}])
        worker_side = Queue.connect(server.url, "beta")
        worker_side.register()
        worker_side.register()  # idempotent
        consumer = worker_side.consumer("w1")
        worker_side.push({"n": 3})
        consumer.fetch(1)
        Queue.connect(server.url, "beta").pause()
        env = script_env(server.url, "ignored")
        listed = json.loads(cli("queues", "--json", env=env).stdout)
        assert listed == [
            {"queue": "alpha", "pending": 2, "in_flight": 0, "dead": 0, "workers": 0, "paused": False},
            {"queue": "beta", "pending": 0, "in_flight": 1, "dead": 0, "workers": 1, "paused": True},
        ]
        table = cli("queues", env=env).stdout.splitlines()
        assert table[0].split() == ["QUEUE", "PENDING", "IN_FLIGHT", "DEAD", "WORKERS", "PAUSED"]
        assert table[1].split() == ["alpha", "2", "0", "0", "0", "no"] and table[2].split() == ["beta", "0", "1", "0", "1", "yes"]
        assert server.client().smembers("workqueue:queues") == {b"alpha", b"beta"}
        server.client().sadd("workqueue:queues", "old name")  # registered before the queue-name rule refused spaces
        listed = json.loads(cli("queues", "--json", env=env).stdout)
        assert listed[-1] == {"queue": "old name", "pending": None, "in_flight": None, "dead": None, "workers": None, "paused": None}
        assert cli("queues", env=env).stdout.splitlines()[-1].split() == ["old", "name", "-", "-", "-", "-", "-"]
    finally:
        server.stop()


def test_top_prints_one_snapshot_when_stdout_is_not_a_terminal(shared_redis, queue_name, queue):
    """top into a pipe prints one frame (depth, dead, paused, each worker's in-flight count) and exits 0."""
    queue.push_many([{"n": i} for i in range(5)])
    queue.consumer("worker-one").fetch(2)
    queue.pause()
    done = cli("top", env=script_env(shared_redis.url, queue_name))
    assert done.returncode == 0 and done.stderr == ""
    lines = done.stdout.splitlines()
    assert lines[0].startswith(f"workqueue top: queue {queue_name} at ") and "\x1b" not in done.stdout
    figures = {line.split()[0]: line.split()[1] for line in lines[2:6]}
    assert figures == {"pending": "3", "delayed": "0", "dead": "0", "processed/s": "-"}
    assert lines[3].split()[-1] == "yes"  # paused
    assert lines[-1].split() == ["worker-one", "2", "alive"]


def test_top_on_a_terminal_redraws_and_quits_on_q(shared_redis, queue_name):
    """top on a pseudo-terminal draws its frame on the alternate screen, quits on `q` with exit 0, and restores the screen."""
    import os
    import pty

    Queue.connect(shared_redis.url, queue_name).push({"n": 1})
    pid, fd = pty.fork()
    if pid == 0:  # the child: the CLI with the pty as its terminal
        os.chdir(ROOT)
        os.execve(PYTHON, [PYTHON, "-m", "workqueue", "top"], script_env(shared_redis.url, queue_name))
    seen = b""
    try:
        while b"(q quits)" not in seen or b"pending" not in seen:
            seen += os.read(fd, 4096)
        os.write(fd, b"q")
        while True:
            try:
                chunk = os.read(fd, 4096)
            except OSError:  # the child closed the terminal: it has exited
                break
            if not chunk:
                break
            seen += chunk
        _, status = os.waitpid(pid, 0)
    finally:
        os.close(fd)
    assert os.waitstatus_to_exitcode(status) == 0
    assert b"\x1b[?1049h" in seen and seen.rstrip().endswith(b"\x1b[?1049l") and b"Traceback" not in seen


HOSTILE = "\x1b]0;pwned\x07\x1b[2J\x9b31m\u202e"


def test_text_from_redis_reaches_the_terminal_escaped(shared_redis, client, queue_name):
    """Ids, errors, bodies, raw elements, queue names and worker ids holding escape sequences, C1 controls or a direction override are printed escaped by peek, dead list, queues, top and the dead letter errors."""
    client.rpush(queue_name, json.dumps({"id": HOSTILE, "attempts": 0, "body": HOSTILE}), HOSTILE)
    client.rpush(f"{{{queue_name}}}:dead", json.dumps({"id": HOSTILE + "d", "attempts": 3, "error": HOSTILE, "body": HOSTILE}), HOSTILE)
    client.rpush(f"{{{queue_name}}}:dead", json.dumps({"error": "malformed message: x", "raw": json.dumps({"id": HOSTILE + "m"})}))
    client.sadd("workqueue:queues", HOSTILE)
    client.zadd(f"{{{queue_name}}}:workers", {HOSTILE: 0})
    env = script_env(shared_redis.url, queue_name)
    runs = [cli("peek", env=env), cli("dead", "list", env=env), cli("queues", env=env), cli("top", env=env),
            cli("dead", "requeue", "--id", HOSTILE + "m", HOSTILE + "x", env=env)]
    for done in runs:
        shown = done.stdout + done.stderr
        assert all(c.isprintable() or c == "\n" for c in shown), (done.args, shown)
    assert "\\x1b]0;pwned\\x07" in runs[0].stdout and "\\x1b]0;pwned\\x07" in runs[1].stdout
    assert "\\x1b]0;pwned" in runs[2].stdout and "\\x1b]0;pwned" in runs[3].stdout and "\\x1b]0;pwned" in runs[4].stderr
