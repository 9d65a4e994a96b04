"""Model files: a JSON model card with the network in two forms, each verified by sha256. No pickle.

A model is a card with the network beside it: ``<stem>.json`` (the card: architecture,
preprocessing constants, temperature, threshold, training data and recipe, metrics with their
split, version), ``<stem>.onnx`` and ``<stem>.saliency.onnx`` (the network for ONNX Runtime, the
default runtime, without and with LayerCAM; see :mod:`.onnx_export`) and ``<stem>.safetensors``
(the same network's tensors, for the torch runtime and for training). The card's ``weights`` and
``onnx`` blocks hold each file's sha256 and size. The card changes
predictions as much as the network does, so its digest (everything but those two blocks, which hold
the files' own hashes) is written into both files (the safetensors header's metadata, the ONNX
file's ``metadata_props``): a sha256 that pins either file pins the card too. Loading checks the
card's fields, the file's sha256 (and, optionally, a sha256 the caller pins), that the card is the
one the file was exported with; the torch runtime then rebuilds the network from the card and loads
the tensors strictly (:func:`load_model`), ONNX Runtime builds a session (:mod:`.onnx_backend`).
"""
from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Dict, Mapping, Optional, Tuple

from .atomic import PathLike, atomic_path
from .card import CARD_FORMAT, FILE_BLOCKS, FileBlock, ModelCard
from .disclaimer import DISCLAIMER
from .errors import NoDefaultModelError, WeightsError

if TYPE_CHECKING:  # torch is imported only by the functions that need it: reading a card stays light.
    from .model import ResNet3D

DEFAULT_MODEL_NAME = "default"
#: sha256 of the bundled default model's files, pinned in the code: every load of a model from the package's
#: models folder must match them, so a model altered inside the installed package (a file and a re-hashed card
#: together) is refused. The tensors file (torch runtime) and the classification ONNX file (ONNX Runtime) are
#: pinned; the card is covered through its digest in each, and the saliency ONNX file through its sha256 in the
#: classification file. Change them together with the bundled files (`make bundled-model` prints them), and only then.
BUNDLED_MODEL_SHA256 = "651c382fa15c1310e06fc7ed77a0b6eecdb9d499abf084f223f4763146e772a8"
BUNDLED_ONNX_SHA256 = "521b7f8cf14ecca7c2a7a76b12b0f23216307aaa0e5e8bad336beeaa01cd1c34"
# Key, in the safetensors header's and the ONNX file's metadata, of the digest that binds the card to the file.
CARD_DIGEST_KEY = "card_sha256"
# Key, in the classification ONNX file's metadata, of the saliency ONNX file's sha256.
SALIENCY_DIGEST_KEY = "saliency_onnx_sha256"
#: The files a model is given by: its card, its ONNX file or its tensors (the others lie beside it).
MODEL_SUFFIXES = (".json", ".safetensors", ".onnx")
SALIENCY_ONNX_SUFFIX = ".saliency.onnx"


