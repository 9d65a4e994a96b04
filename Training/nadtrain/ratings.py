"""The radiologists' characteristic ratings of each nodule, as numbers: training targets and a reference.

LIDC-IDRI readers rated eight characteristics besides malignancy (subtlety, internal structure,
calcification, sphericity, margin, lobulation, spiculation, texture) and outlined each nodule. The
nodule table (``nadtrain nodules``) keeps every reader's ratings as ``"a;b;c"`` and the median
diameter; this module turns them into one row of numbers per nodule (medians across readers).

Uses, all at training time only (the product never sees ratings, only pixels):

- **Auxiliary targets** (``nadtrain train --aux-ratings W``): the network also regresses these
  numbers from the patch, standardised on the training nodules. Multi-task learning of nodule
  attributes is a common way to make a malignancy network look at what radiologists look at.
- **Soft labels** (``nadtrain train --soft-labels``): the share of readers who rated the nodule
  malignant replaces the 0/1 label in the loss.
- **Ratings reference** (``nadtrain evaluate``): a logistic regression on these numbers, fitted on
  the training nodules. It is not an image model: it reads the readers' own judgements, which are
  made by the same people who rated malignancy. On pixels synthesised from the readers' outlines
  and texture ratings (the ``insertion`` source) it shows roughly how much an image model could
  reach, and so whether a target is within the information the pixels carry.
"""
from __future__ import annotations

from typing import Any, Dict, List, Mapping, Sequence

import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from notadiagnosis.errors import InputError

from .nodule_table import RATED_CHARACTERISTICS, parse_list

# Feature names, in column order: log size first, then the medians of the readers' characteristic ratings
# (malignancy is the label, never a feature), then "calcified" (LIDC's
# calcification rating 6 means absent; 1-5 are calcification patterns, nearly always benign).
FEATURES = ("log_diameter_mm",) + tuple(f"{name}_median" for name in RATED_CHARACTERISTICS) + ("calcified",)


def _ratings_of(value: Any) -> np.ndarray:
    """The readers' numbers in a ratings cell (``nodule_table.parse_list``); empty when the cell is
    empty or unusable."""
    try:
        return np.array(parse_list(value), dtype=np.float64)
    except ValueError:
        return np.empty(0)


def _median_of_ratings(value: Any) -> float:
    """Median of a ratings cell; NaN if unusable."""
    numbers = _ratings_of(value)
    return float(np.median(numbers)) if numbers.size else float("nan")


def nodule_features(row: Mapping[str, Any]) -> np.ndarray:
    """The ``FEATURES`` of one nodule-table row; NaN where a value is missing."""
    try:
        diameter = float(row.get("median_diameter_mm") or "nan")
    except ValueError:
        diameter = float("nan")
    # Per-reader strings when present, else a precomputed median column (``texture_median``...).
    medians = [_median_of_ratings(row.get(name) if row.get(name) not in (None, "", []) else row.get(f"{name}_median"))
               for name in RATED_CHARACTERISTICS]
    calcification = medians[RATED_CHARACTERISTICS.index("calcification")]
    calcified = float(calcification < 6) if np.isfinite(calcification) else float("nan")
    log_diameter = np.log(diameter) if np.isfinite(diameter) and diameter > 0 else float("nan")
    return np.array([log_diameter, *medians, calcified], dtype=np.float64)


def features_for(nodule_ids: Sequence[str], table: Mapping[str, Mapping[str, Any]]) -> np.ndarray:
    """(n, len(FEATURES)) features for each id (rows repeat for a nodule's several samples)."""
    cache: Dict[str, np.ndarray] = {}
    out = np.full((len(nodule_ids), len(FEATURES)), np.nan)
    for i, nodule_id in enumerate(nodule_ids):
        if nodule_id not in cache:
            row = table.get(nodule_id)
            cache[nodule_id] = nodule_features(row) if row is not None else np.full(len(FEATURES), np.nan)
        out[i] = cache[nodule_id]
    return out


