"""Logging: the filtering logger's levels, held INFO lines, and lines in step with what Redis settled."""

import io
import json
import logging
import os
import signal
import subprocess
import sys
import threading

import pytest
import structlog
from structlog.testing import capture_logs
from support import PYTHON, ROOT, script_env, wait_until

from workqueue import Queue, logs
from workqueue.store.keys import QueueKeys


class LogFile:
    """A file standing in for stderr, which configure_logging writes to."""

    def __init__(self, path) -> None:
        self.path = path
        self.file = open(path, "w")  # noqa: SIM115 - closed by the fixture: the logger writes to it all test long

    def configure(self, level: str, fmt: str = "json") -> None:
        """configure_logging with sys.stderr this file (pytest puts its own back in each test
        phase, so the swap is done here, around the call that reads it)."""
        saved, sys.stderr = sys.stderr, self.file
        try:
            logs.configure_logging(level, fmt)
        finally:
            sys.stderr = saved

    def events(self) -> list[dict]:
        return [json.loads(line) for line in self.path.read_text().splitlines()]

    def names(self) -> list[str]:
        return [event["event"] for event in self.events()]


@pytest.fixture
def log_file(tmp_path):
    """A LogFile; structlog's defaults come back afterwards."""
    log_file = LogFile(tmp_path / "stderr")
    yield log_file
    structlog.reset_defaults()
    logs._writer = None
    log_file.file.close()


def test_each_call_at_or_above_the_configured_level_is_one_json_line(log_file):
    """At WARNING, debug and info write nothing; every other method writes its level, the bound context and a traceback for exception()."""
    log_file.configure("warning", "json")
    log = structlog.get_logger().bind(queue="q")
    log.debug("quiet")
    log.info("quiet")
    log.warning("w", n=1)
    log.warn("w2")
    log.error("e")
    log.critical("c")
    log.log(logging.ERROR, "by_number")
    log.log(logging.INFO, "quiet")
    try:
        raise ZeroDivisionError("division by zero")
    except ZeroDivisionError:
        log.exception("failed")
    events = log_file.events()
    assert [(e["event"], e["level"]) for e in events] == [
        ("w", "warning"), ("w2", "warning"), ("e", "error"), ("c", "critical"), ("by_number", "error"), ("failed", "error"),
    ]
    assert all(e["queue"] == "q" and e["timestamp"].endswith("Z") for e in events) and events[0]["n"] == 1
    assert "ZeroDivisionError" in events[-1]["exception"]
    assert not log.is_enabled_for(logging.INFO) and log.is_enabled_for(logging.WARNING)
    assert log.get_effective_level() == logging.WARNING


@pytest.mark.parametrize("level", ["debug", "info", "warning", "error"])
def test_each_level_writes_exactly_the_levels_at_or_above_it(log_file, level):
    """Configured at each level, every method (info_held and log() too) writes only if its level is at or above it."""
    log_file.configure(level, "json")
    log = structlog.get_logger()
    for method in ("debug", "info", "info_held", "msg", "warning", "warn", "error", "exception", "critical", "fatal"):
        getattr(log, method)(method)
    for number in (logging.DEBUG, logging.INFO, logging.WARNING, logging.ERROR, logging.CRITICAL):
        log.log(number, f"log_{number}")
    logs.write_held_lines()
    written = {(e["event"], e["level"]) for e in log_file.events()}
    rank = {"debug": 10, "info": 20, "warning": 30, "error": 40, "critical": 50}
    expected = {("debug", "debug"), ("info", "info"), ("info_held", "info"), ("msg", "info"), ("warning", "warning"),
                ("warn", "warning"), ("error", "error"), ("exception", "error"), ("critical", "critical"), ("fatal", "critical")}
    expected |= {(f"log_{number}", name) for name, number in rank.items()}
    assert written == {(event, name) for event, name in expected if rank[name] >= rank[level]}
    assert log.get_effective_level() == rank[level]


def test_capture_logs_sees_the_events_at_the_configured_level(log_file):
    """structlog's capture_logs works through the filtering logger: a processor that drops the event (DropEvent) writes nothing."""
    log_file.configure("info", "json")
    log = structlog.get_logger().bind(queue="q")
    with capture_logs() as captured:
        log.debug("hidden")
        log.info("shown", n=2)
    assert captured == [{"queue": "q", "n": 2, "event": "shown", "log_level": "info"}]
    assert log_file.events() == []


