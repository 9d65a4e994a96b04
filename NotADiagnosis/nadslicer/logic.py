"""Classify the placed points of a point list on a CT volume node: the module's whole computation.

One call, :func:`classify`, reads the inputs (never modifying them), checks them, runs the library's
classifier on all points in batches, and only when everything succeeded writes new nodes: a results
table and, when asked, a saliency overlay. A cancelled or failed run leaves the scene as it was.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple

import numpy as np

from notadiagnosis.geometry import is_inside, ras_to_lps

from .errors import InputError, PointOutsideVolumeError
from .points import require_points
from .results import add_saliency_volume, show_overlay, write_results_table
from .volumes import volume_to_image

#: ``progress(done, total, message)``; returning ``False`` cancels the run.
ProgressCallback = Callable[[int, int, str], Optional[bool]]

DEVICE_CHOICES = ("Auto", "CPU", "GPU")
_DEVICE_NAMES = {"auto": "auto", "cpu": "cpu", "gpu": "gpu"}

# Loaded classifiers, one per (model path, device): loading verifies a sha256 and builds the network,
# which is worth doing once per session rather than per click.
_CLASSIFIERS: Dict[Tuple[str, str], Any] = {}


@dataclass
class ClassificationOptions:
    """What the user chose. ``model_path`` None means the model bundled with the library."""

    device: str = "Auto"
    tta: bool = True
    saliency: bool = True
    model_path: Optional[str] = None
    batch_size: int = 32
    show_overlay: bool = True


@dataclass
class ClassificationResult:
    """What a run produced: the new nodes and the predictions behind them."""

    table_node: Any
    saliency_node: Optional[Any]
    labels: List[str]
    points_ras: np.ndarray
    predictions: List[Any]
    model_name: str
    model_version: str
    device_description: str
    warnings: List[str] = field(default_factory=list)

    @property
    def status(self) -> str:
        """The status label: model, version, device, how many points, and every distinct warning.

        Warnings (not a CT in HU, cube outside the CT, point off tissue...) make results unreliable, so
        they are said here, where the user looks, not only in the table's last column.
        """
        line = (
            f"Model {self.model_name} {self.model_version} on {self.device_description}; "
            f"{len(self.labels)} point(s) classified. Not a diagnosis."
        )
        if not self.warnings:
            return line
        flagged = sum(1 for prediction in self.predictions if prediction.warnings)
        listed = "\n".join(f"- {warning}" for warning in self.warnings)
        return (f"{line}\nWarning: {flagged} of {len(self.labels)} result(s) may be unreliable "
                f"(see the Warning column):\n{listed}")


def device_name(choice: str) -> str:
    """The library's device name for a UI choice ("Auto", "CPU", "GPU")."""
    key = (choice or "auto").strip().lower()
    if key not in _DEVICE_NAMES:
        raise InputError(f"Unknown device {choice!r}; choose one of {', '.join(DEVICE_CHOICES)}.")
    return _DEVICE_NAMES[key]


def get_classifier(model_path: Optional[str] = None, device: str = "Auto"):
    """The classifier for (model, device), loaded on first use and reused afterwards.

    Imports torch (through the library) here, not at module import.
    """
    from notadiagnosis.classifier import Classifier

    path_key = "<default>" if model_path is None else str(Path(model_path).expanduser().resolve())
    key = (path_key, device_name(device))
    if key not in _CLASSIFIERS:
        check_device(key[1])
        _CLASSIFIERS[key] = Classifier.load(None if model_path is None else path_key, device=key[1])
    return _CLASSIFIERS[key]


def check_device(name: str) -> None:
    """Raise :class:`InputError` in the panel's words when the chosen device is not available here."""
    from notadiagnosis.device import select_device

    try:
        select_device(name)
    except InputError:
        raise InputError(
            "No GPU is available to this Slicer (neither CUDA nor Apple MPS); choose Device: Auto or CPU. "
            "For an NVIDIA GPU, install the CUDA build of PyTorch with the PyTorch Utils module."
        ) from None


