"""Training on a tiny generated dataset: the loss goes down, a seed fixes the result on CPU, a run
interrupted and resumed ends exactly where the uninterrupted run ends, checkpoints are atomic, and
the torchrun (DDP) code path works with one gloo process."""
from __future__ import annotations

import json
import shutil
import socket
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from notadiagnosis.errors import NotADiagnosisError
from notadiagnosis.model import build_model
from notadiagnosis.preprocessing import normalize_hu
from notadiagnosis.weights import load_model
from nadtrain import checkpoint
from nadtrain.dataset import load_dataset
from nadtrain.toy import make_toy_dataset
from nadtrain.train import TrainConfig, pair_consistency, train
from nadtrain.train_data import NoduleEpochSet, collate_normalized, training_groups

EPOCHS = 6
# Resume and determinism need several epochs, not learning: a cheaper run (one rendering per
# nodule per epoch, so half the steps, and augmentation on so its RNG is exercised).
SHORT = {"epochs": 3, "patience": 3, "one_render_per_epoch": True}


class Interrupted(Exception):
    pass


def _config(dataset: Path, out: Path, **changes) -> TrainConfig:
    base = TrainConfig(dataset=str(dataset), out=str(out), architecture="resnet3d-tiny", epochs=EPOCHS,
                       batch_size=4, lr=3e-3, warmup_epochs=0.0, patience=EPOCHS, seed=0, augment=True,
                       device="cpu", progress=False, calibration_tta=False,
                       one_render_per_epoch=False)
    return replace(base, **changes)


@pytest.fixture(scope="module")
def toy_dataset(tmp_path_factory) -> Path:
    # 24 nodules of 12 patients, 2 renderings each: ~15 training nodules, one rendering per epoch.
    return make_toy_dataset(tmp_path_factory.mktemp("toy") / "dataset", n_nodules=24, renders=2, seed=0)


@pytest.fixture(scope="module")
def full_run(toy_dataset, tmp_path_factory):
    """A short training run, every rendering every epoch."""
    out = tmp_path_factory.mktemp("full")
    return out, train(_config(toy_dataset, out))


@pytest.fixture(scope="module")
def short_run(toy_dataset, tmp_path_factory):
    """An uninterrupted SHORT run; keeps a copy of its first epoch's checkpoint."""
    out = tmp_path_factory.mktemp("short")

    def keep_first(epoch, record):
        if epoch == 0:
            shutil.copy(out / "checkpoint.safetensors", out / "after-epoch-1.safetensors")

    train(_config(toy_dataset, out, **SHORT), on_epoch_end=keep_first)
    return out


def _train_loss(model: torch.nn.Module, dataset: Path, splits: dict) -> float:
    data = load_dataset(dataset)
    idx = np.array(splits["indices"]["train"])
    x = torch.from_numpy(normalize_hu(data.patches_hu[idx])).unsqueeze(1)
    y = torch.from_numpy(data.labels[idx].astype(np.float32))
    with torch.no_grad():
        return float(torch.nn.functional.binary_cross_entropy_with_logits(model.eval()(x), y))


def _tensors_equal(a: Path, b: Path) -> bool:
    ta, tb = load_file(str(a)), load_file(str(b))
    return ta.keys() == tb.keys() and all(torch.equal(ta[k], tb[k]) for k in ta)


def test_short_training_lowers_the_loss(full_run, toy_dataset):
    out, summary = full_run
    history = json.loads((out / "history.json").read_text())
    assert len(history) == EPOCHS
    assert history[-1]["train_loss"] < history[0]["train_loss"] - 0.05
    splits = json.loads((out / "splits.json").read_text())
    torch.manual_seed(0)
    initial = build_model("resnet3d-tiny")  # the same seeded initial weights as the run
    trained = build_model("resnet3d-tiny")
    trained.load_state_dict(checkpoint.load_checkpoint(out / "checkpoint.safetensors")[0])
    assert _train_loss(trained, toy_dataset, splits) < _train_loss(initial, toy_dataset, splits)
    # The run ends with a library model whose card carries what validation decided.
    model, card = load_model(out / "model.json")
    assert card["calibration"]["temperature"] == pytest.approx(summary["temperature"])
    assert 0.0 < card["threshold"] < 1.0
    assert card["training"]["data"]["n_samples"] == 48
    assert card["training"]["split"]["leakage"]["test_patients_also_in_train_or_val"] == 0
    # The calibration offset is folded into the last layer's bias; every other tensor is the best epoch's.
    best, shipped = load_file(str(out / "best.safetensors")), load_file(str(out / "model.safetensors"))
    offset = card["calibration"]["logit_offset_folded_into_weights"]
    assert torch.allclose(shipped["head.bias"] - best["head.bias"], torch.tensor([offset]), atol=1e-5)
    assert all(torch.equal(best[k], shipped[k]) for k in best if k != "head.bias")


