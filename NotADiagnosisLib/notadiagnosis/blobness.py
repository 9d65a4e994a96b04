"""Nodule or vessel? A Hessian blob test of the finder's candidate at the candidate's own scale.

The finder's openings cut lung vessels into compact pieces that pass its shape tests (3-8 mm chunks
of a vessel, a bend, a branching): clicked on a vessel, it would measure one as a nodule. What tells
them apart is not the piece but what it is a piece of: a vessel goes on beyond the piece, a nodule
does not. Seen at the candidate's scale (Gaussians of ``BLOB_SIGMA_FRACTIONS`` x its equivalent
radius), the CT at the candidate's centre is

* a **blob** for a nodule: the three eigenvalues of the Hessian negative (bright along every axis) and
  of similar size; vessels attached to a nodule are thinner than it, so a juxtavascular nodule stays
  a blob at its own scale;
* a **tube** for a vessel: one eigenvalue near zero (along the vessel), whatever the piece's shape.

``blobness`` = -l1 / |l3| (eigenvalues sorted by magnitude, l1 the smallest; negative when the
smallest curvature is not bright, -1 when the centre is not on bright tissue at all), the larger of
the scales: about 1 for a sphere, 0.45-0.5 for a 3:1 ellipsoid (the finder's most elongated nodule),
near 0 or below for a tube. Two scales because a lobulated or elongated nodule is a clearer blob at
its full radius, a nodule among other structures at a smaller one. The CT outside the lung is replaced by the lung's own air before the derivatives, so a
nodule against the chest wall, mediastinum or diaphragm is not seen as part of a plate.

How sure the test must be depends on where the point is. On the candidate (within
``ON_CANDIDATE_MM``: the user points at it), only a clear tube is refused (blobness below
``MIN_BLOBNESS_ON``): small real nodules in 2.5-3 mm slices, blurred along z and among vessels, are
often only half blobs. Off the candidate (the finder reached out to a compact piece up to 10 mm
away: the point itself is on something else, most often the vessel the piece belongs to), the piece
must be clearly a blob to be taken for the nodule meant (at least ``MIN_BLOBNESS_OFF``).

Some vessel pieces are half blobs at their centre (a knot where a vessel branches or bulges). What
gives them away is that they **go on** along their axis (:func:`continuation` at least
``CONTINUES_AT``: the CT beyond both ends, along the direction of least curvature, is still about as
bright as the candidate's centre): such a candidate must be a blob by ``CONTINUED_MARGIN`` more than
the point's threshold. A nodule with a vessel through it goes on too, but it is a clear blob at its
own scale (its vessels are thinner), so it is still taken.

The thresholds were chosen on clicks on vessels of the CPTAC chest CT (the training renders'
background) and on training-split insertion renders (clicks at their centres and, for the
continuation, 2-8 mm outside them), and checked on LIDC-IDRI-0001's vessels and the test split
(Training/results/nodule-measurement/README.md, "Clicks on vessels").
"""
from __future__ import annotations

from typing import Optional, Tuple

import numpy as np

#: The Gaussians' sigmas, as fractions of the candidate's equivalent radius (at least MIN_SIGMA_MM).
BLOB_SIGMA_FRACTIONS = (0.7, 1.0)
MIN_SIGMA_MM = 1.0
#: Continuation along the candidate's axis (see :func:`continuation`): smoothing as a fraction of its
#: equivalent radius, and how far beyond its ends the CT is read.
CONTINUATION_SIGMA_FRACTION = 0.5
CONTINUATION_BEYOND_MM = 3.0
#: Below these (at every scale) the candidate is a piece of a tube (a vessel), not a nodule: with the
#: point on the candidate (within ON_CANDIDATE_MM of it), and with the point off it.
MIN_BLOBNESS_ON = 0.15
MIN_BLOBNESS_OFF = 0.4
ON_CANDIDATE_MM = 2.0
#: A candidate whose continuation reaches CONTINUES_AT goes on along its axis as a vessel: it must be a
#: blob by CONTINUED_MARGIN more than the point's threshold (MIN_BLOBNESS_ON or MIN_BLOBNESS_OFF).
CONTINUES_AT = 0.5
CONTINUED_MARGIN = 0.15
VESSEL_WARNING = ("the point is on or near a vessel: what was found {where} {why}, not a nodule: nothing was measured; "
                  "place the point on the nodule itself, or classify at the click (--at-click)")
TUBULAR = "is tubular at its own scale (blobness {blobness:.2f}, a nodule {minimum:.2f} or more)"
GOES_ON = ("goes on beyond both its ends along its axis as a vessel does (continuation {continuation:.2f}, a nodule "
           "below {limit:.2f}) and is not clearly a blob (blobness {blobness:.2f}, {minimum:.2f} or more needed then)")


