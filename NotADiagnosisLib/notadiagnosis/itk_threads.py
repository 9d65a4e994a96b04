"""ITK's filters one thread at a time where their images are small, so a shared machine does not stall them.

ITK runs each filter on a pool of as many threads as there are cores and waits for the slowest at
the end of every filter. The nodule finder runs dozens of filters on small crops (a few hundred
thousand voxels): there, splitting the work saves less than the waits cost, and when another
process holds a core the waits dominate. Measured on 2 cores, finding and measuring the nodule of
LIDC-IDRI-0001: 0.20-0.33 s wall with ITK's 2 threads against 0.13 s with 1, the same CPU time (README,
"Performance").
"""
from __future__ import annotations

import contextlib
import threading
from typing import Iterator

import SimpleITK as sitk

_lock = threading.Lock()
_depth = 0
_saved = 0


@contextlib.contextmanager
def single_threaded_itk() -> Iterator[None]:
    """Run the block with SimpleITK's default number of threads set to 1, restored afterwards (nested and
    concurrent blocks restore it once, when the last one ends)."""
    global _depth, _saved
    with _lock:
        if _depth == 0:
            _saved = sitk.ProcessObject.GetGlobalDefaultNumberOfThreads()
            sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(1)
        _depth += 1
    try:
        yield
    finally:
        with _lock:
            _depth -= 1
            if _depth == 0:
                sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(_saved)
