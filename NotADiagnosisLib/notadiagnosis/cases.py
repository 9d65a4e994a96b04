"""One case: a CT and the points on it, read and checked before any model is loaded.

The command line's single-CT path and each row of a cohort go through :func:`read_case` (no model
needed) and then :func:`classify_case`, so both refuse the same inputs with the same sentences, and
both produce the same result rows. The single-CT command loads the model while the CT's pixels are
read (``before_pixels``): a mistake in the points, the CT's path or its headers costs no model load;
one found in its pixels (a point outside it, no usable data) is reported as before, once that load ends.
"""
from __future__ import annotations

import os
from typing import Callable, Optional, Sequence

import numpy as np
import SimpleITK as sitk

from .centring import from_measurements
from .ct_reader import check_ct_values, read_ct
from .errors import InputError, PointOutsideImageError
from .geometry import is_inside, lps_to_ras
from .points import LabelledPoint, parse_point, read_points
from .progress import progress_bar
from .results import result_rows, write_saliency_maps, write_segmentations


def collect_points(point_args: Sequence[str], point_files: Sequence[str | os.PathLike], lps: bool) -> list:
    """Points from ``--point`` values and ``--points`` files, in LPS, in the order given."""
    points = [parse_point(text, lps=lps, label=f"P{i}") for i, text in enumerate(point_args, start=1)]
    for file in point_files:
        points.extend(read_points(file, coordinate_system="LPS" if lps else None))
    if not points:
        raise InputError("No points were given; pass --point R,A,S (repeatable) or --points FILE.")
    return points


def read_case(ct: str | os.PathLike, series_uid: Optional[str], points: Sequence[LabelledPoint],
              progress: bool = False, before_pixels: Optional[Callable[[], None]] = None) -> sitk.Image:
    """Read the CT and check that it holds data and that every point lies inside it; returns the CT.
    ``before_pixels``: called when the CT's pixels begin to be read (:func:`.ct_reader.read_ct`)."""
    image = read_ct(ct, series_uid=series_uid, progress=progress, before_pixels=before_pixels)
    check_ct_values(image, f"The CT {ct}")
    check_points_inside(image, points)
    return image


def classify_case(classifier, image: sitk.Image, points: Sequence[LabelledPoint], tta: bool = True,
                  batch_size: int = 32, saliency_dir: Optional[str | os.PathLike] = None,
                  progress: bool = False, measure: bool = True,
                  segmentation_dir: Optional[str | os.PathLike] = None, at_click: bool = False) -> list:
    """Classify (and, unless ``measure`` is False, find, segment and measure the nodule at) every point
    of a read case, writing its saliency maps and label maps when asked; returns its result rows.

    Each point is classified at the centre of the nodule found near it (the measurement's finder
    result, so each nodule is found once), or at the point itself with ``at_click``; saliency maps
    show the cube that was classified. The single-CT command and the cohort mode both call this, so
    whatever a result row holds is computed the same way for both.
    """
    nodules = measure_points(image, points, classifier.card, progress=progress) if measure else None
    centrings = None
    if nodules is not None and not at_click:
        centrings = from_measurements(image, [p.point_lps for p in points], nodules)
    predictions = classifier.predict(image, [p.point_lps for p in points], batch_size=batch_size, tta=tta,
                                     progress=progress, at_click=at_click, centrings=centrings)
    saliency = (write_saliency_maps(classifier, image, points, saliency_dir, progress=progress,
                                    centres_lps=[p.centre_lps for p in predictions]) if saliency_dir else {})
    if nodules is None:
        return result_rows(points, predictions, saliency)
    segmentations = write_segmentations(nodules, points, segmentation_dir) if segmentation_dir else {}
    return result_rows(points, predictions, saliency, nodules, segmentations)


def measure_points(image: sitk.Image, points: Sequence[LabelledPoint], card: Optional[dict], progress: bool = False) -> list:
    """``measure.measure_nodule`` at every point, with the size-only model of ``card``; one result per point."""
    from .measure import measure_nodule
    from .references import SizeOnlyModel

    size_only = SizeOnlyModel.from_card(card)
    return [measure_nodule(image, point.point_lps, model_card=card, size_only=size_only)
            for point in progress_bar(points, desc="Measuring nodules", unit="point", disable=not progress)]


def check_points_inside(image: sitk.Image, points: Sequence[LabelledPoint]) -> None:
    """Refuse, by label, the first point that lies outside the CT, saying where the CT is (RAS)."""
    for point in points:
        if not is_inside(image, point.point_lps):
            r, a, s = point.point_ras
            raise PointOutsideImageError(
                f"Point {point.label} (RAS {r:.1f}, {a:.1f}, {s:.1f} mm) lies outside the CT, which spans "
                f"{ras_extent(image)}; check the coordinates and whether they are RAS or LPS (--lps)."
            )


def ras_extent(image: sitk.Image) -> str:
    """The CT's bounding box in RAS mm as readable text."""
    size = np.array(image.GetSize()) - 1
    corners = [image.TransformContinuousIndexToPhysicalPoint([float(c) for c in corner])
               for corner in np.array(np.meshgrid(*[[0, n] for n in size])).reshape(3, -1).T]
    ras = lps_to_ras(np.array(corners))
    low, high = ras.min(axis=0), ras.max(axis=0)
    return ", ".join(f"{axis} {lo:.0f} to {hi:.0f}" for axis, lo, hi in zip("RAS", low, high))


def describe_image(image: sitk.Image) -> str:
    """Size and spacing of a CT as one short phrase."""
    size = "x".join(str(n) for n in image.GetSize())
    spacing = "x".join(f"{s:.2f}" for s in image.GetSpacing())
    return f"{size} voxels, {spacing} mm"
