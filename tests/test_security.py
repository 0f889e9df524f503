"""Security: least-privilege ACL users, TLS with verified certificates, passwords kept apart and out of logs."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import uuid
from pathlib import Path
from urllib.parse import quote

import pytest
import redis
from redis.exceptions import AuthenticationError, NoPermissionError, ResponseError
from support import PYTHON, ROOT, Process, RedisServer, TlsCerts, make_tls_certs, run, run_raw, script_env, skip_unless_engine_can, wait_until

from workqueue import Queue
from workqueue.settings import ConfigError, Settings, weak_password_warning

ENTRYPOINT = ROOT / "deploy/redis-entrypoint.sh"
# One password a user, the producer's with every character a URL would trip on.
PASSWORDS = {"admin": "adm1n-pw-4c2f", "producer": "pr@d:uc/er#1 ok", "worker": "w0rker-pw-9e1d", "operator": "0perator-pw-77aa"}
SECRETS = [*PASSWORDS.values(), quote(PASSWORDS["producer"], safe="")]


def wired(settings: Settings) -> bool:
    """Whether Queue.from_settings hands REDIS_PASSWORD and the TLS files to transport.connect (no connection is made)."""
    kwargs = Queue.from_settings(settings).client.connection_pool.connection_kwargs
    tls = settings.tls
    return kwargs.get("password") == settings.password and (tls is None or kwargs.get("ssl_ca_certs") == tls.ca_file)


NOT_WIRED = "Queue.from_settings does not pass REDIS_PASSWORD and the TLS files to transport.connect yet (queue.py)"


def cli(url: str, queue: str, *args: str) -> subprocess.CompletedProcess[str]:
    """python -m workqueue, run as an operator would."""
    return subprocess.run([PYTHON, "-m", "workqueue", *args], cwd=ROOT, env=script_env(url, queue), capture_output=True, text=True, timeout=30)


def user_url(server: RedisServer, user: str) -> str:
    return f"redis://{user}:{quote(PASSWORDS[user], safe='')}@127.0.0.1:{server.port}/0"


def start_with_acl(directory: Path, queue: str, **env: str) -> RedisServer:
    """A redis-server started the way Compose starts it: deploy/redis-entrypoint.sh renders deploy/users.acl for `queue`."""
    environment = {**os.environ, "QUEUE_NAME": queue, "WORKQUEUE_ACL_TEMPLATE": str(ROOT / "deploy/users.acl"),
                   "WORKQUEUE_ACL_FILE": str(directory / "users.acl"),
                   **{f"REDIS_{user.upper()}_PASSWORD": password for user, password in PASSWORDS.items()}, **env}
    return RedisServer(directory / "redis", launcher=("sh", str(ENTRYPOINT)), env=environment, username="admin",
                       password=PASSWORDS["admin"]).start()


@pytest.fixture
def acl_redis(tmp_path, queue_name):
    skip_unless_engine_can("acl-file")
    server = start_with_acl(tmp_path, queue_name)
    yield server
    server.stop()


def test_the_entrypoint_writes_only_password_hashes_and_keeps_default_disabled(acl_redis, tmp_path):
    """The rendered ACL file holds SHA-256 hashes, never a password; `default` cannot log in, with or without one."""
    rendered = (tmp_path / "users.acl").read_text()
    assert not any(secret in rendered for secret in SECRETS)
    assert {line.split()[1] for line in rendered.splitlines()} == {"default", "admin", "producer", "worker", "operator"}
    assert oct((tmp_path / "users.acl").stat().st_mode & 0o777) == "0o600"
    with pytest.raises(AuthenticationError):
        acl_redis.client(username="", password="").ping()  # no login: NOAUTH
    with pytest.raises(AuthenticationError):
        acl_redis.client(username="default", password=PASSWORDS["admin"]).ping()
    assert acl_redis.client(username="worker", password=PASSWORDS["worker"]).ping()


def test_the_entrypoint_refuses_a_user_without_a_password_and_an_odd_queue_name(tmp_path):
    """A missing REDIS_WORKER_PASSWORD, or a queue name that an ACL pattern would misread, stops it with exit 2 and one line."""
    base = {**os.environ, "WORKQUEUE_ACL_TEMPLATE": str(ROOT / "deploy/users.acl"), "WORKQUEUE_ACL_FILE": str(tmp_path / "users.acl"),
            **{f"REDIS_{user.upper()}_PASSWORD": password for user, password in PASSWORDS.items()}}
    cases = {"REDIS_WORKER_PASSWORD": {"REDIS_WORKER_PASSWORD": ""}, "QUEUE_NAME": {"QUEUE_NAME": "jobs*"}}
    for word, change in cases.items():
        done = subprocess.run(["sh", str(ENTRYPOINT), "--port", "0"], env={**base, **change}, capture_output=True, text=True, timeout=20)
        assert done.returncode == 2 and done.stderr.startswith("error: ") and word in done.stderr, done.stderr
        assert len(done.stderr.strip().splitlines()) == 1


@pytest.mark.slow
def test_producer_workers_and_cli_run_under_their_own_acl_users(acl_redis, queue_name):
    """Producer, two workers (with retries, dead letters and the recovery of a dead worker) and the CLI do all their work as their ACL users."""
    producer_env = script_env(user_url(acl_redis, "producer"), queue_name)
    code, events, stderr = run("app/main.py", "--count", "40", "--interval", "0", "--batch", "10", env=producer_env)
    assert code == 0, stderr
    assert len([e for e in events if e["event"] == "message_pushed"]) == 40
    # A worker that died holding a message (its registration long expired), for the live workers to recover.
    admin = acl_redis.client()
    assert admin.lmove(queue_name, f"{{{queue_name}}}:in_flight:ghost", "LEFT", "RIGHT") is not None
    admin.zadd(f"{{{queue_name}}}:workers", {"ghost": 1})
    worker_env = script_env(user_url(acl_redis, "worker"), queue_name, MAX_ATTEMPTS="2")
    workers = [Process("worker/main.py", "--fail-rate", "0.5", env=worker_env) for _ in range(2)]
    try:
        settled = ("message_processed", "message_dead_lettered", "message_duplicate_skipped")
        wait_until(lambda: sum(len(w.named(name)) for w in workers for name in settled) >= 40, timeout=60)
        for worker in workers:  # one still starting would die of SIGTERM before its handler is in place
            worker.wait_for("worker_started", timeout=30)
            worker.signal()
        codes = [worker.wait(timeout=60) for worker in workers]
    finally:
        for worker in workers:
            worker.kill()
    output = "".join(line for worker in workers for line in worker.lines)
    assert codes == [0, 0], output
    assert "lacks a permission" not in output and "NOPERM" not in output
    assert any(w.named("message_recovered") for w in workers) and any(w.named("message_retried") for w in workers)
    assert any(w.named("message_dead_lettered") for w in workers)
    operator = user_url(acl_redis, "operator")
    done = cli(operator, queue_name, "stats", "--json")
    assert done.returncode == 0, done.stderr
    stats = json.loads(done.stdout)
    assert stats["unaccounted"] == 0 and stats["completed"] + stats["dead_lettered"] == 40 and stats["dead"] >= 1
    # Every operator command works as the operator user.
    for args in (["peek"], ["queues"], ["dead", "list"], ["pause"], ["resume"], ["dead", "requeue", "--all", "--yes"],
                 ["dead", "purge", "--all", "--yes"], ["top"]):
        done = cli(operator, queue_name, *args)
        assert done.returncode == 0 and "permission" not in done.stderr, (args, done.stderr)
    assert json.loads(cli(operator, queue_name, "stats", "--json").stdout)["dead"] == 0
    assert not any(secret in output + done.stderr for secret in SECRETS)


@pytest.mark.parametrize("user", ["producer", "worker", "operator"])
def test_acl_users_are_refused_flushall_config_and_other_queues(acl_redis, queue_name, user):
    """As producer, worker or operator: FLUSHALL, CONFIG, KEYS, EVAL, a script calling FLUSHALL and any other queue's keys are refused."""
    client = acl_redis.client(username=user, password=PASSWORDS[user])
    other = f"other-{uuid.uuid4().hex[:8]}"
    refused = [
        lambda: client.flushall(),
        lambda: client.config_get("requirepass"),
        lambda: client.config_set("appendonly", "no"),
        lambda: client.keys("*"),
        lambda: client.eval("return 1", 0),
        lambda: client.rpush(other, "x"),
        lambda: client.lrange(f"{{{other}}}:dead", 0, -1),
        lambda: client.execute_command("ACL", "LIST"),
        lambda: client.execute_command("SHUTDOWN", "NOSAVE"),
    ]
    for call in refused:
        with pytest.raises(NoPermissionError):
            call()
    # A script runs with its caller's rights: one that calls FLUSHALL on the queue's own key is refused inside.
    sha = client.script_load("return redis.call('FLUSHALL')")
    with pytest.raises(ResponseError, match=r"permission|can.t run"):
        client.evalsha(sha, 1, queue_name)
    assert acl_redis.client().dbsize() >= 0 and acl_redis.process is not None and acl_redis.process.poll() is None