def clear_classifier_cache() -> None:
    """Forget loaded classifiers (after the user picks another model file, or to free GPU memory)."""
    _CLASSIFIERS.clear()


def check_points_inside(image, labels, points_lps, volume_name: str) -> None:
    """Raise :class:`PointOutsideVolumeError` naming the first point outside the CT."""
    for label, point_lps in zip(labels, points_lps):
        if not is_inside(image, point_lps):
            r, a, s = -point_lps[0], -point_lps[1], point_lps[2]
            raise PointOutsideVolumeError(
                f"The point '{label}' (R {r:.1f}, A {a:.1f}, S {s:.1f} mm) lies outside the volume '{volume_name}'; "
                "move it onto the nodule inside the CT or delete it, then classify again."
            )


def classify(
    volume_node,
    markups_node,
    options: Optional[ClassificationOptions] = None,
    progress: Optional[ProgressCallback] = None,
    classifier=None,
) -> ClassificationResult:
    """Classify every placed point of ``markups_node`` on ``volume_node``; write the results as new nodes.

    ``classifier`` overrides the cached one (tests pass a :meth:`Classifier.from_model`). Raises a
    :class:`notadiagnosis.errors.NotADiagnosisError` subclass for anything the user can fix, and
    ``notadiagnosis.classifier.CancelledError`` when ``progress`` returns ``False``.
    """
    options = options or ClassificationOptions()
    image = volume_to_image(volume_node)
    points = require_points(markups_node)
    points_lps = ras_to_lps(points.positions_ras)
    check_points_inside(image, points.labels, points_lps, volume_node.GetName())

    if classifier is None:
        classifier = get_classifier(options.model_path, options.device)
    from notadiagnosis.classifier import CancelledError

    total_steps = len(points) * (2 if options.saliency else 1)

    def report(done: int, message: str) -> None:
        if progress is not None and progress(done, total_steps, message) is False:
            raise CancelledError("Classification cancelled; no results were kept.")

    report(0, "Classifying")
    predictions = classifier.predict(
        image,
        points_lps,
        batch_size=options.batch_size,
        tta=options.tta,
        callback=None if progress is None else (lambda done, total: progress(done, total_steps, "Classifying")),
    )
    maps = []
    if options.saliency:
        for index, point_lps in enumerate(points_lps):
            report(len(points) + index, f"Saliency for {points.labels[index]}")
            maps.append(classifier.saliency(image, point_lps))
        report(total_steps, "Writing results")

    # Everything was computed: only now does the scene change.
    scene = volume_node.GetScene()
    card = classifier.card
    metadata = {
        "Model": str(card.get("name", "model")),
        "ModelVersion": str(card.get("version", "")),
        "Device": classifier.device_description,
        "TestTimeAugmentation": str(bool(options.tta)),
        "InputVolume": volume_node.GetID(),
        "PointList": markups_node.GetID(),
        "Disclaimer": str(card.get("disclaimer", "Not a diagnosis: research use only.")),
    }
    table_node = write_results_table(scene, points.labels, points.positions_ras, predictions, metadata)
    saliency_node = None
    if maps:
        try:
            saliency_node = add_saliency_volume(scene, volume_node, maps, image)
        except Exception:
            scene.RemoveNode(table_node)  # never a table that looks complete next to a missing overlay
            raise
        table_node.SetNodeReferenceID("saliency", saliency_node.GetID())
        if options.show_overlay:
            show_overlay(scene, volume_node, saliency_node)
    return ClassificationResult(
        table_node=table_node,
        saliency_node=saliency_node,
        labels=list(points.labels),
        points_ras=points.positions_ras.copy(),
        predictions=list(predictions),
        model_name=metadata["Model"],
        model_version=metadata["ModelVersion"],
        device_description=classifier.device_description,
        warnings=sorted({warning for prediction in predictions for warning in prediction.warnings}),
    )
