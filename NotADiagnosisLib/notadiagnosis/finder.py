"""Find and segment the nodule near a click, in physical space (classical SimpleITK, no learning).

One implementation for inference, the CLI, Slicer and training: :func:`find_nodule` returns the
nodule's mask and its refined centre (the centre of the mask), or no nodule with a warning.

The method, in two stages on LPS-aligned grids whose voxels sit on a fixed lattice (multiples of
the grid spacing in LPS mm), so the same nodule gives the same grid whatever the click:

1. **Find** (1 mm grid, the cubes of ``FIND_HALF_SIZES_MM`` around the click, the next one only when
   the nodule reaches the faces of the last: most nodules fit the smallest, a third of the voxels of
   the next, and gives the masks the 48 mm cube gave, bit for bit, on every nodule checked; "no
   nodule" is only concluded from a cube of ``NO_NODULE_MIN_HALF_MM`` or more):
   a. the CT is resampled (linear) and smoothed (Gaussian, ``SMOOTHING_SIGMA_MM``);
   b. *lung*: on a ``LUNG_SPACING_MM`` grid reaching ``LUNG_CLOSING_MM`` beyond the cube, voxels below
      ``LUNG_AIR_HU`` closed with a ball of ``LUNG_CLOSING_MM`` (distance maps) and hole-filled slice
      by slice, so nodules, vessels and nodules bulging in from the chest wall, mediastinum or
      diaphragm become lung while the wall itself stays out (beyond the CT's edge counts as wall);
   c. *candidate tissue*: smoothed HU above ``FIND_TISSUE_HU`` inside the lung;
   d. *vessels off*: openings by a ball of ``OPENING_FRACTIONS`` × the depth of the blob the click lies
      in (the distance-map maximum reached by climbing from the click; ``MIN_OPENING_MM`` to
      ``MAX_OPENING_MM``), the gentlest first, until one frees a nodule-like component;
   e. the nodule is the nodule-like component nearest to the click within ``SEARCH_RADIUS_MM``
      (at least ``MIN_DIAMETER_MM``; compact: principal-axis ratio at most ``MAX_ELONGATION`` and no
      voxel beyond ``MAX_EXTENT_RATIO`` × its depth + ``EXTENT_MARGIN_MM`` from its deepest voxel;
      at least ``MIN_AIR_CONTACT`` of its surface on the lung's air);
   f. none: once more for faint ground glass (thick slices blur it below ``FIND_TISSUE_HU``), with tissue
      ``FAINT_CONTRAST_HU`` above the lung's median (at least ``FAINT_MIN_HU``), a nodule of at least
      ``FAINT_MIN_DIAMETER_MM`` within ``FAINT_SEARCH_RADIUS_MM`` that looks like ground glass (median
      below ``FAINT_MAX_MEDIAN_HU``, ``FAINT_RING_CONTRAST_HU`` above the lung around it); none again: no
      nodule;
   g. *a vessel, not a nodule*: the openings also cut vessels into compact pieces; a candidate that is a
      tube, not a blob, at its own scale (:mod:`.blobness`, the CT's Hessian at its centre; surer when the
      point is off the candidate) is a piece of a vessel: no nodule, with :data:`~.blobness.VESSEL_WARNING`.
2. **Segment** (a grid as fine as the CT's in-plane voxels, at most ``REFINE_MAX_VOXELS`` a side,
   over the nodule's box plus ``REFINE_MARGIN_MM``): the threshold moves to halfway between the
   nodule's outer tissue (25th percentile of its smoothed HU, the ground glass of a part-solid
   nodule) and the lung around it, clamped to ``TISSUE_HU_RANGE`` (its floor lowered to the find stage's
   threshold for faint ground glass): the partial-volume edge of a solid nodule and the faint edge of
   ground glass alike. The find stage's lung and opening radius are
   reused; the component overlapping the found nodule is the nodule, and the surface detail the
   opening took is given back within ``RESTORE_MM`` (a rough margin, a ground-glass fringe), except
   small pieces (up to ``STUB_MAX_MM3``) that carry on beyond: vessel stubs.

The solid component is the nodule's voxels above ``SOLID_HU`` (smoothed), opened by
``SOLID_OPENING_MM`` (vessels crossing ground glass are not one). The mask on the CT's own grid (a
crop of it) is a label map: :data:`LABEL_NON_SOLID` for ground-glass tissue and :data:`LABEL_SOLID`
for the solid component (a solid nodule is all solid, a ground-glass one all non-solid).
Developed on the synthetic tests, the real LIDC-IDRI-0001 and training-split insertion renders
(``nadtrain measure-bench --split train``); scored on the test split (Training/results/nodule-measurement).
"""
from __future__ import annotations

import functools
from dataclasses import dataclass, field
from typing import List, Optional, Sequence, Tuple, Union

import numpy as np
import SimpleITK as sitk

from .blobness import looks_like_vessel
from .errors import InputError, PointOutsideImageError
from .geometry import AIR_HU, ArrayLike, _as_point, _axis_neighbours, _resample_axis_aligned, check_image, is_inside

#: Label values of the nodule label map (0 is background).
LABEL_NON_SOLID = 1
LABEL_SOLID = 2

