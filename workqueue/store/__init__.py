"""The Redis side: connections and timeouts (transport, cluster), what a Redis error means
(outages), key names (keys), the Lua scripts (scripts, lua/), and the protocol calls built on
them: a worker's (consumer), recovery of dead workers', stats, and the dead-letter list.

Nothing here imports the queue, the worker or the command line."""

from .handle import Store

__all__ = ["Store"]
