"""examples/thumbnails end to end, its worker commands killed, frozen and restarted while it runs."""

from __future__ import annotations

import contextlib
import json
import os
import random
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
from support import ROOT, RedisServer, process_groups, script_env, signal_all, wait_until

from workqueue import Queue
from workqueue.message import follow_up_id

Image = pytest.importorskip("PIL.Image", reason="Pillow is not installed (it is in the test extra: pip install -e '.[test]')")

EXAMPLE = ROOT / "examples" / "thumbnails"
SIZES = (64, 128, 256)  # tasks.SIZES
IMAGES = 12
MESSAGES_PER_IMAGE = 1 + 2 * len(SIZES)  # its convert, a resize per size, a publish per resize
MODES = ("RGB", "RGBA", "L", "P")


def holding(pid: int, queues: tuple[Queue, ...]) -> bool:
    """Whether a queue worker of the dict command `pid` holds a message of one of `queues`."""
    pids = {str(worker) for worker in process_groups(pid)[1:]}
    return any(state.in_flight and state.id.decode().split("-")[-2] in pids for queue in queues for state in queue.snapshot().workers)


def serving(pid: int, queues: tuple[Queue, ...]) -> bool:
    """Whether the dict command `pid` started a queue worker per queue and each has registered
    (so each would drain on SIGTERM rather than die of it while still starting)."""
    pids = {str(worker) for worker in process_groups(pid)[1:]}
    registered = {state.id.decode().split("-")[-2] for queue in queues for state in queue.snapshot().workers}
    return len(pids) == len(queues) and pids <= registered


class WorkerCommands:
    """The example's `workqueue worker tasks:STAGES`, several side by side; a kill or a freeze
    reaches each command, its queue workers and their children."""

    def __init__(self, env: dict[str, str], logs: Path, count: int) -> None:
        self.env, self.logs, self.started = env, logs, 0
        self.popens: list[subprocess.Popen[bytes]] = []
        for _ in range(count):
            self.popens.append(self._start())

    def _start(self) -> subprocess.Popen[bytes]:
        self.started += 1
        with open(self.logs / f"worker-{self.started}.log", "wb") as log:
            return subprocess.Popen([sys.executable, "-m", "workqueue", "worker", "tasks:STAGES", "--processes", "1"], cwd=EXAMPLE,
                                    env=self.env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)

    def kill_and_restart(self, index: int) -> None:
        signal_all(self.popens[index].pid, signal.SIGKILL)
        self.popens[index].wait(timeout=10)
        self.popens[index] = self._start()

    def freeze(self, index: int, seconds: float) -> None:
        groups = process_groups(self.popens[index].pid)
        for group in groups:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(group, signal.SIGSTOP)
        try:
            time.sleep(seconds)
        finally:
            for group in groups:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(group, signal.SIGCONT)

    def stop(self) -> list[int]:
        """SIGTERM to each command (it passes it on to its queue workers); their exit codes."""
        for popen in self.popens:
            popen.send_signal(signal.SIGTERM)
        return [popen.wait(timeout=60) for popen in self.popens]

    def kill_all(self) -> None:
        for popen in self.popens:
            if popen.poll() is None:
                signal_all(popen.pid, signal.SIGKILL)
                popen.wait(timeout=10)


@pytest.fixture
def make_images(tmp_path: Path) -> Path:
    """IMAGES small pictures of different sizes and modes, every side at least the largest thumbnail."""
    folder = tmp_path / "images"
    folder.mkdir()
    for n in range(IMAGES):
        picture = Image.new("RGB", (260 + 23 * n, 300 - 3 * n), (20 * n, 255 - 20 * n, 90))
        picture.paste((255, 255, 255), (10, 10, 60 + 5 * n, 50))
        mode = MODES[n % len(MODES)]
        (picture.convert(mode) if mode != "P" else picture.quantize(16)).save(folder / f"picture-{n:02}.png")
    return folder


