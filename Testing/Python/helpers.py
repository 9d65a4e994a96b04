"""Small generated data for tests: oblique CTs with markers, tiny models saved to disk."""
from __future__ import annotations

from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import SimpleITK as sitk


def rotation_matrix(axis: Sequence[float], angle_deg: float) -> np.ndarray:
    """Rotation matrix about ``axis`` by ``angle_deg`` (Rodrigues)."""
    axis = np.asarray(axis, dtype=np.float64)
    axis = axis / np.linalg.norm(axis)
    angle = np.deg2rad(angle_deg)
    cross = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
    return np.eye(3) + np.sin(angle) * cross + (1 - np.cos(angle)) * cross @ cross


def make_ct(
    size=(120, 110, 50),
    spacing=(0.7, 0.9, 2.0),
    direction=None,
    origin=(-40.0, -35.0, -50.0),
    background_hu: float = -800.0,
) -> sitk.Image:
    """A constant CT (int16 HU) with the given geometry."""
    array = np.full(tuple(reversed(size)), background_hu, dtype=np.int16)
    image = sitk.GetImageFromArray(array)
    image.SetSpacing([float(s) for s in spacing])
    image.SetOrigin([float(o) for o in origin])
    image.SetDirection((np.eye(3) if direction is None else np.asarray(direction)).ravel().tolist())
    return image


def physical_grid(image: sitk.Image) -> np.ndarray:
    """LPS position of every voxel centre, shape (z, y, x, 3)."""
    size = image.GetSize()
    k, j, i = np.meshgrid(*(np.arange(n) for n in reversed(size)), indexing="ij")
    index = np.stack([i, j, k], axis=-1).astype(np.float64)
    matrix = np.asarray(image.GetDirection()).reshape(3, 3) * np.asarray(image.GetSpacing())
    return index @ matrix.T + np.asarray(image.GetOrigin())


def add_sphere(image: sitk.Image, center_lps, radius_mm: float, value_hu: float) -> sitk.Image:
    """A copy of ``image`` with voxels within ``radius_mm`` of ``center_lps`` set to ``value_hu``."""
    array = sitk.GetArrayFromImage(image)
    inside = np.linalg.norm(physical_grid(image) - np.asarray(center_lps), axis=-1) <= radius_mm
    array[inside] = value_hu
    result = sitk.GetImageFromArray(array)
    result.CopyInformation(image)
    return result


def bright_centroid_zyx(array: np.ndarray, threshold: float) -> np.ndarray:
    """Centroid (z, y, x) in voxel indices of the voxels above ``threshold``."""
    coordinates = np.argwhere(array > threshold)
    assert len(coordinates), "no voxel above the threshold"
    return coordinates.mean(axis=0)


def save_random_model(directory: Path, architecture: str = "resnet3d-tiny", temperature: float = 1.0, seed: int = 0,
                      metrics: Optional[dict] = None) -> Path:
    """Save a random-initialised model with a complete card; returns the card path (tests only)."""
    import torch

    from notadiagnosis.card import preprocessing_block
    from notadiagnosis.model import build_model
    from notadiagnosis.weights import save_model

    torch.manual_seed(seed)
    model = build_model(architecture).eval()
    card = {
        "name": "random-test-model",
        "version": "0.0.0-test",
        "preprocessing": preprocessing_block(),
        "calibration": {"temperature": temperature},
        "threshold": 0.5,
        "training": {"data": "none: random weights for tests"},
        "metrics": metrics or {},
    }
    return save_model(model, Path(directory) / "model.safetensors", card)
