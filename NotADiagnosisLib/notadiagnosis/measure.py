"""Measure the nodule near a click: axes, diameters, volume, HU, type, flags and the references.

:func:`measure_nodule` is the library's one call from a click to a measured nodule: it finds and
segments the nodule (``finder.find_nodule``), measures it on the segmentation's LPS-aligned
isotropic grid (the axial plane is the patient's, whatever the CT's direction) and adds the
size-only probability and the Lung-RADS v2022 category (``references``).

How radiologists and Lung-RADS measure: the long axis is the longest diameter in the axial plane,
on the axial slice where it is greatest; the short axis is the longest diameter perpendicular to it
on the same slice; the mean diameter is their average. Diameters are voxel extents (distance
between the outermost voxel centres plus one voxel).
"""
from __future__ import annotations

import functools
import math
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Tuple

import numpy as np
import SimpleITK as sitk

from .finder import (LABEL_SOLID, NO_NODULE_WARNING, NOT_CT_WARNING, SOLID_HU, NoduleSegmentation, _index_to_lps, find_nodule,
                     looks_like_ct)
from .geometry import ArrayLike, _as_point
from .references import LUNG_RADS_STATEMENT, SizeOnlyModel, lung_rads_category

CALCIFIED_HU = 200.0
CALCIFIED_MIN_VOLUME_MM3 = 3.0
HU_PERCENTILES = (5, 25, 50, 75, 95)
# Slices whose nodule area is at least this share of the largest are searched for the long axis.
_LONG_AXIS_AREA_SHARE = 0.6

#: The keys of the ``measurement`` object of the CLI's JSON, in order (``NoduleMeasurement.summary``).
SUMMARY_KEYS = ("centre_lps", "centre_shift_mm", "long_axis_mm", "short_axis_mm", "mean_diameter_mm", "volume_mm3",
                "type", "solid_mean_diameter_mm", "size_only_probability", "lung_rads")


@dataclass
class NoduleMeasurement:
    """What was measured on one nodule (millimetres, LPS, HU).

    ``long_axis_lps``/``short_axis_lps`` are the axes' end points (voxel centres of the outermost
    voxels; the axes' lengths add one voxel), on the axial plane at ``axial_z_lps``.
    ``size_only_probability`` is None when the model card has no size-only model.
    """

    centre_lps: Tuple[float, float, float]
    centre_shift_mm: float
    long_axis_mm: float
    short_axis_mm: float
    mean_diameter_mm: float
    equivalent_diameter_mm: float
    volume_mm3: float
    hu_mean: float
    hu_percentiles: Dict[int, float]
    type: str
    solid_mean_diameter_mm: Optional[float]
    solid_volume_mm3: float
    calcified: bool
    juxtapleural: bool
    truncated: bool
    long_axis_lps: Tuple[Tuple[float, float, float], Tuple[float, float, float]]
    short_axis_lps: Tuple[Tuple[float, float, float], Tuple[float, float, float]]
    axial_z_lps: float
    size_only_probability: Optional[float]
    lung_rads: str
    lung_rads_note: str = LUNG_RADS_STATEMENT

    def summary(self) -> Dict[str, Any]:
        """The CLI's ``measurement`` object: exactly :data:`SUMMARY_KEYS`."""
        return {
            "centre_lps": [round(v, 3) for v in self.centre_lps],
            "centre_shift_mm": round(self.centre_shift_mm, 3),
            "long_axis_mm": round(self.long_axis_mm, 2),
            "short_axis_mm": round(self.short_axis_mm, 2),
            "mean_diameter_mm": round(self.mean_diameter_mm, 2),
            "volume_mm3": round(self.volume_mm3, 1),
            "type": self.type,
            "solid_mean_diameter_mm": None if self.solid_mean_diameter_mm is None else round(self.solid_mean_diameter_mm, 2),
            "size_only_probability": None if self.size_only_probability is None else round(self.size_only_probability, 6),
            "lung_rads": self.lung_rads,
        }

    def details(self) -> Dict[str, Any]:
        """Everything else measured (the CLI's ``measurement_details``): equivalent diameter, HU, flags, axes' ends."""
        return {
            "equivalent_diameter_mm": round(self.equivalent_diameter_mm, 2),
            "hu_mean": round(self.hu_mean, 1),
            "hu_percentiles": {str(p): round(v, 1) for p, v in self.hu_percentiles.items()},
            "solid_volume_mm3": round(self.solid_volume_mm3, 1),
            "calcified": self.calcified,
            "juxtapleural": self.juxtapleural,
            "truncated": self.truncated,
            "long_axis_lps": [[round(v, 3) for v in end] for end in self.long_axis_lps],
            "short_axis_lps": [[round(v, 3) for v in end] for end in self.short_axis_lps],
            "axial_z_lps": round(self.axial_z_lps, 3),
        }


