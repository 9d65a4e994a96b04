"""Weights: safetensors + card round trip, sha256 verification, tamper and truncation detection."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from helpers import save_random_model
from notadiagnosis.errors import NoDefaultModelError, WeightsError
from notadiagnosis.weights import default_model_path, load_model, read_card, sha256_of


def test_weights_round_trip_reproduces_the_model(tmp_path):
    card_path = save_random_model(tmp_path, seed=3)
    model, card = load_model(card_path)
    assert card["weights"]["sha256"] == sha256_of(tmp_path / "model.safetensors")
    assert card["architecture"]["name"] == "resnet3d"
    torch.manual_seed(3)
    from notadiagnosis.model import build_model

    reference = build_model("resnet3d-tiny").eval()
    x = torch.rand(2, 1, 64, 64, 64)
    with torch.inference_mode():
        np.testing.assert_allclose(model(x).numpy(), reference(x).numpy(), rtol=1e-5, atol=1e-6)


def test_model_loads_from_either_file(tmp_path):
    save_random_model(tmp_path)
    load_model(tmp_path / "model.safetensors")
    load_model(tmp_path / "model.json")


def test_tampered_tensors_are_refused(tmp_path):
    save_random_model(tmp_path)
    tensors = tmp_path / "model.safetensors"
    data = bytearray(tensors.read_bytes())
    data[-10] ^= 0xFF  # flip one byte of a weight
    tensors.write_bytes(bytes(data))
    with pytest.raises(WeightsError, match="does not match the sha256"):
        load_model(tmp_path / "model.json")


def test_truncated_tensors_are_refused(tmp_path):
    save_random_model(tmp_path)
    tensors = tmp_path / "model.safetensors"
    tensors.write_bytes(tensors.read_bytes()[:1000])
    with pytest.raises(WeightsError):
        load_model(tensors)


def test_truncated_tensors_with_a_matching_card_are_still_refused(tmp_path):
    # Someone "fixes" the card's hash after truncating: safetensors parsing must still fail cleanly.
    card_path = save_random_model(tmp_path)
    tensors = tmp_path / "model.safetensors"
    tensors.write_bytes(tensors.read_bytes()[:1000])
    card = json.loads(card_path.read_text())
    card["weights"]["sha256"] = sha256_of(tensors)
    card_path.write_text(json.dumps(card))
    with pytest.raises(WeightsError, match="not a readable safetensors file"):
        load_model(card_path)


def test_pinned_sha256_must_match(tmp_path):
    card_path = save_random_model(tmp_path)
    with pytest.raises(WeightsError, match="not the expected"):
        load_model(card_path, expected_sha256="0" * 64)
    load_model(card_path, expected_sha256=sha256_of(tmp_path / "model.safetensors"))


def test_card_that_does_not_fit_the_tensors_is_refused(tmp_path):
    card_path = save_random_model(tmp_path)
    card = json.loads(card_path.read_text())
    card["architecture"]["widths"] = [16, 32, 64, 128]
    card_path.write_text(json.dumps(card))
    with pytest.raises(WeightsError, match="do not fit the architecture"):
        load_model(card_path)


@pytest.mark.parametrize("damage", ["not json", "{}", '{"format": "notadiagnosis-model-card/1"}'])
def test_damaged_card_is_refused(tmp_path, damage):
    save_random_model(tmp_path)
    (tmp_path / "model.json").write_text(damage)
    with pytest.raises(WeightsError):
        read_card(tmp_path / "model.json")


def test_missing_files_give_clear_errors(tmp_path):
    with pytest.raises(WeightsError, match="not found"):
        load_model(tmp_path / "nothing.safetensors")
    save_random_model(tmp_path)
    (tmp_path / "model.safetensors").unlink()
    with pytest.raises(WeightsError, match="not found beside its card"):
        load_model(tmp_path / "model.json")


def test_weights_file_holds_no_pickle(tmp_path):
    save_random_model(tmp_path)
    header_length = int.from_bytes((tmp_path / "model.safetensors").read_bytes()[:8], "little")
    header = json.loads((tmp_path / "model.safetensors").read_bytes()[8 : 8 + header_length])
    tensors = {name: value for name, value in header.items() if name != "__metadata__"}
    assert tensors and {value["dtype"] for value in tensors.values()} <= {"F32", "I64"}


def test_default_model_is_either_bundled_and_verified_or_plainly_absent():
    try:
        card_path = default_model_path()
    except NoDefaultModelError as error:
        assert "No default model is bundled" in str(error)
    else:
        model, card = load_model(card_path)
        assert "random" not in card["name"].lower()