def sha256_of(path: PathLike) -> str:
    """Hex sha256 of a file, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def model_files(path: PathLike) -> Tuple[Path, Path]:
    """(tensors, card) paths for a model given by any of its files or by their common stem."""
    stem = model_stem(path)
    return stem.with_suffix(".safetensors"), stem.with_suffix(".json")


def model_stem(path: PathLike) -> Path:
    """The common stem of a model's files, from any of them (``.json``, ``.safetensors``, ``.onnx``,
    ``.saliency.onnx``)."""
    path = Path(path)
    if path.name.endswith(SALIENCY_ONNX_SUFFIX):
        return path.with_name(path.name[: -len(SALIENCY_ONNX_SUFFIX)])
    return path.with_suffix("") if path.suffix in MODEL_SUFFIXES else path


def onnx_files(path: PathLike) -> Tuple[Path, Path]:
    """(classification, saliency) ONNX files of a model: ``<stem>.onnx`` and ``<stem>.saliency.onnx``."""
    stem = model_stem(path)
    return stem.with_suffix(".onnx"), stem.with_name(stem.name + SALIENCY_ONNX_SUFFIX)


def file_block(path: Path, file_format: str) -> Dict[str, Any]:
    """A card block describing a written model file: name, format, sha256 and size."""
    return {"file": path.name, "format": file_format, "sha256": sha256_of(path), "bytes": path.stat().st_size}


def save_model(model: "ResNet3D", path: PathLike, card: Mapping[str, Any], onnx_opset: Optional[int] = None) -> Path:
    """Write ``model`` as ``<stem>.safetensors``, ``<stem>.onnx`` and ``<stem>.saliency.onnx`` (see
    :mod:`.onnx_export`) and its card ``<stem>.json``; return the card's path.

    The card given is completed (not modified in place) with the format, the architecture and each
    file's block (name, format, sha256, size; the ONNX block also records its opset, and holds the
    saliency file's block). Every file is
    written atomically, the card last. Needs torch, safetensors and onnx (``notadiagnosis[export]``).
    ``onnx_opset`` defaults to :data:`.onnx_export.ONNX_OPSET`.
    """
    from safetensors.torch import save as serialize

    from .onnx_export import ONNX_OPSET, write_onnx

    tensors_path, card_path = model_files(path)
    tensors_path.parent.mkdir(parents=True, exist_ok=True)
    # A deep copy that also proves the card is JSON-able; JSON has no NaN or infinity: they become null.
    completed = _finite_or_null(json.loads(json.dumps(dict(card))))
    completed["format"] = CARD_FORMAT
    completed["architecture"] = dict(model.architecture)
    completed.setdefault("disclaimer", DISCLAIMER)
    for block in FILE_BLOCKS:
        completed.pop(block, None)
    # The files' hashes come later; everything else is checked now, before any file is written.
    checked = ModelCard.parse(completed, "the model card to export", files=False)
    digest = card_digest(completed)
    state = {name: tensor.detach().cpu().contiguous() for name, tensor in model.state_dict().items()}
    metadata = {"format": "pt", "card": card_path.name, CARD_DIGEST_KEY: digest}
    with atomic_path(tensors_path) as temporary:
        temporary.write_bytes(_sorted_header(serialize(state, metadata=metadata)))
    completed["weights"] = file_block(tensors_path, "safetensors")
    classify_path, saliency_path = onnx_files(path)
    metadata = {"card": card_path.name, CARD_DIGEST_KEY: digest}
    blocks = {}
    # The saliency file first: the classification file records its sha256, so a pin on it covers both.
    for onnx_path, saliency in ((saliency_path, True), (classify_path, False)):
        with atomic_path(onnx_path) as temporary:
            details = write_onnx(model, temporary, metadata, checked.preprocessing.patch_size, saliency,
                                 ONNX_OPSET if onnx_opset is None else onnx_opset)
        blocks[saliency] = file_block(onnx_path, "onnx") | details
        metadata = metadata | {SALIENCY_DIGEST_KEY: blocks[True]["sha256"]}
    completed["onnx"] = blocks[False] | {"saliency": blocks[True]}
    with atomic_path(card_path) as temporary:
        temporary.write_text(json.dumps(completed, indent=2, sort_keys=False, allow_nan=False) + "\n", encoding="utf-8")
    return card_path


def given_model_files(path: PathLike) -> Tuple[Path, Path]:
    """(tensors, card) paths of a model named by the user: the file given must exist and be the card
    (.json), its ONNX file (.onnx) or its tensors (.safetensors); nothing else is ever substituted for it."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise WeightsError(f"The model {path} does not exist; give the model's .json card, .onnx or .safetensors file.")
    if path.suffix not in MODEL_SUFFIXES:
        raise WeightsError(
            f"The model {path} is neither a model card (.json) nor its .onnx or .safetensors file; give one of these."
        )
    return model_files(path)


