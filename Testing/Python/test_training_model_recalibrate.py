"""Calibration after training: the default prior-shift calibration folds exactly -log(n_benign /
n_malignant) into the bias at temperature 1, and ``nadtrain recalibrate`` redoes a finished run's
calibration into a new folder, equal to what training with that calibration writes, leaving the
original run untouched."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from notadiagnosis.classifier import Classifier
from notadiagnosis.errors import InputError
from notadiagnosis.preprocessing import normalize_hu
from notadiagnosis.weights import load_model
from nadtrain import calibration
from nadtrain.cli import main
from nadtrain.dataset import load_dataset
from nadtrain.recalibrate import recalibrate_run
from nadtrain.toy import make_toy_dataset
from nadtrain.train import TrainConfig, train


def _config(dataset: Path, out: Path, method: str, balance: str = "weight") -> TrainConfig:
    return TrainConfig(dataset=str(dataset), out=str(out), architecture="resnet3d-tiny", epochs=3, batch_size=4,
                       lr=3e-3, warmup_epochs=0.0, patience=3, seed=0, device="cpu", progress=False,
                       calibration_tta=False, calibration=method, balance=balance)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    # Benign-heavy like LIDC (one nodule in three malignant), so the prior shift is far from 0; and
    # malignant nodules have more renderings, so counting samples instead of nodules would be caught.
    dataset = make_toy_dataset(tmp_path_factory.mktemp("toy") / "dataset", n_nodules=30, renders=1, seed=0,
                               malignant_every=3, malignant_renders=3)
    root = tmp_path_factory.mktemp("runs")
    train(_config(dataset, root / "prior", "prior"))
    train(_config(dataset, root / "platt", "platt"))
    train(_config(dataset, root / "sampler", "prior", balance="sampler"))
    train(_config(dataset, root / "none", "prior", balance="none"))
    return dataset, root


def _digests(folder: Path) -> dict:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir()) if p.is_file()}


def _training_counts(dataset: Path, run: Path) -> tuple:
    """(malignant, benign) training nodules: the items one epoch balances (one rendering per nodule)."""
    data = load_dataset(dataset, load_patches=False)
    train_idx = np.array(json.loads((run / "splits.json").read_text())["indices"]["train"])
    nodules = {data.nodule_ids[i]: int(data.labels[i]) for i in train_idx}
    samples_malignant = int(data.labels[train_idx].sum())
    assert samples_malignant / (len(train_idx) - samples_malignant) != sum(nodules.values()) / (
        len(nodules) - sum(nodules.values()))  # the two ways of counting disagree on this dataset
    return sum(nodules.values()), len(nodules) - sum(nodules.values())


def _validation_probabilities(dataset: Path, run: Path) -> tuple:
    data = load_dataset(dataset)
    val_idx = np.array(json.loads((run / "splits.json").read_text())["indices"]["val"])
    classifier = Classifier.load(str(run / "model.json"), device="cpu")
    probabilities, _, _ = classifier.predict_patches(normalize_hu(data.patches_hu[val_idx]), tta=False)
    return data.labels[val_idx].astype(int), probabilities


def test_prior_shift_offset_is_minus_the_log_class_ratio():
    assert calibration.prior_shift_offset(100, 300, balanced=True) == pytest.approx(-np.log(3.0))
    assert calibration.prior_shift_offset(100, 300, balanced=False) == 0.0
    with pytest.raises(InputError, match="benign and malignant"):
        calibration.prior_shift_offset(0, 300, balanced=True)


def test_default_calibration_folds_the_prior_shift_at_temperature_one(runs):
    dataset, root = runs
    assert TrainConfig(dataset="", out="").calibration == "prior"
    run = root / "prior"
    _, card = load_model(run / "model.json")
    n_malignant, n_benign = _training_counts(dataset, run)
    assert n_malignant < n_benign
    offset = card["calibration"]["logit_offset_folded_into_weights"]
    assert offset == pytest.approx(-np.log(n_benign / n_malignant))
    assert card["calibration"]["temperature"] == 1.0
    assert "prior shift only" in card["calibration"]["method"]
    best, shipped = load_file(str(run / "best.safetensors")), load_file(str(run / "model.safetensors"))
    assert torch.allclose(shipped["head.bias"] - best["head.bias"], torch.tensor([offset]), atol=1e-5)
    assert all(torch.equal(best[k], shipped[k]) for k in best if k != "head.bias")
    # The threshold is Youden's J on the calibrated validation probabilities the shipped model gives.
    labels, probabilities = _validation_probabilities(dataset, run)
    assert card["threshold"] == pytest.approx(calibration.youden_threshold(labels, probabilities), abs=1e-6)


def test_prior_shift_follows_the_balancing(runs):
    dataset, root = runs
    n_malignant, n_benign = _training_counts(dataset, root / "prior")
    sampler = json.loads((root / "sampler" / "model.json").read_text())["calibration"]
    assert sampler["logit_offset_folded_into_weights"] == pytest.approx(-np.log(n_benign / n_malignant))
    unbalanced = json.loads((root / "none" / "model.json").read_text())["calibration"]
    assert unbalanced["logit_offset_folded_into_weights"] == 0.0 and unbalanced["temperature"] == 1.0
    assert unbalanced["method"].startswith("none")


def test_recalibrating_equals_training_with_that_calibration_and_keeps_the_run(runs, tmp_path):
    dataset, root = runs
    before = _digests(root / "prior")
    summary = recalibrate_run(root / "prior", tmp_path / "as-platt", "platt", device="cpu", progress=False)
    assert _digests(root / "prior") == before  # the original run is untouched
    # Same seed, same best epoch: recalibrating the prior run with Platt is the Platt run, bit for bit.
    assert load_file(str(tmp_path / "as-platt" / "model.safetensors")).keys() == \
        load_file(str(root / "platt" / "model.safetensors")).keys()
    for name, tensor in load_file(str(tmp_path / "as-platt" / "model.safetensors")).items():
        assert torch.equal(tensor, load_file(str(root / "platt" / "model.safetensors"))[name]), name
    platt_card = json.loads((root / "platt" / "model.json").read_text())
    new_card = json.loads((tmp_path / "as-platt" / "model.json").read_text())
    assert new_card["calibration"] == platt_card["calibration"]
    assert new_card["threshold"] == platt_card["threshold"]
    assert new_card["training"]["best_epoch"] == platt_card["training"]["best_epoch"]
    # The card keeps the training run's own record and says it was recalibrated.
    prior_card = json.loads((root / "prior" / "model.json").read_text())
    assert new_card["training"]["finished"] == prior_card["training"]["finished"]
    assert new_card["training"]["recalibrated"]["from_run"] == "prior"
    assert new_card["training"]["recalibrated"]["calibration"] == "platt"
    assert summary["temperature"] == pytest.approx(platt_card["calibration"]["temperature"])
    assert (tmp_path / "as-platt" / "splits.json").read_bytes() == (root / "prior" / "splits.json").read_bytes()
    assert summary["recalibrated_from"] == str((root / "prior").resolve())


def test_recalibrate_command_writes_a_run_that_evaluate_takes(runs, tmp_path, capsys):
    _, root = runs
    out = tmp_path / "as-prior"
    assert main(["recalibrate", str(root / "platt"), "--out", str(out), "--device", "cpu", "--no-progress"]) == 0
    assert "temperature 1.000" in capsys.readouterr().out
    shipped, best = load_file(str(out / "model.safetensors")), load_file(str(root / "platt" / "best.safetensors"))
    card = json.loads((out / "model.json").read_text())
    assert torch.allclose(shipped["head.bias"] - best["head.bias"],
                          torch.tensor([card["calibration"]["logit_offset_folded_into_weights"]]), atol=1e-5)
    assert main(["evaluate", str(out), "--bootstrap", "0", "--no-progress", "--device", "cpu"]) == 0
    assert (out / "evaluation" / "report.json").is_file()


def test_recalibrate_refuses_bad_input_and_changes_nothing(runs, tmp_path, capsys):
    _, root = runs
    before = _digests(root / "prior")
    with pytest.raises(InputError, match="new folder"):
        recalibrate_run(root / "prior", root / "prior", "platt", device="cpu", progress=False)
    with pytest.raises(InputError, match="inside the run folder"):
        recalibrate_run(root / "prior", root / "prior" / "sub", "platt", device="cpu", progress=False)
    with pytest.raises(InputError, match="unknown calibration"):
        recalibrate_run(root / "prior", tmp_path / "x", "isotonic", device="cpu", progress=False)
    with pytest.raises(InputError, match="already exists"):
        recalibrate_run(root / "prior", root / "platt", "prior", device="cpu", progress=False)
    (tmp_path / "unfinished").mkdir()
    (tmp_path / "unfinished" / "splits.json").write_text("{}")
    with pytest.raises(InputError, match="not a finished training run"):
        recalibrate_run(tmp_path / "unfinished", tmp_path / "y", "prior", device="cpu", progress=False)
    assert main(["recalibrate", str(tmp_path / "unfinished"), "--out", str(tmp_path / "z")]) == 2
    assert "not a finished training run" in capsys.readouterr().err
    assert _digests(root / "prior") == before
    assert not (tmp_path / "x").exists() and not (tmp_path / "y").exists() and not (tmp_path / "z").exists()
    assert not (root / "prior" / "sub").exists()


def test_interrupted_recalibration_leaves_no_run_behind(runs, tmp_path, monkeypatch):
    import nadtrain.recalibrate as module

    _, root = runs
    before = _digests(root / "prior")
    real_finalize = module.finalize

    def crash_after_writing_the_model(*args, **kwargs):
        real_finalize(*args, **kwargs)  # model.json is written ...
        raise KeyboardInterrupt  # ... and then the user interrupts

    monkeypatch.setattr(module, "finalize", crash_after_writing_the_model)
    with pytest.raises(KeyboardInterrupt):
        recalibrate_run(root / "prior", tmp_path / "out", "platt", device="cpu", progress=False)
    assert sorted(tmp_path.iterdir()) == []  # neither OUT nor its partial folder
    assert _digests(root / "prior") == before
