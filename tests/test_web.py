"""The web dashboard and its JSON API, served by uvicorn against our own redis-server."""

import json
import subprocess
import time
from urllib.parse import quote, urlencode

import pytest
from support import PYTHON, ROOT, free_port, running, script_env, wait_until
from web_support import call, serving, web_redis  # noqa: F401 (a fixture: shared_redis, this module's own)

from workqueue import Queue, Worker

pytest.importorskip("starlette", reason="the web dashboard needs the optional extra web")

TOKEN = "a-test-token-0123456789"
BEARER = {"Authorization": f"Bearer {TOKEN}"}
STATS_KEYS = ["pending", "in_flight", "delayed", "dead", "workers", "paused", "oldest_pending_age_seconds", "produced",
              "requeued", "completed", "retried", "recovered", "dead_lettered", "duplicates_skipped", "purged", "unaccounted",
              "memory_used_bytes", "memory_limit_bytes", "maxmemory_policy"]
HOSTILE = '<script>alert("x")</script>/../"&\'\u202e'


def dead_letters(url: str, name: str, ids: list[str]) -> Queue:
    """Push these ids to queue `name` and let a failing worker dead-letter them all."""
    queue = Queue.connect(url, name, max_attempts=1)
    for message_id in ids:
        queue.push({"for": message_id}, message_id=message_id)
    Worker(queue, lambda message: 1 / 0, burst=True).run()
    return queue


def test_api_queues_lists_every_registered_queue_with_the_fields_of_stats(shared_redis, queue_name):
    """GET /api/queues answers each registered queue with exactly the fields of stats --json, and the figures are the queue's."""
    Queue.connect(shared_redis.url, queue_name).push_many([{"n": i} for i in range(3)])
    with serving(shared_redis.client()) as base:
        answer = call(f"{base}/api/queues")
    assert answer.status == 200 and answer.headers["Content-Type"] == "application/json"
    [row] = [row for row in json.loads(answer.body) if row["queue"] == queue_name]
    assert list(row) == ["queue", *STATS_KEYS]
    assert (row["pending"], row["produced"], row["dead"], row["paused"], row["unaccounted"]) == (3, 3, 0, False, 0)


def test_actions_without_web_token_are_refused_and_change_nothing(shared_redis, queue_name):
    """Without WEB_TOKEN the dashboard is read-only: pause, requeue and the form actions answer 403, even with a bearer token."""
    queue = dead_letters(shared_redis.url, queue_name, ["one"])
    with serving(shared_redis.client(), token="") as base:
        assert call(f"{base}/api/queues/{queue_name}/pause", "POST", headers=BEARER).status == 403
        assert call(f"{base}/api/queues/{queue_name}/dead/one/requeue", "POST").status == 403
        form = call(f"{base}/queues/{queue_name}/dead/requeue", "POST", body=urlencode({"one": "one"}))
        assert form.status == 403 and "read-only" in form.body
    assert not queue.is_paused() and queue.stats()["dead"] == 1


def test_api_actions_need_the_right_bearer_token(shared_redis, queue_name):
    """With WEB_TOKEN: no token and a wrong one answer 401 and change nothing; the right one pauses, resumes and requeues."""
    queue = dead_letters(shared_redis.url, queue_name, ["one"])
    with serving(shared_redis.client(), token=TOKEN) as base:
        none = call(f"{base}/api/queues/{queue_name}/pause", "POST")
        wrong = call(f"{base}/api/queues/{queue_name}/pause", "POST", headers={"Authorization": f"Bearer {TOKEN}x"})
        assert (none.status, wrong.status) == (401, 401) and none.headers["WWW-Authenticate"] == "Bearer"
        assert TOKEN not in none.body + wrong.body
        assert not queue.is_paused()
        paused = call(f"{base}/api/queues/{queue_name}/pause", "POST", headers=BEARER)
        assert paused.status == 200 and json.loads(paused.body) == {"queue": queue_name, "paused": True, "changed": True}
        assert queue.is_paused()
        assert json.loads(call(f"{base}/api/queues/{queue_name}/resume", "POST", headers=BEARER).body)["changed"] is True
        assert not queue.is_paused()
        assert call(f"{base}/api/queues/{queue_name}/dead/one/requeue", "POST").status == 401
        requeued = call(f"{base}/api/queues/{queue_name}/dead/one/requeue", "POST", headers=BEARER)
        assert requeued.status == 200 and json.loads(requeued.body)["requeued"] == 1
        again = call(f"{base}/api/queues/{queue_name}/dead/one/requeue", "POST", headers=BEARER)
        assert again.status == 404
        assert call(f"{base}/api/queues/no-such-queue-{queue_name}/pause", "POST", headers=BEARER).status == 404
    stats = queue.stats()
    assert (stats["dead"], stats["pending"], stats["requeued"], stats["unaccounted"]) == (0, 1, 1, 0)


