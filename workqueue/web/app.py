"""The dashboard as a Starlette application: HTML pages, the JSON API under /api, the actions.

Every Redis read and change goes through the library (data.py, Queue, DeadLetters, lookup),
in Starlette's thread pool, each call bounded by the client's timeouts. Pages are Jinja2
templates with autoescape: whatever Redis holds is shown as text. Actions are POST requests
that the Guard (auth.py) lets through; the strict Content-Security-Policy allows only the
dashboard's own files, which ship with the package (no CDN).
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, quote, urlencode

import redis
from jinja2 import Environment, PackageLoader, StrictUndefined
from redis.exceptions import RedisError
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ..figures import show, when
from ..queue import Queue
from ..store.dead import DeadLetter
from ..store.lookup import LOCATE_LIMIT
from ..store.stats import STATS_FIELDS
from . import data
from .auth import COOKIE, SESSION_SECONDS, Guard, Refusal
from .rates import SAMPLE_SECONDS, RateRing, Sampler, chart

PAGE_SIZE = 50  # dead letters per page by default
MOST_PER_PAGE = 500
MOST_LOOKED_AT = 100_000  # the most ?limit= may ask a lookup to look at per place
MOST_FORM_BYTES = 1024 * 1024  # a selection of thousands of ids fits
SECURITY_HEADERS = [
    (b"content-security-policy", b"default-src 'self'; frame-ancestors 'none'; form-action 'self'; base-uri 'none'"),
    (b"x-content-type-options", b"nosniff"),
    (b"x-frame-options", b"DENY"),
    (b"referrer-policy", b"no-referrer"),
]

GROUPS_SHOWN = 50  # groups a queue's page and /api/queues/{name}/groups show: the open ones first


class SecurityHeaders:
    """Adds SECURITY_HEADERS to every response."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        async def sending(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = list(message.get("headers", [])) + SECURITY_HEADERS
            await send(message)

        await self.app(scope, receive, sending)


class Unavailable(Exception):
    """Redis did not answer, or refused: shown as 503 with one line, never its password."""


class Dashboard:
    """What the routes share: the queues on one Redis, the rate ring and its sampler, the guard
    and the templates."""

    def __init__(self, client: redis.Redis, token: str, location: str, *, sample_interval: float = SAMPLE_SECONDS,
                 locate_limit: int = LOCATE_LIMIT) -> None:
        self.library = data.Library(client)
        self.location = location
        self.guard = Guard(token)
        self.ring = RateRing()
        self.sampler = Sampler(self.ring, self.library.all_counters, sample_interval)
        self.locate_limit = locate_limit
        self.templates = Environment(loader=PackageLoader("workqueue.web", "templates"), autoescape=True, undefined=StrictUndefined)
        self.templates.filters.update(when=when, show=show, quoted=lambda value: quote(str(value), safe=""))

    async def read(self, function: Callable[..., Any], *args: Any) -> Any:
        """Run a synchronous read or change in the thread pool; a Redis error becomes Unavailable."""
        try:
            return await run_in_threadpool(function, *args)
        except (RedisError, RuntimeError) as error:
            raise Unavailable(f"Redis at {self.location} did not answer: {type(error).__name__}") from error

    def render(self, request: Request, template: str, http_status: int = 200, **context: Any) -> HTMLResponse:
        session = self.guard.session(request.cookies.get(COOKIE))
        page = self.templates.get_template(template).render(
            read_only=self.guard.read_only, logged_in=session is not None, csrf=session.csrf if session else "",
            location=self.location, notice=request.query_params.get("notice", ""), **context)
        return HTMLResponse(page, status_code=http_status)

    async def queue_or_404(self, name: str) -> Queue | None:
        found: Queue | None = await self.read(self.library.queue, name)
        return found


async def read_form(request: Request) -> dict[str, list[str]]:
    """The urlencoded fields of a form (at most MOST_FORM_BYTES)."""
    if int(request.headers.get("content-length") or 0) > MOST_FORM_BYTES:
        return {}
    body = await request.body()
    return parse_qs(body[:MOST_FORM_BYTES].decode(errors="replace"), keep_blank_values=True, max_num_fields=20_000)


def first(form: dict[str, list[str]], name: str) -> str:
    return form.get(name, [""])[0]


def chosen(form: dict[str, list[str]]) -> list[str]:
    """The ids a dead-letter form acts on: the one of a row's own button, else the boxes ticked."""
    return [i for i in form.get("one", []) or form.get("ids", []) if i]


