"""`nadtrain train`: train a 3D ResNet on a dataset; fit temperature and threshold on validation.

Recipe: split by patient (``splits.py``), one rendering per nodule per epoch (optional), class
imbalance by a positive-class weight in the loss (or a balanced sampler), 3D augmentation on the
batch's device (``augment.py``), AdamW with linear warm-up then cosine decay per step, early
stopping on validation AUC, mixed precision on CUDA, a checkpoint every epoch (``checkpoint.py``,
atomic, no pickle) that ``--resume`` continues from, and ``torchrun`` DDP when WORLD_SIZE is set.

Determinism: every random draw of epoch ``e`` comes from generators seeded with (seed, e, rank),
so a run resumed from epoch ``e``'s checkpoint continues exactly as the uninterrupted run (on CPU;
cuDNN autotuning on CUDA trades bitwise reproducibility for speed).

Outputs in ``--out``: ``checkpoint.safetensors`` (last epoch), ``best.safetensors`` (best epoch's
weights), ``model.safetensors`` + ``model.json`` (the library's format, with temperature and
threshold: what ``evaluate`` and ``export`` read), ``splits.json``, ``history.json``,
``train_summary.json``.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.distributed as dist
from safetensors.torch import load_file
from sklearn.metrics import roc_auc_score
from torch.utils.data import DataLoader, Dataset as TorchDataset
from torch.utils.data import DistributedSampler, RandomSampler, WeightedRandomSampler
from tqdm.auto import tqdm

from notadiagnosis.classifier import Classifier
from notadiagnosis.device import select_device
from notadiagnosis.errors import InputError
from notadiagnosis.model import ARCHITECTURES, build_model, count_parameters
from notadiagnosis.preprocessing import HU_MAX, HU_MIN, normalize_hu
from notadiagnosis.weights import save_model

from . import calibration, ratings
from .augment import AugmentConfig, augment_batch
from .checkpoint import CheckpointError, load_checkpoint, save_checkpoint, save_weights
from .dataset import Dataset, load_dataset, read_manifest
from .splits import Split, make_split

BALANCE = ("weight", "sampler", "none")
CALIBRATION = ("prior", "platt")  # see calibration.py: prior shift only (default) or Platt on validation


@dataclass
class TrainConfig:
    """Everything that decides a run; stored in the checkpoint, the summary and the model card."""

    dataset: str
    out: str
    architecture: str = "resnet3d-small"
    epochs: int = 40
    batch_size: int = 32
    lr: float = 2e-3
    weight_decay: float = 0.05
    warmup_epochs: float = 1.0
    patience: int = 10
    seed: int = 0
    split: str = "patient"
    test_fraction: float = 0.2
    n_folds: int = 5
    fold: int = 0
    test_fold: int = 0
    holdout_backgrounds: List[str] = field(default_factory=list)
    exclude_patients: List[str] = field(default_factory=list)
    one_render_per_epoch: bool = True
    balance: str = "weight"
    augment: bool = True
    amp: bool = True
    device: str = "auto"
    num_workers: int = 0
    val_tta: bool = False
    calibration_tta: bool = True
    aux_ratings: float = 0.0        # weight of the auxiliary ratings regression loss; 0 = off
    ema: float = 0.0                # decay of an exponential moving average of the weights; 0 = off
    soft_labels: bool = False       # loss targets = share of readers rating malignant (evaluation keeps 0/1)
    calibration: str = "prior"      # after training: "prior" (undo the class balancing) or "platt" (fit on validation)
    progress: bool = True

    def recipe(self) -> Dict[str, Any]:
        """The options that change the trained weights (what a resumed run must share)."""
        d = asdict(self)
        # calibration acts after training (see ``nadtrain recalibrate``), so it is not part of the recipe.
        for key in ("out", "device", "num_workers", "progress", "dataset", "calibration"):
            d.pop(key)
        return d


# -- distributed ----------------------------------------------------------------------------
@dataclass
class Dist:
    enabled: bool = False
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0


def setup_distributed(device_name: str) -> Dist:
    """Join the process group when launched by ``torchrun`` (WORLD_SIZE set); NCCL on CUDA, else gloo."""
    if "WORLD_SIZE" not in os.environ:
        return Dist()
    world_size = int(os.environ["WORLD_SIZE"])
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = torch.cuda.is_available() and device_name not in ("cpu",)
    if use_cuda:
        torch.cuda.set_device(local_rank)
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if use_cuda else "gloo", world_size=world_size, rank=rank)
    return Dist(enabled=True, rank=rank, world_size=world_size, local_rank=local_rank)


# -- data -------------------------------------------------------------------------------------
class NoduleEpochSet(TorchDataset):
    """Item ``i`` = one of group ``i``'s samples: with one group per nodule (several renders) and
    ``set_epoch``, each epoch sees every nodule once, through a rendering drawn per (seed, epoch)."""

    def __init__(self, patches_hu: np.ndarray, labels: np.ndarray, groups: Sequence[np.ndarray], seed: int) -> None:
        self.patches_hu = patches_hu
        self.labels = labels
        self.groups = [np.asarray(g) for g in groups]
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.groups)

    def sample_index(self, item: int) -> int:
        group = self.groups[item]
        if group.size == 1:
            return int(group[0])
        rng = np.random.default_rng((self.seed, self.epoch, item))
        return int(group[rng.integers(group.size)])

    def item_label(self, item: int) -> int:
        return int(self.labels[self.groups[item][0]])

    def __getitem__(self, item: int):
        j = self.sample_index(item)
        return self.patches_hu[j], int(self.labels[j]), j


def collate_normalized(batch):
    """Stack int16 HU patches and normalise them with the library's one normalisation."""
    patches = np.stack([b[0] for b in batch])
    x = torch.from_numpy(normalize_hu(patches)).unsqueeze(1)
    y = torch.tensor([b[1] for b in batch], dtype=torch.float32)
    idx = torch.tensor([b[2] for b in batch], dtype=torch.int64)
    return x, y, idx