def test_the_login_form_gives_a_session_whose_forms_need_their_csrf_token(shared_redis, queue_name):
    """A wrong token at the login form is refused; the right one sets an HttpOnly cookie; a form action with it but without the CSRF token is refused, with it done."""
    queue = Queue.connect(shared_redis.url, queue_name)
    queue.push({"n": 1})
    with serving(shared_redis.client(), token=TOKEN) as base:
        assert call(f"{base}/login", "POST", body=urlencode({"token": "wrong-token-wrong-token"})).status == 401
        login = call(f"{base}/login", "POST", body=urlencode({"token": TOKEN}))
        assert login.status == 303
        cookie_line = login.headers["Set-Cookie"]
        assert "HttpOnly" in cookie_line and "SameSite=strict" in cookie_line and TOKEN not in cookie_line
        cookie = {"Cookie": cookie_line.split(";")[0]}
        page = call(f"{base}/queues/{queue_name}", headers=cookie).body
        csrf = page.split('name="csrf" value="')[1].split('"')[0]
        assert len(csrf) > 20
        assert call(f"{base}/queues/{queue_name}/pause", "POST", headers=cookie, body="").status == 403
        assert call(f"{base}/queues/{queue_name}/pause", "POST", headers=cookie, body=urlencode({"csrf": "x" * 43})).status == 403
        assert not queue.is_paused()
        done = call(f"{base}/queues/{queue_name}/pause", "POST", headers=cookie, body=urlencode({"csrf": csrf}))
        assert done.status == 303 and queue.is_paused()
        assert "paused" in call(base + done.headers["Location"], headers=cookie).body


def test_dead_letters_are_paged_on_the_server_newest_first(shared_redis, queue_name):
    """GET /api/queues/{name}/dead pages through 120 dead letters newest first, each once; the HTML pages link older and newer."""
    ids = [f"m{i:03}" for i in range(120)]
    dead_letters(shared_redis.url, queue_name, ids)
    with serving(shared_redis.client()) as base:
        pages = [json.loads(call(f"{base}/api/queues/{queue_name}/dead?offset={offset}&limit=50").body) for offset in (0, 50, 100, 150)]
        html = call(f"{base}/queues/{queue_name}/dead?page=2&per_page=50").body
    assert [page["total"] for page in pages] == [120] * 4
    assert [len(page["entries"]) for page in pages] == [50, 50, 20, 0]
    seen = [entry["id"] for page in pages for entry in page["entries"]]
    assert seen == list(reversed(ids))  # a burst worker dead-letters them in order
    assert "page 2 of 3" in html and 'rel="prev"' in html and 'rel="next"' in html
    assert "m069" in html and "m070" not in html and "m019" not in html


