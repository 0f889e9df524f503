"""Durable pushes (PUSH_MIN_REPLICAS): a push counts only once enough replicas hold it."""

import json

import pytest
import redis
from support import RedisServer, run, run_raw, script_env, wait_until

from workqueue import Queue
from workqueue.settings import ConfigError, Settings
from workqueue.store.outages import ReplicasShortfall, is_outage


def linked(replica: RedisServer) -> bool:
    """Whether the replica's link to its primary is up (its initial sync done)."""
    try:
        return replica.client().info("replication").get("master_link_status") == "up"
    except redis.exceptions.RedisError:  # restarting: not linked yet
        return False


def start_replica(directory, primary: RedisServer, port: int | None = None) -> RedisServer:
    """A redis-server replicating `primary`, returned once its link is up."""
    replica = RedisServer(directory, port=port, extra=("--replicaof", "127.0.0.1", str(primary.port))).start()
    wait_until(lambda: linked(replica), timeout=20)
    return replica


@pytest.fixture
def pair(tmp_path):
    """A primary (syncing replicas without delay) and one replica of it, both linked."""
    primary = RedisServer(tmp_path / "primary", extra=("--repl-diskless-sync-delay", "0")).start()
    replica = start_replica(tmp_path / "replica", primary)
    yield primary, replica
    replica.stop()
    primary.stop()


def ids_in(server: RedisServer, queue: str) -> list[str]:
    return [json.loads(raw)["id"] for raw in server.client().lrange(queue, 0, -1)]


def test_producer_with_a_replica_confirms_every_push(pair, queue_name):
    """With PUSH_MIN_REPLICAS=1 and the replica up, the producer exits 0 and every message it logged is already on the replica."""
    primary, replica = pair
    env = script_env(primary.url, queue_name, PUSH_MIN_REPLICAS=1, PUSH_REPLICA_TIMEOUT=2)
    code, events, stderr = run("app/main.py", "--count", "25", "--interval", "0", "--batch", "4", env=env)
    assert code == 0, stderr
    pushed = [e["id"] for e in events if e["event"] == "message_pushed"]
    assert len(pushed) == 25 and not [e for e in events if e["event"] == "redis_unavailable"]
    assert ids_in(replica, queue_name) == pushed  # read at once: WAIT confirmed the replica has them


def test_producer_waits_out_a_missing_replica(pair, queue_name, processes, tmp_path):
    """With the replica stopped, the push in progress is retried as a shortfall and not logged as pushed; once the replica is back, every message reaches it and the producer exits 0."""
    primary, replica = pair
    env = script_env(primary.url, queue_name, PUSH_MIN_REPLICAS=1, PUSH_REPLICA_TIMEOUT=0.3)
    producer = processes.start("app/main.py", "--count", "6", "--interval", "0.2", env=env)
    producer.wait_for("message_pushed", timeout=15, count=2)
    # The first pushes may already have waited out a shortfall, while the replica was still
    # settling in: only the shortfalls after the stop count here.
    before = len(producer.named("redis_unavailable"))
    replica.stop()
    [first, *_] = producer.wait_for("redis_unavailable", timeout=15, count=before + 2)[before:]
    assert first["error"].startswith("ReplicasShortfall: pushed, but only 0 of 1 replicas confirmed within 0.3 s")
    logged = {e["id"] for e in producer.named("message_pushed")}
    unconfirmed = [i for i in ids_in(primary, queue_name) if i not in logged]
    assert unconfirmed  # on the primary, retried, and never logged as pushed while no replica confirms it
    replica.start()
    wait_until(lambda: linked(replica), timeout=20)
    assert producer.wait(timeout=30) == 0
    pushed = [e["id"] for e in producer.named("message_pushed")]
    assert len(pushed) == 6 and set(unconfirmed) <= set(pushed)
    assert set(ids_in(replica, queue_name)) == set(pushed)
    assert producer.named("redis_available")


def test_queue_push_raises_the_shortfall_without_a_replica(shared_redis, queue_name):
    """Queue.push and push_many raise ReplicasShortfall, an outage, when no replica confirms; the message is on the primary."""
    queue = Queue.connect(shared_redis.url, queue_name, push_min_replicas=1, push_replica_timeout=0.2)
    with pytest.raises(ReplicasShortfall, match=r"^pushed, but only 0 of 1 replicas confirmed within 0\.2 s$") as error:
        queue.push({"n": 1}, message_id="only-on-the-primary")
    assert is_outage(error.value)
    with pytest.raises(ReplicasShortfall):
        queue.push_many([{"n": 2}, {"n": 3}])
    assert ids_in(shared_redis, queue_name)[0] == "only-on-the-primary"
    assert Queue.connect(shared_redis.url, queue_name).push({"n": 4})  # the default waits for no replica


def test_push_reloads_scripts_after_noscript_and_pushes_once(pair, queue_name):
    """After SCRIPT FLUSH, a confirmed push loads the script and pushes the message once, confirmed by the replica."""
    primary, replica = pair
    queue = Queue.connect(primary.url, queue_name, push_min_replicas=1, push_replica_timeout=2)
    queue.push({"n": 0})
    primary.client().script_flush()
    message_id = queue.push({"n": 1})
    assert ids_in(replica, queue_name)[1:] == [message_id]
    assert int(replica.client().hget(f"{{{queue_name}}}:stats", "produced")) == 2


@pytest.mark.parametrize(
    "name, value",
    [("PUSH_MIN_REPLICAS", "-1"), ("PUSH_MIN_REPLICAS", "one"), ("PUSH_MIN_REPLICAS", "1.5"),
     ("PUSH_REPLICA_TIMEOUT", "0"), ("PUSH_REPLICA_TIMEOUT", "-1"), ("PUSH_REPLICA_TIMEOUT", "nan"), ("PUSH_REPLICA_TIMEOUT", "60")],
)
def test_bad_durability_setting_raises_config_error_naming_it(name, value):
    """Each bad PUSH_MIN_REPLICAS or PUSH_REPLICA_TIMEOUT raises ConfigError whose message starts with the setting's name."""
    with pytest.raises(ConfigError) as error:
        Settings.load({name: value})
    assert str(error.value).startswith(name + " ")


@pytest.mark.parametrize("script", ["app/main.py", "worker/main.py"])
@pytest.mark.parametrize("name, value", [("PUSH_MIN_REPLICAS", "-1"), ("PUSH_REPLICA_TIMEOUT", "0")])
def test_bad_durability_setting_exits_2_with_one_line(shared_redis, queue_name, script, name, value):
    """A bad PUSH_MIN_REPLICAS or PUSH_REPLICA_TIMEOUT stops either script with exit code 2 and one stderr line naming it."""
    code, stderr = run_raw(script, env=script_env(shared_redis.url, queue_name, **{name: value}), timeout=30)
    assert code == 2
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and name in lines[0] and "Traceback" not in stderr


def test_durability_settings_default_to_no_wait():
    """Unset, PUSH_MIN_REPLICAS is 0 and PUSH_REPLICA_TIMEOUT is 1 s; set, they reach the Queue."""
    assert (Settings.load({}).push_min_replicas, Settings.load({}).push_replica_timeout) == (0, 1.0)
    settings = Settings.load({"PUSH_MIN_REPLICAS": "2", "PUSH_REPLICA_TIMEOUT": "0.5", "REDIS_URL": "redis://127.0.0.1:1/0"})
    queue = Queue.from_settings(settings)
    assert (queue.push_min_replicas, queue.push_replica_timeout) == (2, 0.5)
