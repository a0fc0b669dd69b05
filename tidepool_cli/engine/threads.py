"""Worker threads for the kernels: how many, and how work items are mapped over them.

NumPy releases the GIL inside its loops, gathers, sorts and BLAS calls, so threads
share a kernel's blocks (row blocks, clusters, posting lists, query batches) on the
cores. Every kernel that uses threads asks :func:`workers` how many, which honours
``OMP_NUM_THREADS`` (the variable BLAS and faiss obey too), so one setting bounds the
whole process; results never depend on the count.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from typing import Any


def cpu_count() -> int:
    """CPUs this process may run on (its affinity mask where the OS has one)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:
        return os.cpu_count() or 1


def workers(threads: int | None = None) -> int:
    """Threads a kernel uses.

    Parameters
    ----------
    threads : int, optional
        An explicit count (values below 1 mean 1). None: the CPUs this process may use,
        capped by ``OMP_NUM_THREADS`` when that is set to a positive integer.

    Returns
    -------
    int, >= 1
    """
    if threads is not None:
        return max(1, int(threads))
    n = cpu_count()
    env = os.environ.get("OMP_NUM_THREADS", "").strip()
    if env.isdigit() and int(env) > 0:
        return max(1, min(n, int(env)))
    return n


class Runner:
    """Maps a function over work items on a thread pool, or inline without one.

    Results come back in item order, which keeps kernels deterministic.

    Parameters
    ----------
    pool : ThreadPoolExecutor or None
    workers : int
        Threads of ``pool`` (1 without one).
    """

    def __init__(self, pool: ThreadPoolExecutor | None, workers: int):
        self.pool, self.workers = pool, workers

    def map(self, fn: Callable[[Any], Any], items: Iterable) -> list:
        """``[fn(item) for item in items]``, on the pool when there are two or more items.

        Raises
        ------
        Exception
            The first exception raised by ``fn``, re-raised on the calling thread.
        """
        items = list(items)
        if self.pool is None or len(items) < 2:
            return [fn(item) for item in items]
        return list(self.pool.map(fn, items))

    def split(self, items: list) -> list[list]:
        """``items`` dealt round-robin into one share per worker (balanced by position)."""
        return [items[w :: self.workers] for w in range(min(self.workers, len(items)))]


@contextmanager
def runner(n: int):
    """A :class:`Runner` with ``n`` threads for the duration of a ``with`` block (inline for 1)."""
    if n <= 1:
        yield Runner(None, 1)
        return
    with ThreadPoolExecutor(max_workers=n) as pool:
        yield Runner(pool, n)


def parallel(fn: Callable[[Any], None], items: Iterable, n: int) -> None:
    """Call ``fn`` on every item, on up to ``n`` threads (in order on the calling thread for 1).

    ``fn`` must write disjoint outputs or lock what it shares.

    Raises
    ------
    Exception
        The first exception raised by ``fn``, re-raised on the calling thread.
    """
    items = list(items)
    with runner(min(n, len(items))) as run:
        run.map(fn, items)


def progress_counter(total: int, progress: Callable[[int, int], None] | None) -> Callable[[int], None]:
    """A thread-safe ``tick(units)`` for a build whose worker threads report blocks of work.

    Parameters
    ----------
    total : int
        Work units of the whole build.
    progress : callable(done, total) or None
        Called under a lock after every tick with the units done so far (never above
        ``total``), so the callback sees one ordered sequence; None makes ticks free.
    """
    done = 0
    lock = threading.Lock()

    def tick(units: int) -> None:
        nonlocal done
        with lock:
            done += units
            if progress is not None:
                progress(min(done, total), total)

    return tick