def test_hostile_ids_and_bodies_are_escaped_and_still_work(shared_redis, client, queue_name):
    """A dead letter whose id and error hold markup is shown escaped on every page, found by id, and requeued through the API by its URL-quoted id."""
    dead_letters(shared_redis.url, queue_name, [HOSTILE])
    client.rpush(f"{{{queue_name}}}:dead", b'\xff<img src=x onerror=alert(1)>')  # written by hand: not even UTF-8
    with serving(shared_redis.client(), token=TOKEN) as base:
        pages = [call(f"{base}/queues/{queue_name}/dead").body, call(f"{base}/queues/{queue_name}/dead?{urlencode({'id': HOSTILE})}").body,
                 call(f"{base}/queues/{queue_name}/message?{urlencode({'id': HOSTILE})}").body]
        for page in pages:
            assert "<script>alert" not in page and "<img src=x" not in page
        assert "&lt;script&gt;alert(&#34;x&#34;)&lt;/script&gt;" in pages[0]
        assert "1 with this id" in pages[1]
        found = json.loads(call(f"{base}/api/queues/{queue_name}/messages/{quote(HOSTILE, safe='')}").body)
        assert [place["place"] for place in found["found"]] == ["dead"] and found["found"][0]["message"]["id"] == HOSTILE
        listed = json.loads(call(f"{base}/api/queues/{queue_name}/dead").body)["entries"]
        assert listed[0]["raw_base64"] and listed[0]["id"] is None
        requeued = call(f"{base}/api/queues/{queue_name}/dead/{quote(HOSTILE, safe='')}/requeue", "POST", headers=BEARER)
        assert requeued.status == 200 and json.loads(requeued.body) == {"requeued": 1, "id": HOSTILE}
        for answer in (call(f"{base}/"), call(f"{base}/queues/{queue_name}")):
            assert "default-src 'self'" in answer.headers["Content-Security-Policy"] and answer.headers["X-Frame-Options"] == "DENY"
    assert json.loads(client.lindex(queue_name, 0))["id"] == HOSTILE


def test_a_message_is_located_wherever_it_is_and_the_lookup_is_bounded(shared_redis, client, queue_name):
    """The lookup finds a message pending (with its position), in flight (with its worker), delayed (with its due time), dead (with its error) and completed; past its limit it says it did not look everywhere."""
    queue = Queue.connect(shared_redis.url, queue_name, max_attempts=2, retry_backoff=600, retry_backoff_max=600)
    queue.push({"n": 0}, message_id="done-one")
    Worker(queue, lambda m: None, burst=True).run()
    Queue.connect(shared_redis.url, queue_name, max_attempts=1).push({"n": 2}, message_id="dead-one")
    Worker(Queue.connect(shared_redis.url, queue_name, max_attempts=1), lambda m: 1 / 0, burst=True).run()
    queue.push({"n": 1}, message_id="delayed-one")
    with running(Worker(queue, lambda m: 1 / 0)):  # the first failure waits out a 600 s backoff
        wait_until(lambda: queue.stats()["delayed"] == 1, timeout=10)
    queue.push_many([{"n": 3}])
    consumer = queue.consumer("host-a-123-abc")
    consumer.join()
    consumer.fetch(1)
    assert len(consumer.in_flight()) == 1  # the one just pushed is now in flight
    for i in range(5):
        queue.push({"n": 10 + i}, message_id=f"waiting-{i}")
    with serving(shared_redis.client(), locate_limit=10_000) as base:
        def where(message_id, limit=""):
            return json.loads(call(f"{base}/api/queues/{queue_name}/messages/{message_id}{'?limit=' + limit if limit else ''}").body)

        pending = where("waiting-3")
        assert [(p["place"], p["index"]) for p in pending["found"]] == [("pending", 3)] and pending["complete"]
        delayed = where("delayed-one")["found"][0]
        assert delayed["place"] == "delayed" and 0 < delayed["due_at"] - time.time() <= 601  # backoff with jitter
        dead = where("dead-one")["found"][0]
        assert dead["place"] == "dead" and dead["message"]["error"].startswith("ZeroDivisionError")
        assert [p["place"] for p in where("done-one")["found"]] == ["completed"]
        in_flight_id = json.loads(consumer.in_flight()[0])["id"]
        held = where(in_flight_id)["found"]
        assert [(p["place"], p["worker"]) for p in held] == [("in_flight", "host-a-123-abc")]
        nowhere = where("no-such-id")
        assert nowhere["found"] == [] and nowhere["complete"]
        bounded = where("waiting-4", limit="2")
        assert bounded["found"] == [] and not bounded["complete"] and bounded["looked"]["pending"] == {"looked": 2, "total": 5}
        page = call(f"{base}/queues/{queue_name}").body
        assert "host-a-123-abc" in page and ">host-a<" in page
        html = call(f"{base}/queues/{queue_name}/message?id=delayed-one").body
        assert "delayed: retried from" in html