def test_each_user_is_refused_what_belongs_to_the_others(acl_redis, queue_name):
    """The producer cannot read dead letters, the worker cannot pause the queue, neither can list the registry or touch it but by SADD."""
    producer = acl_redis.client(username="producer", password=PASSWORDS["producer"])
    worker = acl_redis.client(username="worker", password=PASSWORDS["worker"])
    operator = acl_redis.client(username="operator", password=PASSWORDS["operator"])
    for call in (lambda: producer.lrange(f"{{{queue_name}}}:dead", 0, -1), lambda: producer.lpop(queue_name),
                 lambda: worker.set(f"{{{queue_name}}}:paused", "1"), lambda: worker.smembers("workqueue:queues"),
                 lambda: producer.delete("workqueue:queues"), lambda: worker.rpush("workqueue:queues", "x"),
                 lambda: operator.sadd("workqueue:queues", "x")):
        with pytest.raises(NoPermissionError):
            call()
    assert producer.sadd("workqueue:queues", queue_name) in (0, 1) and operator.smembers("workqueue:queues") == {queue_name.encode()}


def test_programs_pointed_at_another_queue_are_refused_with_one_line(acl_redis, queue_name):
    """The producer and the worker exit 2, the CLI 1, each with one line saying the user lacks a permission."""
    other = f"other-{uuid.uuid4().hex[:8]}"
    for script, user, args, expected in (("app/main.py", "producer", ["--count", "1"], 2), ("worker/main.py", "worker", ["--burst"], 2)):
        code, stderr = run_raw(script, *args, env=script_env(user_url(acl_redis, user), other), timeout=30)
        assert code == expected and "lacks a permission" in stderr.strip().splitlines()[-1], stderr
        assert "Traceback" not in stderr and not any(secret in stderr for secret in SECRETS)
    done = cli(user_url(acl_redis, "operator"), other, "stats")
    assert done.returncode == 1 and "lacks a permission" in done.stderr and "Traceback" not in done.stderr


