"""`nadtrain train`: train a 3D ResNet on a dataset; fit temperature and threshold on validation.

Recipe: split by patient (``splits.py``), one rendering per nodule per epoch (optional,
``train_data.py``), class imbalance by a positive-class weight in the loss (or a balanced sampler),
3D augmentation on the batch's device (``augment.py``), AdamW with linear warm-up then cosine decay
per step, early stopping on validation AUC, mixed precision on CUDA, a checkpoint every epoch
(``checkpoint.py``, atomic, no pickle) that ``--resume`` continues from, and ``torchrun`` DDP when
WORLD_SIZE is set. The options are ``train_options.TrainConfig``; once the loop stops,
``finalize.py`` calibrates and writes the model and its card (``train_card.py``).

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
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Dict, Optional, Tuple

import numpy as np
import torch
import torch.distributed as dist
from torch.utils.data import DataLoader, DistributedSampler, RandomSampler, WeightedRandomSampler
from tqdm.auto import tqdm

from notadiagnosis.device import select_device
from notadiagnosis.errors import InputError
from notadiagnosis.model import build_model, count_parameters

from . import input_masks, ratings
from .augment import AugmentConfig, augment_batch
from .checkpoint import CheckpointError, load_checkpoint, save_checkpoint, save_weights
from .dataset import Dataset, load_dataset
from .files import write_json
from .finalize import finalize, predict_logits, safe_auc
from .splits import Split, make_split
from .train_card import TrainedRun
from .train_data import NoduleEpochSet, collate_normalized, training_groups, training_item_labels
from .train_options import TrainConfig, config_from_args, configure_parser  # noqa: F401 - `nadtrain train`'s parser


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


class AuxiliaryNet(torch.nn.Module):
    """The classifier plus a linear head regressing the readers' ratings from the same pooled
    features (training only: ``net`` alone is saved as the model; ``aux`` lives in checkpoints)."""

    def __init__(self, net: torch.nn.Module, n_targets: int) -> None:
        super().__init__()
        self.net = net
        self.aux = torch.nn.Linear(net.head.in_features, n_targets)

    def forward(self, x: torch.Tensor):
        pooled = self.net.pool(self.net.features(x))
        return self.net.classify_pooled(pooled), self.aux(pooled)


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


def pair_consistency(logits: torch.Tensor) -> torch.Tensor:
    """Mean squared difference of the logits of rows 2k and 2k + 1 (two renderings of one nodule,
    ``--consistency``): zero when the network gives both renderings the same answer."""
    if logits.shape[0] % 2:
        raise ValueError("pair_consistency needs an even number of rows (pairs of renderings)")
    pairs = logits.reshape(-1, 2)
    return ((pairs[:, 0] - pairs[:, 1]) ** 2).mean()


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


def lr_factor(step: int, total_steps: int, warmup_steps: int) -> float:
    """Linear warm-up to 1, then cosine decay to 0 at ``total_steps``."""
    if warmup_steps > 0 and step < warmup_steps:
        return (step + 1) / warmup_steps
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


def _epoch_seed(seed: int, epoch: int, rank: int, stream: int) -> int:
    # Separate, reproducible streams per (seed, epoch, rank, purpose).
    return int(np.random.SeedSequence([seed, epoch, rank, stream]).generate_state(1)[0])


def train(config: TrainConfig, on_epoch_end: Optional[Callable[[int, Dict[str, Any]], None]] = None,
          resume: bool = False) -> Dict[str, Any]:
    """Train per ``config``; returns the summary (also written to ``train_summary.json``).

    ``on_epoch_end(epoch, record)`` is called after each epoch's checkpoint is written (tests use
    it to simulate an interruption).
    """
    config.check()
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
    split, split_description = split_of(config, data)
    if config.input_mask == "nodule":
        found = input_masks.mask_dataset(config, data, np.concatenate([split.indices["train"], split.indices["val"]]))
        if ddp.main:
            tqdm.write(f"nodule-masked input (margin {config.mask_margin_mm:g} mm): the finder found the nodule in "
                       f"{found.mean():.1%} of the {found.size} train and val samples")

    # Model and optimisation. The seed fixes the initial weights.
    torch.manual_seed(config.seed)
    model = build_model(config.architecture).to(device)
    network = build_training_network(config, model, data, split, device)
    groups = training_groups(data, split.indices["train"], config.one_render_per_epoch)
    train_set = NoduleEpochSet(data.patches_hu, data.labels, groups, config.seed,
                               renders_per_item=2 if config.consistency > 0 else 1)
    # Every validation sample (all renderings): a steadier AUC for early stopping than one per
    # nodule, for about 4 ms per sample on CPU without TTA.
    val_idx = split.indices["val"]
    item_labels = training_item_labels(data, groups)
    n_pos, n_neg = int(item_labels.sum()), int((1 - item_labels).sum())
    if n_pos == 0 or n_neg == 0:
        raise InputError("the training split holds one class only; the dataset needs benign and malignant nodules.")
    pos_weight = torch.tensor(n_neg / n_pos if config.balance == "weight" else 1.0, device=device)
    soft_targets = _soft_targets(data, split.indices["train"], device) if config.soft_labels else None
    optimisation = build_optimisation(config, network.net, len(train_set), pos_weight, ddp.world_size, device)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True

    state: Dict[str, Any] = {"epoch": -1, "best_auc": -1.0, "best_epoch": -1, "bad_epochs": 0,
                             "stopped": None, "history": [], "train_seconds": 0.0}
    if resume:
        state = _resume(checkpoint_path, config, split_description, network, optimisation)
        if ddp.main:
            tqdm.write(f"resuming after epoch {state['epoch'] + 1} (best val AUC {state['best_auc']:.4f})")
    if ddp.main:  # only once the run is known to be new or a matching resume
        write_json(out / "splits.json", split_description)

    train_model: torch.nn.Module = network.net
    if ddp.enabled:
        train_model = torch.nn.parallel.DistributedDataParallel(
            network.net, device_ids=[device.index] if device.type == "cuda" else None)

    if ddp.main:
        tqdm.write(
            f"training {config.architecture} ({count_parameters(model):,} parameters) on {device_description}"
            f"{f' x {ddp.world_size} processes' if ddp.enabled else ''}: {len(train_set)} training items "
            f"({n_pos} malignant), {len(val_idx)} validation samples, {config.epochs} epochs max"
            f"{', AMP ' + str(optimisation.amp_dtype).replace('torch.', '') if optimisation.use_amp else ''}")
    for epoch in range(state["epoch"] + 1, config.epochs):
        if state["stopped"]:
            break
        epoch_started = time.time()
        train_set.set_epoch(epoch)
        torch.manual_seed(_epoch_seed(config.seed, epoch, ddp.rank, 0))  # dropout
        loader_gen = torch.Generator().manual_seed(_epoch_seed(config.seed, epoch, ddp.rank, 1))
        aug_gen = torch.Generator().manual_seed(_epoch_seed(config.seed, epoch, ddp.rank, 2))
        loader = epoch_loader(config, train_set, item_labels, epoch, ddp, optimisation.drop_last, loader_gen, device)
        train_loss = train_epoch(config, train_model, loader, network, model, optimisation, soft_targets, aug_gen,
                                 ddp, device, desc=f"epoch {epoch + 1}/{config.epochs}")

        # Validation, best weights, early stopping and the checkpoint on rank 0; the decision to
        # stop is broadcast so every rank leaves the loop together.
        stop = torch.zeros(1, device=device)
        if ddp.main:
            record = validate_and_checkpoint(config, epoch, train_loss, epoch_started, data, val_idx, network,
                                             optimisation, state, split_description, device)
            stop[0] = 1.0 if state["stopped"] else 0.0
            if on_epoch_end is not None:
                on_epoch_end(epoch, record)
        else:
            state["epoch"] = epoch
        if ddp.enabled:
            dist.broadcast(stop, src=0)
            if stop.item() > 0:
                state["stopped"] = "early stop"
            network.net.train()
        if stop.item() > 0:
            break

    summary: Dict[str, Any] = {}
    if ddp.main:
        trained = TrainedRun(state, device_description, ddp.world_size, time.time() - started)
        summary = finalize(config, model, data, split, split_description, trained, device)
    if ddp.enabled:
        dist.barrier()
        dist.destroy_process_group()
    return summary


def split_of(config: TrainConfig, data: Dataset) -> Tuple[Split, Dict[str, Any]]:
    """The run's split of ``data`` and its description (written to ``splits.json``, checked on resume)."""
    split = make_split(data.patient_ids, data.nodule_ids, data.labels, mode=config.split, seed=config.seed,
                       test_fraction=config.test_fraction, n_folds=config.n_folds, fold=config.fold,
                       source_split=data.split, background=data.background,
                       holdout_backgrounds=config.holdout_backgrounds,
                       exclude_patients=config.exclude_patients, test_fold=config.test_fold)
    description = split.describe(data.patient_ids, data.nodule_ids, data.labels)
    description["dataset"] = str(Path(config.dataset).resolve())
    # The split is sample indices: evaluate checks a moved or rebuilt dataset still orders its samples alike.
    description["sample_keys_sha256"] = data.sample_keys_sha256()
    return split, description


