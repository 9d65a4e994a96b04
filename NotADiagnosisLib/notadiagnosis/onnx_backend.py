"""The ONNX Runtime backend: a model's ONNX files, verified against its card, as inference sessions.

No torch. ``<stem>.onnx`` (classification) is loaded with the model, ``<stem>.saliency.onnx`` at the
first saliency call. A file is refused, with one sentence, when it is missing, when its sha256 is not the one
in its card (damaged, truncated or altered) or not the one the caller pinned, when ONNX Runtime
cannot read it, when it needs an operator the installed ONNX Runtime lacks (the message names both
versions), when it was exported with another card (the card's digest in its ``metadata_props``)
or when its inputs and outputs are not the ones the library feeds and reads.

Threads: on the CPU, ``threads`` runs go at once, each on one thread of its own (the backend's
:attr:`OnnxBackend.executor`), and no ONNX Runtime intra-op pool. Independent runs never wait
for one another, so when another process holds a core (Slicer's GUI, another job) one run slows down
and the others go on; an intra-op pool waits at every operator for its slowest thread, and a spinning
one collapses (measured in ``Testing/Benchmarks/benchmark_runtimes.py``, README "Performance").
:data:`DEFAULT_THREADS` is the measured choice.
"""
from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np

from .card import FileBlock, ModelCard
from .errors import InputError, WeightsError
from .runtime import DEVICE_CHOICES
from .weights import CARD_DIGEST_KEY, SALIENCY_DIGEST_KEY, card_digest, check_bound_to_card, onnx_files, verified_bytes

INPUT_NAME = "patches"
LOGIT_OUTPUT = "logit"
LAYER_CAM_OUTPUT = "layer_cam"
ONNX_FORMAT = "notadiagnosis-onnx/1"
CUDA_PROVIDER, CPU_PROVIDER = "CUDAExecutionProvider", "CPUExecutionProvider"
# How ONNX Runtime says that a model needs an operator (or an operator's version) it does not have.
MISSING_OPERATOR_SIGNS = ("Could not find an implementation", "is not a registered function/op")
# Chosen by measurement on 2 cores (README, "Performance"), quiet and with one core busy: two runs at
# once halve the wall time on a quiet machine and still gain when another process holds a core.
DEFAULT_THREADS = 2


class OnnxBackend:
    """Runs the exported graphs: ``logits`` for classification, ``layer_cam_cells`` for saliency (its graph
    is verified and loaded at the first saliency call, so classification alone never pays for it).
    :attr:`executor` runs ``logits`` on ``threads`` threads at once (ONNX Runtime releases the GIL while it
    runs); ``None`` with one thread or on a GPU, where runs go one after another in the caller's thread."""

    runtime = "onnxruntime"

    def __init__(self, session: Any, provider: str, threads: int, saliency_session: Callable[[], Any]) -> None:
        import onnxruntime

        self.session = session
        self.provider = provider
        self.threads = threads
        self._saliency_session = saliency_session
        self._saliency: Any = None
        self.device = "cuda" if provider == CUDA_PROVIDER else "cpu"
        where = f"{threads} thread{'s' if threads != 1 else ''}" if provider == CPU_PROVIDER else "GPU"
        self.description = f"{self.device} ({where}), ONNX Runtime {onnxruntime.__version__} {provider}"
        concurrent = provider == CPU_PROVIDER and threads > 1
        self.executor = ThreadPoolExecutor(threads, thread_name_prefix="notadiagnosis-onnx") if concurrent else None

    def logits(self, batch: np.ndarray) -> np.ndarray:
        """Logits (N,) of normalised patches (N, 1, D, H, W)."""
        return self.session.run([LOGIT_OUTPUT], {INPUT_NAME: _float32(batch)})[0]

    def layer_cam_cells(self, batch: np.ndarray) -> np.ndarray:
        """LayerCAM (N, d, h, w) of the logit on the saliency stage's cells, before upsampling."""
        if self._saliency is None:
            self._saliency = self._saliency_session()
        return self._saliency.run([LAYER_CAM_OUTPUT], {INPUT_NAME: _float32(batch)})[0][:, 0]


