"""workqueue: distributed work for Python on Redis lists, with nothing lost."""

from importlib.metadata import PackageNotFoundError, version

from .message import Message
from .protocol import Delivery
from .queue import GroupError, Queue
from .settings import ConfigError, Settings
from .signing import MessageTooLarge
from .store.outages import RedisRefused, ReplicasShortfall
from .worker import Worker
from .worker.handlers import JobTimeout, WorkerAborted

try:
    __version__ = version("workqueue-redis")  # the distribution: the import name is workqueue
except PackageNotFoundError:  # run from a source tree that was never installed
    __version__ = "unknown"

__all__ = [
    "ConfigError", "Delivery", "GroupError", "JobTimeout", "Message", "MessageTooLarge", "Queue", "RedisRefused", "ReplicasShortfall", "Settings",
    "Worker", "WorkerAborted", "__version__",
]
