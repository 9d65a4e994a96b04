"""`lidc` source: the 64 mm patch at each labelled nodule's centroid in the real LIDC-IDRI CT.

The user's pixels are a LIDC-IDRI download from TCIA, in the classic or the NBIA Data Retriever's
descriptive folder tree (``--lidc-root``, default pylidc's own setting: ``~/.pylidcrc``, section
``[dicom]``, key ``path``), or LUNA16's ``subset*/<SeriesInstanceUID>.mhd`` (``--luna16-root``).
Scans are found by SeriesInstanceUID, whatever the folder names (``nadtrain.scans``). Each scan is
read with the library's reader, so the geometry is the scanner's; the nodule centroid (mean of its
readers' contour centroids, pylidc's (row, column, slice)) is converted to LPS with that image's own
origin, direction and spacing, and ``notadiagnosis.geometry.extract_patch`` cuts the patch. Nodules
of scans that are not on disk are counted; a scan that cannot be used is recorded with its reason
in the build's failures and the build goes on.
"""
from __future__ import annotations

import argparse
import configparser
import os
import sys
import warnings
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import numpy as np

from notadiagnosis.geometry import extract_patch

from ..dataset import DatasetWriter, sample_key
from ..nodules import DEFAULT_CACHE, LidcError, load_or_build_nodule_table, select_labelled, set_centroid_lps
from ..parallel import run_tasks
from ..scans import ScanLocation, geometry_from_image, index_scans

# The table's ``centroid_source`` of a nodule whose LPS centroid was placed in each layout's image.
CENTROID_SOURCE = {"dicom": "dicom", "luna16": "luna16-mhd"}


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


def _scan_task(task: Tuple[ScanLocation, List[Dict[str, Any]]]) -> Tuple[List[Tuple[Dict[str, Any], np.ndarray, float]], Optional[str]]:
    """Worker: read one scan and cut the patch of each of its nodules.

    Any failure (missing or unevenly spaced slices, an unreadable file, a non-axial series) is
    returned as a one-line reason, recorded in the build's failures; the other scans go on.
    """
    location, rows = task
    first = rows[0]
    try:
        warnings.filterwarnings("ignore")
        image = location.read(first["series_uid"])
        geometry = geometry_from_image(image)
        out = []
        for row in rows:
            row = dict(row)
            set_centroid_lps(row, geometry)
            row["centroid_source"] = CENTROID_SOURCE[location.layout]
            patch = extract_patch(image, (row["centroid_x_lps"], row["centroid_y_lps"], row["centroid_z_lps"]))
            out.append((row, patch.array_hu, patch.outside_fraction))
        return out, None
    except Exception as error:  # noqa: BLE001 - one unreadable scan must not stop the others
        return [], f"{first['patient_id']} ({first['series_uid']}, {location.path}): {type(error).__name__}: {error}"


def configure_parser(parser: argparse.ArgumentParser) -> None:
    roots = parser.add_mutually_exclusive_group()
    roots.add_argument("--lidc-root", type=Path, default=None,
                       help="folder of the LIDC-IDRI DICOM download, TCIA or NBIA folder names "
                            "(default: pylidc's [dicom] path in ~/.pylidcrc)")
    roots.add_argument("--luna16-root", type=Path, default=None,
                       help="folder of LUNA16's subset0..subset9 folders of <SeriesInstanceUID>.mhd/.raw")
    parser.add_argument("--min-readers", type=int, default=1, help="only nodules with at least this many readers (default 1)")
    parser.add_argument("--nodule-table", type=Path, default=DEFAULT_CACHE, help="cached nodule table CSV (built if absent)")


def resolve_scan_root(args: argparse.Namespace) -> Tuple[Path, str]:
    """(root folder, layout) from --luna16-root, else --lidc-root or pylidc's setting."""
    luna16 = getattr(args, "luna16_root", None)
    if luna16 is not None:
        if not Path(luna16).is_dir():
            raise LidcError(f"LUNA16 folder {luna16} does not exist; pass --luna16-root with the folder holding subset0..subset9.")
        return Path(luna16), "luna16"
    return resolve_lidc_root(args.lidc_root), "dicom"


def build(args: argparse.Namespace) -> Dict[str, Any]:
    """Write the dataset of every labelled nodule whose scan is under the LIDC-IDRI or LUNA16 root."""
    root, layout = resolve_scan_root(args)
    table = load_or_build_nodule_table(args.nodule_table, workers=args.workers, progress=not args.quiet)
    rows = sorted(select_labelled(table, args.min_readers), key=lambda r: r["nodule_id"])
    scans = index_scans(root, layout)
    available = [r for r in rows if r["series_uid"] in scans]
    not_on_disk = len(rows) - len(available)
    if not available:
        what = "LUNA16 .mhd files" if layout == "luna16" else "DICOM series"
        raise LidcError(f"none of the labelled nodules' scans is under {root} ({len(scans)} {what} found there); "
                        + ("it should hold subset0..subset9 of <SeriesInstanceUID>.mhd files." if layout == "luna16"
                           else "it should hold the LIDC-IDRI patients' CT series (TCIA or NBIA folders)."))
    if args.limit is not None:
        available = available[: args.limit]
    params = {"lidc_root": str(root.resolve()), "min_readers": args.min_readers, "limit": args.limit}
    if layout != "dicom":  # older builds (DICOM) keep their params, so they still resume
        params = {"scan_root": str(root.resolve()), "layout": layout, "min_readers": args.min_readers, "limit": args.limit}
    with DatasetWriter(Path(args.out), "lidc", params, overwrite=args.overwrite) as writer:
        done = writer.done_keys()
        by_series: Dict[str, List[Dict[str, Any]]] = {}
        for row in available:
            if sample_key(row["nodule_id"], "", 0) not in done:
                by_series.setdefault(row["series_uid"], []).append(row)
        tasks = [(scans[uid], group) for uid, group in by_series.items()]
        failures: List[str] = []
        written_rows: Dict[str, Dict[str, Any]] = {}
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
        writer.build_info.update({"failures": failures, "layout": layout, "scans_found": len(scans),
                                  "nodules_not_downloaded": not_on_disk})
        writer.write_nodule_table(table_rows)
        n_samples = writer.n_samples
    labels = [int(r["label"]) for r in table_rows]
    return {"nodules": len(table_rows), "malignant": sum(labels), "benign": len(labels) - sum(labels), "samples": n_samples,
            "failed_scans": len(failures), "labelled_nodules_not_downloaded": not_on_disk}