def test_interrupted_then_resumed_run_equals_the_uninterrupted_run(short_run, toy_dataset, tmp_path):
    full = short_run

    def crash_after_second(epoch, record):
        if epoch == 0:
            shutil.copy(tmp_path / "checkpoint.safetensors", tmp_path / "after-epoch-1.safetensors")
        if epoch == 1:
            raise Interrupted()

    with pytest.raises(Interrupted):
        train(_config(toy_dataset, tmp_path, **SHORT), on_epoch_end=crash_after_second)
    assert not (tmp_path / "model.json").exists()  # no partial model presented as finished
    # Same seed, same first epoch, bit for bit (determinism on CPU).
    assert _tensors_equal(tmp_path / "after-epoch-1.safetensors", full / "after-epoch-1.safetensors")

    train(_config(toy_dataset, tmp_path, **SHORT), resume=True)
    assert _tensors_equal(tmp_path / "checkpoint.safetensors", full / "checkpoint.safetensors")
    assert _tensors_equal(tmp_path / "model.safetensors", full / "model.safetensors")
    strip = lambda h: [{k: v for k, v in r.items() if k != "seconds"} for r in h]  # noqa: E731
    assert strip(json.loads((tmp_path / "history.json").read_text())) == strip(
        json.loads((full / "history.json").read_text()))


def test_another_seed_gives_other_weights(short_run, toy_dataset, tmp_path):
    full = short_run
    train(_config(toy_dataset, tmp_path, **{**SHORT, "seed": 1, "epochs": 1, "patience": 1}))
    assert not _tensors_equal(tmp_path / "checkpoint.safetensors", full / "after-epoch-1.safetensors")


def test_resume_with_other_options_is_refused(full_run, toy_dataset):
    full, _ = full_run
    splits = (full / "splits.json").read_bytes()
    with pytest.raises(NotADiagnosisError, match="other training options"):
        train(_config(toy_dataset, full, lr=1e-4), resume=True)
    assert (full / "splits.json").read_bytes() == splits


def test_a_finished_run_is_not_overwritten_without_resume(full_run, toy_dataset):
    full, _ = full_run
    before = {name: (full / name).read_bytes() for name in ("checkpoint.safetensors", "splits.json", "model.json")}
    with pytest.raises(NotADiagnosisError, match="--resume"):
        train(_config(toy_dataset, full, seed=5))
    assert before == {name: (full / name).read_bytes() for name in before}


