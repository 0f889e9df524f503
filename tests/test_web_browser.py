"""The dashboard in a real browser: Debian's chromium, headless, driven by Playwright (no browser download)."""

import json
import os
import shutil
from pathlib import Path

import pytest
from support import ROOT, running, wait_until
from web_support import call, serving, web_redis  # noqa: F401 (a fixture: shared_redis, this module's own)

from workqueue import Queue, Worker

pytest.importorskip("starlette", reason="the web dashboard needs the optional extra web")
playwright = pytest.importorskip("playwright.sync_api", reason="the browser test needs playwright (the test extra)")

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
TOKEN = "a-browser-test-token-0123456789"
# WEB_SCREENSHOT=docs/dashboard.png: the test saves the overview there (the README's picture).
SCREENSHOT = os.environ.get("WEB_SCREENSHOT", "")


@pytest.fixture
def browser():
    """A headless chromium page; the test skips, saying why, when no chromium is installed (CI installs it)."""
    if not Path(CHROMIUM).exists():
        pytest.skip("no chromium at /usr/bin/chromium: apt-get install chromium (.ci/run installs it)")
    with playwright.sync_playwright() as driver:
        launched = driver.chromium.launch(executable_path=CHROMIUM, headless=True, args=["--no-sandbox"])
        try:
            page = launched.new_page(viewport={"width": 1280, "height": 720})
            page.set_default_timeout(15_000)
            yield page
        finally:
            launched.close()


def seed(url: str, name: str) -> tuple[Queue, list[str]]:
    """A queue with figures of every kind: completed and failed work, three dead letters, pending messages."""
    queue = Queue.connect(url, name, max_attempts=1)
    queue.push_many([{"n": i} for i in range(12)])
    Worker(queue, lambda m: None, burst=True).run()
    dead_ids = [queue.push({"image": f"/uploads/{i}.png"}, message_id=f"resize-{i}") for i in range(3)]
    Worker(queue, lambda m: 1 / 0, burst=True).run()
    queue.push_many([{"n": i} for i in range(7)])
    return queue, dead_ids


def rates(base: str, name: str) -> list[dict]:
    return json.loads(call(f"{base}/api/queues/{name}").body)["rates"]


@pytest.mark.slow
def test_the_dashboard_in_a_browser_shows_queues_and_requeues_a_dead_letter_found_by_id(shared_redis, queue_name, browser):
    """The overview shows the seeded figures; requeue without logging in is refused and changes nothing; after logging in, a dead letter found by id is requeued by a click."""
    queue, dead_ids = seed(shared_redis.url, queue_name)
    other = Queue.connect(shared_redis.url, f"{queue_name}-emails")
    other.push({"to": "a@example.com"})
    with serving(shared_redis.client(), token=TOKEN, sample_interval=0.3) as base:
        if SCREENSHOT:  # some work between samples, so the picture has rates to draw
            with running(Worker(other, lambda m: None)):
                for i in range(12):
                    other.push_many([{"n": n} for n in range(5 * (i % 4 + 1))])
                    wait_until(lambda: other.stats()["pending"] == 0, timeout=10)
                    sampled = len(rates(base, other.name))
                    wait_until(lambda sampled=sampled: len(rates(base, other.name)) > sampled, timeout=10)
        page = browser
        page.goto(f"{base}/")
        row = page.locator(f'tr[data-queue="{queue_name}"]')
        assert row.locator("td.pending").inner_text() == "7"
        assert row.locator("td.dead").inner_text() == "3"
        assert row.locator("td.paused").inner_text() == "no"
        assert page.locator(f'tr[data-queue="{queue_name}-emails"]').count() == 1
        if SCREENSHOT:
            page.screenshot(path=str(ROOT / SCREENSHOT), full_page=True)

        row.locator("td.dead a").click()
        page.fill("input[name=id]", dead_ids[1])
        page.locator("form.search button").click()
        page.wait_for_url("**/dead?id=*")
        assert page.locator("#dead tbody tr").count() == 1
        page.locator("#dead button.requeue").click()
        assert "log in first" in page.locator(".refused").inner_text()
        assert queue.stats()["dead"] == 3

        page.goto(f"{base}/login")
        page.fill("input[name=token]", TOKEN)
        page.click("button:has-text('log in')")
        page.wait_for_url(f"{base}/")
        page.goto(f"{base}/queues/{queue_name}/dead")
        page.fill("input[name=id]", dead_ids[1])
        page.locator("form.search button").click()
        page.wait_for_url("**/dead?id=*")
        page.locator("#dead button.requeue").click()
        assert "requeued 1 dead letters" in page.locator(".notice").inner_text()
    stats = queue.stats()
    assert (stats["dead"], stats["pending"], stats["requeued"], stats["unaccounted"]) == (2, 8, 1, 0)
    assert [json.loads(m)["id"] for m in queue.peek(100)][-1] == dead_ids[1]  # back at the queue's tail
