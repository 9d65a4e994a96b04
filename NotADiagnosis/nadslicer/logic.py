"""Classify the placed points of a point list on a CT volume node: the module's whole computation.

Three steps, so that the slow part can run off Slicer's main thread while the window stays live:

1. :func:`prepare` (main thread): reads the inputs from MRML into a SimpleITK image and world
   points, checks them; nothing is modified.
2. :func:`compute` (any thread, no MRML): loads the model (first use), finds, segments and measures
   the nodule at each point (``notadiagnosis.measure_nodule``), classifies each point at the centre
   of the nodule found (or at the point: ``at_click``, or when none is found) and computes the
   saliency maps of the classified cubes, reporting to a :class:`Job` and stopping within one point's work when
   the job is cancelled.
3. :func:`write` (main thread): only when everything succeeded, writes the new nodes (results table
   with the measurements, a results point list whose labels carry the probabilities, the nodules'
   segmentation, their refined centres, the saliency overlay), places them next
   to the CT in the subject hierarchy and removes the previous run's outputs when asked. A cancelled
   or failed run leaves the scene as it was.

:func:`classify` runs the three in a row (scripts, tests, the self-test).
"""
from __future__ import annotations

import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
import SimpleITK as sitk

from notadiagnosis.card import ModelCard
from notadiagnosis.disclaimer import DISCLAIMER
from notadiagnosis.geometry import is_inside, ras_to_lps

from .devices import DEVICE_CHOICES, device_name, placement_for
from .errors import CancelledError, PointOutsideVolumeError
from .measurements import (
    MEASUREMENT_COLUMNS,
    add_nodule_segmentation,
    add_refined_centres,
    measurement_values,
    measurement_warnings,
)
from .points import ControlPoints, require_points
from .results import (
    OutputNodes,
    add_result_points,
    add_saliency_volume,
    place_next_to,
    remove_outputs,
    show_overlay,
    write_results_table,
)
from .volumes import volume_to_image

__all__ = [
    "DEVICE_CHOICES", "ClassificationOptions", "ClassificationResult", "Job", "PreparedInputs", "Computed",
    "classify", "compute", "device_name", "get_classifier", "prepare", "write",
]

#: ``progress(done, total, message)``; returning ``False`` cancels the run.
ProgressCallback = Callable[[int, int, str], Optional[bool]]

# Loaded classifiers, one per (model path, runtime, device, pinned sha256): loading verifies a sha256 and
# builds the network, which is worth doing once per session rather than per click.
_CLASSIFIERS: Dict[Tuple[str, str, str, str], Any] = {}
_CLASSIFIERS_LOCK = threading.Lock()


@dataclass
class ClassificationOptions:
    """What the user chose. ``model_path`` None means the model bundled with the library;
    ``expected_sha256`` pins the model file's digest (empty: not pinned)."""

    device: str = "Auto"
    tta: bool = True
    saliency: bool = True
    model_path: Optional[str] = None
    expected_sha256: str = ""
    show_overlay: bool = True
    measure: bool = True
    at_click: bool = False  # classify at the points as placed, not at the centres of the nodules found near them


@dataclass
class PreparedInputs:
    """The inputs read from the scene (copies; the nodes are only referenced for writing results)."""

    volume_node: Any
    markups_node: Any
    image: sitk.Image
    points: ControlPoints
    points_lps: np.ndarray

    @property
    def total_steps(self) -> int:
        return len(self.points)


class Job:
    """Progress and cancellation shared between the thread computing and the one showing the window.

    The computing side calls :meth:`update` and :meth:`check`; the window reads :meth:`snapshot` and
    calls :meth:`cancel`. A cancel is kept once made (a progress dialog that resets on its last step
    cannot lose it). ``listener(done, total, message)``, when given, is called on every update in the
    computing thread; returning ``False`` cancels (the synchronous :func:`classify` uses it).
    """

    def __init__(self, listener: Optional[ProgressCallback] = None) -> None:
        self._lock = threading.Lock()
        self._cancelled = threading.Event()
        self._state = (0, 0, "")
        self._listener = listener

    def update(self, done: int, total: int, message: str) -> None:
        with self._lock:
            self._state = (int(done), int(total), str(message))
        if self._listener is not None and self._listener(done, total, message) is False:
            self.cancel()
        self.check()

    def snapshot(self) -> Tuple[int, int, str]:
        """(done, total, message) as last reported."""
        with self._lock:
            return self._state

    def cancel(self) -> None:
        self._cancelled.set()

    @property
    def cancelled(self) -> bool:
        return self._cancelled.is_set()

    def check(self) -> None:
        """Raise :class:`CancelledError` once the job was cancelled."""
        if self._cancelled.is_set():
            raise CancelledError("Classification cancelled; no results were kept.")


