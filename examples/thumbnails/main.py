"""Push every image of a folder as one group: `python main.py IMAGES_FOLDER OUTPUT_FOLDER [--wait]`.

Prints the group's name; with --wait, prints its progress until the summary is written, and
exits 0 when every step completed (1: some were dead-lettered, or --timeout ran out).
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
from pathlib import Path

from PIL import Image
from tasks import CONVERT, RUN_TTL, SUMMARY, run_key

from workqueue import ConfigError, GroupError, Queue, Settings
from workqueue.settings import load_env_file

POLL_SECONDS = 0.5


def image_files(folder: Path) -> list[Path]:
    """The files of `folder` whose extension Pillow knows, by name."""
    known = Image.registered_extensions()
    return sorted(path for path in folder.iterdir() if path.is_file() and path.suffix.lower() in known)


def default_group(folder: Path) -> str:
    # Group names follow the rule for queue names: no whitespace or braces.
    name = re.sub(r"[^A-Za-z0-9_.-]+", "-", folder.resolve().name).strip("-") or "images"
    return f"{name}-{time.strftime('%Y%m%d-%H%M%S')}"


def wait(queue: Queue, group: str, out: Path, timeout: float) -> int:
    """Print the group's progress as it changes, then wait for its summary; the exit code."""
    deadline, last = time.monotonic() + timeout, ""
    while time.monotonic() < deadline:
        state = queue.group(group)
        line = f"{state['completed'] + state['dead']}/{state['total']} ended, {state['dead']} dead"
        if line != last:
            print(f"group {group}: {line}", flush=True)
            last = line
        if state["done"] and _summary_of(out, group):
            print(f"summary: {out / 'summary.json'}")
            return 0 if state["dead"] == 0 else 1
        time.sleep(POLL_SECONDS)
    print(f"error: group {group} not finished within {timeout:g} s", file=sys.stderr)
    return 1


def _summary_of(out: Path, group: str) -> bool:
    try:
        return bool(json.loads((out / "summary.json").read_text()).get("group") == group)
    except (OSError, ValueError):
        return False


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("images", type=Path, help="folder of images")
    parser.add_argument("out", type=Path, help="folder for the JPEGs, the thumbnails and summary.json")
    parser.add_argument("--group", help="the group's name (default: the folder's name and the time)")
    parser.add_argument("--wait", action="store_true", help="print progress until the summary is written")
    parser.add_argument("--timeout", type=float, default=3600, help="seconds --wait waits at most (default 3600)")
    args = parser.parse_args(argv)
    images = image_files(args.images) if args.images.is_dir() else []
    if not images:
        print(f"error: no image files in {args.images}", file=sys.stderr)
        return 2
    stems = [path.stem for path in images]
    if len(set(stems)) < len(stems):  # cat.png and cat.gif would write one cat.jpg
        print("error: two images share a name before their extension; rename one", file=sys.stderr)
        return 2
    group = args.group or default_group(args.images)
    out = args.out.resolve()
    load_env_file()  # REDIS_URL and the rest, from the environment or the nearest .env
    try:
        queue = Queue.from_settings(Settings.load(queue_name=CONVERT))
        # The summary's message carries counts only: it finds the folder and the names here.
        queue.client.set(run_key(group), json.dumps({"out": str(out), "images": stems}), ex=RUN_TTL)
        queue.push_many([{"image": str(path.resolve()), "out": str(out)} for path in images], group=group, on_complete=SUMMARY)
    except (ConfigError, GroupError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(group, flush=True)
    return wait(queue, group, out, args.timeout) if args.wait else 0


if __name__ == "__main__":
    raise SystemExit(main())
