"""The classifier: load a verified model, predict malignancy probabilities at points of a CT.

Estimator-style: ``Classifier.load(...)`` then ``predict(image, points_lps)``; no hidden state
beyond the loaded model and its card. Each point's 64 mm cube is extracted in physical space,
normalised with the card's constants, and classified with flip test-time augmentation (TTA): the
probability is ``sigmoid(mean TTA logit / temperature)``, the uncertainty the standard deviation
of the calibrated per-flip probabilities. The network runs on ONNX Runtime by default
(:mod:`.onnx_backend`) or on torch (:mod:`.torch_backend`, the optional extra); this module imports
neither.
By default each cube is centred on the nodule found near the point (:mod:`.centring`), as
training's patches are, so the answer does not move with the click.
"""
from __future__ import annotations

from collections import deque
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any, Callable, Deque, List, Mapping, NamedTuple, Optional, Sequence, Tuple, Union

import numpy as np
import SimpleITK as sitk

from .card import ModelCard
from .ct_reader import check_ct_values
from .centring import Centring, centre_for_classification
from .centring import at_click as click_centring
from .errors import InputError, NotADiagnosisError
from .finder import NOT_CT_WARNING, looks_like_ct
from .geometry import Patch, check_image, extract_patch
from .masking import mask_surroundings
from .preprocessing import normalize_hu
from .progress import progress_bar
from .runtime import choose_runtime
from .saliency import layer_cam_from_cells, map_to_ct_space
from .weights import default_model_path, model_files, read_card

# Flip TTA: identity, then left-right (x), anterior-posterior (y), superior-inferior (z).
# Axes of a (N, 1, z, y, x) batch.
TTA_FLIPS: Tuple[Tuple[int, ...], ...] = ((), (4,), (3,), (2,))
# When the backend runs several forward passes at once (``backend.executor``), a batch is cut into
# sub-batches of this many points: the next sub-batch's patches are extracted while the network runs on
# the previous one's. ONNX Runtime's cost per patch is the same from batch 1 to 64 (measured), so small
# sub-batches cost nothing.
PIPELINE_POINTS = 8
# Sub-batches whose passes may still be running while the next one is extracted: enough that the backend's
# threads always have the next passes queued when one finishes.
RUNNING_SUB_BATCHES = 2
OUTSIDE_WARNING_FRACTION = 0.10
MAX_SLICE_THICKNESS_MM = 5.0


class _Started(NamedTuple):
    """A sub-batch whose forward passes are running: its centrings, patches and the wait for its results."""

    centrings: Sequence[Centring]
    patches: List[Patch]
    finish: Callable[[], Tuple[np.ndarray, np.ndarray, np.ndarray]]


class CancelledError(NotADiagnosisError):
    """The user cancelled a running classification; no results are returned."""


@dataclass
class Prediction:
    """The result for one point. ``uncertainty`` is NaN when TTA is off.

    ``point_lps`` is the point as given (the click); ``centre_lps`` the centre of the classified
    cube: the refined centre of the nodule found near the click when ``centred`` is true, else the
    click itself.
    """

    point_lps: Tuple[float, float, float]
    probability: float
    uncertainty: float
    outside_fraction: float
    logit: float
    warnings: List[str] = field(default_factory=list)
    centre_lps: Optional[Tuple[float, float, float]] = None
    centred: bool = False