@dataclass
class NoduleResult:
    """The result of :func:`measure_nodule` for one point.

    ``measurement`` and ``segmentation`` are None when no nodule was found (``warnings`` says why).
    ``mask`` is the label map on a crop of the CT's own grid (uint8: 1 ground glass, 2 solid
    component), writable with ``sitk.WriteImage(result.mask, "nodule.nrrd", True)``.
    """

    point_lps: Tuple[float, float, float]
    measurement: Optional[NoduleMeasurement]
    segmentation: Optional[NoduleSegmentation]
    warnings: List[str] = field(default_factory=list)

    @property
    def mask(self) -> Optional[sitk.Image]:
        return None if self.segmentation is None else self.segmentation.mask


def measure_nodule(image: sitk.Image, point_lps: ArrayLike, model_card: Optional[Dict[str, Any]] = None,
                   size_only: Optional[SizeOnlyModel] = None) -> NoduleResult:
    """Find, segment and measure the nodule within 10 mm of ``point_lps`` (LPS mm) in a CT (HU).

    The size-only probability uses ``size_only`` if given, else the ``size_only`` block of
    ``model_card`` (e.g. ``Classifier.card``), else that of the bundled default model's card; it is
    None when the card has none. No nodule near the point, or an image that is not a CT in HU: no
    measurement, a warning. The image is never modified.
    """
    point = _as_point(point_lps)
    point_tuple = tuple(float(v) for v in point)
    if not looks_like_ct(image):
        return NoduleResult(point_tuple, None, None, [NOT_CT_WARNING])
    segmentation, warnings = find_nodule(image, point)
    if segmentation is None:
        return NoduleResult(point_tuple, None, None, warnings)
    if size_only is None:
        size_only = SizeOnlyModel.from_card(model_card) if model_card is not None else _bundled_size_only()
    measurement = measure_segmentation(segmentation, size_only)
    warnings = warnings + segmentation.warnings
    if measurement.calcified and measurement.lung_rads != "1":
        warnings.append("calcification seen: Lung-RADS 1 if its pattern is benign (central, popcorn, laminated); "
                        "the tool does not grade the pattern")
    return NoduleResult(point_tuple, measurement, segmentation, warnings)


def measure_segmentation(segmentation: NoduleSegmentation, size_only: Optional[SizeOnlyModel] = None) -> NoduleMeasurement:
    """Measure a segmented nodule on its fine LPS-aligned grid."""
    labels = sitk.GetArrayFromImage(segmentation.fine_mask)
    hu = sitk.GetArrayViewFromImage(segmentation.fine_hu)
    reference = segmentation.fine_mask
    spacing = float(reference.GetSpacing()[0])
    nodule = labels > 0
    solid = labels == LABEL_SOLID
    voxel_mm3 = spacing ** 3
    volume = float(nodule.sum() * voxel_mm3)
    long_mm, short_mm, long_ends, short_ends, z_index = axial_axes(nodule, spacing)
    values = hu[nodule]
    # Smoothed HU: noise in a large nodule would pass the threshold voxel by voxel.
    smooth = segmentation.fine_smooth[nodule]
    calcified_volume = float(np.count_nonzero(smooth >= CALCIFIED_HU) * voxel_mm3)
    calcified = calcified_volume >= CALCIFIED_MIN_VOLUME_MM3
    # The share of the nodule's dense tissue (the partial-volume rim left out) that is calcified.
    dense_volume = max(float(np.count_nonzero(smooth >= SOLID_HU) * voxel_mm3), voxel_mm3)
    mean_diameter = (long_mm + short_mm) / 2.0
    solid_mean = None
    if segmentation.type == "part-solid":
        solid_long, solid_short, *_rest = axial_axes(solid, spacing)
        solid_mean = (solid_long + solid_short) / 2.0
    to_lps = lambda index_zyx: tuple(float(v) for v in _index_to_lps(reference, index_zyx))  # noqa: E731
    return NoduleMeasurement(
        centre_lps=tuple(float(v) for v in segmentation.centre_lps),
        centre_shift_mm=segmentation.centre_shift_mm,
        long_axis_mm=long_mm, short_axis_mm=short_mm, mean_diameter_mm=mean_diameter,
        equivalent_diameter_mm=float((6.0 * volume / math.pi) ** (1.0 / 3.0)), volume_mm3=volume,
        hu_mean=float(values.mean()),
        hu_percentiles={p: float(v) for p, v in zip(HU_PERCENTILES, np.percentile(values, HU_PERCENTILES))},
        type=segmentation.type, solid_mean_diameter_mm=solid_mean, solid_volume_mm3=float(solid.sum() * voxel_mm3),
        calcified=calcified, juxtapleural=segmentation.juxtapleural, truncated=segmentation.truncated,
        long_axis_lps=(to_lps((z_index, *long_ends[0])), to_lps((z_index, *long_ends[1]))),
        short_axis_lps=(to_lps((z_index, *short_ends[0])), to_lps((z_index, *short_ends[1]))),
        axial_z_lps=to_lps((z_index, 0, 0))[2],
        size_only_probability=None if size_only is None else size_only.probability(long_mm),
        lung_rads=lung_rads_category(mean_diameter, segmentation.type, solid_mean, calcified_volume / dense_volume),
    )


