"""`lidc` source: the 64 mm patch at each labelled nodule's centroid in the real LIDC-IDRI CT.

The user's LIDC-IDRI download (folders ``LIDC-IDRI-dddd/...`` with DICOM files) is found through
``--lidc-root`` or pylidc's own setting (``~/.pylidcrc``, section ``[dicom]``, key ``path``). Each
scan's series (pylidc's SeriesInstanceUID) is read with SimpleITK's DICOM series reader, so the
geometry is the scanner's; the nodule centroid (mean of its readers' contour centroids, pylidc's
(row, column, slice)) is converted to LPS with the series' ImagePositionPatient, orientation and
spacing (``nadtrain.nodules.SliceGeometry``), and ``notadiagnosis.geometry.extract_patch`` cuts the
patch. Nodules of patients that are not downloaded are skipped and counted.
"""
from __future__ import annotations

import argparse
import configparser
import os
import sys
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import numpy as np
import SimpleITK as sitk

from notadiagnosis.geometry import extract_patch
from notadiagnosis.readers import read_ct

from ..dataset import DatasetWriter, sample_key
from ..nodules import (DEFAULT_CACHE, LidcError, find_series_dir, import_pylidc, load_or_build_nodule_table,
                       read_series_geometry, select_labelled, set_centroid_lps)


def pylidc_dicom_path() -> Optional[Path]:
    """The DICOM root in pylidc's configuration file, read without letting pylidc write a template."""
    name = "pylidc.conf" if sys.platform.startswith("win") else ".pylidcrc"
    config_file = Path(os.path.expanduser("~")) / name
    if not config_file.is_file():
        return None
    parser = configparser.ConfigParser()
    parser.read(config_file)
    value = parser.get("dicom", "path", fallback="").strip()
    return Path(value).expanduser() if value else None


def resolve_lidc_root(option: Optional[Path]) -> Path:
    """--lidc-root, else pylidc's configured path; raises LidcError when neither is a folder."""
    root = Path(option) if option else pylidc_dicom_path()
    if root is None:
        raise LidcError("no LIDC-IDRI folder given; pass --lidc-root or set `path` in section [dicom] of ~/.pylidcrc.")
    if not root.is_dir():
        raise LidcError(f"LIDC-IDRI folder {root} does not exist; pass --lidc-root with the folder holding LIDC-IDRI-dddd folders.")
    return root


def read_series(series_dir: Path, series_uid: str) -> sitk.Image:
    """The CT series ``series_uid`` of a folder, in HU, with its real geometry.

    The library's reader: a series with missing or unevenly spaced slices is refused (and reported
    per scan by the build) rather than cut into misplaced patches.
    """
    return read_ct(series_dir, series_uid=series_uid)


def _scan_task(task: Tuple[str, List[Dict[str, Any]]]) -> Tuple[List[Tuple[Dict[str, Any], np.ndarray, float]], Optional[str]]:
    """Worker: read one scan's series and cut the patch of each of its nodules."""
    lidc_root, rows = task
    first = rows[0]
    try:
        import warnings

        warnings.filterwarnings("ignore")
        pl = import_pylidc()
        scan = pl.query(pl.Scan).filter(pl.Scan.series_instance_uid == first["series_uid"]).first()
        series_dir = find_series_dir(Path(lidc_root), first["patient_id"], first["series_uid"])
        geometry = read_series_geometry(series_dir, scan.slice_zvals)
        image = read_series(series_dir, first["series_uid"])
        out = []
        for row in rows:
            row = dict(row)
            set_centroid_lps(row, geometry)
            patch = extract_patch(image, (row["centroid_x_lps"], row["centroid_y_lps"], row["centroid_z_lps"]))
            out.append((row, patch.array_hu, patch.outside_fraction))
        return out, None
    except Exception as error:  # noqa: BLE001 - one unreadable scan must not stop the others
        return [], f"{first['patient_id']} ({first['series_uid']}): {type(error).__name__}: {error}"


def configure_parser(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--lidc-root", type=Path, default=None,
                        help="folder holding LIDC-IDRI-dddd folders (default: pylidc's [dicom] path in ~/.pylidcrc)")
    parser.add_argument("--min-readers", type=int, default=1, help="only nodules with at least this many readers (default 1)")
    parser.add_argument("--nodule-table", type=Path, default=DEFAULT_CACHE, help="cached nodule table CSV (built if absent)")


def build(args: argparse.Namespace) -> Dict[str, Any]:
    """Write the dataset of every labelled nodule whose patient's CT is under the LIDC root."""
    root = resolve_lidc_root(args.lidc_root)
    table = load_or_build_nodule_table(args.nodule_table, workers=args.workers, progress=not args.quiet)
    rows = sorted(select_labelled(table, args.min_readers), key=lambda r: r["nodule_id"])
    present = {p.name for p in root.iterdir() if p.is_dir()}
    available = [r for r in rows if r["patient_id"] in present]
    if not available:
        raise LidcError(f"none of the labelled nodules' patients is under {root}; it should hold LIDC-IDRI-dddd folders.")
    if args.limit is not None:
        available = available[: args.limit]
    params = {"lidc_root": str(root.resolve()), "min_readers": args.min_readers, "limit": args.limit}
    with DatasetWriter(Path(args.out), "lidc", params, overwrite=args.overwrite) as writer:
        done = writer.done_keys()
        by_series: Dict[str, List[Dict[str, Any]]] = {}
        for row in available:
            if sample_key(row["nodule_id"], "", 0) not in done:
                by_series.setdefault(row["series_uid"], []).append(row)
        tasks = [(str(root), group) for group in by_series.values()]
        failures: List[str] = []
        written_rows: Dict[str, Dict[str, Any]] = {}
        from ..build import run_tasks

        for results, error in run_tasks(_scan_task, tasks, args.workers, desc="cutting LIDC patches", unit="scan",
                                        progress=not args.quiet):
            if error:
                failures.append(error)
                continue
            for row, patch, _outside in results:
                writer.add(patch[None], [int(row["label"])], [row["nodule_id"]], [row["patient_id"]], [0], [""], [""])
                written_rows[row["nodule_id"]] = row
        for failure in failures:
            print(f"warning: scan left out: {failure}", file=sys.stderr)
        # Rows written in an earlier (interrupted) run get their LPS centroid from the table when it has one.
        done_ids = {key[0] for key in writer.done_keys()}
        table_rows = [written_rows.get(r["nodule_id"], r) for r in available if r["nodule_id"] in done_ids]
        writer.build_info.update({"failures": failures, "nodules_not_downloaded": len(rows) - len([r for r in rows if r["patient_id"] in present])})
        writer.write_nodule_table(table_rows)
        n_samples = writer.n_samples
    labels = [int(r["label"]) for r in table_rows]
    return {"nodules": len(table_rows), "malignant": sum(labels), "benign": len(labels) - sum(labels), "samples": n_samples,
            "failed_scans": len(failures), "labelled_nodules_not_downloaded": len(rows) - len([r for r in rows if r["patient_id"] in present])}
