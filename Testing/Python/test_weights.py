"""Weights: safetensors + card round trip, sha256 verification, tamper and truncation detection."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from helpers import save_random_model
from notadiagnosis.errors import NoDefaultModelError, WeightsError
from notadiagnosis.weights import (
    BUNDLED_MODEL_SHA256,
    CARD_DIGEST_KEY,
    card_digest,
    default_model_path,
    header_metadata,
    load_model,
    read_card,
    sha256_of,
)


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
    by_tensors, card_a = load_model(tmp_path / "model.safetensors")
    by_card, card_b = load_model(tmp_path / "model.json")
    assert card_a == card_b
    for (name, a), (_, b) in zip(by_tensors.state_dict().items(), by_card.state_dict().items()):
        assert torch.equal(a, b), name


def test_torch_runtime_reads_and_parses_the_card_once(tmp_path, monkeypatch):
    from notadiagnosis import Classifier
    from notadiagnosis.card import ModelCard

    card_path = save_random_model(tmp_path)
    parses = []
    original = ModelCard.parse.__func__
    monkeypatch.setattr(ModelCard, "parse", classmethod(lambda cls, *args, **kwargs: parses.append(args[1:])
                                                        or original(cls, *args, **kwargs)))
    classifier = Classifier.load(card_path, runtime="torch", device="cpu")
    assert len(parses) == 1, parses
    assert classifier.card == read_card(card_path)


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


def _rewrite_header_metadata(tensors, metadata):
    """Rewrite a safetensors file with other header metadata (same tensors)."""
    from safetensors.torch import load_file, save_file

    save_file(load_file(str(tensors)), str(tensors), metadata=metadata)


def test_card_that_does_not_fit_the_tensors_is_refused(tmp_path):
    # A card bound to the file by its digest but describing another architecture (an export bug):
    # the strict load must still refuse it.
    card_path = save_random_model(tmp_path)
    tensors = tmp_path / "model.safetensors"
    card = json.loads(card_path.read_text())
    card["architecture"]["widths"] = [16, 32, 64, 128]
    _rewrite_header_metadata(tensors, {"format": "pt", CARD_DIGEST_KEY: card_digest(card)})
    card["weights"]["sha256"] = sha256_of(tensors)
    card_path.write_text(json.dumps(card))
    with pytest.raises(WeightsError, match="do not fit the architecture"):
        load_model(card_path)


def test_export_binds_the_card_to_the_tensors_file(tmp_path):
    card_path = save_random_model(tmp_path)
    metadata = header_metadata((tmp_path / "model.safetensors").read_bytes())
    assert metadata[CARD_DIGEST_KEY] == card_digest(json.loads(card_path.read_text()))


@pytest.mark.parametrize("pin", [False, True])
@pytest.mark.parametrize(
    "edit",
    [
        lambda card: card["calibration"].update(temperature=0.2),
        lambda card: card.update(threshold=0.01),
        lambda card: card["preprocessing"].update(spacing_mm=0.5),
        lambda card: card.update(version="9.9.9"),
    ],
    ids=["temperature", "threshold", "spacing", "version"],
)
def test_edited_card_is_refused_even_when_the_tensors_hash_is_pinned(tmp_path, edit, pin):
    card_path = save_random_model(tmp_path)
    pinned = sha256_of(tmp_path / "model.safetensors")
    card = json.loads(card_path.read_text())
    edit(card)
    card_path.write_text(json.dumps(card))
    with pytest.raises(WeightsError, match="is not the card model.safetensors was exported with"):
        load_model(card_path, expected_sha256=pinned if pin else None)


def test_model_without_a_card_digest_loads_unpinned_but_not_pinned(tmp_path):
    # Models exported before cards were bound: usable, but a pin could not cover their card.
    card_path = save_random_model(tmp_path)
    tensors = tmp_path / "model.safetensors"
    _rewrite_header_metadata(tensors, {"format": "pt"})
    card = json.loads(card_path.read_text())
    card["weights"]["sha256"] = sha256_of(tensors)
    card_path.write_text(json.dumps(card))
    load_model(card_path)
    with pytest.raises(WeightsError, match="without its card's digest"):
        load_model(card_path, expected_sha256=sha256_of(tensors))


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda card: card.update(weights="abc"), "'weights' that is not a JSON object"),
        (lambda card: card.update(threshold="high"), "no finite number for threshold"),
        (lambda card: card.update(threshold=1.5), "not a probability"),
        (lambda card: card.update(calibration=None), "'calibration' that is not a JSON object"),
        (lambda card: card["calibration"].update(temperature=0), "not positive"),
        (lambda card: card["preprocessing"].pop("hu_max"), "no finite number for preprocessing.hu_max"),
        (lambda card: card["preprocessing"].update(hu_min=500.0), "hu_min not below hu_max"),
        (lambda card: card["preprocessing"].update(patch_size=0), "patch_size 0"),
        (lambda card: card["preprocessing"].update(patch_size=63.5), "patch_size 63.5"),
    ],
)
def test_malformed_card_fields_are_refused_with_the_field_named(tmp_path, edit, message):
    card_path = save_random_model(tmp_path)
    card = json.loads(card_path.read_text())
    edit(card)
    card_path.write_text(json.dumps(card))
    with pytest.raises(WeightsError, match=message):
        read_card(card_path)


@pytest.mark.parametrize("damage", ["not json", "{}", '{"format": "notadiagnosis-model-card/1"}'])
def test_damaged_card_is_refused(tmp_path, damage):
    save_random_model(tmp_path)
    (tmp_path / "model.json").write_text(damage)
    with pytest.raises(WeightsError):
        read_card(tmp_path / "model.json")


def test_missing_files_give_clear_errors(tmp_path):
    with pytest.raises(WeightsError, match="does not exist"):
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


def test_default_model_is_bundled_verified_and_bound_to_its_card():
    card_path = default_model_path()
    model, card = load_model(card_path, expected_sha256=sha256_of(card_path.with_suffix(".safetensors")))
    assert card["name"] == "default" and "random" not in card.get("description", "").lower()
    assert header_metadata(card_path.with_suffix(".safetensors").read_bytes())[CARD_DIGEST_KEY] == card_digest(card)


def test_missing_default_model_is_a_clear_error(monkeypatch, tmp_path):
    from notadiagnosis import weights

    monkeypatch.setattr(weights, "bundled_models_dir", lambda: tmp_path)
    with pytest.raises(NoDefaultModelError, match="No default model is bundled"):
        default_model_path()


def test_export_is_byte_reproducible(tmp_path):
    # The tensors file's sha256 is the pin: exporting the same model and card twice must give the same file.
    hashes = {sha256_of(save_random_model(tmp_path / str(i), seed=4).with_suffix(".safetensors")) for i in range(4)}
    assert len(hashes) == 1


def test_card_rewritten_with_whole_floats_as_integers_still_loads(tmp_path):
    # Pretty-printers (jq, JavaScript) write 1.0 as 1: the same card, so the same digest.
    card_path = save_random_model(tmp_path)
    text = card_path.read_text()
    assert '"spacing_mm": 1.0' in text
    card_path.write_text(text.replace('"spacing_mm": 1.0', '"spacing_mm": 1').replace('"hu_min": -1000.0', '"hu_min": -1000'))
    load_model(card_path, expected_sha256=sha256_of(tmp_path / "model.safetensors"))


def test_non_finite_numbers_in_a_card_are_exported_as_null(tmp_path):
    from helpers import save_random_model as save

    card_path = save(tmp_path, metrics={"validation": {"auc": float("nan")}, "extra": [float("inf"), 1.5]})
    card = json.loads(card_path.read_text())  # strict JSON: no NaN token
    assert card["metrics"] == {"validation": {"auc": None}, "extra": [None, 1.5]}
    load_model(card_path)


# ---------------------------------------------------------------------------------- the pinned bundled model


def altered_copy(card_path, folder):
    """A copy of a model with every tensor zeroed and the card's sha256 rewritten to match: what an
    attacker (or a careless edit) can do to files that travel together. The card digest in the
    header is kept, so only a sha256 the attacker cannot rewrite can catch it."""
    import shutil

    from safetensors.torch import load as load_tensors
    from safetensors.torch import save as serialize

    folder.mkdir(parents=True, exist_ok=True)
    tensors_path = card_path.with_suffix(".safetensors")
    data = tensors_path.read_bytes()
    zeroed = {name: torch.zeros_like(value) for name, value in load_tensors(data).items()}
    new_tensors = folder / tensors_path.name
    new_tensors.write_bytes(serialize(zeroed, metadata=header_metadata(data)))
    card = json.loads(card_path.read_text())
    card["weights"]["sha256"] = sha256_of(new_tensors)
    new_card = folder / card_path.name
    new_card.write_text(json.dumps(card, indent=2))
    shutil.copymode(card_path, new_card)
    return new_card


def test_pinned_sha256_is_the_bundled_model_file():
    # The pin lives in the code; it must name the file that ships (change both together).
    assert sha256_of(default_model_path().with_suffix(".safetensors")) == BUNDLED_MODEL_SHA256


def test_bundled_model_altered_inside_the_package_with_a_rehashed_card_is_refused(tmp_path, monkeypatch):
    from notadiagnosis import weights

    altered = altered_copy(default_model_path(), tmp_path / "models")
    load_model(altered)  # outside the package, the altered files agree with each other and load
    monkeypatch.setattr(weights, "bundled_models_dir", lambda: (tmp_path / "models").resolve())
    with pytest.raises(WeightsError, match="installed package was altered"):
        load_model(weights.default_model_path())
    with pytest.raises(WeightsError, match="installed package was altered"):
        load_model(weights.default_model_path(), expected_sha256=sha256_of(altered.with_suffix(".safetensors")))


def test_user_model_is_pinned_by_the_sha256_the_caller_trusts(tmp_path):
    original = save_random_model(tmp_path / "original", seed=5)
    trusted = sha256_of(original.with_suffix(".safetensors"))
    altered = altered_copy(original, tmp_path / "altered")
    load_model(original, expected_sha256=trusted)
    with pytest.raises(WeightsError, match="not the expected"):
        load_model(altered, expected_sha256=trusted)


@pytest.mark.parametrize("name", ["model.pt", "model", "model.onnx.bak"])
def test_model_path_that_is_not_a_model_file_is_never_substituted(tmp_path, name):
    save_random_model(tmp_path)  # model.json and model.safetensors exist beside it
    with pytest.raises(WeightsError, match="does not exist"):
        load_model(tmp_path / name)
    (tmp_path / name).write_bytes(b"not a model")
    with pytest.raises(WeightsError, match="neither a model card"):
        load_model(tmp_path / name)