def axial_axes(mask: np.ndarray, spacing_mm: float):
    """Long and short axis (mm) of a mask (z, y, x) on an isotropic LPS-aligned grid.

    Returns ``(long_mm, short_mm, long_ends, short_ends, z_index)``: the ends are (y, x) voxel indices
    on slice ``z_index``, the axial slice where the long axis is greatest. Empty mask: zeros.
    """
    areas = mask.sum(axis=(1, 2))
    if areas.max() == 0:
        return 0.0, 0.0, ((0, 0), (0, 0)), ((0, 0), (0, 0)), 0
    best = (-1.0, None, None, 0)
    for z in np.flatnonzero(areas >= _LONG_AXIS_AREA_SHARE * areas.max()):
        points = _row_ends(mask[z])
        distance2 = ((points[:, None, :] - points[None, :, :]) ** 2).sum(axis=-1)
        i, j = np.unravel_index(int(np.argmax(distance2)), distance2.shape)
        length = float(np.sqrt(distance2[i, j]))
        if length > best[0]:
            best = (length, points[i], points[j], int(z))
    length, a, b, z = best
    long_mm = (length + 1.0) * spacing_mm
    # Short axis: the longest chord perpendicular to the long axis, over lines one voxel apart.
    points = np.argwhere(mask[z]).astype(np.float64)
    direction = (b - a) / length if length > 0 else np.array([1.0, 0.0])
    normal = np.array([-direction[1], direction[0]])
    along = np.round((points - a) @ direction).astype(int)
    across = (points - a) @ normal
    short, short_ends = 0.0, (tuple(a), tuple(a))
    for position in np.unique(along):
        on_line = along == position
        low, high = int(np.argmin(np.where(on_line, across, np.inf))), int(np.argmax(np.where(on_line, across, -np.inf)))
        chord = across[high] - across[low]
        if chord > short or short_ends[0] == short_ends[1]:
            short = chord
            base = a + position * direction
            short_ends = (tuple(base + across[low] * normal), tuple(base + across[high] * normal))
    short_mm = (short + 1.0) * spacing_mm
    return float(long_mm), float(short_mm), (tuple(a), tuple(b)), short_ends, z


def _row_ends(plane: np.ndarray) -> np.ndarray:
    """(y, x) indices of the first and last mask voxel of each row of the plane, in raster order.

    The longest chord of a set of voxels joins two vertices of its convex hull, and a hull vertex is the
    first or last voxel of its row (any other lies between two): the search for the long axis needs no
    other voxel, and keeps the order (so the same chord wins a tie)."""
    rows = np.flatnonzero(plane.any(axis=1))
    ends = np.zeros(plane.shape, dtype=bool)
    ends[rows, np.argmax(plane[rows], axis=1)] = True
    ends[rows, plane.shape[1] - 1 - np.argmax(plane[rows, ::-1], axis=1)] = True
    return np.argwhere(ends).astype(np.float64)


def _bundled_size_only() -> Optional[SizeOnlyModel]:
    """The bundled default model's size-only model (None when no model is bundled or its card has none), its
    card read once per version of the file (path, size, modification time), not at every call."""
    from .errors import NoDefaultModelError
    from .weights import default_model_path

    try:
        path = default_model_path()
    except NoDefaultModelError:
        return None
    stat = path.stat()
    return _size_only_of_card(str(path), stat.st_mtime_ns, stat.st_size)


@functools.lru_cache(maxsize=4)
def _size_only_of_card(path: str, _mtime_ns: int, _size: int) -> Optional[SizeOnlyModel]:
    from .weights import read_card

    return SizeOnlyModel.from_card(read_card(path))


__all__ = ["NoduleMeasurement", "NoduleResult", "SUMMARY_KEYS", "axial_axes", "measure_nodule", "measure_segmentation",
           "NO_NODULE_WARNING"]
