"""The handler a worker command serves, named on its command line as MODULE:ATTR (as `rq worker`,
`dramatiq module` and `arq module.WorkerSettings` name theirs): the module is imported from the
current folder first, as with `python -m`. ATTR may also name a dict of queue name -> handler.
Only ever a name the operator typed, never one from a message."""

from __future__ import annotations

import importlib
import os
import sys
from typing import Any

from ..values import queue_name
from .handlers import Handler, check_handler


class HandlerNotFound(Exception):
    """MODULE:ATTR names nothing a worker can serve; the text says why, in one line."""


def load_target(spec: str) -> Handler | dict[str, Handler]:
    """What `spec` (MODULE:ATTR, ATTR perhaps dotted) names: a handler, or a dict of queue name
    -> handler (a worker command then serves each queue); raises HandlerNotFound."""
    module_name, colon, attr = spec.partition(":")
    if not colon or not module_name or not attr:
        raise HandlerNotFound(f"{spec!r} is not MODULE:ATTR, as in tasks:resize")
    here = os.getcwd()
    if here not in sys.path:
        sys.path.insert(0, here)
    try:
        found: Any = importlib.import_module(module_name)
    except BaseException as error:  # the module's own code runs here: whatever it raises, say so in one line
        raise HandlerNotFound(f"cannot import {module_name}: {type(error).__name__}: {error}") from None
    for part in attr.split("."):
        try:
            found = getattr(found, part)
        except AttributeError:
            raise HandlerNotFound(f"{module_name} has no {attr}") from None
    if isinstance(found, dict):
        if not found:
            raise HandlerNotFound(f"{spec} is an empty dict: it names no queue to serve")
        for queue, each in found.items():
            try:
                if type(queue) is not str:
                    raise TypeError(f"a queue name must be a string, not {type(queue).__name__}")
                queue_name(queue)
                check_handler(each)
            except (TypeError, ValueError) as error:
                raise HandlerNotFound(f"{spec}[{queue!r}]: {error}") from None
        handlers: dict[str, Handler] = dict(found)
        return handlers
    try:
        check_handler(found)
    except TypeError as error:
        raise HandlerNotFound(f"{spec}: {error}") from None
    handler: Handler = found
    return handler


def load_handler(spec: str, queue: str | None = None) -> Handler:
    """The handler `spec` names for `queue`: the handler itself, or, when it names a dict of
    queues, the one for `queue`; raises HandlerNotFound."""
    found = load_target(spec)
    if not isinstance(found, dict):
        return found
    if queue is None:
        raise HandlerNotFound(f"{spec} names a dict of queues: serve it with `workqueue worker {spec}`")
    if queue not in found:
        raise HandlerNotFound(f"{spec} has no handler for the queue {queue!r} (it has {', '.join(map(repr, found))})")
    return found[queue]
