"""Where a point is classified: at the centre of the nodule found near the click (the default), or at the click.

Training's patches are centred on each nodule's centroid, so the model answers best, and the same
way wherever the user clicked on the nodule, when its cube is centred there too. The centre is the
one the nodule finder refines, the same implementation the measurements use
(:func:`notadiagnosis.finder.find_nodule`; :func:`~notadiagnosis.finder.find_nodule_centre` when only the
centre is wanted, as here, without the measurements' extra work). When no nodule is found near the click the point is classified where it was
placed, with a warning that says so.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import List, Optional, Sequence, Tuple

import numpy as np
import SimpleITK as sitk

from .finder import NOT_CT_WARNING, SEARCH_RADIUS_MM, NoduleSegmentation, find_nodule_centre, looks_like_ct
from .geometry import ArrayLike, _as_point, is_inside

NOT_CENTRED_WARNING = ("no nodule found within {radius:g} mm of the point: classified at the point itself, so the "
                       "probability depends on where the point was placed")


@dataclass
class Centring:
    """Where one point is classified.

    ``click_lps`` is the point as given; ``centre_lps`` the centre of the classified cube: the
    found nodule's refined centre when ``centred`` is true, else the click itself.
    """

    click_lps: Tuple[float, float, float]
    centre_lps: Tuple[float, float, float]
    centred: bool
    warnings: List[str] = field(default_factory=list)

    @property
    def shift_mm(self) -> float:
        """Distance from the click to the classified centre (mm)."""
        return float(np.linalg.norm(np.subtract(self.centre_lps, self.click_lps)))


def at_click(point_lps: ArrayLike, warnings: Optional[List[str]] = None) -> Centring:
    """Classify at the point as given."""
    point = tuple(float(v) for v in _as_point(point_lps))
    return Centring(click_lps=point, centre_lps=point, centred=False, warnings=list(warnings or []))


def from_segmentation(point_lps: ArrayLike, segmentation: Optional[NoduleSegmentation], looks_like_a_ct: bool = True) -> Centring:
    """The centring for a finder result: at its refined centre, or at the click with a warning when
    nothing was found (no warning for an image that is not a CT: the classifier warns of that already)."""
    return _from_centre(point_lps, None if segmentation is None else segmentation.centre_lps, looks_like_a_ct)


def _from_centre(point_lps: ArrayLike, centre_lps: Optional[np.ndarray], looks_like_a_ct: bool = True) -> Centring:
    """At ``centre_lps`` (the found nodule's), or at the click with a warning when it is None."""
    if centre_lps is None:
        return at_click(point_lps, [NOT_CENTRED_WARNING.format(radius=SEARCH_RADIUS_MM)] if looks_like_a_ct else [])
    point = tuple(float(v) for v in _as_point(point_lps))
    return Centring(click_lps=point, centre_lps=tuple(float(v) for v in centre_lps), centred=True)


def from_measurements(image: sitk.Image, points_lps: Sequence[ArrayLike], nodules: Sequence) -> List[Centring]:
    """One centring per point from its :func:`notadiagnosis.measure_nodule` result (same order), so a
    nodule measured is not searched for again to be classified."""
    # measure_nodule looked at the whole image already and said so in each result when it is no CT.
    looks_like_a_ct = not any(NOT_CT_WARNING in nodule.warnings for nodule in nodules)
    return [from_segmentation(point_lps, nodule.segmentation, looks_like_a_ct) for point_lps, nodule in zip(points_lps, nodules)]


def centre_for_classification(image: sitk.Image, point_lps: ArrayLike, looks_like_a_ct: Optional[bool] = None) -> Centring:
    """Find the nodule near ``point_lps`` (LPS mm) and return where to classify it. The image is not modified.

    ``looks_like_a_ct``: :func:`~.finder.looks_like_ct` of the image when the caller knows it already
    (it looks at the whole image, so a caller with many points asks once)."""
    if not (looks_like_ct(image) if looks_like_a_ct is None else looks_like_a_ct):
        return from_segmentation(point_lps, None, looks_like_a_ct=False)
    if not is_inside(image, _as_point(point_lps)):  # nothing to find: the cube's outside fraction warns of it
        return at_click(point_lps)
    # Only the centre: the nodule's type, flags and label map (the measurements') are not worked out.
    return _from_centre(point_lps, find_nodule_centre(image, point_lps))


__all__ = ["Centring", "NOT_CENTRED_WARNING", "at_click", "centre_for_classification", "from_measurements",
           "from_segmentation"]
