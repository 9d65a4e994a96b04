"""Where each LIDC-IDRI scan's pixels are on the user's disk, whatever layout the download has.

Three layouts are in use, and every one is found by the series' own identity rather than by folder
names:

- TCIA's classic tree ``LIDC-IDRI-dddd/<StudyUID>/<SeriesUID>/*.dcm``;
- the NBIA Data Retriever's descriptive tree, e.g.
  ``LIDC-IDRI-0001/01-01-2000-NA-NA-30178/3000566.000000-NA-03192/1-001.dcm``, where a patient may
  also hold CR/DX radiograph series;
- LUNA16's ``subset0`` ... ``subset9/<SeriesInstanceUID>.mhd`` (+ ``.raw``), 888 of LIDC's scans.

For DICOM, every folder holding ``.dcm`` files is identified by the SeriesInstanceUID in one of its
headers (one header read per folder), so a series is found wherever it sits and radiograph series
are simply never asked for. For LUNA16 the file name is the SeriesInstanceUID.

The patch geometry comes from the image that is read (``geometry_from_image``): pylidc's voxel
indices (row i, column j, slice k sorted by z) are placed with the image's own origin, direction and
spacing, so a LUNA16 ``.mhd`` converts the centroid with its own geometry, as a DICOM series does.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Dict

import numpy as np
import SimpleITK as sitk

from notadiagnosis.ct_reader import read_ct

from .nodules import SERIES_UID_TAG, LidcError, SliceGeometry, _dicom_tags, geometry_from_header

LAYOUTS = ("dicom", "luna16")


@dataclass(frozen=True)
class ScanLocation:
    """One scan's pixels: a DICOM series folder or a LUNA16 ``.mhd`` file."""

    layout: str  # "dicom" | "luna16"
    path: str

    def read(self, series_uid: str) -> sitk.Image:
        """The scan in HU with its real geometry, through the library's reader (uneven or missing
        slices, several series without a choice, non-3D images are refused there)."""
        if self.layout == "dicom":
            return read_ct(self.path, series_uid=series_uid)
        return read_ct(self.path)


def index_dicom_series(root: Path) -> Dict[str, ScanLocation]:
    """SeriesInstanceUID -> folder, for every folder under ``root`` that holds ``.dcm`` files.

    One header per folder is read (no pixels), so a full LIDC-IDRI download (about 1,300 series
    folders with the radiographs) is indexed in seconds. A folder whose first file cannot be read
    as DICOM is skipped; a series split over several folders keeps its first folder.
    """
    found: Dict[str, ScanLocation] = {}
    for folder, dirs, files in os.walk(root):
        dirs.sort()
        dicoms = sorted(f for f in files if f.lower().endswith(".dcm") and not f.startswith("."))
        if not dicoms:
            continue
        try:
            uid = _dicom_tags(Path(folder) / dicoms[0], [SERIES_UID_TAG])[SERIES_UID_TAG]
        except RuntimeError:  # SimpleITK could not read the header: not a scan we can use
            continue
        if uid:
            found.setdefault(uid, ScanLocation("dicom", str(folder)))
    return found


def index_luna16(root: Path) -> Dict[str, ScanLocation]:
    """SeriesInstanceUID -> ``.mhd`` file, for LUNA16's ``subset*/<SeriesInstanceUID>.mhd`` (any depth)."""
    return {path.stem: ScanLocation("luna16", str(path)) for path in sorted(Path(root).rglob("*.mhd"))
            if not path.name.startswith(".")}


def index_scans(root: Path, layout: str) -> Dict[str, ScanLocation]:
    """Every scan under ``root`` in ``layout`` ("dicom" or "luna16"), by SeriesInstanceUID."""
    if not Path(root).is_dir():
        raise LidcError(f"{root} is not a folder; give the folder of the LIDC-IDRI download "
                        "(--lidc-root) or of LUNA16's subset0..subset9 folders (--luna16-root).")
    if layout == "dicom":
        return index_dicom_series(Path(root))
    if layout == "luna16":
        return index_luna16(Path(root))
    raise ValueError(f"unknown layout {layout!r}")


def geometry_from_image(image: sitk.Image) -> SliceGeometry:
    """pylidc's (row, column, slice) -> LPS mapping of an axial image, from the image's own geometry.

    Column index j runs along the image's x axis (direction column 0, spacing[0]), row index i along
    its y axis (direction column 1, spacing[1]); pylidc's slice index k counts slices sorted by z,
    whatever order the image stores them in.
    """
    direction = np.asarray(image.GetDirection(), dtype=np.float64).reshape(3, 3)
    spacing = image.GetSpacing()
    origin = np.asarray(image.GetOrigin(), dtype=np.float64)
    depth = image.GetSize()[2]
    slice_z = origin[2] + np.arange(depth) * spacing[2] * direction[2, 2]
    orientation = np.r_[direction[:, 0], direction[:, 1]]
    return geometry_from_header(origin, orientation, (spacing[1], spacing[0]), np.sort(slice_z))
