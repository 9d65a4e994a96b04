"""Classifier: loading, device selection, batching, TTA, calibration, warnings, saliency."""
from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk

from helpers import add_sphere, make_ct, save_random_model
from notadiagnosis import Classifier, InputError, PointOutsideImageError
from notadiagnosis.classifier import CancelledError
from notadiagnosis.device import select_device


@pytest.fixture(scope="module")
def model_path(tmp_path_factory):
    return save_random_model(tmp_path_factory.mktemp("model"), seed=1, temperature=2.0)


@pytest.fixture(scope="module")
def classifier(model_path):
    return Classifier.load(model_path, device="cpu")


@pytest.fixture(scope="module")
def chest(tmp_path_factory):
    ct = make_ct(size=(160, 160, 60), spacing=(0.75, 0.75, 2.0), origin=(-60.0, -60.0, -60.0), background_hu=-850.0)
    array = sitk.GetArrayFromImage(ct)
    array[:, :, :10] = -1000  # air beside the body, as in any chest CT
    air = sitk.GetImageFromArray(array)
    air.CopyInformation(ct)
    ct = add_sphere(air, [0.0, 0.0, 0.0], 8.0, 30.0)
    return add_sphere(ct, [25.0, -20.0, 10.0], 4.0, 50.0)


POINTS = [[0.0, 0.0, 0.0], [25.0, -20.0, 10.0], [-30.0, 30.0, -20.0], [10.0, 10.0, 5.0], [-40.0, 5.0, 0.0]]


def test_batch_and_single_prediction_agree(classifier, chest):
    together = classifier.predict(chest, POINTS, batch_size=3)
    alone = [classifier.predict(chest, [p], batch_size=1)[0] for p in POINTS]
    assert len(together) == len(POINTS)
    for a, b in zip(together, alone):
        assert a.probability == pytest.approx(b.probability, abs=1e-5)
        assert a.uncertainty == pytest.approx(b.uncertainty, abs=1e-5)
        assert a.point_lps == b.point_lps


def test_predict_classifies_exactly_the_patches_training_would_see(classifier, chest):
    # predict normalises each patch into its batch; training normalises whole arrays: the same bits.
    from notadiagnosis.geometry import extract_patch
    from notadiagnosis.preprocessing import normalize_hu

    patches = np.stack([extract_patch(chest, point).array_hu for point in POINTS])
    _, _, logits = classifier.predict_patches(normalize_hu(patches, classifier.hu_min, classifier.hu_max))
    predicted = classifier.predict(chest, POINTS, batch_size=len(POINTS), at_click=True)
    np.testing.assert_array_equal([p.logit for p in predicted], logits)


def test_probabilities_use_the_card_temperature(classifier, chest):
    result = classifier.predict(chest, POINTS[:2], tta=False)
    for prediction in result:
        assert prediction.probability == pytest.approx(1.0 / (1.0 + np.exp(-prediction.logit / 2.0)), rel=1e-6)
        assert np.isnan(prediction.uncertainty)
        assert 0.0 <= prediction.probability <= 1.0


def test_tta_gives_an_uncertainty(classifier, chest):
    result = classifier.predict(chest, POINTS[:2], tta=True)
    assert all(np.isfinite(p.uncertainty) and p.uncertainty >= 0.0 for p in result)


def test_outside_fraction_and_warnings(classifier, chest):
    edge = classifier.predict(chest, [[-59.0, 0.0, 0.0]])[0]
    assert edge.outside_fraction > 0.3
    assert any("outside the CT" in w for w in edge.warnings)
    inside = classifier.predict(chest, [[0.0, 0.0, 0.0]])[0]
    assert inside.outside_fraction == 0.0 and inside.warnings == []
    lung = classifier.predict(chest, [[-30.0, 30.0, -20.0]])[0]
    assert any("not on tissue" in w for w in lung.warnings)