@dataclass
class Optimisation:
    """What a training step needs besides the network and the batch: the loss, the optimiser, the
    learning-rate schedule (per step) and mixed precision."""

    criterion: torch.nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LambdaLR
    scaler: torch.amp.GradScaler
    use_amp: bool
    amp_dtype: torch.dtype
    drop_last: bool  # the loader drops a last, partial batch (a 1-sample batch would break batch norm)


def build_optimisation(config: TrainConfig, net: torch.nn.Module, n_items: int, pos_weight: torch.Tensor,
                       world_size: int, device: torch.device) -> Optimisation:
    """BCE (with the positive-class weight), AdamW, linear warm-up then cosine decay per step, and AMP on CUDA."""
    per_rank_items = math.ceil(n_items / world_size)
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
    return Optimisation(torch.nn.BCEWithLogitsLoss(pos_weight=pos_weight), optimizer, scheduler, scaler, use_amp,
                        amp_dtype, drop_last)


def _resume(checkpoint_path: Path, config: TrainConfig, split_description: Dict[str, Any], network: TrainingNetwork,
            optimisation: Optimisation) -> Dict[str, Any]:
    """Load a matching checkpoint into the network and the optimisation; return the run's state."""
    model_state, optim_state, saved = _load_resume(checkpoint_path, config, split_description)
    network.checkpointed.load_state_dict(model_state)
    optimisation.optimizer.load_state_dict(optim_state)
    optimisation.scheduler.load_state_dict(saved["scheduler"])
    if saved.get("scaler"):
        optimisation.scaler.load_state_dict(saved["scaler"])
    return saved["train_state"]


