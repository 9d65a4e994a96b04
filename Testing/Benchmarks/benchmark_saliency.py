"""Score-CAM (ONNX Runtime, the default) against LayerCAM (torch, the method before), on test-split
patches: prints figures, asserts nothing.

For each patch of the bundled model's test split found in ``--dataset`` (an insertion dataset built
with ``nadtrain build insertion --nodules ...``; the split is recomputed from the full nodule table
with the card's split parameters, so only test nodules are used):
  - agreement: Spearman rank correlation of the two 64³ maps, and the overlap (IoU) of their top 10%
    voxels;
  - faithfulness, by a deletion curve (Petsiuk et al., RISE, BMVC 2018): the voxels a map ranks
    highest are turned into air (-1000 HU) in steps up to half the patch, and the calibrated
    malignancy probability is read after each step; the area under that curve (fraction deleted
    0..0.5, probability) is lower for a map that finds what the model relies on. Reference maps: a
    ball centred in the patch (nodules are centred: a strong baseline), and random order.

    python Testing/Benchmarks/benchmark_saliency.py --dataset DIR --nodule-table CSV [--limit N] [--json OUT]
"""
from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path
from typing import Dict

import numpy as np
from scipy.stats import spearmanr

from nadtrain.dataset import load_dataset, read_nodule_table
from nadtrain.splits import make_split
from notadiagnosis import Classifier
from notadiagnosis.preprocessing import normalize_hu

DELETED_FRACTIONS = np.array([0.0, 0.01, 0.02, 0.05, 0.1, 0.2, 0.3, 0.5])
TOP_FRACTION = 0.10


def test_nodules(table_path: Path, card: dict) -> set:
    """Nodule ids of the card's test split, recomputed from the whole labelled nodule table."""
    recorded = card["metrics"]["test"]["split"]
    params = recorded["params"]
    rows = [row for row in read_nodule_table(table_path) if row["label"] in (0, 1)]
    split = make_split([r["patient_id"] for r in rows], [r["nodule_id"] for r in rows], [r["label"] for r in rows],
                       mode=recorded["mode"], seed=recorded["seed"], test_fraction=params["test_fraction"],
                       n_folds=params["n_folds"], fold=params["fold"], exclude_patients=params.get("exclude_patients", ()),
                       test_fold=params.get("test_fold", 0))
    nodules = {rows[i]["nodule_id"] for i in split.indices["test"]}
    patients = {rows[i]["patient_id"] for i in split.indices["test"]}
    print(f"test split recomputed from {table_path}: {len(nodules)} nodules of {len(patients)} patients "
          f"(the card records {recorded['n_nodules']} nodules of {recorded['n_patients']} patients)")
    return nodules


