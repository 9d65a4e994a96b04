"""Splits by patient: no patient in two splits, stratified, seeded, k-fold, background hold-out,
and the leak-prone per-annotation split that exists only to show leakage."""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from notadiagnosis.errors import NotADiagnosisError
from nadtrain.splits import Split, assert_no_patient_overlap, leakage, make_split


def _samples(n_patients: int, seed: int, renders: int = 1, backgrounds=("",)):
    """Samples of a made-up cohort: 1-4 nodules per patient, ~1/3 malignant, ``renders`` x backgrounds each."""
    rng = np.random.default_rng(seed)
    patient_ids, nodule_ids, labels, background = [], [], [], []
    for p in range(n_patients):
        for n in range(int(rng.integers(1, 5))):
            label = int(rng.random() < 0.35)
            for b in backgrounds:
                for _ in range(renders):
                    patient_ids.append(f"P{p:03d}")
                    nodule_ids.append(f"P{p:03d}/n{n}")
                    labels.append(label)
                    background.append(b)
    return np.array(patient_ids), np.array(nodule_ids), np.array(labels), np.array(background)


@settings(max_examples=25, deadline=None)
@given(n_patients=st.integers(20, 80), seed=st.integers(0, 10_000), renders=st.integers(1, 3),
       fold=st.integers(0, 4))
def test_no_patient_is_in_two_splits(n_patients, seed, renders, fold):
    patients, nodules, labels, _ = _samples(n_patients, seed, renders)
    split = make_split(patients, nodules, labels, seed=seed, fold=fold)
    sets = {name: set(patients[idx]) for name, idx in split.indices.items()}
    assert not sets["train"] & sets["val"]
    assert not sets["train"] & sets["test"]
    assert not sets["val"] & sets["test"]
    # Every sample lands in exactly one split.
    everything = np.concatenate(list(split.indices.values()))
    assert np.array_equal(np.sort(everything), np.arange(labels.size))


def test_patient_split_is_stratified_and_sized():
    patients, nodules, labels, _ = _samples(300, 1)
    split = make_split(patients, nodules, labels, seed=3, test_fraction=0.2, n_folds=5)
    overall = labels.mean()
    n_nodules = np.unique(nodules).size
    for name, idx in split.indices.items():
        assert abs(labels[idx].mean() - overall) < 0.06, name
    test_share = np.unique(nodules[split.indices["test"]]).size / n_nodules
    val_share = np.unique(nodules[split.indices["val"]]).size / n_nodules
    assert 0.17 < test_share < 0.23
    assert 0.13 < val_share < 0.19  # one fifth of the remaining 80 %


def test_same_seed_gives_the_same_split_and_another_seed_another():
    patients, nodules, labels, _ = _samples(60, 2)
    a = make_split(patients, nodules, labels, seed=7)
    b = make_split(patients, nodules, labels, seed=7)
    c = make_split(patients, nodules, labels, seed=8)
    assert all(np.array_equal(a.indices[k], b.indices[k]) for k in a.indices)
    assert not np.array_equal(a.indices["test"], c.indices["test"])


def test_k_fold_validation_sets_partition_the_non_test_patients():
    patients, nodules, labels, _ = _samples(60, 4)
    folds = [make_split(patients, nodules, labels, seed=1, n_folds=4, fold=k) for k in range(4)]
    test = set(folds[0].indices["test"].tolist())
    assert all(set(f.indices["test"].tolist()) == test for f in folds)  # the test hold-out never moves
    vals = [set(patients[f.indices["val"]]) for f in folds]
    for i in range(4):
        for j in range(i + 1, 4):
            assert not vals[i] & vals[j]
    non_test = set(patients) - set(patients[list(test)])
    assert set().union(*vals) == non_test


def test_annotation_split_leaks_nodules_into_test_and_patient_split_does_not():
    patients, nodules, labels, _ = _samples(40, 5, renders=4)
    leaky = make_split(patients, nodules, labels, mode="annotation", seed=0)
    clean = make_split(patients, nodules, labels, mode="patient", seed=0)
    assert leakage(leaky, patients, nodules)["test_nodules_also_in_train_or_val"] > 0
    with pytest.raises(NotADiagnosisError):
        assert_no_patient_overlap(leaky, patients)
    report = leakage(clean, patients, nodules)
    assert report["test_nodules_also_in_train_or_val"] == 0
    assert report["test_patients_also_in_train_or_val"] == 0


def test_held_out_background_is_only_in_test():
    patients, nodules, labels, background = _samples(40, 6, backgrounds=("ct-a", "ct-b"))
    split = make_split(patients, nodules, labels, seed=0, background=background, holdout_backgrounds=["ct-b"])
    assert set(background[split.indices["train"]]) == {"ct-a"}
    assert set(background[split.indices["val"]]) == {"ct-a"}
    assert set(background[split.indices["test"]]) == {"ct-a", "ct-b"}
    # Test nodules are seen in both backgrounds, so the held-out one is compared on the same nodules.
    test = split.indices["test"]
    in_a = set(nodules[test][background[test] == "ct-a"])
    in_b = set(nodules[test][background[test] == "ct-b"])
    assert in_a == in_b


def test_excluded_patient_is_in_no_split_and_the_rest_is_unchanged():
    patients, nodules, labels, _ = _samples(40, 8)
    plain = make_split(patients, nodules, labels, seed=0)
    excluded = plain_patient = str(patients[plain.indices["train"][0]])
    split = make_split(patients, nodules, labels, seed=0, exclude_patients=[excluded])
    for name in ("train", "val", "test"):
        assert excluded not in set(patients[split.indices[name]])
        kept = plain.indices[name][patients[plain.indices[name]] != plain_patient]
        np.testing.assert_array_equal(split.indices[name], kept)
    assert split.params["exclude_patients"] == [excluded]


