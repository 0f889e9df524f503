"""How a figure reads for people, the same in the terminal (cli/) and the browser (web/)."""

from __future__ import annotations

import time
from typing import Any


def show(value: Any) -> str:
    """One figure: yes/no, '-' for unknown, seconds to the millisecond."""
    if isinstance(value, bool):
        return "yes" if value else "no"
    if value is None:
        return "-"
    return f"{value:.3f}" if isinstance(value, float) else str(value)


def when(unix: float | None) -> str:
    """A Unix time as UTC ISO 8601 to the second, or '-'."""
    return "-" if unix is None else time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(unix))