def training_groups(data: Dataset, indices: np.ndarray, one_render: bool) -> List[np.ndarray]:
    """Groups of sample indices: one per nodule (all its renders and backgrounds) or one per sample."""
    if not one_render:
        return [np.array([i]) for i in indices]
    order = np.argsort(data.nodule_ids[indices], kind="stable")
    sorted_idx = indices[order]
    _, starts = np.unique(data.nodule_ids[sorted_idx], return_index=True)
    return np.split(sorted_idx, starts[1:])


def training_item_labels(data: Dataset, groups: Sequence[np.ndarray]) -> np.ndarray:
    """0/1 label of each training item (``training_groups``: a nodule, or a sample with --all-renders):
    what the class balancing counts, and so what the prior-shift calibration undoes."""
    return np.array([int(data.labels[group[0]]) for group in groups], dtype=np.int64)


class AuxiliaryNet(torch.nn.Module):
    """The classifier plus a linear head regressing the readers' ratings from the same pooled
    features (training only: ``net`` alone is saved as the model; ``aux`` lives in checkpoints)."""

    def __init__(self, net: torch.nn.Module, n_targets: int) -> None:
        super().__init__()
        self.net = net
        self.aux = torch.nn.Linear(net.head.in_features, n_targets)

    def forward(self, x: torch.Tensor):
        pooled = torch.flatten(torch.nn.functional.adaptive_avg_pool3d(self.net.features(x), 1), 1)
        return self.net.head(self.net.dropout(pooled)).squeeze(1), self.aux(pooled)


def _soft_targets(data: Dataset, train_rows: np.ndarray, device: torch.device) -> torch.Tensor:
    """Per-sample soft labels (``ratings.malignancy_share``) for ``--soft-labels``; every training
    sample needs its readers' malignancy ratings."""
    soft = ratings.soft_labels_for(data.nodule_ids, data.nodule_table())
    if not np.all(np.isfinite(soft[train_rows])):
        raise InputError("--soft-labels needs every training nodule's malignancy ratings in the nodule table "
                         "(the insertion and lidc sources have them; MedMNIST does not).")
    return torch.from_numpy(np.nan_to_num(soft)).float().to(device)


