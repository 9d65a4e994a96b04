"""Points: :class:`LabelledPoint` and its sources (Slicer files, CSV, the command line) and Slicer's point-list file.

Every reader returns a list of :class:`LabelledPoint` in LPS millimetres, whatever the source said:
Slicer's ``.mrk.json`` and ``.fcsv`` carry their own coordinate system (honoured here), a CSV says it
with its column names (``r,a,s`` / ``l,p,s``) or the caller says it (``x,y,z``), and command-line
points are RAS (what Slicer shows) unless the caller says LPS.
"""
from __future__ import annotations

import csv
import json
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence, Tuple

import numpy as np

from .errors import InputError
from .geometry import ras_to_lps

__all__ = [
    "LabelledPoint",
    "read_points",
    "read_markups_json",
    "read_fcsv",
    "read_points_csv",
    "parse_point",
    "write_markups_json",
]

_COORDINATE_SYSTEMS = ("RAS", "LPS")


@dataclass(frozen=True)
class LabelledPoint:
    """A named point in LPS millimetres (ITK/DICOM patient space)."""

    label: str
    point_lps: Tuple[float, float, float]

    @property
    def point_ras(self) -> Tuple[float, float, float]:
        """The same point in RAS millimetres (what Slicer displays)."""
        x, y, z = self.point_lps
        return (-x, -y, z)



def read_points(path: str | os.PathLike, coordinate_system: str | None = None) -> list[LabelledPoint]:
    """Read points from ``.mrk.json``, ``.fcsv``, ``.csv`` or ``.tsv``; returns labelled LPS points.

    ``coordinate_system`` ("RAS" or "LPS") is the user's statement for a CSV with ``x,y,z`` columns
    (default RAS, what Slicer shows); Slicer files carry their own and it is honoured.
    """
    path = Path(path).expanduser()
    if path.is_dir():
        raise InputError(f"The points file {path} is a folder; give a .mrk.json, .fcsv or .csv file.")
    if not path.is_file():
        raise InputError(f"The points file {path} does not exist; give a .mrk.json, .fcsv or .csv file.")
    name = path.name.lower()
    if name.endswith(".json"):
        return read_markups_json(path)
    if name.endswith(".fcsv"):
        return read_fcsv(path)
    if name.endswith(".csv") or name.endswith(".tsv") or name.endswith(".txt"):
        return read_points_csv(path, coordinate_system=coordinate_system)
    raise InputError(f"Unknown points file type {path.name}; use a Slicer .mrk.json or .fcsv, or a .csv with x,y,z columns.")


def read_markups_json(path: str | os.PathLike) -> list[LabelledPoint]:
    """Read the control points of the point lists ("Fiducial" markups) in a Slicer ``.mrk.json`` file.

    Honours each markup's ``coordinateSystem`` (schema default LPS) and ``coordinateUnits`` (mm or
    um); control points whose ``positionStatus`` is not "defined" are skipped.
    """
    path = Path(path)
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InputError(f"{path.name} is not readable JSON ({exc}); export the points from Slicer as .mrk.json.") from None
    if not isinstance(document, dict) or not isinstance(document.get("markups"), list):
        raise InputError(f"{path.name} is not a Slicer markups file (no \"markups\" list); save a point list from Slicer.")
    points: list[LabelledPoint] = []
    other_types = []
    for m_index, markup in enumerate(document["markups"]):
        if not isinstance(markup, dict):
            raise InputError(f"{path.name}: markup #{m_index + 1} is not an object; the file is damaged.")
        kind = markup.get("type", "")
        if kind != "Fiducial":
            other_types.append(str(kind))
            continue
        system = str(markup.get("coordinateSystem", "LPS")).upper()
        if system not in _COORDINATE_SYSTEMS:
            raise InputError(f"{path.name}: coordinateSystem {system!r} is neither LPS nor RAS.")
        scale_to_mm = _units_to_mm(markup.get("coordinateUnits", "mm"), path.name)
        name = str(markup.get("name") or "F")
        for p_index, cp in enumerate(markup.get("controlPoints") or []):
            if not isinstance(cp, dict):
                raise InputError(f"{path.name}: control point #{p_index + 1} of {name} is not an object.")
            if cp.get("positionStatus", "defined") != "defined" or "position" not in cp:
                continue  # placed-but-unset points have no meaningful position
            label = str(cp.get("label") or f"{name}-{p_index + 1}")
            xyz = _three_numbers(cp["position"], f"{path.name}: control point {label}")
            xyz = tuple(v * scale_to_mm for v in xyz)
            points.append(_labelled(label, xyz, system))
    if not points:
        extra = f" (it holds only {', '.join(sorted(set(other_types)))} markups)" if other_types else ""
        raise InputError(f"{path.name} has no defined point-list control points{extra}; place points with a Point List in Slicer.")
    return points


