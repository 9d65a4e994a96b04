"""The readers' public names in one place: CTs (:mod:`.ct_reader`) and points (:mod:`.points`).

Kept so that ``from notadiagnosis.readers import read_ct, read_points`` goes on working; new code may
import from either module directly.
"""
from __future__ import annotations

from .ct_reader import (
    VOLUME_SUFFIXES,
    DicomSeries,
    format_series_table,
    list_dicom_series,
    read_ct,
    read_dicom_series,
    read_volume_file,
)
from .points import (
    LabelledPoint,
    parse_point,
    read_fcsv,
    read_markups_json,
    read_points,
    read_points_csv,
    write_markups_json,
)

__all__ = [
    "LabelledPoint",
    "DicomSeries",
    "read_ct",
    "read_volume_file",
    "list_dicom_series",
    "read_dicom_series",
    "format_series_table",
    "read_points",
    "read_markups_json",
    "read_fcsv",
    "read_points_csv",
    "parse_point",
    "write_markups_json",
    "VOLUME_SUFFIXES",
]
