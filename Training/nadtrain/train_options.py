"""The options of a training run, each stated once: ``TrainConfig``'s fields carry their command-line
flag and help, and ``nadtrain train``'s parser is built from them.

``TrainConfig`` is what decides a run; it is stored in the checkpoint, the summary and the model
card (``recipe()``: the options that change the trained weights, which a resumed run must share).
"""
from __future__ import annotations

import argparse
import sys
from dataclasses import MISSING, asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

from notadiagnosis.errors import InputError
from notadiagnosis.masking import DEFAULT_MARGIN_MM, INPUT_MASKS
from notadiagnosis.model import ARCHITECTURES
from notadiagnosis.runtime import DEVICE_CHOICES

from .dataset import load_dataset, read_manifest

BALANCE = ("weight", "sampler", "none")
CALIBRATION = ("prior", "platt")  # see calibration.py: prior shift only (default) or Platt on validation
SPLIT_MODES = ("patient", "source", "annotation")
DEVICE_HELP = f"{', '.join(DEVICE_CHOICES)}, or cuda:N"  # the library's device choices


def option(default: Any = MISSING, help: Optional[str] = None, *, flag: Optional[str] = None,
           off_flag: Optional[str] = None, choices: Optional[Sequence[str]] = None, metavar: Optional[str] = None,
           repeat: bool = False, positional: bool = False, cli: bool = True) -> Any:
    """A config field with its command line: ``--field-name`` unless ``flag`` names it; a boolean
    that is on by default is turned off by ``off_flag`` (e.g. ``--no-augment``); ``repeat`` makes a
    list option given once per value."""
    meta = {"help": help, "flag": flag, "off_flag": off_flag, "choices": choices, "metavar": metavar,
            "repeat": repeat, "positional": positional, "cli": cli}
    if repeat:
        return field(default_factory=list, metadata=meta)
    return field(default=default, metadata=meta)