@dataclass
class Computed:
    """What :func:`compute` produced, before anything touches the scene."""

    predictions: List[Any]
    maps: List[sitk.Image]
    card: ModelCard
    device_description: str
    nodules: Optional[List[Any]] = None  # measure_nodule results, one per point, when measured


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
    points_node: Optional[Any] = None
    segmentation_node: Optional[Any] = None
    centres_node: Optional[Any] = None
    nodules: Optional[List[Any]] = None

    @property
    def outputs(self) -> "OutputNodes":
        return OutputNodes(self.table_node, self.saliency_node, self.points_node, self.segmentation_node,
                           self.centres_node)

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
        if self.nodules is not None:
            found = sum(1 for nodule in self.nodules if nodule.measurement is not None)
            line += f"\nNodules found and measured: {found} of {len(self.labels)}."
        if not self.warnings:
            return line
        flagged = sum(1 for index, prediction in enumerate(self.predictions)
                      if prediction.warnings or (self.nodules is not None and self.nodules[index].warnings))
        listed = "\n".join(f"- {warning}" for warning in self.warnings)
        return (f"{line}\nWarning: {flagged} of {len(self.labels)} result(s) may be unreliable "
                f"(see the Warning column):\n{listed}")


def get_classifier(model_path: Optional[str] = None, device: str = "Auto", expected_sha256: str = ""):
    """The classifier for (model, device, pinned digest), loaded on first use and reused afterwards.

    Imports the library's runtime here, not at module import. Safe to call from a worker thread.
    """
    from notadiagnosis.classifier import Classifier

    path_key = "<default>" if model_path is None else str(Path(model_path).expanduser().resolve())
    placement = placement_for(device)
    key = (path_key, placement.runtime, placement.device, (expected_sha256 or "").strip().lower())
    with _CLASSIFIERS_LOCK:
        if key not in _CLASSIFIERS:
            _CLASSIFIERS[key] = Classifier.load(None if model_path is None else path_key, device=placement.device,
                                                expected_sha256=key[3] or None, runtime=placement.runtime)
        return _CLASSIFIERS[key]


def clear_classifier_cache() -> None:
    """Forget loaded classifiers (after the user picks another model file, or to free GPU memory)."""
    with _CLASSIFIERS_LOCK:
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


def prepare(volume_node, markups_node) -> PreparedInputs:
    """Read and check the inputs (main thread). Raises a ``NotADiagnosisError`` subclass for anything the user can fix."""
    image = volume_to_image(volume_node)
    points = require_points(markups_node)
    points_lps = ras_to_lps(points.positions_ras)
    check_points_inside(image, points.labels, points_lps, volume_node.GetName())
    return PreparedInputs(volume_node, markups_node, image, points, points_lps)


def compute(prepared: PreparedInputs, options: ClassificationOptions, job: Job, classifier=None) -> Computed:
    """Load the model if needed, classify and compute saliency point by point (no MRML: any thread).

    ``job`` is told the progress after every point and stops the run with :class:`CancelledError`
    within one point's work once cancelled.
    """
    points = prepared.points
    total = len(points) * (1 + int(options.measure) + int(options.saliency))
    job.update(0, total, "Loading the model (first use: verifying its sha256)" if classifier is None else "Classifying")
    if classifier is None:
        classifier = get_classifier(options.model_path, options.device, options.expected_sha256)
    done = 0
    nodules = centrings = None
    if options.measure:
        from notadiagnosis import measure_nodule
        from notadiagnosis.centring import from_measurements
        from notadiagnosis.references import SizeOnlyModel

        size_only = SizeOnlyModel.from_card(classifier.card)
        nodules = []
        for index, point_lps in enumerate(prepared.points_lps):
            job.update(done, total, f"Measuring {points.labels[index]}")
            nodules.append(measure_nodule(prepared.image, point_lps, model_card=classifier.card, size_only=size_only))
            done += 1
        if not options.at_click:
            # Classified at the centres the measurements found: each nodule is found once.
            centrings = from_measurements(prepared.image, prepared.points_lps, nodules)
    job.update(done, total, f"Classifying {len(points)} point(s)")
    measured = done

    def after_point(classified: int, _total: int) -> bool:
        job.update(measured + classified, total, f"Classified {classified} of {len(points)}")
        return True

    # One point per batch: Cancel (raised by job.update) is honoured after each point, not after many.
    predictions = classifier.predict(prepared.image, prepared.points_lps, batch_size=1, tta=options.tta,
                                     callback=after_point, at_click=options.at_click, centrings=centrings)
    done += len(points)
    maps = []
    if options.saliency:
        # The saliency of the cube that was classified (centred on the nodule unless at the click).
        for index, prediction in enumerate(predictions):
            job.update(done, total, f"Saliency for {points.labels[index]}")
            maps.append(classifier.saliency(prepared.image, prediction.centre_lps))
            done += 1
    job.update(total, total, "Writing results")
    return Computed(list(predictions), maps, classifier.card, classifier.device_description, nodules)