def read_card(path: PathLike) -> ModelCard:
    """Read and check a model card (JSON) without loading tensors."""
    _, card_path = given_model_files(path)
    if not card_path.is_file():
        raise WeightsError(f"Model card {card_path} not found; a model is a .safetensors file with its .json card beside it.")
    try:
        card = json.loads(card_path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise WeightsError(f"Model card {card_path} is not valid JSON ({error}); re-export or re-download the model.") from None
    if not isinstance(card, dict) or card.get("format") != CARD_FORMAT:
        raise WeightsError(f"{card_path} is not a Not-a-Diagnosis model card (format {CARD_FORMAT!r} expected).")
    return ModelCard.parse(card, f"Model card {card_path}")


def card_digest(card: Mapping[str, Any]) -> str:
    """sha256 of the card without its file blocks (``weights``, ``onnx``), over canonical JSON (sorted keys,
    no spaces, whole-valued floats as integers so that a tool rewriting ``1.0`` as ``1`` does not change it)."""
    bound = _canonical_numbers({key: value for key, value in card.items() if key not in FILE_BLOCKS})
    try:
        canonical = json.dumps(bound, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False)
    except ValueError:
        raise WeightsError("The model card holds NaN or infinity, which JSON cannot; re-export the model.") from None
    return hashlib.sha256(canonical.encode("ascii")).hexdigest()


def check_bound_to_card(bound_digest: Optional[str], card: Mapping[str, Any], model_file: str, card_file: str) -> None:
    """Refuse a model file whose recorded card digest is not ``card``'s (the card was edited after export)."""
    if bound_digest != card_digest(card):
        raise WeightsError(
            f"{card_file} is not the card {model_file} was exported with (its calibration, threshold, "
            "preprocessing or another field was changed); restore the original card or re-export the model."
        )


def _map_floats(value: Any, convert: Callable[[float], Any]) -> Any:
    """``value`` (parsed JSON) with ``convert`` applied to every float in it."""
    if isinstance(value, float):
        return convert(value)
    if isinstance(value, dict):
        return {key: _map_floats(item, convert) for key, item in value.items()}
    if isinstance(value, list):
        return [_map_floats(item, convert) for item in value]
    return value


def _canonical_numbers(value: Any) -> Any:
    return _map_floats(value, lambda x: int(x) if x.is_integer() and abs(x) < 2 ** 53 else x)


def _finite_or_null(value: Any) -> Any:
    return _map_floats(value, lambda x: x if math.isfinite(x) else None)


def _sorted_header(data: bytes) -> bytes:
    """The same safetensors bytes with the header's keys sorted: safetensors writes its metadata in a
    varying order, and an export must give the same sha256 every time for the hash to be a pin."""
    length = int.from_bytes(data[:8], "little")
    header = json.loads(data[8 : 8 + length].decode("utf-8"))
    text = json.dumps(header, sort_keys=True, separators=(",", ":")).encode("utf-8")
    text += b" " * (-len(text) % 8)  # the data section starts 8-byte aligned, as safetensors writes it
    return len(text).to_bytes(8, "little") + text + data[8 + length :]


def header_metadata(data: bytes) -> Dict[str, str]:
    """The ``__metadata__`` of a safetensors file's header (its first 8 bytes give the header's length)."""
    if len(data) < 8:
        raise ValueError("file shorter than a safetensors header")
    length = int.from_bytes(data[:8], "little")
    if length > len(data) - 8:
        raise ValueError("header longer than the file")
    header = json.loads(data[8 : 8 + length].decode("utf-8"))
    metadata = header.get("__metadata__", {}) if isinstance(header, dict) else {}
    return metadata if isinstance(metadata, dict) else {}


def load_model(path: PathLike, expected_sha256: Optional[str] = None,
               card: Optional[ModelCard] = None) -> Tuple["ResNet3D", ModelCard]:
    """Load a model (eval mode, CPU) and its card, verifying the sha256 of the tensors file. ``card``: the
    model's card when the caller has already read it (:func:`read_card` of the same path), else read here.

    ``expected_sha256`` pins the tensors file to a hash the caller trusts (e.g. one published with
    the model), and through the card digest in its header the card too; the card's own hash of the
    tensors is always checked. A model exported before cards were bound (no digest in its header)
    still loads unpinned, but is refused when a hash is pinned: the pin could not cover its card.
    """
    from safetensors import SafetensorError
    from safetensors.torch import load as load_tensors

    from .model import build_model

    tensors_path, card_path = given_model_files(path)
    if card is None:
        card = read_card(path)
    if not tensors_path.is_file():
        raise WeightsError(f"Model tensors {tensors_path} not found beside its card {card_path.name}.")
    data = verified_bytes(tensors_path, card.weights, expected_sha256)
    try:
        metadata = header_metadata(data)
        state = load_tensors(data)
    except (SafetensorError, OSError, ValueError, UnicodeDecodeError) as error:
        raise WeightsError(f"{tensors_path.name} is not a readable safetensors file ({error}).") from None
    bound = metadata.get(CARD_DIGEST_KEY)
    if bound is None and expected_sha256 is not None:
        raise WeightsError(
            f"{tensors_path.name} was exported without its card's digest, so the pinned sha256 cannot cover the card "
            f"{card_path.name}; re-export the model with Training/ (nadtrain export)."
        )
    if bound is not None:
        check_bound_to_card(bound, card, tensors_path.name, card_path.name)
    try:
        model = build_model(card.architecture)
        model.load_state_dict(state, strict=True)
    except (ValueError, KeyError, RuntimeError) as error:
        raise WeightsError(f"The tensors in {tensors_path.name} do not fit the architecture in its card ({error}).") from None
    return model.eval(), card


def verified_bytes(path: Path, block: FileBlock, expected_sha256: Optional[str] = None) -> bytes:
    """The bytes of a model file, read once (the bytes hashed are the bytes loaded), after checking them
    against the sha256 in the card's ``block`` for the file, the bundled model's pin (a file in the package's
    models folder) and, when given, the sha256 the caller pins."""
    data = Path(path).read_bytes()
    actual = hashlib.sha256(data).hexdigest()
    recorded = (block.sha256 or "").lower()
    if actual != recorded:
        raise WeightsError(
            f"{path.name} does not match the sha256 in its card (file {actual[:12]}…, card {recorded[:12]}…): "
            "the file is damaged or was altered; re-download or re-export it."
        )
    check_bundled_pin(path, actual)
    if expected_sha256 is not None and actual != expected_sha256.lower():
        raise WeightsError(f"{path.name} has sha256 {actual}, not the expected {expected_sha256}.")
    return data


def bundled_models_dir() -> Path:
    """Folder of the models shipped inside the package."""
    return Path(__file__).resolve().parent / "models"


def check_bundled_pin(model_file: Path, actual_sha256: str) -> None:
    """Refuse a pinned model file inside the package's models folder whose sha256 is not its pin
    (:data:`BUNDLED_MODEL_SHA256`, :data:`BUNDLED_ONNX_SHA256`).

    The card travels with the file and can be re-hashed by whoever alters the file; the pin lives in
    the code, so only a change of the code itself (a new release) can move it.
    """
    if Path(model_file).resolve().parent != bundled_models_dir():
        return
    pinned = {".safetensors": BUNDLED_MODEL_SHA256, ".onnx": BUNDLED_ONNX_SHA256}.get(Path(model_file).suffix)
    if Path(model_file).name.endswith(SALIENCY_ONNX_SUFFIX):
        return  # pinned through the classification file, which records its sha256
    if pinned is not None and actual_sha256.lower() != pinned:
        raise WeightsError(
            f"The bundled model {Path(model_file).name} has sha256 {actual_sha256[:12]}…, not the "
            f"{pinned[:12]}… this version of notadiagnosis ships: the installed package was altered; "
            "reinstall notadiagnosis."
        )


def default_model_path() -> Path:
    """Card path of the bundled default model; raises :class:`NoDefaultModelError` when there is none."""
    card_path = bundled_models_dir() / f"{DEFAULT_MODEL_NAME}.json"
    if not card_path.is_file():
        raise NoDefaultModelError(
            "No default model is bundled with this installation of notadiagnosis yet; "
            "train one with Training/ and pass it with --model PATH (or Classifier.load(path))."
        )
    return card_path
