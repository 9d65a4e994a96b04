"""Files training writes: each one atomically (a crash leaves the previous file, or none), so an
interrupted build or run is resumable and never holds a half-written file."""
from __future__ import annotations

import json
import os
import uuid
from pathlib import Path
from typing import Any, BinaryIO, Callable, Union

import numpy as np


def write_atomic(path: Union[str, Path], write: Callable[[BinaryIO], None]) -> None:
    """Call ``write(binary file)`` on a new temporary file beside ``path``, flush it to disk, then
    rename it over ``path``. The file is created 0644 less the umask (datasets are meant to be shared)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    try:
        with os.fdopen(fd, "wb") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        if tmp.exists():
            tmp.unlink()
        raise


def write_text(path: Union[str, Path], text: str) -> None:
    """``text`` as UTF-8, atomically."""
    write_atomic(path, lambda handle: handle.write(text.encode("utf-8")))


def json_default(value: Any) -> Any:
    """``json.dumps`` ``default`` for what training writes: NumPy scalars and arrays, paths."""
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


def write_json(path: Union[str, Path], value: Any) -> None:
    """``value`` as indented JSON, atomically."""
    write_text(path, json.dumps(value, indent=2, default=json_default) + "\n")