def number(raw: str | None, default: int, lowest: int, highest: int) -> int:
    """A query parameter as an int within [lowest, highest]; the default when it is not one."""
    try:
        return min(highest, max(lowest, int(raw or default)))
    except ValueError:
        return default


def create_app(client: redis.Redis, token: str, location: str, *, sample_interval: float = SAMPLE_SECONDS,
               locate_limit: int = LOCATE_LIMIT) -> Starlette:
    """The dashboard of every registered queue on this client's Redis; `token` ("" for none)
    allows actions; `location` names the Redis on pages (host:port/db, never a password)."""
    board = Dashboard(client, token, location, sample_interval=sample_interval, locate_limit=locate_limit)
    guard = board.guard

    def refused_html(request: Request, refusal: Refusal) -> HTMLResponse:
        return board.render(request, "refused.html", refusal.status, reason=refusal.reason, status=refusal.status)

    def refused_json(refusal: Refusal) -> JSONResponse:
        headers = {"WWW-Authenticate": "Bearer"} if refusal.status == 401 else None
        return JSONResponse({"error": refusal.reason}, status_code=refusal.status, headers=headers)

    def not_found_html(request: Request, what: str) -> HTMLResponse:
        return board.render(request, "refused.html", 404, reason=what, status=404)

    # -- pages -----------------------------------------------------------------------------------

    async def overview(request: Request) -> Response:
        rows = await board.read(board.library.all_stats)
        charts = {name: chart(board.ring.rates(name)) for name, _ in rows}
        return board.render(request, "queues.html", rows=rows, charts=charts, live=request.query_params.get("live") == "1")

    async def queue_page(request: Request) -> Response:
        name = request.path_params["name"]
        queue = await board.queue_or_404(name)
        if queue is None:
            return not_found_html(request, f"no registered queue named {name}")
        stats = await board.read(queue.stats)
        workers = await board.read(data.workers, queue)
        groups = await board.read(queue.groups, GROUPS_SHOWN)
        return board.render(request, "queue.html", name=name, stats=stats, fields=STATS_FIELDS, workers=workers, groups=groups,
                            chart=chart(board.ring.rates(name)), now=time.time(), live=request.query_params.get("live") == "1")

    async def dead_page(request: Request) -> Response:
        name = request.path_params["name"]
        queue = await board.queue_or_404(name)
        if queue is None:
            return not_found_html(request, f"no registered queue named {name}")
        per_page = number(request.query_params.get("per_page"), PAGE_SIZE, 1, MOST_PER_PAGE)
        page = number(request.query_params.get("page"), 1, 1, 10**9)
        wanted = request.query_params.get("id", "")
        searched = None
        if wanted:
            located = await board.read(data.find, queue, wanted, board.locate_limit)
            entries = [DeadLetter.parse(p.stored) for p in located.places if p.place == "dead" and p.stored is not None]
            total = located.looked["dead"].total
            searched = located.looked["dead"]
        else:
            entries, total = await board.read(queue.dead.page, (page - 1) * per_page, per_page)
        pages = max(1, -(-total // per_page))
        return board.render(request, "dead.html", name=name, entries=entries, total=total, page=page, pages=pages,
                            per_page=per_page, wanted=wanted, searched=searched)

    async def message_page(request: Request) -> Response:
        name = request.path_params["name"]
        queue = await board.queue_or_404(name)
        if queue is None:
            return not_found_html(request, f"no registered queue named {name}")
        wanted = request.query_params.get("id", "")
        found = None
        if wanted:
            found = data.found_json(await board.read(data.find, queue, wanted, board.locate_limit))
        return board.render(request, "message.html", name=name, wanted=wanted, found=found)

    async def login_page(request: Request) -> Response:
        return board.render(request, "login.html", failed=False)

    async def login(request: Request) -> Response:
        form = await read_form(request)
        session_id = guard.login(first(form, "token"))
        if session_id is None:
            return board.render(request, "login.html", 403 if guard.read_only else 401, failed=True)
        response = RedirectResponse("/", status_code=303)
        response.set_cookie(COOKIE, session_id, max_age=SESSION_SECONDS, httponly=True, samesite="strict", path="/")
        return response

    async def logout(request: Request) -> Response:
        form = await read_form(request)
        if guard.refusal(None, request.cookies.get(COOKIE), first(form, "csrf")) is None:
            guard.logout(request.cookies.get(COOKIE))
        response = RedirectResponse("/", status_code=303)
        response.delete_cookie(COOKIE, path="/")
        return response

    def form_action(act: Callable[[Queue, dict[str, list[str]]], str | Refusal], back: str) -> Callable[[Request], Awaitable[Response]]:
        """A form's POST: the guard first, then `act`, then back to the page `back` names with a notice."""
        async def endpoint(request: Request) -> Response:
            form = await read_form(request)
            refusal = guard.refusal(request.headers.get("authorization"), request.cookies.get(COOKIE), first(form, "csrf"))
            if refusal is not None:
                return refused_html(request, refusal)
            name = request.path_params["name"]
            queue = await board.queue_or_404(name)
            if queue is None:
                return not_found_html(request, f"no registered queue named {name}")
            said = await board.read(act, queue, form)
            if isinstance(said, Refusal):
                return refused_html(request, said)
            return RedirectResponse(f"/queues/{quote(name, safe='')}{back}?{urlencode({'notice': said})}", status_code=303)
        return endpoint

    def pause(queue: Queue, form: dict[str, list[str]]) -> str:
        return f"queue {queue.name} paused" if queue.pause() else f"queue {queue.name} was paused already"

    def resume(queue: Queue, form: dict[str, list[str]]) -> str:
        return f"queue {queue.name} resumed" if queue.resume() else f"queue {queue.name} was not paused"

    def requeue_form(queue: Queue, form: dict[str, list[str]]) -> str | Refusal:
        if first(form, "all"):
            if first(form, "confirm") != "yes":
                return Refusal(400, "requeue all: tick the confirmation box first")
            outcome = queue.dead.requeue(None)
            return f"requeued {outcome.changed} dead letters; left {outcome.malformed_left} malformed"
        ids = chosen(form)
        if not ids:
            return Refusal(400, "no dead letter chosen")
        outcome = queue.dead.requeue(ids)
        return (f"requeued {outcome.changed} dead letters" + (f"; not found: {len(outcome.missing)}" if outcome.missing else "")
                + (f"; malformed, left: {len(outcome.malformed)}" if outcome.malformed else ""))

    def purge_form(queue: Queue, form: dict[str, list[str]]) -> str | Refusal:
        if first(form, "all"):
            if first(form, "confirm") != "yes":
                return Refusal(400, "purge all: tick the confirmation box first")
            return f"purged {queue.dead.purge_all()} dead letters"
        ids = chosen(form)
        if not ids:
            return Refusal(400, "no dead letter chosen")
        outcome = queue.dead.purge(ids)
        return f"purged {outcome.changed} dead letters" + (f"; not found: {len(outcome.missing)}" if outcome.missing else "")

    # -- the JSON API ----------------------------------------------------------------------------

    async def api_action(request: Request) -> tuple[Queue | None, JSONResponse | None]:
        """The guard, then the queue: (queue, None) to act, or (None, the answer)."""
        refusal = guard.refusal(request.headers.get("authorization"), request.cookies.get(COOKIE), request.headers.get("x-csrf-token"))
        if refusal is not None:
            return None, refused_json(refusal)
        return await api_queue(request)

    async def api_queue(request: Request) -> tuple[Queue | None, JSONResponse | None]:
        name = request.path_params["name"]
        queue = await board.queue_or_404(name)
        if queue is None:
            return None, JSONResponse({"error": f"no registered queue named {name}"}, status_code=404)
        return queue, None

    async def api_queues(request: Request) -> Response:
        rows = await board.read(board.library.all_stats)
        return JSONResponse([{"queue": name, **(stats if stats is not None else dict.fromkeys(STATS_FIELDS))} for name, stats in rows])

    async def api_one_queue(request: Request) -> Response:
        queue, answer = await api_queue(request)
        if queue is None:
            return answer or JSONResponse({}, status_code=500)
        stats = await board.read(queue.stats)
        workers = await board.read(data.workers, queue)
        rates = [{"at": r.at, "completed_per_second": r.completed, "failed_per_second": r.failed} for r in board.ring.rates(queue.name)]
        return JSONResponse({"queue": queue.name, **stats, "worker_list": [w.to_json() for w in workers], "rates": rates})

    async def api_groups(request: Request) -> Response:
        queue, answer = await api_queue(request)
        if queue is None:
            return answer or JSONResponse({}, status_code=500)
        return JSONResponse(await board.read(queue.groups, GROUPS_SHOWN))

    async def api_dead(request: Request) -> Response:
        queue, answer = await api_queue(request)
        if queue is None:
            return answer or JSONResponse({}, status_code=500)
        offset = number(request.query_params.get("offset"), 0, 0, 10**12)
        limit = number(request.query_params.get("limit"), PAGE_SIZE, 1, MOST_PER_PAGE)
        entries, total = await board.read(queue.dead.page, offset, limit)
        return JSONResponse({"total": total, "offset": offset, "limit": limit, "entries": [e.to_json() for e in entries]})

    async def api_requeue(request: Request) -> Response:
        queue, answer = await api_action(request)
        if queue is None:
            return answer or JSONResponse({}, status_code=500)
        message_id = request.path_params["id"]
        outcome = await board.read(queue.dead.requeue, [message_id])
        if outcome.malformed:
            return JSONResponse({"error": "this dead letter is malformed and cannot be requeued", "id": message_id}, status_code=409)
        if outcome.missing:
            return JSONResponse({"error": "no dead letter with this id", "id": message_id}, status_code=404)
        return JSONResponse({"requeued": outcome.changed, "id": message_id})

    async def api_purge(request: Request) -> Response:
        queue, answer = await api_action(request)
        if queue is None:
            return answer or JSONResponse({}, status_code=500)
        message_id = request.path_params["id"]
        outcome = await board.read(queue.dead.purge, [message_id])
        if outcome.missing:
            return JSONResponse({"error": "no dead letter with this id", "id": message_id}, status_code=404)
        return JSONResponse({"purged": outcome.changed, "id": message_id})

    def api_pause_or_resume(pausing: bool) -> Callable[[Request], Awaitable[Response]]:
        async def endpoint(request: Request) -> Response:
            queue, answer = await api_action(request)
            if queue is None:
                return answer or JSONResponse({}, status_code=500)
            changed = await board.read(queue.pause if pausing else queue.resume)
            return JSONResponse({"queue": queue.name, "paused": pausing, "changed": changed})
        return endpoint

    async def api_message(request: Request) -> Response:
        queue, answer = await api_queue(request)
        if queue is None:
            return answer or JSONResponse({}, status_code=500)
        limit = number(request.query_params.get("limit"), board.locate_limit, 1, MOST_LOOKED_AT)
        located = await board.read(data.find, queue, request.path_params["id"], limit)
        return JSONResponse({"id": request.path_params["id"], **data.found_json(located)})

    async def unavailable(request: Request, error: Exception) -> Response:
        if request.url.path.startswith("/api/"):
            return JSONResponse({"error": str(error)}, status_code=503)
        return board.render(request, "refused.html", 503, reason=str(error), status=503)

    @asynccontextmanager
    async def lifespan(app: Starlette) -> Any:
        board.sampler.start()
        try:
            yield
        finally:
            await run_in_threadpool(board.sampler.stop)

    routes = [
        Route("/", overview),
        Route("/login", login_page, methods=["GET"]),
        Route("/login", login, methods=["POST"]),
        Route("/logout", logout, methods=["POST"]),
        Route("/queues/{name}/dead", dead_page),
        Route("/queues/{name}/dead/requeue", form_action(requeue_form, "/dead"), methods=["POST"]),
        Route("/queues/{name}/dead/purge", form_action(purge_form, "/dead"), methods=["POST"]),
        Route("/queues/{name}/message", message_page),
        Route("/queues/{name}/pause", form_action(pause, ""), methods=["POST"]),
        Route("/queues/{name}/resume", form_action(resume, ""), methods=["POST"]),
        Route("/queues/{name}", queue_page),
        Route("/api/queues", api_queues),
        Route("/api/queues/{name}", api_one_queue),
        Route("/api/queues/{name}/dead", api_dead),
        Route("/api/queues/{name}/groups", api_groups),
        Route("/api/queues/{name}/dead/{id:path}/requeue", api_requeue, methods=["POST"]),
        Route("/api/queues/{name}/dead/{id:path}/purge", api_purge, methods=["POST"]),
        Route("/api/queues/{name}/pause", api_pause_or_resume(True), methods=["POST"]),
        Route("/api/queues/{name}/resume", api_pause_or_resume(False), methods=["POST"]),
        Route("/api/queues/{name}/messages/{id:path}", api_message),
        Mount("/static", StaticFiles(directory=Path(__file__).parent / "static"), name="static"),
    ]
    app = Starlette(routes=routes, lifespan=lifespan, exception_handlers={Unavailable: unavailable})
    app.add_middleware(SecurityHeaders)
    app.state.dashboard = board
    return app