def test_source_split_uses_the_datasets_own_split():
    patients, nodules, labels, _ = _samples(30, 7)
    own = np.array(["train", "val", "test"] * (labels.size // 3) + ["train"] * (labels.size % 3))
    split = make_split(patients, nodules, labels, mode="source", source_split=own)
    for name in ("train", "val", "test"):
        assert np.array_equal(split.indices[name], np.flatnonzero(own == name))


def test_too_few_patients_for_the_folds_is_refused_with_a_clear_error():
    patients, nodules, labels, _ = _samples(4, 8)
    with pytest.raises(NotADiagnosisError, match="patients"):
        make_split(patients, nodules, labels, n_folds=5)


def test_recorded_split_is_read_back_and_refused_on_another_dataset():
    patients, nodules, labels, _ = _samples(30, 9)
    split = make_split(patients, nodules, labels, seed=2)
    described = split.describe(patients, nodules, labels)
    again = Split.from_description(described, labels.size)
    assert all(np.array_equal(again.indices[k], split.indices[k]) for k in split.indices)
    with pytest.raises(NotADiagnosisError, match="dataset"):
        Split.from_description(described, labels.size + 1)


def test_test_folds_partition_the_nodules_and_fold_zero_is_the_default_split():
    patients, nodules, labels, _ = _samples(60, seed=4, renders=2)
    default = make_split(patients, nodules, labels, seed=3)
    assert "test_fold" not in default.params  # fold-0 splits describe themselves as before
    splits = [make_split(patients, nodules, labels, seed=3, test_fold=k) for k in range(5)]
    assert all(np.array_equal(default.indices[n], splits[0].indices[n]) for n in ("train", "val", "test"))
    tests = [set(s.indices["test"].tolist()) for s in splits]
    assert sum(len(t) for t in tests) == len(labels) and set().union(*tests) == set(range(len(labels)))
    for s in splits[1:]:
        assert s.params["test_fold"] in range(1, 5)
        assert_no_patient_overlap(s, patients)
    with pytest.raises(NotADiagnosisError, match="fold 5 does not exist"):
        make_split(patients, nodules, labels, seed=3, test_fold=5)


def test_test_fold_is_refused_where_the_split_is_not_by_patient_folds():
    patients, nodules, labels, _ = _samples(40, seed=5)
    with pytest.raises(NotADiagnosisError, match="test-fold"):
        make_split(patients, nodules, labels, mode="annotation", test_fold=2)


def _insertion_dataset(path, patients, backgrounds, holdout):
    from nadtrain.dataset import DatasetWriter

    ids = [f"{p}/n0" for p in patients]
    with DatasetWriter(path, "insertion", {"backgrounds": backgrounds, "holdout_background": holdout}) as writer:
        writer.add(np.zeros((len(ids), 64, 64, 64), np.int16), [0, 1] * (len(ids) // 2), ids, patients,
                   [0] * len(ids), [backgrounds[0]] * len(ids))
        writer.write_nodule_table([{"nodule_id": i, "patient_id": i.split("/")[0], "label": 0} for i in ids])
    return path


def test_train_takes_the_holdout_and_background_patients_from_the_manifest(tmp_path, capsys):
    import argparse

    from nadtrain import train as train_module

    dataset = _insertion_dataset(tmp_path / "ds", ["LIDC-IDRI-0001", "LIDC-IDRI-0002", "LIDC-IDRI-0003", "LIDC-IDRI-0004"],
                                 ["cptac-C3N-00247", "LIDC-IDRI-0003"], "LIDC-IDRI-0001")
    parser = argparse.ArgumentParser()
    train_module.configure_parser(parser)

    config = train_module.config_from_args(parser.parse_args([str(dataset), "--out", str(tmp_path / "run")]))
    assert config.holdout_backgrounds == ["LIDC-IDRI-0001"]
    # Every patient whose own CT is a background (training or held out) is excluded; other backgrounds are not patients.
    assert config.exclude_patients == ["LIDC-IDRI-0001", "LIDC-IDRI-0003"]
    assert "--ignore-manifest-holdout" in capsys.readouterr().err

    given = train_module.config_from_args(parser.parse_args(
        [str(dataset), "--out", "x", "--holdout-background", "cptac-C3N-00247", "--exclude-patient", "LIDC-IDRI-0002"]))
    assert given.holdout_backgrounds == ["cptac-C3N-00247"] and given.exclude_patients == ["LIDC-IDRI-0002"]
    # Either option given: both as given (a command written before the defaults keeps its split).
    one = train_module.config_from_args(parser.parse_args([str(dataset), "--out", "x", "--holdout-background", "LIDC-IDRI-0001"]))
    assert one.holdout_backgrounds == ["LIDC-IDRI-0001"] and one.exclude_patients == []
    other = train_module.config_from_args(parser.parse_args([str(dataset), "--out", "x", "--exclude-patient", "LIDC-IDRI-0002"]))
    assert other.holdout_backgrounds == [] and other.exclude_patients == ["LIDC-IDRI-0002"]

    off = train_module.config_from_args(parser.parse_args([str(dataset), "--out", "x", "--ignore-manifest-holdout"]))
    assert off.holdout_backgrounds == [] and off.exclude_patients == []
