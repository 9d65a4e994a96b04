"""The model card as a type: parsed and checked once, read by field, written back as it was read."""
from __future__ import annotations

import dataclasses
import json

import pytest

from helpers import save_random_model
from notadiagnosis.card import ModelCard, preprocessing_block
from notadiagnosis.classifier import Classifier
from notadiagnosis.errors import WeightsError
from notadiagnosis.model import build_model
from notadiagnosis.weights import default_model_path, read_card


def test_the_bundled_card_reads_as_typed_fields_and_writes_back_byte_for_byte():
    path = default_model_path()
    card = read_card(path)
    assert (card.name, card.version) == ("default", "1.3.1")
    assert (card.preprocessing.patch_size, card.preprocessing.spacing_mm) == (64, 1.0)
    assert (card.preprocessing.hu_min, card.preprocessing.hu_max) == (-1000.0, 400.0)
    assert card.weights.sha256 == card["weights"]["sha256"] and card.onnx.saliency.sha256
    assert card.size_only["feature"] == "log_long_axis_mm" and "test" in card.metrics
    assert json.dumps(card.to_dict(), indent=2) + "\n" == path.read_text(encoding="utf-8")


def test_the_bundled_card_carries_its_stability_figures_measured_on_the_same_network():
    """Issue 17: the card states how much the answer moves with the click and the surroundings, with
    the targets and whether each is met, measured on the network it ships (1.3.0: the same tensors)."""
    card = read_card(default_model_path())
    stability = card.metrics["stability"]
    assert stability["measured_on"]["name"] == "default" and stability["subset"]["nodules"] >= 30
    centred = stability["click_jitter"]["centred"]["vs_centre_click"]
    assert 0.0 <= centred["median"] <= centred["p90"] <= centred["max"] <= 1.0 and centred["n"] >= 300
    assert set(stability["verdict"]) == {"click_p90_abs_dp", "real_nodule_max_abs_dp", "surroundings_p90_spread"}
    assert stability["verdict"]["click_p90_abs_dp"]["value"] == centred["p90"]
    assert stability["surroundings"]["all_split_nodules_at_centre"]["n"] == 339
    real = stability["real_nodules"][0]
    assert real["nodule_id"] == "LIDC-IDRI-0001/n0" and abs(real["p_at_centre"] - card.metrics["extra"]["real_lidc_idri_0001"]["probability"]) < 0.01
    assert card.metrics["extra"]["cpu_latency"]["ms_per_point"] < 16.5  # the ONNX Runtime figure, not the torch era's


def test_blocks_the_type_does_not_know_round_trip_unchanged(tmp_path):
    document = json.loads(save_random_model(tmp_path).read_text(encoding="utf-8"))
    document["metrics"]["stability"] = {"click_jitter": {"p90": 0.02}}
    document["added_later"] = [1, {"two": 2.5}]
    card = ModelCard.parse(document, "The test card")
    assert card.to_dict() == document and list(card) == list(document)
    assert card.metrics["stability"] == {"click_jitter": {"p90": 0.02}} and card["added_later"] == [1, {"two": 2.5}]


def test_reading_a_card_cannot_change_it(tmp_path):
    card = read_card(save_random_model(tmp_path))
    card["metrics"]["changed"] = True
    card.metrics["changed"] = True
    card.architecture["widths"] = [1]
    assert "changed" not in card.to_dict()["metrics"] and card.to_dict()["architecture"]["widths"] != [1]
    with pytest.raises(dataclasses.FrozenInstanceError):
        card.threshold = 0.9


def test_a_card_in_memory_needs_no_file_blocks_but_a_card_on_disk_does():
    document = {"name": "run", "version": "0", "architecture": {"name": "resnet3d"},
                "preprocessing": preprocessing_block(), "calibration": {"temperature": 1.0}, "threshold": 0.5}
    assert ModelCard.parse(document, files=False).weights is None
    with pytest.raises(WeightsError, match="lacks format, weights; re-export the model"):
        ModelCard.parse(document, "The card")


def test_a_model_in_memory_goes_through_the_same_check_as_a_loaded_one():
    model = build_model("resnet3d-tiny")
    card = {"name": "run", "version": "0", "preprocessing": preprocessing_block(), "calibration": {"temperature": 0.0},
            "threshold": 0.5}
    with pytest.raises(WeightsError, match="temperature that is not positive"):
        Classifier.from_model(model, card)
    classifier = Classifier.from_model(model, card | {"calibration": {"temperature": 2.0}})
    assert classifier.temperature == 2.0 and classifier.card.architecture == model.architecture
