"""The web dashboard, `workqueue web`: queues, workers, dead letters and messages by id in a
browser, with a JSON API under /api, and actions (pause, resume, requeue, purge) behind a token.

It needs the optional extra `web` (Starlette, uvicorn, Jinja2); nothing here is imported by the
rest of the library, and the command line imports it only for the `web` command.
"""