def read_fcsv(path: str | os.PathLike) -> list[LabelledPoint]:
    """Read a Slicer ``.fcsv`` point list, honouring its ``# CoordinateSystem`` header.

    The header is "LPS"/"RAS" in Slicer >= 4.11 and numeric in older versions (0 = RAS, 1 = LPS);
    files without it predate it and are RAS. Columns follow the ``# columns =`` header when present.
    Slicer 5 writes each point's position status in the field after the listed columns (2 = placed);
    points that were never placed, or were cleared, are skipped, as in the ``.mrk.json`` reader.
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"Could not read {path.name} ({exc}).") from None
    system = "RAS"
    columns = None
    versioned = False
    rows = []
    for line_number, line in enumerate(text.splitlines(), start=1):
        stripped = line.strip()
        if not stripped:
            continue
        if stripped.startswith("#"):
            key, _, value = stripped.lstrip("#").partition("=")
            key, value = key.strip().lower(), value.strip()
            if key == "coordinatesystem":
                system = _fcsv_coordinate_system(value, path.name)
            elif key == "columns":
                columns = [c.strip().lower() for c in value.split(",")]
            elif key.startswith("markups fiducial file version"):
                versioned = True
            continue
        rows.append((line_number, next(csv.reader([line]))))
    if columns is None:
        # Slicer >= 4 layout, or the unversioned Slicer 3 layout "label,x,y,z,sel,vis".
        columns = (["id", "x", "y", "z", "ow", "ox", "oy", "oz", "vis", "sel", "lock", "label", "desc"]
                   if versioned else ["label", "x", "y", "z", "sel", "vis"])
    try:
        ix, iy, iz = columns.index("x"), columns.index("y"), columns.index("z")
    except ValueError:
        raise InputError(f"{path.name}: the '# columns' header has no x, y, z.") from None
    i_label = columns.index("label") if "label" in columns else None
    # Slicer 5's unlisted position-status field follows "associatedNodeID" (vtkMRMLMarkupsNode::PositionDefined = 2).
    i_status = len(columns) if columns and columns[-1] == "associatednodeid" else None
    points, unplaced = [], 0
    for n, (line_number, fields) in enumerate(rows, start=1):
        if i_status is not None and i_status < len(fields) and fields[i_status].strip() not in ("", "2"):
            unplaced += 1
            continue
        try:
            xyz = tuple(float(fields[i]) for i in (ix, iy, iz))
        except (IndexError, ValueError):
            raise InputError(f"{path.name} line {line_number}: expected numbers in the x, y, z columns.") from None
        label = fields[i_label].strip() if i_label is not None and i_label < len(fields) else ""
        points.append(_labelled(label or f"F-{n}", xyz, system, where=f"{path.name} line {line_number}"))
    if not points:
        extra = f" ({unplaced} not placed)" if unplaced else ""
        raise InputError(f"{path.name} holds no placed points{extra}; place points in Slicer and save the point list again.")
    return points


def read_points_csv(path: str | os.PathLike, coordinate_system: str | None = None) -> list[LabelledPoint]:
    """Read points from a CSV/TSV with a header row: ``x,y,z``, ``r,a,s`` or ``l,p,s`` (+ optional ``label``).

    ``r,a,s`` columns are RAS and ``l,p,s`` columns LPS whatever the caller says (a contradiction is
    an error); ``x,y,z`` columns are in ``coordinate_system`` (default RAS). Slicer's control-point
    table export (label, r, a, s, defined, ...) reads as is: rows whose ``defined`` is 0/false (points
    not placed) are skipped.
    """
    path = Path(path)
    stated = _check_system(coordinate_system) if coordinate_system is not None else None
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"Could not read {path.name} ({exc}).") from None
    lines = [line for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]
    if not lines:
        raise InputError(f"{path.name} is empty; give a CSV with a header row x,y,z (or r,a,s / l,p,s) and one point per row.")
    delimiter = "\t" if path.name.lower().endswith(".tsv") or ("\t" in lines[0] and "," not in lines[0]) else ","
    if delimiter == "," and ";" in lines[0] and "," not in lines[0]:
        delimiter = ";"
    reader = csv.reader(lines, delimiter=delimiter)
    header = [h.strip().lower() for h in next(reader)]
    system, names = None, None
    for candidate, cols in (("RAS", ("r", "a", "s")), ("LPS", ("l", "p", "s")), (None, ("x", "y", "z"))):
        if all(c in header for c in cols):
            system, names = candidate, cols
            break
    if names is None:
        raise InputError(
            f"{path.name}: the header row {','.join(header)!r} has no x,y,z (or r,a,s / l,p,s) columns; add one."
        )
    if system is None:
        system = stated or "RAS"
    elif stated is not None and stated != system:
        raise InputError(
            f"{path.name} has {','.join(names)} columns ({system}) but {stated} was requested; "
            f"drop the {stated} option or rename the columns to x,y,z."
        )
    indices = [header.index(c) for c in names]
    label_col = next((header.index(c) for c in ("label", "name", "id") if c in header), None)
    defined_col = header.index("defined") if "defined" in header else None
    points, unplaced = [], 0
    for n, fields in enumerate(reader, start=1):
        where = f"{path.name} row {n + 1}"
        if defined_col is not None and defined_col < len(fields) and fields[defined_col].strip().lower() in ("0", "false", "no"):
            unplaced += 1
            continue
        try:
            xyz = tuple(float(fields[i]) for i in indices)
        except (IndexError, ValueError):
            raise InputError(f"{where}: expected numbers in the {','.join(names)} columns.") from None
        label = fields[label_col].strip() if label_col is not None and label_col < len(fields) else ""
        points.append(_labelled(label or f"P{n}", xyz, system, where=where))
    if not points:
        extra = f" placed (its {unplaced} row(s) have defined = 0)" if unplaced else ""
        raise InputError(f"{path.name} has a header but no points{extra}; add one row per placed point.")
    return points


def parse_point(text: str, lps: bool = False, label: str = "P1") -> LabelledPoint:
    """Parse a command-line point ``"R,A,S"`` (or ``"L,P,S"`` with ``lps=True``) in mm."""
    parts = [p for p in text.replace(";", ",").replace(" ", ",").split(",") if p != ""]
    system = "LPS" if lps else "RAS"
    if len(parts) != 3:
        raise InputError(
            f"The point {text!r} must be three numbers in mm separated by commas, e.g. --point 12.5,-140,-60 ({','.join(system)})."
        )
    try:
        xyz = tuple(float(p) for p in parts)
    except ValueError:
        raise InputError(f"The point {text!r} must hold three numbers in mm, e.g. --point 12.5,-140,-60.") from None
    return _labelled(label, xyz, system, where=f"The point {text!r}")


def write_markups_json(path: str | os.PathLike, points: Sequence[LabelledPoint], name: str = "Nodules") -> Path:
    """Write points as a Slicer point list (``.mrk.json``, coordinateSystem LPS) that Slicer opens as is."""
    path = Path(path)
    document = {
        "@schema": "https://raw.githubusercontent.com/slicer/slicer/master/Modules/Loadable/Markups/Resources/Schema/markups-schema-v1.0.3.json#",
        "markups": [{
            "type": "Fiducial",
            "name": name,
            "coordinateSystem": "LPS",
            "coordinateUnits": "mm",
            "controlPoints": [
                {"id": str(i), "label": p.label, "position": [float(v) for v in p.point_lps], "positionStatus": "defined"}
                for i, p in enumerate(points, start=1)
            ],
        }],
    }
    path.write_text(json.dumps(document, indent=2) + "\n", encoding="utf-8")
    return path


def _labelled(label: str, xyz: Sequence[float], system: str, where: str | None = None) -> LabelledPoint:
    if not all(math.isfinite(v) for v in xyz):
        raise InputError(f"{where or label}: coordinates must be finite numbers, got {tuple(xyz)}.")
    arr = np.asarray(xyz, dtype=float)
    lps = ras_to_lps(arr) if system == "RAS" else arr
    return LabelledPoint(label=label, point_lps=tuple(float(v) for v in lps))


def _three_numbers(value, where: str) -> tuple:
    if not isinstance(value, (list, tuple)) or len(value) != 3:
        raise InputError(f"{where}: position must be a list of three numbers.")
    try:
        return tuple(float(v) for v in value)
    except (TypeError, ValueError):
        raise InputError(f"{where}: position must be a list of three numbers.") from None


def _units_to_mm(units, file_name: str) -> float:
    code = units[0] if isinstance(units, (list, tuple)) and units else units
    code = str(code).strip()
    if code == "mm":
        return 1.0
    if code == "um":
        return 1e-3
    raise InputError(f"{file_name}: coordinateUnits {code!r} is not supported; save the points in mm.")


def _fcsv_coordinate_system(value: str, file_name: str) -> str:
    value = value.strip().upper()
    # Slicer 4.6-4.10 wrote the enum value: 0 = RAS, 1 = LPS.
    mapping = {"0": "RAS", "1": "LPS", "RAS": "RAS", "LPS": "LPS"}
    if value not in mapping:
        raise InputError(f"{file_name}: '# CoordinateSystem = {value}' is neither LPS nor RAS.")
    return mapping[value]


def _check_system(system: str) -> str:
    upper = str(system).upper()
    if upper not in _COORDINATE_SYSTEMS:
        raise InputError(f"Coordinate system {system!r} is neither RAS nor LPS.")
    return upper
