"""Evaluation figures (matplotlib, headless): ROC, reliability diagram, confusion matrix."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, Optional

import matplotlib

matplotlib.use("Agg")  # files only; never needs a display
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from sklearn.metrics import roc_curve  # noqa: E402

from notadiagnosis.disclaimer import REMINDER  # noqa: E402


def _finish(fig, path: Path) -> str:
    fig.text(0.99, 0.01, REMINDER, ha="right", va="bottom", fontsize=7, color="gray")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path.name


def plot_roc(path: Path, labels: np.ndarray, probs: np.ndarray, base_probs: Optional[np.ndarray], report: Dict[str, Any],
             background_masks: Optional[Dict[str, np.ndarray]] = None) -> str:
    fig, ax = plt.subplots(figsize=(5.2, 5.0))
    overall = report["overall"]
    fpr, tpr, _ = roc_curve(labels, probs)
    ci = overall["model"]["auc_ci95"]
    ci_text = f" [{ci[0]:.3f}, {ci[1]:.3f}]" if ci else ""
    ax.plot(fpr, tpr, color="C0", lw=2, label=f"model AUC {overall['model']['auc']:.3f}{ci_text}")
    if base_probs is not None:
        fpr_b, tpr_b, _ = roc_curve(labels, base_probs)
        ax.plot(fpr_b, tpr_b, color="C1", lw=1.5, ls="--", label=f"size-only AUC {overall['baseline']['auc']:.3f}")
    for k, (name, mask) in enumerate((background_masks or {}).items()):
        if np.unique(labels[mask]).size == 2:
            f, t, _ = roc_curve(labels[mask], probs[mask])
            entry = report["by_background"][name]
            seen = "" if entry["seen_in_training"] else ", held out"
            ax.plot(f, t, lw=1, ls=":", color=f"C{k + 2}", label=f"model on {name}{seen}: {entry['model']['auc']:.3f}")
    m = overall["model"]
    if m["sensitivity"] is not None and m["specificity"] is not None:
        ax.plot([1 - m["specificity"]], [m["sensitivity"]], "o", color="C0",
                label=f"validation threshold {m['threshold']:.2f}")
    ax.plot([0, 1], [0, 1], color="lightgray", lw=1)
    ax.set_xlabel("1 - specificity")
    ax.set_ylabel("sensitivity")
    ax.set_title(f"ROC, {report['split']['name']} split (n={overall['n_samples']}, {overall['n_patients']} patients)")
    ax.legend(loc="lower right", fontsize=8)
    ax.set_aspect("equal")
    return _finish(fig, path)


def plot_reliability(path: Path, report: Dict[str, Any]) -> str:
    model = report["overall"]["model"]
    bins = [b for b in model["calibration_bins"] if b["n"]]
    fig, (ax, hist) = plt.subplots(2, 1, figsize=(5.0, 6.0), gridspec_kw={"height_ratios": [3, 1]}, sharex=True)
    ax.plot([0, 1], [0, 1], color="lightgray", lw=1, label="perfect calibration")
    ax.plot([b["mean_probability"] for b in bins], [b["observed_fraction"] for b in bins], "o-", color="C0",
            label=f"model (ECE {model['ece']:.3f})")
    if report["overall"]["baseline"] is not None:
        base = [b for b in report["overall"]["baseline"]["calibration_bins"] if b["n"]]
        ax.plot([b["mean_probability"] for b in base], [b["observed_fraction"] for b in base], "s--", color="C1",
                alpha=0.7, label=f"size-only (ECE {report['overall']['baseline']['ece']:.3f})")
    ax.set_ylabel("observed malignant fraction")
    ax.set_title(f"Reliability, {report['split']['name']} split, T = {report['model']['temperature']:.2f}")
    ax.legend(loc="upper left", fontsize=8)
    all_bins = model["calibration_bins"]
    hist.bar([(b["low"] + b["high"]) / 2 for b in all_bins], [b["n"] for b in all_bins],
             width=all_bins[0]["high"] - all_bins[0]["low"], color="C0", alpha=0.6, edgecolor="white")
    hist.set_xlabel("predicted probability of malignancy")
    hist.set_ylabel("samples")
    hist.set_xlim(0, 1)
    return _finish(fig, path)


def plot_confusion(path: Path, report: Dict[str, Any]) -> str:
    m = report["overall"]["model"]
    matrix = np.array(m["confusion_matrix"]["matrix"])
    fig, ax = plt.subplots(figsize=(4.2, 3.8))
    ax.imshow(matrix, cmap="Blues")
    for (i, j), v in np.ndenumerate(matrix):
        ax.text(j, i, str(v), ha="center", va="center", fontsize=14,
                color="white" if v > matrix.max() / 2 else "black")
    ax.set_xticks([0, 1], ["benign", "malignant"])
    ax.set_yticks([0, 1], ["benign", "malignant"])
    ax.set_xlabel("predicted")
    ax.set_ylabel("LIDC label")
    ax.set_title(f"threshold {m['threshold']:.2f} (from validation)")
    return _finish(fig, path)


def write_figures(out: Path, labels: np.ndarray, probs: np.ndarray, base_probs: Optional[np.ndarray], threshold: float,
                  report: Dict[str, Any], background_masks: Optional[Dict[str, np.ndarray]] = None) -> Dict[str, str]:
    """Write roc.png, reliability.png and confusion.png into ``out``; returns their file names."""
    figures = {"reliability": plot_reliability(out / "reliability.png", report),
               "confusion_matrix": plot_confusion(out / "confusion.png", report)}
    if np.unique(labels).size == 2:
        figures["roc"] = plot_roc(out / "roc.png", labels, probs, base_probs, report, background_masks)
    return figures
