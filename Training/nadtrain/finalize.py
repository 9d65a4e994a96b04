"""After training: calibration and threshold on validation, then the model file and its card.

``finalize`` takes the best epoch's weights of a run (``TrainedRun``: what the loop hands on), fits
the calibration chosen by ``--calibration`` (``calibration.py``: the known prior shift, or Platt
scaling) and Youden's threshold on the validation logits, which are computed by the library's own
``Classifier.predict_patches`` (flip TTA: what inference computes), and writes ``model.safetensors``
+ card, ``history.json`` and ``train_summary.json``. ``nadtrain recalibrate`` calls it on a finished
run's best weights.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, Optional

import numpy as np
import torch
from safetensors.torch import load_file
from sklearn.metrics import roc_auc_score
from tqdm.auto import tqdm

from notadiagnosis.classifier import Classifier
from notadiagnosis.errors import InputError
from notadiagnosis.preprocessing import normalize_hu
from notadiagnosis.weights import save_model

from . import calibration
from .dataset import Dataset
from .files import write_json
from .input_masks import mask_params
from .splits import Split
from .train_card import TrainedRun, base_card, training_record
from .train_data import training_groups, training_item_labels
from .train_options import TrainConfig


def predict_logits(model: torch.nn.Module, data: Dataset, indices: np.ndarray, device: torch.device,
                   tta: bool, batch_size: int = 32, progress: bool = False, desc: str = "predict") -> np.ndarray:
    """Mean-TTA logits (temperature 1) through the library's ``Classifier.predict_patches`` —
    the very code path inference uses, so temperature and threshold fit what users will see.
    Leaves the model in eval mode."""
    classifier = Classifier.from_model(model, base_card(temperature=1.0), device)
    out = np.empty(len(indices), dtype=np.float64)
    starts = range(0, len(indices), batch_size)
    for start in tqdm(starts, desc=desc, unit="batch", leave=False, disable=not progress):
        chunk = indices[start:start + batch_size]
        _, _, logits = classifier.predict_patches(normalize_hu(data.patches_hu[chunk]), tta=tta)
        out[start:start + len(chunk)] = logits
    return out


def safe_auc(labels: np.ndarray, scores: np.ndarray) -> float:
    """ROC AUC, or NaN when only one class is present."""
    labels = np.asarray(labels)
    if np.unique(labels).size < 2:
        return float("nan")
    return float(roc_auc_score(labels, scores))


def finalize(config: TrainConfig, model: torch.nn.Module, data: Dataset, split: Split, split_description: dict,
             trained: TrainedRun, device: torch.device, best: Optional[Path] = None,
             training_overrides: Optional[Dict[str, Any]] = None) -> Dict[str, Any]:
    """Best weights (``best``, default OUT/best.safetensors) -> calibration per ``config.calibration``
    and threshold on validation -> ``model.safetensors`` + card (``training_overrides`` replace
    entries of the card's ``training`` record: ``nadtrain recalibrate`` keeps the original run's)."""
    out = Path(config.out)
    state = trained.state
    best = Path(best) if best is not None else out / "best.safetensors"
    if not best.is_file():
        raise InputError("no epoch produced a finite validation AUC; the validation split needs both classes.")
    model.load_state_dict(load_file(str(best)))
    model.to(device)
    val_all = split.indices["val"]
    val_logits = predict_logits(model, data, val_all, device, tta=config.calibration_tta,
                                batch_size=config.batch_size, progress=config.progress, desc="calibrating")
    val_labels = data.labels[val_all].astype(int)
    if config.calibration == "platt":
        temperature, offset = calibration.fit_platt(val_logits, val_labels)
        if not np.exp(calibration.LOG_T_BOUNDS[0]) * 1.01 < temperature < np.exp(calibration.LOG_T_BOUNDS[1]) / 1.01:
            tqdm.write(f"warning: the fitted temperature {temperature:.3g} is at its bound: the validation logits "
                       "carry almost no information (too little training or too small a validation split).")
        method = ("Platt scaling on validation NLL: sigmoid((logit + offset) / temperature), the offset folded "
                  "into the last layer's bias (it undoes the prior shift of class weighting)")
    else:
        item_labels = training_item_labels(data, training_groups(data, split.indices["train"], config.one_render_per_epoch))
        n_malignant, n_benign = int(item_labels.sum()), int((1 - item_labels).sum())
        temperature = 1.0
        offset = calibration.prior_shift_offset(n_malignant, n_benign, balanced=config.balance != "none")
        method = (f"prior shift only: sigmoid(logit + offset), offset = -log(n_benign / n_malignant) = "
                  f"-log({n_benign} / {n_malignant}) of the training items, undoing the class balancing's 50/50 "
                  "prior; temperature 1; nothing fitted on validation (folded into the last layer's bias)"
                  if config.balance != "none" else "none: the loss was not balanced, so no prior shift to undo")
        if config.soft_labels:
            method += ("; trained on soft labels, so the probabilities estimate the share of readers rating "
                       "malignant rather than the 0/1 median label (use platt to calibrate to the labels)")
    # Fold the offset into the last layer's bias: every (TTA) logit moves by ``offset``, so the
    # library's sigmoid(mean logit / T) is the fitted sigmoid((logit + offset) / T).
    with torch.no_grad():
        model.head.bias += offset
    calibrated = (val_logits + offset) / temperature
    val_prob = 1.0 / (1.0 + np.exp(-calibrated))
    threshold = calibration.youden_threshold(val_labels, val_prob)
    val_metrics = {
        "split": "val", "n_samples": int(len(val_all)), "auc": safe_auc(val_labels, val_logits),
        "nll_uncalibrated": calibration.nll_at_temperature(val_logits, val_labels, 1.0),
        "nll_calibrated": calibration.nll_platt(val_logits, val_labels, temperature, offset),
        "tta": config.calibration_tta,
    }
    card = base_card(temperature, threshold)
    if config.input_mask != "none":  # what the network saw: inference must give it the same (notadiagnosis.masking)
        card["preprocessing"]["input_mask"] = mask_params(config.mask_margin_mm)
    card["calibration"].update(method=method, logit_offset_folded_into_weights=offset)
    card["threshold_method"] = "Youden's J on validation probabilities"
    card["training"] = training_record(config, data, split_description, trained)
    card["training"].update(training_overrides or {})
    card["metrics"] = {"validation": val_metrics}
    save_model(model, out / "model.safetensors", card)
    write_json(out / "history.json", state["history"])
    summary = {"model": str(out / "model.json"), "temperature": temperature, "logit_offset": offset,
               "threshold": threshold,
               "validation": val_metrics, "best_epoch": state["best_epoch"] + 1,
               "epochs_run": state["epoch"] + 1, "stopped": state["stopped"],
               "train_seconds": state["train_seconds"], "wall_seconds": trained.wall_seconds,
               "device": trained.device_description}
    if config.input_mask != "none":
        summary["input_mask_cache"] = str(Path(config.input_mask_cache).resolve())  # where evaluate finds the masks
    write_json(out / "train_summary.json", summary)
    tqdm.write(f"model written to {out / 'model.safetensors'}: temperature {temperature:.3f}, logit offset {offset:+.3f}, "
               f"threshold {threshold:.3f}, validation AUC {val_metrics['auc']:.4f}")
    return summary
