"""3D augmentation on batches of normalised patches, in torch (runs on the batch's device).

Input and output: float tensors (N, 1, Z, Y, X) in the range of ``normalize_hu`` ([0, 1], air = 0).
Every random draw comes from the ``torch.Generator`` passed in (a CPU generator, so a seed gives
the same augmentation on CPU and GPU), never from the global RNG.
Spatial transforms keep the patch centre on the nodule: flips and 90-degree turns are about the
centre voxel's axes, shifts are a few voxels with air (0) filling the border.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import torch


@dataclass(frozen=True)
class AugmentConfig:
    """What to draw per sample. Rotations are in the axial (y, x) plane only: slice spacing
    in the source CT differs from in-plane spacing, so turning z into y would change the look."""

    flip_prob: float = 0.5          # per axis (z, y, x)
    rotate90: bool = True           # k * 90 degrees in the axial plane, k uniform in 0..3
    max_shift_vox: int = 4          # integer shift per axis, uniform in [-max, max] (1 voxel = 1 mm)
    intensity_scale: float = 0.10   # multiply by U(1 - s, 1 + s)
    intensity_shift: float = 0.05   # add U(-s, s)
    noise_std: float = 0.01         # additive Gaussian noise, std drawn U(0, noise_std) per sample

    def to_dict(self) -> dict:
        return asdict(self)


def _uniform(n: int, low: float, high: float, generator: torch.Generator) -> torch.Tensor:
    return low + (high - low) * torch.rand(n, generator=generator)


def _per_sample(mask: torch.Tensor, device: torch.device) -> torch.Tensor:
    return mask.to(device).view(-1, 1, 1, 1, 1)


def random_flips(x: torch.Tensor, prob: float, generator: torch.Generator) -> torch.Tensor:
    """Flip each sample along z, y and x independently with probability ``prob``."""
    for dim in (2, 3, 4):
        flip = torch.rand(x.shape[0], generator=generator) < prob
        if flip.any():
            x = torch.where(_per_sample(flip, x.device), x.flip(dim), x)
    return x


def random_rot90_axial(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Turn each sample by k * 90 degrees in the axial (y, x) plane, k drawn per sample."""
    if x.shape[3] != x.shape[4]:
        raise ValueError("axial 90-degree turns need square axial slices")
    k = torch.randint(0, 4, (x.shape[0],), generator=generator)
    out = x.clone()
    for turns in (1, 2, 3):
        sel = torch.nonzero(k == turns).flatten().to(x.device)
        if sel.numel():
            out[sel] = torch.rot90(x[sel], turns, dims=(3, 4))
    return out


def random_shift(x: torch.Tensor, max_shift_vox: int, generator: torch.Generator) -> torch.Tensor:
    """Shift each sample by a whole number of voxels per axis; the uncovered border becomes air (0)."""
    if max_shift_vox <= 0:
        return x
    m = max_shift_vox
    shifts = torch.randint(-m, m + 1, (x.shape[0], 3), generator=generator).tolist()
    padded = torch.nn.functional.pad(x, (m, m, m, m, m, m), value=0.0)
    z, y, w = x.shape[2:]
    out = torch.empty_like(x)
    for i, (dz, dy, dx) in enumerate(shifts):
        # Content moves by +d: the output window starts d voxels before the original one.
        out[i] = padded[i, :, m - dz:m - dz + z, m - dy:m - dy + y, m - dx:m - dx + w]
    return out


def random_intensity(x: torch.Tensor, scale: float, shift: float, noise_std: float,
                     generator: torch.Generator) -> torch.Tensor:
    """Per-sample contrast and brightness jitter plus a little Gaussian noise, clipped to [0, 1]."""
    n = x.shape[0]
    a = _per_sample(_uniform(n, 1.0 - scale, 1.0 + scale, generator), x.device)
    b = _per_sample(_uniform(n, -shift, shift, generator), x.device)
    out = x * a + b
    if noise_std > 0:
        std = _per_sample(_uniform(n, 0.0, noise_std, generator), x.device)
        # Noise is drawn on the batch's device (no 8M-value CPU->GPU copy), from a device
        # generator seeded by the CPU generator, so a seed still fixes it.
        seed = int(torch.randint(0, 2**62, (1,), generator=generator))
        device_gen = torch.Generator(device=x.device)
        device_gen.manual_seed(seed)
        noise = torch.randn(x.shape, generator=device_gen, device=x.device, dtype=x.dtype)
        out = out + noise * std
    return out.clamp_(0.0, 1.0)


def augment_batch(x: torch.Tensor, config: AugmentConfig, generator: torch.Generator) -> torch.Tensor:
    """All augmentations of ``config`` applied to a batch (N, 1, Z, Y, X); never modifies ``x`` in place."""
    if x.dim() != 5:
        raise ValueError(f"expected a batch (N, 1, Z, Y, X), got shape {tuple(x.shape)}")
    if config.flip_prob > 0:
        x = random_flips(x, config.flip_prob, generator)
    if config.rotate90:
        x = random_rot90_axial(x, generator)
    x = random_shift(x, config.max_shift_vox, generator)
    if config.intensity_scale > 0 or config.intensity_shift > 0 or config.noise_std > 0:
        x = random_intensity(x, config.intensity_scale, config.intensity_shift, config.noise_std, generator)
    return x
