"""Saliency on ONNX Runtime against today's LayerCAM (torch autograd), on test-split patches: prints
figures, asserts nothing.

For each patch of the bundled model's test split found in ``--dataset`` (an insertion dataset built
with ``nadtrain build insertion --nodules ...``; the split is recomputed from the full nodule table
with the card's split parameters, so only test nodules are used), three maps:
  - LayerCAM on ONNX Runtime (the library's saliency: the gradient is computed by the exported graph);
  - LayerCAM on torch (autograd; the method before ONNX Runtime);
  - Score-CAM (Wang et al. 2020; forward passes only: the 8³ stage's 16 maps each mask the patch,
    weighted by the softmax of the masked patches' logits), the gradient-free alternative considered.
Agreement with torch's LayerCAM: Spearman rank correlation of the 64³ maps and the overlap (IoU) of
their top 10 % voxels. Faithfulness, by a deletion curve (Petsiuk et al., RISE, BMVC 2018): the
voxels a map ranks highest are turned into air (-1000 HU) in steps up to half the patch, and the
calibrated malignancy probability is read after each step; the area under that curve (fraction
deleted 0..0.5, probability) is lower for a map that finds what the model relies on. Reference
orders: a ball centred in the patch (nodules are centred: a strong baseline), and random.

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
from notadiagnosis.saliency import SALIENCY_STAGE, upsample_trilinear

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


def score_cam(classifier: Classifier, patch: np.ndarray) -> np.ndarray:
    """Score-CAM (D, H, W) in [0, 1] on the torch runtime's network (the stage's feature maps)."""
    import torch

    model = classifier.backend.model
    with torch.inference_mode():
        activations = model.stem(torch.from_numpy(patch)[None, None])
        for stage in model.stages[: SALIENCY_STAGE + 1]:
            activations = stage(activations)
    features = activations[0].numpy()
    low = features.min(axis=(1, 2, 3), keepdims=True)
    span = features.max(axis=(1, 2, 3), keepdims=True) - low
    masks = upsample_trilinear((features - low) / np.where(span > 0, span, 1.0), patch.shape)
    logits = classifier.backend.logits((masks * patch)[:, None])
    weights = np.exp(logits - logits.max()) / np.exp(logits - logits.max()).sum()
    cam = upsample_trilinear(np.maximum(np.tensordot(weights, features, axes=1), 0.0)[None], patch.shape)[0]
    return cam / cam.max() if cam.max() > 0 else cam


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
    top = int(TOP_FRACTION * centre.size)
    methods = ("onnx_layer_cam", "torch_layer_cam", "score_cam")
    figures: Dict[str, list] = {"probability": [], "label": []}
    for row in rows:
        patch = normalize_hu(data.patches_hu[row].astype(np.float32))
        maps, orders = {}, {}
        for name, compute in (("onnx_layer_cam", lambda: onnx_classifier.saliency_map(patch)),
                              ("torch_layer_cam", lambda: torch_classifier.saliency_map(patch)),
                              ("score_cam", lambda: score_cam(torch_classifier, patch))):
            start = time.perf_counter()
            maps[name] = compute()
            figures.setdefault(f"{name}_ms", []).append(1000 * (time.perf_counter() - start))
            orders[name] = np.argsort(-maps[name].ravel(), kind="stable")
        reference = maps["torch_layer_cam"].ravel()
        for name in ("onnx_layer_cam", "score_cam"):
            figures.setdefault(f"{name}_spearman", []).append(float(spearmanr(maps[name].ravel(), reference).correlation))
            overlap = np.intersect1d(orders[name][:top], orders["torch_layer_cam"][:top]).size
            figures.setdefault(f"{name}_top10_iou", []).append(overlap / (2 * top - overlap))
        figures["probability"].append(float(onnx_classifier.predict_patches(patch[None], tta=False)[0][0]))
        figures["label"].append(int(data.labels[row]))
        orders |= {"centre": np.argsort(centre.ravel(), kind="stable"), "random": rng.permutation(centre.size)}
        for name, order in orders.items():
            figures.setdefault(f"deletion_{name}", []).append(deletion_auc(onnx_classifier, patch, order))

    arrays = {name: np.array(values) for name, values in figures.items()}
    above = arrays["probability"] > onnx_classifier.threshold
    summary: dict = {"n": len(rows), "n_above_threshold": int(above.sum())}
    print(f"\nagreement with torch's LayerCAM over {len(rows)} patches (median, IQR):")
    for name in ("onnx_layer_cam", "score_cam"):
        rho, iou = arrays[f"{name}_spearman"], arrays[f"{name}_top10_iou"]
        summary[name] = {"spearman_median": float(np.median(rho)),
                         "spearman_iqr": [float(np.percentile(rho, q)) for q in (25, 75)],
                         "top10_iou_median": float(np.median(iou))}
        print(f"  {name:<16} Spearman {np.median(rho):.4f} ({np.percentile(rho, 25):.3f}-{np.percentile(rho, 75):.3f}); "
              f"top-10% IoU {np.median(iou):.3f}")
    print("deletion AUC, mean (probability over 0-50% deleted; lower = the map finds what the model uses):")
    for name in methods + ("centre", "random"):
        values = arrays[f"deletion_{name}"]
        summary[f"deletion_{name}"] = {"all": float(values.mean()),
                                       "above_threshold": float(values[above].mean()) if above.any() else None}
        print(f"  {name:<16} all {values.mean():.3f}; the {above.sum()} above the threshold "
              f"{values[above].mean() if above.any() else float('nan'):.3f}")
    for name in methods:
        summary[f"{name}_ms_median"] = float(np.median(arrays[f"{name}_ms"]))
    summary["load_average_at_end"] = os.getloadavg()
    print("ms per map, median: " + ", ".join(f"{name} {summary[f'{name}_ms_median']:.0f}" for name in methods)
          + f"; load average {summary['load_average_at_end']}")
    if args.json:
        args.json.write_text(json.dumps({"summary": summary, "per_patch": figures}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