def test_a_held_line_waits_for_the_next_line_written_or_write_held_lines(log_file):
    """An info_held() line is written by write_held_lines(), or before the next line any thread writes, in order."""
    log_file.configure("info", "json")
    log = structlog.get_logger()
    log.info_held("a")
    assert log_file.events() == []
    logs.write_held_lines()
    assert log_file.names() == ["a"]
    log.info_held("b")
    log.debug("hidden")
    assert log_file.names() == ["a"]
    log.info("c")
    assert log_file.names() == ["a", "b", "c"]
    log.info_held("d")
    other = threading.Thread(target=lambda: structlog.get_logger().warning("e"))
    other.start()
    other.join()
    assert log_file.names() == ["a", "b", "c", "d", "e"]


def test_other_formats_write_a_held_line_at_once(log_file):
    """With the console format info_held() writes its line as it is logged."""
    log_file.configure("info", "console")
    structlog.get_logger().info_held("at_once")
    assert "at_once" in log_file.path.read_text()


def test_a_value_json_cannot_hold_is_written_as_its_repr(log_file):
    """An event carrying a set or an exception object is still written, with those values as their repr."""
    log_file.configure("info", "json")
    structlog.get_logger().info("odd", tags={1}, error=ValueError("x"))
    [event] = log_file.events()
    assert event["tags"] == "{1}" and event["error"] == "ValueError('x')"


@pytest.mark.parametrize("work_seconds", ["0", "0.002"])
def test_a_killed_worker_wrote_the_line_of_every_message_redis_counts_done(shared_redis, client, queue_name, processes, work_seconds):
    """A worker at INFO SIGKILLed mid-drain (batches of quick messages, or slower ones settled mid-batch) has written a message_processed line for every id Redis marked done."""
    count = 100_000 if work_seconds == "0" else 2_000
    Queue.connect(shared_redis.url, queue_name).push_many({"i": i} for i in range(count))
    worker = processes.start("worker/main.py", "--work-seconds", work_seconds, env=script_env(shared_redis.url, queue_name))
    done = QueueKeys(queue_name).done
    wait_until(lambda: client.zcard(done) >= 300, timeout=30, interval=0.01)
    worker.kill()  # SIGKILL: nothing runs on the way out
    settled = {member.decode() for member in client.zrange(done, 0, -1)}
    logged = {e["id"] for e in worker.named("message_processed")}
    assert 300 <= len(settled) < count
    assert settled <= logged, f"{len(settled - logged)} settled messages have no line"


def lines_of_four_through_one_pipe(tmp_path, program: str) -> list[bytes]:
    """Run `program` in four processes whose stderr is one pipe, read in small pieces (so the
    writers find it full and wait mid-write); the lines read, once all four exited 0. The
    writers wait for this reader as long as it takes: these tests are about lines staying
    whole, and a reader slowed by a loaded machine must not make them drop lines (CI once saw
    235 of 40,000 dropped after the default patience)."""
    script = tmp_path / "lines.py"
    script.write_text("from workqueue.logs import PipeSink\nPipeSink.PATIENCE = 60\n" + program)
    read_end, write_end = os.pipe()
    writers = [subprocess.Popen([PYTHON, str(script)], cwd=ROOT, stderr=write_end) for _ in range(4)]
    os.close(write_end)
    chunks = []
    with os.fdopen(read_end, "rb") as pipe:
        while chunk := pipe.read1(1000):
            chunks.append(chunk)
    assert [writer.wait(timeout=60) for writer in writers] == [0, 0, 0, 0]
    return b"".join(chunks).splitlines()


def test_lines_of_processes_sharing_a_pipe_stay_whole(tmp_path):
    """Four processes writing held INFO lines into one pipe, read slowly: every line read is one whole JSON object."""
    program = (
        "import structlog\n"
        "from workqueue.logs import configure_logging, write_held_lines\n"
        "configure_logging('info', 'json'); log = structlog.get_logger()\n"
        "for batch in range(100):\n"
        "    for i in range(100):\n"
        "        log.info_held('message_processed', id='x' * (i % 40 * 7), batch=batch)\n"
        "    write_held_lines()\n"
    )
    lines = lines_of_four_through_one_pipe(tmp_path, program)
    assert len(lines) == 4 * 100 * 100
    assert all(json.loads(line)["event"] == "message_processed" for line in lines)


def test_console_lines_show_text_from_redis_escaped(log_file):
    """In the console format a value holding escape sequences, C1 controls or a direction override is written escaped."""
    log_file.configure("info", "console")
    structlog.get_logger().warning("message_retried", id="\x1b]0;pwned\x07", error="\x9b2J\u202eevil")
    text = log_file.path.read_text()
    assert "message_retried" in text and "\\x1b]0;pwned\\x07" in text and "\\x9b2J\\u202eevil" in text
    assert all(c.isprintable() or c == "\n" for c in text.replace("\x1b[", ""))  # the renderer's own colours aside


