"""The command line, `workqueue` or `python -m workqueue`: parsing and exit codes (main),
what each command prints (report), the live view (top)."""

from .main import main

__all__ = ["main"]
