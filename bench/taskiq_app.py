"""taskiq's side of the benchmark (bench/.peers/async): its Redis broker and the one task.

    python -m taskiq worker taskiq_app:broker --workers 1 --max-async-tasks N   # run in bench/

RedisStreamBroker is taskiq-redis's broker with acknowledgements (XREADGROUP, XACK, and
XAUTOCLAIM of what a dead consumer held, after its idle_timeout); ListQueueBroker (BRPOP) has
none. The job is handlers.async_sleep_job, as for every system.
"""

from __future__ import annotations

import os

from handlers import URL, async_sleep_job
from taskiq_redis import RedisStreamBroker

broker = RedisStreamBroker(URL, queue_name=os.environ.get("BENCH_QUEUE", "bench"))


@broker.task(task_name="sleep")
async def sleep(i: int, seconds: float, crash: bool = False) -> None:
    await async_sleep_job(i, seconds, crash)
