"""The stages of the thumbnails pipeline, served by `workqueue worker tasks:STAGES`.

convert (one message per image, the group's members) -> resize (three follow-ups each) ->
publish (one follow-up per completed resize try); when all of them have ended, the group's
completion message goes to summary. main.py starts the group.
"""

from __future__ import annotations

import functools
import json
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from PIL import Image, ImageOps

from workqueue import Message, Queue, Settings

# One hash tag for every queue: on Redis Cluster, a hand-off and a group's bookkeeping must
# stay in one slot. THUMBS_PREFIX lets two pipelines (or two test runs) share one Redis.
PREFIX = os.environ.get("THUMBS_PREFIX", "{thumbs}")
CONVERT, RESIZE, PUBLISH, SUMMARY = (PREFIX + stage for stage in ("convert", "resize", "publish", "summary"))
SIZES = (64, 128, 256)
# Seconds each convert and resize try sleeps: lets a demo (or a test's kills) catch work in progress.
WORK_SECONDS = float(os.environ.get("THUMBS_WORK_SECONDS", "0"))
RUN_TTL = 7 * 24 * 3600  # how long the summary can still find a group's output folder


def run_key(group: str) -> str:
    """The Redis key where main.py leaves a group's output folder and image names for the
    summary, whose message carries only counts. Braces not at its start put it outside every
    queue's own keys, in the pipeline's slot."""
    return f"thumbnails:{PREFIX}run:{group}"


def jpeg_path(out: Path, stem: str) -> Path:
    return out / "jpeg" / f"{stem}.jpg"


def thumbnail_path(out: Path, stem: str, size: int) -> Path:
    return out / "thumbs" / f"{stem}-{size}.jpg"


def tries_folder(out: Path, group: str) -> Path:
    """Where resize tries leave their files until publish moves them; summary removes the rest."""
    return out / ".tries" / group


def write_atomically(path: Path, save: Callable[[Path], object]) -> None:
    """Have `save` write a file of its own beside `path`, then rename it into place: a try killed
    midway leaves no half-written file under `path`, and two tries never write into one file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(handle)
    try:
        save(Path(temporary))
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def _work() -> None:
    if WORK_SECONDS > 0:
        time.sleep(WORK_SECONDS)


def convert(message: Message) -> None:
    """Stage one: the image as an RGB JPEG, then a resize follow-up for each size."""
    image, out = Path(message.body["image"]), Path(message.body["out"])
    _work()
    with Image.open(image) as picture:
        rgb = ImageOps.exif_transpose(picture).convert("RGB")
    jpeg = jpeg_path(out, image.stem)
    # Every try writes the same bytes, so a rerun after a kill (or a late try of a worker
    # presumed dead) replaces the file with an identical one, never a half one.
    write_atomically(jpeg, lambda path: rgb.save(path, "JPEG", quality=90))
    for size in SIZES:
        # key=size: whichever try completes, the follow-ups' ids are the same.
        message.emit(RESIZE, {"source": str(jpeg), "size": size, "out": str(out)}, key=str(size))


def resize(message: Message) -> None:
    """Stage two: write this try's thumbnail under a name of its own, and stage its publishing."""
    source, size, out = Path(message.body["source"]), int(message.body["size"]), Path(message.body["out"])
    _work()
    final = thumbnail_path(out, source.stem, size)
    group = message.group.name if message.group is not None else "no-group"
    part = tries_folder(out, group) / f"{final.stem}.{message.id}.{message.attempts}.jpg"
    with Image.open(source) as picture:
        picture.thumbnail((size, size))
        # The comment names the try, so anyone can tell which one the published file came from.
        write_atomically(part, lambda path: picture.save(path, "JPEG", quality=85, comment=f"{message.id} {message.attempts}"))
    # A try can be killed after writing and before its acknowledgement, or run on in a worker
    # presumed dead after another copy completed; so this try does not put its file in place.
    # Its follow-up does, and a follow-up is pushed only if this try completes: the thumbnail
    # is always the file of the completed try. The key holds the attempt, so the follow-up's id
    # tells which try that was.
    message.emit(PUBLISH, {"part": str(part), "final": str(final)}, key=f"try-{message.attempts}")


def publish(message: Message) -> None:
    """Stage three: move a completed resize try's file to the thumbnail's name."""
    part, final = Path(message.body["part"]), Path(message.body["final"])
    final.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.replace(part, final)
    except FileNotFoundError:
        # An earlier try of this message moved it, and was stopped before its acknowledgement.
        if not final.exists():
            raise


@functools.cache
def _redis_queue() -> Queue:
    # The worker's own settings (REDIS_URL, REDIS_PASSWORD, TLS files), read once per process.
    return Queue.from_settings(Settings.load(queue_name=SUMMARY))


def summary(message: Message) -> None:
    """The group's completion: write summary.json in the output folder, then drop the leftover
    files of tries that never completed. Running it again rewrites the same file."""
    body: dict[str, Any] = message.body
    stored = _redis_queue().client.get(run_key(body["group"]))
    if stored is None:
        raise LookupError(f"no output folder recorded for group {body['group']!r} (expired, or not started by main.py)")
    run = json.loads(stored)
    out = Path(run["out"])
    expected = [thumbnail_path(out, stem, size) for stem in run["images"] for size in SIZES]
    result = {
        "group": body["group"], "total": body["total"], "completed": body["completed"], "dead": body["dead"],
        "thumbnails": [str(path.relative_to(out)) for path in expected if path.exists()],
        "missing": [str(path.relative_to(out)) for path in expected if not path.exists()],
    }
    text = json.dumps(result, indent=2) + "\n"
    write_atomically(out / "summary.json", lambda path: path.write_text(text))
    shutil.rmtree(tries_folder(out, body["group"]), ignore_errors=True)
    try:
        tries_folder(out, body["group"]).parent.rmdir()  # only when no other group's tries are in it
    except OSError:
        pass


STAGES = {CONVERT: convert, RESIZE: resize, PUBLISH: publish, SUMMARY: summary}