def test_lines_a_failing_sink_cannot_take_are_counted_and_reported_when_it_takes_them_again():
    """A sink that fails (EPIPE) drops what the buffer held and the line being written, counted; the next line that gets through follows log_lines_dropped with that count."""
    written, failures = [], [True]

    class Sink(io.BytesIO):
        def flush(self):
            if failures and failures.pop():
                raise BrokenPipeError(32, "Broken pipe")
            written.append(self.getvalue())
            self.seek(0)
            self.truncate()

    writer = logs.LineWriter(Sink)
    writer.hold(b"held\n")
    writer.msg(b"lost\n")
    writer.msg(b"through\n")
    lines = b"".join(written).splitlines()
    assert json.loads(lines[0])["event"] == "log_lines_dropped" and json.loads(lines[0])["count"] == 2
    assert lines[1:] == [b"through"]


def test_a_worker_whose_log_reader_went_away_works_on(shared_redis, queue_name):
    """With its stderr a pipe whose reader closed (EPIPE on every line), the worker processes every message and stops with exit code 0."""
    env = script_env(shared_redis.url, queue_name)
    reading, writing = os.pipe()
    worker = subprocess.Popen([PYTHON, "worker/main.py"], cwd=ROOT, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=writing)
    os.close(writing)
    with os.fdopen(reading, "rb") as lines:
        assert b"worker_started" in lines.readline() + lines.readline()  # the weak-password warning may come first
    queue = Queue.connect(shared_redis.url, queue_name)
    queue.push_many([{"n": i} for i in range(20)])
    wait_until(lambda: queue.stats()["completed"] == 20, timeout=15)
    worker.send_signal(signal.SIGTERM)
    assert worker.wait(timeout=30) == 0
    assert queue.stats()["workers"] == 0


def test_long_lines_of_processes_sharing_a_pipe_are_cut_to_stay_whole(tmp_path):
    """Four processes writing lines of 10 KB (a long error, a long list) into one pipe, read slowly: every line read is one whole JSON object of at most PIPE_BUF bytes, marked cut, keeping the text's head and tail."""
    program = (
        "import structlog\n"
        "from workqueue.logs import configure_logging\n"
        "configure_logging('info', 'json'); log = structlog.get_logger()\n"
        "for i in range(300):\n"
        "    log.warning('message_retried', id=str(i), error='head ' + 'x' * 10_000 + ' tail', ids=list(range(i)))\n"
    )
    lines = lines_of_four_through_one_pipe(tmp_path, program)
    events = [json.loads(line) for line in lines]
    assert len(events) == 4 * 300 and all(len(line) < 4096 for line in lines)
    assert all(e["cut"] is True and e["error"].startswith("head ") and e["error"].endswith(" tail") for e in events)
    assert sorted(int(e["id"]) for e in events) == sorted(list(range(300)) * 4)


def test_a_worker_whose_log_reader_stalls_works_on_and_reports_what_it_dropped(shared_redis, queue_name):
    """With its stderr a pipe nobody reads (full), the worker processes every message at INFO, and once the pipe is read again its next line follows log_lines_dropped with the count; SIGTERM ends it with exit code 0."""
    env = script_env(shared_redis.url, queue_name, LOG_LEVEL="info")
    reading, writing = os.pipe()
    worker = subprocess.Popen([PYTHON, "worker/main.py"], cwd=ROOT, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=writing)
    os.close(writing)
    queue = Queue.connect(shared_redis.url, queue_name)
    queue.push_many([{"n": i} for i in range(3000)])  # about 600 KB of lines: the pipe holds 64 KiB
    try:
        wait_until(lambda: queue.stats()["completed"] == 3000, timeout=30)
        text: list[bytes] = []
        reader = threading.Thread(target=lambda: text.append(os.fdopen(reading, "rb").read()), daemon=True)
        reader.start()
        worker.send_signal(signal.SIGTERM)
        assert worker.wait(timeout=30) == 0
        reader.join(timeout=10)
    finally:
        worker.kill()
    events = [json.loads(line) for line in text[0].splitlines()]
    [dropped] = [e for e in events if e["event"] == "log_lines_dropped"]
    assert dropped["count"] > 0 and len([e for e in events if e["event"] == "message_processed"]) + dropped["count"] <= 3000 + 5
    assert events[-1]["event"] == "worker_stopped"
