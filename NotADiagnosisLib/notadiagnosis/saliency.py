"""Saliency: which voxels of the 64 mm cube drove the logit, mapped back into the CT's space.

Method: LayerCAM (Jiang et al., IEEE TIP 2021), a Grad-CAM variant. Plain Grad-CAM weights each
channel by its spatially averaged gradient, which is only reliable on the deepest layer — here a
2³ grid of 32 mm cells, too coarse to outline a nodule. LayerCAM weights every location by its own
positive gradient, which stays faithful on shallower, finer layers; we take the 8³ stage (8 mm
cells), upsample trilinearly to 64³ and scale to [0, 1]. It explains the model's logit for the
malignant class at the given point; it is not a segmentation.
"""
from __future__ import annotations

import numpy as np
import SimpleITK as sitk
import torch
from torch import nn

from .geometry import continuous_index
from .model import ResNet3D

# Residual stage whose output is used: stage 1 runs at 8³ for a 64³ input (see model.py).
DEFAULT_STAGE = 1


def layer_cam(model: ResNet3D, patch: torch.Tensor, stage: int = DEFAULT_STAGE) -> np.ndarray:
    """LayerCAM map (D, H, W) in [0, 1] for one normalised patch tensor of shape (1, 1, D, H, W)."""
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
    cam_array = cam[0, 0].detach().float().cpu().numpy()
    peak = float(cam_array.max())
    return (cam_array / peak).astype(np.float32) if peak > 0 else np.zeros_like(cam_array, dtype=np.float32)


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
