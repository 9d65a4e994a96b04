"""ONNX Runtime, the default runtime: agreement with torch, the file bound to its card, refusals of
damaged, altered or mismatched ONNX files and of operators the installed ONNX Runtime lacks."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

from helpers import save_random_model
from nadtrain.export import reexport_model, reference_patches
from notadiagnosis.card import preprocessing_block
from notadiagnosis.classifier import Classifier
from notadiagnosis.errors import InputError, WeightsError
from notadiagnosis.model import build_model
from notadiagnosis.onnx_backend import INPUT_NAME, LAYER_CAM_OUTPUT, LOGIT_OUTPUT
from notadiagnosis.onnx_export import ONNX_OPSET
from notadiagnosis.preprocessing import normalize_hu
from notadiagnosis.weights import CARD_DIGEST_KEY, card_digest, default_model_path, save_model, sha256_of

# The issue's bar: the two runtimes' probabilities agree within 1e-4 (float32 convolutions in another order).
AGREEMENT = 1e-4
MODEL_FILE_SUFFIXES = (".json", ".onnx", ".saliency.onnx", ".safetensors")


def _both(path) -> tuple:
    return (Classifier.load(path, device="cpu", runtime="onnx"), Classifier.load(path, device="cpu", runtime="torch"))


def _generated_patches(count: int, seed: int) -> np.ndarray:
    """Normalised patches: the fixed reference nodules and random noise of CT-like range."""
    _, reference = reference_patches()
    noise = np.random.default_rng(seed).uniform(-1000.0, 400.0, size=(count, 64, 64, 64)).astype(np.float32)
    return normalize_hu(np.concatenate([reference, noise]))


@pytest.fixture(scope="module")
def trained_like_model(tmp_path_factory) -> Path:
    """A random network whose batch norms are not the identity (so folding them is exercised)."""
    torch.manual_seed(11)
    model = build_model("resnet3d-tiny").eval()
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm3d):
                module.weight.uniform_(0.5, 1.5)
                module.bias.uniform_(-0.2, 0.2)
                module.running_mean.uniform_(-0.1, 0.1)
                module.running_var.uniform_(0.5, 2.0)
    card = {"name": "bn-test-model", "version": "0.0.0-test",
            "preprocessing": preprocessing_block(),
            "calibration": {"temperature": 1.3}, "threshold": 0.5}
    return save_model(model, tmp_path_factory.mktemp("bn") / "model", card)


@pytest.mark.parametrize("which", ["bundled", "generated"])
def test_onnx_runtime_and_torch_agree_within_1e_4(which, trained_like_model):
    onnx_classifier, torch_classifier = _both(None if which == "bundled" else trained_like_model)
    assert onnx_classifier.runtime == "onnxruntime" and torch_classifier.runtime == "torch"
    patches = _generated_patches(4, seed=1)
    for tta in (True, False):
        a = onnx_classifier.predict_patches(patches, tta=tta)
        b = torch_classifier.predict_patches(patches, tta=tta)
        np.testing.assert_allclose(a[0], b[0], atol=AGREEMENT, rtol=0)  # probabilities
        np.testing.assert_allclose(a[2], b[2], atol=10 * AGREEMENT, rtol=0)  # logits
        if tta:
            np.testing.assert_allclose(a[1], b[1], atol=AGREEMENT, rtol=0)  # uncertainties


@pytest.mark.parametrize("which", ["bundled", "generated"])
def test_layer_cam_from_the_onnx_graph_equals_torch_autograd(which, trained_like_model):
    # ONNX Runtime has no autograd: the exported graph computes the gradient itself; torch's autograd checks it.
    onnx_classifier, torch_classifier = _both(None if which == "bundled" else trained_like_model)
    for patch in _generated_patches(1, seed=2):
        a, b = onnx_classifier.saliency_map(patch), torch_classifier.saliency_map(patch)
        assert a.shape == patch.shape and a.min() >= 0.0 and a.max() == pytest.approx(1.0)
        np.testing.assert_allclose(a, b, atol=AGREEMENT)


def test_saliency_maps_from_both_runtimes_land_on_the_same_ct_voxels(trained_like_model):
    import SimpleITK as sitk

    from helpers import add_sphere

    ct = add_sphere(_ct(), (5.0, -3.0, 0.0), 7.0, 40.0)
    maps = [sitk.GetArrayFromImage(c.saliency(ct, (5.0, -3.0, 0.0))) for c in _both(trained_like_model)]
    np.testing.assert_allclose(maps[0], maps[1], atol=AGREEMENT)
    assert maps[0].max() > 0.5


def _ct():
    from helpers import make_ct

    return make_ct(size=(80, 80, 40), spacing=(1.0, 1.0, 2.0), origin=(-40.0, -40.0, -40.0))


def test_the_bundled_model_ships_as_onnx_bound_to_its_card():
    card_path = default_model_path()
    card = json.loads(card_path.read_text(encoding="utf-8"))
    for block, name, outputs in ((card["onnx"], "default.onnx", [LOGIT_OUTPUT]),
                                 (card["onnx"]["saliency"], "default.saliency.onnx", [LOGIT_OUTPUT, LAYER_CAM_OUTPUT])):
        onnx_path = card_path.with_name(name)
        assert block["file"] == name and block["sha256"] == sha256_of(onnx_path) and block["opset"] == ONNX_OPSET
        model = onnx.load(str(onnx_path))
        assert [entry.version for entry in model.opset_import if entry.domain in ("", "ai.onnx")] == [ONNX_OPSET]
        assert {entry.key: entry.value for entry in model.metadata_props}[CARD_DIGEST_KEY] == card_digest(card)
        assert [output.name for output in model.graph.output] == outputs
    assert "re-exported with its ONNX form" in card["description"]
    assert Classifier.load().runtime == "onnxruntime"


# The exporter folds batch norm into the convolutions in float32 on the CPU it runs on, and another CPU's
# vector code may round the last bit of a folded weight differently (seen: an AMD EPYC against the machine
# that exported the bundled files: 1.4e-7 of a tensor's largest weight at most, a few units in the last place
# where a folded bias cancels). So a re-export is the bundled model up to that rounding (held to 1e-6 of each
# tensor's largest value), and the same bytes each time on one machine.
FOLDING_TOLERANCE = 1e-6


def _without_onnx_hashes(card: dict) -> dict:
    """A card without the sha256 of its ONNX files (which the folding's last bits change)."""
    card = json.loads(json.dumps(card))
    del card["onnx"]["sha256"], card["onnx"]["saliency"]["sha256"]
    return card


def _assert_same_network_up_to_folding(expected: Path, actual: Path) -> None:
    a, b = onnx.load(str(expected)), onnx.load(str(actual))
    assert [n.SerializeToString() for n in a.graph.node] == [n.SerializeToString() for n in b.graph.node]
    assert a.opset_import == b.opset_import and a.graph.input == b.graph.input and a.graph.output == b.graph.output
    hashes = {"saliency_onnx_sha256"}  # the saliency file's hash, which the same rounding changes
    assert {p.key: p.value for p in a.metadata_props if p.key not in hashes} == \
        {p.key: p.value for p in b.metadata_props if p.key not in hashes}
    weights_a = {i.name: numpy_helper.to_array(i) for i in a.graph.initializer}
    weights_b = {i.name: numpy_helper.to_array(i) for i in b.graph.initializer}
    assert weights_a.keys() == weights_b.keys()
    for name, value in weights_a.items():
        other = weights_b[name]
        assert value.dtype == other.dtype and value.shape == other.shape, name
        scale = float(np.abs(value).max()) if value.size else 0.0
        np.testing.assert_allclose(other, value, rtol=0, atol=FOLDING_TOLERANCE * scale, err_msg=name)


def test_reexporting_the_bundled_model_gives_it_back(tmp_path):
    # `make bundled-model`: the bundled files are what their own re-export writes (the ONNX files up to
    # the folding's rounding on this CPU), and two re-exports on one machine are the same bytes.
    bundled = default_model_path()
    reexport_model(bundled, tmp_path / "first" / "default")
    reexport_model(bundled, tmp_path / "second" / "default")
    for suffix in MODEL_FILE_SUFFIXES:
        first = (tmp_path / "first" / f"default{suffix}").read_bytes()
        assert first == (tmp_path / "second" / f"default{suffix}").read_bytes(), suffix
    exported, shipped = tmp_path / "first" / "default", bundled.with_name("default")
    assert Path(f"{exported}.safetensors").read_bytes() == Path(f"{shipped}.safetensors").read_bytes()
    assert _without_onnx_hashes(json.loads(Path(f"{exported}.json").read_text(encoding="utf-8"))) == \
        _without_onnx_hashes(json.loads(Path(f"{shipped}.json").read_text(encoding="utf-8")))
    for suffix in (".onnx", ".saliency.onnx"):
        _assert_same_network_up_to_folding(Path(f"{shipped}{suffix}"), Path(f"{exported}{suffix}"))


def test_reexport_with_an_edited_card_copy_rebinds_every_file(tmp_path):
    source = save_random_model(tmp_path / "source")
    edited = json.loads(source.read_text(encoding="utf-8"))
    edited["references"] = {"size_only": {"coefficient": 3.9, "intercept": -9.9}}
    copy = tmp_path / "edited.json"
    copy.write_text(json.dumps(edited), encoding="utf-8")
    card_path = reexport_model(source, tmp_path / "out" / "model", card_path=copy, version="0.0.1-test")
    onnx_classifier, torch_classifier = _both(card_path)
    assert onnx_classifier.card["references"] == edited["references"]
    assert torch_classifier.card["version"] == "0.0.1-test"


def test_reexport_refuses_a_card_of_another_network(tmp_path):
    source = save_random_model(tmp_path / "source")
    other = json.loads(source.read_text(encoding="utf-8"))
    other["architecture"]["widths"] = [16, 32, 64, 128]
    copy = tmp_path / "other.json"
    copy.write_text(json.dumps(other), encoding="utf-8")
    with pytest.raises(InputError, match="architecture"):
        reexport_model(source, tmp_path / "out" / "model", card_path=copy)
    assert not (tmp_path / "out").exists()


# ------------------------------------------------------------------------------------------- refusals


@pytest.fixture()
def model_copy(tmp_path, trained_like_model) -> Path:
    for suffix in MODEL_FILE_SUFFIXES:
        shutil.copy(trained_like_model.with_name(f"model{suffix}"), tmp_path / f"model{suffix}")
    return tmp_path / "model.json"


def _replace_onnx(card_path: Path, data: bytes) -> None:
    """Write ``data`` as the model's ONNX file and re-hash it in the card (an alteration that passes the hash)."""
    card_path.with_suffix(".onnx").write_bytes(data)
    card = json.loads(card_path.read_text(encoding="utf-8"))
    card["onnx"]["sha256"] = sha256_of(card_path.with_suffix(".onnx"))
    card_path.write_text(json.dumps(card), encoding="utf-8")


def _load(card_path: Path) -> Classifier:
    return Classifier.load(card_path, device="cpu", runtime="onnx")


def _assert_one_sentence(error: pytest.ExceptionInfo) -> None:
    text = str(error.value)
    assert "\n" not in text and text.endswith(".") and "Traceback" not in text


def test_a_flipped_byte_in_the_onnx_file_is_refused(model_copy):
    data = bytearray(model_copy.with_suffix(".onnx").read_bytes())
    data[len(data) // 2] ^= 0x01
    model_copy.with_suffix(".onnx").write_bytes(bytes(data))
    with pytest.raises(WeightsError, match="does not match the sha256 in its card") as error:
        _load(model_copy)
    _assert_one_sentence(error)


def test_an_altered_saliency_file_is_refused_at_the_first_saliency_and_classification_is_untouched(model_copy):
    saliency = model_copy.with_name("model.saliency.onnx")
    data = bytearray(saliency.read_bytes())
    data[len(data) // 3] ^= 0x01
    saliency.write_bytes(bytes(data))
    classifier = _load(model_copy)
    patches = _generated_patches(0, seed=0)
    assert classifier.predict_patches(patches[:1])[0].shape == (1,)
    with pytest.raises(WeightsError, match=r"model\.saliency\.onnx does not match the sha256 in its card"):
        classifier.saliency_map(patches[0])


def test_a_truncated_onnx_file_is_refused_even_with_a_rehashed_card(model_copy):
    _replace_onnx(model_copy, model_copy.with_suffix(".onnx").read_bytes()[:5000])
    with pytest.raises(WeightsError, match="not a model ONNX Runtime .* can read") as error:
        _load(model_copy)
    _assert_one_sentence(error)


def test_an_edited_card_is_refused_by_the_onnx_file(model_copy):
    card = json.loads(model_copy.read_text(encoding="utf-8"))
    card["threshold"] = 0.1
    model_copy.write_text(json.dumps(card), encoding="utf-8")
    with pytest.raises(WeightsError, match="not the card model.onnx was exported with"):
        _load(model_copy)


def test_the_onnx_file_of_another_model_is_refused(model_copy, tmp_path):
    other = save_random_model(tmp_path / "other", seed=4)
    _replace_onnx(model_copy, other.with_suffix(".onnx").read_bytes())
    with pytest.raises(WeightsError, match="not the card model.onnx was exported with"):
        _load(model_copy)


def test_a_pinned_sha256_covers_the_onnx_file(model_copy):
    actual = sha256_of(model_copy.with_suffix(".onnx"))
    assert _load(model_copy) is not None
    assert Classifier.load(model_copy, runtime="onnx", expected_sha256=actual).runtime == "onnxruntime"
    with pytest.raises(WeightsError, match="not the expected"):
        Classifier.load(model_copy, runtime="onnx", expected_sha256="0" * 64)


def test_a_missing_onnx_file_is_named(model_copy):
    model_copy.with_suffix(".onnx").unlink()
    with pytest.raises(WeightsError, match=r"model\.onnx not found beside its card"):
        _load(model_copy)


def test_a_card_without_an_onnx_file_falls_back_to_torch_or_says_what_to_do(model_copy):
    card = json.loads(model_copy.read_text(encoding="utf-8"))
    del card["onnx"]
    model_copy.write_text(json.dumps(card), encoding="utf-8")
    model_copy.with_suffix(".onnx").unlink()
    assert Classifier.load(model_copy, device="cpu").runtime == "torch"  # auto: an older export still runs
    with pytest.raises(WeightsError, match="lists no ONNX files.*--runtime torch"):
        _load(model_copy)


def _graph_with(node: onnx.NodeProto, opsets: list, card_path: Path) -> bytes:
    """A small ONNX model with the library's input and outputs and the card's digest, built around ``node``."""
    card = json.loads(card_path.read_text(encoding="utf-8"))
    patches = helper.make_tensor_value_info(INPUT_NAME, TensorProto.FLOAT, ["n", 1, 64, 64, 64])
    outputs = [helper.make_tensor_value_info(LOGIT_OUTPUT, TensorProto.FLOAT, None),
               helper.make_tensor_value_info(LAYER_CAM_OUTPUT, TensorProto.FLOAT, None)]
    identity = helper.make_node("Identity", [INPUT_NAME], [LAYER_CAM_OUTPUT])
    model = helper.make_model(helper.make_graph([node, identity], "g", [patches], outputs), opset_imports=opsets)
    model.ir_version = 8
    helper.set_model_props(model, {CARD_DIGEST_KEY: card_digest(card)})
    return model.SerializeToString()


@pytest.mark.parametrize("node, opsets", [
    (helper.make_node("Frobnicate", [INPUT_NAME], [LOGIT_OUTPUT], domain="org.example"),
     [helper.make_opsetid("", 17), helper.make_opsetid("org.example", 1)]),
    (helper.make_node("Relu", [INPUT_NAME], [LOGIT_OUTPUT]), [helper.make_opsetid("", 999)]),
], ids=["unknown-operator", "future-opset"])
def test_an_operator_the_installed_onnx_runtime_lacks_is_named_with_the_versions(model_copy, node, opsets):
    import onnxruntime

    _replace_onnx(model_copy, _graph_with(node, opsets, model_copy))
    with pytest.raises(WeightsError, match="lacks") as error:
        _load(model_copy)
    assert f"ONNX Runtime {onnxruntime.__version__}" in str(error.value) and "opset 17" in str(error.value)
    assert "upgrade onnxruntime" in str(error.value)


def test_an_onnx_file_with_other_inputs_is_refused(model_copy):
    node = helper.make_node("ReduceMean", [INPUT_NAME], [LOGIT_OUTPUT], keepdims=0)
    data = _graph_with(node, [helper.make_opsetid("", 17)], model_copy)
    model = onnx.load_from_string(data)
    model.graph.input[0].type.tensor_type.shape.dim[2].dim_value = 32  # 32³ patches instead of 64³
    _replace_onnx(model_copy, model.SerializeToString())
    with pytest.raises(WeightsError, match="does not take 'patches' float patches of 64³ voxels"):
        _load(model_copy)


def test_unknown_runtime_and_gpu_without_a_provider_are_refused(trained_like_model):
    import onnxruntime

    with pytest.raises(InputError, match="Unknown runtime"):
        Classifier.load(trained_like_model, runtime="tensorflow")
    if "CUDAExecutionProvider" not in onnxruntime.get_available_providers():
        with pytest.raises(InputError, match="onnxruntime-gpu"):
            Classifier.load(trained_like_model, runtime="onnx", device="cuda")
    with pytest.raises(InputError, match="MPS"):
        Classifier.load(trained_like_model, runtime="onnx", device="mps")


def test_threads_are_the_callers_choice(trained_like_model):
    one = Classifier.load(trained_like_model, runtime="onnx", device="cpu", threads=1)
    two = Classifier.load(trained_like_model, runtime="onnx", device="cpu", threads=2)
    assert "(1 thread)" in one.device_description and one.backend.executor is None
    assert "(2 threads)" in two.device_description and two.backend.executor._max_workers == 2


def test_runs_on_several_threads_give_the_same_predictions_in_the_same_order(trained_like_model):
    # Sub-batches (PIPELINE_POINTS) run while the next patches are extracted: any mix-up of points,
    # flips or sub-batches would change a probability.
    import SimpleITK as sitk

    rng = np.random.default_rng(5)
    ct = sitk.GetImageFromArray(rng.integers(-1000, 400, size=(40, 80, 90)).astype(np.int16))
    ct.SetSpacing((0.8, 0.8, 2.0))
    ct.SetOrigin((-36.0, -32.0, -40.0))
    points = rng.uniform([-20.0, -18.0, -20.0], [20.0, 18.0, 20.0], size=(19, 3))
    serial = Classifier.load(trained_like_model, runtime="onnx", device="cpu", threads=1)
    concurrent = Classifier.load(trained_like_model, runtime="onnx", device="cpu", threads=2)
    expected = serial.predict(ct, points, batch_size=19, at_click=True)
    assert len({round(p.probability, 6) for p in expected}) > 10  # the points differ, so an order error would show
    for batch_size in (1, 10, 19):
        got = concurrent.predict(ct, points, batch_size=batch_size, at_click=True)
        assert [p.point_lps for p in got] == [p.point_lps for p in expected]
        np.testing.assert_array_equal([p.logit for p in got], [p.logit for p in expected])
        np.testing.assert_array_equal([p.uncertainty for p in got], [p.uncertainty for p in expected])


class _SessionSpy:
    """onnxruntime.InferenceSession, recording the providers it was asked for (the CPU build here runs
    on the CPU whatever it is asked, as it does on a machine whose CUDA libraries are missing)."""

    def __init__(self, real):
        self.real, self.asked = real, []

    def __call__(self, data, options=None, providers=None):
        self.asked.append(providers)
        return self.real(data, options, providers=providers)


@pytest.fixture()
def cuda_listed(monkeypatch):
    """ONNX Runtime as onnxruntime-gpu reports itself: CUDA listed among the available providers."""
    import onnxruntime

    spy = _SessionSpy(onnxruntime.InferenceSession)
    monkeypatch.setattr(onnxruntime, "get_available_providers", lambda: ["CUDAExecutionProvider", "CPUExecutionProvider"])
    monkeypatch.setattr(onnxruntime, "InferenceSession", spy)
    return spy


@pytest.mark.filterwarnings("ignore:Specified provider")  # ONNX Runtime's own notice of the fallback
def test_the_cuda_provider_is_asked_for_first_when_onnx_runtime_has_it(cuda_listed, trained_like_model):
    classifier = Classifier.load(trained_like_model, runtime="onnx")  # device auto
    assert cuda_listed.asked[0] == [("CUDAExecutionProvider", {"device_id": "0"}), "CPUExecutionProvider"]
    # What ran is what the session reports, not what was asked: here the CPU, and the description says so.
    assert classifier.device == "cpu" and "CPUExecutionProvider" in classifier.device_description
    with pytest.raises(InputError, match="could not start its CUDA provider") as error:
        Classifier.load(trained_like_model, runtime="onnx", device="cuda:1")
    assert cuda_listed.asked[-1][0] == ("CUDAExecutionProvider", {"device_id": "1"})
    _assert_one_sentence(error)


def test_without_a_cuda_provider_auto_runs_on_the_cpu_and_a_gpu_request_says_what_to_install(monkeypatch, trained_like_model):
    import onnxruntime

    monkeypatch.setattr(onnxruntime, "get_available_providers", lambda: ["CPUExecutionProvider"])
    assert "CPUExecutionProvider" in Classifier.load(trained_like_model, runtime="onnx").device_description
    for device in ("cuda", "gpu"):
        with pytest.raises(InputError, match="install onnxruntime-gpu"):
            Classifier.load(trained_like_model, runtime="onnx", device=device)


# ------------------------------------------------------------------------------------------------ pins


def _reexported_with_opset(card_path: Path, folder: Path, opset: int) -> Path:
    """A copy of the model whose ONNX files were written again at another opset: other bytes, the same card
    digest, and a card re-hashed to match (what someone altering the files together would produce)."""
    from notadiagnosis.onnx_export import write_onnx
    from notadiagnosis.weights import CARD_DIGEST_KEY, SALIENCY_DIGEST_KEY, load_model

    folder.mkdir(parents=True, exist_ok=True)
    for suffix in MODEL_FILE_SUFFIXES:
        shutil.copy(card_path.with_name(f"{card_path.stem}{suffix}"), folder / f"{card_path.stem}{suffix}")
    network, loaded = load_model(card_path.with_suffix(".safetensors"))
    card = loaded.to_dict()  # the card's JSON, to re-hash and write
    metadata = {"card": card_path.name, CARD_DIGEST_KEY: card_digest(card)}
    saliency = folder / f"{card_path.stem}.saliency.onnx"
    write_onnx(network, saliency, metadata, 64, saliency=True, opset=opset)
    classify = folder / f"{card_path.stem}.onnx"
    write_onnx(network, classify, metadata | {SALIENCY_DIGEST_KEY: sha256_of(saliency)}, 64, opset=opset)
    card["onnx"]["sha256"], card["onnx"]["saliency"]["sha256"] = sha256_of(classify), sha256_of(saliency)
    copy = folder / card_path.name
    copy.write_text(json.dumps(card, indent=2), encoding="utf-8")
    return copy


def test_pinned_onnx_sha256_is_the_bundled_onnx_file():
    from notadiagnosis.weights import BUNDLED_ONNX_SHA256

    assert sha256_of(default_model_path().with_suffix(".onnx")) == BUNDLED_ONNX_SHA256


def test_bundled_onnx_altered_inside_the_package_with_a_rehashed_card_is_refused(tmp_path, monkeypatch):
    from notadiagnosis import weights

    altered = _reexported_with_opset(default_model_path(), tmp_path / "models", 16)
    assert _load(altered).runtime == "onnxruntime"  # outside the package the altered files agree and load
    monkeypatch.setattr(weights, "bundled_models_dir", lambda: (tmp_path / "models").resolve())
    with pytest.raises(WeightsError, match="installed package was altered"):
        Classifier.load(runtime="onnx", device="cpu")


def test_a_saliency_file_other_than_the_one_the_classification_file_names_is_refused(model_copy, tmp_path):
    other = _reexported_with_opset(model_copy, tmp_path / "other", 16)
    shutil.copy(other.with_name("model.saliency.onnx"), model_copy.with_name("model.saliency.onnx"))
    card = json.loads(model_copy.read_text(encoding="utf-8"))
    card["onnx"]["saliency"]["sha256"] = sha256_of(model_copy.with_name("model.saliency.onnx"))
    model_copy.write_text(json.dumps(card), encoding="utf-8")  # the card re-hashed: only the pin chain catches it
    classifier = _load(model_copy)
    with pytest.raises(WeightsError, match="not the expected"):
        classifier.saliency_map(_generated_patches(0, seed=0)[0])
