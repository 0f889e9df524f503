"""The Lua script registry: each script of lua/ (after the shared prelude), known by
its SHA, loaded into Redis on the first NOSCRIPT reply, and called by name, through the transport."""

from __future__ import annotations

import hashlib
import os
import threading
from collections.abc import Sequence
from importlib.resources import files
from typing import Any

import redis
from redis.exceptions import NoScriptError, ResponseError

from .cluster import SlotMoved
from .outages import unwrapped
from .transport import Channel, Command, Key, send_together

SCRIPT_NAMES = ("push", "fetch", "woken", "settle", "heartbeat", "expired", "stats", "requeue", "purge", "pause", "register", "page", "locate")


class Scripts:
    """The queue's Lua scripts, loaded from lua/*.lua (each after the shared prelude)
    and called by SHA."""

    def __init__(self, client: redis.Redis) -> None:
        self.client = client
        lua = files("workqueue.store").joinpath("lua")
        prelude = lua.joinpath("prelude.lua").read_text()
        self.source = {name: prelude + "\n" + lua.joinpath(f"{name}.lua").read_text() for name in SCRIPT_NAMES}
        # The SHA is known without asking Redis; scripts are loaded on the first NOSCRIPT reply.
        self.sha = {name: hashlib.sha1(source.encode()).hexdigest() for name, source in self.source.items()}
        self._kept: Channel | None = None  # call_kept()'s connection, made on first use
        self._kept_pid = 0  # the process that made it
        self._kept_lock = threading.Lock()

    def load(self) -> None:
        """Load every script into Redis: once per server, and again after it loses its cache."""
        for source in self.source.values():
            self.client.script_load(source)

    def call(self, name: str, keys: Sequence[Key], args: Sequence[Any]) -> Any:
        """Run a script and return its reply (an error a command in it replied raised as that
        command's own, whatever the engine: transport.unwrapped)."""
        try:
            try:
                return self.client.evalsha(self.sha[name], len(keys), *keys, *args)
            except NoScriptError:
                # Not run at all, so running it again after loading is safe.
                self.load()
                return self.client.evalsha(self.sha[name], len(keys), *keys, *args)
        except ResponseError as error:
            inner = unwrapped(error)
            if inner is error:
                raise
            raise inner from error

    def call_kept(self, name: str, keys: Sequence[Key], args: Sequence[Any]) -> Any:
        """Run a script on a connection kept for it (a producer's pushes), written as a Channel
        writes: redis-py's own path takes a pooled connection and polls its socket on every
        command, which after an idle moment delays a message's start. A thread that finds the kept connection in use, or a cluster whose slot moved,
        goes redis-py's way instead. Every call must address keys of the slot of the first's."""
        if not self._kept_lock.acquire(blocking=False):
            return self.call(name, keys, args)
        try:
            if self._kept is None or self._kept_pid != os.getpid():  # after a fork, the parent's is not ours
                self._kept, self._kept_pid = Channel(self.client, keys[0]), os.getpid()
            command = self.command(name, keys, args)
            try:
                self._kept.send([command])
                return self._kept.read()[0]
            except NoScriptError:  # not run: load the scripts and run it again
                self.load()
            except SlotMoved:  # not run: the cluster client follows MOVED and ASK itself
                return self.call(name, keys, args)
            self._kept.send([command])
            return self._kept.read()[0]
        finally:
            self._kept_lock.release()

    def call_confirmed(self, name: str, keys: Sequence[Key], args: Sequence[Any], replicas: int, timeout: float) -> tuple[Any, int]:
        """Run a script, then WAIT up to `timeout` seconds for `replicas` replicas to hold its
        writes; returns its reply and how many replicas confirmed. Both go in one write on one
        connection (to the node owning keys[0]), as WAIT counts that connection's writes."""
        commands = [self.command(name, keys, args), ("WAIT", replicas, max(1, round(timeout * 1000)))]
        try:
            reply, confirmed = send_together(self.client, keys[0], commands)
        except NoScriptError:  # the script's reply: it did not run, so running it after loading is safe
            self.load()
            reply, confirmed = send_together(self.client, keys[0], commands)
        return reply, int(confirmed)

    def command(self, name: str, keys: Sequence[Key], args: Sequence[Any]) -> Command:
        """The EVALSHA command running a script, for a Channel (a NOSCRIPT reply is raised there)."""
        return ("EVALSHA", self.sha[name], len(keys), *keys, *args)
