"""Entry point of `python -m workqueue`: load .env from the working directory, then the CLI."""

import sys

from dotenv import find_dotenv, load_dotenv

from .cli import main

if __name__ == "__main__":
    load_dotenv(find_dotenv(usecwd=True), override=False)
    sys.exit(main())