def test_image_that_is_not_ct_is_flagged(classifier):
    mri_like = add_sphere(make_ct(size=(80, 80, 40), spacing=(1.0, 1.0, 1.0), origin=(0, 0, 0), background_hu=300.0),
                          (40.0, 40.0, 20.0), 8.0, 900.0)
    prediction = classifier.predict(mri_like, [[40.0, 40.0, 20.0]])[0]
    assert any("Hounsfield" in w for w in prediction.warnings)


def test_thick_slices_are_flagged(classifier):
    thick = add_sphere(make_ct(size=(80, 80, 10), spacing=(0.8, 0.8, 6.0), origin=(0, 0, 0), background_hu=-1000.0),
                       (30.0, 30.0, 30.0), 8.0, 40.0)
    prediction = classifier.predict(thick, [[30.0, 30.0, 30.0]])[0]
    assert any("thick" in w for w in prediction.warnings)


@pytest.mark.parametrize("fill", [np.nan, np.inf, -500.0], ids=["all-nan", "all-infinite", "constant"])
def test_ct_without_usable_data_is_refused_not_scored(classifier, fill):
    array = np.full((30, 40, 40), fill, dtype=np.float32)
    empty = sitk.GetImageFromArray(array)
    with pytest.raises(InputError, match="no finite voxel|one value"):
        classifier.predict(empty, [[20.0, 20.0, 15.0]])


def test_integer_ct_constant_but_for_one_voxel_is_classified_and_a_constant_one_refused(classifier):
    from notadiagnosis.ct_reader import check_ct_values

    array = np.full((30, 40, 40), -1000, dtype=np.int16)
    array[1, 2, 3] = 40  # off the lattice check_ct_values looks at first
    almost = sitk.GetImageFromArray(array)
    assert check_ct_values(almost) == 0
    assert len(classifier.predict(almost, [[20.0, 20.0, 15.0]], at_click=True)) == 1
    array[1, 2, 3] = -1000
    with pytest.raises(InputError, match="one value"):
        classifier.predict(sitk.GetImageFromArray(array), [[20.0, 20.0, 15.0]], at_click=True)


def test_voxels_that_are_not_finite_are_counted_once_and_reported(classifier, monkeypatch):
    from notadiagnosis import classifier as classifier_module
    from notadiagnosis.ct_reader import check_ct_values

    array = np.full((30, 40, 40), -1000.0, dtype=np.float32)
    array[10:20, 10:30, 10:30] = 40.0
    array[5, 5, 5:8] = np.nan
    array[20, 30, 30] = np.inf
    image = sitk.GetImageFromArray(array)
    assert check_ct_values(image) == 4
    counted = []
    original = classifier_module.image_warnings_for
    monkeypatch.setattr(classifier_module, "image_warnings_for",
                        lambda image, non_finite=None: counted.append(non_finite) or original(image, non_finite))
    prediction = classifier.predict(image, [[20.0, 20.0, 15.0]], at_click=True)[0]
    assert counted == [4]  # the count check_ct_values made, not a second scan
    assert any(w.startswith("4 voxels of the CT are not finite") for w in prediction.warnings)


def test_point_outside_and_no_points_are_refused(classifier, chest):
    with pytest.raises(PointOutsideImageError):
        classifier.predict(chest, [[0.0, 0.0, 0.0], [500.0, 0.0, 0.0]])
    with pytest.raises(InputError, match="No points"):
        classifier.predict(chest, [])


def test_cancel_returns_nothing(classifier, chest):
    with pytest.raises(CancelledError):
        classifier.predict(chest, POINTS, batch_size=2, callback=lambda done, total: False)


def test_prediction_leaves_the_image_unchanged(classifier, chest):
    before = sitk.GetArrayFromImage(chest).copy()
    classifier.predict(chest, POINTS[:2])
    classifier.saliency(chest, POINTS[0])
    np.testing.assert_array_equal(sitk.GetArrayViewFromImage(chest), before)


