"""`nadtrain input-masks` and `nadtrain train --input-mask nodule`: the stored regions give exactly the
library's masked patch, they resume and refuse another dataset or margin, and a masked run records its
masking in the card's preprocessing block (which the library then applies at inference)."""
from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from notadiagnosis.errors import NotADiagnosisError
from notadiagnosis.masking import mask_surroundings
from notadiagnosis.weights import read_card
from nadtrain.dataset import load_dataset
from nadtrain.evaluate import evaluate_run
from nadtrain.input_masks import (apply_input_masks, compute_input_masks, load_input_masks, mask_params,
                                  masked_patches)
from nadtrain.toy import make_toy_dataset
from nadtrain.train import TrainConfig, train

MARGIN_MM = 3.0


@pytest.fixture(scope="module")
def toy_dataset(tmp_path_factory) -> Path:
    return make_toy_dataset(tmp_path_factory.mktemp("toy") / "dataset", n_nodules=16, renders=2, seed=0)


@pytest.fixture(scope="module")
def cache(toy_dataset, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("masks") / "nodule-m3"
    compute_input_masks(toy_dataset, out, MARGIN_MM, indices=[0, 1, 2], progress=False)
    compute_input_masks(toy_dataset, out, MARGIN_MM, progress=False)  # resumes: the rest only
    return out


def test_stored_regions_give_the_library_masked_patch_and_the_dataset_is_untouched(toy_dataset, cache):
    data = load_dataset(toy_dataset)
    before = data.patches_hu.copy()
    masks = load_input_masks(cache, data, MARGIN_MM)
    assert masks.computed.all()
    manifest = json.loads((cache / "input-masks.json").read_text())
    assert len(manifest["chunks"]) == 2  # the first three, then the rest: nothing computed twice
    indices = np.arange(len(data))
    found = apply_input_masks(data, masks, indices)
    for i in indices:
        expected, expected_found = mask_surroundings(before[i], MARGIN_MM)
        np.testing.assert_array_equal(data.patches_hu[i], expected)
        assert found[i] == expected_found
    np.testing.assert_array_equal(load_dataset(toy_dataset).patches_hu, before)  # the files are not touched
    # Stored or computed now: the same patches.
    np.testing.assert_array_equal(masked_patches(before[:4], indices[:4], mask_params(MARGIN_MM), masks),
                                  masked_patches(before[:4], indices[:4], mask_params(MARGIN_MM), None))


def test_masks_of_another_margin_or_dataset_or_missing_ones_are_refused(toy_dataset, cache, tmp_path):
    data = load_dataset(toy_dataset, load_patches=False)
    with pytest.raises(NotADiagnosisError, match="margin"):
        load_input_masks(cache, data, MARGIN_MM + 1.0)
    other = make_toy_dataset(tmp_path / "other", n_nodules=8, renders=1, seed=1)
    with pytest.raises(NotADiagnosisError, match="another dataset"):
        load_input_masks(cache, load_dataset(other, load_patches=False), MARGIN_MM)
    partial = tmp_path / "partial"
    compute_input_masks(toy_dataset, partial, MARGIN_MM, indices=[0], progress=False)
    loaded = load_dataset(toy_dataset)
    with pytest.raises(NotADiagnosisError, match="no input mask"):
        apply_input_masks(loaded, load_input_masks(partial, loaded, MARGIN_MM), [0, 1])


def test_a_masked_run_records_its_masking_and_is_evaluated_on_masked_patches(toy_dataset, cache, tmp_path):
    config = TrainConfig(dataset=str(toy_dataset), out=str(tmp_path / "run"), architecture="resnet3d-tiny", epochs=1,
                         batch_size=4, patience=1, device="cpu", progress=False, calibration_tta=False,
                         input_mask="nodule", mask_margin_mm=MARGIN_MM, input_mask_cache=str(cache))
    with pytest.raises(NotADiagnosisError, match="input-mask-cache"):
        train(replace(config, input_mask_cache=None))
    train(config)
    card = read_card(tmp_path / "run" / "model.json")
    assert card["preprocessing"]["input_mask"] == mask_params(MARGIN_MM)
    assert card.preprocessing.input_mask_margin_mm == MARGIN_MM
    assert card["training"]["recipe"]["input_mask"] == "nodule"
    assert card["training"]["recipe"]["mask_margin_mm"] == MARGIN_MM
    assert "input_mask_cache" not in card["training"]["recipe"]  # a local path: not part of the recipe
    # Evaluation scores masked patches: the same with the stored masks as with masks computed now.
    stored = evaluate_run(tmp_path / "run", split_name="val", n_boot=0, tta=False, progress=False,
                          out=tmp_path / "eval-stored")
    computed = evaluate_run(tmp_path / "run", split_name="val", n_boot=0, tta=False, progress=False,
                            out=tmp_path / "eval-computed", input_mask_cache=tmp_path / "no-such-cache")
    assert stored["overall"]["model"]["brier"] == pytest.approx(computed["overall"]["model"]["brier"], abs=1e-9)
