"""Writing a file so that a crash leaves the previous file (or none), never half of a new one.

One writer for the library (model files) and for Training (datasets, checkpoints, runs): the new
content goes to a temporary file beside the target, is flushed to disk, and replaces the target
with one ``os.replace``. The file gets the usual mode (0666 less the process's umask).
"""
from __future__ import annotations

import os
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO, Callable, Iterator, Union

PathLike = Union[str, "os.PathLike[str]"]


@contextmanager
def atomic_path(target: PathLike) -> Iterator[Path]:
    """A new temporary path beside ``target`` for a writer that takes a path (safetensors, ONNX...).

    When the block ends normally, the file written there is flushed to disk and replaces
    ``target``; when it raises, the temporary file is removed and ``target`` is left as it was.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    temporary = target.with_name(f".{target.name}.{uuid.uuid4().hex}.tmp")
    try:
        yield temporary
        with open(temporary, "rb+") as handle:
            os.fsync(handle.fileno())
        os.replace(temporary, target)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise


def write_atomic(target: PathLike, write: Callable[[BinaryIO], None]) -> None:
    """Call ``write(binary file)`` on a new file that replaces ``target`` only once complete."""
    with atomic_path(target) as temporary:
        with open(temporary, "xb") as handle:
            write(handle)


def write_text_atomic(target: PathLike, text: str) -> None:
    """``text`` as UTF-8 in ``target``, atomically."""
    write_atomic(target, lambda handle: handle.write(text.encode("utf-8")))
