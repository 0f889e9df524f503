"""The worker: its loop (loop.py) and the parts it is made of, each in a module of its own:
the handler runner (handlers), what it holds (held), the requests that overlap its work
(pipeline), one message processed (processing), its session with Redis (session), and its
housekeeping thread (housekeeper)."""

from .loop import Worker

__all__ = ["Worker"]