@dataclass
class TrainConfig:
    """Everything that decides a run; stored in the checkpoint, the summary and the model card."""

    dataset: str = option(help="dataset directory (nadtrain build)", positional=True)
    out: str = option(help="run directory (checkpoints, model, splits)")
    architecture: str = option("resnet3d-small", choices=sorted(ARCHITECTURES))
    epochs: int = option(40)
    batch_size: int = option(32, "per process")
    lr: float = option(2e-3)
    weight_decay: float = option(0.05)
    warmup_epochs: float = option(1.0)
    patience: int = option(10, "early stopping: epochs without a validation AUC gain")
    seed: int = option(0)
    split: str = option("patient", "patient: by patient, stratified (default); source: the dataset's own split "
                                   "(medmnist); annotation: LEAK-PRONE per-sample split, only to show leakage in the "
                                   "report", choices=SPLIT_MODES)
    test_fraction: float = option(0.2)
    n_folds: int = option(5, "patient folds of train+val; one is validation", flag="--folds")
    fold: int = option(0, "which fold is validation (k-fold: train once per fold)")
    test_fold: int = option(0, "which patient fold is the test split (default 0; 1.. for cross-testing, see "
                               "`nadtrain references`)")
    holdout_backgrounds: List[str] = option(help="keep this CT background out of train and val (test keeps it); "
                                                 "repeatable", flag="--holdout-background", metavar="NAME", repeat=True)
    exclude_patients: List[str] = option(help="use none of this patient's samples (train, val or test); repeatable",
                                         flag="--exclude-patient", metavar="ID", repeat=True)
    one_render_per_epoch: bool = option(True, "use every rendering of every nodule each epoch (default: one per "
                                              "nodule per epoch)", off_flag="--all-renders")
    balance: str = option("weight", choices=BALANCE)
    augment: bool = option(True, off_flag="--no-augment")
    amp: bool = option(True, "disable mixed precision on CUDA", off_flag="--no-amp")
    device: str = option("auto", DEVICE_HELP)
    num_workers: int = option(0)
    val_tta: bool = option(False, "flip TTA in per-epoch validation too (4x slower)")
    calibration_tta: bool = option(True, cli=False)
    aux_ratings: float = option(0.0, "also regress the readers' characteristic ratings and size from the patch "
                                     "(multi-task, training only) with this loss weight; 0 = off", metavar="WEIGHT")
    consistency: float = option(0.0, "stable by construction: each batch holds two renderings of every nodule in it "
                                     "(two placements, each augmented on its own; a batch is --batch-size nodules) and "
                                     "the loss adds this weight x the mean squared difference of their logits; 0 = off",
                                metavar="WEIGHT")
    ema: float = option(0.0, "validate and keep an exponential moving average of the weights, e.g. 0.99; 0 = off",
                        metavar="DECAY")
    soft_labels: bool = option(False, "train on the share of readers who rated the nodule malignant (a 3 counts "
                                      "half) instead of the 0/1 median label; validation, calibration and "
                                      "evaluation keep 0/1")
    calibration: str = option("prior", "prior: undo the class balancing's known prior shift, temperature 1, nothing "
                                       "fitted (default; chosen by cross-testing, Training/results round 4); platt: "
                                       "fit temperature and offset on validation NLL", choices=CALIBRATION)
    input_mask: str = option("none", "none: the plain patch (default); nodule: every voxel farther than --mask-margin-mm from "
                                     "the nodule the library's finder segments from the patch centre becomes lung "
                                     "parenchyma (notadiagnosis.masking; precomputed by `nadtrain input-masks`)",
                             choices=INPUT_MASKS)
    mask_margin_mm: float = option(DEFAULT_MARGIN_MM, "with --input-mask nodule: the margin kept around the nodule (mm)")
    input_mask_cache: Optional[str] = option(None, "with --input-mask nodule: the folder `nadtrain input-masks` wrote "
                                                   "for this dataset and margin (train and val samples at least)")
    progress: bool = option(True, off_flag="--no-progress")

    def recipe(self) -> Dict[str, Any]:
        """The options that change the trained weights (what a resumed run must share)."""
        d = asdict(self)
        # calibration acts after training (see ``nadtrain recalibrate``), so it is not part of the recipe.
        for key in ("out", "device", "num_workers", "progress", "dataset", "calibration", "input_mask_cache"):
            d.pop(key)
        return d

    def check(self) -> None:
        """Refuse options that cannot train, with the fix (InputError)."""
        if self.balance not in BALANCE:
            raise InputError(f"unknown --balance {self.balance!r}; use one of {', '.join(BALANCE)}.")
        if self.architecture not in ARCHITECTURES:
            raise InputError(f"unknown architecture {self.architecture!r}; use one of {', '.join(sorted(ARCHITECTURES))}.")
        if self.epochs < 1 or self.batch_size < 2:
            raise InputError("epochs must be at least 1 and the batch size at least 2.")
        if self.calibration not in CALIBRATION:
            raise InputError(f"unknown --calibration {self.calibration!r}; use one of {', '.join(CALIBRATION)}.")
        if self.aux_ratings < 0:
            raise InputError("--aux-ratings is a loss weight: 0 (off) or positive.")
        if self.consistency < 0:
            raise InputError("--consistency is a loss weight: 0 (off) or positive.")
        if self.consistency > 0 and not self.one_render_per_epoch:
            raise InputError("--consistency pairs two renderings of a nodule, which needs the nodule grouping; "
                             "drop --all-renders.")
        if self.input_mask not in INPUT_MASKS:
            raise InputError(f"unknown --input-mask {self.input_mask!r}; use one of {', '.join(INPUT_MASKS)}.")
        if self.input_mask != "none" and not self.input_mask_cache:
            raise InputError("--input-mask nodule reads the masks precomputed for the dataset: compute them with "
                             "`nadtrain input-masks DATASET --out DIR`, then add --input-mask-cache DIR.")
        if not self.mask_margin_mm >= 0:
            raise InputError("--mask-margin-mm is a distance: 0 or more millimetres.")
        if not 0.0 <= self.ema < 1.0:
            raise InputError("--ema is a decay per step: 0 (off) or between 0 and 1, e.g. 0.99.")


