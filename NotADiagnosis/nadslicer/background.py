"""Run slow work on a worker thread while Slicer's main thread keeps the window alive.

Slicer's GUI and MRML live on the main thread. The module reads its inputs there, hands the slow,
MRML-free part (loading the model, classifying, saliency: numpy, SimpleITK and the inference runtime,
which release the GIL while they compute) to a worker thread, and meanwhile calls ``wait()`` on the
main thread — the panel passes a function that updates the progress dialog and processes Qt events,
so the window repaints and Cancel can be clicked. The results are written to the scene back on the
main thread.
"""
from __future__ import annotations

import threading
from typing import Callable, TypeVar

T = TypeVar("T")

#: How long the main thread waits for the worker between two calls of ``wait()`` (s): short enough
#: for a fluid window, long enough not to spin.
POLL_INTERVAL_S = 0.05


def run_in_background(work: Callable[[], T], wait: Callable[[], None], poll_interval_s: float = POLL_INTERVAL_S) -> T:
    """``work()`` on a worker thread, calling ``wait()`` on this thread until it ends; its result or its exception."""
    outcome = {}

    def target() -> None:
        try:
            outcome["value"] = work()
        except BaseException as error:  # re-raised on the caller's thread, where the panel reports it
            outcome["error"] = error

    worker = threading.Thread(target=target, name="NotADiagnosis worker", daemon=True)
    worker.start()
    while worker.is_alive():
        wait()
        worker.join(poll_interval_s)
    if "error" in outcome:
        raise outcome["error"]
    return outcome["value"]
