"""JSON files training writes (runs, manifests), atomically through the library's one writer
(``notadiagnosis.atomic``): a crash leaves the previous file, or none."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Union

import numpy as np

from notadiagnosis.atomic import write_text_atomic


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
    write_text_atomic(path, json.dumps(value, indent=2, default=json_default) + "\n")
