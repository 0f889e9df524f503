"""workqueue: distributed work for Python on Redis lists, with nothing lost."""

from .message import Message
from .queue import Queue
from .settings import ConfigError, Settings
from .worker import Worker

__all__ = ["ConfigError", "Message", "Queue", "Settings", "Worker"]
