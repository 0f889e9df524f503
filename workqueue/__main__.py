"""Entry point of `python -m workqueue`: load .env as the scripts do, then the CLI."""

import sys

from .cli import main
from .settings import load_env_file

if __name__ == "__main__":
    load_env_file()
    sys.exit(main())
