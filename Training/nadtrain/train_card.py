"""The model card a training run writes: its fixed parts and the ``training`` record (data, split,
recipe, device, time). ``finalize`` adds calibration, threshold and validation metrics."""
from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Dict

import numpy as np
import torch

from notadiagnosis.card import preprocessing_block

from . import ratings
from .augment import AugmentConfig
from .dataset import Dataset
from .train_options import TrainConfig


@dataclass
class TrainedRun:
    """What a finished training loop hands on: its state (epochs, best epoch, history, time) and
    where it ran. ``nadtrain recalibrate`` rebuilds one from a run's checkpoint and card."""

    state: Dict[str, Any]
    device_description: str
    processes: int
    wall_seconds: float


def base_card(temperature: float = 1.0, threshold: float = 0.5) -> Dict[str, Any]:
    """The model card's fixed parts (the library completes architecture and weights): the library's
    patch geometry and HU window, the calibration and the threshold."""
    return {
        "name": "nadtrain-run",
        "version": "0.0.0",
        "preprocessing": preprocessing_block(),
        "calibration": {"temperature": float(temperature), "method": "temperature scaling on validation NLL"},
        "threshold": float(threshold),
    }


def training_record(config: TrainConfig, data: Dataset, split_description: dict, trained: TrainedRun) -> Dict[str, Any]:
    """The card's ``training`` section: data, split (without sample indices), recipe, device, time."""
    state = trained.state
    split_summary = {k: v for k, v in split_description.items() if k not in ("indices", "dataset")}
    split_summary["splits"] = {name: {k: v for k, v in info.items() if k != "patients"}
                               for name, info in split_description["splits"].items()}
    return {
        # The dataset's folder name only: a shipped card should not carry the trainer's local paths.
        "data": {"source": data.manifest.get("source"), "dataset": Path(config.dataset).resolve().name,
                 "n_samples": len(data), "n_nodules": int(np.unique(data.nodule_ids).size),
                 "n_patients": int(np.unique(data.patient_ids).size), "build_params": data.manifest.get("params", {}),
                 "backgrounds": sorted(set(data.background.tolist()) - {""})},
        "split": split_summary,
        "recipe": {**config.recipe(), "optimizer": "AdamW", "schedule": "linear warm-up then cosine per step",
                   "loss": "BCE with logits" + (" + positive-class weight n_benign/n_malignant" if config.balance == "weight" else "")
                           + (" on soft labels: the share of readers rating malignant (4-5; a 3 counts half)"
                              if config.soft_labels else ""),
                   "augmentation": AugmentConfig().to_dict() if config.augment else None,
                   "auxiliary_loss": (f"{config.aux_ratings} x masked MSE of a linear head regressing the readers' "
                                      f"standardised ratings {list(ratings.FEATURES)} (training only)"
                                      if config.aux_ratings > 0 else None),
                   "consistency_loss": (f"{config.consistency} x mean squared difference of the logits of two "
                                        "renderings of the same nodule, paired in each batch" if config.consistency > 0 else None),
                   "weight_averaging": (f"exponential moving average, decay {config.ema} per step (buffers too); "
                                        "validated, kept and exported" if config.ema > 0 else None),
                   "early_stopping": "validation AUC"},
        "best_epoch": state["best_epoch"] + 1, "epochs_run": state["epoch"] + 1, "stopped": state["stopped"],
        "device": trained.device_description, "processes": trained.processes,
        "train_seconds": round(state["train_seconds"], 1), "wall_seconds": round(trained.wall_seconds, 1),
        "torch": torch.__version__, "finished": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