SEARCH_RADIUS_MM = 10.0
FIND_SPACING_MM = 1.0
FIND_HALF_SIZES_MM = (16.0, 24.0, 32.0)   # 32, 48 and 64 mm cubes: the next for nodules that reach the faces
NO_NODULE_MIN_HALF_MM = 24.0  # "no nodule" is concluded on the 48 mm cube or larger, never on the 32 mm one alone
SMOOTHING_SIGMA_MM = 0.6
SMOOTHING_KERNEL_FLOOR = 1e-4  # weights of the smoothing kernel below this are left out
LUNG_AIR_HU = -400.0
AERATED_LUNG_HU = -850.0  # the lung's HU where none is around to measure (typical aerated parenchyma)
LUNG_CLOSING_MM = 10.0
LUNG_SPACING_MM = 2.0
FIND_TISSUE_HU = -680.0
TISSUE_HU_RANGE = (-720.0, -380.0)
SOLID_HU = -300.0
SOLID_OPENING_MM = 1.0
# Type from the share of the nodule's inner voxels in the solid component (the renderer's part-solid
# cores, 35-60 % of the radius, are 5-30 % of the inner voxels; a solid nodule's are nearly all).
TYPE_RIM_MM = 1.0
SOLID_SHARE = 0.6
PART_SOLID_SHARE = 0.03
OPENING_FRACTIONS = (0.4, 0.6, 0.8)
MIN_OPENING_MM = 0.8
MAX_OPENING_MM = 4.0
MAX_ELONGATION = 3.0
MIN_AIR_CONTACT = 0.3
MAX_EXTENT_RATIO = 3.0
EXTENT_MARGIN_MM = 3.0
RESTORE_MM = 2.0
JUXTAPLEURAL_MIN_CONTACT = 0.05
JUXTAPLEURAL_RING_MM = 2.0
WALL_EDGE_MM = 1.5
STUB_MAX_MM3 = 200.0
MIN_DIAMETER_MM = 3.0
# Faint ground glass (below FIND_TISSUE_HU once blurred by thick slices): a second find pass, only when the
# first finds nothing, with tissue FAINT_CONTRAST_HU above the lung's median; what it finds must be ground
# glass (median below FAINT_MAX_MEDIAN_HU, FAINT_RING_CONTRAST_HU denser than the lung 1.5-4 mm around),
# at least FAINT_MIN_DIAMETER_MM, within FAINT_SEARCH_RADIUS_MM of the click (the user clicks on it).
# Chosen on the train-split renders and on no-nodule clicks in the two real CTs (see the results README).
FAINT_CONTRAST_HU = 80.0
FAINT_MIN_HU = -780.0  # ground glass is denser than this whatever the lung around (air outside, bullae)
FAINT_MIN_DIAMETER_MM = 4.0
FAINT_SEARCH_RADIUS_MM = 5.0
FAINT_RING_CONTRAST_HU = 120.0
FAINT_MAX_MEDIAN_HU = -300.0
REFINE_MARGIN_MM = 4.0
# The lung around a nodule, where its density is read: this far from the nodule (mm).
LUNG_RING_MM = (1.5, 4.0)
REFINE_MIN_SPACING_MM = 0.5
REFINE_MAX_VOXELS = 64
# SimpleITK threads for each of the finder's filters. Its images are small (a 64 mm cube at most): a second
# thread saves less than it costs to start and, on a shared machine, to wait for a core (measured: CPU and
# wall time per point both lower with one; see the results README, nodule measurement, speed).
FILTER_THREADS = 1
# Distance maps reaching this far (voxels) are computed in numpy; farther ones (the depth of a large nodule) by ITK.
DISTANCE_REACH_VOXELS = 20
_IDENTITY_DIRECTION = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0)
# Outside the CT: a value no CT holds, so the truncation check can see where the CT ends.
_OUTSIDE_HU = -5000.0
# A nodule found up to SEARCH_RADIUS_MM from the point is measured, but when the point lies this far
# outside it the user may have clicked on something else (a vessel, with a compact branching nearby):
# said, so the segmentation is checked before the answer is trusted.
FAR_FROM_POINT_MM = 5.0
FAR_FROM_POINT_WARNING = ("the point lies {gap:.1f} mm outside the nodule found (its centre {shift:.1f} mm away): check in "
                          "the segmentation that it is the nodule meant and not a vessel or another structure")
NOT_CT_WARNING = "no air at -1000 HU: this does not look like a CT in Hounsfield units"
# Any chest CT holds air: its minimum (strided look) is below this.
NOT_CT_MIN_HU = -900.0
NO_NODULE_WARNING = ("no nodule found within {radius:g} mm of the point (air, a vessel, the chest wall or the "
                     "heart?): nothing was measured; place the point on the nodule")


@dataclass
class NoduleSegmentation:
    """A found nodule: its label map on the CT's grid and its refined centre.

    ``mask`` is a uint8 image on a crop of the CT's own voxel grid (same spacing, direction and
    lattice; origin moved to the crop): ``LABEL_NON_SOLID`` (1) ground glass, ``LABEL_SOLID`` (2)
    solid component, 0 elsewhere. ``fine_mask``/``fine_hu`` hold the same nodule on the LPS-aligned
    isotropic grid the measurements are taken on (``fine_hu`` unsmoothed). ``type`` is ``solid``,
    ``part-solid`` or ``ground-glass`` (see :func:`_solid_component`); ``fine_smooth`` the smoothed HU. ``truncated`` is true
    when the nodule reaches the 64 mm cube's faces or the CT's edge.
    """

    point_lps: np.ndarray
    centre_lps: np.ndarray
    mask: sitk.Image
    fine_mask: sitk.Image
    fine_hu: sitk.Image
    fine_smooth: np.ndarray
    type: str
    truncated: bool
    juxtapleural: bool
    warnings: List[str] = field(default_factory=list)

    @property
    def centre_shift_mm(self) -> float:
        """Distance from the click to the refined centre (mm)."""
        return float(np.linalg.norm(self.centre_lps - self.point_lps))


@dataclass
class _Stage:
    """Arrays (z, y, x) of one stage on its LPS-aligned grid."""

    reference: sitk.Image
    hu: np.ndarray
    smooth: np.ndarray
    inside_ct: np.ndarray


@dataclass
class _Located:
    """A nodule found and segmented on its fine grid (``stage``), before it is described."""

    point_lps: np.ndarray
    stage: _Stage
    mask: np.ndarray
    depth: np.ndarray
    lung: np.ndarray
    threshold_hu: float
    centre_lps: np.ndarray
    truncated: bool


def find_nodule(image: sitk.Image, point_lps: ArrayLike) -> Tuple[Optional[NoduleSegmentation], List[str]]:
    """Find and segment the nodule within ``SEARCH_RADIUS_MM`` of ``point_lps`` (LPS mm).

    Returns ``(segmentation, warnings)``; ``segmentation`` is None when no nodule is there (the
    warnings say so). The image is not modified. Raises :class:`PointOutsideImageError` when the
    point is outside the CT.
    """
    located = _locate(image, point_lps)
    if isinstance(located, str):
        return None, [located]
    return _describe(image, located), []


def find_nodule_centre(image: sitk.Image, point_lps: ArrayLike) -> Optional[np.ndarray]:
    """The refined centre (LPS mm) of the nodule :func:`find_nodule` finds near ``point_lps``, or None
    when it finds none: the same search and segmentation, without what only the measurements need
    (the type, the juxtapleural flag, the label map on the CT's grid). Same errors as :func:`find_nodule`."""
    located = _locate(image, point_lps)
    return None if isinstance(located, str) else located.centre_lps


