"""``nadtrain recalibrate``: redo a finished run's calibration and threshold without retraining.

Calibration acts after training (``calibration.py``), so a run's best weights can be calibrated
another way: this reads RUN's best epoch, training options and split, and writes a new run folder
(``model.safetensors`` + card, ``splits.json``, ``history.json``, ``train_summary.json``) that
``nadtrain evaluate`` and ``nadtrain export`` take like any run. RUN itself is never modified.
"""
from __future__ import annotations

import argparse
import json
import shutil
from dataclasses import fields
from pathlib import Path
from typing import Any, Dict

from notadiagnosis.device import select_device
from notadiagnosis.errors import InputError
from notadiagnosis.model import build_model

from .checkpoint import load_checkpoint
from .dataset import load_dataset
from .splits import Split
from .train import CALIBRATION, Dist, TrainConfig, finalize


def _finished_run(run_dir: Path) -> Dict[str, Any]:
    needed = ["checkpoint.safetensors", "best.safetensors", "splits.json", "model.json"]
    missing = [name for name in needed if not (run_dir / name).is_file()]
    if missing:
        raise InputError(f"{run_dir} is not a finished training run (missing {', '.join(missing)}); "
                         "run `nadtrain train` to the end first.")
    return json.loads((run_dir / "model.json").read_text(encoding="utf-8"))


def recalibrate_run(run_dir: Path, out: Path, method: str, device: str = "auto",
                    progress: bool = True) -> Dict[str, Any]:
    """Calibrate ``run_dir``'s best weights with ``method`` (see ``CALIBRATION``) into ``out``."""
    run_dir, out = Path(run_dir), Path(out)
    if method not in CALIBRATION:
        raise InputError(f"unknown calibration {method!r}; use one of {', '.join(CALIBRATION)}.")
    old_card = _finished_run(run_dir)
    if out.resolve() == run_dir.resolve():
        raise InputError("--out must be a new folder: the original run is kept as it is.")
    if (out / "model.json").exists() or (out / "checkpoint.safetensors").exists():
        raise InputError(f"{out} already holds a run; choose another --out.")
    _, _, saved = load_checkpoint(run_dir / "checkpoint.safetensors")
    known = {f.name for f in fields(TrainConfig)}
    options = {k: v for k, v in saved["config"].items() if k in known}
    config = TrainConfig(**{**options, "out": str(out), "calibration": method, "device": device,
                            "progress": progress})
    description = json.loads((run_dir / "splits.json").read_text(encoding="utf-8"))
    data = load_dataset(Path(description.get("dataset") or config.dataset))
    split = Split.from_description(description, len(data))
    torch_device, _ = select_device(device)
    old_training = old_card.get("training", {})
    out.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(run_dir / "splits.json", out / "splits.json")
    # The card keeps the training run's own device and time; only calibration and threshold are new.
    summary = finalize(config, build_model(config.architecture), data, split, description, saved["train_state"],
                       torch_device, old_training.get("device", "unknown"), Dist(),
                       float(old_training.get("wall_seconds", 0.0)), best=run_dir / "best.safetensors")
    summary["recalibrated_from"] = str(run_dir.resolve())
    (out / "train_summary.json").write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    return summary


def configure_parser(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``nadtrain recalibrate``."""
    parser.add_argument("run", help="a finished run directory (nadtrain train); it is not modified")
    parser.add_argument("--out", required=True, help="new run directory for the recalibrated model")
    parser.add_argument("--calibration", default="prior", choices=CALIBRATION,
                        help="prior: undo the class balancing's prior shift, temperature 1 (default); "
                             "platt: fit temperature and offset on validation")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--no-progress", action="store_true")


def run_cli(args: argparse.Namespace) -> int:
    summary = recalibrate_run(Path(args.run), Path(args.out), args.calibration, args.device, not args.no_progress)
    print(f"recalibrated ({args.calibration}): temperature {summary['temperature']:.3f}, logit offset "
          f"{summary['logit_offset']:+.3f}, threshold {summary['threshold']:.3f} -> {Path(args.out) / 'model.json'}")
    return 0
