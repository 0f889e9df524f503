"""Signed messages and the message size limit: what producers refuse, what workers dead-letter."""

import base64
import hashlib
import hmac
import json
import re

import pytest
from structlog.testing import capture_logs
from support import parse_events, run, run_raw, script_env

from workqueue import Queue, Settings, Worker, message
from workqueue.message import MalformedMessage
from workqueue.signing import MessagePolicy, MessageTooLarge, Signing

KEY, OLD, OTHER = "current-signing-key-0123456789", "previous-signing-key-0123456789", "a-key-nobody-deployed-0123456789"


def dead_letters(client, queue: Queue) -> list[dict]:
    return [json.loads(raw) for raw in client.lrange(queue.keys.dead_letter, 0, -1)]


def errors(logs: list[dict]) -> list[dict]:
    return [e for e in logs if e["event"] in ("worker_error", "housekeeping_failed")]


def test_oversized_unsigned_and_wrongly_signed_messages_never_crash_a_worker_and_never_vanish(shared_redis, client, queue_name):
    """With signing on, a burst worker processes the signed messages and dead-letters each unsigned, wrongly signed, tampered or oversized element with its reason (the oversized one by Redis, never sent); stats balance."""
    env = {"REDIS_URL": shared_redis.url, "QUEUE_NAME": queue_name, "MESSAGE_SIGNING_KEY": KEY, "MAX_MESSAGE_BYTES": "4096"}
    queue = Queue.from_settings(Settings.load(env))
    unsigned = message.new({"n": "unsigned"})[1]
    forged = Queue.connect(shared_redis.url, queue_name, signing_key=OTHER).build({"n": "forged"})[1]
    tampered = queue.build({"n": "tampered"})[1].replace(b'"tampered"', b'"changed!"')
    oversized = Queue.connect(shared_redis.url, queue_name, signing_key=KEY, max_message_bytes=10**6).build({"n": "x" * 30_000})[1]
    good = [queue.push({"n": 0})]
    for element in (unsigned, forged, tampered, oversized):
        client.rpush(queue_name, element)
        good.append(queue.push({"n": len(good)}))
    seen = []
    with capture_logs() as logs:
        assert Worker(queue, lambda m: seen.append(m.id), burst=True).run() == 0
    assert seen == good and not errors(logs)
    dead = dead_letters(client, queue)
    assert [d["raw"].encode() for d in dead if "raw" in d] == [unsigned, forged, tampered]
    # Too large to be a message: Redis dead-lettered it as it took it, never sent, as its head, size and hash.
    [cut] = [d for d in dead if d.get("truncated") is True]
    assert base64.b64decode(cut["raw_base64"]) == oversized[:4096]
    assert cut["size"] == len(oversized) and cut["sha1"] == hashlib.sha1(oversized).hexdigest()
    reasons = [
        "malformed message: signature missing: MESSAGE_SIGNING_KEY is set and the message has no 'sig'",
        "malformed message: signature does not verify with MESSAGE_SIGNING_KEY or MESSAGE_SIGNING_KEY_PREVIOUS",
        "malformed message: signature does not verify with MESSAGE_SIGNING_KEY or MESSAGE_SIGNING_KEY_PREVIOUS",
        f"malformed message: too large: {len(oversized)} bytes, over MAX_MESSAGE_BYTES (4096)",
    ]
    assert sorted(d["error"] for d in dead) == sorted(reasons)
    assert sorted(e["error"] for e in logs if e["event"] == "message_dead_lettered") == sorted(reasons)
    result = queue.stats()
    assert (result["produced"], result["completed"], result["dead_lettered"], result["dead"]) == (5, 5, 4, 4)
    assert result["pending"] == result["in_flight"] == result["delayed"] == 0
    assert result["unaccounted"] == -4  # the four pushed by hand were never counted as produced