def _locate(image: sitk.Image, point_lps: ArrayLike) -> Union[_Located, str]:
    """Find the nodule near the point (stage 1) and segment it (stage 2), or the warning that says why
    none is there (nothing nodule-like, or a piece of a vessel)."""
    check_image(image)
    point = _as_point(point_lps)
    if not is_inside(image, point):
        raise PointOutsideImageError(
            f"The point (LPS {point[0]:.1f}, {point[1]:.1f}, {point[2]:.1f} mm) lies outside the CT; place it on the nodule."
        )
    found = None
    for half_mm in FIND_HALF_SIZES_MM:
        stage = _sample(image, point, half_mm, FIND_SPACING_MM)
        found = _find_stage(image, stage, point)
        if found is None:
            if half_mm < NO_NODULE_MIN_HALF_MM:
                continue  # a nodule cut by this cube's faces may not look like one: look wider before saying none
            return NO_NODULE_WARNING.format(radius=SEARCH_RADIUS_MM)
        nodule, lung, opening_mm, threshold_hu = found
        if not _touches_faces(nodule):
            break
    # The find grid is LPS-aligned and isotropic: index distance times spacing is the distance in mm.
    gap_mm = float(np.min(np.linalg.norm(np.argwhere(nodule) - _index_of(stage.reference, point), axis=1))) * FIND_SPACING_MM
    vessel_warning = looks_like_vessel(stage.hu, lung, nodule, FIND_SPACING_MM, gap_mm)
    if vessel_warning is not None:
        return vessel_warning
    truncated = _touches_faces(nodule) or bool(np.any(nodule & ~stage.inside_ct))
    return _segment(image, point, stage, nodule, lung, opening_mm, threshold_hu, truncated)


def looks_like_ct(image: sitk.Image) -> bool:
    """True when the image holds air below ``NOT_CT_MIN_HU``, as any chest CT in HU does (a strided look
    at its voxels is enough; NaN and infinity left out)."""
    check_image(image)
    sample = sitk.GetArrayViewFromImage(image)[::2, ::4, ::4]
    floating = np.issubdtype(sample.dtype, np.floating)
    seen = False
    for plane in sample:  # plane by plane: a CT shows its air in the first one, no need to look further
        if floating:
            plane = plane[np.isfinite(plane)]
        if plane.size:
            seen = True
            if float(np.min(plane)) <= NOT_CT_MIN_HU:
                return True
    return not seen


# -- stage 1: find -----------------------------------------------------------------------------------
def _sample(image: sitk.Image, centre_lps: np.ndarray, half_mm: np.ndarray | float, spacing_mm: float) -> _Stage:
    """Resample the CT on an LPS-aligned grid of ``spacing_mm`` whose voxels lie on the fixed lattice,
    covering ``centre_lps`` ± ``half_mm`` (per axis or one value)."""
    half = np.broadcast_to(np.asarray(half_mm, dtype=np.float64), (3,))
    low = np.floor((centre_lps - half) / spacing_mm)
    high = np.ceil((centre_lps + half) / spacing_mm)
    size = (high - low + 1).astype(int)
    reference = sitk.Image([int(n) for n in size], sitk.sitkFloat32)
    reference.SetSpacing([spacing_mm] * 3)
    reference.SetOrigin((low * spacing_mm).tolist())
    # A CT whose axes are the grid's: the patch extractor's separable numpy resampling (ITK's values, several
    # times faster); any other CT, or non-finite voxels where the grid reads: ITK.
    resampled = _resample_axis_aligned(image, low * spacing_mm, size, spacing_mm)
    if resampled is not None:
        hu, (inside_z, inside_y, inside_x) = resampled  # outside the CT already air
        inside_ct = inside_z[:, None, None] & inside_y[None, :, None] & inside_x[None, None, :]
    else:
        hu = sitk.GetArrayFromImage(_resample(image, reference, _OUTSIDE_HU))
        inside_ct = hu > _OUTSIDE_HU / 2
        hu[~inside_ct | ~np.isfinite(hu)] = AIR_HU  # outside the CT and NaN read as air, as extract_patch does
    smooth = _gaussian(hu, spacing_mm)
    return _Stage(reference=reference, hu=hu, smooth=smooth, inside_ct=inside_ct)


def _gaussian(array: np.ndarray, spacing_mm: float) -> np.ndarray:
    """``array`` (float32) smoothed as ITK's recursive Gaussian of ``SMOOTHING_SIGMA_MM`` smooths it, computed as
    the separable kernel that filter amounts to (:func:`_smoothing_kernel`), the edge voxels repeated beyond
    the grid: on these small grids a few shifted sums are several times faster than the filter."""
    weights = _smoothing_kernel(round(float(spacing_mm), 6))
    radius = len(weights) // 2
    smooth = np.asarray(array, dtype=np.float32)
    for axis in range(3):
        padding = [(0, 0)] * 3
        padding[axis] = (radius, radius)
        padded = np.pad(smooth, padding, mode="edge")
        window = [slice(None)] * 3
        total = np.zeros_like(smooth)
        for start, weight in enumerate(weights):
            window[axis] = slice(start, start + smooth.shape[axis])
            total += weight * padded[tuple(window)]
        smooth = total
    return smooth


