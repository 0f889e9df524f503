"""The handler a worker command serves, named on its command line as MODULE:ATTR (as `rq worker`,
`dramatiq module` and `arq module.WorkerSettings` name theirs): the module is imported from the
current folder first, as with `python -m`. Only ever a name the operator typed, never one from a
message."""

from __future__ import annotations

import importlib
import os
import sys
from typing import Any

from .handlers import Handler, check_handler


class HandlerNotFound(Exception):
    """MODULE:ATTR names nothing a worker can serve; the text says why, in one line."""


def load_handler(spec: str) -> Handler:
    """The handler `spec` (MODULE:ATTR, ATTR perhaps dotted) names; raises HandlerNotFound."""
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
    try:
        check_handler(found)
    except TypeError as error:
        raise HandlerNotFound(f"{spec}: {error}") from None
    handler: Handler = found
    return handler
