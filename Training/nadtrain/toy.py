"""A small generated dataset (spheres in noisy lung) for tests and smoke runs of train/evaluate/export.

Not a model of real nodules: malignant spheres are larger and denser, so a network learns the
task in a few epochs. Written with the real ``DatasetWriter`` so it has the real format.
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional, Union

import numpy as np

from notadiagnosis.geometry import PATCH_SIZE

from .dataset import DatasetWriter

TEXTURES = (5.0, 3.0, 1.0)  # solid, part-solid, ground-glass (LIDC texture ratings)


def sphere_patch(diameter_mm: float, nodule_hu: float, rng: np.random.Generator, size: int = PATCH_SIZE,
                 offset_vox: np.ndarray = np.zeros(3), noise_hu: float = 30.0) -> np.ndarray:
    """A (size,)*3 HU patch: lung (-850 HU) with Gaussian noise and a soft-edged sphere near the centre."""
    grid = np.indices((size,) * 3, dtype=np.float32) - (size // 2)
    r = np.sqrt(sum((grid[i] - offset_vox[i]) ** 2 for i in range(3)))
    inside = np.clip(diameter_mm / 2.0 - r + 0.5, 0.0, 1.0)  # ~1 mm partial-volume edge
    patch = -850.0 + inside * (nodule_hu + 850.0)
    return (patch + rng.normal(0.0, noise_hu, patch.shape)).astype(np.float32)


def make_toy_dataset(path: Union[str, Path], n_nodules: int = 24, renders: int = 1, seed: int = 0,
                     nodules_per_patient: int = 2, backgrounds=("toy-a",), medmnist_like: bool = False,
                     malignant_every: int = 2, malignant_renders: Optional[int] = None) -> Path:
    """Write a complete dataset of ``n_nodules`` nodules x ``renders`` x ``backgrounds`` samples.

    Nodule ``k`` is malignant when ``k % malignant_every == 1`` (every second one by default);
    ``malignant_renders`` gives malignant nodules another number of renderings (default ``renders``),
    so that counting samples and counting nodules give different class ratios.

    ``medmnist_like``: like a MedMNIST build instead: its own train/val/test split column, one
    background "", and no diameters or ratings in the nodule table."""
    rng = np.random.default_rng(seed)
    rows = []
    if medmnist_like:
        backgrounds, renders = ("",), 1
    source = "medmnist" if medmnist_like else "insertion"
    with DatasetWriter(path, source, {"toy": True, "n": n_nodules, "renders": renders, "seed": seed,
                                      "backgrounds": list(backgrounds)}, shard_samples=64) as writer:
        for k in range(n_nodules):
            label = int(k % malignant_every == 1)
            nodule_id = f"TOY-{k // nodules_per_patient:04d}/n{k % nodules_per_patient}"
            patient_id = f"TOY-{k // nodules_per_patient:04d}"
            diameter = float(rng.uniform(12, 22) if label else rng.uniform(4, 12))
            texture = TEXTURES[k % 3]
            nodule_hu = {5.0: 30.0, 3.0: -300.0, 1.0: -600.0}[texture] + (60.0 if label else 0.0)
            row = {"nodule_id": nodule_id, "patient_id": patient_id, "label": label}
            if not medmnist_like:
                row.update({"series_uid": f"toy.{k}", "nodule_index": k % nodules_per_patient, "n_readers": 4,
                            "median_malignancy": 4.5 if label else 1.5,
                            # per-reader ratings with some disagreement (soft labels 1.0/0.875 and 0/0.125)
                            "malignancy": (("5;5;4;4", "5;4;3;4") if label else ("1;1;2;2", "2;3;1;2"))[(k // 2) % 2],
                            "median_diameter_mm": diameter,
                            "median_volume_mm3": np.pi / 6 * diameter ** 3, "texture_median": texture,
                            "calcification_median": 6.0})
            rows.append(row)
            # MedMNIST-like split: by nodule pairs, so both classes land in every split.
            split = ("train", "train", "train", "val", "test")[(k // 2) % 5] if medmnist_like else ""
            for background in backgrounds:
                for render in range(renders if not label or malignant_renders is None else malignant_renders):
                    offset = rng.uniform(-2, 2, 3)
                    patch = sphere_patch(diameter, nodule_hu, rng, offset_vox=offset)
                    writer.add(patch[None], [label], [nodule_id], [patient_id], [render], [background], [split])
        writer.write_nodule_table(rows)
    return Path(path)