def masked_mse(prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean squared error over the finite targets only (a reader may not have rated everything)."""
    finite = torch.isfinite(target)
    if not bool(finite.any()):
        return prediction.sum() * 0.0
    return ((prediction - torch.nan_to_num(target)) ** 2)[finite].mean()


@dataclass
class TrainingNetwork:
    """What training optimises, checkpoints and validates, around the library ``model``."""

    net: torch.nn.Module                       # forward for the loss: model, or model + ratings head
    aux_targets: Optional[torch.Tensor]        # (n_samples, n_ratings) standardised, NaN = missing
    ema: Optional[torch.optim.swa_utils.AveragedModel]
    checkpointed: torch.nn.Module              # everything a resumed run needs
    evaluated: torch.nn.Module                 # validated, kept as best, exported (a ResNet3D)


def build_training_network(config: TrainConfig, model: torch.nn.Module, data: Dataset, split: Split,
                           device: torch.device) -> TrainingNetwork:
    """Wrap ``model`` for ``--aux-ratings`` (a ratings head, training only) and ``--ema`` (averaged
    weights: validated, kept and exported; smoother than the last step's). Both live in checkpoints."""
    net: torch.nn.Module = model
    aux_targets = None
    if config.aux_ratings > 0:
        targets = ratings.AuxTargets(ratings.features_for(data.nodule_ids, data.nodule_table()),
                                     split.indices["train"])
        aux_targets = torch.from_numpy(targets.values).to(device)
        net = AuxiliaryNet(model, targets.n_targets).to(device)
    if config.ema == 0:
        return TrainingNetwork(net, aux_targets, None, net, model)
    ema = torch.optim.swa_utils.AveragedModel(
        model, multi_avg_fn=torch.optim.swa_utils.get_ema_multi_avg_fn(config.ema), use_buffers=True)
    return TrainingNetwork(net, aux_targets, ema, torch.nn.ModuleDict({"trained": net, "ema": ema}), ema.module)


# -- model helpers -----------------------------------------------------------------------------
def base_card(config: TrainConfig, temperature: float = 1.0, threshold: float = 0.5) -> Dict[str, Any]:
    """The model card's fixed parts (the library completes architecture and weights)."""
    return {
        "name": "nadtrain-run",
        "version": "0.0.0",
        "preprocessing": {"patch_size": 64, "spacing_mm": 1.0, "hu_min": HU_MIN, "hu_max": HU_MAX,
                          "normalisation": "notadiagnosis.preprocessing.normalize_hu"},
        "calibration": {"temperature": float(temperature), "method": "temperature scaling on validation NLL"},
        "threshold": float(threshold),
    }


def predict_logits(model: torch.nn.Module, data: Dataset, indices: np.ndarray, device: torch.device,
                   tta: bool, batch_size: int = 32, progress: bool = False, desc: str = "predict") -> np.ndarray:
    """Mean-TTA logits (temperature 1) through the library's ``Classifier.predict_patches`` —
    the very code path inference uses, so temperature and threshold fit what users will see.
    Leaves the model in eval mode."""
    classifier = Classifier.from_model(model, {"calibration": {"temperature": 1.0}}, device)
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


def lr_factor(step: int, total_steps: int, warmup_steps: int) -> float:
    """Linear warm-up to 1, then cosine decay to 0 at ``total_steps``."""
    if warmup_steps > 0 and step < warmup_steps:
        return (step + 1) / warmup_steps
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


def _epoch_seed(seed: int, epoch: int, rank: int, stream: int) -> int:
    # Separate, reproducible streams per (seed, epoch, rank, purpose).
    return int(np.random.SeedSequence([seed, epoch, rank, stream]).generate_state(1)[0])


# -- training ------------------------------------------------------------------------------------
def train(config: TrainConfig, on_epoch_end: Optional[Callable[[int, Dict[str, Any]], None]] = None,
          resume: bool = False) -> Dict[str, Any]:
    """Train per ``config``; returns the summary (also written to ``train_summary.json``).

    ``on_epoch_end(epoch, record)`` is called after each epoch's checkpoint is written (tests use
    it to simulate an interruption).
    """
    if config.balance not in BALANCE:
        raise InputError(f"unknown --balance {config.balance!r}; use one of {', '.join(BALANCE)}.")
    if config.architecture not in ARCHITECTURES:
        raise InputError(f"unknown architecture {config.architecture!r}; use one of {', '.join(sorted(ARCHITECTURES))}.")
    if config.epochs < 1 or config.batch_size < 2:
        raise InputError("epochs must be at least 1 and the batch size at least 2.")
    if config.calibration not in CALIBRATION:
        raise InputError(f"unknown --calibration {config.calibration!r}; use one of {', '.join(CALIBRATION)}.")
    if config.aux_ratings < 0:
        raise InputError("--aux-ratings is a loss weight: 0 (off) or positive.")
    if not 0.0 <= config.ema < 1.0:
        raise InputError("--ema is a decay per step: 0 (off) or between 0 and 1, e.g. 0.99.")
    ddp = setup_distributed(config.device)
    if ddp.enabled and config.balance == "sampler":
        raise InputError("--balance sampler cannot be combined with DDP; use --balance weight.")
    if ddp.enabled and torch.cuda.is_available() and config.device != "cpu":
        device, device_description = torch.device("cuda", ddp.local_rank), f"cuda:{ddp.local_rank} ({torch.cuda.get_device_name(ddp.local_rank)})"
    else:
        device, device_description = select_device(config.device)
    out = Path(config.out)
    checkpoint_path = out / "checkpoint.safetensors"
    if not resume and checkpoint_path.exists():
        raise InputError(f"{out} already holds a training run; add --resume to continue it, or choose another --out.")
    out.mkdir(parents=True, exist_ok=True)
    started = time.time()

    data = load_dataset(config.dataset)
    split = make_split(data.patient_ids, data.nodule_ids, data.labels, mode=config.split, seed=config.seed,
                       test_fraction=config.test_fraction, n_folds=config.n_folds, fold=config.fold,
                       source_split=data.split, background=data.background,
                       holdout_backgrounds=config.holdout_backgrounds,
                       exclude_patients=config.exclude_patients, test_fold=config.test_fold)
    split_description = split.describe(data.patient_ids, data.nodule_ids, data.labels)
    split_description["dataset"] = str(Path(config.dataset).resolve())
    # The split is sample indices: evaluate checks a moved or rebuilt dataset still orders its samples alike.
    split_description["sample_keys_sha256"] = data.sample_keys_sha256()

    # Model and optimisation. The seed fixes the initial weights.
    torch.manual_seed(config.seed)
    model = build_model(config.architecture).to(device)
    parts = build_training_network(config, model, data, split, device)
    net, aux_targets, ema_model, checkpointed, evaluated = (
        parts.net, parts.aux_targets, parts.ema, parts.checkpointed, parts.evaluated)
    groups = training_groups(data, split.indices["train"], config.one_render_per_epoch)
    train_set = NoduleEpochSet(data.patches_hu, data.labels, groups, config.seed)
    # Every validation sample (all renderings): a steadier AUC for early stopping than one per
    # nodule, for about 4 ms per sample on CPU without TTA.
    val_idx = split.indices["val"]
    item_labels = training_item_labels(data, groups)
    n_pos, n_neg = int(item_labels.sum()), int((1 - item_labels).sum())
    if n_pos == 0 or n_neg == 0:
        raise InputError("the training split holds one class only; the dataset needs benign and malignant nodules.")
    pos_weight = torch.tensor(n_neg / n_pos if config.balance == "weight" else 1.0, device=device)
    soft_targets = _soft_targets(data, split.indices["train"], device) if config.soft_labels else None
    criterion = torch.nn.BCEWithLogitsLoss(pos_weight=pos_weight)

    per_rank_items = math.ceil(len(train_set) / ddp.world_size)
    drop_last = per_rank_items > config.batch_size  # avoid a 1-sample batch (batch norm needs 2)
    steps_per_epoch = per_rank_items // config.batch_size if drop_last else math.ceil(per_rank_items / config.batch_size)
    total_steps = steps_per_epoch * config.epochs
    warmup_steps = int(round(config.warmup_epochs * steps_per_epoch))
    optimizer = torch.optim.AdamW(net.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_factor(s, total_steps, warmup_steps))
    use_amp = config.amp and device.type == "cuda"
    amp_dtype = torch.bfloat16 if use_amp and torch.cuda.is_bf16_supported() else torch.float16
    # bfloat16 has float32's range: the loss scaler is only needed (and only on) for float16.
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp and amp_dtype == torch.float16)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True

    state: Dict[str, Any] = {"epoch": -1, "best_auc": -1.0, "best_epoch": -1, "bad_epochs": 0,
                             "stopped": None, "history": [], "train_seconds": 0.0}
    if resume:
        model_state, optim_state, saved = _load_resume(checkpoint_path, config, split_description)
        checkpointed.load_state_dict(model_state)
        optimizer.load_state_dict(optim_state)
        scheduler.load_state_dict(saved["scheduler"])
        if saved.get("scaler"):
            scaler.load_state_dict(saved["scaler"])
        state = saved["train_state"]
        if ddp.main:
            tqdm.write(f"resuming after epoch {state['epoch'] + 1} (best val AUC {state['best_auc']:.4f})")
    if ddp.main:  # only once the run is known to be new or a matching resume
        _write_json(out / "splits.json", split_description)

    train_model: torch.nn.Module = net
    if ddp.enabled:
        train_model = torch.nn.parallel.DistributedDataParallel(
            net, device_ids=[device.index] if device.type == "cuda" else None)

    if ddp.main:
        tqdm.write(
            f"training {config.architecture} ({count_parameters(model):,} parameters) on {device_description}"
            f"{f' x {ddp.world_size} processes' if ddp.enabled else ''}: {len(train_set)} training items "
            f"({n_pos} malignant), {len(val_idx)} validation samples, {config.epochs} epochs max"
            f"{', AMP ' + str(amp_dtype).replace('torch.', '') if use_amp else ''}")
    augment_config = AugmentConfig()
    first_epoch = state["epoch"] + 1
    for epoch in range(first_epoch, config.epochs):
        if state["stopped"]:
            break
        epoch_started = time.time()
        train_set.set_epoch(epoch)
        torch.manual_seed(_epoch_seed(config.seed, epoch, ddp.rank, 0))  # dropout
        loader_gen = torch.Generator().manual_seed(_epoch_seed(config.seed, epoch, ddp.rank, 1))
        aug_gen = torch.Generator().manual_seed(_epoch_seed(config.seed, epoch, ddp.rank, 2))
        if ddp.enabled:
            sampler = DistributedSampler(train_set, num_replicas=ddp.world_size, rank=ddp.rank, shuffle=True,
                                         seed=config.seed, drop_last=False)
            sampler.set_epoch(epoch)
        elif config.balance == "sampler":
            weights = np.where(item_labels == 1, 0.5 / n_pos, 0.5 / n_neg)
            sampler = WeightedRandomSampler(torch.as_tensor(weights, dtype=torch.double), len(train_set),
                                            replacement=True, generator=loader_gen)
        else:
            sampler = RandomSampler(train_set, generator=loader_gen)
        loader = DataLoader(train_set, batch_size=config.batch_size, sampler=sampler, drop_last=drop_last,
                            collate_fn=collate_normalized, num_workers=config.num_workers,
                            pin_memory=device.type == "cuda", persistent_workers=False)
        train_model.train()
        loss_total, loss_count = 0.0, 0
        bar = tqdm(loader, desc=f"epoch {epoch + 1}/{config.epochs}", unit="batch", leave=False,
                   disable=not (config.progress and ddp.main))
        for x, y, sample_idx in bar:
            x = x.to(device, non_blocking=True)
            y = y.to(device, non_blocking=True) if soft_targets is None else soft_targets[sample_idx.to(device)]
            if config.augment:
                x = augment_batch(x, augment_config, aug_gen)
            with torch.autocast(device_type=device.type, dtype=amp_dtype, enabled=use_amp):
                output = train_model(x)
            if aux_targets is not None:
                logits, aux_prediction = output
                loss = criterion(logits.float(), y) + config.aux_ratings * masked_mse(
                    aux_prediction.float(), aux_targets[sample_idx.to(device)])
            else:
                loss = criterion(output.float(), y)
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
            scheduler.step()
            if ema_model is not None:
                ema_model.update_parameters(model)
            loss_value = loss.item()  # one sync per step; the progress bar shows it anyway
            loss_total += loss_value * len(y)
            loss_count += len(y)
            bar.set_postfix(loss=f"{loss_value:.4f}")
        if ddp.enabled:  # (float64 is fine on CUDA and CPU, the only DDP devices; MPS lacks it)
            sums = torch.tensor([loss_total, float(loss_count)], dtype=torch.float64, device=device)
            dist.all_reduce(sums)
            loss_total, loss_count = float(sums[0]), int(sums[1])
        train_loss = loss_total / max(loss_count, 1)

        # Validation, best weights, early stopping and the checkpoint on rank 0; the decision to
        # stop is broadcast so every rank leaves the loop together.
        stop = torch.zeros(1, device=device)
        if ddp.main:
            val_logits = predict_logits(evaluated, data, val_idx, device, tta=config.val_tta,
                                        batch_size=config.batch_size, progress=False)
            val_auc = safe_auc(data.labels[val_idx], val_logits)
            val_loss = float(torch.nn.functional.binary_cross_entropy_with_logits(
                torch.as_tensor(val_logits), torch.as_tensor(data.labels[val_idx], dtype=torch.float64)))
            improved = np.isfinite(val_auc) and val_auc > state["best_auc"] + 1e-6
            if improved:
                state.update(best_auc=val_auc, best_epoch=epoch, bad_epochs=0)
                save_weights(out / "best.safetensors", evaluated)
            else:
                state["bad_epochs"] += 1
            record = {"epoch": epoch + 1, "train_loss": train_loss, "val_loss": val_loss, "val_auc": val_auc,
                      "lr": scheduler.get_last_lr()[0], "seconds": time.time() - epoch_started}
            state["history"].append(record)
            state["epoch"] = epoch
            state["train_seconds"] += record["seconds"]
            if state["bad_epochs"] >= config.patience:
                state["stopped"] = f"early stop: no validation AUC gain for {config.patience} epochs"
            save_checkpoint(checkpoint_path, checkpointed, optimizer, {
                "config": asdict(config), "recipe": config.recipe(), "split": _split_key(split_description),
                "scheduler": scheduler.state_dict(), "scaler": scaler.state_dict() if scaler.is_enabled() else None,
                "train_state": state})
            tqdm.write(f"epoch {epoch + 1}/{config.epochs}: train loss {train_loss:.4f}, val loss {val_loss:.4f}, "
                       f"val AUC {val_auc:.4f} (best {state['best_auc']:.4f} at epoch {state['best_epoch'] + 1}), "
                       f"{record['seconds']:.0f} s")
            stop[0] = 1.0 if state["stopped"] else 0.0
            if on_epoch_end is not None:
                on_epoch_end(epoch, record)
        else:
            state["epoch"] = epoch
        if ddp.enabled:
            dist.broadcast(stop, src=0)
            if stop.item() > 0:
                state["stopped"] = "early stop"
            net.train()
        if stop.item() > 0:
            break

    summary: Dict[str, Any] = {}
    if ddp.main:
        summary = finalize(config, model, data, split, split_description, state, device, device_description,
                           ddp, time.time() - started)
    if ddp.enabled:
        dist.barrier()
        dist.destroy_process_group()
    return summary


def finalize(config: TrainConfig, model: torch.nn.Module, data: Dataset, split: Split, split_description: dict,
             state: Dict[str, Any], device: torch.device, device_description: str, ddp: Dist,
             wall_seconds: float, best: Optional[Path] = None,
             training_overrides: Optional[Dict[str, Any]] = None) -> Dict[str, Any]:
    """Best weights (``best``, default OUT/best.safetensors) -> calibration per ``config.calibration``
    and threshold on validation -> ``model.safetensors`` + card (``training_overrides`` replace
    entries of the card's ``training`` record: ``nadtrain recalibrate`` keeps the original run's)."""
    out = Path(config.out)
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
    card = base_card(config, temperature, threshold)
    card["calibration"].update(method=method, logit_offset_folded_into_weights=offset)
    card["threshold_method"] = "Youden's J on validation probabilities"
    card["training"] = training_record(config, data, split_description, state, device_description, ddp, wall_seconds)
    card["training"].update(training_overrides or {})
    card["metrics"] = {"validation": val_metrics}
    save_model(model, out / "model.safetensors", card)
    _write_json(out / "history.json", state["history"])
    summary = {"model": str(out / "model.json"), "temperature": temperature, "logit_offset": offset,
               "threshold": threshold,
               "validation": val_metrics, "best_epoch": state["best_epoch"] + 1,
               "epochs_run": state["epoch"] + 1, "stopped": state["stopped"],
               "train_seconds": state["train_seconds"], "wall_seconds": wall_seconds, "device": device_description}
    _write_json(out / "train_summary.json", summary)
    tqdm.write(f"model written to {out / 'model.safetensors'}: temperature {temperature:.3f}, logit offset {offset:+.3f}, "
               f"threshold {threshold:.3f}, validation AUC {val_metrics['auc']:.4f}")
    return summary


def training_record(config: TrainConfig, data: Dataset, split_description: dict, state: Dict[str, Any],
                    device_description: str, ddp: Dist, wall_seconds: float) -> Dict[str, Any]:
    """The card's ``training`` section: data, split (without sample indices), recipe, device, time."""
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
                   "weight_averaging": (f"exponential moving average, decay {config.ema} per step (buffers too); "
                                        "validated, kept and exported" if config.ema > 0 else None),
                   "early_stopping": "validation AUC"},
        "best_epoch": state["best_epoch"] + 1, "epochs_run": state["epoch"] + 1, "stopped": state["stopped"],
        "device": device_description, "processes": ddp.world_size,
        "train_seconds": round(state["train_seconds"], 1), "wall_seconds": round(wall_seconds, 1),
        "torch": torch.__version__, "finished": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }


