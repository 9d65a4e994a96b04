"""`nadtrain samples`: a PNG of sample patches from several datasets side by side, to judge realism.

Each dataset gets two rows: the axial and the coronal centre slice of the same patches (the coronal
view shows the through-plane resolution, where inserted nodules would look wrong first). Patches are
drawn evenly from benign and malignant nodules, one per nodule, with a fixed seed; the grey scale is
the model's window (-1000..400 HU).
"""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import List, Optional, Sequence

import numpy as np

from notadiagnosis.disclaimer import REMINDER
from notadiagnosis.geometry import PATCH_SIZE, PATCH_SPACING_MM
from notadiagnosis.preprocessing import HU_MAX, HU_MIN

from .dataset import DatasetError, load_dataset, load_patches


def choose_samples(labels: np.ndarray, nodule_ids: np.ndarray, count: int, seed: int = 0,
                   mask: Optional[np.ndarray] = None) -> List[int]:
    """Up to ``count`` sample indices, half benign and half malignant, at most one per nodule."""
    rng = np.random.default_rng(seed)
    mask = np.ones(len(labels), dtype=bool) if mask is None else mask
    chosen: List[int] = []
    for label, quota in ((0, count // 2), (1, count - count // 2)):
        candidates = np.flatnonzero((labels == label) & mask)
        rng.shuffle(candidates)
        seen = set()
        for index in candidates:
            if len([c for c in chosen if labels[c] == label]) >= quota:
                break
            if nodule_ids[index] in seen:
                continue
            seen.add(nodule_ids[index])
            chosen.append(int(index))
    return chosen


def write_samples_png(datasets: Sequence[Path], out: Path, per_dataset: int = 8, seed: int = 0,
                      background: Optional[str] = None) -> Path:
    """Write the side-by-side PNG of ``per_dataset`` patches of each dataset; returns its path."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = []
    for path in datasets:
        dataset = load_dataset(path, load_patches=False)
        mask = None
        if background is not None and dataset.manifest.get("source") == "insertion":
            mask = dataset.background == background
            if not mask.any():
                raise DatasetError(f"{path} has no sample rendered into background {background!r}.")
        indices = choose_samples(dataset.labels, dataset.nodule_ids, per_dataset, seed, mask)
        if not indices:
            raise DatasetError(f"{path} holds no samples to show.")
        patches = load_patches(path, indices)
        titles = [f"{dataset.nodule_ids[i]}\n{'malignant' if dataset.labels[i] else 'benign'}"
                  + (f" · {dataset.background[i]}" if dataset.background[i] else "")
                  + (f" · {dataset.split[i]}" if dataset.split[i] else "") for i in indices]
        rows.append((f"{dataset.manifest.get('source')} ({Path(path).name})", patches, titles))
    columns = max(len(p) for _n, p, _t in rows)
    figure, axes = plt.subplots(2 * len(rows), columns, figsize=(1.9 * columns, 2.1 * 2 * len(rows)), squeeze=False)
    for r, (name, patches, titles) in enumerate(rows):
        for c in range(columns):
            for view in range(2):
                axis = axes[2 * r + view, c]
                axis.axis("off")
                if c >= len(patches):
                    continue
                half = patches.shape[1] // 2
                image = patches[c][half] if view == 0 else patches[c][::-1, half, :]  # coronal: superior at the top
                axis.imshow(image, cmap="gray", vmin=HU_MIN, vmax=HU_MAX, interpolation="nearest")
                if view == 0:
                    axis.set_title(titles[c], fontsize=6)
        axes[2 * r, 0].text(-0.08, 0.5, f"{name}\naxial", transform=axes[2 * r, 0].transAxes, rotation=90,
                             ha="right", va="center", fontsize=7)
        axes[2 * r + 1, 0].text(-0.08, 0.5, "coronal", transform=axes[2 * r + 1, 0].transAxes, rotation=90,
                                 ha="right", va="center", fontsize=7)
    figure.suptitle(f"Sample {PATCH_SIZE * PATCH_SPACING_MM:g} mm patches (window {HU_MIN:g}..{HU_MAX:g} HU). "
                    f"{REMINDER}", fontsize=9)
    figure.tight_layout()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(out, dpi=110)
    plt.close(figure)
    return out


def configure_parser(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("datasets", nargs="+", type=Path, help="dataset directories (one row pair each)")
    parser.add_argument("--out", type=Path, required=True, help="PNG file to write")
    parser.add_argument("--per-dataset", type=int, default=8, help="patches per dataset (half benign, half malignant)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--background", default=None, help="for insertion datasets: only patches of this background")


def run_cli(args: argparse.Namespace) -> int:
    path = write_samples_png(args.datasets, args.out, args.per_dataset, args.seed, args.background)
    print(f"wrote {path}")
    return 0