class Classifier:
    """A loaded, verified model on a runtime. Build it with :meth:`load` or :meth:`from_model`.

    ``backend`` runs the network: ``logits(batch)`` on normalised (N, 1, D, H, W) float32 arrays, and
    ``layer_cam_cells(batch)`` (ONNX Runtime) or ``layer_cam(patch)`` (torch) for saliency; it has
    ``runtime``, ``device`` and ``description`` attributes, and may have an ``executor`` (a
    ``concurrent.futures`` one) on which several ``logits`` runs go at once.
    """

    def __init__(self, backend: Any, card: ModelCard) -> None:
        self.backend = backend
        self.card = card  # parsed and checked (ModelCard.parse): nothing here re-checks it
        self.patch_size = card.preprocessing.patch_size
        self.spacing_mm = card.preprocessing.spacing_mm
        self.hu_min = card.preprocessing.hu_min
        self.hu_max = card.preprocessing.hu_max
        self.input_mask_margin_mm = card.preprocessing.input_mask_margin_mm
        self.temperature = card.temperature
        self.threshold = card.threshold

    @classmethod
    def load(cls, path: Optional[str] = None, device: str = "auto", expected_sha256: Optional[str] = None,
             runtime: str = "auto", threads: Optional[int] = None) -> "Classifier":
        """Load the bundled default model (``path=None``) or a model (its card, .onnx or .safetensors file),
        verified by sha256.

        ``runtime``: ``auto`` (ONNX Runtime when installed, else torch), ``onnx`` or ``torch``; the model
        file it loads (``.onnx`` or ``.safetensors``) is the one ``expected_sha256`` pins. ``device``:
        ``auto`` (a CUDA GPU when the runtime has one; Apple MPS too on torch, else the CPU), ``cpu``,
        ``cuda``, ``gpu`` or ``mps`` (torch only). ``threads``: intra-op CPU threads (default: the
        runtime's measured choice). What ran is in ``device_description``.
        """
        _, card_path = model_files(default_model_path() if path is None else path)
        card = read_card(card_path)
        if choose_runtime(runtime, card) == "onnx":
            from .onnx_backend import load_onnx_backend

            return cls(load_onnx_backend(card, card_path, device, expected_sha256, threads), card)
        from .torch_backend import load_torch_backend

        backend, card = load_torch_backend(card_path, device, expected_sha256, threads, card)
        return cls(backend, card)

    @classmethod
    def from_model(cls, model: Any, card: Union[ModelCard, Mapping[str, Any]], device: Any = "cpu") -> "Classifier":
        """Wrap an in-memory torch model and its card (training, evaluation, tests); needs torch.

        The card goes through the same parse as a loaded one (:meth:`.ModelCard.parse`), without the
        file blocks an unexported model lacks; its architecture defaults to the model's."""
        from .torch_backend import TorchBackend

        if not isinstance(card, ModelCard):
            card = ModelCard.parse({"architecture": dict(model.architecture), **card}, "The model card", files=False)
        return cls(TorchBackend(model, device), card)

    @property
    def runtime(self) -> str:
        """``onnxruntime`` or ``torch``."""
        return self.backend.runtime

    @property
    def device(self) -> str:
        """Where the network runs: ``cpu``, ``cuda``, ... (a torch device on the torch runtime)."""
        return self.backend.device

    @property
    def device_description(self) -> str:
        """Device, threads, runtime and its execution provider, e.g.
        ``cpu (2 threads), ONNX Runtime 1.31.1 CPUExecutionProvider`` or ``cpu (2 threads), torch 2.13.0``."""
        return self.backend.description

    @property
    def name(self) -> str:
        """Model name and version, e.g. ``default 1.0.0``."""
        return self.card.title

    def predict(
        self,
        image: sitk.Image,
        points_lps: Sequence[Sequence[float]],
        batch_size: int = 32,
        tta: bool = True,
        progress: bool = False,
        callback: Optional[Callable[[int, int], Optional[bool]]] = None,
        at_click: bool = False,
        centrings: Optional[Sequence[Centring]] = None,
    ) -> List[Prediction]:
        """Classify every point (LPS mm) of ``image`` in batches; one :class:`Prediction` per point.

        Each point is classified at the centre of the nodule found near it (``centring.centre_for_classification``;
        at the point itself, with a warning, when none is found); ``at_click=True`` classifies at the
        points as given. ``centrings`` (one :class:`~.centring.Centring` per point, e.g. from the
        measurements' segmentations) spares finding the nodules again.
        ``callback(done, total)`` is called after each batch; returning ``False`` cancels the run
        (raising :class:`CancelledError`, so partial results are never returned as complete).
        """
        points = _as_points(points_lps)
        if batch_size < 1:
            raise InputError("The batch size must be at least 1.")
        check_image(image)
        non_finite = check_ct_values(image)
        if centrings is not None and len(centrings) != len(points):
            raise ValueError(f"{len(centrings)} centrings for {len(points)} points")
        image_warnings = image_warnings_for(image, non_finite)
        looks_like_a_ct = NOT_CT_WARNING not in image_warnings  # the whole-CT look, once, not once per point
        predictions: List[Prediction] = []
        # With a backend that runs several passes at once, sub-batch by sub-batch in one pipeline over every
        # batch: this thread finds the centres and extracts the next patches while the backend's threads run
        # the network on the previous ones, never waiting for a batch to drain.
        pipelined = getattr(self.backend, "executor", None) is not None
        step, in_flight = (PIPELINE_POINTS, RUNNING_SUB_BATCHES) if pipelined else (batch_size, 0)
        running: Deque[_Started] = deque()
        reported = 0
        # Shown only when the run lasts over a second.
        bar = progress_bar(total=len(points), desc="Classifying", unit="point", leave=True, disable=not progress)

        def collect(keep: int) -> None:
            """Finish the oldest runs until ``keep`` remain; report each batch done (callback may cancel)."""
            nonlocal reported
            while len(running) > keep:
                self._finish(running.popleft(), image_warnings, predictions)
                bar.update(len(predictions) - bar.n)
                while reported < len(predictions) and (len(predictions) - reported >= batch_size
                                                        or len(predictions) == len(points)):
                    reported = min(reported + batch_size, len(points))
                    if callback is not None and callback(reported, len(points)) is False:
                        raise CancelledError("Classification cancelled; no results were kept.")

        try:
            for start in range(0, len(points), batch_size):
                chunk = points[start : start + batch_size]
                if at_click:
                    chunk_centrings = [click_centring(point) for point in chunk]
                elif centrings is not None:
                    chunk_centrings = list(centrings[start : start + batch_size])
                else:
                    chunk_centrings = [centre_for_classification(image, point, looks_like_a_ct) for point in chunk]
                for sub in range(0, len(chunk_centrings), step):
                    running.append(self._start(image, chunk_centrings[sub : sub + step], tta))
                    collect(keep=in_flight)
            collect(keep=0)
        finally:
            bar.close()
        return predictions

    def _start(self, image: sitk.Image, centrings: Sequence[Centring], tta: bool) -> "_Started":
        """Extract and normalise the patches at ``centrings`` and start their TTA forward passes."""
        patches = [extract_patch(image, centring.centre_lps, self.patch_size, self.spacing_mm) for centring in centrings]
        normalized = np.empty((len(patches),) + patches[0].array_hu.shape, dtype=np.float32)
        for patch, batch_item in zip(patches, normalized):
            normalize_hu(self._network_input_hu(patch.array_hu), self.hu_min, self.hu_max, out=batch_item)
        return _Started(centrings, patches, self._start_tta(normalized, tta))

    def _finish(self, started: "_Started", image_warnings: List[str], predictions: List[Prediction]) -> None:
        """Wait for a started sub-batch's forward passes and append its predictions."""
        probabilities, uncertainties, logits = started.finish()
        for centring, patch, probability, uncertainty, logit in zip(started.centrings, started.patches, probabilities,
                                                                    uncertainties, logits):
            warnings = list(image_warnings) + centring.warnings + patch_warnings_for(patch.outside_fraction, patch.array_hu)
            predictions.append(
                Prediction(
                    point_lps=tuple(float(v) for v in centring.click_lps),
                    probability=float(probability),
                    uncertainty=float(uncertainty),
                    outside_fraction=float(patch.outside_fraction),
                    logit=float(logit),
                    warnings=warnings,
                    centre_lps=tuple(float(v) for v in patch.point_lps),
                    centred=centring.centred,
                )
            )

    def predict_patches(self, normalized: np.ndarray, tta: bool = True) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Classify normalised patches (N, D, H, W) → (probabilities, uncertainties, mean logits).

        Training's evaluation calls this too, so temperature fitting and inference see the same
        TTA-mean logits.
        """
        return self._start_tta(normalized, tta)()

    def _start_tta(self, normalized: np.ndarray, tta: bool) -> Callable[[], Tuple[np.ndarray, np.ndarray, np.ndarray]]:
        """Start the forward passes of every TTA flip of normalised patches (N, D, H, W), at once when the
        backend can; returns the function that waits for them and gives what :meth:`predict_patches` gives."""
        batch = np.asarray(normalized, dtype=np.float32)[:, None]
        flips = TTA_FLIPS if tta else TTA_FLIPS[:1]
        runs = [self._logits_async(np.flip(batch, dims) if dims else batch) for dims in flips]
        return lambda: self._tta_result(np.stack([run.result() for run in runs]).astype(np.float32), tta)

    def _logits_async(self, batch: np.ndarray) -> "Future[np.ndarray]":
        """``backend.logits(batch)`` started on the backend's executor, or run now when it has none (a flip
        view is copied by ``logits``, so in the executor's thread)."""
        executor = getattr(self.backend, "executor", None)
        if executor is not None:
            return executor.submit(self.backend.logits, batch)
        done: "Future[np.ndarray]" = Future()
        done.set_result(self.backend.logits(batch))
        return done

    def _tta_result(self, logits: np.ndarray, tta: bool) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Probabilities, uncertainties and mean logits from the logits of each flip, (flips, N)."""
        mean_logit = logits.mean(axis=0)
        probabilities = _sigmoid(mean_logit / self.temperature)
        if tta:
            uncertainties = _sigmoid(logits / self.temperature).std(axis=0)
        else:
            uncertainties = np.full(len(mean_logit), np.nan)
        return probabilities, uncertainties, mean_logit

    def saliency(self, image: sitk.Image, point_lps: Sequence[float]) -> sitk.Image:
        """LayerCAM saliency for one point, as a float32 image in [0, 1] on the CT's own grid."""
        patch = extract_patch(image, point_lps, self.patch_size, self.spacing_mm)
        normalized = normalize_hu(self._network_input_hu(patch.array_hu), self.hu_min, self.hu_max)
        return map_to_ct_space(self.saliency_map(normalized), patch.image, image)

    def _network_input_hu(self, patch_hu: np.ndarray) -> np.ndarray:
        """The patch as the network was trained to see it: itself, or nodule-masked when the card says so
        (:func:`~.masking.mask_surroundings`, the function training used; the finder runs on the patch)."""
        if self.input_mask_margin_mm is None:
            return patch_hu
        return mask_surroundings(patch_hu, self.input_mask_margin_mm, self.spacing_mm)[0]

    def saliency_map(self, normalized: np.ndarray) -> np.ndarray:
        """LayerCAM (D, H, W) in [0, 1] of one normalised patch (D, H, W), on the patch's grid: by
        autograd on torch, by the gradient the exported graph computes on ONNX Runtime."""
        normalized = np.asarray(normalized, dtype=np.float32)
        if self.runtime == "torch":
            return self.backend.layer_cam(normalized)
        return layer_cam_from_cells(self.backend.layer_cam_cells(normalized[None, None])[0], normalized.shape)


