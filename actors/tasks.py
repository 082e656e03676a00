"""Independent runs as Ray tasks: the shared inputs go to the object store once (numpy arrays
come back zero-copy in every task), results are collected as they finish, with a progress line."""
from __future__ import annotations

import sys
import time
from typing import Any, Callable

import ray


@ray.remote
def _call(fn: Callable, item, shared: dict, *args):
    return fn(item, shared, *args)


def map_tasks(fn: Callable, items: list, args: tuple, shared: dict, num_cpus: float = 1.0,
              describe: Callable[[Any, Any], str] = lambda item, result: str(item), stream=None) -> list:
    """[fn(item, shared, *args) for item in items], each call a Ray task asking for num_cpus;
    results in the order of items. Progress goes to `stream`, by default sys.stdout as it is when
    called (a default bound at import would outlive a redirected stdout)."""
    shared_ref = ray.put(shared)
    task = _call.options(num_cpus=num_cpus)
    pending = {task.remote(fn, item, shared_ref, *args): i for i, item in enumerate(items)}
    results: list = [None] * len(items)
    start = time.monotonic()
    while pending:
        done, _ = ray.wait(list(pending), num_returns=1)
        index = pending.pop(done[0])
        results[index] = ray.get(done[0])
        finished = len(items) - len(pending)
        print(f"  {finished:>3}/{len(items)} done ({time.monotonic() - start:6.0f} s)  "
              f"{describe(items[index], results[index])}", file=stream or sys.stdout, flush=True)
    return results
