"""Train / validation / test splits by patient (stratified, seeded), and the leak-prone split.

A split is decided per *nodule* (one row per nodule, so a nodule rendered eight times counts once
for stratification) with every nodule of a patient kept together; the samples (renders) then
follow their nodule. ``mode="annotation"`` reproduces the per-annotation split of the original
Not-a-Diagnosis README (every sample drawn independently), only so that the report can show what
that leakage does to the test numbers; never use it for a model you ship.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, Iterable, Optional, Sequence

import numpy as np
from sklearn.model_selection import StratifiedGroupKFold, StratifiedShuffleSplit

from notadiagnosis.errors import InputError

SPLIT_NAMES = ("train", "val", "test")
MODES = ("patient", "annotation", "source")


@dataclass
class Split:
    """Sample indices per split, plus what was decided and how (JSON-able via ``describe``)."""

    indices: Dict[str, np.ndarray]
    mode: str
    seed: int
    params: dict = field(default_factory=dict)

    def describe(self, patient_ids: Sequence[str], nodule_ids: Sequence[str], labels: Sequence[int]) -> dict:
        """JSON-able summary: counts, patient lists and the overlap between splits (leakage)."""
        patient_ids = np.asarray(patient_ids)
        nodule_ids = np.asarray(nodule_ids)
        labels = np.asarray(labels)
        out: dict = {"mode": self.mode, "seed": self.seed, "params": self.params, "splits": {}}
        for name, idx in self.indices.items():
            out["splits"][name] = {
                "n_samples": int(idx.size),
                "n_nodules": int(np.unique(nodule_ids[idx]).size),
                "n_patients": int(np.unique(patient_ids[idx]).size),
                "n_malignant_samples": int(labels[idx].sum()),
                "patients": sorted(set(patient_ids[idx].tolist())),
            }
        out["leakage"] = leakage(self, patient_ids, nodule_ids)
        # The indices themselves, so evaluation reads exactly the split that training used.
        out["indices"] = {name: idx.astype(int).tolist() for name, idx in self.indices.items()}
        out["n_samples_total"] = int(patient_ids.size)
        return out

    @classmethod
    def from_description(cls, description: dict, n_samples: int) -> "Split":
        """The split recorded by ``describe`` (checked against the dataset's size)."""
        if description.get("n_samples_total") != n_samples:
            raise InputError(
                f"the recorded split is for {description.get('n_samples_total')} samples but the dataset has "
                f"{n_samples}; evaluate on the dataset the model was trained on."
            )
        indices = {name: np.asarray(idx, dtype=int) for name, idx in description["indices"].items()}
        return cls(indices=indices, mode=description["mode"], seed=description["seed"],
                   params=description.get("params", {}))


def map_split(split: Split, from_keys: Sequence[tuple], to_keys: Sequence[tuple],
              from_labels: Sequence[int], to_labels: Sequence[int]) -> Split:
    """The same samples in another dataset, matched by sample key (nodule, background, render index).

    For scoring a model on another rendering of the very same test samples (e.g. a dataset built by
    another renderer from the same nodules); raises when any sample of the split is absent there or
    carries another label (a dataset built with another labelling rule is not the same samples).
    """
    position = {key: i for i, key in enumerate(to_keys)}
    from_labels, to_labels = np.asarray(from_labels), np.asarray(to_labels)
    indices = {}
    for name, idx in split.indices.items():
        keys = [from_keys[i] for i in idx]
        missing = [key for key in keys if key not in position]
        if missing:
            raise InputError(f"{len(missing)} of the {len(keys)} {name} samples (e.g. {missing[0]}) are not in the "
                             "other dataset; it must hold the same nodules, backgrounds and renders.")
        indices[name] = np.array([position[key] for key in keys], dtype=int)
        relabelled = np.flatnonzero(from_labels[idx] != to_labels[indices[name]])
        if relabelled.size:
            raise InputError(f"{relabelled.size} of the {name} samples (e.g. {keys[relabelled[0]]}) have another label "
                             "in the other dataset; it must be built with the same labelling rule.")
    return Split(indices=indices, mode=split.mode, seed=split.seed, params=split.params)


def leakage(split: Split, patient_ids: Sequence[str], nodule_ids: Sequence[str]) -> dict:
    """Patients and nodules found in the test split *and* in train or val (should be 0 and 0)."""
    patient_ids = np.asarray(patient_ids)
    nodule_ids = np.asarray(nodule_ids)
    seen = np.concatenate([split.indices.get(n, np.empty(0, int)) for n in ("train", "val")]).astype(int)
    test = split.indices.get("test", np.empty(0, int))
    shared_p = set(patient_ids[test].tolist()) & set(patient_ids[seen].tolist())
    shared_n = set(nodule_ids[test].tolist()) & set(nodule_ids[seen].tolist())
    n_test_nodules = int(np.unique(nodule_ids[test]).size)
    return {
        "test_patients_also_in_train_or_val": len(shared_p),
        "test_nodules_also_in_train_or_val": len(shared_n),
        "test_nodules": n_test_nodules,
    }


def assert_no_patient_overlap(split: Split, patient_ids: Sequence[str]) -> None:
    """Raise when any patient appears in two splits (the guarantee of ``mode="patient"``)."""
    patient_ids = np.asarray(patient_ids)
    names = list(split.indices)
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            both = set(patient_ids[split.indices[a]].tolist()) & set(patient_ids[split.indices[b]].tolist())
            if both:
                raise InputError(
                    f"patients {sorted(both)[:3]} are in both the {a} and {b} splits; split by patient."
                )


def per_nodule(nodule_ids: np.ndarray, patient_ids: np.ndarray, labels: np.ndarray):
    """One row per nodule: (unique nodule ids, their patient, their label, sample -> nodule index)."""
    uniq, first, inverse = np.unique(nodule_ids, return_index=True, return_inverse=True)
    nod_patient = patient_ids[first]
    nod_label = labels[first]
    # A nodule carries one label; disagreeing renders mean a broken dataset, not a modelling choice.
    if np.any(labels != nod_label[inverse]):
        raise InputError("a nodule has samples with different labels; rebuild the dataset.")
    return uniq, nod_patient, nod_label, inverse


def stratified_group_fold(y: np.ndarray, groups: np.ndarray, n_splits: int, fold: int, seed: int):
    """(rest, held) row indices: fold ``fold`` of a seeded StratifiedGroupKFold."""
    n_groups = np.unique(groups).size
    if n_splits < 2 or n_groups < n_splits:
        raise InputError(
            f"cannot make {n_splits} patient folds from {n_groups} patients; use fewer folds or more data."
        )
    if np.unique(y).size < 2:
        raise InputError("the nodules to split are all of one class; the dataset needs benign and malignant nodules.")
    splitter = StratifiedGroupKFold(n_splits=n_splits, shuffle=True, random_state=seed)
    for i, (rest, held) in enumerate(splitter.split(np.zeros(y.size), y, groups)):
        if i == fold:
            return rest, held
    raise InputError(f"fold {fold} does not exist for {n_splits} folds; use 0..{n_splits - 1}.")


def make_split(
    patient_ids: Sequence[str],
    nodule_ids: Sequence[str],
    labels: Sequence[int],
    mode: str = "patient",
    seed: int = 0,
    test_fraction: float = 0.2,
    n_folds: int = 5,
    fold: int = 0,
    source_split: Optional[Sequence[str]] = None,
    background: Optional[Sequence[str]] = None,
    holdout_backgrounds: Iterable[str] = (),
    exclude_patients: Iterable[str] = (),
    test_fold: int = 0,
) -> Split:
    """Split samples into train / val / test.

    mode "patient" (default): test = ``round(1/test_fraction)``-fold patient-grouped stratified
    hold-out (fold ``test_fold``, 0 by default), then val = fold ``fold`` of an ``n_folds``-fold
    patient-grouped stratified split of the rest (k-fold cross-validation: train once per ``fold``;
    cross-*testing*: once per ``test_fold``, each test fold disjoint). Seeds fix everything.
    mode "source": the dataset's own split column (MedMNIST's train/val/test).
    mode "annotation": leak-prone; each sample is assigned independently (stratified by label).
    ``holdout_backgrounds``: samples rendered into these CT backgrounds are kept out of train and
    val entirely; test keeps them, so the report can show a never-seen background.
    ``exclude_patients``: these patients' samples are used nowhere (e.g. LIDC-IDRI-0001, whose real
    pixels are classified after training, must not have been seen as an inserted nodule either).
    """
    if mode not in MODES:
        raise InputError(f"unknown split mode {mode!r}; use one of {', '.join(MODES)}.")
    if not 0.0 < test_fraction < 1.0:
        raise InputError(f"test_fraction must be between 0 and 1, got {test_fraction}.")
    patient_ids = np.asarray(patient_ids).astype(str)
    nodule_ids = np.asarray(nodule_ids).astype(str)
    labels = np.asarray(labels).astype(int)
    n = labels.size
    if not (patient_ids.size == nodule_ids.size == n):
        raise InputError("patient_ids, nodule_ids and labels must have the same length.")
    if test_fold and mode != "patient":
        raise InputError(f"--test-fold chooses a patient fold; split mode {mode!r} has its own test split.")
    params = {"test_fraction": test_fraction, "n_folds": n_folds, "fold": fold,
              "holdout_backgrounds": sorted(holdout_backgrounds)}
    if test_fold:  # recorded only when not the default, so fold-0 splits describe themselves as before
        params["test_fold"] = int(test_fold)
    if exclude_patients:
        params["exclude_patients"] = sorted(exclude_patients)

    if mode == "source":
        if source_split is None:
            raise InputError("split mode 'source' needs a dataset that brings its own split (e.g. medmnist).")
        source_split = np.asarray(source_split).astype(str)
        missing = set(SPLIT_NAMES) - set(source_split.tolist())
        if missing:
            raise InputError(f"the dataset's own split lacks {sorted(missing)}; use --split patient.")
        assign = source_split
    elif mode == "annotation":
        assign = np.empty(n, dtype=object)
        sss = StratifiedShuffleSplit(n_splits=1, test_size=test_fraction, random_state=seed)
        rest, test = next(sss.split(np.zeros(n), labels))
        sss_val = StratifiedShuffleSplit(n_splits=1, test_size=1.0 / n_folds, random_state=seed + 1)
        tr, va = next(sss_val.split(np.zeros(rest.size), labels[rest]))
        assign[test] = "test"
        assign[rest[tr]] = "train"
        assign[rest[va]] = "val"
    else:
        uniq, nod_patient, nod_label, inverse = per_nodule(nodule_ids, patient_ids, labels)
        n_test_folds = max(2, int(round(1.0 / test_fraction)))
        rest, test = stratified_group_fold(nod_label, nod_patient, n_test_folds, test_fold, seed)
        tr, va = stratified_group_fold(nod_label[rest], nod_patient[rest], n_folds, fold, seed + 1)
        nod_assign = np.empty(uniq.size, dtype=object)
        nod_assign[test] = "test"
        nod_assign[rest[tr]] = "train"
        nod_assign[rest[va]] = "val"
        assign = nod_assign[inverse]

    assign = np.asarray(assign).astype(str)
    if background is not None and params["holdout_backgrounds"]:
        background = np.asarray(background).astype(str)
        unknown = set(params["holdout_backgrounds"]) - set(background.tolist())
        if unknown:
            raise InputError(f"background(s) {sorted(unknown)} are not in the dataset; check --holdout-background.")
        held = np.isin(background, params["holdout_backgrounds"])
        assign = np.where(held & (assign != "test"), "unused", assign)
    if params.get("exclude_patients"):
        assign = np.where(np.isin(patient_ids, params["exclude_patients"]), "unused", assign)
    indices = {name: np.flatnonzero(assign == name) for name in SPLIT_NAMES}
    for name, idx in indices.items():
        if idx.size == 0:
            raise InputError(f"the {name} split is empty; the dataset is too small for this split.")
    split = Split(indices=indices, mode=mode, seed=seed, params=params)
    if mode == "patient":
        assert_no_patient_overlap(split, patient_ids)
    return split
