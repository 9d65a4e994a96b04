"""``nadtrain recalibrate``: redo a finished run's calibration and threshold without retraining.

Calibration acts after training (``calibration.py``), so a run's best weights can be calibrated
another way: this reads RUN's best epoch, training options and split, and writes a new run folder
(``model.safetensors`` + card, ``splits.json``, ``history.json``, ``train_summary.json``) that
``nadtrain evaluate`` and ``nadtrain export`` take like any run. RUN itself is never modified.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
from dataclasses import fields
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Dict, Optional

from notadiagnosis.card import ModelCard
from notadiagnosis.device import select_device
from notadiagnosis.errors import InputError
from notadiagnosis.model import build_model
from notadiagnosis.weights import read_card

from . import input_masks
from .checkpoint import load_checkpoint
from .dataset import load_dataset
from .files import write_json
from .finalize import finalize
from .splits import Split
from .train_card import TrainedRun
from .train_options import CALIBRATION, DEVICE_HELP, TrainConfig


def _finished_run(run_dir: Path) -> ModelCard:
    needed = ["checkpoint.safetensors", "best.safetensors", "splits.json", "model.json"]
    missing = [name for name in needed if not (run_dir / name).is_file()]
    if missing:
        raise InputError(f"{run_dir} is not a finished training run (missing {', '.join(missing)}); "
                         "run `nadtrain train` to the end first.")
    return read_card(run_dir / "model.json")


def recalibrate_run(run_dir: Path, out: Path, method: str, device: str = "auto", progress: bool = True,
                    dataset: Optional[Path] = None) -> Dict[str, Any]:
    """Calibrate ``run_dir``'s best weights with ``method`` (see ``CALIBRATION``) into the new folder ``out``.

    ``dataset``: the run's dataset if it has moved since training (default: the path in splits.json).
    The folder is built beside ``out`` and renamed into place at the end, so an interrupted
    recalibration never leaves a folder that looks like a finished run.
    """
    run_dir, out = Path(run_dir), Path(out)
    if method not in CALIBRATION:
        raise InputError(f"unknown calibration {method!r}; use one of {', '.join(CALIBRATION)}.")
    old_card = _finished_run(run_dir)
    if out.exists():
        raise InputError(f"{out} already exists; --out must be a new folder (the original run is kept as it is).")
    if run_dir.resolve() in out.resolve().parents:
        raise InputError("--out must not lie inside the run folder: the original run is kept as it is.")
    _, _, saved = load_checkpoint(run_dir / "checkpoint.safetensors")
    known = {f.name for f in fields(TrainConfig)}
    options = {k: v for k, v in saved["config"].items() if k in known}
    description = json.loads((run_dir / "splits.json").read_text(encoding="utf-8"))
    data_path = Path(dataset) if dataset is not None else Path(description.get("dataset") or options["dataset"])
    data = load_dataset(data_path)
    split = Split.from_description(description, len(data))
    torch_device, _ = select_device(device)

    partial = out.parent / f".{out.name}.partial"
    if partial.exists():
        shutil.rmtree(partial)  # left by an interrupted recalibration into the same --out
    partial.mkdir(parents=True)
    config = TrainConfig(**{**options, "dataset": str(data_path), "out": str(partial), "calibration": method,
                            "device": device, "progress": progress})
    if config.input_mask != "none":  # validation is scored on what the network was trained to see
        input_masks.mask_dataset(config, data, split.indices["val"])
    old_training = old_card.training
    # The card keeps the training run's own record (device and wall time are passed to finalize,
    # train time comes from the checkpoint's state); calibration and threshold are new, and it says so.
    kept = {k: old_training[k] for k in ("processes", "finished") if k in old_training}
    kept["recalibrated"] = {"from_run": run_dir.name, "calibration": method,
                            "at": datetime.now(timezone.utc).isoformat(timespec="seconds")}
    try:
        shutil.copyfile(run_dir / "splits.json", partial / "splits.json")
        trained = TrainedRun(saved["train_state"], old_training.get("device", "unknown"), processes=1,
                             wall_seconds=float(old_training.get("wall_seconds", 0.0)))
        summary = finalize(config, build_model(config.architecture), data, split, description, trained, torch_device,
                           best=run_dir / "best.safetensors", training_overrides=kept)
        summary.update(model=str(out / "model.json"), recalibrated_from=str(run_dir.resolve()))
        write_json(partial / "train_summary.json", summary)
        os.replace(partial, out)
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    return summary


def configure_parser(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``nadtrain recalibrate``."""
    parser.add_argument("run", help="a finished run directory (nadtrain train); it is not modified")
    parser.add_argument("--out", required=True, help="new run directory for the recalibrated model")
    parser.add_argument("--calibration", default="prior", choices=CALIBRATION,
                        help="prior: undo the class balancing's prior shift, temperature 1 (default); "
                             "platt: fit temperature and offset on validation")
    parser.add_argument("--dataset", help="the run's dataset directory, if it moved since training "
                                          "(default: the path recorded in RUN/splits.json)")
    parser.add_argument("--device", default="auto", help=DEVICE_HELP)
    parser.add_argument("--no-progress", action="store_true")


def run_cli(args: argparse.Namespace) -> int:
    summary = recalibrate_run(Path(args.run), Path(args.out), args.calibration, args.device, not args.no_progress,
                              Path(args.dataset) if args.dataset else None)
    print(f"recalibrated ({args.calibration}): temperature {summary['temperature']:.3f}, logit offset "
          f"{summary['logit_offset']:+.3f}, threshold {summary['threshold']:.3f} -> {Path(args.out) / 'model.json'}")
    return 0