def test_saliency_is_on_the_ct_grid_and_writable(classifier, chest, tmp_path):
    saliency = classifier.saliency(chest, POINTS[0])
    assert saliency.GetSpacing() == chest.GetSpacing()
    assert saliency.GetDirection() == chest.GetDirection()
    # Its origin lies on the CT's voxel lattice.
    index = chest.TransformPhysicalPointToContinuousIndex(saliency.GetOrigin())
    assert np.allclose(index, np.round(index), atol=1e-4)
    values = sitk.GetArrayViewFromImage(saliency)
    assert values.min() >= 0.0 and values.max() <= 1.0 + 1e-6 and values.max() > 0.0
    # The patch is 64 mm wide: about 64 / 0.75 voxels in-plane.
    assert 80 <= saliency.GetSize()[0] <= 90
    path = tmp_path / "saliency.nrrd"
    sitk.WriteImage(saliency, str(path))
    assert sitk.ReadImage(str(path)).GetSize() == saliency.GetSize()


def test_auto_device_says_which():
    device, description = select_device("auto")
    assert description.startswith(device.type)
    with pytest.raises(InputError):
        select_device("tpu")


def test_load_without_arguments_gives_the_bundled_default(chest):
    classifier = Classifier.load(device="cpu")
    assert classifier.card["name"] == "default"
    assert classifier.threshold == classifier.card["threshold"]
    prediction = classifier.predict(chest, [[0.0, 0.0, 0.0]])[0]
    assert np.isfinite(prediction.logit)
    assert prediction.probability == pytest.approx(1.0 / (1.0 + np.exp(-prediction.logit)), rel=1e-6)


@pytest.mark.parametrize(
    "points, message",
    [
        ([[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]], "3 coordinates each"),
        ([1.0, 2.0, 3.0, 4.0, 5.0, 6.0], "3 coordinates each"),
        ([[0.0, 0.0, float("nan")]], "not a finite number"),
        ([["a", "b", "c"]], "must be numbers"),
    ],
)
def test_malformed_point_lists_are_refused_not_reshaped(classifier, chest, points, message):
    with pytest.raises(InputError, match=message):
        classifier.predict(chest, points)


def test_one_point_of_three_coordinates_is_one_point(classifier, chest):
    single = classifier.predict(chest, [0.0, 0.0, 0.0])
    assert len(single) == 1 and single[0].point_lps == (0.0, 0.0, 0.0)


@pytest.mark.parametrize(
    "image, message",
    [
        (np.zeros((10, 10, 10), dtype=np.int16), "Expected a SimpleITK image, got ndarray"),
        ("chest.nrrd", "read the file first"),
        (sitk.Image([20, 20], sitk.sitkInt16), "3D image, got 2D"),
        (sitk.Image([20, 20, 20], sitk.sitkVectorFloat32, 3), "several components"),
    ],
)
def test_what_is_not_a_3d_ct_image_is_refused_clearly(classifier, image, message):
    with pytest.raises(InputError, match=message):
        classifier.predict(image, [[0.0, 0.0, 0.0]])
    with pytest.raises(InputError, match=message):
        classifier.saliency(image, [0.0, 0.0, 0.0])


def test_nan_voxels_are_read_as_air_with_a_warning(classifier, chest):
    array = sitk.GetArrayFromImage(chest).astype(np.float32)
    with_nan = array.copy()
    with_nan[:, :, 100:] = np.nan  # x >= 100 voxels: the right part of the image
    image = sitk.GetImageFromArray(with_nan)
    image.CopyInformation(chest)
    as_air = array.copy()
    as_air[:, :, 99:] = -1000.0  # the NaNs and their interpolated neighbours
    air = sitk.GetImageFromArray(as_air)
    air.CopyInformation(chest)
    point = [[10.0, 0.0, 0.0]]  # its cube reaches x = 42 mm (voxel 136)
    got = classifier.predict(image, point)[0]
    assert np.isfinite(got.probability)
    assert any("not finite" in w for w in got.warnings)
    # Extraction fills the non-finite voxels (and their interpolated neighbours) with air, like training.
    expected = classifier.predict(air, point)[0]
    assert got.logit == pytest.approx(expected.logit, abs=1e-5)