def test_rates_are_sampled_from_the_counters(shared_redis, queue_name):
    """The sampler turns the counters into completed and failed per second; the API shows them once two samples exist."""
    queue = Queue.connect(shared_redis.url, queue_name, max_attempts=1)
    queue.register()
    with serving(shared_redis.client(), sample_interval=0.2) as base:
        wait_until(lambda: json.loads(call(f"{base}/api/queues/{queue_name}").body)["rates"], timeout=10)  # two samples before any work
        queue.push_many([{"n": i} for i in range(20)])
        Worker(queue, lambda m: None if m.body["n"] % 4 else 1 / 0, burst=True).run()

        def counted():
            rates = json.loads(call(f"{base}/api/queues/{queue_name}").body)["rates"]
            return sum(r["completed_per_second"] for r in rates) > 0 and sum(r["failed_per_second"] for r in rates) > 0 and rates

        rates = wait_until(counted, timeout=10)
        assert all(r["completed_per_second"] >= 0 and r["failed_per_second"] >= 0 for r in rates)
        assert "<polyline" in call(f"{base}/").body


def web(*args, env, timeout=30):
    return subprocess.run([PYTHON, "-m", "workqueue", "web", *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)


def test_the_web_command_refuses_bad_settings_in_one_line(shared_redis, queue_name):
    """A short WEB_TOKEN, a bad port, a port in use and an unreachable Redis each give one line and the documented exit code; the token is never printed."""
    env = script_env(shared_redis.url, queue_name)
    short = web(env={**env, "WEB_TOKEN": "hunter2"})
    assert short.returncode == 2 and short.stderr.count("\n") == 1 and "WEB_TOKEN" in short.stderr and "hunter2" not in short.stderr
    bad_port = web("--port", "http", env=env)
    assert bad_port.returncode == 2 and bad_port.stderr.startswith("error: --port ")
    with serving(shared_redis.client()) as base:
        taken = web("--port", base.rsplit(":", 1)[1], env=env)
    assert taken.returncode == 2 and taken.stderr.count("\n") == 1 and "cannot listen" in taken.stderr
    down = web(env=script_env(f"redis://:hunter2@127.0.0.1:{free_port()}/0", queue_name))
    assert down.returncode == 1 and down.stderr.count("\n") == 1 and "hunter2" not in down.stderr and "Traceback" not in down.stderr


def test_the_web_command_serves_and_warns_when_exposed_without_a_token(shared_redis, queue_name):
    """`workqueue web --host 0.0.0.0` warns that it is exposed without WEB_TOKEN, serves the pages, and exits 0 on SIGTERM."""
    Queue.connect(shared_redis.url, queue_name).push({"n": 1})
    port = free_port()
    process = subprocess.Popen([PYTHON, "-m", "workqueue", "web", "--host", "0.0.0.0", "--port", str(port)], cwd=ROOT,
                               env=script_env(shared_redis.url, queue_name), stderr=subprocess.PIPE, text=True)
    try:
        lines = [process.stderr.readline(), process.stderr.readline()]
        assert lines[0].startswith("warning: listening on 0.0.0.0") and "without WEB_TOKEN" in lines[0]
        assert lines[1].startswith(f"workqueue web: serving http://0.0.0.0:{port}/") and "read-only" in lines[1]
        page = call(f"http://127.0.0.1:{port}/")
        assert page.status == 200 and queue_name in page.body
    finally:
        process.terminate()
        assert process.wait(timeout=15) == 0


def test_groups_show_their_progress_on_the_queue_page_and_in_the_api(shared_redis, queue_name):
    """A queue's page and GET /api/queues/{name}/groups show each group started on it, open ones first, with its counts; a hostile group name is escaped."""
    queue = Queue.connect(shared_redis.url, queue_name)
    queue.push_many([{}, {}], group="finished", on_complete=queue_name + "-done")
    Worker(queue, lambda message: None, burst=True).run()
    queue.push_many([{}], group="<b>open</b>", on_complete=queue_name + "-done")
    with serving(shared_redis.client()) as base:
        answer = call(f"{base}/api/queues/{quote(queue_name)}/groups")
        page = call(f"{base}/queues/{quote(queue_name)}")
    groups = json.loads(answer.body)
    assert [(g["group"], g["done"], g["completed"], g["pending"]) for g in groups] == [("<b>open</b>", False, 0, 1), ("finished", True, 2, 0)]
    html = page.body
    assert "&lt;b&gt;open&lt;/b&gt;" in html and "<b>open</b>" not in html and "finished" in html