def _split_key(description: dict) -> dict:
    return {"mode": description["mode"], "seed": description["seed"], "params": description["params"],
            "n_samples_total": description["n_samples_total"],
            "sizes": {k: v["n_samples"] for k, v in description["splits"].items()}}


def _load_resume(path: Path, config: TrainConfig, split_description: dict):
    if not path.is_file():
        raise CheckpointError(f"--resume was given but {path} does not exist; start without --resume.")
    model_state, optim_state, saved = load_checkpoint(path)
    # Options added after a checkpoint was written count as their defaults (so older runs still resume).
    defaults = TrainConfig(dataset="", out="").recipe()
    saved_recipe = {**defaults, **saved.get("recipe", {})}
    wanted = json.loads(json.dumps(config.recipe()))
    if saved_recipe != wanted:
        differing = sorted(key for key in set(saved_recipe) | set(wanted) if saved_recipe.get(key) != wanted.get(key))
        hint = (" (hold-out and exclusion now default to the dataset's manifest when neither option is given: "
                "add --ignore-manifest-holdout to resume a run started without them)"
                if set(differing) <= {"holdout_backgrounds", "exclude_patients"} else "")
        raise CheckpointError(f"the checkpoint in {path.parent} was made with other training options ({', '.join(differing)}){hint}; "
                              "resume with the same options or choose another --out.")
    if saved.get("split") != json.loads(json.dumps(_split_key(split_description))):
        raise CheckpointError(f"the checkpoint in {path.parent} was made on another dataset or split; "
                              "resume with the same dataset or choose another --out.")
    return model_state, optim_state, saved