@functools.lru_cache(maxsize=None)
def _smoothing_kernel(spacing_mm: float) -> np.ndarray:
    """The 1D kernel (float32, odd length, sums to 1) of ITK's ``SmoothingRecursiveGaussian`` with sigma
    ``SMOOTHING_SIGMA_MM`` on a grid of ``spacing_mm``: its response to a plane of ones, cut where the
    weights fall below ``SMOOTHING_KERNEL_FLOOR``."""
    length = 2 * int(np.ceil(8.0 * SMOOTHING_SIGMA_MM / spacing_mm)) + 9
    plane = np.zeros((6, 6, length), dtype=np.float32)
    plane[:, :, length // 2] = 1.0
    image = sitk.GetImageFromArray(plane)
    image.SetSpacing([spacing_mm] * 3)
    smoothing = sitk.SmoothingRecursiveGaussianImageFilter()
    smoothing.SetSigma(SMOOTHING_SIGMA_MM)
    response = sitk.GetArrayFromImage(_execute(smoothing, image))[3, 3].astype(np.float64)
    centre = length // 2
    radius = max(int(np.max(np.abs(np.flatnonzero(np.abs(response) >= SMOOTHING_KERNEL_FLOOR) - centre))), 1)
    weights = response[centre - radius:centre + radius + 1]
    return (weights / weights.sum()).astype(np.float32)


def _find_stage(image: sitk.Image, stage: _Stage, point: np.ndarray) -> Optional[Tuple[np.ndarray, np.ndarray, float, float]]:
    """(nodule mask, lung mask, opening radius mm, tissue threshold HU) on the find grid, or None."""
    lung = _lung(image, stage)
    air = stage.smooth < LUNG_AIR_HU
    found = _find_at(stage, lung, air, point, FIND_TISSUE_HU, MIN_DIAMETER_MM, SEARCH_RADIUS_MM)
    if found is not None:
        return found[0], lung, found[1], FIND_TISSUE_HU
    lung_air = air & lung
    if lung_air.any():
        faint_hu = max(float(np.median(stage.smooth[lung_air])) + FAINT_CONTRAST_HU, FAINT_MIN_HU)
        if faint_hu < FIND_TISSUE_HU:
            found = _find_at(stage, lung, air, point, faint_hu, FAINT_MIN_DIAMETER_MM, FAINT_SEARCH_RADIUS_MM)
            if found is not None and _looks_ground_glass(found[0], stage.smooth, lung_air, stage.reference):
                return found[0], lung, found[1], faint_hu
    return None


def _looks_ground_glass(nodule: np.ndarray, smooth: np.ndarray, lung_air: np.ndarray, reference: sitk.Image) -> bool:
    """A faint find is ground glass (or a part-solid nodule's): mostly below solid density, and denser than
    the lung around it (1.5-4 mm outside) by ``FAINT_RING_CONTRAST_HU``."""
    inside = float(np.median(smooth[nodule]))
    outside = _outside_distance(nodule, reference, LUNG_RING_MM[1])
    ring = (outside > LUNG_RING_MM[0]) & (outside < LUNG_RING_MM[1]) & lung_air
    if inside > FAINT_MAX_MEDIAN_HU or ring.sum() < 8:
        return False
    return inside - float(np.median(smooth[ring])) >= FAINT_RING_CONTRAST_HU


def _find_at(stage: _Stage, lung: np.ndarray, air: np.ndarray, point: np.ndarray,
             threshold_hu: float, min_diameter_mm: float, radius_mm: float) -> Optional[Tuple[np.ndarray, float]]:
    """(nodule mask, opening radius mm) with tissue above ``threshold_hu``, or None."""
    spacing = stage.reference.GetSpacing()[0]
    candidates = (stage.smooth > threshold_hu) & lung
    click = _index_of(stage.reference, point)
    depth = _distance_inside(candidates, stage.reference)
    seed = _nearest_true(candidates, click, radius_mm / spacing)
    if seed is None:
        return None
    blob_depth = _climb(depth, seed)
    # The gentlest opening that frees a compact nodule: vessels as thick as the nodule's own depth need
    # the larger ones, a lone nodule keeps its shape with the smallest.
    for fraction in OPENING_FRACTIONS:
        opening_mm = float(np.clip(fraction * blob_depth, MIN_OPENING_MM, MAX_OPENING_MM))
        opened, _reach = _open(candidates, depth, opening_mm, stage.reference)
        nodule = _pick_component(opened, depth, click, stage.reference, air, min_diameter_mm, radius_mm)
        if nodule is not None:
            return nodule, opening_mm
    return None


def _lung(image: sitk.Image, stage: _Stage) -> np.ndarray:
    """The lung with everything inside it, on the stage's grid: air closed by a ball of
    ``LUNG_CLOSING_MM`` and hole-filled slice by slice, computed on a ``LUNG_SPACING_MM`` grid (the lung
    is a large structure) that reaches ``LUNG_CLOSING_MM`` beyond the stage's cube (so chest wall near
    the cube's faces is seen as thick as it is), joined with the stage's own air voxels."""
    fine = stage.reference
    spacing = np.asarray(fine.GetSpacing())
    half = (np.asarray(fine.GetSize()) - 1) * spacing / 2.0
    centre = np.asarray(fine.GetOrigin()) + half
    coarse = _sample(image, centre, half + LUNG_CLOSING_MM + LUNG_SPACING_MM, LUNG_SPACING_MM)
    # Beyond the CT's edge is unknown, not air: a slab of chest wall cut by the edge must not look like
    # tissue between two airs.
    air = (coarse.smooth < LUNG_AIR_HU) & coarse.inside_ct
    dilated = _outside_distance(air, coarse.reference, LUNG_CLOSING_MM) <= LUNG_CLOSING_MM
    closed = (_inside_distance(dilated, coarse.reference, LUNG_CLOSING_MM) >= LUNG_CLOSING_MM - 1e-3) | air  # the dilation eroded back
    closed = _fill_holes_per_slice(closed)
    return _resample_mask(closed, coarse.reference, fine) | ((stage.smooth < LUNG_AIR_HU) & stage.inside_ct)


def _fill_holes_per_slice(mask: np.ndarray) -> np.ndarray:
    """2D hole filling of every axial slice in one call: the slices side by side in one 2D image,
    separated by a background column (so no hole spans two slices)."""
    depth, height, width = mask.shape
    tiled = np.zeros((height, depth * (width + 1)), dtype=np.uint8)
    view = tiled.reshape(height, depth, width + 1)
    view[:, :, :width] = mask.transpose(1, 0, 2)
    # The holes: background not 4-connected to the image's border (as ITK's BinaryFillhole fills them;
    # labelling the background is several times faster here).
    labelling = sitk.ConnectedComponentImageFilter()
    labelling.SetFullyConnected(False)
    background = sitk.GetArrayFromImage(_execute(labelling, sitk.GetImageFromArray((tiled == 0).astype(np.uint8))))
    open_to_border = np.unique(np.concatenate([background[0], background[-1], background[:, 0], background[:, -1]]))
    filled = (tiled > 0) | ((background > 0) & ~np.isin(background, open_to_border))
    return filled.reshape(height, depth, width + 1)[:, :, :width].transpose(1, 0, 2)


def _open(mask: np.ndarray, depth: np.ndarray, radius_mm: float, reference: sitk.Image,
          beyond_mm: float = 0.0) -> Tuple[np.ndarray, np.ndarray]:
    """Morphological opening by a ball of ``radius_mm`` (``depth``: the mask's inside distance map).

    Returns (opened mask, distance in mm of every voxel to the eroded core (0 in it), for :func:`_restore_surface`:
    exact up to ``beyond_mm`` past the opened surface, inf farther)."""
    core = depth > radius_mm + 1e-3  # the erosion: no voxel outside the mask within the ball
    if not core.any():
        return core, np.full(mask.shape, np.inf, dtype=np.float32)
    reach = _outside_distance(core, reference, radius_mm + beyond_mm + 1e-2)
    return (reach <= radius_mm + 1e-3) & mask, reach


def _pick_component(mask: np.ndarray, depth: np.ndarray, click: np.ndarray, reference: sitk.Image,
                    air: np.ndarray, min_diameter_mm: float = MIN_DIAMETER_MM,
                    radius_mm: float = SEARCH_RADIUS_MM) -> Optional[np.ndarray]:
    """The nodule-like component of ``mask`` nearest to the click within the search radius, or None.

    Nodule-like: an equivalent diameter of at least ``MIN_DIAMETER_MM``; compact (principal-axis ratio
    at most ``MAX_ELONGATION``, and no voxel farther from its deepest voxel than ``MAX_EXTENT_RATIO``
    times that depth plus ``EXTENT_MARGIN_MM``: not a vessel, nor a nodule still joined to a vessel
    tree); standing in the lung (at least ``MIN_AIR_CONTACT`` of its surface borders the lung's air:
    not a corner of chest wall)."""
    if not mask.any():
        return None
    labels = _components(mask)
    spacing = np.asarray(reference.GetSpacing(), dtype=np.float64)[::-1]
    near = _ball(mask.shape, click, radius_mm, spacing)
    best, best_distance = None, np.inf
    for label in np.unique(labels[near & mask]):
        component = labels == label
        if not _nodule_like(component, depth, air, reference, min_diameter_mm):
            continue
        distance = float(np.min(np.linalg.norm((np.argwhere(component) - click) * spacing, axis=1)))
        if distance < best_distance - 1e-6:
            best, best_distance = component, distance
    return best


def _nodule_like(component: np.ndarray, depth: np.ndarray, air: np.ndarray, reference: sitk.Image,
                 min_diameter_mm: float = MIN_DIAMETER_MM) -> bool:
    """The tests of :func:`_pick_component`."""
    spacing = np.asarray(reference.GetSpacing(), dtype=np.float64)[::-1]
    voxels = np.argwhere(component)
    if 2.0 * (3.0 * len(voxels) * np.prod(spacing) / (4.0 * np.pi)) ** (1.0 / 3.0) < min_diameter_mm:
        return False
    positions = voxels * spacing
    moments = np.linalg.eigvalsh(np.cov(positions.T))  # principal moments (variances along the axes)
    if moments.min() <= 0 or np.sqrt(moments.max() / moments.min()) > MAX_ELONGATION:
        return False
    depths = depth[component]
    deepest = positions[int(np.argmax(depths))]
    if np.max(np.linalg.norm(positions - deepest, axis=1)) > MAX_EXTENT_RATIO * float(depths.max()) + EXTENT_MARGIN_MM:
        return False
    shell = _shell(component)
    return bool(np.count_nonzero(shell & air) >= MIN_AIR_CONTACT * np.count_nonzero(shell))


# -- stage 2: segment --------------------------------------------------------------------------------
def _segment(image: sitk.Image, point: np.ndarray, find: _Stage, nodule: np.ndarray, lung: np.ndarray,
             opening_mm: float, find_hu: float, truncated: bool) -> _Located:
    """Segment the found nodule on a fine grid."""
    find_spacing = find.reference.GetSpacing()[0]
    indices = np.argwhere(nodule)
    low = _index_to_lps(find.reference, indices.min(axis=0)) - REFINE_MARGIN_MM
    high = _index_to_lps(find.reference, indices.max(axis=0)) + REFINE_MARGIN_MM
    in_plane = min(image.GetSpacing()[:2])
    spacing = float(np.clip(max(in_plane, float(np.max(high - low)) / REFINE_MAX_VOXELS), REFINE_MIN_SPACING_MM, find_spacing))
    # Round to 1/20 mm so that nearby clicks share one lattice.
    spacing = round(spacing * 20.0) / 20.0
    stage = _sample(image, (low + high) / 2.0, (high - low) / 2.0, spacing)
    lung_fine = _resample_mask(lung, find.reference, stage.reference)
    found_fine = _resample_mask(nodule, find.reference, stage.reference)

    threshold = _adaptive_threshold(stage, found_fine, min(TISSUE_HU_RANGE[0], find_hu))
    candidates = (stage.smooth > threshold) & lung_fine
    if threshold < TISSUE_HU_RANGE[0]:
        # So low a threshold (faint ground glass) takes in the partial-volume edge of the chest wall,
        # mediastinum and diaphragm: tissue that close to the wall is left out.
        wall = ~lung_fine & (stage.smooth > LUNG_AIR_HU)
        if wall.any():
            candidates &= _outside_distance(wall, stage.reference, WALL_EDGE_MM) > WALL_EDGE_MM
    depth = _distance_inside(candidates, stage.reference, MAX_OPENING_MM + 1e-2)  # the opening (and the type's rim) look no deeper
    opened, reach = _open(candidates, depth, opening_mm, stage.reference, RESTORE_MM)
    mask = _overlapping_component(opened, found_fine)
    if mask is None:  # the finer threshold lost the nodule: keep the found one
        mask = found_fine & (stage.smooth > find_hu)
    else:
        mask = _restore_surface(mask, candidates, reach, opening_mm, stage.reference)
    centre = _index_to_lps(stage.reference, np.argwhere(mask).mean(axis=0))
    return _Located(point_lps=point, stage=stage, mask=mask, depth=depth, lung=lung_fine, threshold_hu=threshold,
                    centre_lps=centre, truncated=truncated)


def _describe(image: sitk.Image, located: _Located) -> NoduleSegmentation:
    """The segmented nodule's type, flags and warnings, and its label map mapped onto the CT's own grid."""
    stage, mask, point, centre, threshold = located.stage, located.mask, located.point_lps, located.centre_lps, located.threshold_hu
    kind, solid = _solid_component(mask, located.depth, stage)
    labels = np.where(mask, LABEL_SOLID if kind == "solid" else LABEL_NON_SOLID, 0).astype(np.uint8)
    if kind == "part-solid":
        labels[solid] = LABEL_SOLID
    fine_mask = _as_image(labels, stage.reference)
    fine_hu = _as_image(stage.hu.astype(np.float32), stage.reference)
    wall = (stage.smooth > threshold) & ~located.lung
    faint = threshold < TISSUE_HU_RANGE[0]  # kept WALL_EDGE_MM from the wall (above): a ring that much wider
    juxtapleural = _touches(mask, wall, stage.reference, JUXTAPLEURAL_RING_MM + (WALL_EDGE_MM if faint else 0.0))
    truncated = located.truncated or bool(np.any(_shell(mask) & ~stage.inside_ct))
    warnings = []
    if truncated:
        warnings.append("the nodule reaches the 64 mm cube's faces or the CT's edge: its measurements are truncated")
    # The fine grid is LPS-aligned and isotropic: index distance times spacing is the distance in mm.
    spacing = stage.reference.GetSpacing()[0]
    gap_mm = float(np.min(np.linalg.norm(np.argwhere(mask) - _index_of(stage.reference, point), axis=1))) * spacing
    if gap_mm > FAR_FROM_POINT_MM:
        warnings.append(FAR_FROM_POINT_WARNING.format(gap=gap_mm, shift=float(np.linalg.norm(centre - point))))
    return NoduleSegmentation(point_lps=point, centre_lps=centre, mask=_on_ct_grid(fine_mask, image),
                              fine_mask=fine_mask, fine_hu=fine_hu, fine_smooth=stage.smooth, type=kind, truncated=truncated,
                              juxtapleural=juxtapleural, warnings=warnings)


def _solid_component(mask: np.ndarray, depth: np.ndarray, stage: _Stage) -> Tuple[str, np.ndarray]:
    """The nodule's type and solid component.

    The solid component is the nodule's voxels above ``SOLID_HU`` (smoothed), opened by a ball of
    ``SOLID_OPENING_MM`` so that vessels crossing ground glass are not one. The type comes from the
    share of the nodule's inner voxels (deeper than ``TYPE_RIM_MM`` in ``depth``, the candidates'
    depth map: the partial-volume rim is neither) in it: at least ``SOLID_SHARE`` solid, at least
    ``PART_SOLID_SHARE`` part-solid, else ground glass."""
    inner = mask & (depth > TYPE_RIM_MM)
    if inner.sum() < 8:
        inner = mask
    dense = mask & (stage.smooth >= SOLID_HU)
    share = lambda part: float(np.count_nonzero(part & inner)) / max(1, int(np.count_nonzero(inner)))  # noqa: E731
    if share(dense) >= SOLID_SHARE:  # the opening cannot make it more solid: no need for it
        return "solid", dense
    if not dense.any():
        return "ground-glass", dense
    solid, _reach = _open(dense, _distance_inside(dense, stage.reference, SOLID_OPENING_MM + 1e-2), SOLID_OPENING_MM, stage.reference)
    if share(solid) >= SOLID_SHARE:
        return "solid", solid
    return ("part-solid" if share(solid) >= PART_SOLID_SHARE else "ground-glass"), solid


def _adaptive_threshold(stage: _Stage, found: np.ndarray, low_hu: float = TISSUE_HU_RANGE[0]) -> float:
    """Halfway between the nodule's outer tissue and the lung around it, clamped to ``TISSUE_HU_RANGE``."""
    inner = _eroded(found)  # a voxel or more deep: not on its contour
    tissue = stage.smooth[inner if inner.sum() >= 8 else found]
    outside = _outside_distance(found, stage.reference, LUNG_RING_MM[1])
    around = (outside > LUNG_RING_MM[0]) & (outside < LUNG_RING_MM[1]) & (stage.smooth < LUNG_AIR_HU)
    lung_hu = float(np.median(stage.smooth[around])) if around.sum() >= 8 else AERATED_LUNG_HU
    outer_hu = float(np.percentile(tissue, 25)) if tissue.size else 0.0
    return float(np.clip((outer_hu + lung_hu) / 2.0, low_hu, TISSUE_HU_RANGE[1]))


def _restore_surface(nodule: np.ndarray, candidates: np.ndarray, reach: np.ndarray, radius_mm: float,
                     reference: sitk.Image) -> np.ndarray:
    """Give back the surface detail the opening took (a rough margin, a ground-glass fringe): the
    candidate tissue within ``RESTORE_MM`` of the opened nodule (``reach``: the distance to the
    opening's core, ``radius_mm`` from the opened surface), connected to it, except the small pieces
    (at most ``STUB_MAX_MM3``) that carry on beyond that band: vessels leaving the nodule, no stubs."""
    band = (reach <= radius_mm + RESTORE_MM + 1e-3) & candidates
    residue = band & ~nodule
    if not residue.any():
        return nodule
    beyond = candidates & ~band & ~nodule
    labels = _components(residue)
    leaving = np.unique(labels[_shell(beyond) & residue])
    leaving = leaving[leaving > 0]
    # A vessel's stub is small; a fringe of ground glass that vessels leave from is not.
    voxel_mm3 = float(np.prod(reference.GetSpacing()))
    sizes = np.bincount(labels.ravel())
    stubs = leaving[sizes[leaving] * voxel_mm3 <= STUB_MAX_MM3]
    # The nodule is one component: the component of nodule | residue that holds it is the nodule and the
    # residue's pieces that touch it (two pieces never touch: they would be one).
    touching = np.unique(labels[_dilated(nodule) & residue])
    touching = touching[~np.isin(touching, stubs)]
    return nodule | np.isin(labels, touching)


def _overlapping_component(mask: np.ndarray, reference_mask: np.ndarray) -> Optional[np.ndarray]:
    """The component of ``mask`` that overlaps ``reference_mask`` most."""
    overlap = mask & reference_mask
    if not overlap.any():
        return None
    labels = _components(mask)
    counts = np.bincount(labels[overlap])
    counts[0] = 0
    return labels == int(np.argmax(counts))


def _on_ct_grid(fine_labels: sitk.Image, image: sitk.Image) -> sitk.Image:
    """The label map resampled (nearest neighbour per label: each label's mask linearly, at 0.5) onto the
    crop of the CT's own grid that covers it."""
    array = sitk.GetArrayViewFromImage(fine_labels)
    size = np.array(fine_labels.GetSize())
    corners = np.array([[i, j, k] for i in (0, size[0] - 1) for j in (0, size[1] - 1) for k in (0, size[2] - 1)], float)
    corner_lps = np.array([fine_labels.TransformContinuousIndexToPhysicalPoint(c.tolist()) for c in corners])
    ct_index = np.array([image.TransformPhysicalPointToContinuousIndex(p.tolist()) for p in corner_lps])
    low = np.maximum(np.floor(ct_index.min(axis=0)).astype(int) - 1, 0)
    high = np.minimum(np.ceil(ct_index.max(axis=0)).astype(int) + 1, np.array(image.GetSize()) - 1)
    crop = sitk.Image([int(n) for n in (high - low + 1)], sitk.sitkUInt8)
    crop.SetSpacing(image.GetSpacing())
    crop.SetDirection(image.GetDirection())
    crop.SetOrigin(image.TransformIndexToPhysicalPoint([int(v) for v in low]))
    if image.GetDirection() == _IDENTITY_DIRECTION:  # both grids LPS-aligned: separable, in numpy
        on_crop = lambda mask: _resample_mask(mask, fine_labels, crop)  # noqa: E731
    else:
        on_crop = lambda mask: sitk.GetArrayFromImage(_resample(_as_image(mask.astype(np.float32), fine_labels), crop)) >= 0.5  # noqa: E731
    nodule = on_crop(array > 0)
    labels = np.where(nodule, LABEL_NON_SOLID, 0).astype(np.uint8)
    solid = array == LABEL_SOLID
    if solid.any():  # all of a solid nodule is its solid component: one resampling is enough
        labels[nodule & (nodule if np.array_equal(solid, array > 0) else on_crop(solid))] = LABEL_SOLID
    result = sitk.GetImageFromArray(labels)
    result.CopyInformation(crop)
    return result


# -- helpers -----------------------------------------------------------------------------------------
def _execute(image_filter: sitk.ImageFilter, *inputs: sitk.Image) -> sitk.Image:
    """Run a SimpleITK filter on ``FILTER_THREADS`` threads (whatever the process-wide default)."""
    image_filter.SetNumberOfThreads(FILTER_THREADS)
    return image_filter.Execute(*inputs)


def _resample(image: sitk.Image, reference: sitk.Image, outside: float = 0.0) -> sitk.Image:
    """``image`` resampled (linear, float32) onto ``reference``'s grid; ``outside`` beyond its edge."""
    resampler = sitk.ResampleImageFilter()
    resampler.SetReferenceImage(reference)
    resampler.SetInterpolator(sitk.sitkLinear)
    resampler.SetDefaultPixelValue(outside)
    resampler.SetOutputPixelType(sitk.sitkFloat32)
    return _execute(resampler, image)


def _components(mask: np.ndarray) -> np.ndarray:
    """The mask's connected components (26-connected), labelled 1, 2, ... in raster order (0 outside the mask).

    Labelled on the mask's bounding box only: the same labels (raster order is kept within a box), less to scan."""
    labels = np.zeros(mask.shape, dtype=np.uint32)
    if not mask.any():
        return labels
    box = _box_around(mask, 0)
    labelling = sitk.ConnectedComponentImageFilter()
    labelling.SetFullyConnected(True)
    labels[box] = sitk.GetArrayFromImage(_execute(labelling, _as_image(mask[box], None)))  # no geometry needed
    return labels


def _as_image(array: np.ndarray, reference: Optional[sitk.Image]) -> sitk.Image:
    image = sitk.GetImageFromArray(array.astype(np.uint8) if array.dtype == bool else array)
    if reference is not None:
        image.CopyInformation(reference)
    return image


def _outside_distance(mask: np.ndarray, reference: sitk.Image, reach_mm: Optional[float] = None) -> np.ndarray:
    """Distance (mm) from each voxel to the nearest voxel of the mask, 0 on the mask, inf without a mask: ITK's
    ``SignedMaurerDistanceMap`` outside the mask, negated. Exact up to ``reach_mm``; beyond it exact or inf
    (``reach_mm`` None: exact everywhere). The callers that look only outside a mask need no inside map."""
    return _one_sided_distance(mask, False, reference, reach_mm)


def _inside_distance(mask: np.ndarray, reference: sitk.Image, reach_mm: Optional[float] = None) -> np.ndarray:
    """Distance (mm) from each mask voxel to the nearest voxel of the mask's contour (its voxels with a background
    voxel among their 26 neighbours; the grid's edge is no boundary), 0 outside the mask, inf on a mask without a
    contour: ITK's ``SignedMaurerDistanceMap`` inside the mask. Exact up to ``reach_mm``; beyond it exact or inf
    (``reach_mm`` None: exact everywhere)."""
    return _one_sided_distance(mask, True, reference, reach_mm)


def _one_sided_distance(mask: np.ndarray, inside: bool, reference: sitk.Image, reach_mm: Optional[float]) -> np.ndarray:
    """:func:`_inside_distance` (``inside``) or :func:`_outside_distance`. Within a reach of ``DISTANCE_REACH_VOXELS``
    it is computed in numpy (:func:`_squared_voxel_distance`: several times faster than ITK's map on these small
    grids); beyond, by ITK's map."""
    region = mask if inside else ~mask
    seeds = mask & ~_eroded(mask) if inside else mask
    if not seeds.any():
        return np.where(region, np.inf, 0.0).astype(np.float32)
    spacing = float(reference.GetSpacing()[0])  # every grid of the finder is isotropic
    reach = DISTANCE_REACH_VOXELS if reach_mm is None else int(np.ceil(reach_mm / spacing - 1e-6))
    if reach <= DISTANCE_REACH_VOXELS:
        # Exact everywhere: only the region's voxels need it, as far as the farthest of them can be.
        squared = _squared_voxel_distance(seeds, reach, region if reach_mm is None else None)
        beyond = region & (squared > reach * reach)
        if reach_mm is not None or not beyond.any():
            # As ITK computes it: the distance in double precision, then float32.
            distance = np.sqrt(squared.astype(np.float64) * (spacing * spacing)).astype(np.float32)
            distance[beyond] = np.inf
            distance[~region] = 0.0
            return distance
    maurer = sitk.SignedMaurerDistanceMapImageFilter()
    maurer.SetInsideIsPositive(True)
    maurer.SetSquaredDistance(False)
    maurer.SetUseImageSpacing(True)
    signed = sitk.GetArrayFromImage(_execute(maurer, _as_image(mask, reference)))
    return np.where(region, np.abs(signed), 0.0).astype(np.float32)


def _distance_inside(mask: np.ndarray, reference: sitk.Image, reach_mm: Optional[float] = None) -> np.ndarray:
    """Depth (mm) of each mask voxel: the distance from its centre to the nearest voxel centre outside the
    mask (ITK's signed distance is 0 on the mask's edge voxels: one voxel more); 0 outside. Exact up to
    ``reach_mm``, exact or inf beyond (None: exact everywhere)."""
    spacing = float(reference.GetSpacing()[0])
    return np.where(mask, _inside_distance(mask, reference, reach_mm) + spacing, 0.0).astype(np.float32)


def _squared_voxel_distance(seeds: np.ndarray, reach: int, within: Optional[np.ndarray] = None) -> np.ndarray:
    """Squared distance in voxels (int16) from every voxel to the nearest voxel of ``seeds``: exact up to
    ``reach`` voxels, above ``reach``² beyond. With ``within`` (a mask): exact up to ``reach`` only on its
    voxels (elsewhere an upper bound), the reach lowered to what they need: no voxel is farther from a
    seed than from the nearest seed on its own row.

    Separable (the squared Euclidean distance is the lower envelope of parabolas, one axis after the
    other): the nearest seed along x by running maxima of the seeds' indices, then along y and z the
    minimum over the shifts within ``reach``."""
    cap = reach + 1
    index = np.arange(seeds.shape[-1], dtype=np.int16)
    far = np.int16(seeds.shape[-1] + cap)
    before = np.where(seeds, index, -far)
    np.maximum.accumulate(before, axis=-1, out=before)
    after = np.minimum.accumulate(np.where(seeds, index, far)[..., ::-1], axis=-1)[..., ::-1]
    along_x = np.minimum(index - before, after - index)
    np.minimum(along_x, np.int16(cap), out=along_x)
    if within is not None and within.any():
        reach = min(reach, int(along_x[within].max()))
    squared = along_x * along_x
    for axis in (1, 0):
        envelope = squared.copy()
        for shift in range(1, reach + 1):
            high, low = [slice(None)] * 3, [slice(None)] * 3
            high[axis], low[axis] = slice(shift, None), slice(None, -shift)
            high, low = tuple(high), tuple(low)
            step = np.int16(shift * shift)
            np.minimum(envelope[high], squared[low] + step, out=envelope[high])
            np.minimum(envelope[low], squared[high] + step, out=envelope[low])
        squared = envelope
    return squared


def _eroded(mask: np.ndarray) -> np.ndarray:
    """The mask's voxels whose 26 neighbours are all in it (beyond the grid's edge counts as in it)."""
    eroded = mask.copy()
    for axis in range(3):
        step = eroded.copy()
        head, tail, body = [slice(None)] * 3, [slice(None)] * 3, [slice(None)] * 3
        head[axis], tail[axis] = slice(1, None), slice(None, -1)
        step[tuple(head)] &= eroded[tuple(tail)]
        step[tuple(tail)] &= eroded[tuple(head)]
        eroded = step
    return eroded


def _dilated(mask: np.ndarray) -> np.ndarray:
    """The mask grown by its 26 neighbours (beyond the grid's edge counts as outside it)."""
    return ~_eroded(~mask)


def _climb(depth: np.ndarray, start: np.ndarray) -> float:
    """The depth reached by steepest ascent on the depth map from ``start`` (the blob the point is in)."""
    current = tuple(int(v) for v in start)
    shape = np.array(depth.shape)
    offsets = np.array([[a, b, c] for a in (-1, 0, 1) for b in (-1, 0, 1) for c in (-1, 0, 1)])
    for _ in range(200):
        neighbours = np.clip(np.array(current) + offsets, 0, shape - 1)
        values = depth[neighbours[:, 0], neighbours[:, 1], neighbours[:, 2]]
        best = int(np.argmax(values))
        if values[best] <= depth[current] + 1e-6:
            break
        current = tuple(int(v) for v in neighbours[best])
    return float(depth[current])


def _nearest_true(mask: np.ndarray, index: np.ndarray, radius_voxels: float) -> Optional[np.ndarray]:
    """The voxel of ``mask`` nearest to ``index`` within ``radius_voxels`` (isotropic grid), or None."""
    low = np.maximum(np.floor(index - radius_voxels).astype(int), 0)
    high = np.minimum(np.ceil(index + radius_voxels).astype(int) + 1, mask.shape)
    box = mask[tuple(slice(a, b) for a, b in zip(low, high))]
    found = np.argwhere(box)
    if found.size == 0:
        return None
    distance = np.linalg.norm(found + low - index, axis=1)
    best = int(np.argmin(distance))
    return None if distance[best] > radius_voxels else found[best] + low


def _ball(shape: Sequence[int], centre: np.ndarray, radius_mm: float, spacing_zyx: np.ndarray) -> np.ndarray:
    grids = np.ogrid[tuple(slice(0, n) for n in shape)]
    distance2 = sum(((g - c) * s) ** 2 for g, c, s in zip(grids, centre, spacing_zyx))
    return distance2 <= radius_mm ** 2


def _index_of(reference: sitk.Image, point_lps: np.ndarray) -> np.ndarray:
    """Continuous (z, y, x) index of an LPS point in an LPS-aligned grid."""
    return np.array(reference.TransformPhysicalPointToContinuousIndex(point_lps.tolist()))[::-1]


def _index_to_lps(reference: sitk.Image, index_zyx: np.ndarray) -> np.ndarray:
    return np.asarray(reference.GetOrigin()) + np.asarray(index_zyx, dtype=np.float64)[::-1] * np.asarray(reference.GetSpacing())


def _resample_mask(mask: np.ndarray, source: sitk.Image, target: sitk.Image) -> np.ndarray:
    """A boolean mask on ``source``'s grid resampled onto ``target``'s (linear, at 0.5), both LPS-aligned.

    Trilinear interpolation is separable on such grids: one axis after the other, as ITK's linear
    resampling computes it (up to half a voxel beyond the edge voxels the edge value, 0 farther)."""
    values = mask.astype(np.float32)
    source_origin, target_origin = np.asarray(source.GetOrigin())[::-1], np.asarray(target.GetOrigin())[::-1]
    source_spacing, target_spacing = np.asarray(source.GetSpacing())[::-1], np.asarray(target.GetSpacing())[::-1]
    for axis, length in enumerate(target.GetSize()[::-1]):
        index = (target_origin[axis] + np.arange(length) * target_spacing[axis] - source_origin[axis]) / source_spacing[axis]
        low, high, weight, inside = _axis_neighbours(index, values.shape[axis])
        shape = [1, 1, 1]
        shape[axis] = length
        weight, inside = weight.astype(np.float32).reshape(shape), inside.reshape(shape)
        values = np.where(inside, np.take(values, low, axis) * (1 - weight) + np.take(values, high, axis) * weight, 0.0)
    return values >= 0.5


def _touches_faces(mask: np.ndarray) -> bool:
    return bool(mask[0].any() or mask[-1].any() or mask[:, 0].any() or mask[:, -1].any()
                or mask[:, :, 0].any() or mask[:, :, -1].any())


def _shell(mask: np.ndarray) -> np.ndarray:
    """The mask's one-voxel outer neighbourhood (6-connected dilation minus the mask)."""
    grown = mask.copy()
    for axis in range(3):
        grown |= np.roll(mask, 1, axis) | np.roll(mask, -1, axis)
    return grown & ~mask


def _touches(mask: np.ndarray, wall: np.ndarray, reference: sitk.Image, ring_mm: float = JUXTAPLEURAL_RING_MM) -> bool:
    """True when at least ``JUXTAPLEURAL_MIN_CONTACT`` of the ring of ``ring_mm`` around the nodule is wall
    (chest wall, mediastinum, diaphragm: tissue outside the lung)."""
    # The ring lies within the mask's box grown by the ring's width: the distance map on that crop is
    # the full grid's there (the mask lies inside it), and with no wall in it there is no contact.
    box = _box_around(mask, int(np.ceil(ring_mm / min(reference.GetSpacing()))) + 1)
    mask, wall = mask[box], wall[box]
    if not wall.any():
        return False
    ring = (_outside_distance(mask, _crop_reference(reference, box), ring_mm) <= ring_mm) & ~mask
    if not ring.any():
        return False
    return bool(np.count_nonzero(ring & wall) >= JUXTAPLEURAL_MIN_CONTACT * np.count_nonzero(ring))


def _box_around(mask: np.ndarray, margin_voxels: int) -> Tuple[slice, ...]:
    """The (z, y, x) slices of the mask's bounding box grown by ``margin_voxels``, within the array."""
    box = []
    for axis, length in enumerate(mask.shape):
        present = np.flatnonzero(mask.any(axis=tuple(other for other in range(3) if other != axis)))
        box.append(slice(max(int(present[0]) - margin_voxels, 0), min(int(present[-1]) + margin_voxels + 1, length)))
    return tuple(box)


def _crop_reference(reference: sitk.Image, box: Sequence[slice]) -> sitk.Image:
    """An image with ``reference``'s geometry over the (z, y, x) crop ``box`` (for the distance maps' spacing)."""
    size = [b.stop - b.start for b in box][::-1]
    crop = sitk.Image([int(n) for n in size], sitk.sitkUInt8)
    crop.SetSpacing(reference.GetSpacing())
    crop.SetDirection(reference.GetDirection())
    crop.SetOrigin(reference.TransformIndexToPhysicalPoint([int(b.start) for b in box][::-1]))
    return crop
