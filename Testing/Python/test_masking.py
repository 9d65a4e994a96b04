"""Nodule-masked input (notadiagnosis.masking): on a generated patch the nodule and its margin are kept voxel
for voxel, everything farther becomes the fill value, a patch without a nodule keeps the stated ball, and a
model card that asks for masked input is served masked (and refused when it asks for another masking)."""
from __future__ import annotations

import numpy as np
import pytest

from helpers import save_random_model
from notadiagnosis import Classifier
from notadiagnosis.card import ModelCard, preprocessing_block
from notadiagnosis.errors import WeightsError
from notadiagnosis.geometry import extract_patch
from notadiagnosis.masking import (DEFAULT_MARGIN_MM, FILL_HU, NOT_FOUND_RADIUS_MM, apply_kept_region, kept_region,
                                   mask_surroundings)
from notadiagnosis.preprocessing import normalize_hu
from notadiagnosis.weights import load_model, save_model

SIZE = 64
CENTRE = SIZE // 2
NODULE_RADIUS_MM = 5.0
VESSEL_OFFSET_MM = 20.0  # a vessel this far from the nodule's centre: well beyond radius + margin


def _distance_mm(offset=(0.0, 0.0, 0.0)) -> np.ndarray:
    z, y, x = np.ogrid[:SIZE, :SIZE, :SIZE]
    return np.sqrt((z - CENTRE - offset[0]) ** 2 + (y - CENTRE - offset[1]) ** 2 + (x - CENTRE - offset[2]) ** 2)


def _lung(seed: int = 0) -> np.ndarray:
    """Noisy aerated lung in HU, int16 (as datasets store patches)."""
    return (-870.0 + np.random.default_rng(seed).normal(0.0, 20.0, (SIZE,) * 3)).astype(np.int16)


@pytest.fixture(scope="module")
def nodule_patch() -> np.ndarray:
    """A solid 10 mm nodule at the patch centre and a 3 mm vessel running along z 20 mm away from it."""
    patch = _lung()
    patch[_distance_mm() <= NODULE_RADIUS_MM] = 30
    z, y, x = np.ogrid[:SIZE, :SIZE, :SIZE]
    vessel = np.broadcast_to((y - CENTRE - VESSEL_OFFSET_MM) ** 2 + (x - CENTRE) ** 2 <= 1.5 ** 2, patch.shape)
    patch[vessel] = 40
    return patch


def test_the_nodule_and_its_margin_are_kept_and_everything_farther_is_the_fill(nodule_patch):
    original = nodule_patch.copy()
    masked, found = mask_surroundings(nodule_patch, DEFAULT_MARGIN_MM)
    assert found
    np.testing.assert_array_equal(nodule_patch, original)  # the input is not modified
    assert masked.dtype == nodule_patch.dtype and masked.shape == nodule_patch.shape
    distance = _distance_mm()
    inside_margin = distance <= NODULE_RADIUS_MM + DEFAULT_MARGIN_MM - 1.0  # 1 mm for the finder's edge
    np.testing.assert_array_equal(masked[inside_margin], nodule_patch[inside_margin])
    beyond = distance >= NODULE_RADIUS_MM + DEFAULT_MARGIN_MM + 2.0
    assert np.all(masked[beyond] == FILL_HU)
    assert not np.any(masked == 40)  # the vessel is gone
    # Every voxel is either untouched or the fill: nothing in between.
    assert np.all((masked == nodule_patch) | (masked == FILL_HU))


def test_a_wider_margin_keeps_more_and_zero_keeps_the_segmentation_only(nodule_patch):
    narrow, wide, none = (kept_region(nodule_patch, margin) for margin in (2.0, 6.0, 0.0))
    assert narrow.found and wide.found and none.found
    assert np.all(wide.keep[narrow.keep]) and wide.keep.sum() > narrow.keep.sum()
    assert np.all(narrow.keep[none.keep]) and none.keep.sum() > 0
    # With no margin the kept voxels are the finder's nodule: inside the drawn ball give or take its edge.
    assert np.all(_distance_mm()[none.keep] <= NODULE_RADIUS_MM + 1.0)


