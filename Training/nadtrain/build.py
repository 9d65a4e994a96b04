"""`nadtrain build SOURCE --out DIR`: build a patch dataset from one pixel source, in parallel, resumable.

Each source module in ``nadtrain.sources`` defines ``configure_parser(parser)`` (its options) and
``build(args) -> dict`` (a summary). The shared machinery lives here: a pool of spawned worker
processes fed task by task (results are written by the parent, the only writer of the dataset),
a progress bar, and resume: the dataset writer reports which samples exist and sources skip them.
"""
from __future__ import annotations

import argparse
import importlib
import multiprocessing
import os
import sys
import time
from typing import Any, Callable, Iterator, Optional, Sequence, Tuple

SOURCES = {
    "lidc": ("nadtrain.sources.lidc", "real LIDC-IDRI CT: the patch at each labelled nodule's centroid"),
    "insertion": ("nadtrain.sources.insertion",
                  "virtual insertion of every labelled nodule's real contours into real chest CT backgrounds"),
    "medmnist": ("nadtrain.sources.medmnist", "MedMNIST NoduleMNIST3D (nodulemnist3d_64.npz), with its own split"),
}


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


def configure_parser(parser: argparse.ArgumentParser) -> None:
    sources = parser.add_subparsers(dest="source", metavar="SOURCE")
    sources.required = True
    for name, (module_name, help_text) in SOURCES.items():
        module = importlib.import_module(module_name)
        sub = sources.add_parser(name, help=help_text, description=help_text + ".")
        sub.add_argument("--out", required=True, help="dataset directory (resumed if it holds an interrupted build of the same options)")
        sub.add_argument("--workers", type=int, default=default_workers(), help="worker processes (default: all CPUs)")
        sub.add_argument("--overwrite", action="store_true", help="delete a dataset of other options in --out first")
        sub.add_argument("--limit", type=int, default=None, help="only the first N nodules (quick tests)")
        sub.add_argument("--quiet", action="store_true", help="no progress bar")
        module.configure_parser(sub)
        sub.set_defaults(_build=module.build)


def run_cli(args: argparse.Namespace) -> int:
    start = time.perf_counter()
    summary = args._build(args)
    seconds = time.perf_counter() - start
    parts = ", ".join(f"{key} {value}" for key, value in summary.items())
    print(f"built {args.source} dataset {args.out}: {parts}; {seconds:.1f} s with {args.workers} worker(s)")
    return 0