def _write_json(path: Path, value: Any) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(value, indent=2, default=_json_default) + "\n", encoding="utf-8")
    os.replace(tmp, path)


def _json_default(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


# -- command line ------------------------------------------------------------------------------------
def configure_parser(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``nadtrain train``."""
    d = TrainConfig(dataset="", out="")
    parser.add_argument("dataset", help="dataset directory (nadtrain build)")
    parser.add_argument("--out", required=True, help="run directory (checkpoints, model, splits)")
    parser.add_argument("--architecture", default=d.architecture, choices=sorted(ARCHITECTURES))
    parser.add_argument("--epochs", type=int, default=d.epochs)
    parser.add_argument("--batch-size", type=int, default=d.batch_size, help="per process")
    parser.add_argument("--lr", type=float, default=d.lr)
    parser.add_argument("--weight-decay", type=float, default=d.weight_decay)
    parser.add_argument("--warmup-epochs", type=float, default=d.warmup_epochs)
    parser.add_argument("--patience", type=int, default=d.patience, help="early stopping: epochs without a validation AUC gain")
    parser.add_argument("--seed", type=int, default=d.seed)
    parser.add_argument("--split", default=d.split, choices=["patient", "source", "annotation"],
                        help="patient: by patient, stratified (default); source: the dataset's own split (medmnist); "
                             "annotation: LEAK-PRONE per-sample split, only to show leakage in the report")
    parser.add_argument("--test-fraction", type=float, default=d.test_fraction)
    parser.add_argument("--folds", type=int, default=d.n_folds, help="patient folds of train+val; one is validation")
    parser.add_argument("--fold", type=int, default=d.fold, help="which fold is validation (k-fold: train once per fold)")
    parser.add_argument("--test-fold", type=int, default=d.test_fold,
                        help="which patient fold is the test split (default 0; 1.. for cross-testing, see "
                             "`nadtrain references`)")
    parser.add_argument("--holdout-background", action="append", default=[], metavar="NAME",
                        help="keep this CT background out of train and val (test keeps it); repeatable")
    parser.add_argument("--exclude-patient", action="append", default=[], metavar="ID",
                        help="use none of this patient's samples (train, val or test); repeatable")
    parser.add_argument("--ignore-manifest-holdout", action="store_true",
                        help="do not take the defaults from the dataset's manifest: by default its held-out "
                             "background is held out and the patients whose CT serves as a background are "
                             "excluded, unless --holdout-background / --exclude-patient are given")
    parser.add_argument("--all-renders", action="store_true",
                        help="use every rendering of every nodule each epoch (default: one per nodule per epoch)")
    parser.add_argument("--balance", default=d.balance, choices=BALANCE)
    parser.add_argument("--no-augment", action="store_true")
    parser.add_argument("--no-amp", action="store_true", help="disable mixed precision on CUDA")
    parser.add_argument("--device", default=d.device, help="auto, cpu, cuda, gpu or mps")
    parser.add_argument("--num-workers", type=int, default=d.num_workers)
    parser.add_argument("--aux-ratings", type=float, default=d.aux_ratings, metavar="WEIGHT",
                        help="also regress the readers' characteristic ratings and size from the patch "
                             "(multi-task, training only) with this loss weight; 0 = off")
    parser.add_argument("--ema", type=float, default=d.ema, metavar="DECAY",
                        help="validate and keep an exponential moving average of the weights, e.g. 0.99; 0 = off")
    parser.add_argument("--soft-labels", action="store_true",
                        help="train on the share of readers who rated the nodule malignant (a 3 counts half) "
                             "instead of the 0/1 median label; validation, calibration and evaluation keep 0/1")
    parser.add_argument("--calibration", default=d.calibration, choices=CALIBRATION,
                        help="prior: undo the class balancing's known prior shift, temperature 1, nothing fitted "
                             "(default; chosen by cross-testing, Training/results round 4); platt: fit temperature "
                             "and offset on validation NLL")
    parser.add_argument("--val-tta", action="store_true", help="flip TTA in per-epoch validation too (4x slower)")
    parser.add_argument("--resume", action="store_true", help="continue from OUT/checkpoint.safetensors")
    parser.add_argument("--no-progress", action="store_true")


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
    holdout, exclude = list(args.holdout_background), list(args.exclude_patient)
    if not getattr(args, "ignore_manifest_holdout", False):
        holdout, exclude, notes = manifest_defaults(args.dataset, holdout, exclude)
        for note in notes:
            print(f"nadtrain train: {note}; --ignore-manifest-holdout to turn this off.", file=sys.stderr)
    return TrainConfig(
        dataset=args.dataset, out=args.out, architecture=args.architecture, epochs=args.epochs,
        batch_size=args.batch_size, lr=args.lr, weight_decay=args.weight_decay, warmup_epochs=args.warmup_epochs,
        patience=args.patience, seed=args.seed, split=args.split, test_fraction=args.test_fraction,
        n_folds=args.folds, fold=args.fold, test_fold=args.test_fold, holdout_backgrounds=holdout,
        exclude_patients=exclude,
        one_render_per_epoch=not args.all_renders, balance=args.balance, augment=not args.no_augment,
        amp=not args.no_amp, device=args.device, num_workers=args.num_workers, val_tta=args.val_tta,
        aux_ratings=args.aux_ratings, ema=args.ema, soft_labels=args.soft_labels,
        calibration=args.calibration, progress=not args.no_progress)


def run_cli(args: argparse.Namespace) -> int:
    try:
        train(config_from_args(args), resume=args.resume)
    except KeyboardInterrupt:
        print(f"nadtrain train: interrupted; the last finished epoch is saved in {args.out}: rerun the same "
              "command with --resume to continue.", file=sys.stderr)
        return 130
    return 0
