"""Property-based test: extract_patch never crashes and always returns a finite 64³ patch."""
from __future__ import annotations

import numpy as np
import SimpleITK as sitk
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from helpers import rotation_matrix
from notadiagnosis import extract_patch

spacings = st.floats(min_value=0.3, max_value=6.0, allow_nan=False)
sizes = st.integers(min_value=1, max_value=48)
# Rounded: denormal components (1e-308) make ITK's SVD of the direction matrix fail, and no scanner
# writes those; the library refuses such a geometry with an InputError (tested in test_geometry.py).
unit = st.floats(min_value=-1.0, max_value=1.0, allow_nan=False).map(lambda v: round(v, 6))
fractions = st.floats(min_value=0.0, max_value=1.0, allow_nan=False)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    size=st.tuples(sizes, sizes, sizes),
    spacing=st.tuples(spacings, spacings, spacings),
    axis=st.tuples(unit, unit, unit).filter(lambda v: np.linalg.norm(v) > 1e-3),
    # Denormal angles (1e-300) make ITK's SVD of the direction matrix fail; no scanner writes those.
    angle=st.floats(min_value=-180.0, max_value=180.0, allow_nan=False).map(lambda a: 0.0 if abs(a) < 1e-6 else a),
    flip=st.sampled_from([1.0, -1.0]),
    origin=st.tuples(*(st.floats(min_value=-500.0, max_value=500.0, allow_nan=False),) * 3),
    where=st.tuples(fractions, fractions, fractions),
    seed=st.integers(min_value=0, max_value=2**16),
)
def test_extract_patch_returns_finite_64_cube_for_any_geometry(size, spacing, axis, angle, flip, origin, where, seed):
    direction = rotation_matrix(axis, angle) @ np.diag([1.0, 1.0, flip])  # rotations and a mirrored frame
    array = np.random.default_rng(seed).integers(-1024, 3000, size=tuple(reversed(size))).astype(np.int16)
    image = sitk.GetImageFromArray(array)
    image.SetSpacing(spacing)
    image.SetOrigin(origin)
    image.SetDirection(direction.ravel().tolist())
    # A point anywhere within the hull of the image's voxel centres.
    index = [w * (n - 1) for w, n in zip(where, size)]
    point = image.TransformContinuousIndexToPhysicalPoint(index)
    patch = extract_patch(image, point)
    assert patch.array_hu.shape == (64, 64, 64)
    assert patch.array_hu.dtype == np.float32
    assert np.all(np.isfinite(patch.array_hu))
    assert 0.0 <= patch.outside_fraction < 1.0
    assert patch.array_hu.min() >= -1024.0 and patch.array_hu.max() <= 3000.0
