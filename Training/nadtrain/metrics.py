"""Evaluation metrics on predictions (no model, no files): AUC with a patient-cluster bootstrap CI,
threshold metrics, calibration (ECE), the size-only baseline, and per-characteristic breakdowns.

Everything takes plain arrays so that tests can check the numbers against hand computations.
"""
from __future__ import annotations

from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
from scipy.stats import rankdata
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import brier_score_loss, confusion_matrix, roc_auc_score

from notadiagnosis.errors import InputError

N_BINS = 10
SIZE_BINS_MM: Tuple[Tuple[float, float], ...] = ((0.0, 6.0), (6.0, 10.0), (10.0, 20.0), (20.0, float("inf")))


def auc_or_none(labels: np.ndarray, scores: np.ndarray) -> Optional[float]:
    """ROC AUC, or None when one class is absent (undefined, not 0.5)."""
    labels = np.asarray(labels)
    if labels.size == 0 or np.unique(labels).size < 2:
        return None
    return float(roc_auc_score(labels, scores))


def rank_auc(labels: np.ndarray, scores: np.ndarray) -> float:
    """ROC AUC by the Mann-Whitney rank formula (ties count one half), equal to sklearn's
    ``roc_auc_score``; used inside the bootstrap, where sklearn's input checks cost 10x the maths."""
    labels = np.asarray(labels)
    ranks = rankdata(scores)
    n_pos = int(labels.sum())
    n_neg = labels.size - n_pos
    return float((ranks[labels == 1].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def threshold_metrics(labels: np.ndarray, probabilities: np.ndarray, threshold: float) -> Dict[str, object]:
    """Accuracy, sensitivity, specificity, PPV, NPV and the confusion matrix for ``p >= threshold``."""
    labels = np.asarray(labels).astype(int)
    predicted = (np.asarray(probabilities) >= threshold).astype(int)
    tn, fp, fn, tp = (int(v) for v in confusion_matrix(labels, predicted, labels=[0, 1]).ravel())

    def ratio(a: int, b: int) -> Optional[float]:
        return a / b if b else None

    return {
        "threshold": float(threshold),
        "accuracy": ratio(tp + tn, tp + tn + fp + fn),
        "sensitivity": ratio(tp, tp + fn),
        "specificity": ratio(tn, tn + fp),
        "ppv": ratio(tp, tp + fp),
        "npv": ratio(tn, tn + fn),
        "confusion_matrix": {"tn": tn, "fp": fp, "fn": fn, "tp": tp,
                             "layout": "rows true benign/malignant, columns predicted benign/malignant",
                             "matrix": [[tn, fp], [fn, tp]]},
    }


def calibration_bins(labels: np.ndarray, probabilities: np.ndarray, n_bins: int = N_BINS) -> Tuple[float, List[dict]]:
    """Expected calibration error over ``n_bins`` equal-width bins of the predicted P(malignant).

    ECE = sum over bins of (n_bin / n) * |observed malignant fraction - mean predicted probability|.
    Bin i holds p in [i/n_bins, (i+1)/n_bins), the last bin also p = 1.
    """
    labels = np.asarray(labels, dtype=np.float64)
    probabilities = np.asarray(probabilities, dtype=np.float64)
    if labels.size == 0:
        raise InputError("no predictions to evaluate.")
    which = np.minimum((probabilities * n_bins).astype(int), n_bins - 1)
    bins, ece = [], 0.0
    for i in range(n_bins):
        mask = which == i
        n = int(mask.sum())
        entry = {"low": i / n_bins, "high": (i + 1) / n_bins, "n": n, "mean_probability": None, "observed_fraction": None}
        if n:
            entry["mean_probability"] = float(probabilities[mask].mean())
            entry["observed_fraction"] = float(labels[mask].mean())
            ece += n / labels.size * abs(entry["observed_fraction"] - entry["mean_probability"])
        bins.append(entry)
    return float(ece), bins


def ece_if_calibrated(probabilities: np.ndarray, groups: Optional[Sequence[str]] = None,
                      observed_ece: Optional[float] = None, n_sim: int = 1000, seed: int = 0) -> Dict[str, object]:
    """The ECE that perfectly calibrated predictions *like these* would show on this very test set.

    A test set of a few hundred nodules gives a non-zero ECE even to calibrated predictions, so an
    ECE inside that floor is not evidence of miscalibration (the floor depends on the predictions'
    spread: a model separating the classes better would have a lower one). Each simulation draws
    fresh labels from the predictions themselves, each sample malignant with its own predicted
    probability, and recomputes the ECE with the same bins. A group's samples (a nodule's renderings, which share
    their true label) share one uniform draw, so their labels agree as far as their probabilities
    allow: a nodule counts once, not once per rendering. (Drawing one label from the group's mean
    probability instead would be wrong: renderings at 0.05 and 0.95 would each get label
    probability 0.5, a gap a calibrated model never has.) Returns the simulated ECE's 5/50/95 %
    quantiles and, given ``observed_ece``, the p-value (1 + #simulations ≥ observed) / (1 + n_sim)
    for "these predictions are calibrated".
    """
    probabilities = np.asarray(probabilities, dtype=np.float64)
    if probabilities.ndim != 1 or probabilities.size == 0:
        raise InputError("probabilities must be a non-empty 1-D array.")
    if groups is None:
        inverse = np.arange(probabilities.size)
    else:
        groups = np.asarray(groups)
        if groups.shape != probabilities.shape:
            raise InputError("groups must give one group per prediction.")
        _, inverse = np.unique(groups, return_inverse=True)
    n_groups = int(inverse.max()) + 1
    rng = np.random.default_rng(seed)
    simulated = np.array([calibration_bins(rng.random(n_groups)[inverse] < probabilities, probabilities)[0]
                          for _ in range(n_sim)])
    q05, q50, q95 = np.quantile(simulated, [0.05, 0.5, 0.95])
    return {
        "simulations": int(n_sim), "unit": "group" if groups is not None else "sample",
        "n_groups": n_groups,
        "median": float(q50), "range90": [float(q05), float(q95)],
        "p_value": None if observed_ece is None else float((1 + np.sum(simulated >= observed_ece)) / (1 + n_sim)),
    }


def _cluster_index(groups: Optional[Sequence[str]], n: int) -> List[np.ndarray]:
    if groups is None:
        return [np.array([i]) for i in range(n)]
    groups = np.asarray(groups)
    _, inverse = np.unique(groups, return_inverse=True)
    order = np.argsort(inverse, kind="stable")
    _, starts = np.unique(inverse[order], return_index=True)
    return np.split(order, starts[1:])


def bootstrap_auc(labels: np.ndarray, score_sets: Sequence[np.ndarray], groups: Optional[Sequence[str]] = None,
                  n_boot: int = 2000, seed: int = 0) -> np.ndarray:
    """AUCs of each score set on ``n_boot`` resamples (rows: resamples, columns: score sets).

    Resampling draws whole clusters (patients) with replacement, because a patient's nodules and a
    nodule's several renderings are not independent; resamples with one class only are skipped.
    """
    labels = np.asarray(labels)
    clusters = _cluster_index(groups, labels.size)
    rng = np.random.default_rng(seed)
    results = []
    for _ in range(n_boot):
        pick = rng.integers(0, len(clusters), len(clusters))
        idx = np.concatenate([clusters[i] for i in pick])
        y = labels[idx]
        if y.min() == y.max():
            continue
        results.append([rank_auc(y, np.asarray(s)[idx]) for s in score_sets])
    return np.asarray(results, dtype=np.float64).reshape(-1, len(score_sets))


def percentile_ci(values: np.ndarray, level: float = 0.95) -> Optional[List[float]]:
    """Percentile interval of bootstrap values, or None when there are none."""
    if values.size == 0:
        return None
    alpha = (1.0 - level) / 2.0
    return [float(np.quantile(values, alpha)), float(np.quantile(values, 1.0 - alpha))]


def summarize(labels: np.ndarray, probabilities: np.ndarray, threshold: float,
              groups: Optional[Sequence[str]] = None, n_boot: int = 2000, seed: int = 0) -> Dict[str, object]:
    """AUC with bootstrap 95% CI, threshold metrics, ECE with its bins, Brier score."""
    labels = np.asarray(labels).astype(int)
    probabilities = np.asarray(probabilities, dtype=np.float64)
    auc = auc_or_none(labels, probabilities)
    boots = bootstrap_auc(labels, [probabilities], groups, n_boot, seed) if auc is not None and n_boot else np.empty((0, 1))
    ece, bins = calibration_bins(labels, probabilities)
    return {
        "n": int(labels.size), "n_malignant": int(labels.sum()),
        "auc": auc, "auc_ci95": percentile_ci(boots[:, 0]), "bootstrap_resamples": int(boots.shape[0]),
        **threshold_metrics(labels, probabilities, threshold),
        "ece": ece, "calibration_bins": bins,
        "brier": float(brier_score_loss(labels, probabilities)) if labels.size else None,
    }


def auc_margin(labels: np.ndarray, model_scores: np.ndarray, baseline_scores: np.ndarray,
               groups: Optional[Sequence[str]] = None, n_boot: int = 2000, seed: int = 0) -> Dict[str, object]:
    """Model AUC minus baseline AUC on the same samples, with a paired cluster-bootstrap 95% CI."""
    a, b = auc_or_none(labels, model_scores), auc_or_none(labels, baseline_scores)
    if a is None or b is None:
        return {"auc_margin": None, "ci95": None, "fraction_of_resamples_model_better": None}
    boots = bootstrap_auc(labels, [model_scores, baseline_scores], groups, n_boot, seed) if n_boot else np.empty((0, 2))
    diff = boots[:, 0] - boots[:, 1]
    return {"auc_margin": a - b, "ci95": percentile_ci(diff),
            "fraction_of_resamples_model_better": float((diff > 0).mean()) if diff.size else None}


class SizeBaseline:
    """Logistic regression on log(median diameter in mm): the size-only reference model."""

    def __init__(self) -> None:
        self.model = LogisticRegression(C=1e6)  # effectively unregularised: one feature, many samples

    @staticmethod
    def _features(diameter_mm: np.ndarray) -> np.ndarray:
        diameter_mm = np.asarray(diameter_mm, dtype=np.float64)
        if not np.all(np.isfinite(diameter_mm)) or np.any(diameter_mm <= 0):
            raise InputError("every nodule needs a positive median_diameter_mm for the size-only baseline.")
        return np.log(diameter_mm).reshape(-1, 1)

    def fit(self, diameter_mm: np.ndarray, labels: np.ndarray) -> "SizeBaseline":
        if np.unique(labels).size < 2:
            raise InputError("the size-only baseline needs benign and malignant training nodules.")
        self.model.fit(self._features(diameter_mm), np.asarray(labels).astype(int))
        return self

    def predict_proba(self, diameter_mm: np.ndarray) -> np.ndarray:
        return self.model.predict_proba(self._features(diameter_mm))[:, 1]

    def describe(self) -> Dict[str, float]:
        return {"feature": "log(median diameter in mm)", "coefficient": float(self.model.coef_[0, 0]),
                "intercept": float(self.model.intercept_[0])}


def render_spread(probabilities: Sequence[float], nodule_ids: Sequence[str]) -> Dict[str, object]:
    """Surroundings: per nodule, the spread (max - min) of p over its renders (each a placement in a
    background); median, 90th percentile and maximum over the nodules with more than one render."""
    probabilities, nodule_ids = np.asarray(probabilities, dtype=np.float64), np.asarray(nodule_ids)
    _, inverse, counts = np.unique(nodule_ids, return_inverse=True, return_counts=True)
    highest = np.full(counts.size, -np.inf)
    lowest = np.full(counts.size, np.inf)
    np.maximum.at(highest, inverse, probabilities)
    np.minimum.at(lowest, inverse, probabilities)
    return summary((highest - lowest)[counts > 1])


def summary(values: Sequence[float]) -> Dict[str, Any]:
    """``n``, median, 90th percentile and maximum of ``values`` (rounded to 4 decimals; None when empty)."""
    values = np.asarray(values, dtype=np.float64)
    if values.size == 0:
        return {"n": 0, "median": None, "p90": None, "max": None}
    return {"n": int(values.size), "median": round(float(np.median(values)), 4),
            "p90": round(float(np.percentile(values, 90)), 4), "max": round(float(values.max()), 4)}


def size_bin(diameter_mm: float) -> str:
    """Size bin label of a diameter, e.g. ``"6-10 mm"`` or ``">=20 mm"``."""
    for low, high in SIZE_BINS_MM:
        if low <= diameter_mm < high:
            if low == 0.0:
                return f"<{high:g} mm"
            if high == float("inf"):
                return f">={low:g} mm"
            return f"{low:g}-{high:g} mm"
    return "unknown"


# A percentile bootstrap over patients cannot estimate the spread between a handful of them: below
# this many patients of either class in a group, its interval is left out rather than shown too narrow.
MIN_PATIENTS_PER_CLASS_FOR_CI = 10


def breakdown(labels: np.ndarray, model_probs: np.ndarray, baseline_probs: Optional[np.ndarray], categories: Sequence[str],
              groups: Optional[Sequence[str]] = None, n_boot: int = 500, seed: int = 0,
              order: Optional[Sequence[str]] = None) -> Dict[str, dict]:
    """Per category: counts, model AUC (with CI) and baseline AUC; AUC is None where one class is absent.

    With ``groups`` (patients), each category also counts the patients with a malignant and with a
    benign sample, and its CI is None (with the reason) when either count is below
    :data:`MIN_PATIENTS_PER_CLASS_FOR_CI`.
    """
    labels = np.asarray(labels).astype(int)
    categories = np.asarray(categories)
    groups_arr = None if groups is None else np.asarray(groups)
    names = list(order) if order is not None else sorted(set(categories.tolist()))
    out: Dict[str, dict] = {}
    for name in names:
        mask = categories == name
        if not mask.any():
            continue
        y, p = labels[mask], np.asarray(model_probs)[mask]
        auc = auc_or_none(y, p)
        entry = {"n": int(mask.sum()), "n_malignant": int(y.sum())}
        few_patients = False
        if groups_arr is not None:
            patients = groups_arr[mask]
            entry["patients_malignant"] = len(set(patients[y == 1].tolist()))
            entry["patients_benign"] = len(set(patients[y == 0].tolist()))
            few_patients = min(entry["patients_malignant"], entry["patients_benign"]) < MIN_PATIENTS_PER_CLASS_FOR_CI
        boots = bootstrap_auc(y, [p], None if groups_arr is None else groups_arr[mask], n_boot, seed) \
            if auc is not None and n_boot and not few_patients else np.empty((0, 1))
        entry.update({"auc": auc, "auc_ci95": percentile_ci(boots[:, 0]),
                      "baseline_auc": None if baseline_probs is None else auc_or_none(y, np.asarray(baseline_probs)[mask])})
        if few_patients and auc is not None:
            entry["auc_ci95_omitted"] = (f"fewer than {MIN_PATIENTS_PER_CLASS_FOR_CI} patients of a class: "
                                         "a bootstrap over so few patients would understate the uncertainty")
        out[name] = entry
    return out
