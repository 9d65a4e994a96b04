"""Progress bars that appear only for work that lasts over a second, and cost nothing until then.

A tqdm bar with ``delay`` already stays hidden for short work, but importing tqdm (``tqdm.auto`` pulls
in asyncio and importlib.metadata) costs about 50 ms: a sixth of a one-point ``classify`` of a DICOM
folder. :func:`progress_bar` counts on its own and imports tqdm only once the work has lasted
:data:`DELAY_S`, then hands the count over, so what the user sees is the same bar.
"""
from __future__ import annotations

import threading
import time
from typing import Any, Iterable, Iterator, Optional

#: Seconds of work before a bar is drawn (tqdm's ``delay``, as the bars had before).
DELAY_S = 1.0


class LazyBar:
    """A counter with tqdm's ``update``/``close``/``n`` and iteration that becomes a tqdm bar on stderr
    once :data:`DELAY_S` have passed since it was made; ``disable=True`` never draws one.

    ``update`` may be called from several threads (a reader's progress events)."""

    def __init__(self, iterable: Optional[Iterable] = None, disable: bool = False, initial: int = 0,
                 **options: Any) -> None:
        self.iterable = iterable
        self.disable = disable
        self.n = int(initial)
        self._initial = int(initial)
        self._options = {"leave": False, **options}
        if "total" not in options and hasattr(iterable, "__len__"):
            self._options["total"] = len(iterable)
        self._started = time.monotonic()
        self._bar: Any = None
        self._closed = False
        self._lock = threading.Lock()

    def __iter__(self) -> Iterator:
        for item in self.iterable:
            yield item
            self.update(1)

    def __len__(self) -> int:
        return len(self.iterable)

    def update(self, count: int = 1) -> None:
        """Count ``count`` more done; draw the bar once the work has lasted long enough."""
        with self._lock:
            self.n += count
            if self._bar is None and not self.disable and not self._closed \
                    and time.monotonic() - self._started >= DELAY_S:
                from tqdm.auto import tqdm

                self._bar = tqdm(initial=self._initial, **self._options)
                self._bar.update(self.n - self._initial)
            elif self._bar is not None:
                self._bar.update(count)

    def close(self) -> None:
        with self._lock:
            self._closed = True
            if self._bar is not None:
                self._bar.close()


def progress_bar(iterable: Optional[Iterable] = None, **options: Any) -> LazyBar:
    """A bar on stderr (tqdm's options: ``total``, ``desc``, ``unit``, ``initial``, ``leave``, ``disable``)
    that appears only for work that lasts over a second; iterate over it or call ``update``/``close``."""
    return LazyBar(iterable, **options)
