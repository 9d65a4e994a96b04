"""Background CTs for the insertion source: reading, lung placements, noise level, cache.

A background is prepared once per build (lung mask, candidate centres with their clearance, lung
noise; see ``nadtrain.lungmask``) and cached under the dataset's ``backgrounds/`` folder as a
memory-mapped HU volume that every worker process shares.
"""
from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
import SimpleITK as sitk

from notadiagnosis.errors import InputError
from notadiagnosis.ct_reader import read_ct as read_library_ct

from ..errors import InsertionError
from ..lungmask import PATCH_HALF_MM, PlacementMap, lung_mask, noise_std_hu, placement_map

BACKGROUND_CACHE_VERSION = "2"


def read_ct(path: Path) -> sitk.Image:
    """A background CT: a file SimpleITK reads (NRRD, NIfTI, MHA...) or a folder holding one DICOM series.

    The library's reader, so a background gets the same checks as a CT given to the classifier
    (several series, missing or unevenly spaced slices, 4D files with one time point).
    """
    path = Path(path)
    if not path.exists():
        raise InsertionError(f"background CT {path} does not exist; give a CT file or a DICOM folder.")
    try:
        return read_library_ct(path)
    except InputError as error:
        raise InsertionError(f"cannot read background CT {path}: {error}") from None


def background_name(path: Path) -> str:
    """The name a background is known by in the dataset's ``background`` array (file or folder stem)."""
    name = Path(path).name
    for suffix in (".nii.gz", ".nrrd", ".nii", ".mha", ".mhd", ".nhdr"):
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return name


@dataclass
class Background:
    """A prepared background: HU voxels (z,y,x), geometry, lung placements and noise level."""

    name: str
    array_hu: np.ndarray
    origin: np.ndarray
    spacing_xyz: np.ndarray
    direction: np.ndarray
    placements: PlacementMap
    noise_std_hu: float
    lung_hu: float

    def index_to_lps(self, index_zyx: np.ndarray) -> np.ndarray:
        """LPS of a (z, y, x) voxel index (continuous allowed)."""
        ijk = np.asarray(index_zyx, dtype=np.float64)[::-1]
        return self.origin + self.direction.reshape(3, 3) @ (ijk * self.spacing_xyz)

    def crop(self, start_zyx: np.ndarray, stop_zyx: np.ndarray) -> sitk.Image:
        """A float32 sitk image of voxels [start, stop) with the background's geometry (a copy)."""
        box = tuple(slice(int(a), int(b)) for a, b in zip(start_zyx, stop_zyx))
        image = sitk.GetImageFromArray(np.asarray(self.array_hu[box], dtype=np.float32))
        image.SetSpacing(self.spacing_xyz.tolist())
        image.SetDirection(self.direction.tolist())
        image.SetOrigin(self.index_to_lps(np.asarray(start_zyx, dtype=np.float64)).tolist())
        return image


def _exclusion_volume(image: sitk.Image, points_lps: Sequence[Tuple[Sequence[float], float]],
                      boxes_lps: Sequence[Tuple[Sequence[float], float]] = ()) -> Optional[np.ndarray]:
    """Boolean (z,y,x) volume of balls (centre LPS, radius mm) and of LPS-aligned cubes (centre LPS,
    half-width mm) to keep insertions away from."""
    if not points_lps and not boxes_lps:
        return None
    size = image.GetSize()
    spacing = np.array(image.GetSpacing())
    exclude = np.zeros(size[::-1], dtype=bool)
    direction = np.array(image.GetDirection()).reshape(3, 3)
    origin = np.array(image.GetOrigin())
    for centre, half in boxes_lps:
        # Placements are jittered by up to half a voxel: widen the cube by that much.
        half = float(half) + 0.5 * float(spacing.max())
        # Only the index-space bounding block of the cube's corners is examined (the cube is aligned
        # to LPS, not to the CT's grid, which may be oblique or flipped).
        corners = np.asarray(centre, dtype=np.float64) + float(half) * np.array(
            [[sx, sy, sz] for sx in (-1, 1) for sy in (-1, 1) for sz in (-1, 1)], dtype=np.float64)
        index = np.linalg.solve(direction * spacing, (corners - origin).T).T
        lo = np.maximum(np.floor(index.min(axis=0)).astype(int), 0)
        hi = np.minimum(np.ceil(index.max(axis=0)).astype(int) + 1, np.array(size))
        if np.any(hi <= lo):
            continue
        grids = np.meshgrid(*[np.arange(a, b) for a, b in zip(lo, hi)], indexing="ij")  # i, j, k
        ijk = np.stack([g.ravel() for g in grids], axis=1).astype(np.float64)
        lps = (ijk * spacing) @ direction.T + origin
        inside = np.all(np.abs(lps - np.asarray(centre, dtype=np.float64)) <= float(half), axis=1)
        block = inside.reshape([b - a for a, b in zip(lo, hi)]).transpose(2, 1, 0)  # (k, j, i) = (z, y, x)
        exclude[lo[2]:hi[2], lo[1]:hi[1], lo[0]:hi[0]] |= block
    for centre, radius in points_lps:
        index = np.array(image.TransformPhysicalPointToContinuousIndex([float(v) for v in centre]))
        half = np.ceil(radius / spacing).astype(int) + 1
        lo = np.maximum(np.floor(index).astype(int) - half, 0)
        hi = np.minimum(np.floor(index).astype(int) + half + 1, np.array(size))
        if np.any(hi <= lo):
            continue
        grids = np.meshgrid(*[np.arange(a, b) for a, b in zip(lo[::-1], hi[::-1])], indexing="ij")
        dist2 = sum(((g - c) * s) ** 2 for g, c, s in zip(grids, index[::-1], spacing[::-1]))
        exclude[lo[2]:hi[2], lo[1]:hi[1], lo[0]:hi[0]] |= dist2 <= radius ** 2
    return exclude


