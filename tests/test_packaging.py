"""Docker Compose, Dockerfile and README, checked by reading them (no Docker engine here)."""

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from support import PYTHON, ROOT, free_port, wait_until

COMPOSE = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
README = (ROOT / "README.md").read_text()


def interpolate(value: str, env: dict | None = None) -> str:
    """Resolve ${VAR:-default} the way Compose does, with VAR unset unless given."""
    env = env or {}
    return re.sub(r"\$\{(\w+):-([^}]*)\}", lambda m: env.get(m.group(1), m.group(2)), value)


def test_compose_redis_is_private_persistent_and_health_checked():
    """Redis has a password, AOF on a named volume, an authenticating PONG check, and a loopback port."""
    redis = COMPOSE["services"]["redis"]
    command = [interpolate(part) for part in redis["command"]]
    assert command[:3] == ["redis-server", "--requirepass", "secret"]
    assert command[command.index("--appendonly") + 1] == "yes"
    assert any(v.split(":")[0] in COMPOSE["volumes"] and v.endswith(":/data") for v in redis["volumes"])
    assert interpolate(redis["environment"]["REDISCLI_AUTH"]) == "secret"
    test = redis["healthcheck"]["test"]
    assert test[0] == "CMD-SHELL" and "redis-cli" in test[1] and "grep -q PONG" in test[1]
    assert [interpolate(p) for p in redis["ports"]] == ["127.0.0.1:6379:6379"]


def test_compose_apps_wait_for_healthy_redis_and_use_its_password():
    """Producer and worker wait for a healthy Redis, reach it as `redis` with the same password."""
    for name in ("producer", "worker"):
        service = COMPOSE["services"][name]
        assert service["build"] == "."
        assert service["depends_on"]["redis"]["condition"] == "service_healthy"
        url = interpolate(service["environment"]["REDIS_URL"])
        assert url == "redis://:secret@redis:6379/0"
        assert interpolate(service["environment"]["REDIS_URL"], {"REDIS_PASSWORD": "other"}) == "redis://:other@redis:6379/0"
    assert "ports" not in COMPOSE["services"]["worker"]  # so --scale worker=3 does not clash


def test_compose_commands_are_exec_form_and_documented():
    """Commands are exec-form lists (signals reach Python), run real files, and the README shows them."""
    for name in ("producer", "worker"):
        command = COMPOSE["services"][name]["command"]
        assert isinstance(command, list) and command[0] == "python"
        assert (ROOT / command[1]).is_file()
        assert f"python {command[1]}" in README
        help_text = subprocess.run([PYTHON, command[1], "--help"], cwd=ROOT, capture_output=True, text=True).stdout
        for flag in command[2:]:
            if flag.startswith("--"):
                assert flag in help_text
    assert "docker compose up --build" in README and "--scale worker=3" in README
    assert "docker compose run redis redis-cli -h redis -a secret -n 0" in README


def test_dockerfile_copies_what_exists_and_runs_exec_form():
    """Every COPY source exists, and CMD is exec form so SIGTERM reaches the worker."""
    lines = (ROOT / "Dockerfile").read_text().splitlines()
    for line in lines:
        if line.startswith("COPY"):
            for source in line.split()[1:-1]:
                assert (ROOT / source).exists(), source
    [cmd] = [line for line in lines if line.startswith("CMD")]
    assert cmd.startswith('CMD ["python"')


def test_every_setting_and_event_is_in_the_readme():
    """Each setting, CLI command and log event the code defines appears in the README."""
    from dataclasses import fields

    from workqueue.settings import Settings

    for field in fields(Settings):
        assert f"`{field.name.upper()}`" in README
    code = "".join(p.read_text() for p in (ROOT / "workqueue").glob("*.py"))
    for event in set(re.findall(r'log\.(?:info|warning|error|debug|exception)\(\s*"(\w+)"', code)):
        assert f"`{event}`" in README, event
    assert "python -m workqueue stats" in README and "python -m workqueue dead" in README


@pytest.mark.slow
def test_demo_starts_its_own_redis_and_cleans_up(tmp_path):
    """scripts/demo --seconds 10, run from a copy of the checkout with no Redis at REDIS_URL: own Redis, pushes, processes, retries, exit 0, nothing left."""
    # A copy, so the test writes nothing into the working tree; its .venv is this suite's one
    # (already set up with the test extra, so scripts/demo installs nothing).
    copy = tmp_path / "checkout"
    shutil.copytree(ROOT, copy, symlinks=True, ignore=shutil.ignore_patterns(
        ".git", ".venv", ".pytest_cache", ".hypothesis", "__pycache__", "*.egg-info", ".peers", ".runs", ".env"))
    (copy / ".venv").symlink_to(sys.prefix)
    before = sorted(p.name for p in Path(sys.prefix).iterdir())
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k not in ("QUEUE_NAME",)}
    env.update(REDIS_URL=f"redis://127.0.0.1:{port}/0", LOG_FORMAT="json")
    done = subprocess.run([str(copy / "scripts/demo"), "--seconds", "10"], cwd=copy, env=env,
                          capture_output=True, text=True, timeout=120, start_new_session=True)
    assert sorted(p.name for p in Path(sys.prefix).iterdir()) == before  # nothing installed
    assert done.returncode == 0, done.stderr
    out = done.stdout
    assert "started a throwaway redis-server" in out
    events = [json.loads(line.split("] ", 1)[1]) for line in out.splitlines() if line.startswith("[")]
    names = {(e["event"], e["level"]) for e in events}
    assert {("message_pushed", "info"), ("message_processed", "info"), ("message_retried", "warning")} <= names
    assert {e["worker"] for e in events if e["event"] == "worker_stopped"} == {e["worker"] for e in events if e["event"] == "worker_started"}
    assert re.search(r"unaccounted\s+0\b", out)
    wait_until(lambda: not leftovers(port), timeout=5)


def leftovers(port: int) -> list[str]:
    """Processes this demo run left: its redis-server, or scripts it started (found by the REDIS_URL
    in their environment, so a demo someone else runs on this machine is not counted)."""
    found = []
    for line in subprocess.run(["pgrep", "-af", "redis-server|scripts/demo.py|app/main.py|worker/main.py"],
                               capture_output=True, text=True).stdout.splitlines():
        pid, _, command = line.partition(" ")
        try:
            environ = Path(f"/proc/{pid}/environ").read_bytes()
        except OSError:
            continue  # gone meanwhile
        if re.search(rf":{port}\b".encode(), command.encode() + b" " + environ):
            found.append(line)
    return found


def test_every_redis_key_is_in_the_readme():
    """Each key name QueueKeys builds appears in the README's key table."""
    from workqueue.keys import QueueKeys

    keys = QueueKeys("demo-1")
    names = [getattr(keys, attr) for attr in ("pending", "dead_letter", "delayed", "workers", "done", "stats", "settled")]
    for name in names + ["{demo-1}:in_flight:<worker>"]:
        assert f"| `{name}` |" in README, name