def test_a_message_signed_with_the_previous_key_verifies_while_keys_are_rotated(shared_redis, client, queue_name):
    """During a rotation workers handle messages signed with the old or the new key; once the old key is dropped, an old-key message is dead-lettered."""
    old_producer = Queue.connect(shared_redis.url, queue_name, signing_key=OLD)
    new_producer = Queue.connect(shared_redis.url, queue_name, signing_key=KEY, previous_signing_key=OLD)
    rotating = Queue.connect(shared_redis.url, queue_name, signing_key=KEY, previous_signing_key=OLD)
    ids = [old_producer.push({"n": 1}), new_producer.push({"n": 2})]
    seen = []
    assert Worker(rotating, lambda m: seen.append(m.id), burst=True).run() == 0
    assert seen == ids and dead_letters(client, rotating) == []
    late = old_producer.push({"n": 3})
    rotated = Queue.connect(shared_redis.url, queue_name, signing_key=KEY)
    assert Worker(rotated, lambda m: seen.append(m.id), burst=True).run() == 0
    [dead] = dead_letters(client, rotated)
    assert late not in seen and json.loads(dead["raw"])["id"] == late and "signature does not verify" in dead["error"]
    assert rotated.stats()["unaccounted"] == 0


def test_a_retried_or_requeued_signed_message_still_verifies(shared_redis, client, queue_name):
    """A signed message whose first try fails is processed on its second; one dead-lettered after its attempts and requeued is processed too."""
    queue = Queue.connect(shared_redis.url, queue_name, signing_key=KEY, max_attempts=2, retry_backoff=0.001)
    flaky, doomed = queue.push({"n": "flaky"}), queue.push({"n": "doomed"})
    tries: list[tuple[str, int]] = []

    def handler(msg):
        tries.append((msg.id, msg.attempts))
        if msg.id == doomed or len(tries) == 1:
            raise ValueError(f"try {len(tries)} fails")

    assert Worker(queue, handler, burst=True).run() == 0
    assert sorted(tries) == sorted([(flaky, 0), (flaky, 1), (doomed, 0), (doomed, 1)])
    [dead] = dead_letters(client, queue)
    assert dead["id"] == doomed and dead["attempts"] == 2 and "sig" in dead
    requeued = queue.dead.requeue()
    assert (requeued.changed, requeued.malformed_left) == (1, 0)
    seen = []
    assert Worker(queue, lambda m: seen.append((m.id, m.attempts)), burst=True).run() == 0
    assert seen == [(doomed, 0)] and dead_letters(client, queue) == []
    result = queue.stats()
    assert (result["completed"], result["retried"], result["dead_lettered"], result["requeued"]) == (2, 2, 1, 1)
    assert result["unaccounted"] == 0


def test_the_signature_is_the_hmac_of_the_documented_canonical_form():
    """`sig` is the hex HMAC-SHA256 of the sorted, compact, ASCII JSON of the fields other than sig, attempts, error and dead_lettered_at, as decoded."""
    queue = Queue.connect("redis://127.0.0.1:1/0", "unused", signing_key=KEY)  # never connects: nothing is pushed
    _, raw = queue.build({"z": [1, 2.5, "é \U0001f600"], 10: "ten", 2: ("a", None), "nested": {"b": 1, "a": True}})
    fields = json.loads(raw)
    signed = {name: value for name, value in fields.items() if name not in ("sig", "attempts", "error", "dead_lettered_at")}
    text = json.dumps(signed, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False)
    assert fields["sig"] == hmac.new(KEY.encode(), text.encode(), hashlib.sha256).hexdigest()
    assert queue.policy.admit(raw).id == fields["id"]
    retried = message.decode(raw).failed("ValueError: boom", dead=True)
    assert queue.policy.admit(retried).attempts == 1  # what a failure adds is outside the signature
    assert KEY not in repr(queue.policy) and KEY not in repr(Settings.load({"MESSAGE_SIGNING_KEY": KEY}))


def test_push_refuses_a_message_over_the_limit_and_push_many_pushes_none_of_its_messages(shared_redis, queue_name):
    """Queue.push raises MessageTooLarge naming the size and the limit; push_many with one such message pushes nothing."""
    queue = Queue.connect(shared_redis.url, queue_name, max_message_bytes=200)
    with pytest.raises(MessageTooLarge) as error:
        queue.push({"text": "y" * 300})
    assert isinstance(error.value, ValueError) and error.value.limit == 200 and error.value.size > 300
    assert str(error.value) == f"message of {error.value.size} bytes is over MAX_MESSAGE_BYTES (200)"
    with pytest.raises(MessageTooLarge):
        queue.push_many([{"n": 1}, {"text": "y" * 300}, {"n": 2}])
    assert queue.stats()["produced"] == 0 and queue.stats()["pending"] == 0
    queue.push_many([{"n": 1}, {"n": 2}])
    assert queue.stats()["produced"] == 2


