"""Calibration (temperature and logit offset) and the decision threshold, from validation only.

Why an offset: class weighting (or balanced sampling) trains the model on a 50/50 prior, which
shifts every logit by about log(n_benign / n_malignant). Two ways to undo it:

- ``prior`` (the default recipe): :func:`prior_shift_offset` subtracts exactly that known shift,
  temperature 1, nothing fitted. Chosen in round 4 of ``Training/results`` by cross-testing: a
  lower test ECE than Platt on 3 of 4 folds (mean 0.033 vs 0.046), a tie on the untouched fold 0.
- ``platt``: :func:`fit_platt` fits sigmoid((logit + offset) / T) on validation NLL.

The library's classifier knows only a temperature; ``train`` folds the offset into the final
layer's bias, which adds it to every TTA logit, so the shipped model computes exactly this.
"""
from __future__ import annotations

import numpy as np
from scipy.optimize import minimize, minimize_scalar
from sklearn.metrics import roc_curve

from notadiagnosis.errors import InputError

# Temperatures outside this range mean a broken model or a tiny validation set, not calibration.
LOG_T_BOUNDS = (-4.0, 4.0)
OFFSET_BOUNDS = (-20.0, 20.0)


def _check(labels: np.ndarray, scores: np.ndarray) -> None:
    if labels.shape != scores.shape or labels.ndim != 1:
        raise InputError("labels and scores must be 1-D arrays of the same length.")
    if np.unique(labels).size < 2:
        raise InputError("the validation split holds one class only; calibration needs benign and malignant nodules.")


def nll_at_temperature(logits: np.ndarray, labels: np.ndarray, temperature: float) -> float:
    """Mean binary cross-entropy of ``sigmoid(logits / temperature)`` (numerically stable form)."""
    z = np.asarray(logits, dtype=np.float64) / temperature
    y = np.asarray(labels, dtype=np.float64)
    # -[y log s(z) + (1-y) log(1-s(z))] = softplus(z) - y z
    return float(np.mean(np.logaddexp(0.0, z) - y * z))


def fit_temperature(logits: np.ndarray, labels: np.ndarray) -> float:
    """The temperature T > 0 minimising validation NLL of ``sigmoid(logit / T)`` (Guo et al. 2017)."""
    logits = np.asarray(logits, dtype=np.float64)
    labels = np.asarray(labels, dtype=np.float64)
    _check(labels, logits)
    result = minimize_scalar(lambda log_t: nll_at_temperature(logits, labels, float(np.exp(log_t))),
                             bounds=LOG_T_BOUNDS, method="bounded", options={"xatol": 1e-6})
    return float(np.exp(result.x))


def nll_platt(logits: np.ndarray, labels: np.ndarray, temperature: float, offset: float) -> float:
    """Mean binary cross-entropy of ``sigmoid((logits + offset) / temperature)``."""
    return nll_at_temperature(np.asarray(logits, dtype=np.float64) + offset, labels, temperature)


def fit_platt(logits: np.ndarray, labels: np.ndarray):
    """(temperature, offset) minimising validation NLL of ``sigmoid((logit + offset) / T)``."""
    logits = np.asarray(logits, dtype=np.float64)
    labels = np.asarray(labels, dtype=np.float64)
    _check(labels, logits)

    def objective(params: np.ndarray) -> float:
        return nll_platt(logits, labels, float(np.exp(params[0])), float(params[1]))

    start = np.array([np.log(fit_temperature(logits, labels)), 0.0])
    result = minimize(objective, start, method="L-BFGS-B", bounds=[LOG_T_BOUNDS, OFFSET_BOUNDS])
    return float(np.exp(result.x[0])), float(result.x[1])


def prior_shift_offset(n_malignant: int, n_benign: int, balanced: bool) -> float:
    """The logit offset that undoes class balancing: ``-log(n_benign / n_malignant)`` of the
    training items when the loss was weighted (or the sampler balanced) to a 50/50 prior, else 0."""
    if n_malignant <= 0 or n_benign <= 0:
        raise InputError("the prior shift needs benign and malignant training items.")
    return float(-np.log(n_benign / n_malignant)) if balanced else 0.0


def youden_threshold(labels: np.ndarray, probabilities: np.ndarray) -> float:
    """Probability threshold maximising sensitivity + specificity - 1 (Youden's J) on validation.

    Among equally good cut points the midpoint between the chosen score and the next lower one is
    returned, so a sample lying exactly on the threshold is not an accident of the data.
    """
    labels = np.asarray(labels)
    probabilities = np.asarray(probabilities, dtype=np.float64)
    _check(labels, probabilities)
    fpr, tpr, thresholds = roc_curve(labels, probabilities)
    finite = np.isfinite(thresholds)
    j = np.where(finite, tpr - fpr, -np.inf)
    best = int(np.argmax(j))
    upper = thresholds[best]
    lower_scores = probabilities[probabilities < upper]
    lower = float(lower_scores.max()) if lower_scores.size else 0.0
    return float((upper + lower) / 2.0)
