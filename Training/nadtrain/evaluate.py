"""`nadtrain evaluate`: a trained run on its test split -> ``report.json``, ``predictions.csv``, PNGs.

The model is loaded the way users load it (``Classifier.load`` on ``model.json``, sha256 checked)
and predicts with flip TTA, the card's temperature and its validation threshold. Beside it, the
size-only baseline (logistic regression on log median diameter, fitted on the training nodules,
threshold by Youden on validation) on the same test samples, and the model's AUC margin over it.
Also the readers' ratings reference (``ratings.py``): what a logistic regression on the radiologists'
own characteristic ratings reaches on the same samples -- not a competitor, an indication of how
much the (synthesised) pixels could carry.
Bootstrap CIs resample patients, since a patient's nodules and a nodule's renderings are not
independent. When the dataset has several CT backgrounds, every result is also given per background
(with whether that background was seen in training).
"""
from __future__ import annotations

import argparse
import csv
import json
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Dict, Optional

import numpy as np
from tqdm.auto import tqdm

from notadiagnosis.classifier import Classifier
from notadiagnosis.errors import InputError
from notadiagnosis.preprocessing import normalize_hu
from notadiagnosis.disclaimer import DISCLAIMER
from notadiagnosis.weights import model_files, sha256_of

from . import calibration, input_masks, metrics, plots, ratings
from .dataset import Dataset, load_dataset, load_patches
from .files import write_json
from .nodules import TEXTURE_CLASSES, texture_class
from .splits import Split, map_split
from .train_options import DEVICE_HELP


def predict_probabilities(classifier: Classifier, patches_hu: np.ndarray, batch_size: int = 32,
                          tta: bool = True, progress: bool = True):
    """(probabilities, uncertainties, logits) of the library classifier for HU patches (n,64,64,64)."""
    n = len(patches_hu)
    probs, unc, logits = np.empty(n), np.empty(n), np.empty(n)
    for start in tqdm(range(0, n, batch_size), desc="evaluating", unit="batch", disable=not progress):
        stop = min(start + batch_size, n)
        p, u, z = classifier.predict_patches(normalize_hu(patches_hu[start:stop]), tta=tta)
        probs[start:stop], unc[start:stop], logits[start:stop] = p, u, z
    return probs, unc, logits


def _nodule_column(data: Dataset, indices: np.ndarray, column: str) -> np.ndarray:
    table = data.nodule_table()
    values = []
    for nodule_id in data.nodule_ids[indices]:
        value = table.get(nodule_id, {}).get(column)
        values.append(np.nan if value is None or value == "" else float(value))
    return np.asarray(values, dtype=np.float64)


def _check_same_samples(description: Dict[str, Any], data: Dataset, dataset: Path, model_path: Path) -> None:
    """Refuse a dataset whose samples the run's recorded indices would not name (a moved original is fine).

    Runs record the digest of their dataset's ordered sample keys; older runs only the build options
    (in the card), which at least tells a dataset built another way."""
    recorded = description.get("sample_keys_sha256")
    if recorded is not None:
        if data.sample_keys_sha256() != recorded:
            raise InputError(f"{dataset} does not hold the samples, in the same order, that the run was trained on; "
                             "give the original dataset (or, if it still exists, another one of the same samples).")
        return
    trained_params = json.loads(model_path.read_text(encoding="utf-8")).get("training", {}).get("data", {}).get("build_params")
    if trained_params is not None and trained_params != data.manifest.get("params", {}):
        raise InputError(f"{dataset} was built with other options than the dataset the run was trained on; give that "
                         "dataset (or, if it still exists, another one of the same samples).")


def _first_sample_per_nodule(data: Dataset, indices: np.ndarray) -> np.ndarray:
    """One sample index per nodule of ``indices``: references are fitted one row per nodule."""
    _, first = np.unique(data.nodule_ids[indices], return_index=True)
    return indices[first]


def fit_size_baseline(data: Dataset, split: Split):
    """Size-only baseline fitted on the training nodules (one row per nodule), Youden threshold on val.

    Returns (baseline, threshold, None), or (None, None, reason) when the nodule table has no
    diameters (MedMNIST brings none)."""
    used = np.concatenate([split.indices[name] for name in ("train", "val", "test")])
    diameters = _nodule_column(data, used, "median_diameter_mm")
    if not np.all(np.isfinite(diameters) & (diameters > 0)):
        return None, None, "the nodule table lacks median_diameter_mm for some nodules (MedMNIST has none)"
    per_nodule = _first_sample_per_nodule(data, split.indices["train"])
    baseline = metrics.SizeBaseline().fit(_nodule_column(data, per_nodule, "median_diameter_mm"),
                                          data.labels[per_nodule])
    val_idx = split.indices["val"]
    val_p = baseline.predict_proba(_nodule_column(data, val_idx, "median_diameter_mm"))
    threshold = calibration.youden_threshold(data.labels[val_idx].astype(int), val_p)
    return baseline, threshold, None


