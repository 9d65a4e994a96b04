"""3D batch augmentation: geometry kept centred, values kept in range, seeded, input untouched."""
from __future__ import annotations

from dataclasses import replace

import numpy as np
import torch

from nadtrain.augment import AugmentConfig, augment_batch

# One transform at a time, through the function training runs (``augment_batch``).
NOTHING = AugmentConfig(flip_prob=0.0, rotate90=False, max_shift_vox=0, intensity_scale=0.0, intensity_shift=0.0)
FLIPS = replace(NOTHING, flip_prob=0.5)
TURNS = replace(NOTHING, rotate90=True)


def _batch(n: int = 6, size: int = 16, seed: int = 0) -> torch.Tensor:
    return torch.rand((n, 1, size, size, size), generator=torch.Generator().manual_seed(seed))


def test_flips_and_axial_turns_only_rearrange_voxels():
    x = _batch()
    for out in (augment_batch(x, FLIPS, torch.Generator().manual_seed(1)), augment_batch(x, TURNS, torch.Generator().manual_seed(1))):
        assert out.shape == x.shape
        for i in range(x.shape[0]):
            assert torch.equal(torch.sort(out[i].flatten()).values, torch.sort(x[i].flatten()).values)


def test_axial_turns_keep_every_slice_in_its_plane():
    # A turn in the (y, x) plane must not move content between axial slices (z): per-slice sums stay.
    x = _batch()
    out = augment_batch(x, TURNS, torch.Generator().manual_seed(3))
    assert torch.allclose(out.sum(dim=(3, 4)), x.sum(dim=(3, 4)))
    assert not torch.equal(out, x)  # with 6 samples some are turned (seeded, so not flaky)


def test_shift_moves_a_voxel_by_at_most_the_maximum_and_fills_with_air():
    size, m = 16, 3
    x = torch.zeros((8, 1, size, size, size))
    x[:, 0, 8, 8, 8] = 1.0
    out = augment_batch(x, replace(NOTHING, max_shift_vox=m), torch.Generator().manual_seed(5))
    moved = 0
    for i in range(8):
        assert out[i].sum() == 1.0  # the impulse is kept, the border filled with 0 (air), no wrap-around
        z, y, w = (int(v) for v in torch.nonzero(out[i, 0])[0])
        assert max(abs(z - 8), abs(y - 8), abs(w - 8)) <= m
        moved += (z, y, w) != (8, 8, 8)
    assert moved > 0


def test_intensity_jitter_stays_in_the_normalised_range():
    x = _batch()
    out = augment_batch(x, replace(NOTHING, intensity_scale=0.5, intensity_shift=0.5, noise_std=0.2),
                        torch.Generator().manual_seed(0))
    assert out.min() >= 0.0 and out.max() <= 1.0
    assert not torch.allclose(out, x)


def test_same_seed_same_augmentation_and_input_untouched():
    x = _batch()
    before = x.clone()
    a = augment_batch(x, AugmentConfig(), torch.Generator().manual_seed(42))
    b = augment_batch(x, AugmentConfig(), torch.Generator().manual_seed(42))
    c = augment_batch(x, AugmentConfig(), torch.Generator().manual_seed(43))
    assert torch.equal(a, b)
    assert not torch.equal(a, c)
    assert torch.equal(x, before)


def test_augmentation_keeps_a_centred_sphere_near_the_centre():
    # The nodule sits at the patch centre; flips/turns are about the centre and shifts are small.
    size = 32
    grid = np.indices((size,) * 3) - size // 2
    sphere = torch.from_numpy((np.sqrt((grid ** 2).sum(0)) < 5).astype(np.float32))
    x = sphere.expand(8, 1, size, size, size).clone()
    out = augment_batch(x, AugmentConfig(intensity_scale=0, intensity_shift=0, noise_std=0),
                        torch.Generator().manual_seed(0))
    coords = torch.from_numpy(grid.astype(np.float32))
    for i in range(8):
        mass = out[i, 0]
        centre = (coords * mass).sum(dim=(1, 2, 3)) / mass.sum()
        # Flips of an even-sized grid move the centre by 1 voxel, shifts by up to 4 per axis.
        assert torch.all(centre.abs() <= 5.0)