def add_dataclass_arguments(parser: argparse.ArgumentParser, cls: type) -> None:
    """One argument per field of the dataclass ``cls`` that has a command line (``option``), from
    the field's own metadata: its flag, help, choices, default."""
    for f in fields(cls):
        meta = f.metadata
        if not meta.get("cli", True):
            continue
        common = {"help": meta.get("help")}
        if meta.get("positional"):
            parser.add_argument(f.name, **common)
            continue
        flag = meta.get("flag") or "--" + f.name.replace("_", "-")
        if f.default is MISSING and f.default_factory is MISSING:
            parser.add_argument(flag, dest=f.name, required=True, type=_ARGUMENT_TYPES.get(str(f.type)), **common)
        elif meta.get("off_flag"):
            parser.add_argument(meta["off_flag"], dest=f.name, action="store_false", **common)
        elif str(f.type) == "bool":
            parser.add_argument(flag, dest=f.name, action="store_true", **common)
        elif meta.get("repeat"):
            parser.add_argument(flag, dest=f.name, action="append", default=[], metavar=meta.get("metavar"), **common)
        else:
            extra: Dict[str, Any] = {"type": _ARGUMENT_TYPES.get(str(f.type))}
            if meta.get("choices"):
                extra["choices"] = list(meta["choices"])
            parser.add_argument(flag, dest=f.name, default=f.default, metavar=meta.get("metavar"), **extra, **common)


# Field annotations (strings, with ``from __future__ import annotations``) -> argparse types.
_ARGUMENT_TYPES = {"int": int, "float": float, "Path": Path, "Optional[Path]": Path}


def configure_parser(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``nadtrain train``: the config's fields, plus what is not part of a run's options."""
    add_dataclass_arguments(parser, TrainConfig)
    parser.add_argument("--ignore-manifest-holdout", action="store_true",
                        help="do not take the defaults from the dataset's manifest: by default its held-out "
                             "background is held out and the patients whose CT serves as a background are "
                             "excluded, unless --holdout-background / --exclude-patient are given")
    parser.add_argument("--resume", action="store_true", help="continue from OUT/checkpoint.safetensors")


def manifest_defaults(dataset: str, holdout_backgrounds: Sequence[str],
                      exclude_patients: Sequence[str]) -> Tuple[List[str], List[str], List[str]]:
    """Hold-out and exclusion defaults from an insertion dataset's manifest, when neither option is given.

    Returns (holdout backgrounds, excluded patients, notes for the user). Only when neither
    ``--holdout-background`` nor ``--exclude-patient`` is given: the background the build set aside
    (``holdout_background``) is held out, and every patient whose own CT serves as a background is
    excluded (its real nodules are in those pixels, and a showcase like LIDC-IDRI-0001's real nodule
    must stay unseen). Either option given means the user chose: both are then taken as given (so a
    command written before these defaults existed still makes the same split and resumes).
    """
    holdout, exclude, notes = list(holdout_backgrounds), list(exclude_patients), []
    if holdout or exclude:
        return holdout, exclude, notes
    params = read_manifest(dataset).get("params") or {}
    if params.get("holdout_background"):
        holdout = [str(params["holdout_background"])]
        notes.append(f"holding out background {holdout[0]} (the dataset's manifest sets it aside)")
    backgrounds = [str(b) for b in params.get("backgrounds") or []] + holdout
    patients = set(np.unique(load_dataset(dataset, load_patches=False).patient_ids).tolist()) if backgrounds else set()
    exclude = sorted({b for b in backgrounds if b in patients})
    if exclude:
        notes.append(f"excluding patient(s) {', '.join(exclude)}: their own CT is a background of this dataset")
    return holdout, exclude, notes


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    """The run's config from ``nadtrain train``'s arguments, with the manifest's hold-out defaults."""
    values = {f.name: getattr(args, f.name) for f in fields(TrainConfig) if f.metadata.get("cli", True)}
    if not getattr(args, "ignore_manifest_holdout", False):
        holdout, exclude, notes = manifest_defaults(args.dataset, values["holdout_backgrounds"],
                                                    values["exclude_patients"])
        values.update(holdout_backgrounds=holdout, exclude_patients=exclude)
        for note in notes:
            print(f"nadtrain train: {note}; --ignore-manifest-holdout to turn this off.", file=sys.stderr)
    return TrainConfig(**values)
