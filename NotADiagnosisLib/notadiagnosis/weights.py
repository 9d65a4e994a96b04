"""Model weights: safetensors tensors plus a JSON model card, verified by sha256. No pickle.

A model is two files side by side: ``<stem>.safetensors`` (the tensors) and ``<stem>.json`` (the
card: architecture, preprocessing constants, temperature, threshold, training data and recipe,
metrics with their split, the sha256 of the tensors file, version). The card changes predictions as
much as the tensors do, so its digest (everything but its ``weights`` block, which holds the file's
own hash) is written into the tensors file's header: a sha256 that pins the tensors file pins the
card too. Loading checks the card's fields, the file's sha256 (and, optionally, a sha256 the caller
pins), that the card is the one the file was exported with, then rebuilds the network from the card
and loads the tensors strictly.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Dict, Optional, Tuple, Union

from .errors import NoDefaultModelError, WeightsError

if TYPE_CHECKING:  # torch is imported only by the functions that need it: reading a card stays light.
    from .model import ResNet3D

CARD_FORMAT = "notadiagnosis-model-card/1"
DEFAULT_MODEL_NAME = "default"
#: sha256 of the bundled default model's tensors file, pinned in the code: every load of a model from the
#: package's models folder must match it, so a model altered inside the installed package (tensors and a
#: re-hashed card together) is refused. The card is covered too, through its digest in the tensors' header.
#: Change it together with the bundled file, and only then.
BUNDLED_MODEL_SHA256 = "918e8d85953dc776efdb6282f6f6d2b962a03df636f64488db22c826ccfae138"
#: The files a model is given by: its card or its tensors (the other one lies beside it).
MODEL_SUFFIXES = (".json", ".safetensors")
REQUIRED_CARD_KEYS = ("format", "name", "version", "architecture", "preprocessing", "calibration", "threshold", "weights")
# Key, in the safetensors header's metadata, of the digest that binds the card to the tensors file.
CARD_DIGEST_KEY = "card_sha256"
DISCLAIMER = (
    "Not a diagnosis: research use only. The probability estimates how LIDC-IDRI radiologists would "
    "rate the nodule's malignancy; the model has not been validated on patients."
)

PathLike = Union[str, "os.PathLike[str]"]


def sha256_of(path: PathLike) -> str:
    """Hex sha256 of a file, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def model_files(path: PathLike) -> Tuple[Path, Path]:
    """(tensors, card) paths for a model given by either file or by its common stem."""
    path = Path(path)
    stem = path.with_suffix("") if path.suffix in (".safetensors", ".json") else path
    return stem.with_suffix(".safetensors"), stem.with_suffix(".json")


def save_model(model: "ResNet3D", path: PathLike, card: Dict[str, Any]) -> Path:
    """Write ``model`` as ``<stem>.safetensors`` and its card ``<stem>.json``; return the card's path.

    The card given is completed (not modified in place) with the format, the architecture and the
    tensors file's name, format and sha256. Both files are written atomically.
    """
    from safetensors.torch import save as serialize

    tensors_path, card_path = model_files(path)
    tensors_path.parent.mkdir(parents=True, exist_ok=True)
    # A deep copy that also proves the card is JSON-able; JSON has no NaN or infinity: they become null.
    completed = _finite_or_null(json.loads(json.dumps(card)))
    completed["format"] = CARD_FORMAT
    completed["architecture"] = dict(model.architecture)
    completed.setdefault("disclaimer", DISCLAIMER)
    completed.pop("weights", None)
    check_card(completed | {"weights": {"sha256": ""}}, "the model card to export")  # the file's hash comes later
    state = {name: tensor.detach().cpu().contiguous() for name, tensor in model.state_dict().items()}
    metadata = {"format": "pt", "card": card_path.name, CARD_DIGEST_KEY: card_digest(completed)}
    with _atomic_path(tensors_path) as temporary:
        temporary.write_bytes(_sorted_header(serialize(state, metadata=metadata)))
    completed["weights"] = {
        "file": tensors_path.name,
        "format": "safetensors",
        "sha256": sha256_of(tensors_path),
        "bytes": tensors_path.stat().st_size,
    }
    with _atomic_path(card_path) as temporary:
        temporary.write_text(json.dumps(completed, indent=2, sort_keys=False, allow_nan=False) + "\n", encoding="utf-8")
    return card_path