def blobness(hu: np.ndarray, lung: np.ndarray, candidate: np.ndarray, spacing_mm: float) -> float:
    """The blobness of ``candidate`` (a boolean mask) in the CT ``hu`` (HU on an isotropic grid of
    ``spacing_mm``, z y x), with ``lung`` the lung mask (the CT outside it reads as the lung's air).

    Scale-normalised Hessian at the candidate's centroid (nearest voxel), Gaussian derivatives by
    separable kernels over +-3 sigma (the grid's edge extended by the lung's air)."""
    return _Candidate(hu, lung, candidate, spacing_mm).blobness()


def continuation(hu: np.ndarray, lung: np.ndarray, candidate: np.ndarray, spacing_mm: float) -> float:
    """How far ``candidate`` goes on beyond its own ends along its axis, as a vessel does (arguments as
    :func:`blobness`).

    The axis is the direction of least curvature of the Hessian at ``BLOB_SIGMA_FRACTIONS[0]`` x the
    equivalent radius (along a tube, the tube). The CT, smoothed at ``CONTINUATION_SIGMA_FRACTION`` x that
    radius (a Gaussian about as wide as the candidate's cross-section), is read at the centroid and
    ``CONTINUATION_BEYOND_MM`` beyond the candidate's farthest voxel on either side along the axis,
    each as its excess over the lung's air: the mean of the two ends over the centre. About 1 for a
    piece of a tube (the tube goes on both ways), near 0 for a nodule alone or an elongated one (its
    ends are lung). A nodule with a vessel through it reads high too (the vessel goes on), but it is a
    clear blob at its own scale, which is why :func:`looks_like_vessel` asks only for more blobness
    when a candidate goes on."""
    return _Candidate(hu, lung, candidate, spacing_mm).continuation()


def looks_like_vessel(hu: np.ndarray, lung: np.ndarray, candidate: np.ndarray, spacing_mm: float,
                      point_gap_mm: float) -> Optional[str]:
    """The vessel warning when ``candidate`` is a piece of a tube rather than a nodule, else None.

    ``point_gap_mm``: how far the user's point lies outside the candidate (0 inside); the other
    arguments as :func:`blobness`. The continuation is computed only when the blobness leaves the
    answer open (between the candidate's threshold and that threshold raised for a piece that goes on)."""
    on_candidate = point_gap_mm <= ON_CANDIDATE_MM
    minimum = MIN_BLOBNESS_ON if on_candidate else MIN_BLOBNESS_OFF
    if_going_on = minimum + CONTINUED_MARGIN
    shape = _Candidate(hu, lung, candidate, spacing_mm)
    value = shape.blobness()
    where = "at the point" if on_candidate else f"{point_gap_mm:.1f} mm from the point"
    if value < minimum:
        return VESSEL_WARNING.format(where=where, why=TUBULAR.format(blobness=value, minimum=minimum))
    if value >= if_going_on:
        return None
    goes_on = shape.continuation()
    if goes_on < CONTINUES_AT:
        return None
    why = GOES_ON.format(continuation=goes_on, limit=CONTINUES_AT, blobness=value, minimum=if_going_on)
    return VESSEL_WARNING.format(where=where, why=why)


