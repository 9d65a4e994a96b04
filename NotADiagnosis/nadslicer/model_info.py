"""What the status line says before the first classification: the bundled model, read from its card.

Reading the card (JSON) needs neither torch nor the library's weights module, so opening the module
panel stays instant; loading and sha256 verification happen at the first Classify.
"""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from typing import Optional

# The library's bundled default model: <package>/models/default.json (notadiagnosis.weights).
DEFAULT_CARD = Path("models") / "default.json"


def library_dir() -> Optional[Path]:
    """Folder of the importable ``notadiagnosis`` package, found without importing it."""
    spec = importlib.util.find_spec("notadiagnosis")
    return Path(spec.origin).parent if spec is not None and spec.origin else None


def library_disclaimer(package_dir: Optional[Path] = None) -> Optional[str]:
    """The library's disclaimer (long form), read from its one home ``notadiagnosis/disclaimer.py``
    without importing the library (whose package loads numpy and SimpleITK); None when it is missing."""
    package_dir = package_dir or library_dir()
    source = Path(package_dir) / "disclaimer.py" if package_dir is not None else None
    if source is None or not source.is_file():
        return None
    spec = importlib.util.spec_from_file_location("_notadiagnosis_disclaimer", source)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)  # standard library only: the file states two strings
    return module.DISCLAIMER


def bundled_model_summary(package_dir: Optional[Path] = None) -> str:
    """One line naming the bundled model and its version, or saying that none is bundled."""
    package_dir = package_dir or library_dir()
    if package_dir is None:
        return "The notadiagnosis library is missing from this installation; reinstall the extension."
    card_path = Path(package_dir) / DEFAULT_CARD
    if not card_path.is_file():
        return "No default model is bundled with this installation; Classify will say what to do."
    try:
        card = json.loads(card_path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return f"The bundled model card {card_path.name} cannot be read; reinstall the extension."
    name = str(card.get("name", "model"))
    version = str(card.get("version", ""))
    return f"Model {name} {version} (loaded and verified at the first Classify). Not a diagnosis.".replace("  ", " ")


def model_summary(model_path: Optional[str] = None) -> str:
    """Name, version and sha256 of the model the panel would use: the bundled one (None) or a file.

    The sha256 is that of the file ONNX Runtime loads (``<stem>.onnx``), the digest a pinned sha256 is
    compared with (it also covers the card, whose digest is inside the file); a model exported before
    ONNX files existed shows its ``.safetensors`` file's. Reads the card and hashes the file (about
    1 MB); the full verification happens when the model loads.
    """
    from notadiagnosis.errors import NotADiagnosisError
    from notadiagnosis.weights import DEFAULT_MODEL_NAME, bundled_models_dir, model_files, onnx_files, read_card, sha256_of

    path = Path(model_path).expanduser() if model_path else bundled_models_dir() / f"{DEFAULT_MODEL_NAME}.json"
    tensors_path, card_path = model_files(path)
    origin = "bundled" if not model_path else str(card_path)
    try:
        card = read_card(card_path)
        pinned_file = onnx_files(card_path)[0] if card.onnx is not None else tensors_path
        digest = sha256_of(pinned_file)
    except (NotADiagnosisError, OSError) as error:
        return f"The model {origin} cannot be read: {error}"
    return f"Model {card.title} ({origin}); sha256 of {pinned_file.name}: {digest}"