def fit_ratings_reference(data: Dataset, split: Split):
    """Ratings reference fitted on the training nodules (one row per nodule); None when the table has no ratings."""
    per_nodule = _first_sample_per_nodule(data, split.indices["train"])
    table = data.nodule_table()
    features = ratings.features_for(data.nodule_ids[per_nodule], table)
    if not ratings.has_ratings(features):
        return None
    return ratings.RatingsReference().fit(features, data.labels[per_nodule])


def _stored_input_masks(run_dir: Path, cache: Optional[Path], data: Dataset, params: Dict[str, Any],
                        mapped_from: Optional[str]) -> Optional[input_masks.InputMasks]:
    """The precomputed input masks of a nodule-masked run (``cache``, or the run's own from its summary), or
    None (then computed per patch): none for another dataset than the one they were computed for."""
    if cache is None and mapped_from is None:
        summary = run_dir / "train_summary.json"
        recorded = json.loads(summary.read_text(encoding="utf-8")).get("input_mask_cache") if summary.is_file() else None
        cache = Path(recorded) if recorded else None
    if cache is None or not cache.is_dir():
        return None
    return input_masks.load_input_masks(cache, data, float(params["margin_mm"]))


def evaluate_run(run_dir: Path, dataset: Optional[Path] = None, out: Optional[Path] = None, split_name: str = "test",
                 device: str = "auto", batch_size: int = 32, n_boot: int = 2000, seed: int = 0,
                 tta: bool = True, progress: bool = True, input_mask_cache: Optional[Path] = None) -> Dict[str, Any]:
    """Evaluate the model of ``run_dir`` (written by ``nadtrain train``) and write the report. A run trained on
    nodule-masked input (its card's ``preprocessing.input_mask``) is scored on masked patches: those stored in
    ``input_mask_cache`` (default: the run's own), the others masked now."""
    run_dir = Path(run_dir)
    splits_path = run_dir / "splits.json"
    model_path = run_dir / "model.json"
    if not splits_path.is_file() or not model_path.is_file():
        raise InputError(f"{run_dir} is not a finished training run (model.json and splits.json expected); "
                         "run `nadtrain train` to the end first.")
    description = json.loads(splits_path.read_text(encoding="utf-8"))
    trained_on = Path(description["dataset"])
    dataset = Path(dataset) if dataset is not None else trained_on
    data = load_dataset(dataset, load_patches=False)  # metadata only; the split's pixels are read below
    mapped_from = None
    if trained_on.is_dir() and trained_on.resolve() != dataset.resolve():
        # Another dataset of the same samples (another renderer): the split follows the sample keys.
        original = load_dataset(trained_on, load_patches=False)
        split = map_split(Split.from_description(description, len(original)), original.sample_keys(), data.sample_keys(),
                          original.labels, data.labels)
        mapped_from = str(trained_on.resolve())
    else:  # the training dataset, or a moved copy of it: the recorded indices must mean the same samples
        _check_same_samples(description, data, dataset, model_path)
        split = Split.from_description(description, len(data))
    if out is None:  # a report on another rendering never replaces the run's own (export reads that one)
        out = run_dir / ("evaluation" if mapped_from is None else f"evaluation-on-{dataset.resolve().name}")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    if split_name not in split.indices:
        raise InputError(f"unknown split {split_name!r}; use train, val or test.")
    classifier = Classifier.load(str(model_path), device=device)
    card = classifier.card
    threshold = classifier.threshold

    idx = split.indices[split_name]
    labels = data.labels[idx].astype(int)
    patients = data.patient_ids[idx]
    patches = load_patches(dataset, idx)
    input_mask = card["preprocessing"].get("input_mask")
    if input_mask is not None:  # what the network was trained to see (the library's masking, stored or computed now)
        patches = input_masks.masked_patches(patches, idx, input_mask,
                                             _stored_input_masks(run_dir, input_mask_cache, data, input_mask, mapped_from))
    probs, unc, logits = predict_probabilities(classifier, patches, batch_size, tta, progress)
    baseline, baseline_threshold, baseline_missing = fit_size_baseline(data, split)
    diameters = _nodule_column(data, idx, "median_diameter_mm")
    base_probs = baseline.predict_proba(diameters) if baseline is not None else None
    reference = fit_ratings_reference(data, split)
    reference_summary = None if reference is None else metrics.summarize(
        labels, reference.predict_proba(ratings.features_for(data.nodule_ids[idx], data.nodule_table())),
        0.5, patients, n_boot, seed)

    held_out = set(description.get("params", {}).get("holdout_backgrounds", []))
    warnings = []
    leak = description.get("leakage", {})
    if description.get("mode") == "annotation" or leak.get("test_nodules_also_in_train_or_val"):
        warnings.append(
            f"LEAK-PRONE SPLIT ({description.get('mode')}): {leak.get('test_nodules_also_in_train_or_val')} of "
            f"{leak.get('test_nodules')} test nodules and {leak.get('test_patients_also_in_train_or_val')} test "
            "patients were also seen in training or validation, so these test numbers overstate performance.")

    nodules = data.nodule_ids[idx]

    def summary(mask: np.ndarray, scores: np.ndarray, cut: float) -> Dict[str, Any]:
        result = metrics.summarize(labels[mask], scores[mask], cut, patients[mask], n_boot, seed)
        # Whether the ECE is distinguishable from what calibrated predictions like these show on this test size.
        result["ece_if_calibrated"] = metrics.ece_if_calibrated(scores[mask], nodules[mask], result["ece"], seed=seed)
        return result

    def block(mask: np.ndarray) -> Dict[str, Any]:
        return {
            "n_samples": int(mask.sum()), "n_nodules": int(np.unique(nodules[mask]).size),
            "n_patients": int(np.unique(patients[mask]).size),
            "model": summary(mask, probs, threshold),
            "baseline": None if base_probs is None else summary(mask, base_probs, baseline_threshold),
            "margin": None if base_probs is None else metrics.auc_margin(
                labels[mask], probs[mask], base_probs[mask], patients[mask], n_boot, seed),
        }

    everything = np.ones(len(idx), dtype=bool)
    report: Dict[str, Any] = {
        "disclaimer": DISCLAIMER,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "model": {"card": str(model_path.resolve()), "name": card.name, "version": card.version,
                  "sha256": sha256_of(model_files(model_path)[0]), "architecture": card.architecture,
                  "temperature": classifier.temperature, "threshold": threshold,
                  "threshold_source": "validation split (Youden's J)", "tta": tta},
        "dataset": {"path": str(dataset.resolve()), "source": data.manifest.get("source"),
                    "params": data.manifest.get("params", {})},
        "split": {"name": split_name, "mode": description.get("mode"), "seed": description.get("seed"),
                  "params": description.get("params"), "leakage": leak,
                  **({"mapped_by_sample_key_from": mapped_from} if mapped_from else {})},
        "warnings": warnings,
        "baseline": ({**baseline.describe(), "available": True, "fitted_on": "train nodules (one row per nodule)",
                      "threshold": baseline_threshold, "threshold_source": "validation split (Youden's J)"}
                     if baseline is not None else {"available": False, "reason": baseline_missing}),
        "overall": block(everything),
        "ratings_reference": None if reference is None else {
            **reference.describe(), "fitted_on": "train nodules (one row per nodule)",
            **{key: reference_summary[key] for key in ("auc", "auc_ci95")}},
        "bootstrap": {"resamples": n_boot, "unit": "patient", "seed": seed, "interval": "percentile 95%"},
    }
    backgrounds = sorted(set(data.background[idx].tolist()))
    if len(backgrounds) > 1:
        report["by_background"] = {}
        for name in backgrounds:
            entry = block(data.background[idx] == name)
            entry["seen_in_training"] = name not in held_out
            report["by_background"][name] = entry
    sizes = np.array([metrics.size_bin(d) if np.isfinite(d) else "unknown" for d in diameters])
    textures = np.array([texture_class(t) for t in _nodule_column(data, idx, "texture_median")])
    size_order = [metrics.size_bin(low) for low, _ in metrics.SIZE_BINS_MM] + ["unknown"]
    report["by_size"] = metrics.breakdown(labels, probs, base_probs, sizes, patients, max(n_boot // 4, 0), seed, size_order)
    report["by_texture"] = metrics.breakdown(labels, probs, base_probs, textures, patients, max(n_boot // 4, 0), seed,
                                             list(TEXTURE_CLASSES) + ["unknown"])
    # Surroundings: how much p moves between the renders (placements, backgrounds) of one nodule.
    report["surroundings"] = {"unit": "per nodule: max - min of p over its renders in this split",
                              **metrics.render_spread(probs, nodules)}
    report["validation"] = card.metrics.get("validation")

    report["figures"] = plots.write_figures(out, labels, probs, base_probs, threshold, report,
                                            {name: data.background[idx] == name for name in backgrounds}
                                            if len(backgrounds) > 1 else None)
    _write_predictions(out / "predictions.csv", data, idx, probs, unc, logits, base_probs)
    report["predictions"] = "predictions.csv"
    write_json(out / "report.json", report)
    report["written_to"] = str(out / "report.json")  # for the caller; not part of the file
    return report


def _write_predictions(path: Path, data: Dataset, idx: np.ndarray, probs, unc, logits, base_probs) -> None:
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["sample", "nodule_id", "patient_id", "background", "render_index", "label",
                         "probability", "uncertainty", "logit", "baseline_probability"])
        for k, i in enumerate(idx):
            writer.writerow([int(i), data.nodule_ids[i], data.patient_ids[i], data.background[i],
                             int(data.render_index[i]), int(data.labels[i]), f"{probs[k]:.6f}", f"{unc[k]:.6f}",
                             f"{logits[k]:.6f}", "" if base_probs is None else f"{base_probs[k]:.6f}"])


def format_summary(report: Dict[str, Any]) -> str:
    """A few lines for the terminal."""
    def fmt(v: Any) -> str:
        return "n/a" if v is None else f"{v:.3f}"

    def line(name: str, b: Dict[str, Any]) -> str:
        m, base, margin = b["model"], b["baseline"] or {"auc": None}, b["margin"] or {"auc_margin": None}
        ci = m["auc_ci95"] or [None, None]
        null = m.get("ece_if_calibrated") or {"range90": [None, None]}
        return (f"{name}: n={b['n_samples']} ({b['n_patients']} patients) model AUC {fmt(m['auc'])} "
                f"[{fmt(ci[0])}, {fmt(ci[1])}], sens {fmt(m['sensitivity'])}, spec {fmt(m['specificity'])}, "
                f"ECE {fmt(m['ece'])} (calibrated predictions like these: {fmt(null['range90'][0])}-{fmt(null['range90'][1])}); "
                f"size-only AUC {fmt(base['auc'])}; margin {fmt(margin['auc_margin'])}")

    lines = [line("overall", report["overall"])]
    spread = report.get("surroundings") or {}
    if spread.get("n"):
        lines.append(f"surroundings (per-nodule spread of p over its renders, {spread['n']} nodules): median "
                     f"{fmt(spread['median'])}, p90 {fmt(spread['p90'])}, max {fmt(spread['max'])}")
    if report.get("ratings_reference"):
        lines.append(f"readers' ratings reference (not an image model): AUC {fmt(report['ratings_reference']['auc'])}")
    for name, entry in report.get("by_background", {}).items():
        seen = "seen in training" if entry["seen_in_training"] else "held out from training"
        lines.append(line(f"background {name} ({seen})", entry))
    lines += [f"WARNING: {w}" for w in report["warnings"]]
    lines.append(report["disclaimer"])
    return "\n".join(lines)


def configure_parser(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``nadtrain evaluate``."""
    parser.add_argument("run", help="run directory written by `nadtrain train`")
    parser.add_argument("--dataset", help="dataset directory (default: the one the run was trained on); another dataset of "
                        "the same nodules, backgrounds and renders (e.g. another renderer) is scored on the run's split by sample key")
    parser.add_argument("--out", help="report directory (default: RUN/evaluation)")
    parser.add_argument("--split", default="test", choices=["test", "val", "train"])
    parser.add_argument("--device", default="auto", help=DEVICE_HELP)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--bootstrap", type=int, default=2000, help="bootstrap resamples for the CIs")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-tta", action="store_true")
    parser.add_argument("--no-progress", action="store_true")
    parser.add_argument("--input-mask-cache", help="for a run trained with --input-mask nodule: the stored masks "
                        "(default: the run's own; samples without one are masked now, about 0.1 s of CPU each)")


def run_cli(args: argparse.Namespace) -> int:
    report = evaluate_run(Path(args.run), Path(args.dataset) if args.dataset else None,
                          Path(args.out) if args.out else None, args.split, args.device, args.batch_size,
                          args.bootstrap, args.seed, not args.no_tta, not args.no_progress,
                          Path(args.input_mask_cache) if args.input_mask_cache else None)
    print(format_summary(report))
    print(f"report: {report['written_to']}")
    return 0