def _float32(batch: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(batch, dtype=np.float32)


def load_onnx_backend(card: ModelCard, card_path: Path, device: str = "auto",
                      expected_sha256: Optional[str] = None, threads: Optional[int] = None) -> OnnxBackend:
    """A session on the card's verified ONNX file; ``device`` auto, cpu, cuda or gpu; ``threads`` runs at once
    on the CPU, one thread each (default :data:`DEFAULT_THREADS`). ``expected_sha256`` pins the classification
    file ``<stem>.onnx``, which binds the card, which holds the saliency file's sha256."""
    import onnxruntime

    block = card.onnx
    if block is None or block.sha256 is None or block.saliency is None:
        raise WeightsError(
            f"The model card {Path(card_path).name} lists no ONNX files (exported before ONNX Runtime was the runtime); "
            "re-export the model with `nadtrain export` or run it with the torch runtime (--runtime torch)."
        )
    providers = _providers(device, onnxruntime.get_available_providers())
    threads = DEFAULT_THREADS if threads is None else int(threads)
    if threads < 1:
        raise InputError("The number of threads must be at least 1.")
    classify_path, saliency_path = onnx_files(card_path)

    def session_for(path: Path, file_block: FileBlock, output: str, pin: Optional[str]) -> Any:
        if not path.is_file():
            raise WeightsError(f"Model file {path} not found beside its card {Path(card_path).name}.")
        data = verified_bytes(path, file_block, pin)
        session = _session(onnxruntime, data, path.name, card, providers)
        check_bound_to_card(session.get_modelmeta().custom_metadata_map.get(CARD_DIGEST_KEY), card, path.name,
                            Path(card_path).name)
        _check_signature(session, path.name, card, output)
        return session

    session = session_for(classify_path, block, LOGIT_OUTPUT, expected_sha256)
    provider = session.get_providers()[0]
    if _provider_name(providers[0]) == CUDA_PROVIDER and provider != CUDA_PROVIDER and (device or "auto").lower() != "auto":
        # ONNX Runtime falls back to the CPU with a log line when its CUDA provider cannot start.
        raise InputError(
            f"A GPU was asked for but ONNX Runtime {onnxruntime.__version__} could not start its CUDA provider "
            "(CUDA or cuDNN libraries missing or not matching onnxruntime-gpu, or no such GPU); use --device cpu."
        )
    # The saliency file must be the one the (verified, possibly pinned) classification file names.
    saliency_sha256 = session.get_modelmeta().custom_metadata_map.get(SALIENCY_DIGEST_KEY)
    return OnnxBackend(session, provider, threads,
                       lambda: session_for(saliency_path, block.saliency, LAYER_CAM_OUTPUT, saliency_sha256 or "-"))


def _provider_name(provider: Any) -> str:
    return provider[0] if isinstance(provider, tuple) else provider


def _providers(device: str, available: Any) -> list:
    choice = (device or "auto").lower()
    if choice in ("auto", "gpu") or choice.startswith("cuda"):
        if CUDA_PROVIDER in available:
            index = choice.split(":", 1)[1] if choice.startswith("cuda:") else "0"
            return [(CUDA_PROVIDER, {"device_id": index}), CPU_PROVIDER]
        if choice != "auto":
            raise InputError(
                "A GPU was asked for but this ONNX Runtime has no CUDA provider (install onnxruntime-gpu instead of "
                "onnxruntime, with a CUDA driver); use --device cpu."
            )
        return [CPU_PROVIDER]
    if choice == "cpu":
        return [CPU_PROVIDER]
    if choice == "mps":
        raise InputError("Apple MPS is a torch device; with ONNX Runtime use --device cpu, or --runtime torch for MPS.")
    onnx_choices = [name for name in DEVICE_CHOICES if name != "mps"]
    raise InputError(f"Unknown device {device!r}; choose one of {', '.join(onnx_choices)}.")


def _session(onnxruntime: Any, data: bytes, name: str, card: ModelCard, providers: list) -> Any:
    options = onnxruntime.SessionOptions()
    # Each run on the thread that calls it (see the module docstring): parallel runs, not an intra-op pool.
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    options.execution_mode = onnxruntime.ExecutionMode.ORT_SEQUENTIAL
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.log_severity_level = 3  # errors only: the provider that ran is reported by `info` instead
    try:
        return onnxruntime.InferenceSession(data, options, providers=providers)
    except Exception as error:  # noqa: BLE001 - onnxruntime raises its own pybind types, one per failure kind
        kind = type(error).__name__
        text = str(error).strip().splitlines()[0] if str(error).strip() else kind
        if kind == "NotImplemented" or any(sign in text for sign in MISSING_OPERATOR_SIGNS) or "opset" in text.lower():
            raise WeightsError(
                f"{name} needs an operator or opset (card: opset {card.onnx.opset}) that the installed "
                f"ONNX Runtime {onnxruntime.__version__} lacks ({text[:200]}); upgrade onnxruntime "
                "(pip install -U onnxruntime) or use --runtime torch."
            ) from None
        raise WeightsError(
            f"{name} is not a model ONNX Runtime {onnxruntime.__version__} can read ({kind}: {text[:200]}); "
            "re-download or re-export it."
        ) from None


def _check_signature(session: Any, name: str, card: ModelCard, output: str) -> None:
    size = card.preprocessing.patch_size
    inputs = {item.name: item for item in session.get_inputs()}
    patches = inputs.get(INPUT_NAME)
    if (
        patches is None
        or len(inputs) != 1
        or patches.type != "tensor(float)"
        or list(patches.shape[1:]) != [int(card.architecture.get("in_channels", 1)), size, size, size]
        or output not in {item.name for item in session.get_outputs()}
    ):
        raise WeightsError(
            f"{name} does not take {INPUT_NAME!r} float patches of {size}³ voxels and give {output!r}, as its card "
            "requires; re-export the model with `nadtrain export`."
        )