def real_nodules_of_background(name: str, table: Sequence[Dict[str, Any]]) -> List[Tuple[Sequence[float], float]]:
    """When a background is an LIDC-IDRI scan, its own annotated nodules (centre LPS, keep-out radius mm)."""
    match = re.search(r"LIDC-IDRI-\d{4}", name)
    if not match:
        return []
    out = []
    for row in table:
        if row["patient_id"] == match.group(0) and row.get("centroid_x_lps") is not None:
            centre = (row["centroid_x_lps"], row["centroid_y_lps"], row["centroid_z_lps"])
            out.append((centre, float(row["median_diameter_mm"] or 10.0) / 2.0 + 15.0))
    return out


def real_nodule_view_boxes(name: str, table: Sequence[Dict[str, Any]], patch_half_mm: float = PATCH_HALF_MM,
                           margin_mm: float = 5.0) -> List[Tuple[Sequence[float], float]]:
    """For ``--keep-out view``: around each real nodule of an LIDC-IDRI background, the LPS-aligned cube
    (centre, half-width mm) of placements whose 64 mm patch would show it: half the patch + half the
    readers' median diameter + a margin, because outlines reach past that radius on one side
    (LIDC-IDRI-0001's reach 18.8 mm from its centroid, 2.5 mm beyond its median radius)."""
    return [(centre, patch_half_mm + (radius - 15.0) + margin_mm)
            for centre, radius in real_nodules_of_background(name, table)]


def prepare_background(path: Path, cache_dir: Path, keep_out: Sequence[Tuple[Sequence[float], float]] = (),
                       keep_out_boxes: Sequence[Tuple[Sequence[float], float]] = ()) -> Path:
    """Compute a background's lung placements and noise once; cache them (and its voxels) under ``cache_dir``.

    Returns the cache folder (hu.npy, placements.npz, meta.json), reused while the CT file and the
    keep-out lists (balls; cubes) are unchanged.
    """
    path = Path(path)
    stat = path.stat()
    identity = [str(path.resolve()), stat.st_size, int(stat.st_mtime), BACKGROUND_CACHE_VERSION,
                [[list(map(float, c)), float(r)] for c, r in keep_out]]
    if keep_out_boxes:  # only then: caches of builds without cubes keep their key
        identity.append([[list(map(float, c)), float(h)] for c, h in keep_out_boxes])
    key = hashlib.sha256(json.dumps(identity).encode()).hexdigest()[:12]
    folder = Path(cache_dir) / f"{background_name(path)}-{key}"
    if (folder / "meta.json").is_file():
        return folder
    image = read_ct(path)
    array = sitk.GetArrayFromImage(image)
    # DICOM padding outside the reconstruction circle (e.g. -2048 or -3024) reads as air.
    array = np.clip(array, -1024, 3071).astype(np.int16)
    spacing_zyx = np.array(image.GetSpacing())[::-1]
    mask = lung_mask(array)
    if mask.sum() * np.prod(spacing_zyx) < 200_000:  # < 0.2 L of lung: not a chest CT we can use
        raise InsertionError(f"{path}: found less than 0.2 L of lung (HU < -400 inside the body); give a chest CT in HU.")
    placements, clearance = placement_map(array, spacing_zyx, mask,
                                          exclude_zyx=_exclusion_volume(image, keep_out, keep_out_boxes))
    noise = noise_std_hu(array, clearance)
    lung_hu = float(np.median(array[clearance >= 5.0])) if np.any(clearance >= 5.0) else -850.0
    folder.mkdir(parents=True, exist_ok=True)
    np.save(folder / "hu.npy", array)
    np.savez(folder / "placements.npz", indices_zyx=placements.indices_zyx, clearance_mm=placements.clearance_mm)
    meta = {"name": background_name(path), "path": str(path), "origin": list(image.GetOrigin()),
            "spacing_xyz": list(image.GetSpacing()), "direction": list(image.GetDirection()),
            "noise_std_hu": noise, "lung_hu": lung_hu, "lung_volume_ml": float(mask.sum() * np.prod(spacing_zyx) / 1000.0),
            "candidates": int(len(placements.clearance_mm)), "keep_out": [[list(map(float, c)), float(r)] for c, r in keep_out]}
    if keep_out_boxes:
        meta["keep_out_view_cubes"] = [[list(map(float, c)), float(h)] for c, h in keep_out_boxes]
    (folder / "meta.json").write_text(json.dumps(meta, indent=2))
    return folder


def load_background(folder: Path) -> Background:
    """A prepared background from its cache folder (voxels memory-mapped, shared between workers)."""
    meta = json.loads((Path(folder) / "meta.json").read_text())
    with np.load(Path(folder) / "placements.npz") as data:
        placements = PlacementMap(indices_zyx=data["indices_zyx"], clearance_mm=data["clearance_mm"])
    return Background(
        name=meta["name"], array_hu=np.load(Path(folder) / "hu.npy", mmap_mode="r"),
        origin=np.array(meta["origin"]), spacing_xyz=np.array(meta["spacing_xyz"]),
        direction=np.array(meta["direction"]), placements=placements,
        noise_std_hu=float(meta["noise_std_hu"]), lung_hu=float(meta["lung_hu"]),
    )