def _as_points(points_lps: Sequence[Sequence[float]]) -> np.ndarray:
    """Points as an (N, 3) float array: one point of shape (3,) or a list of N points of 3 coordinates."""
    try:
        points = np.array(points_lps, dtype=np.float64)
    except (TypeError, ValueError):
        raise InputError("Points must be numbers: one point (x, y, z) or a list of such points, in LPS mm.") from None
    if points.ndim == 1 and points.shape == (3,):
        points = points[None]
    if points.size == 0:
        raise InputError("No points were given; place at least one point on a nodule.")
    if points.ndim != 2 or points.shape[1] != 3:
        raise InputError(f"Points must have 3 coordinates each (one point, or a list of N points: shape (N, 3)); got shape {points.shape}.")
    if not np.all(np.isfinite(points)):
        raise InputError("A point has a coordinate that is not a finite number; every point needs three finite LPS mm values.")
    return points


def image_warnings_for(image: sitk.Image, non_finite: Optional[int] = None) -> List[str]:
    """Warnings about the whole image that make every result on it unreliable. ``non_finite``: its number of
    voxels that are not finite, when known (:func:`.check_ct_values` returns it), else counted here."""
    warnings = []
    thickest = max(image.GetSpacing())
    if thickest > MAX_SLICE_THICKNESS_MM:
        warnings.append(f"voxels are {thickest:.1f} mm thick (> {MAX_SLICE_THICKNESS_MM:g} mm): small nodules are blurred")
    if non_finite is None:
        voxels = sitk.GetArrayViewFromImage(image)
        floating = np.issubdtype(voxels.dtype, np.floating)  # only float images can hold NaN or infinity
        non_finite = int(voxels.size - np.count_nonzero(np.isfinite(voxels))) if floating else 0
    if non_finite:
        # Extraction reads such voxels as air, as training does.
        warnings.append(f"{non_finite:,} voxels of the CT are not finite numbers (NaN or infinity) and are read as air")
    if not looks_like_ct(image):
        warnings.append(NOT_CT_WARNING)
    return warnings


def patch_warnings_for(outside_fraction: float, patch_hu: np.ndarray) -> List[str]:
    """Warnings about one point's patch."""
    warnings = []
    if outside_fraction > OUTSIDE_WARNING_FRACTION:
        warnings.append(f"{outside_fraction:.0%} of the 64 mm cube lies outside the CT (filled with air)")
    centre = patch_hu.shape[0] // 2
    core = patch_hu[centre - 1 : centre + 2, centre - 1 : centre + 2, centre - 1 : centre + 2]
    if core.size and float(np.median(core)) < -700.0:
        warnings.append("the point is in air or lung, not on tissue: is it on the nodule?")
    return warnings


def _sigmoid(values: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-np.asarray(values, dtype=np.float64)))