class _Candidate:
    """The finder's candidate and the CT around it, the lung's air in place of what lies outside the lung."""

    def __init__(self, hu: np.ndarray, lung: np.ndarray, candidate: np.ndarray, spacing_mm: float):
        # Imported here, not at the top: the finder imports this module. Its lung air (below LUNG_AIR_HU; the
        # median, or AERATED_LUNG_HU when the crop has none) replaces the CT outside the lung.
        from .finder import AERATED_LUNG_HU, LUNG_AIR_HU

        self.hu, self.lung, self.spacing_mm = hu, lung, spacing_mm
        self.voxels = np.argwhere(candidate)
        self.radius_mm = (3.0 * len(self.voxels) / (4.0 * np.pi)) ** (1.0 / 3.0) * spacing_mm
        self.centroid = self.voxels.mean(axis=0)
        self.centre = np.round(self.centroid).astype(int)
        self.sigmas = [max(MIN_SIGMA_MM, fraction * self.radius_mm) / spacing_mm for fraction in BLOB_SIGMA_FRACTIONS]  # voxels
        self.blob_half = int(np.ceil(3.0 * max(self.sigmas)))
        near = tuple(slice(max(c - self.blob_half, 0), c + self.blob_half + 1) for c in self.centre)
        air = lung[near] & (hu[near] < LUNG_AIR_HU)
        self.fill = float(np.median(hu[near][air])) if air.any() else AERATED_LUNG_HU
        self._crops: dict = {}

    def _crop(self, half: int) -> np.ndarray:
        """The cube of side 2 half + 1 voxels centred on the centroid's voxel, the lung's air outside the lung
        and beyond the grid's edge."""
        if half not in self._crops:
            low, high = self.centre - half, self.centre + half + 1
            inner_low, inner_high = np.maximum(low, 0), np.minimum(high, self.hu.shape)
            box = tuple(slice(a, b) for a, b in zip(inner_low, inner_high))
            crop = np.full((2 * half + 1,) * 3, self.fill, dtype=np.float64)
            crop[tuple(slice(a - l, b - l) for a, b, l in zip(inner_low, inner_high, low))] = np.where(
                self.lung[box], self.hu[box], self.fill)
            self._crops[half] = crop
        return self._crops[half]

    def _window(self, half: int, index: np.ndarray, sigma: float) -> np.ndarray:
        """The cube of ``half`` within +-3 sigma of the voxel ``index`` (caller's grid; kept inside the cube)."""
        reach = int(np.ceil(3.0 * sigma))
        at = np.clip(np.round(index).astype(int) - (self.centre - half), reach, 2 * half - reach)
        return self._crop(half)[tuple(slice(a - reach, a + reach + 1) for a in at)]

    def _eigen(self, sigma: float) -> Tuple[np.ndarray, np.ndarray]:
        """Eigenvalues (scale-normalised) and eigenvectors (columns, z y x) of the Hessian at the centroid's
        voxel at ``sigma`` (voxels), sorted by the eigenvalues' magnitude."""
        window = self._window(self.blob_half, self.centroid, sigma)
        values, vectors = np.linalg.eigh(_hessian(window, sigma) * sigma ** 2)
        order = np.argsort(np.abs(values))
        return values[order], vectors[:, order]

    def blobness(self) -> float:
        best = -1.0
        for sigma in self.sigmas:
            (l1, _l2, l3), _ = self._eigen(sigma)
            if l3 < 0:  # else not bright at this scale at all
                best = max(best, float(-l1 / abs(l3)))
        return best

    def continuation(self) -> float:
        _, vectors = self._eigen(self.sigmas[0])
        axis = vectors[:, 0]
        along = (self.voxels - self.centroid) @ axis
        beyond = CONTINUATION_BEYOND_MM / self.spacing_mm
        ends = [self.centroid + (float(along.max()) + beyond) * axis, self.centroid + (float(along.min()) - beyond) * axis]
        sigma = max(MIN_SIGMA_MM, CONTINUATION_SIGMA_FRACTION * self.radius_mm) / self.spacing_mm
        half = int(np.ceil(max(float(np.max(np.abs(along))) + beyond + 3.0 * sigma + 1.0, self.blob_half)))

        def excess(index: np.ndarray) -> float:  # the smoothed CT's excess over the lung's air
            return _smoothed(self._window(half, index, sigma), sigma) - self.fill

        centre = excess(self.centroid)
        return float(np.mean([excess(end) for end in ends]) / centre) if centre > 0.0 else 0.0


def _hessian(crop: np.ndarray, sigma: float) -> np.ndarray:
    """The Hessian (3x3, z y x, per voxel^2) of the Gaussian-smoothed cube at its centre voxel."""
    half = crop.shape[0] // 2
    x = np.arange(-half, half + 1, dtype=np.float64)
    g0 = np.exp(-x ** 2 / (2.0 * sigma ** 2))
    g0 /= g0.sum()
    kernels = (g0, -x / sigma ** 2 * g0, (x ** 2 / sigma ** 4 - 1.0 / sigma ** 2) * g0)  # G, G', G''
    # Contract x, then y, then z with each derivative order (separable Gaussian derivatives).
    along_x = [crop @ k for k in kernels]                                   # (z, y) per x-order
    hessian = np.empty((3, 3))
    for i in range(3):
        for j in range(i, 3):
            orders = [0, 0, 0]
            orders[i] += 1
            orders[j] += 1
            value = kernels[orders[0]] @ (along_x[orders[2]] @ kernels[orders[1]])
            hessian[i, j] = hessian[j, i] = value
    return hessian


def _smoothed(window: np.ndarray, sigma: float) -> float:
    """The Gaussian-smoothed value (``sigma`` voxels) at the centre voxel of a cube of odd side."""
    half = window.shape[0] // 2
    x = np.arange(-half, half + 1, dtype=np.float64)
    g = np.exp(-x ** 2 / (2.0 * sigma ** 2))
    g /= g.sum()
    return float(g @ (window @ g) @ g)