def test_a_worker_refuses_an_element_over_the_limit_unread_but_not_a_message_that_failed_tries_grew():
    """An element far over the limit is refused for its size without being decoded; a signed message at the limit still passes after a failure added a long error."""
    signing = Signing(KEY)
    policy = MessagePolicy(1000, signing)
    with pytest.raises(MalformedMessage, match=r"^too large: 10000000 bytes, over MAX_MESSAGE_BYTES \(1000\)$"):
        policy.admit(b"[" * 10_000_000)  # not JSON either: never read

    def padded(extra: int) -> bytes:
        return signing.sign(b'{"id":"m","attempts":0,"created_at":1.5,"body":"' + b"x" * extra + b'"}')

    at_limit, over = padded(1000 - len(padded(0))), padded(1001 - len(padded(0)))
    assert (len(at_limit), len(over)) == (1000, 1001)
    grown = message.decode(at_limit).failed("\x01" * 5000, dead=True)  # escaped: 6 bytes a character, cut to 1,000
    assert len(grown) > 6000 and policy.admit(grown).attempts == 1
    for element in (over, message.decode(over).failed("boom")):
        with pytest.raises(MalformedMessage, match=r"^too large: 1001 bytes"):
            policy.admit(element)


def test_the_producer_script_exits_1_with_one_line_for_a_message_over_the_limit(shared_redis, client, queue_name):
    """With MAX_MESSAGE_BYTES smaller than a demo message, app/main.py pushes nothing and exits 1 with one error line naming the size and the limit."""
    code, stderr = run_raw("app/main.py", "--count", "3", "--interval", "0", env=script_env(shared_redis.url, queue_name, MAX_MESSAGE_BYTES="50"))
    assert code == 1 and "Traceback" not in stderr
    lines = [line for line in stderr.splitlines() if not line.startswith("{")]
    assert len(lines) == 1 and re.fullmatch(r"error: message of \d+ bytes is over MAX_MESSAGE_BYTES \(50\)", lines[0])
    assert [e["event"] for e in parse_events("\n".join(line for line in stderr.splitlines() if line not in lines))] == ["producer_started"]
    assert client.llen(queue_name) == 0


@pytest.mark.parametrize("script", ["app/main.py", "worker/main.py"])
@pytest.mark.parametrize(
    "overrides, setting",
    [
        ({"MAX_MESSAGE_BYTES": "0"}, "MAX_MESSAGE_BYTES"),
        ({"MAX_MESSAGE_BYTES": "abc"}, "MAX_MESSAGE_BYTES"),
        ({"MESSAGE_SIGNING_KEY_PREVIOUS": OLD}, "MESSAGE_SIGNING_KEY_PREVIOUS"),
    ],
)
def test_bad_size_and_signing_settings_exit_2_with_one_line(shared_redis, queue_name, script, overrides, setting):
    """MAX_MESSAGE_BYTES of 0 or abc, or a previous key without a current one, stops either script with exit code 2 and one line naming the setting, never the key."""
    code, stderr = run_raw(script, env=script_env(shared_redis.url, queue_name, **overrides), timeout=30)
    lines = stderr.strip().splitlines()
    assert code == 2 and len(lines) == 1 and setting in lines[0] and "Traceback" not in stderr
    assert OLD not in stderr


def test_the_scripts_sign_and_verify_with_the_key_from_the_environment_and_never_log_it(shared_redis, client, queue_name):
    """Producer and worker with MESSAGE_SIGNING_KEY: signed messages are processed, one from an unsigned producer is dead-lettered, and no log line holds the key."""
    signed_env = script_env(shared_redis.url, queue_name, MESSAGE_SIGNING_KEY=KEY, LOG_LEVEL="debug")
    code, signed_events, out1 = run("app/main.py", "--count", "2", "--interval", "0", env=signed_env)
    assert code == 0
    code, unsigned_events, out2 = run("app/main.py", "--count", "1", "--interval", "0", env=script_env(shared_redis.url, queue_name))
    assert code == 0
    code, events, out3 = run("worker/main.py", "--burst", env=signed_env)
    assert code == 0, out3
    pushed = [[e["id"] for e in found if e["event"] == "message_pushed"] for found in (signed_events, unsigned_events)]
    assert [e["id"] for e in events if e["event"] == "message_processed"] == pushed[0]
    [dead] = dead_letters(client, Queue.connect(shared_redis.url, queue_name))
    assert json.loads(dead["raw"])["id"] == pushed[1][0] and dead["error"].startswith("malformed message: signature missing")
    assert KEY not in out1 + out2 + out3