# -- TLS ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def certs(tmp_path_factory) -> TlsCerts:
    if shutil.which("openssl") is None:
        pytest.skip("the openssl command makes the test certificates (Debian/Ubuntu: apt-get install openssl)")
    return make_tls_certs(tmp_path_factory.mktemp("tls"))


@pytest.fixture
def tls_redis(tmp_path, certs):
    """A redis-server that speaks only TLS, and asks clients for a certificate."""
    skip_unless_engine_can("tls")
    server = RedisServer(tmp_path / "redis", tls=certs, tls_clients=True).start()
    yield server
    server.stop()


def tls_env(server: RedisServer, certs: TlsCerts, queue: str, ca: Path | None = None) -> dict[str, str]:
    return script_env(server.url, queue, REDIS_TLS_CA_FILE=str(ca or certs.ca), REDIS_TLS_CERT_FILE=str(certs.client_cert),
                      REDIS_TLS_KEY_FILE=str(certs.client_key))


def test_producer_and_worker_run_end_to_end_over_verified_tls(tls_redis, certs, queue_name):
    """Over rediss:// with the CA file and a client certificate, the producer pushes, a worker processes all, stats balance."""
    env = tls_env(tls_redis, certs, queue_name)
    if not wired(Settings.load(env)):
        pytest.skip(NOT_WIRED)
    code, events, stderr = run("app/main.py", "--count", "20", "--interval", "0", env=env)
    assert code == 0 and len([e for e in events if e["event"] == "message_pushed"]) == 20, stderr
    code, events, stderr = run("worker/main.py", "--burst", env=env)
    assert code == 0 and len([e for e in events if e["event"] == "message_processed"]) == 20, stderr
    done = subprocess.run([PYTHON, "-m", "workqueue", "stats", "--json"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=30)
    assert done.returncode == 0 and json.loads(done.stdout)["unaccounted"] == 0, done.stderr


@pytest.mark.parametrize("script, args, expected", [("worker/main.py", ["--burst"], 2), ("app/main.py", ["--count", "1"], 2),
                                                   ("-m", ["workqueue", "stats"], 1)])
def test_a_server_certificate_from_another_ca_is_refused_with_one_line(tls_redis, certs, queue_name, script, args, expected):
    """A CA file that did not sign the server's certificate: exit 2 (CLI 1) at once, one line naming REDIS_TLS_CA_FILE, never waited out."""
    done = subprocess.run([PYTHON, script, *args], cwd=ROOT, env=tls_env(tls_redis, certs, queue_name, ca=certs.other_ca),
                          capture_output=True, text=True, timeout=30)
    lines = done.stderr.strip().splitlines()
    assert done.returncode == expected, done.stderr
    assert lines[-1].startswith("error: ") and "certificate" in lines[-1] and "REDIS_TLS_CA_FILE" in lines[-1], done.stderr
    assert all(line.startswith("{") for line in lines[:-1]) and "redis_unavailable" not in done.stderr and "Traceback" not in done.stderr


def test_a_certificate_verify_failure_is_a_refusal_not_an_outage(tls_redis, certs):
    """The error redis-py raises for a certificate from an unknown CA is classified as configuration."""
    from workqueue.settings import TlsFiles
    from workqueue.store.outages import is_outage, refusal
    from workqueue.store.transport import connect

    client = connect(tls_redis.url, tls=TlsFiles(str(certs.other_ca), str(certs.client_cert), str(certs.client_key)))
    with pytest.raises(redis.exceptions.ConnectionError) as error:
        client.ping()
    assert not is_outage(error.value) and "REDIS_TLS_CA_FILE" in str(refusal(error.value))
    assert is_outage(redis.exceptions.ConnectionError("Error 111 connecting to 127.0.0.1:1. Connection refused."))


def test_tls_settings_are_checked_at_start(certs, tmp_path):
    """A missing or unreadable file, a file that is no certificate, a certificate without its key, TLS files without rediss://: ConfigError naming the setting."""
    not_pem = tmp_path / "notes.txt"
    not_pem.write_text("not a certificate\n")
    url = "rediss://127.0.0.1:6390/0"
    cases = [
        ({"REDIS_URL": url, "REDIS_TLS_CA_FILE": str(tmp_path / "missing.pem")}, "REDIS_TLS_CA_FILE names no file"),
        ({"REDIS_URL": url, "REDIS_TLS_CA_FILE": str(tmp_path)}, "REDIS_TLS_CA_FILE names no file"),
        ({"REDIS_URL": url, "REDIS_TLS_CA_FILE": str(not_pem)}, "REDIS_TLS_CA_FILE holds no PEM certificate"),
        ({"REDIS_URL": url, "REDIS_TLS_CERT_FILE": str(certs.client_cert)}, "REDIS_TLS_CERT_FILE and REDIS_TLS_KEY_FILE go together"),
        ({"REDIS_URL": url, "REDIS_TLS_CERT_FILE": str(certs.client_cert), "REDIS_TLS_KEY_FILE": str(certs.server_key)},
         "REDIS_TLS_CERT_FILE and REDIS_TLS_KEY_FILE are not"),
        ({"REDIS_URL": "redis://127.0.0.1:6390/0", "REDIS_TLS_CA_FILE": str(certs.ca)}, "REDIS_TLS_CA_FILE is set but REDIS_URL does not start with rediss://"),
    ]
    for environ, words in cases:
        with pytest.raises(ConfigError) as error:
            Settings.load(environ)
        assert str(error.value).startswith(words), str(error.value)
    settings = Settings.load({"REDIS_URL": url, "REDIS_TLS_CA_FILE": str(certs.ca)})
    assert settings.tls is not None and settings.tls.ca_file == str(certs.ca) and settings.tls.cert_file is None


@pytest.mark.parametrize("script", ["app/main.py", "worker/main.py"])
def test_a_bad_tls_file_stops_the_scripts_with_exit_2_and_one_line(tmp_path, queue_name, script):
    """REDIS_TLS_CA_FILE naming no file: exit 2 and one stderr line naming it, no traceback."""
    env = script_env("rediss://127.0.0.1:6390/0", queue_name, REDIS_TLS_CA_FILE=str(tmp_path / "missing.pem"))
    code, stderr = run_raw(script, env=env, timeout=30)
    lines = stderr.strip().splitlines()
    assert code == 2 and len(lines) == 1 and lines[0].startswith("error: REDIS_TLS_CA_FILE") and "Traceback" not in stderr


# -- passwords --------------------------------------------------------------------------------

ODD_PASSWORD = "p@ss:w/rd?#%1"


@pytest.fixture
def odd_password_redis(tmp_path):
    """A redis-server whose password has @ : / ? # and %."""
    server = RedisServer(tmp_path / "redis", password=ODD_PASSWORD).start()
    yield server
    server.stop()


def test_a_password_with_at_colon_slash_works_url_encoded(odd_password_redis, queue_name):
    """URL-encoded in REDIS_URL, a password with @ : / works for producer, worker and CLI, and reaches no log line."""
    url = f"redis://:{quote(ODD_PASSWORD, safe='')}@127.0.0.1:{odd_password_redis.port}/0"
    env = script_env(url, queue_name)
    code, events, stderr = run("app/main.py", "--count", "3", "--interval", "0", env=env)
    assert code == 0, stderr
    code, events, stderr2 = run("worker/main.py", "--burst", env=env)
    assert code == 0 and len([e for e in events if e["event"] == "message_processed"]) == 3, stderr2
    assert not [e for e in events if e["event"] == "redis_password_weak"]
    done = cli(url, queue_name, "stats", "--json")
    assert done.returncode == 0 and json.loads(done.stdout)["completed"] == 3
    for text in (stderr, stderr2, done.stderr):
        assert ODD_PASSWORD not in text and quote(ODD_PASSWORD, safe="") not in text


def test_a_password_with_at_colon_slash_works_in_redis_password(odd_password_redis, queue_name):
    """Set apart in REDIS_PASSWORD, the same password works as it is, with a user in REDIS_URL or without."""
    url = f"redis://127.0.0.1:{odd_password_redis.port}/0"
    env = script_env(url, queue_name, REDIS_PASSWORD=ODD_PASSWORD)
    if not wired(Settings.load(env)):
        pytest.skip(NOT_WIRED)
    code, events, stderr = run("app/main.py", "--count", "2", "--interval", "0", env=env)
    assert code == 0, stderr
    env_user = script_env(f"redis://default@127.0.0.1:{odd_password_redis.port}/0", queue_name, REDIS_PASSWORD=ODD_PASSWORD)
    code, events, stderr2 = run("worker/main.py", "--burst", env=env_user)
    assert code == 0 and len([e for e in events if e["event"] == "message_processed"]) == 2, stderr2
    assert ODD_PASSWORD not in stderr + stderr2


def test_a_password_in_both_places_is_a_config_error(queue_name):
    """REDIS_PASSWORD beside a password in REDIS_URL: exit 2, one line naming REDIS_PASSWORD, neither password shown."""
    env = script_env("redis://:in-url-pw@127.0.0.1:6390/0", queue_name, REDIS_PASSWORD="apart-pw")
    code, stderr = run_raw("worker/main.py", env=env, timeout=30)
    assert code == 2 and stderr.startswith("error: REDIS_PASSWORD") and len(stderr.strip().splitlines()) == 1
    assert "in-url-pw" not in stderr and "apart-pw" not in stderr


def test_settings_never_show_a_password_in_their_repr():
    """repr(Settings) leaves out REDIS_URL and REDIS_PASSWORD."""
    settings = Settings.load({"REDIS_URL": "redis://u@127.0.0.1:6390/0", "REDIS_PASSWORD": "hunter2-repr"})
    assert "hunter2-repr" not in repr(settings) and settings.password == "hunter2-repr"


def test_weak_password_warning_names_no_password_and_the_example_one():
    """No password and `secret` are weak (the text never holds a password); another password is not."""
    none = weak_password_warning(Settings.load({"REDIS_URL": "redis://127.0.0.1:6390/0"}))
    example = weak_password_warning(Settings.load({"REDIS_URL": "redis://127.0.0.1:6390/0", "REDIS_PASSWORD": "secret"}))
    in_url = weak_password_warning(Settings.load({"REDIS_URL": "redis://worker:secret@127.0.0.1:6390/0"}))
    assert none is not None and "without a password" in none
    assert example is not None and example == in_url and "example" in example and "secret" not in example
    assert weak_password_warning(Settings.load({"REDIS_URL": "redis://:Xq7-long-pw@127.0.0.1:6390/0"})) is None


def test_a_worker_without_a_password_warns_once_and_one_with_a_good_one_does_not(shared_redis, odd_password_redis, queue_name):
    """worker/main.py logs one redis_password_weak warning (with queue and worker) when Redis is reached with no password, none otherwise."""
    code, events, stderr = run("worker/main.py", "--burst", env=script_env(shared_redis.url, queue_name))
    weak = [e for e in events if e["event"] == "redis_password_weak"]
    assert code == 0 and len(weak) == 1, stderr
    assert weak[0]["level"] == "warning" and weak[0]["queue"] == queue_name and weak[0]["worker"] and "without a password" in weak[0]["reason"]
    url = f"redis://:{quote(ODD_PASSWORD, safe='')}@127.0.0.1:{odd_password_redis.port}/0"
    code, events, stderr = run("worker/main.py", "--burst", env=script_env(url, queue_name))
    assert code == 0 and not [e for e in events if e["event"] == "redis_password_weak"], stderr