def given_model_files(path: PathLike) -> Tuple[Path, Path]:
    """(tensors, card) paths of a model named by the user: the file given must exist and be the card
    (.json) or the tensors (.safetensors); nothing else is ever substituted for it."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise WeightsError(f"The model {path} does not exist; give the model's .json card or .safetensors file.")
    if path.suffix not in MODEL_SUFFIXES:
        raise WeightsError(
            f"The model {path} is neither a model card (.json) nor its tensors (.safetensors); give one of the two files."
        )
    return model_files(path)


def read_card(path: PathLike) -> Dict[str, Any]:
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
    check_card(card, f"Model card {card_path}")
    return card


def check_card(card: Dict[str, Any], where: str) -> None:
    """Raise :class:`WeightsError` unless the card has every field inference reads, of the right type and range."""

    def fail(problem: str) -> None:
        raise WeightsError(f"{where} {problem}; re-export the model with Training/ (nadtrain export).")

    missing = [key for key in REQUIRED_CARD_KEYS if key not in card]
    if missing:
        fail(f"lacks {', '.join(missing)}")
    for key in ("architecture", "preprocessing", "calibration", "weights"):
        if not isinstance(card[key], dict):
            fail(f"has a {key!r} that is not a JSON object")
    preprocessing, calibration = card["preprocessing"], card["calibration"]
    numbers = {
        "preprocessing.patch_size": preprocessing.get("patch_size"),
        "preprocessing.spacing_mm": preprocessing.get("spacing_mm"),
        "preprocessing.hu_min": preprocessing.get("hu_min"),
        "preprocessing.hu_max": preprocessing.get("hu_max"),
        "calibration.temperature": calibration.get("temperature"),
        "threshold": card["threshold"],
    }
    for name, value in numbers.items():
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            fail(f"has no finite number for {name} (found {value!r})")
    if numbers["preprocessing.patch_size"] != int(numbers["preprocessing.patch_size"]) or numbers["preprocessing.patch_size"] < 8:
        fail(f"has patch_size {numbers['preprocessing.patch_size']!r}; a whole number of at least 8 voxels is needed")
    if numbers["preprocessing.spacing_mm"] <= 0 or numbers["calibration.temperature"] <= 0:
        fail("has a spacing or temperature that is not positive")
    if numbers["preprocessing.hu_min"] >= numbers["preprocessing.hu_max"]:
        fail("has hu_min not below hu_max")
    if not 0.0 <= numbers["threshold"] <= 1.0:
        fail(f"has threshold {numbers['threshold']!r}, not a probability")
    if not isinstance(card["weights"].get("sha256"), str):
        fail("has no sha256 of its tensors file")


def card_digest(card: Dict[str, Any]) -> str:
    """sha256 of the card without its ``weights`` block, over canonical JSON (sorted keys, no spaces,
    whole-valued floats as integers so that a tool rewriting ``1.0`` as ``1`` does not change it)."""
    bound = _canonical_numbers({key: value for key, value in card.items() if key != "weights"})
    try:
        canonical = json.dumps(bound, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False)
    except ValueError:
        raise WeightsError("The model card holds NaN or infinity, which JSON cannot; re-export the model.") from None
    return hashlib.sha256(canonical.encode("ascii")).hexdigest()


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


def load_model(path: PathLike, expected_sha256: Optional[str] = None) -> Tuple["ResNet3D", Dict[str, Any]]:
    """Load a model (eval mode, CPU) and its card, verifying the sha256 of the tensors file.

    ``expected_sha256`` pins the tensors file to a hash the caller trusts (e.g. one published with
    the model), and through the card digest in its header the card too; the card's own hash of the
    tensors is always checked. A model exported before cards were bound (no digest in its header)
    still loads unpinned, but is refused when a hash is pinned: the pin could not cover its card.
    """
    from safetensors import SafetensorError
    from safetensors.torch import load as load_tensors

    from .model import build_model

    tensors_path, card_path = given_model_files(path)
    card = read_card(path)
    if not tensors_path.is_file():
        raise WeightsError(f"Model tensors {tensors_path} not found beside its card {card_path.name}.")
    # Read once: the bytes hashed are the bytes loaded.
    data = tensors_path.read_bytes()
    actual = hashlib.sha256(data).hexdigest()
    recorded = str(card["weights"].get("sha256", "")).lower()
    if actual != recorded:
        raise WeightsError(
            f"{tensors_path.name} does not match the sha256 in its card (file {actual[:12]}…, card {recorded[:12]}…): "
            "the file is damaged or was altered; re-download or re-export it."
        )
    check_bundled_pin(tensors_path, actual)
    if expected_sha256 is not None and actual != expected_sha256.lower():
        raise WeightsError(f"{tensors_path.name} has sha256 {actual}, not the expected {expected_sha256}.")
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
    if bound is not None and bound != card_digest(card):
        raise WeightsError(
            f"{card_path.name} is not the card {tensors_path.name} was exported with (its calibration, threshold, "
            "preprocessing or another field was changed); restore the original card or re-export the model."
        )
    try:
        model = build_model(card["architecture"])
        model.load_state_dict(state, strict=True)
    except (ValueError, KeyError, RuntimeError) as error:
        raise WeightsError(f"The tensors in {tensors_path.name} do not fit the architecture in its card ({error}).") from None
    return model.eval(), card


def bundled_models_dir() -> Path:
    """Folder of the models shipped inside the package."""
    return Path(__file__).resolve().parent / "models"


def check_bundled_pin(tensors_path: Path, actual_sha256: str) -> None:
    """Refuse a model file inside the package's models folder whose sha256 is not :data:`BUNDLED_MODEL_SHA256`.

    The card travels with the file and can be re-hashed by whoever alters the file; the pin lives in
    the code, so only a change of the code itself (a new release) can move it.
    """
    if Path(tensors_path).resolve().parent != bundled_models_dir():
        return
    if actual_sha256.lower() != BUNDLED_MODEL_SHA256:
        raise WeightsError(
            f"The bundled model {Path(tensors_path).name} has sha256 {actual_sha256[:12]}…, not the "
            f"{BUNDLED_MODEL_SHA256[:12]}… this version of notadiagnosis ships: the installed package was altered; "
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


class _atomic_path:
    """Context manager giving a temporary path that replaces ``target`` only on success."""

    def __init__(self, target: Path) -> None:
        self.target = target

    def __enter__(self) -> Path:
        handle, name = tempfile.mkstemp(prefix=f".{self.target.name}.", dir=str(self.target.parent))
        os.close(handle)
        self.temporary = Path(name)
        return self.temporary

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            # mkstemp creates files readable by their owner only; give the usual umask-based mode.
            umask = os.umask(0)
            os.umask(umask)
            os.chmod(self.temporary, 0o666 & ~umask)
            os.replace(self.temporary, self.target)
        else:
            self.temporary.unlink(missing_ok=True)
