"""Fuzzing the decoder and the worker: a fuzzed element never crashes or stalls a worker, and never vanishes."""

import json

from hypothesis import given, settings
from hypothesis import strategies as st
from structlog.testing import capture_logs

from workqueue import Queue, Worker, message
from workqueue.message import MalformedMessage

JSON_SCALARS = st.one_of(
    st.none(), st.booleans(), st.text(), st.floats(allow_nan=True, allow_infinity=True),
    st.integers(min_value=-(10**4000), max_value=10**4000),  # json.dumps itself stops at 4,300 digits
)
JSON_VALUES = st.recursive(JSON_SCALARS, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(), inner, max_size=3), max_leaves=20)


@st.composite
def elements(draw: st.DrawFn) -> bytes:
    """Bytes a list element might hold: raw noise, JSON of any shape, near-messages, odd escapes, deep nesting."""
    kind = draw(st.sampled_from(["bytes", "json", "message-like", "escapes", "numbers", "nested"]))
    if kind == "bytes":
        return draw(st.binary(max_size=200))
    if kind == "json":
        return json.dumps(draw(JSON_VALUES)).encode()
    if kind == "message-like":
        fields = draw(st.dictionaries(st.sampled_from(["id", "attempts", "body", "error", "created_at"]), JSON_VALUES))
        if draw(st.booleans()):
            fields["id"] = draw(st.text(min_size=1))
        text = json.dumps(fields, ensure_ascii=draw(st.booleans()))
        return text.encode("utf-8", errors="surrogatepass")  # lone surrogates become invalid UTF-8
    if kind == "escapes":
        escape = draw(st.sampled_from(["\\ud800", "\\udfff", "\\u0000", "\\ud83d\\ude00", "\\x", "\\"]))
        return f'{{"id":"a{escape}b","attempts":0,"body":"{escape}"}}'.encode()
    if kind == "numbers":
        number = draw(st.sampled_from(["9" * 5000, "-0", "1e400", "-1e-400", "0.1e1", "1E+2", "01", "1.", ".5", "0x10"]))
        return f'{{"id":"n","attempts":0,"body":{number}}}'.encode()
    levels = draw(st.integers(1, 3000))
    opener, closer = draw(st.sampled_from([("[", "]"), ('{"a":', "}")]))
    return f'{{"id":"deep","body":{opener * levels}1{closer * levels}}}'.encode()


@settings(max_examples=1000)
@given(raw=elements())
def test_decode_returns_a_message_or_raises_malformed_and_a_message_survives_a_failed_try(raw):
    """decode() never raises anything but MalformedMessage; what it accepts encodes again after a failure."""
    try:
        msg = message.decode(raw)
    except MalformedMessage:
        return
    failed = msg.failed("fuzzed \udcff failure")
    try:
        again = message.decode(failed)
    except MalformedMessage:  # only a number too large for a float (read as inf) may do this
        assert b"Infinity" in failed
        return
    assert again.id == msg.id and again.attempts == msg.attempts + 1 and again.fields["error"] == "fuzzed \udcff failure"


@settings(max_examples=30)
@given(fuzzed=st.lists(elements(), min_size=1, max_size=5))
def test_a_worker_takes_fuzzed_elements_among_good_ones_and_every_one_ends_somewhere(shared_redis, fuzzed):
    """Fuzzed elements between good messages: a burst worker processes or dead-letters each one, logs no error, and stats balance."""
    queue = Queue.connect(shared_redis.url, f"fuzz-{abs(hash(tuple(fuzzed)))}", max_attempts=1)
    client = shared_redis.client()
    client.delete(*[queue.keys.pending, queue.keys.dead_letter, queue.keys.stats, queue.keys.done, queue.keys.workers, queue.keys.delayed])
    good = []
    for raw in fuzzed:
        good.append(queue.push({"good": True}))
        queue.push_encoded([raw])  # counted as produced: every element must be accounted for
    seen = []
    with capture_logs() as logs:
        assert Worker(queue, lambda m: seen.append(m.id), burst=True).run() == 0
    assert not [e for e in logs if e["event"] in ("worker_error", "housekeeping_failed")]
    assert set(good) <= set(seen)
    result = queue.stats()
    assert result["pending"] == result["in_flight"] == result["delayed"] == 0
    assert result["completed"] + result["dead_lettered"] + result["duplicates_skipped"] == 2 * len(fuzzed)
    assert result["unaccounted"] == 0
