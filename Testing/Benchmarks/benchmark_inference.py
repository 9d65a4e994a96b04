"""Inference benchmark of the candidate architectures on torch: prints figures, asserts nothing.

(ONNX Runtime, the default runtime, against torch: benchmark_runtimes.py.)

Measured in one run on the same CT (the real chest CT in ../shared when present, else the
synthetic one):
  1. warm end-to-end time per point on the CPU (2 threads) for each candidate architecture, TTA on
     and off (patch extraction + normalisation + forward passes);
  2. patch extraction vs the naive "resample the whole CT to 1 mm, then crop" (the ratio);
  3. cold start: a fresh interpreter importing notadiagnosis and loading a model;
  4. on CUDA only: patches/s at batch 256 with AMP.
Targets: <= 25 ms per point warm, ratio >= 50x, cold start <= 3 s, >= 5,000 patches/s on a GPU.

    python Testing/Benchmarks/benchmark_inference.py [--ct PATH] [--points 32] [--json OUT]
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import SimpleITK as sitk
import torch

from notadiagnosis import Classifier, build_model, extract_patch
from notadiagnosis.card import preprocessing_block
from notadiagnosis.model import ARCHITECTURES, count_parameters
from notadiagnosis.weights import NoDefaultModelError, default_model_path, save_model

REPO = Path(__file__).resolve().parents[2]
SHARED_CT = Path(os.environ.get("NOTADIAGNOSIS_SHARED", REPO.parent / "shared")) / "data/chest_ct/cptac-C3N-00247.nrrd"
CARD = {
    "name": "benchmark",
    "version": "0",
    "preprocessing": preprocessing_block(),
    "calibration": {"temperature": 1.0},
    "threshold": 0.5,
}


def load_ct(path: Path | None) -> tuple[sitk.Image, str]:
    if path is not None and path.exists():
        return sitk.ReadImage(str(path)), str(path.name)
    from notadiagnosis.synthetic import make_synthetic_chest_ct

    image, _ = make_synthetic_chest_ct(seed=0)
    return image, "synthetic chest CT"


def points_in(image: sitk.Image, count: int, seed: int = 0) -> np.ndarray:
    """Random points well inside the CT (central 60% of each axis)."""
    rng = np.random.default_rng(seed)
    size = np.array(image.GetSize())
    indices = rng.uniform(0.2, 0.8, size=(count, 3)) * (size - 1)
    return np.array([image.TransformContinuousIndexToPhysicalPoint(i.tolist()) for i in indices])


def best_of(function, repeats: int) -> float:
    timings = []
    for _ in range(repeats):
        start = time.perf_counter()
        function()
        timings.append(time.perf_counter() - start)
    return min(timings)


def per_point_ms(classifier: Classifier, image: sitk.Image, points: np.ndarray, tta: bool, repeats: int) -> float:
    classifier.predict(image, points[:4], tta=tta)  # warm-up
    return 1000.0 * best_of(lambda: classifier.predict(image, points, tta=tta, batch_size=len(points)), repeats) / len(points)


def naive_resample_then_crop(image: sitk.Image, point: np.ndarray) -> np.ndarray:
    """The slow way: resample the whole CT to 1 mm isotropic (its own direction), then crop 64³."""
    spacing = image.GetSpacing()
    size = [int(round(n * s)) for n, s in zip(image.GetSize(), spacing)]
    reference = sitk.Image(size, sitk.sitkFloat32)
    reference.SetOrigin(image.GetOrigin())
    reference.SetDirection(image.GetDirection())
    reference.SetSpacing([1.0, 1.0, 1.0])
    whole = sitk.Resample(image, reference, sitk.Transform(), sitk.sitkLinear, -1000.0, sitk.sitkFloat32)
    index = np.round(whole.TransformPhysicalPointToContinuousIndex(point.tolist())).astype(int)
    array = sitk.GetArrayViewFromImage(whole)
    lo = np.maximum(index[::-1] - 32, 0)
    return np.array(array[lo[0] : lo[0] + 64, lo[1] : lo[1] + 64, lo[2] : lo[2] + 64])


def cold_start_s(model_path: Path, repeats: int) -> float:
    code = (
        "import time; t=time.perf_counter(); import notadiagnosis; "
        f"notadiagnosis.Classifier.load({str(model_path)!r}, device='cpu'); print(time.perf_counter()-t)"
    )
    timings = []
    for _ in range(repeats):
        output = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
        timings.append(float(output.strip().splitlines()[-1]))
    return statistics.median(timings)


def gpu_throughput(architecture: str, batch: int = 256, seconds: float = 5.0) -> float:
    model = build_model(architecture).cuda().eval().to(memory_format=torch.channels_last_3d)
    x = torch.rand(batch, 1, 64, 64, 64, device="cuda").to(memory_format=torch.channels_last_3d)
    with torch.inference_mode(), torch.autocast("cuda", dtype=torch.float16):
        for _ in range(3):
            model(x)
        torch.cuda.synchronize()
        start, count = time.perf_counter(), 0
        while time.perf_counter() - start < seconds:
            model(x)
            count += batch
        torch.cuda.synchronize()
    return count / (time.perf_counter() - start)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ct", type=Path, default=SHARED_CT)
    parser.add_argument("--points", type=int, default=32)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json", type=Path, help="also write the figures as JSON")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    image, ct_name = load_ct(args.ct)
    points = points_in(image, args.points)
    figures: dict = {
        "machine": f"{platform.machine()}, {os.cpu_count()} logical CPUs, {platform.processor() or platform.platform()}",
        "torch": torch.__version__,
        "threads": args.threads,
        "ct": f"{ct_name} {image.GetSize()} spacing {tuple(round(s, 3) for s in image.GetSpacing())}",
    }
    print(f"machine: {figures['machine']}; torch {torch.__version__}; {args.threads} threads")
    print(f"CT: {figures['ct']}; {args.points} points per batch\n")

    print(f"{'architecture':<18}{'params':>10}{'ms/point TTA':>15}{'ms/point no TTA':>18}")
    figures["architectures"] = {}
    with tempfile.TemporaryDirectory() as folder:
        try:
            default_path = default_model_path()
        except NoDefaultModelError:
            default_path = None
        for name in ARCHITECTURES:
            model = build_model(name).eval()
            classifier = Classifier.from_model(model, CARD, device="cpu")
            tta = per_point_ms(classifier, image, points, True, args.repeats)
            plain = per_point_ms(classifier, image, points, False, args.repeats)
            figures["architectures"][name] = {"parameters": count_parameters(model), "ms_per_point_tta": tta, "ms_per_point": plain}
            print(f"{name:<18}{count_parameters(model):>10,}{tta:>15.1f}{plain:>18.1f}")
        if default_path is not None:
            shipped = Classifier.load(default_path, device="cpu", runtime="torch")
            tta = per_point_ms(shipped, image, points, True, args.repeats)
            figures["shipped_model_ms_per_point_tta"] = tta
            print(f"{'shipped default':<18}{count_parameters(shipped.backend.model):>10,}{tta:>15.1f}")

        point = points[0]
        patch_s = best_of(lambda: extract_patch(image, point), 5)
        naive_s = best_of(lambda: naive_resample_then_crop(image, point), 1)
        figures["extract_patch_ms"] = 1000 * patch_s
        figures["naive_resample_crop_ms"] = 1000 * naive_s
        figures["extraction_speedup"] = naive_s / patch_s
        print(f"\npatch extraction: {1000 * patch_s:.1f} ms; resample whole CT then crop: {1000 * naive_s:.0f} ms;"
              f" ratio {naive_s / patch_s:.0f}x (target >= 50x)")

        model_path = default_path or save_model(build_model("resnet3d-small"), Path(folder) / "m.safetensors", CARD)
        cold = cold_start_s(model_path, args.repeats)
        figures["cold_start_s"] = cold
        print(f"cold start (import + load {'default' if default_path else 'resnet3d-small'}): {cold:.2f} s (target <= 3 s)")

    if torch.cuda.is_available():
        figures["gpu"] = torch.cuda.get_device_name(0)
        figures["gpu_patches_per_s"] = {name: gpu_throughput(name) for name in ARCHITECTURES}
        for name, rate in figures["gpu_patches_per_s"].items():
            print(f"GPU {figures['gpu']}: {name} {rate:,.0f} patches/s at batch 256 with AMP (target >= 5,000/s)")
    else:
        print("no CUDA GPU here: GPU throughput not measured")
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
