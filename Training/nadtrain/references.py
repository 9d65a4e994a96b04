"""`nadtrain references`: what size alone and the readers' ratings reach on every patient test fold.

No pixels, no network: for each of the ``round(1 / test_fraction)`` patient-grouped stratified test
folds that ``splits.make_split`` draws with this seed (fold 0 is the test split of every training
run with that seed), fit the size-only baseline and the ratings reference (``ratings.py``) on the
other folds' nodules and measure AUC on the fold's nodules (one row per nodule). It answers two
questions a test AUC cannot answer alone: is this test fold harder or easier than the others, and
how much do the readers' own ratings (from which ``insertion`` pixels are partly synthesised) carry?
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any, Dict

import numpy as np
from sklearn.metrics import roc_auc_score

from . import metrics, ratings
from .dataset import load_dataset
from .splits import _per_nodule, _stratified_group_fold


def fold_references(dataset: Path, seed: int = 0, test_fraction: float = 0.2) -> Dict[str, Any]:
    """Per test fold: nodules, malignant, size-only AUC and ratings-reference AUC (fitted on the rest)."""
    data = load_dataset(dataset, load_patches=False)
    uniq, nod_patient, nod_label, _ = _per_nodule(data.nodule_ids, data.patient_ids, data.labels)
    table = data.nodule_table()
    features = ratings.features_for(uniq, table)
    n_folds = max(2, int(round(1.0 / test_fraction)))
    folds = []
    for fold in range(n_folds):
        rest, held = _stratified_group_fold(nod_label, nod_patient, n_folds, fold, seed)
        diameters = np.exp(features[:, 0])
        size = metrics.SizeBaseline().fit(diameters[rest], nod_label[rest])
        reference = ratings.RatingsReference().fit(features[rest], nod_label[rest])
        folds.append({
            "fold": fold, "n_nodules": int(held.size), "n_malignant": int(nod_label[held].sum()),
            "n_patients": int(np.unique(nod_patient[held]).size),
            "size_only_auc": float(roc_auc_score(nod_label[held], size.predict_proba(diameters[held]))),
            "ratings_reference_auc": float(roc_auc_score(nod_label[held], reference.predict_proba(features[held]))),
        })

    def spread(key: str) -> Dict[str, float]:
        values = np.array([f[key] for f in folds])
        return {"mean": float(values.mean()), "sd": float(values.std(ddof=1)), "min": float(values.min()),
                "max": float(values.max())}

    return {"dataset": Path(dataset).resolve().name, "seed": seed, "test_fraction": test_fraction,
            "unit": "nodule (one row per nodule)", "folds": folds,
            "size_only_auc": spread("size_only_auc"), "ratings_reference_auc": spread("ratings_reference_auc"),
            "features": list(ratings.FEATURES),
            "note": "fold 0 is the test split of training runs with this seed; both references are fitted "
                    "on the other folds; the ratings reference is not an image model"}


def configure_parser(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``nadtrain references``."""
    parser.add_argument("dataset", help="dataset directory (its nodule table is used, not its pixels)")
    parser.add_argument("--seed", type=int, default=0, help="the split seed of the training runs to compare with")
    parser.add_argument("--test-fraction", type=float, default=0.2)
    parser.add_argument("--out", type=Path, help="also write the result as JSON here")


def run_cli(args: argparse.Namespace) -> int:
    result = fold_references(Path(args.dataset), args.seed, args.test_fraction)
    print("fold  nodules  malignant  size-only AUC  ratings reference AUC")
    for f in result["folds"]:
        print(f"{f['fold']:>4}  {f['n_nodules']:>7}  {f['n_malignant']:>9}  {f['size_only_auc']:>13.3f}  "
              f"{f['ratings_reference_auc']:>21.3f}")
    for key in ("size_only_auc", "ratings_reference_auc"):
        s = result[key]
        print(f"{key}: mean {s['mean']:.3f} (sd {s['sd']:.3f}, {s['min']:.3f}-{s['max']:.3f})")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
        print(f"written to {args.out}")
    return 0