def epoch_loader(config: TrainConfig, train_set: NoduleEpochSet, item_labels: np.ndarray, epoch: int, ddp: Dist,
                 drop_last: bool, generator: torch.Generator, device: torch.device) -> DataLoader:
    """One epoch's batches: shuffled (``generator``), class-balanced with ``--balance sampler``, or this
    rank's share under DDP."""
    if ddp.enabled:
        sampler = DistributedSampler(train_set, num_replicas=ddp.world_size, rank=ddp.rank, shuffle=True,
                                     seed=config.seed, drop_last=False)
        sampler.set_epoch(epoch)
    elif config.balance == "sampler":
        n_pos, n_neg = int(item_labels.sum()), int((1 - item_labels).sum())
        weights = np.where(item_labels == 1, 0.5 / n_pos, 0.5 / n_neg)
        sampler = WeightedRandomSampler(torch.as_tensor(weights, dtype=torch.double), len(train_set),
                                        replacement=True, generator=generator)
    else:
        sampler = RandomSampler(train_set, generator=generator)
    return DataLoader(train_set, batch_size=config.batch_size, sampler=sampler, drop_last=drop_last,
                      collate_fn=collate_normalized, num_workers=config.num_workers,
                      pin_memory=device.type == "cuda", persistent_workers=False)


