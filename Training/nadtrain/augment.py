"""3D augmentation on batches of normalised patches, in torch (runs on the batch's device).

Input and output: float tensors (N, 1, Z, Y, X) in the range of ``normalize_hu`` ([0, 1], air = 0).
Every random draw comes from the ``torch.Generator`` passed in (a CPU generator, so a seed gives
the same augmentation on CPU and GPU), never from the global RNG.
Spatial transforms keep the patch centre on the nodule: flips and 90-degree turns are about the
centre voxel's axes, shifts are a few voxels with air (0) filling the border.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Tuple

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
    noise_std: float = 0.0          # additive Gaussian noise, std U(0, noise_std) per sample; off by
                                    # default: real backgrounds carry their own noise, and it is slow on CPU

    def to_dict(self) -> dict:
        return asdict(self)


def _uniform(n: int, low: float, high: float, generator: torch.Generator) -> torch.Tensor:
    return low + (high - low) * torch.rand(n, generator=generator)


def _per_sample(mask: torch.Tensor, device: torch.device) -> torch.Tensor:
    return mask.to(device).view(-1, 1, 1, 1, 1)


def _window(shift: int, length: int) -> Tuple[slice, slice]:
    """(destination, source) slices that move content by ``shift`` voxels along one axis."""
    return slice(max(shift, 0), length + min(shift, 0)), slice(max(-shift, 0), length - max(shift, 0))


def spatial_transform(x: torch.Tensor, flips: torch.Tensor, turns: torch.Tensor, shifts: torch.Tensor) -> torch.Tensor:
    """Per sample i: flip the axes where ``flips[i]`` (z, y, x) is set, turn ``turns[i]`` x 90 degrees
    in the axial (y, x) plane, then move the content by ``shifts[i]`` voxels (z, y, x), air (0) filling
    the uncovered border. One pass per sample: on CPU, batch-wide where()/pad cost 3-5x more."""
    if x.shape[3] != x.shape[4] and bool((turns % 2).any()):
        raise ValueError("axial 90-degree turns need square axial slices")
    out = torch.zeros_like(x)
    size = x.shape[2:]
    for i in range(x.shape[0]):
        sample = x[i]  # (C, Z, Y, X)
        dims = [axis + 1 for axis in range(3) if bool(flips[i, axis])]
        if dims:
            sample = sample.flip(dims)
        k = int(turns[i])
        if k:
            sample = torch.rot90(sample, k, dims=(2, 3))
        (dz, sz), (dy, sy), (dx, sx) = (_window(int(shifts[i, a]), size[a]) for a in range(3))
        out[i, :, dz, dy, dx] = sample[:, sz, sy, sx]
    return out


def draw_flips(n: int, prob: float, generator: torch.Generator) -> torch.Tensor:
    """(n, 3) booleans: flip each sample along z, y and x independently with probability ``prob``."""
    return torch.rand((n, 3), generator=generator) < prob


def draw_turns(n: int, rotate90: bool, generator: torch.Generator) -> torch.Tensor:
    """(n,) quarter turns in the axial (y, x) plane, k uniform in 0..3 (all 0 when off)."""
    return torch.randint(0, 4, (n,), generator=generator) if rotate90 else torch.zeros(n, dtype=torch.int64)


def draw_shifts(n: int, max_shift_vox: int, generator: torch.Generator) -> torch.Tensor:
    """(n, 3) whole-voxel shifts per axis, uniform in [-max, max]."""
    m = max(int(max_shift_vox), 0)
    return torch.randint(-m, m + 1, (n, 3), generator=generator)


def random_intensity(x: torch.Tensor, scale: float, shift: float, noise_std: float,
                     generator: torch.Generator) -> torch.Tensor:
    """Per-sample contrast and brightness jitter plus a little Gaussian noise, clipped to [0, 1]."""
    n = x.shape[0]
    a = _per_sample(_uniform(n, 1.0 - scale, 1.0 + scale, generator), x.device)
    b = _per_sample(_uniform(n, -shift, shift, generator), x.device)
    out = torch.addcmul(b, x, a)
    if noise_std > 0:
        std = _per_sample(_uniform(n, 0.0, noise_std, generator), x.device)
        # Noise is drawn on the batch's device (no 8M-value CPU->GPU copy), from a device
        # generator seeded by the CPU generator, so a seed still fixes it.
        seed = int(torch.randint(0, 2**62, (1,), generator=generator))
        device_gen = torch.Generator(device=x.device)
        device_gen.manual_seed(seed)
        noise = torch.randn(x.shape, generator=device_gen, device=x.device, dtype=x.dtype)
        out.addcmul_(noise, std)
    return out.clamp_(0.0, 1.0)


def augment_batch(x: torch.Tensor, config: AugmentConfig, generator: torch.Generator) -> torch.Tensor:
    """All augmentations of ``config`` applied to a batch (N, 1, Z, Y, X); never modifies ``x`` in place."""
    if x.dim() != 5:
        raise ValueError(f"expected a batch (N, 1, Z, Y, X), got shape {tuple(x.shape)}")
    n = x.shape[0]
    flips = draw_flips(n, config.flip_prob, generator)
    turns = draw_turns(n, config.rotate90, generator)
    shifts = draw_shifts(n, config.max_shift_vox, generator)
    x = spatial_transform(x, flips, turns, shifts)
    if config.intensity_scale > 0 or config.intensity_shift > 0 or config.noise_std > 0:
        x = random_intensity(x, config.intensity_scale, config.intensity_shift, config.noise_std, generator)
    return x