def test_checkpoint_write_that_fails_leaves_the_previous_checkpoint(tmp_path, monkeypatch):
    model = build_model("resnet3d-tiny")
    optimizer = torch.optim.AdamW(model.parameters())
    model(torch.zeros(2, 1, 64, 64, 64)).sum().backward()
    optimizer.step()
    path = tmp_path / "checkpoint.safetensors"
    checkpoint.save_checkpoint(path, model, optimizer, {"epoch": 0})
    before = path.read_bytes()

    def broken(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(checkpoint, "save_file", broken)
    with pytest.raises(OSError):
        checkpoint.save_checkpoint(path, model, optimizer, {"epoch": 1})
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["checkpoint.safetensors"]  # no temporary left behind
    # And the optimizer state comes back exactly, without pickle.
    _, optim_state, state = checkpoint.load_checkpoint(path)
    fresh = torch.optim.AdamW(model.parameters())
    fresh.load_state_dict(optim_state)
    for key, value in optimizer.state_dict()["state"][0].items():
        assert torch.equal(fresh.state_dict()["state"][0][key], value)
    assert state == {"epoch": 0}


def test_torchrun_code_path_with_one_gloo_process(toy_dataset, tmp_path, monkeypatch):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    for key, value in {"WORLD_SIZE": "1", "RANK": "0", "LOCAL_RANK": "0", "MASTER_ADDR": "127.0.0.1",
                       "MASTER_PORT": str(port)}.items():
        monkeypatch.setenv(key, value)
    summary = train(_config(toy_dataset, tmp_path, **{**SHORT, "epochs": 1, "patience": 1}))
    assert not torch.distributed.is_initialized()  # the process group is torn down at the end
    _, card = load_model(tmp_path / "model.json")
    assert card["training"]["processes"] == 1
    assert summary["epochs_run"] == 1


def test_torchrun_with_two_gloo_processes_stops_early_together_and_finishes(toy_dataset, tmp_path):
    # Two real processes: rank 0 validates and broadcasts the early-stopping decision; a rank that
    # missed it would hang in the next epoch's all-reduce (the timeout turns that into a failure).
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
               "-m", "nadtrain.cli", "train", str(toy_dataset), "--out", str(tmp_path), "--architecture",
               "resnet3d-tiny", "--epochs", "6", "--patience", "1", "--batch-size", "4", "--device", "cpu",
               "--no-progress"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    summary = json.loads((tmp_path / "train_summary.json").read_text())
    assert summary["stopped"].startswith("early stop") and summary["epochs_run"] < 6
    _, card = load_model(tmp_path / "model.json")
    assert card["training"]["processes"] == 2


def test_weight_average_is_validated_kept_and_resumed_exactly(toy_dataset, tmp_path):
    # --ema: the best weights are the moving average (not the last step's), the average lives in
    # the checkpoint, and a run interrupted after epoch 1 and resumed ends where the whole run ends.
    options = {**SHORT, "epochs": 2, "patience": 2, "ema": 0.9}
    full = tmp_path / "full"

    def keep_each(epoch, record):
        shutil.copy(full / "checkpoint.safetensors", full / f"after-epoch-{epoch + 1}.safetensors")

    train(_config(toy_dataset, full, **options), on_epoch_end=keep_each)
    history = json.loads((full / "history.json").read_text())
    best_epoch = 1 + int(np.argmax([record["val_auc"] for record in history]))  # first maximum, as training keeps
    state = checkpoint.load_checkpoint(full / f"after-epoch-{best_epoch}.safetensors")[0]
    assert int(state["ema.n_averaged"]) > 1
    averaged = {k[len("ema.module."):]: v for k, v in state.items() if k.startswith("ema.module.")}
    trained = {k[len("trained."):]: v for k, v in state.items() if k.startswith("trained.")}
    assert averaged.keys() == trained.keys()
    assert not torch.equal(averaged["stem.0.weight"], trained["stem.0.weight"])
    best = load_file(str(full / "best.safetensors"))
    assert best.keys() == averaged.keys() and all(torch.equal(best[k], averaged[k]) for k in best)

    resumed = tmp_path / "resumed"

    def crash_after_first(epoch, record):
        raise Interrupted()

    with pytest.raises(Interrupted):
        train(_config(toy_dataset, resumed, **options), on_epoch_end=crash_after_first)
    train(_config(toy_dataset, resumed, **options), resume=True)
    assert _tensors_equal(resumed / "checkpoint.safetensors", full / "checkpoint.safetensors")
    assert _tensors_equal(resumed / "model.safetensors", full / "model.safetensors")
    with pytest.raises(NotADiagnosisError, match="ema"):
        train(_config(toy_dataset, tmp_path / "bad", ema=1.5))


# -- --consistency: two renderings of a nodule side by side, their logits pulled together -------------
def test_consistency_batches_pair_two_different_renderings_of_each_nodule(toy_dataset):
    data = load_dataset(toy_dataset)
    indices = np.arange(len(data))
    groups = training_groups(data, indices, one_render=True)
    pairs = NoduleEpochSet(data.patches_hu, data.labels, groups, seed=0, renders_per_item=2)
    x, y, idx = collate_normalized([pairs[item] for item in range(len(pairs))])
    assert x.shape[0] == 2 * len(groups)
    rows = idx.numpy().reshape(-1, 2)
    assert np.all(rows[:, 0] != rows[:, 1])  # two renderings, not one twice (every toy nodule has two)
    assert np.all(data.nodule_ids[rows[:, 0]] == data.nodule_ids[rows[:, 1]])
    assert np.array_equal(y.numpy(), data.labels[idx.numpy()].astype(np.float32))
    assert torch.equal(x[1, 0], torch.from_numpy(normalize_hu(data.patches_hu[rows[0, 1]])))
    single = NoduleEpochSet(data.patches_hu, data.labels, [np.array([3])], seed=0, renders_per_item=2)
    assert [j for _, _, j in single[0]] == [3, 3]


def test_pair_consistency_is_the_mean_squared_logit_difference_within_pairs():
    logits = torch.tensor([1.0, 1.0, 0.0, 2.0, -1.0, 2.0])
    assert float(pair_consistency(logits)) == pytest.approx((0.0 + 4.0 + 9.0) / 3)
    assert float(pair_consistency(torch.tensor([0.5, 0.5, -2.0, -2.0]))) == 0.0
    with pytest.raises(ValueError):
        pair_consistency(torch.zeros(3))


def test_consistency_training_is_recorded_changes_the_weights_and_refuses_all_renders(toy_dataset, tmp_path):
    options = {**SHORT, "epochs": 2, "patience": 2}
    plain, paired = tmp_path / "plain", tmp_path / "paired"
    train(_config(toy_dataset, plain, **options))
    summary = train(_config(toy_dataset, paired, **options, consistency=1.0))
    assert np.isfinite(summary["validation"]["auc"])
    _, card = load_model(paired / "model.json")
    assert card["training"]["recipe"]["consistency"] == 1.0
    assert "two renderings" in card["training"]["recipe"]["consistency_loss"]
    assert not _tensors_equal(plain / "model.safetensors", paired / "model.safetensors")
    with pytest.raises(NotADiagnosisError, match="consistency"):
        train(_config(toy_dataset, tmp_path / "bad", consistency=1.0, one_render_per_epoch=False))
    with pytest.raises(NotADiagnosisError, match="consistency"):
        train(_config(toy_dataset, tmp_path / "bad2", **options, consistency=-1.0))