def train_epoch(config: TrainConfig, train_model: torch.nn.Module, loader: DataLoader, network: TrainingNetwork,
                model: torch.nn.Module, optimisation: Optimisation, soft_targets: Optional[torch.Tensor],
                aug_gen: torch.Generator, ddp: Dist, device: torch.device, desc: str) -> float:
    """One pass over ``loader`` (augmentation drawn from ``aug_gen``); the mean training loss over all ranks."""
    train_model.train()
    augment_config = AugmentConfig()
    loss_total, loss_count = 0.0, 0
    bar = tqdm(loader, desc=desc, unit="batch", leave=False, disable=not (config.progress and ddp.main))
    for x, y, sample_idx in bar:
        x = x.to(device, non_blocking=True)
        y = y.to(device, non_blocking=True) if soft_targets is None else soft_targets[sample_idx.to(device)]
        if config.augment:
            x = augment_batch(x, augment_config, aug_gen)
        with torch.autocast(device_type=device.type, dtype=optimisation.amp_dtype, enabled=optimisation.use_amp):
            output = train_model(x)
        logits = (output[0] if network.aux_targets is not None else output).float()
        loss = optimisation.criterion(logits, y)
        if network.aux_targets is not None:
            loss = loss + config.aux_ratings * masked_mse(output[1].float(), network.aux_targets[sample_idx.to(device)])
        if config.consistency > 0:
            loss = loss + config.consistency * pair_consistency(logits)
        optimisation.optimizer.zero_grad(set_to_none=True)
        optimisation.scaler.scale(loss).backward()
        optimisation.scaler.step(optimisation.optimizer)
        optimisation.scaler.update()
        optimisation.scheduler.step()
        if network.ema is not None:
            network.ema.update_parameters(model)
        loss_value = loss.item()  # one sync per step; the progress bar shows it anyway
        loss_total += loss_value * len(y)
        loss_count += len(y)
        bar.set_postfix(loss=f"{loss_value:.4f}")
    if ddp.enabled:  # (float64 is fine on CUDA and CPU, the only DDP devices; MPS lacks it)
        sums = torch.tensor([loss_total, float(loss_count)], dtype=torch.float64, device=device)
        dist.all_reduce(sums)
        loss_total, loss_count = float(sums[0]), int(sums[1])
    return loss_total / max(loss_count, 1)


def validate_and_checkpoint(config: TrainConfig, epoch: int, train_loss: float, epoch_started: float, data: Dataset,
                            val_idx: np.ndarray, network: TrainingNetwork, optimisation: Optimisation,
                            state: Dict[str, Any], split_description: Dict[str, Any], device: torch.device
                            ) -> Dict[str, Any]:
    """After an epoch (rank 0): validation AUC and loss, the best weights kept, early stopping decided in
    ``state``, the checkpoint written; returns the epoch's history record (its seconds: training and
    validation, since ``epoch_started``)."""
    out = Path(config.out)
    val_logits = predict_logits(network.evaluated, data, val_idx, device, tta=config.val_tta,
                                batch_size=config.batch_size, progress=False)
    val_auc = safe_auc(data.labels[val_idx], val_logits)
    val_loss = float(torch.nn.functional.binary_cross_entropy_with_logits(
        torch.as_tensor(val_logits), torch.as_tensor(data.labels[val_idx], dtype=torch.float64)))
    improved = np.isfinite(val_auc) and val_auc > state["best_auc"] + 1e-6
    if improved:
        state.update(best_auc=val_auc, best_epoch=epoch, bad_epochs=0)
        save_weights(out / "best.safetensors", network.evaluated)
    else:
        state["bad_epochs"] += 1
    record = {"epoch": epoch + 1, "train_loss": train_loss, "val_loss": val_loss, "val_auc": val_auc,
              "lr": optimisation.scheduler.get_last_lr()[0], "seconds": time.time() - epoch_started}
    state["history"].append(record)
    state["epoch"] = epoch
    state["train_seconds"] += record["seconds"]
    if state["bad_epochs"] >= config.patience:
        state["stopped"] = f"early stop: no validation AUC gain for {config.patience} epochs"
    scaler = optimisation.scaler
    save_checkpoint(out / "checkpoint.safetensors", network.checkpointed, optimisation.optimizer, {
        "config": asdict(config), "recipe": config.recipe(), "split": _split_key(split_description),
        "scheduler": optimisation.scheduler.state_dict(), "scaler": scaler.state_dict() if scaler.is_enabled() else None,
        "train_state": state})
    tqdm.write(f"epoch {epoch + 1}/{config.epochs}: train loss {train_loss:.4f}, val loss {val_loss:.4f}, "
               f"val AUC {val_auc:.4f} (best {state['best_auc']:.4f} at epoch {state['best_epoch'] + 1}), "
               f"{record['seconds']:.0f} s")
    return record


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


def run_cli(args: argparse.Namespace) -> int:
    try:
        train(config_from_args(args), resume=args.resume)
    except KeyboardInterrupt:
        print(f"nadtrain train: interrupted; the last finished epoch is saved in {args.out}: rerun the same "
              "command with --resume to continue.", file=sys.stderr)
        return 130
    return 0