def comment_of(path: Path) -> tuple[str, int]:
    """The (message id, attempts) of the resize try that wrote a thumbnail, from its JPEG comment."""
    with Image.open(path) as picture:
        message_id, attempts = picture.info["comment"].decode().split()
    return message_id, int(attempts)


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_the_thumbnails_example_survives_killed_workers_and_summarises_once(shared_redis: RedisServer, tmp_path: Path, make_images: Path) -> None:
    """Twelve images through the example while its two worker commands are SIGKILLed and restarted and one is frozen: every thumbnail exists at its size, each was written by a try that completed, and one summary counts every step completed."""
    seed = random.randrange(2**32)
    rng = random.Random(seed)
    prefix = f"{{t-{uuid.uuid4().hex[:10]}}}"
    convert, resize, publish, summary = (Queue.connect(shared_redis.url, prefix + stage) for stage in ("convert", "resize", "publish", "summary"))
    # Each kill or freeze charges a try to every message its victim held: room for many.
    env = script_env(shared_redis.url, convert.name, THUMBS_PREFIX=prefix, THUMBS_WORK_SECONDS="0.2", WORKER_TIMEOUT="2",
                     RETRY_BACKOFF="0.05", RETRY_BACKOFF_MAX="0.5", MAX_ATTEMPTS="25", LOG_LEVEL="warning")
    out = tmp_path / "out"
    workers = WorkerCommands(env, tmp_path, count=2)
    try:
        pushed = subprocess.run([sys.executable, "main.py", str(make_images), str(out), "--group", "g"], cwd=EXAMPLE, env=env,
                                capture_output=True, text=True, timeout=60)
        assert pushed.returncode == 0 and pushed.stdout.strip() == "g", pushed.stderr
        # Four kills and one freeze (longer than WORKER_TIMEOUT: the other command recovers the
        # frozen one's messages, whose tries then run on) at random moments while work remains.
        events = ["kill"] * 4 + ["freeze"]
        rng.shuffle(events)
        happened: list[str] = []
        for event in events:
            time.sleep(rng.uniform(0.3, 1.2))
            if convert.group("g")["done"]:
                break
            victim = rng.randrange(len(workers.popens))
            # Once the victim's queue workers hold work (a command restarted a moment ago may not
            # yet): a kill or a freeze then always lands on tries in progress.
            with contextlib.suppress(AssertionError):
                wait_until(lambda victim=victim: holding(workers.popens[victim].pid, (convert, resize, publish)), timeout=5)
            if event == "kill":
                workers.kill_and_restart(victim)
            else:
                workers.freeze(victim, 3.0)
            happened.append(event)
        wait_until(lambda: convert.group("g")["done"], timeout=90, interval=0.2)
        wait_until(lambda: summary.stats()["completed"] == 1, timeout=30, interval=0.1)
        # A command restarted a moment ago may still be starting: SIGTERM would end it by default.
        stages = (convert, resize, publish, summary)
        wait_until(lambda: all(serving(popen.pid, stages) for popen in workers.popens), timeout=30, interval=0.1)
        assert workers.stop() == [0, 0], f"seed {seed}"
    finally:
        workers.kill_all()
    report = f"seed {seed}, events {happened}"

    total = IMAGES * MESSAGES_PER_IMAGE
    assert convert.group("g") == {**convert.group("g"), "total": total, "completed": total, "dead": 0, "pending": 0}, report
    stems = sorted(path.stem for path in make_images.iterdir())
    expected = [f"thumbs/{stem}-{size}.jpg" for stem in stems for size in SIZES]
    assert json.loads((out / "summary.json").read_text()) == {"group": "g", "total": total, "completed": total, "dead": 0,
                                                              "thumbnails": expected, "missing": []}, report
    assert summary.stats()["produced"] == 1 and summary.stats()["dead_lettered"] == 0, report

    writers: list[tuple[str, int]] = []
    for stem in stems:
        assert (out / "jpeg" / f"{stem}.jpg").is_file()
        with Image.open(make_images / f"{stem}.png") as original:
            ratio = original.width / original.height
        for size in SIZES:
            with Image.open(out / "thumbs" / f"{stem}-{size}.jpg") as thumbnail:
                assert thumbnail.format == "JPEG" and max(thumbnail.size) == size, (stem, size, thumbnail.size)
                assert abs(thumbnail.width / thumbnail.height - ratio) < 0.05
            writers.append(comment_of(out / "thumbs" / f"{stem}-{size}.jpg"))
    # Which try wrote each file: its comment names it, and the publish follow-up that moved it
    # into place has an id made from that try's attempt, pushed only if that very try completed.
    resize_ids = [message_id for message_id, _ in writers]
    assert len(set(resize_ids)) == len(writers) == IMAGES * len(SIZES)
    assert all(resize.consumer("check").completed(resize_ids)), report
    publish_ids = [follow_up_id(message_id, publish.name, f"try-{attempts}") for message_id, attempts in writers]
    assert all(publish.consumer("check").completed(publish_ids)), report
    # One publish per resize message: no try that failed, was killed or lost its claim pushed one.
    assert resize.stats()["produced"] == publish.stats()["produced"] == IMAGES * len(SIZES), report
    charged = [queue.stats()[count] for queue in (convert, resize, publish) for count in ("recovered", "retried")]
    assert "kill" not in happened or any(charged), report  # a kill landed on work in progress
