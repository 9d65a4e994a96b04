"""The bundled default model still gives, for fixed generated patches, the probabilities that
`nadtrain export` recorded in its card (so a re-save, a changed preprocessing constant, a changed
TTA or a different architecture build cannot slip through)."""
from __future__ import annotations

import numpy as np
import pytest

from notadiagnosis.classifier import Classifier
from notadiagnosis.errors import NoDefaultModelError
from notadiagnosis.preprocessing import normalize_hu
from notadiagnosis.weights import default_model_path
from nadtrain.export import REFERENCE_GENERATOR, reference_patches

# float32 convolutions differ in the last bits between CPUs and thread counts; a real change of
# weights, preprocessing or TTA moves probabilities by far more than this.
TOLERANCE = 1e-4


def _bundled() -> Classifier:
    # The default model ships with the package: its absence is a failure, not a skip.
    try:
        default_model_path()
    except NoDefaultModelError as error:
        pytest.fail(f"the bundled default model is missing: {error}")
    return Classifier.load(device="cpu")  # verifies the card and the sha256


def test_bundled_model_reproduces_its_recorded_reference_predictions():
    classifier = _bundled()
    recorded = classifier.card["reference_predictions"]
    assert recorded["generator"] == REFERENCE_GENERATOR
    names, patches = reference_patches()
    assert [item["name"] for item in recorded["items"]] == names
    probabilities, _, logits = classifier.predict_patches(normalize_hu(patches), tta=recorded["tta"])
    np.testing.assert_allclose(probabilities, [item["probability"] for item in recorded["items"]], atol=TOLERANCE)
    np.testing.assert_allclose(logits, [item["logit"] for item in recorded["items"]], atol=10 * TOLERANCE)


def test_bundled_model_card_states_its_data_split_and_test_metrics():
    card = _bundled().card
    assert card["metrics"]["test"]["split"]["name"] == "test"
    assert card["metrics"]["test"]["split"]["leakage"]["test_patients_also_in_train_or_val"] == 0
    assert "not been validated on patients" in card["training"]["data"]["statement"]
    assert 0.0 < card["threshold"] < 1.0 and card["calibration"]["temperature"] > 0
    # Cross-testing over the five patient folds: fold 0 is this very model on its recorded test split.
    cross = card["metrics"]["extra"]["cross_testing"]
    assert [f["test_fold"] for f in cross["folds"]] == [0, 1, 2, 3, 4]
    assert cross["folds"][0]["model_auc"] == pytest.approx(card["metrics"]["test"]["model"]["auc"], abs=5e-5)
    assert cross["model_auc_mean"] == pytest.approx(sum(f["model_auc"] for f in cross["folds"]) / 5, abs=5e-4)


def test_reference_patches_are_fixed():
    # The recorded probabilities are only meaningful if the patches never change.
    names, a = reference_patches()
    _, b = reference_patches()
    assert np.array_equal(a, b)
    assert a.shape == (len(names), 64, 64, 64) and a.dtype == np.float32
    # Lung background and the solid nodules' centres, as the names say.
    assert -900 < float(np.median(a[0])) < -800
    assert float(a[names.index("solid-15mm")][32, 32, 32]) > -50