def test_without_a_nodule_the_ball_of_the_finders_search_radius_is_kept():
    patch = _lung(seed=1)
    region = kept_region(patch)
    assert not region.found
    distance = _distance_mm()
    np.testing.assert_array_equal(region.keep, distance <= NOT_FOUND_RADIUS_MM)
    masked, found = mask_surroundings(patch)
    assert not found
    np.testing.assert_array_equal(masked[distance <= NOT_FOUND_RADIUS_MM], patch[distance <= NOT_FOUND_RADIUS_MM])
    assert np.all(masked[distance > NOT_FOUND_RADIUS_MM] == FILL_HU)


def test_a_nodule_away_from_the_centre_is_not_what_is_kept():
    """The finder starts from the centre voxel: a nodule 25 mm away is beyond its search, so the rule for
    'nothing found' applies and the nodule is masked out."""
    patch = _lung(seed=2)
    patch[_distance_mm((0.0, 25.0, 0.0)) <= NODULE_RADIUS_MM] = 30
    masked, found = mask_surroundings(patch)
    assert not found
    assert not np.any(masked == 30)


def test_bad_patches_and_regions_are_refused(nodule_patch):
    with pytest.raises(ValueError, match="cubic"):
        kept_region(nodule_patch[:, :, :32])
    with pytest.raises(ValueError, match="margin"):
        kept_region(nodule_patch, -1.0)
    with pytest.raises(ValueError, match="shape"):
        apply_kept_region(nodule_patch, np.ones((SIZE, SIZE, 32), bool))


# -- a card with preprocessing.input_mask is served masked ---------------------------------------------
def _masked_card(margin_mm=DEFAULT_MARGIN_MM, **changes) -> dict:
    block = {"mode": "nodule", "margin_mm": margin_mm, "fill_hu": FILL_HU, "not_found_radius_mm": NOT_FOUND_RADIUS_MM,
             "function": "notadiagnosis.masking.mask_surroundings", **changes}
    return {"name": "m", "version": "0", "architecture": {"name": "resnet3d"}, "calibration": {"temperature": 1.0},
            "threshold": 0.5, "preprocessing": {**preprocessing_block(), "input_mask": block}}


def test_a_card_names_its_input_mask_and_other_maskings_are_refused():
    assert ModelCard.parse(_masked_card(), "card", files=False).preprocessing.input_mask_margin_mm == DEFAULT_MARGIN_MM
    plain = {**_masked_card(), "preprocessing": preprocessing_block()}
    assert ModelCard.parse(plain, "card", files=False).preprocessing.input_mask_margin_mm is None
    for bad in (_masked_card(mode="vessels"), _masked_card(margin_mm=-1.0), _masked_card(fill_hu=-1000.0),
                _masked_card(not_found_radius_mm=3.0)):
        with pytest.raises(WeightsError, match="input_mask"):
            ModelCard.parse(bad, "card", files=False)


def test_a_model_trained_on_masked_input_is_given_masked_patches(tmp_path):
    from notadiagnosis.synthetic import make_synthetic_chest_ct

    image, nodules = make_synthetic_chest_ct(seed=0)
    centre = nodules[0]["center_lps"]
    plain_path = save_random_model(tmp_path / "plain", seed=5)
    model, card = load_model(plain_path)
    masked_card = {key: value for key, value in card.to_dict().items() if key not in ("format", "weights", "onnx")}
    masked_card["preprocessing"]["input_mask"] = _masked_card()["preprocessing"]["input_mask"]
    masked_path = save_model(model, tmp_path / "masked" / "model.safetensors", masked_card)
    plain, masked = (Classifier.load(path, device="cpu", runtime="torch") for path in (plain_path, masked_path))
    patch = extract_patch(image, centre).array_hu
    expected = masked.predict_patches(normalize_hu(mask_surroundings(patch)[0])[None], tta=False)[0][0]
    at_centre = [classifier.predict(image, [centre], tta=False, at_click=True)[0].probability
                 for classifier in (masked, plain)]
    assert at_centre[0] == pytest.approx(expected, abs=1e-5)
    assert at_centre[1] == pytest.approx(plain.predict_patches(normalize_hu(patch)[None], tta=False)[0][0], abs=1e-5)
    assert abs(at_centre[0] - at_centre[1]) > 1e-4  # the masking changed what the network saw
