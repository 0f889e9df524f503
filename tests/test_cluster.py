"""Redis Cluster: producer, workers and CLI pointed at any node; one slot per queue; outages of
a cluster (a master restarting, a slot moving) waited out with nothing lost."""

from __future__ import annotations

import json
import random
import subprocess
import threading

import pytest
import redis
from cluster import Cluster
from redis._parsers.base import BaseParser
from redis.exceptions import ClusterError, RedisClusterException
from support import PYTHON, ROOT, run, run_raw, script_env, stats, wait_until

from workqueue import Queue
from workqueue.store.cluster import SlotMoved, cluster_of
from workqueue.store.keys import REGISTRY, QueueKeys
from workqueue.store.outages import ClusterClientError, is_outage, raise_unless_outage, refusal
from workqueue.store.transport import location, send_together


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """Three masters on free loopback ports, shared by this module's tests (each its own queues)."""
    started = Cluster(tmp_path_factory.mktemp("cluster")).start()
    yield started
    started.stop()


def cli(url: str, queue: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([PYTHON, "-m", "workqueue", *args], cwd=ROOT, env=script_env(url, queue), capture_output=True, text=True, timeout=30)


def elsewhere(cluster: Cluster, queue: str) -> str:
    """The URL of a master that does not own `queue`'s slot."""
    return cluster.other_than(cluster.owner(cluster.slot(queue))).url


# -- classification -------------------------------------------------------------------------


def cannot_connect(cause: Exception) -> RedisClusterException:
    try:
        raise RedisClusterException(f"Redis Cluster cannot be connected. Please provide at least one reachable node: {cause}") from cause
    except RedisClusterException as error:
        return error


OUTAGES = [
    BaseParser.parse_error("CLUSTERDOWN The cluster is down"),
    BaseParser.parse_error("TRYAGAIN Multiple keys request during rehashing of slot"),
    BaseParser.parse_error("ASK 3999 127.0.0.1:6381"),
    SlotMoved("the queue's slot is served elsewhere now: MovedError 3999 127.0.0.1:6381"),
    ClusterError("TTL exhausted."),
    RedisClusterException("TTL exhausted."),
    cannot_connect(redis.exceptions.ConnectionError("Error 111 connecting to 127.0.0.1:7000. Connection refused.")),
]
BUGS = [
    RedisClusterException("EVALSHA - all keys must map to the same key slot"),
    BaseParser.parse_error("CROSSSLOT Keys in request don't hash to the same slot"),
]


@pytest.mark.parametrize("error", OUTAGES, ids=lambda e: f"{type(e).__name__}: {str(e)[:30]}")
def test_cluster_states_that_pass_are_outages(error):
    """CLUSTERDOWN, TRYAGAIN, ASK, a MOVED read on a cluster Channel, TTL exhausted and no reachable node are waited out, as is each raised again as a RedisError."""
    assert is_outage(error) and refusal(error) is None
    raise_unless_outage(error)  # returns: waited out
    try:
        raise ClusterClientError(str(error)) from error
    except ClusterClientError as wrapped:
        assert isinstance(wrapped, redis.RedisError) and is_outage(wrapped) and refusal(wrapped) is None


@pytest.mark.parametrize("error", BUGS, ids=lambda e: type(e).__name__)
def test_cross_slot_errors_are_neither_outages_nor_refusals(error):
    """A cross-slot error is a bug: not waited out and not configuration, so every caller fails loudly."""
    assert not is_outage(error) and refusal(error) is None
    with pytest.raises(type(error)):
        raise_unless_outage(error)


def test_cluster_refusals_name_the_problem():
    """A database other than 0 and a wrong password behind "cannot be connected" are refusals, not outages."""
    db = RedisClusterException("A ``db`` querystring option can only be 0 in cluster mode")
    auth = cannot_connect(redis.exceptions.AuthenticationError("invalid username-password pair"))
    assert "database" in str(refusal(db)) and not is_outage(db)
    assert "authentication failed" in str(refusal(auth)) and not is_outage(auth)
    assert "database" in str(refusal(BaseParser.parse_error("ERR SELECT is not allowed in cluster mode")))


# -- the client -----------------------------------------------------------------------------


def test_client_pointed_at_any_node_uses_the_cluster_client_and_its_location_is_host_and_port(cluster, queue_name):
    """A URL naming a node that does not own the queue gives the cluster client; push, stats, peek, pause and the registry work; location is host:port only."""
    url = elsewhere(cluster, queue_name)
    queue = Queue.connect(url, queue_name)
    assert queue.push({"n": 1}) and cluster_of(queue.client) is not None
    assert location(queue.client) == url.removeprefix("redis://") + " (cluster)"
    assert location(cluster.cluster_client()) == f"127.0.0.1:{cluster.nodes[0].port} (cluster)"
    assert queue.stats()["pending"] == 1 and len(queue.peek(5)) == 1
    assert queue.pause() and queue.is_paused() and queue.resume() and not queue.is_paused()
    assert queue_name in queue.registered_queues()


def test_scripts_load_on_every_master_and_reload_after_a_flush(cluster, queue_name):
    """Scripts.load puts every script on every master; a master that lost its scripts gets them again on NOSCRIPT."""
    queue = Queue.connect(elsewhere(cluster, queue_name), queue_name)
    queue.scripts.load()
    shas = list(queue.scripts.sha.values())
    assert all(all(node.client().script_exists(*shas)) for node in cluster.nodes)
    owner = cluster.owner(cluster.slot(queue_name))
    owner.client().script_flush()
    queue.push({"n": 1})  # NOSCRIPT on the owner, loaded again, run once
    assert queue.stats()["produced"] == 1 and all(owner.client().script_exists(*shas))


def test_moved_read_on_a_channel_is_an_outage_and_patches_the_slot_map(cluster, queue_name):
    """With a stale slot map a Channel gets MOVED: raised as SlotMoved (an outage), after which the map and the next send are right."""
    queue = Queue.connect(elsewhere(cluster, queue_name), queue_name)
    queue.push({"n": 1})
    client = cluster_of(queue.client)
    assert client is not None
    slot, owner = cluster.slot(queue_name), cluster.owner(cluster.slot(queue_name))
    wrong = next(node for node in client.get_primaries() if node.port != owner.port)
    client.nodes_manager.slots_cache[slot] = [wrong]
    with pytest.raises(SlotMoved) as raised:
        send_together(queue.client, queue_name, [("LLEN", queue_name)])
    assert is_outage(raised.value) and refusal(raised.value) is None
    assert client.get_node_from_key(queue_name).port == owner.port
    assert send_together(queue.client, queue_name, [("LLEN", queue_name)]) == [1]


def test_cross_slot_calls_fail_loudly(cluster, queue_name):
    """A script over keys of two slots raises at once, through the cluster client or a Channel, and is not waited out."""
    queue = Queue.connect(cluster.nodes[0].url, queue_name)
    with pytest.raises(RedisClusterException) as raised:
        queue.client.eval("return 1", 2, "{a}x", "{b}y")
    with pytest.raises(RedisClusterException):
        raise_unless_outage(raised.value)
    with pytest.raises(redis.exceptions.ClusterCrossSlotError) as crossed:
        send_together(queue.client, "{a}x", [("EVAL", "return 1", 2, "{a}x", "{a}y"), ("EVAL", "return 1", 2, "{a}x", "{b}y")])
    with pytest.raises(redis.exceptions.ClusterCrossSlotError):
        raise_unless_outage(crossed.value)


def test_worker_metrics_read_the_depths_of_a_queue_on_another_node(cluster, queue_name):
    """The metrics' depth reads (a pipeline) go to the node that owns the queue, whichever node the URL names."""
    from workqueue.metrics import WorkerMetrics

    queue = Queue.connect(elsewhere(cluster, queue_name), queue_name)
    queue.push_many([{"n": 1}, {"n": 2}])
    registry = WorkerMetrics(queue).registry
    depths = {depth: registry.get_sample_value(f"workqueue_{depth}", {"queue": queue_name}) for depth in ("pending", "in_flight", "delayed", "dead")}
    assert depths == {"pending": 2, "in_flight": 0, "delayed": 0, "dead": 0}


def test_a_database_other_than_0_on_a_cluster_is_refused_in_one_line(cluster, queue_name):
    """REDIS_URL with /1 on a cluster node: the producer exits 2 with one line naming the database, no traceback."""
    code, stderr = run_raw("app/main.py", "--count", "1", env=script_env(cluster.nodes[0].url[:-2] + "/1", queue_name), timeout=30)
    assert code == 2 and "database" in stderr.strip().splitlines()[-1] and "Traceback" not in stderr


# -- end to end -----------------------------------------------------------------------------


@pytest.mark.slow
def test_queues_on_every_master_are_served_through_a_node_that_does_not_own_them(cluster, processes):
    """Producer, --burst workers and stats, each given a node that does not own its queue: everything processed, nothing unaccounted."""
    queues = cluster.queue_on_each_master("e2e")
    producers = [processes.start("app/main.py", "--count", "60", "--interval", "0", "--batch", "20", env=script_env(elsewhere(cluster, q), q))
                 for q in queues]
    assert [p.wait(timeout=60) for p in producers] == [0, 0, 0]
    workers = [processes.start("worker/main.py", "--burst", env=script_env(elsewhere(cluster, q), q)) for q in queues]
    assert [w.wait(timeout=60) for w in workers] == [0, 0, 0]
    for q, producer, worker in zip(queues, producers, workers, strict=True):
        assert {e["id"] for e in producer.named("message_pushed")} == {e["id"] for e in worker.named("message_processed")}
        result = stats(elsewhere(cluster, q), q)
        assert result["produced"] == result["completed"] == 60 and result["unaccounted"] == 0
        assert not worker.named("worker_error")
    listed = cli(cluster.nodes[0].url, queues[0], "queues", "--json")
    assert listed.returncode == 0 and set(queues) <= {row["queue"] for row in json.loads(listed.stdout)}


class KeyWrites:
    """Every key written on each master while it runs, from keyspace notifications."""

    def __init__(self, cluster: Cluster) -> None:
        self.written: dict[bytes, set[int]] = {}
        self._stop = threading.Event()
        self._subscriptions = []
        for node in cluster.nodes:
            node.client().config_set("notify-keyspace-events", "EA")
            pubsub = node.client().pubsub()
            pubsub.psubscribe("__keyevent@0__:*")
            wait_until(lambda p=pubsub: (m := p.get_message(timeout=0.1)) and m["type"] == "psubscribe", timeout=5)
            self._subscriptions.append((node.port, pubsub))
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        while not self._stop.is_set():  # bounded by stop()
            for port, pubsub in self._subscriptions:
                message = pubsub.get_message(timeout=0.01)
                if message and message["type"] == "pmessage":
                    self.written.setdefault(message["data"], set()).add(port)

    def stop(self) -> dict[bytes, set[int]]:
        self._stop.set()
        self._thread.join(timeout=5)
        for _, pubsub in self._subscriptions:
            pubsub.close()
        return self.written


@pytest.mark.slow
def test_every_key_a_queue_writes_lies_in_its_slot(cluster, queue_name, processes):
    """Done, retry, dead letter, malformed element, pause, requeue and a killed worker's recovery write only keys of the queue's slot (and the registry)."""
    slot, owner = cluster.slot(queue_name), cluster.owner(cluster.slot(queue_name))
    url = elsewhere(cluster, queue_name)
    env = script_env(url, queue_name, WORKER_TIMEOUT=2, MAX_ATTEMPTS=2, RETRY_BACKOFF=0.05)
    writes = KeyWrites(cluster)
    try:
        assert run("app/main.py", "--count", "5", "--interval", "0", env=env)[0] == 0
        cluster.cluster_client().rpush(queue_name, b"not a message")
        cluster.cluster_client().hincrby(QueueKeys(queue_name).stats, "produced", 1)  # pushed by hand: counted by hand
        assert run("worker/main.py", "--burst", env=env)[0] == 0  # done, and a malformed element dead-lettered
        assert run("app/main.py", "--count", "2", "--interval", "0", env=env)[0] == 0
        assert run("worker/main.py", "--burst", "--fail-rate", "1", env=env)[0] == 0  # retried, then dead
        assert cli(url, queue_name, "pause").returncode == 0 and cli(url, queue_name, "resume").returncode == 0
        assert cli(url, queue_name, "dead", "requeue", "--all", "--yes").returncode == 0  # the malformed one stays
        assert cli(url, queue_name, "dead", "purge", "--malformed").returncode == 0
        assert run("worker/main.py", "--burst", env=env)[0] == 0  # the requeued ones done
        doomed = processes.start("worker/main.py", "--work-seconds", "60", env=env)
        doomed.wait_for("worker_started", timeout=15)
        assert run("app/main.py", "--count", "1", "--interval", "0", env=env)[0] == 0
        in_flight = QueueKeys(queue_name).in_flight(doomed.named("worker_started")[0]["worker"])
        wait_until(lambda: cluster.cluster_client().llen(in_flight) >= 1, timeout=15)
        doomed.kill()
        rescuer = processes.start("worker/main.py", env=env)
        rescuer.wait_for("message_recovered", timeout=20)
        wait_until(lambda: (s := stats(url, queue_name))["pending"] + s["in_flight"] + s["delayed"] == 0, timeout=20, interval=0.3)
        rescuer.signal()
        assert rescuer.wait(timeout=30) == 0
    finally:
        written = writes.stop()
    keys = QueueKeys(queue_name)
    expected = {keys.pending, keys.stats, keys.done, keys.delayed, keys.dead_letter, keys.workers, keys.settled, keys.paused, in_flight, REGISTRY}
    assert {k.encode() for k in expected} <= set(written)
    for key, ports in written.items():
        if key != REGISTRY.encode():  # the one key shared by all queues, in a slot of its own
            assert cluster.slot(key.decode()) == slot and ports == {owner.port}, key
    result = stats(url, queue_name)
    assert result["unaccounted"] == 0 and result["recovered"] == 1 and result["requeued"] == 2
    for port, stored in cluster.keys().items():
        node = next(n for n in cluster.nodes if n.port == port)
        for key in stored:
            key_slot = int(node.client().execute_command("CLUSTER", "KEYSLOT", key))
            assert cluster.owner(key_slot).port == port and (queue_name not in key.decode() or key_slot == slot), key


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_chaos_workers_killed_and_a_master_restarted_lose_nothing(cluster, queue_name, processes):
    """Workers SIGKILLed and restarted, and the queue's master SIGKILLed and restarted mid-run: every id processed or dead-lettered, stats balance 0."""
    rng = random.Random(12)
    owner = cluster.owner(cluster.slot(queue_name))
    url = cluster.other_than(owner).url
    env = script_env(url, queue_name, WORKER_TIMEOUT=2, MAX_ATTEMPTS=5, RETRY_BACKOFF=0.05)
    args = ["--work-seconds", "0.005", "--fail-rate", "0.05"]
    workers = [processes.start("worker/main.py", *args, env=env) for _ in range(3)]
    producer = processes.start("app/main.py", "--count", "300", "--interval", "0.02", env=env)
    everyone, kills, restarted = list(workers), 0, False
    try:
        for round_ in range(12):  # bounded chaos: a kill a round, the master's restart in round 4
            producer.wait_for("message_pushed", timeout=30, count=min(300, 20 * (round_ + 1)))
            victim = rng.randrange(len(workers))
            workers[victim].popen.kill()
            kills += 1
            workers[victim] = processes.start("worker/main.py", *args, env=env)
            everyone.append(workers[victim])
            if round_ == 4:
                owner.kill()
                wait_until(lambda: producer.named("redis_unavailable") and any(w.named("redis_unavailable") for w in workers), timeout=20)
                owner.start()
                cluster.wait_ok()
                restarted = True
    finally:
        if not restarted:
            owner.start()
            cluster.wait_ok()
    assert producer.wait(timeout=60) == 0
    wait_until(lambda: (s := stats(url, queue_name))["pending"] + s["delayed"] + s["in_flight"] == 0, timeout=40, interval=0.5)
    for worker in workers:
        worker.wait_for("worker_started", timeout=30)
        worker.signal()
    assert [w.wait(timeout=30) for w in workers] == [0, 0, 0]
    pushed = {e["id"] for e in producer.named("message_pushed")}
    done = {e["id"] for w in everyone for e in w.named("message_processed") + w.named("message_dead_lettered")}
    result = stats(url, queue_name)
    assert len(pushed) == 300 and pushed <= done and kills == 12
    assert result["unaccounted"] == 0 and result["produced"] >= 300
    assert not [e for w in everyone for e in w.named("worker_error")]


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_moving_a_queues_slot_to_another_master_while_workers_run_loses_nothing(cluster, queue_name, processes):
    """The queue's slot migrated key by key to another master under a producer and two workers: every id processed, stats balance 0."""
    slot = cluster.slot(queue_name)
    source = cluster.owner(slot)
    target = cluster.other_than(source)
    env = script_env(source.url, queue_name, WORKER_TIMEOUT=5)
    workers = [processes.start("worker/main.py", "--work-seconds", "0.005", env=env) for _ in range(2)]
    for worker in workers:  # each up (signal handler in place) before the SIGTERM at the end
        worker.wait_for("worker_started", timeout=30)
    producer = processes.start("app/main.py", "--count", "200", "--interval", "0.01", env=env)
    producer.wait_for("message_pushed", timeout=30, count=60)
    cluster.move_slot(slot, target)
    assert cluster.owner(slot) is target
    assert producer.wait(timeout=60) == 0
    pushed = {e["id"] for e in producer.named("message_pushed")}
    wait_until(lambda: {e["id"] for w in workers for e in w.named("message_processed")} >= pushed, timeout=40)
    for worker in workers:
        worker.signal()
    assert [w.wait(timeout=30) for w in workers] == [0, 0]
    result = stats(source.url, queue_name)
    assert len(pushed) == 200 and result["unaccounted"] == 0 and result["completed"] >= 200
    assert not [e for w in workers for e in w.named("worker_error")]
    assert not [k for k in cluster.keys()[source.port] if queue_name in k.decode()]


def test_a_pipeline_named_with_one_hash_tag_hands_off_and_completes_its_group_on_a_cluster(cluster, queue_name):
    """Queues named {tag}first, {tag}second and {tag}done share one slot: emits and a group's completion go through one script each, served through a node that does not own the slot."""
    from support import running

    from workqueue import Worker

    tag = "{" + queue_name + "}"
    url = elsewhere(cluster, queue_name)
    first, second, done = (Queue.connect(url, tag + name) for name in ("first", "second", "done"))
    first.push_many([{"n": n} for n in range(4)], group="g", on_complete=done.name)

    def split(message) -> None:
        message.emit(second.name, {"from": message.id})

    with running(Worker(first, split, burst=True, worker_timeout=5)) as thread:
        thread.join(20)
    with running(Worker(second, lambda message: None, burst=True, worker_timeout=5)) as thread:
        thread.join(20)
    assert first.group("g") == {**first.group("g"), "total": 8, "completed": 8, "done": True}
    assert len(done.peek()) == 1 and second.stats()["completed"] == 4
    slots = {cluster.slot(key) for key in (first.keys.pending, second.keys.stats, done.keys.pending, first.keys.group("g"))}
    assert slots == {cluster.slot(queue_name)}


def test_a_hand_off_across_slots_fails_loudly_on_a_cluster(cluster, queue_name):
    """On a cluster, a group whose completion queue is in another slot is refused when pushed, and an emit to a queue in another slot fails its try with an error that names the rule."""
    from support import running

    from workqueue import Worker

    url = elsewhere(cluster, queue_name)
    queue = Queue.connect(url, queue_name, max_attempts=1)
    other = next(f"{queue_name}-{n}" for n in range(100) if cluster.slot(f"{queue_name}-{n}") != cluster.slot(queue_name))
    queue.push({})  # the client learns it talks to a cluster
    with pytest.raises(ValueError, match="share a slot"):
        queue.push_many([{}], group="g", on_complete=other)
    with running(Worker(queue, lambda message: message.emit(other, {}), worker_timeout=5)):
        entry = wait_until(lambda: queue.dead.newest(1), timeout=15)[0]
    assert "another Redis Cluster slot" in entry.error and "hash tag" in entry.error
    assert Queue.connect(url, other).stats()["produced"] == 0


def test_a_message_naming_a_group_in_another_slot_is_served_and_stops_nothing(cluster, queue_name):
    """A hand-written member whose group lies in another slot completes like any message: the worker leaves the unreachable group out of its settle instead of failing it."""
    from support import running

    from workqueue import Worker, message

    url = elsewhere(cluster, queue_name)
    queue = Queue.connect(url, queue_name)
    other = next(f"{queue_name}-{n}" for n in range(100) if cluster.slot(f"{queue_name}-{n}") != cluster.slot(queue_name))
    queue.push_encoded([message.new({"n": 1}, group=message.GroupRef("g", other, other))[1]])
    queue.push({"n": 2})
    with running(Worker(queue, lambda msg: None, worker_timeout=5)):
        wait_until(lambda: queue.stats()["completed"] == 2, timeout=15)
    assert queue.stats()["unaccounted"] == 0 and queue.stats()["dead_lettered"] == 0