def write(
    prepared: PreparedInputs,
    computed: Computed,
    options: ClassificationOptions,
    previous: Optional[OutputNodes] = None,
) -> ClassificationResult:
    """Write the results as new nodes (main thread); remove ``previous`` outputs once the new ones exist."""
    volume_node, markups_node, points = prepared.volume_node, prepared.markups_node, prepared.points
    scene = volume_node.GetScene()
    card = computed.card
    metadata = {
        "Model": card.name,
        "ModelVersion": card.version,
        "Device": computed.device_description,
        "TestTimeAugmentation": str(bool(options.tta)),
        "InputVolume": volume_node.GetID(),
        "PointList": markups_node.GetID(),
        "Disclaimer": card.disclaimer or DISCLAIMER,
    }
    created = []
    nodules = computed.nodules
    extra_columns, extra_warnings = [], None
    if nodules is not None:
        values = [measurement_values(nodule) for nodule in nodules]
        extra_columns = [(name, unit, description, [row[name] for row in values])
                         for name, unit, _key, description in MEASUREMENT_COLUMNS]
        extra_warnings = measurement_warnings(nodules)
    segmentation_node = centres_node = None
    try:
        table_node = write_results_table(scene, points.labels, points.positions_ras, computed.predictions, metadata,
                                         extra_columns=extra_columns, extra_warnings=extra_warnings)
        created.append(table_node)
        points_node = add_result_points(scene, points.labels, points.positions_ras, computed.predictions)
        created.append(points_node)
        table_node.SetNodeReferenceID("points", points_node.GetID())
        if nodules is not None:
            segmentation_node = add_nodule_segmentation(scene, volume_node, points.labels, nodules, prepared.image)
            centres_node = add_refined_centres(scene, points.labels, nodules)
            for role, node in (("segmentation", segmentation_node), ("centres", centres_node)):
                if node is not None:
                    created.append(node)
                    table_node.SetNodeReferenceID(role, node.GetID())
        saliency_node = None
        if computed.maps:
            saliency_node = add_saliency_volume(scene, volume_node, computed.maps, prepared.image)
            created.append(saliency_node)
            table_node.SetNodeReferenceID("saliency", saliency_node.GetID())
    except Exception:
        for node in created:  # never a table that looks complete next to a missing overlay
            scene.RemoveNode(node)
        raise
    place_next_to(scene, volume_node, created)
    if saliency_node is not None and options.show_overlay:
        show_overlay(scene, volume_node, saliency_node)
    if previous is not None:
        remove_outputs(scene, previous, keep=created)
    return ClassificationResult(
        table_node=table_node,
        saliency_node=saliency_node,
        labels=list(points.labels),
        points_ras=points.positions_ras.copy(),
        predictions=list(computed.predictions),
        model_name=metadata["Model"],
        model_version=metadata["ModelVersion"],
        device_description=computed.device_description,
        warnings=sorted({warning for prediction in computed.predictions for warning in prediction.warnings}
                        | {warning for row in (extra_warnings or []) for warning in row}),
        points_node=points_node,
        segmentation_node=segmentation_node,
        centres_node=centres_node,
        nodules=None if nodules is None else list(nodules),
    )


def classify(
    volume_node,
    markups_node,
    options: Optional[ClassificationOptions] = None,
    progress: Optional[ProgressCallback] = None,
    classifier=None,
    previous: Optional[OutputNodes] = None,
) -> ClassificationResult:
    """Classify every placed point of ``markups_node`` on ``volume_node``; write the results as new nodes.

    ``classifier`` overrides the cached one (tests pass a :meth:`Classifier.from_model`). Raises a
    :class:`notadiagnosis.errors.NotADiagnosisError` subclass for anything the user can fix, and
    :class:`nadslicer.errors.CancelledError` when ``progress`` returns ``False``. ``previous``: the
    outputs of an earlier run, removed once this run's are written.
    """
    options = options or ClassificationOptions()
    prepared = prepare(volume_node, markups_node)
    job = Job(progress)
    computed = compute(prepared, options, job, classifier)
    return write(prepared, computed, options, previous)