def malignancy_share(value: Any) -> float:
    """Share of the readers who rated a nodule malignant (4 or 5), a 3 counting half; NaN if unrated.

    A soft training target (``nadtrain train --soft-labels``): a nodule all readers call 5 stays 1,
    one split 4/2 becomes 0.5, so disagreement between radiologists is not taught as certainty. The
    hard label (median rating) stays the one evaluation uses.
    """
    numbers = _ratings_of(value)
    if numbers.size == 0:
        return float("nan")
    return float(np.mean(np.where(numbers >= 4, 1.0, np.where(numbers == 3, 0.5, 0.0))))


def soft_labels_for(nodule_ids: Sequence[str], table: Mapping[str, Mapping[str, Any]]) -> np.ndarray:
    """``malignancy_share`` of each id's nodule (NaN where the table has no malignancy ratings)."""
    cache: Dict[str, float] = {}
    for nodule_id in set(nodule_ids):
        row = table.get(nodule_id)
        cache[nodule_id] = malignancy_share(row.get("malignancy")) if row is not None else float("nan")
    return np.array([cache[n] for n in nodule_ids], dtype=np.float64)


def has_ratings(features: np.ndarray) -> bool:
    """True when every row has a size and at least one characteristic rating."""
    return bool(features.size) and bool(np.all(np.isfinite(features[:, 0]))) and bool(
        np.all(np.isfinite(features[:, 1:]).any(axis=1)))


class AuxTargets:
    """Standardised rating targets for auxiliary regression (mean/std from the training rows)."""

    def __init__(self, features: np.ndarray, train_rows: np.ndarray) -> None:
        train = features[train_rows]
        if not has_ratings(train):
            raise InputError("--aux-ratings needs the readers' ratings in the nodule table "
                             "(the insertion and lidc sources have them; MedMNIST does not).")
        rated = np.isfinite(train).any(axis=0)  # a column nobody filled stays NaN (masked in the loss)
        self.mean = np.full(train.shape[1], np.nan)
        std = np.full(train.shape[1], np.nan)
        self.mean[rated] = np.nanmean(train[:, rated], axis=0)
        std[rated] = np.nanstd(train[:, rated], axis=0)
        self.std = np.where(np.isfinite(std) & (std > 1e-6), std, 1.0)
        self.values = ((features - self.mean) / self.std).astype(np.float32)  # NaN stays NaN: masked

    @property
    def n_targets(self) -> int:
        return self.values.shape[1]

    def describe(self) -> Dict[str, List[float]]:
        return {"features": list(FEATURES), "mean": self.mean.tolist(), "std": self.std.tolist()}


class RatingsReference:
    """Logistic regression on the readers' ratings (``FEATURES``, or the columns named in ``names``);
    missing values take the training mean."""

    def __init__(self, names: Sequence[str] = FEATURES) -> None:
        self.names = list(names)
        self.model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=5000))
        self.fill = np.zeros(len(self.names))

    def _filled(self, features: np.ndarray) -> np.ndarray:
        features = np.array(features, dtype=np.float64, copy=True)
        missing = ~np.isfinite(features)
        features[missing] = np.take(self.fill, np.nonzero(missing)[1])
        return features

    def fit(self, features: np.ndarray, labels: np.ndarray) -> "RatingsReference":
        if not has_ratings(features):
            raise InputError("the ratings reference needs sizes and characteristic ratings for every training nodule.")
        if np.unique(labels).size < 2:
            raise InputError("the ratings reference needs benign and malignant training nodules.")
        rated = np.isfinite(features).any(axis=0)
        self.fill = np.zeros(features.shape[1])
        self.fill[rated] = np.nanmean(features[:, rated], axis=0)
        self.model.fit(self._filled(features), np.asarray(labels).astype(int))
        return self

    def predict_proba(self, features: np.ndarray) -> np.ndarray:
        return self.model.predict_proba(self._filled(features))[:, 1]

    def describe(self) -> Dict[str, Any]:
        regression = self.model[-1]
        return {"features": self.names, "standardised_coefficients": regression.coef_[0].tolist(),
                "intercept": float(regression.intercept_[0]),
                "note": "not an image model: the radiologists' own ratings (the same readers who rated "
                        "malignancy); an indication of what the pixels could carry, not a competitor"}
