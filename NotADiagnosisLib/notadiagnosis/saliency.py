"""Saliency: which voxels of the 64 mm cube drove the logit, mapped back into the CT's space.

Method: LayerCAM (Jiang et al., IEEE TIP 2021), a Grad-CAM variant. Plain Grad-CAM weights each
channel by its spatially averaged gradient, which is only reliable on the deepest layer — here a
2³ grid of 32 mm cells, too coarse to outline a nodule. LayerCAM weights every location by its own
positive gradient, which stays faithful on shallower, finer layers; we take the 8³ stage (8 mm
cells), upsample trilinearly to 64³ and scale to [0, 1]. It explains the model's logit for the
malignant class at the given point; it is not a segmentation.

On torch the gradient comes from autograd (:func:`layer_cam`); on ONNX Runtime, which has no
autograd, the exported graph computes it with forward operations (:mod:`.onnx_export`) and gives
the 8³ map, which :func:`layer_cam_from_cells` upsamples the way torch does: the same map on both
runtimes (tested to 1e-4). Gradient-free Score-CAM was measured as the alternative and left out:
it agreed poorly with LayerCAM and was less faithful and slower (README, Performance).
"""
from __future__ import annotations

from typing import Tuple

import numpy as np
import SimpleITK as sitk

from .geometry import continuous_index

# Residual stage whose output is used: stage 1 runs at 8³ for a 64³ input (see model.py).
SALIENCY_STAGE = 1
DEFAULT_STAGE = SALIENCY_STAGE


def layer_cam_from_cells(cells: np.ndarray, shape: Tuple[int, int, int]) -> np.ndarray:
    """A LayerCAM map on the stage's cells (d, h, w) upsampled to ``shape`` and scaled to [0, 1]."""
    return _scaled(upsample_trilinear(np.asarray(cells, dtype=np.float32)[None], shape)[0])


def upsample_trilinear(volumes: np.ndarray, shape: Tuple[int, int, int]) -> np.ndarray:
    """(C, d, h, w) maps resampled to (C, *shape) by trilinear interpolation between cell centres
    (torch's ``interpolate(mode="trilinear", align_corners=False)``), one axis at a time with
    element-wise arithmetic: no matrix products, whose BLAS thread pool stalls on a busy machine."""
    result = np.asarray(volumes, dtype=np.float32)
    for axis, size in enumerate(shape, start=1):
        below, above, fraction = _linear_neighbours(result.shape[axis], size)
        fraction = fraction.reshape([-1 if dimension == axis else 1 for dimension in range(result.ndim)])
        lower = np.take(result, below, axis=axis)
        result = lower + fraction * (np.take(result, above, axis=axis) - lower)
    return np.ascontiguousarray(result, dtype=np.float32)


def _linear_neighbours(source: int, target: int) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """For each of ``target`` cell centres: the ``source`` cells below and above and the weight of the one
    above (cell centres aligned, edges clamped)."""
    position = np.clip((np.arange(target) + 0.5) * source / target - 0.5, 0.0, source - 1)
    below = np.floor(position).astype(int)
    return below, np.minimum(below + 1, source - 1), (position - below).astype(np.float32)


def _scaled(volume: np.ndarray) -> np.ndarray:
    peak = float(volume.max())
    return (volume / peak).astype(np.float32) if peak > 0 else np.zeros_like(volume, dtype=np.float32)



def layer_cam(model, patch, stage: int = DEFAULT_STAGE) -> np.ndarray:
    """LayerCAM map (D, H, W) in [0, 1] for one normalised patch tensor of shape (1, 1, D, H, W)."""
    import torch
    from torch import nn

    if patch.dim() != 5 or patch.shape[0] != 1:
        raise ValueError("layer_cam takes one patch of shape (1, 1, D, H, W)")
    model.eval()
    with torch.enable_grad():
        activations = model.stem(patch)
        chosen = None
        for index, block in enumerate(model.stages):
            activations = block(activations)
            if index == stage:
                chosen = activations
                chosen.retain_grad()
        if chosen is None:
            raise ValueError(f"model has no stage {stage}")
        logit = model.classify_features(activations)
        model.zero_grad(set_to_none=True)
        logit.sum().backward()
        cam = torch.relu((torch.relu(chosen.grad) * chosen).sum(dim=1, keepdim=True))
        cam = nn.functional.interpolate(cam, size=patch.shape[2:], mode="trilinear", align_corners=False)
    return _scaled(cam[0, 0].detach().float().cpu().numpy())


def map_to_ct_space(patch_map: np.ndarray, patch_image: sitk.Image, ct: sitk.Image) -> sitk.Image:
    """Resample a map computed on a patch into the CT's own voxel grid.

    The result has the CT's spacing and direction and lies exactly on its voxel lattice, cropped to
    the CT voxels the patch covers (so it overlays the CT voxel for voxel without holding a whole
    CT-sized array). Voxels outside the patch are 0.
    """
    source = sitk.GetImageFromArray(np.asarray(patch_map, dtype=np.float32))
    source.CopyInformation(patch_image)
    size = np.array(patch_image.GetSize())
    spacing = np.array(patch_image.GetSpacing())
    corners = np.array([[i, j, k] for i in (0, 1) for j in (0, 1) for k in (0, 1)], dtype=np.float64)
    corners_lps = np.array(patch_image.GetOrigin()) + corners * (size - 1) * spacing
    index = continuous_index(ct, corners_lps)
    ct_size = np.array(ct.GetSize())
    lower = np.clip(np.floor(index.min(axis=0)).astype(int), 0, ct_size - 1)
    upper = np.clip(np.ceil(index.max(axis=0)).astype(int), 0, ct_size - 1)
    reference = sitk.Image([int(v) for v in upper - lower + 1], sitk.sitkFloat32)
    reference.SetSpacing(ct.GetSpacing())
    reference.SetDirection(ct.GetDirection())
    reference.SetOrigin(ct.TransformIndexToPhysicalPoint([int(v) for v in lower]))
    return sitk.Resample(source, reference, sitk.Transform(), sitk.sitkLinear, 0.0, sitk.sitkFloat32)
