"""A synthetic chest CT for the demo and the tests: body, lungs, airway, spine, vessels and nodules.

Nothing here pretends to be anatomy-accurate; it gives a volume with the right HU ranges and
geometry (LPS, anisotropic voxels) so that every step of the pipeline can run without real data
or a network. Built with numpy only, pasted into a SimpleITK image; about a second on one core.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import SimpleITK as sitk

from .geometry import AIR_HU

__all__ = ["make_synthetic_chest_ct", "NODULE_KINDS"]

# HU values of the tissues (typical unenhanced CT).
LUNG_HU = -850.0
FAT_HU = -100.0
SOFT_TISSUE_HU = 40.0
BLOOD_HU = 40.0
BONE_HU = 700.0
SOLID_NODULE_HU = 30.0
GROUND_GLASS_HU = -550.0
CALCIFIED_HU = 600.0
NOISE_SD_HU = 18.0

#: The nodule kinds the phantom holds, in the order of the returned list.
NODULE_KINDS = ("solid-small-smooth", "solid-large-spiculated", "ground-glass", "calcified")

# The nodules: kind, centre (LPS mm), diameter (mm), HU. Centres sit well inside the lungs (right
# lung x < 0, left lung x > 0) and away from the hila.
_NODULE_LAYOUT = (
    ("solid-small-smooth", (-95.0, -25.0, 35.0), 6.0, SOLID_NODULE_HU),
    ("solid-large-spiculated", (90.0, 30.0, -20.0), 22.0, SOLID_NODULE_HU),
    ("ground-glass", (-88.0, 40.0, -35.0), 14.0, GROUND_GLASS_HU),
    ("calcified", (85.0, -30.0, 45.0), 8.0, CALCIFIED_HU),
)
# Vessels keep this far (mm) from a nodule's surface (its spiculae included), so that each nodule's
# look is its own kind's and not a vessel's.
_VESSEL_CLEARANCE_MM = 6.0

# Field of view (x: right->left, y: anterior->posterior, z: inferior->superior) in mm.
_FOV_MM = (340.0, 260.0, 180.0)


def make_synthetic_chest_ct(
    seed: int = 0, spacing: Sequence[float] = (0.8, 0.8, 2.0)
) -> tuple:
    """Build a synthetic chest CT in HU and the list of its nodules.

    Returns ``(image, nodules)``: ``image`` is an int16 SimpleITK image in HU with identity
    direction (LPS axes), the given ``spacing`` (mm, x y z) and its centre near LPS (0, 0, 0); outside
    the body is air (-1000 HU). ``nodules`` is a list of dicts ``{"name", "center_lps" (tuple mm),
    "diameter_mm", "kind"}`` for the four kinds in :data:`NODULE_KINDS`. The same seed gives the
    same volume (vessel branching, spiculae and noise depend on it).
    """
    rng = np.random.default_rng(seed)
    spacing_mm = np.asarray([float(s) for s in spacing], dtype=float)
    if spacing_mm.shape != (3,) or np.any(spacing_mm <= 0) or np.any(spacing_mm > 10):
        raise ValueError(f"spacing must be three positive values in mm (<= 10), got {tuple(spacing)}")
    size = np.maximum(np.round(np.asarray(_FOV_MM) / spacing_mm).astype(int), 16)  # x, y, z
    origin_lps = -(size - 1) * spacing_mm / 2.0  # centre of the volume at LPS (0, 0, 0)

    # Voxel-centre coordinates along each axis (mm, LPS); the volume is indexed [z, y, x].
    x_mm = origin_lps[0] + np.arange(size[0]) * spacing_mm[0]
    y_mm = origin_lps[1] + np.arange(size[1]) * spacing_mm[1]
    z_mm = origin_lps[2] + np.arange(size[2]) * spacing_mm[2]
    volume = np.full((size[2], size[1], size[0]), AIR_HU, dtype=np.float32)
    grid = _Grid(x_mm, y_mm, z_mm)

    _paint_body(volume, grid)
    lungs = _paint_lungs(volume, grid)
    _paint_airway_and_spine(volume, grid)
    _paint_vessels(volume, grid, lungs, rng)
    nodules = _paint_nodules(volume, grid, rng)

    volume += rng.standard_normal(volume.shape, dtype=np.float32) * NOISE_SD_HU
    np.clip(volume, -1024, 3071, out=volume)
    image = sitk.GetImageFromArray(np.round(volume).astype(np.int16))
    image.SetSpacing(tuple(float(s) for s in spacing_mm))
    image.SetOrigin(tuple(float(o) for o in origin_lps))
    image.SetDirection((1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0))
    return image, nodules


class _Grid:
    """Axis coordinates (mm) of the voxel centres, with helpers for local boxes."""

    def __init__(self, x_mm: np.ndarray, y_mm: np.ndarray, z_mm: np.ndarray):
        self.x, self.y, self.z = x_mm, y_mm, z_mm

    def box(self, lo_mm: np.ndarray, hi_mm: np.ndarray):
        """Slices (z, y, x) covering the box [lo, hi] (mm), and the local coordinate arrays."""
        sl = []
        coords = []
        for axis, lo, hi in ((self.z, lo_mm[2], hi_mm[2]), (self.y, lo_mm[1], hi_mm[1]), (self.x, lo_mm[0], hi_mm[0])):
            i0 = int(np.searchsorted(axis, lo, side="left"))
            i1 = int(np.searchsorted(axis, hi, side="right"))
            sl.append(slice(i0, i1))
            coords.append(axis[i0:i1])
        z, y, x = coords
        return tuple(sl), (z[:, None, None], y[None, :, None], x[None, None, :])


def _soft_inside(distance_outside_mm: np.ndarray, edge_mm: float = 0.7) -> np.ndarray:
    """Partial-volume weight in [0, 1]: 1 well inside, 0 well outside, linear ramp across the edge."""
    return np.clip(0.5 - distance_outside_mm / (2.0 * edge_mm), 0.0, 1.0)


def _paint_body(volume: np.ndarray, grid: _Grid) -> None:
    # Elliptic torso cross-section, the same on every slice: fat ring around soft tissue.
    y2, x2 = grid.y[:, None], grid.x[None, :]
    outer = np.sqrt((x2 / 155.0) ** 2 + ((y2 - 5.0) / 110.0) ** 2)
    inner = np.sqrt((x2 / 140.0) ** 2 + ((y2 - 5.0) / 96.0) ** 2)
    body = _soft_inside((outer - 1.0) * 110.0)
    muscle = _soft_inside((inner - 1.0) * 96.0)
    slice_hu = AIR_HU + body * (FAT_HU - AIR_HU) + muscle * (SOFT_TISSUE_HU - FAT_HU)
    volume[:] = slice_hu[None, :, :]


def _paint_lungs(volume: np.ndarray, grid: _Grid) -> list:
    """Two ellipsoids of aerated lung; returns their (centre, semi-axes) for the vessels."""
    lungs = []
    for side in (-1.0, 1.0):  # right lung at -x (LPS), left lung at +x
        centre = np.array([side * 70.0, 8.0, 5.0])
        semi = np.array([52.0 if side < 0 else 48.0, 72.0, 80.0])
        sl, (z, y, x) = grid.box(centre - semi - 2, centre + semi + 2)
        q = np.sqrt(((x - centre[0]) / semi[0]) ** 2 + ((y - centre[1]) / semi[1]) ** 2 + ((z - centre[2]) / semi[2]) ** 2)
        w = _soft_inside((q - 1.0) * semi.min())
        region = volume[sl]
        region += w * (LUNG_HU - region)
        lungs.append((centre, semi))
    return lungs


def _paint_airway_and_spine(volume: np.ndarray, grid: _Grid) -> None:
    # Trachea: an air tube in the mediastinum from the top down to the carina.
    sl, (z, y, x) = grid.box(np.array([-12.0, -22.0, 45.0]), np.array([12.0, 2.0, grid.z[-1]]))
    r = np.sqrt(x ** 2 + (y + 10.0) ** 2)
    w = np.broadcast_to(_soft_inside(r - 8.0), volume[sl].shape)
    volume[sl] += w * (AIR_HU - volume[sl])
    # Vertebral column: a bone cylinder behind the mediastinum along the whole z range.
    sl, (z, y, x) = grid.box(np.array([-20.0, 70.0, grid.z[0]]), np.array([20.0, 110.0, grid.z[-1]]))
    r = np.sqrt(x ** 2 + (y - 90.0) ** 2)
    w = np.broadcast_to(_soft_inside(r - 16.0), volume[sl].shape)
    volume[sl] += w * (BONE_HU - volume[sl])


def _paint_vessels(volume: np.ndarray, grid: _Grid, lungs: list, rng: np.random.Generator) -> None:
    """Branching blood-vessel tubes from each hilum outwards, clipped to the lung, clear of the nodules."""
    keep_out = [(np.asarray(c, float), d / 2.0 * (2.4 if k == "solid-large-spiculated" else 1.0) + _VESSEL_CLEARANCE_MM)
                for k, c, d, _hu in _NODULE_LAYOUT]
    for centre, semi in lungs:
        side = np.sign(centre[0])
        hilum = centre + np.array([-side * 0.75 * semi[0], -0.05 * semi[1], 0.0])
        for direction in ([side, 0.0, 1.0], [side, 0.0, -1.0], [side, -0.8, 0.1], [side, 0.8, -0.1],
                          [side, -0.5, 0.8], [side, 0.5, -0.8]):
            _grow_branch(volume, grid, centre, semi, keep_out, hilum, np.asarray(direction, float), 4.0, 0, rng)


def _grow_branch(volume, grid, centre, semi, keep_out, start, direction, radius_mm, depth, rng) -> None:
    direction = direction / np.linalg.norm(direction)
    length_mm = rng.uniform(25.0, 40.0) * (0.8 ** depth)
    end = start + direction * length_mm
    _paint_tube(volume, grid, centre, semi, keep_out, start, end, radius_mm)
    if depth >= 4 or radius_mm < 1.0:
        return
    for _ in range(2):
        turn = rng.normal(0.0, 0.5, size=3)
        _grow_branch(volume, grid, centre, semi, keep_out, end, direction + turn, radius_mm * 0.72, depth + 1, rng)


def _paint_tube(volume, grid, centre, semi, keep_out, a, b, radius_mm) -> None:
    lo = np.minimum(a, b) - radius_mm - 1.0
    hi = np.maximum(a, b) + radius_mm + 1.0
    sl, (z, y, x) = grid.box(lo, hi)
    if any(s.stop <= s.start for s in sl):
        return
    ab = b - a
    t = ((x - a[0]) * ab[0] + (y - a[1]) * ab[1] + (z - a[2]) * ab[2]) / float(ab @ ab)
    t = np.clip(t, 0.0, 1.0)
    dist = np.sqrt((x - a[0] - t * ab[0]) ** 2 + (y - a[1] - t * ab[1]) ** 2 + (z - a[2] - t * ab[2]) ** 2)
    inside_lung = (((x - centre[0]) / semi[0]) ** 2 + ((y - centre[1]) / semi[1]) ** 2 + ((z - centre[2]) / semi[2]) ** 2) < 0.92
    w = _soft_inside(dist - radius_mm) * inside_lung
    for nodule_centre, clearance_mm in keep_out:
        if np.all(nodule_centre + clearance_mm >= lo) and np.all(nodule_centre - clearance_mm <= hi):
            c = nodule_centre
            w = w * (((x - c[0]) ** 2 + (y - c[1]) ** 2 + (z - c[2]) ** 2) > clearance_mm ** 2)
    region = volume[sl]
    np.maximum(region, region + w * (BLOOD_HU - region), out=region)


def _paint_nodules(volume: np.ndarray, grid: _Grid, rng: np.random.Generator) -> list:
    nodules = []
    for index, (kind, centre, diameter_mm, hu) in enumerate(_NODULE_LAYOUT, start=1):
        centre = np.asarray(centre, dtype=float)
        radius = diameter_mm / 2.0
        reach = radius * (2.5 if kind == "solid-large-spiculated" else 1.2) + 2.0
        sl, (z, y, x) = grid.box(centre - reach, centre + reach)
        dx, dy, dz = x - centre[0], y - centre[1], z - centre[2]
        r = np.sqrt(dx ** 2 + dy ** 2 + dz ** 2)
        if kind == "solid-large-spiculated":
            boundary = radius * (1.0 + 0.15 * _lobulation(dx, dy, dz, r, rng))
            w = np.maximum(_soft_inside(r - boundary), _spiculae(dx, dy, dz, r, radius, rng))
        elif kind == "ground-glass":
            # Hazy: wide edge and a mottled interior.
            w = _soft_inside(r - radius, edge_mm=2.5) * rng.uniform(0.75, 1.0, size=np.broadcast(dx, dy, dz).shape)
        else:
            w = _soft_inside(r - radius)
        region = volume[sl]
        region += w.astype(np.float32) * (hu - region)
        nodules.append({
            "name": f"N{index}-{kind}",
            "center_lps": tuple(float(c) for c in centre),
            "diameter_mm": float(diameter_mm),
            "kind": kind,
        })
    return nodules


def _lobulation(dx, dy, dz, r, rng) -> np.ndarray:
    """A smooth random function of direction, in about [-1, 1], to make the margin lobulated."""
    r_safe = np.maximum(r, 1e-6)
    value = 0.0
    for _ in range(4):
        axis = rng.normal(size=3)
        axis /= np.linalg.norm(axis)
        cos = (dx * axis[0] + dy * axis[1] + dz * axis[2]) / r_safe
        value = value + np.cos(3.0 * np.arccos(np.clip(cos, -1, 1)) + rng.uniform(0, 2 * np.pi))
    return value / 2.0


def _spiculae(dx, dy, dz, r, radius, rng, count: int = 24) -> np.ndarray:
    """Thin spikes radiating from the surface: weight 1 near each spike's axis, tapering outwards."""
    w = np.zeros(np.broadcast(dx, dy, dz).shape, dtype=np.float32)
    for _ in range(count):
        axis = rng.normal(size=3)
        axis /= np.linalg.norm(axis)
        length = radius * rng.uniform(0.7, 1.4)
        along = dx * axis[0] + dy * axis[1] + dz * axis[2]
        across = np.sqrt(np.maximum(r ** 2 - along ** 2, 0.0))
        # Spike radius shrinks from 2 mm at the surface to 0 at its tip.
        frac = np.clip((along - radius * 0.8) / length, 0.0, 1.0)
        width = 2.0 * (1.0 - frac) * (along > radius * 0.5) * (along < radius + length)
        w = np.maximum(w, _soft_inside(across - width, edge_mm=0.5) * (width > 0))
    return w
