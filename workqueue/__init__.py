"""workqueue: distributed work for Python on Redis lists, with nothing lost."""

from importlib.metadata import PackageNotFoundError, version

from .handlers import JobTimeout, WorkerAborted
from .message import Message
from .outages import RedisRefused
from .protocol import Delivery
from .queue import Queue
from .settings import ConfigError, Settings
from .worker import Worker

try:
    __version__ = version("workqueue")
except PackageNotFoundError:  # run from a source tree that was never installed
    __version__ = "unknown"

__all__ = ["ConfigError", "Delivery", "JobTimeout", "Message", "Queue", "RedisRefused", "Settings", "Worker", "WorkerAborted", "__version__"]