def deletion_auc(classifier: Classifier, patch: np.ndarray, ranking: np.ndarray) -> float:
    """Area under the probability-vs-deleted-fraction curve, deleting voxels in ``ranking`` order."""
    batch = np.repeat(patch[None], len(DELETED_FRACTIONS), axis=0).reshape(len(DELETED_FRACTIONS), -1)
    for step, fraction in enumerate(DELETED_FRACTIONS):
        batch[step, ranking[: int(round(fraction * patch.size))]] = 0.0  # 0 after normalize_hu is -1000 HU
    probabilities, _, _ = classifier.predict_patches(batch.reshape((-1,) + patch.shape), tta=False)
    return float(np.trapezoid(probabilities, DELETED_FRACTIONS))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", type=Path, required=True)
    parser.add_argument("--nodule-table", type=Path, required=True)
    parser.add_argument("--limit", type=int, default=0, help="at most this many patches (0: all)")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    onnx_classifier = Classifier.load(runtime="onnx", device="cpu")
    torch_classifier = Classifier.load(runtime="torch", device="cpu", threads=1)
    keep = test_nodules(args.nodule_table, onnx_classifier.card)
    data = load_dataset(args.dataset)
    rows = [i for i, nodule in enumerate(data.nodule_ids) if nodule in keep]
    outside = len(data.nodule_ids) - len(rows)
    rows = rows[: args.limit] if args.limit else rows
    print(f"{len(rows)} test patches from {args.dataset} ({outside} patches of other splits left out); "
          f"load average {os.getloadavg()}")

    rng = np.random.default_rng(0)
    centre = np.linalg.norm(np.indices((64, 64, 64)) - 31.5, axis=0)
    figures: Dict[str, list] = {"spearman": [], "top10_iou": [], "probability": [], "label": [],
                                "deletion_score_cam": [], "deletion_layer_cam": [], "deletion_centre": [],
                                "deletion_random": [], "score_cam_ms": [], "layer_cam_ms": []}
    top = int(TOP_FRACTION * centre.size)
    for row in rows:
        patch = normalize_hu(data.patches_hu[row].astype(np.float32))
        start = time.perf_counter()
        score = onnx_classifier.saliency_map(patch, "score-cam")
        figures["score_cam_ms"].append(1000 * (time.perf_counter() - start))
        start = time.perf_counter()
        layer = torch_classifier.saliency_map(patch, "layer-cam")
        figures["layer_cam_ms"].append(1000 * (time.perf_counter() - start))
        figures["spearman"].append(float(spearmanr(score.ravel(), layer.ravel()).correlation))
        score_top, layer_top = (np.argsort(-m.ravel(), kind="stable")[:top] for m in (score, layer))
        figures["top10_iou"].append(len(np.intersect1d(score_top, layer_top)) / len(np.union1d(score_top, layer_top)))
        figures["probability"].append(float(onnx_classifier.predict_patches(patch[None], tta=False)[0][0]))
        figures["label"].append(int(data.labels[row]))
        for name, ranking in (("score_cam", np.argsort(-score.ravel(), kind="stable")),
                              ("layer_cam", np.argsort(-layer.ravel(), kind="stable")),
                              ("centre", np.argsort(centre.ravel(), kind="stable")),
                              ("random", rng.permutation(centre.size))):
            figures[f"deletion_{name}"].append(deletion_auc(onnx_classifier, patch, ranking))

    arrays = {name: np.array(values) for name, values in figures.items()}
    malignant = arrays["probability"] > onnx_classifier.threshold
    print(f"\nScore-CAM vs LayerCAM over {len(rows)} patches: Spearman rank correlation median "
          f"{np.median(arrays['spearman']):.2f} (IQR {np.percentile(arrays['spearman'], 25):.2f}-"
          f"{np.percentile(arrays['spearman'], 75):.2f}); top-10% voxel IoU median {np.median(arrays['top10_iou']):.2f}")
    print(f"deletion AUC (probability over 0-50% deleted; lower = the map finds what the model uses), mean:")
    summary = {"n": len(rows), "n_above_threshold": int(malignant.sum()), "load_average_at_end": os.getloadavg()}
    for name in ("score_cam", "layer_cam", "centre", "random"):
        values = arrays[f"deletion_{name}"]
        summary[f"deletion_{name}"] = {"all": float(values.mean()),
                                       "above_threshold": float(values[malignant].mean()) if malignant.any() else None}
        print(f"  {name:<10} all {values.mean():.3f}; the {malignant.sum()} above the threshold "
              f"{values[malignant].mean() if malignant.any() else float('nan'):.3f}")
    for name in ("score_cam_ms", "layer_cam_ms"):
        summary[name] = float(np.median(arrays[name]))
    summary |= {"spearman_median": float(np.median(arrays["spearman"])),
                "spearman_iqr": [float(np.percentile(arrays["spearman"], q)) for q in (25, 75)],
                "top10_iou_median": float(np.median(arrays["top10_iou"]))}
    print(f"time per map, median: Score-CAM (ONNX Runtime, 1 thread) {summary['score_cam_ms']:.0f} ms, "
          f"LayerCAM (torch, 1 thread) {summary['layer_cam_ms']:.0f} ms; load average {os.getloadavg()}")
    if args.json:
        args.json.write_text(json.dumps({"summary": summary, "per_patch": figures}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
