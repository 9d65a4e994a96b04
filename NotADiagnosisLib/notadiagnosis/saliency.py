"""Saliency: which voxels of the 64 mm cube drove the logit, mapped back into the CT's space.

Both methods read the feature maps of the 8³ residual stage (8 mm cells; the 2³ last stage, 32 mm
cells, is too coarse to outline a nodule), upsample trilinearly to 64³ and scale to [0, 1]. They
explain the model's malignancy logit at the given point; they are not segmentations.

- **Score-CAM** (Wang et al., CVPR Workshops 2020), the default, runs on any runtime, ONNX Runtime
  included: it needs forward passes only. Each of the stage's C feature maps, upsampled and scaled
  to [0, 1], keeps its part of the patch and turns the rest into air (0 after ``normalize_hu`` is
  -1000 HU); the maps' weights are the softmax, over the C maps, of the malignancy logits of their
  masked patches (so some map always carries weight: the paper's "rise over a blank patch" is zero
  for every map of a patch that looks benign, leaving nothing to show). The map is
  ``relu(sum_k w_k A_k)``. The C masked patches (16 for the shipped network) run as one batch.
- **LayerCAM** (Jiang et al., IEEE TIP 2021), a Grad-CAM variant that weights every location by its
  own positive gradient; it needs gradients, hence the torch runtime. It was the method before ONNX
  Runtime; Score-CAM's agreement with it is measured in ``Testing/Benchmarks/benchmark_saliency.py``.
"""
from __future__ import annotations

from typing import Callable, Tuple

import numpy as np
import SimpleITK as sitk

from .geometry import continuous_index

# Residual stage whose output is used: stage 1 runs at 8³ for a 64³ input (see model.py).
SALIENCY_STAGE = 1
DEFAULT_STAGE = SALIENCY_STAGE
SALIENCY_METHODS = ("score-cam", "layer-cam")


def score_cam(patch: np.ndarray, features: np.ndarray, logits: Callable[[np.ndarray], np.ndarray]) -> np.ndarray:
    """Score-CAM map (D, H, W) in [0, 1] of one normalised patch (D, H, W).

    ``features`` (C, d, h, w) are the saliency stage's maps of this patch; ``logits`` runs the model
    on a batch (N, 1, D, H, W) and returns (N,) logits. Each map is scaled to [0, 1] on its own grid
    and then upsampled (the two commute up to the interpolation's reach), which costs C small arrays
    instead of C full-size ones.
    """
    patch = np.asarray(patch, dtype=np.float32)
    features = np.asarray(features, dtype=np.float32)
    low = features.min(axis=(1, 2, 3), keepdims=True)
    span = features.max(axis=(1, 2, 3), keepdims=True) - low
    usable = span.reshape(-1) > 0  # a constant map masks nothing in particular
    weights = np.zeros(len(features), dtype=np.float64)
    if usable.any():
        masks = upsample_trilinear((features[usable] - low[usable]) / span[usable], patch.shape, channels_last=True)
        batch = np.empty((masks.shape[1], 1) + patch.shape, dtype=np.float32)
        np.multiply(np.moveaxis(masks, 0, 1), patch, out=batch[:, 0])
        scores = np.asarray(logits(batch), dtype=np.float64)
        exponentials = np.exp(scores - scores.max())
        weights[usable] = exponentials / exponentials.sum()
    cam = np.maximum(np.tensordot(weights, features.astype(np.float64), axes=1), 0.0)
    return _scaled(upsample_trilinear(cam[None], patch.shape)[0])


def upsample_trilinear(volumes: np.ndarray, shape: Tuple[int, int, int], channels_last: bool = False) -> np.ndarray:
    """(C, d, h, w) maps resampled to (C, *shape) by trilinear interpolation between cell centres
    (torch's ``interpolate(mode="trilinear", align_corners=False)``): one matrix product per axis, the
    smallest first. ``channels_last`` returns them as (D, C, H, W), which the last product gives for free."""
    volumes = np.asarray(volumes, dtype=np.float32)
    channels, depth = volumes.shape[:2]
    weights_z, weights_y, weights_x = (_linear_weights(source, target) for source, target in zip(volumes.shape[1:], shape))
    result = weights_y @ (volumes @ weights_x.T)  # (C, d, H, W); the products run over the last two axes
    # One plain 2-D product for the largest step: numpy's stacked products are slow for this shape.
    result = (weights_z @ np.swapaxes(result, 0, 1).reshape(depth, -1)).reshape((shape[0], channels) + tuple(shape[1:]))
    return result if channels_last else np.ascontiguousarray(np.swapaxes(result, 0, 1))


def _linear_weights(source: int, target: int) -> np.ndarray:
    """(target, source) matrix of linear interpolation weights, cell centres aligned, edges clamped."""
    position = np.clip((np.arange(target) + 0.5) * source / target - 0.5, 0.0, source - 1)
    below = np.floor(position).astype(int)
    above = np.minimum(below + 1, source - 1)
    fraction = (position - below).astype(np.float32)
    weights = np.zeros((target, source), dtype=np.float32)
    weights[np.arange(target), below] += 1.0 - fraction
    weights[np.arange(target), above] += fraction
    return weights


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
