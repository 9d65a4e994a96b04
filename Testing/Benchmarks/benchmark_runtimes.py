"""ONNX Runtime vs torch, side by side in one run: prints figures, asserts nothing (machines are noisy).

For each runtime, with the bundled default model:
  1. cold start: a fresh interpreter importing notadiagnosis and loading the model (median of --repeats);
  2. one-point `notadiagnosis classify` on the real LIDC DICOM folder, wall time of the whole command;
  3. warm time per point with flip TTA, classified at the given points (``predict(..., at_click=True)``:
     patch extraction + normalisation + forward passes, the nodule finder left out) at N = --points and
     for a single point, at 1 and 2 threads, with the machine as it is and with one core kept busy by a
     spinning process (the other work a shared machine runs: Slicer's GUI, another job); then N = --points
     with the default centring on the nodule found near each point (the finder's cost included);
  4. LayerCAM saliency per point on both runtimes;
  5. the largest probability difference between the runtimes on the same points.
Targets (issue 15): one-point classify <= 0.8 s, warm <= 8 ms per point with TTA at N >= 64, cold
start <= 0.5 s, saliency <= 100 ms per point, on 2 cores. Every time is given as wall time and as
CPU time (this process and its children): on a shared machine the wall time counts the waits for a
core, the CPU time does not.

    python Testing/Benchmarks/benchmark_runtimes.py [--points 64] [--repeats 3] [--json OUT]
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import resource
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Dict, Iterator, Tuple

import numpy as np
import SimpleITK as sitk

from benchmark_inference import points_in  # run as a script: its folder is on sys.path
from notadiagnosis import Classifier
from notadiagnosis.preprocessing import normalize_hu

REPO = Path(__file__).resolve().parents[2]
SHARED = Path(os.environ.get("NOTADIAGNOSIS_SHARED", REPO.parent / "shared"))
CHEST_CT = SHARED / "data/chest_ct/cptac-C3N-00247.nrrd"
LIDC_CASE = SHARED / "data/lidc/LIDC-IDRI-0001"
# The card's documented command (metrics.extra.real_lidc_idri_0001): the real nodule, RAS mm.
LIDC_POINT_RAS = "-56.17,-86.20,-115.86"
RUNTIMES = ("onnx", "torch")
THREADS = (1, 2)
NOTADIAGNOSIS = Path(sys.executable).with_name("notadiagnosis")


def cpu_seconds() -> float:
    """CPU time of this process and its finished children: on a shared machine, wall time counts the
    waits for a core and CPU time does not, so CPU time is what a quiet machine's wall time would be
    for one thread."""
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return time.process_time() + children.ru_utime + children.ru_stime


def median_seconds(function, repeats: int) -> Tuple[float, float]:
    """Median wall and CPU seconds of ``function()`` over ``repeats`` calls."""
    wall, cpu = [], []
    for _ in range(repeats):
        start, start_cpu = time.perf_counter(), cpu_seconds()
        function()
        wall.append(time.perf_counter() - start)
        cpu.append(cpu_seconds() - start_cpu)
    return statistics.median(wall), statistics.median(cpu)


@contextmanager
def busy_core(active: bool) -> Iterator[None]:
    """Keep one core busy with a spinning process while the block runs (when ``active``)."""
    spinner = subprocess.Popen([sys.executable, "-c", "while True: pass"]) if active else None
    try:
        time.sleep(0.3 if active else 0.0)
        yield
    finally:
        if spinner is not None:
            spinner.kill()
            spinner.wait()


def cold_start(runtime: str, repeats: int) -> Dict[str, float]:
    code = ("import time, resource; t = time.perf_counter(); c0 = time.process_time(); import notadiagnosis; "
            f"c = notadiagnosis.Classifier.load(runtime={runtime!r}, device='cpu'); "
            "print(time.perf_counter() - t, time.process_time() - c0, "
            "resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)")
    seconds, cpu, megabytes = [], [], []
    for _ in range(repeats):
        output = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
        elapsed, used, rss = output.split()[-3:]
        seconds.append(float(elapsed))
        cpu.append(float(used))
        megabytes.append(float(rss))
    return {"seconds": statistics.median(seconds), "cpu_seconds": statistics.median(cpu),
            "peak_rss_mb": statistics.median(megabytes)}


def one_point_classify(runtime: str, repeats: int, bytecode_cache: Path) -> Dict[str, Tuple[float, float]]:
    """Median (wall, CPU) seconds of the whole command: with Python's bytecode cached, as an installed package
    runs (pip compiles it at install; here a private cache, filled by one untimed run first), and without a
    cache (PYTHONDONTWRITEBYTECODE, as this workplace sets it: every module compiled at every start)."""
    command = [str(NOTADIAGNOSIS), "classify", str(LIDC_CASE), f"--point={LIDC_POINT_RAS}", "--runtime", runtime, "--json"]
    cached = {key: value for key, value in os.environ.items() if key != "PYTHONDONTWRITEBYTECODE"}
    cached["PYTHONPYCACHEPREFIX"] = str(bytecode_cache)
    uncached = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1"}
    subprocess.run(command, capture_output=True, check=True, env=cached)  # fills the cache
    return {name: median_seconds(lambda: subprocess.run(command, capture_output=True, check=True, env=env), repeats)
            for name, env in (("cached", cached), ("uncached", uncached))}


def warm_ms_per_point(classifier: Classifier, image: sitk.Image, points: np.ndarray, repeats: int,
                      at_click: bool = True) -> Tuple[float, float]:
    """(wall, CPU) ms per point of ``predict`` with its default batch size, flip TTA on."""
    classifier.predict(image, points[:2], at_click=at_click)  # warm-up
    wall, cpu = median_seconds(lambda: classifier.predict(image, points, at_click=at_click), repeats)
    return 1000.0 * wall / len(points), 1000.0 * cpu / len(points)


def saliency_ms(classifier: Classifier, patch: np.ndarray, repeats: int) -> Tuple[float, float]:
    """(wall, CPU) ms per map."""
    classifier.saliency_map(patch)  # warm-up
    wall, cpu = median_seconds(lambda: classifier.saliency_map(patch), 5 * repeats)
    return 1000.0 * wall, 1000.0 * cpu


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--points", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json", type=Path, help="also write the figures as JSON")
    args = parser.parse_args()
    import onnxruntime
    import torch

    figures: dict = {
        "machine": f"{platform.machine()}, {os.cpu_count()} logical CPUs",
        "load_average_at_start": os.getloadavg(),
        "versions": {"onnxruntime": onnxruntime.__version__, "torch": torch.__version__},
    }
    print(f"machine: {figures['machine']}; load average {figures['load_average_at_start']}; "
          f"onnxruntime {onnxruntime.__version__}, torch {torch.__version__}\n")
    image = sitk.ReadImage(str(CHEST_CT))
    points = points_in(image, args.points)

    print("1-2. cold start (import + load, fresh process) and one-point classify of the LIDC DICOM folder (whole "
          "command; bytecode cached as installed, and not cached; busy = one core kept busy)")
    bytecode_cache = Path(tempfile.mkdtemp(prefix="nad-benchmark-pycache-"))
    for runtime in RUNTIMES:
        cold = cold_start(runtime, args.repeats)
        command = one_point_classify(runtime, args.repeats, bytecode_cache)
        with busy_core(True):
            command_busy = one_point_classify(runtime, args.repeats, bytecode_cache)
        figures[runtime] = {"cold_start_s": cold["seconds"], "cold_start_cpu_s": cold["cpu_seconds"],
                            "cold_start_peak_rss_mb": cold["peak_rss_mb"],
                            "one_point_classify_s": command["cached"][0], "one_point_classify_cpu_s": command["cached"][1],
                            "one_point_classify": command, "one_point_classify_busy": command_busy}
        print(f"  {runtime:<6} cold start {cold['seconds']:.2f} s wall, {cold['cpu_seconds']:.2f} s CPU "
              f"({cold['peak_rss_mb']:.0f} MB peak RSS)   (target 0.5 s)")
        for name in ("cached", "uncached"):
            print(f"  {runtime:<6} one-point classify, bytecode {name + ':':<9} {command[name][0]:.2f} s wall, "
                  f"{command[name][1]:.2f} s CPU; busy {command_busy[name][0]:.2f} s wall, {command_busy[name][1]:.2f} s CPU"
                  "   (target 0.8 s)")

    print(f"\n3. warm ms per point, flip TTA, at the given points, N = {args.points} and N = 1, wall (CPU); "
          "'busy' = one core kept busy   (target <= 8 ms at N >= 64)")
    print(f"  {'runtime':<8}{'threads':>8}{'N=' + str(args.points):>16}{'N=1':>16}{'N=' + str(args.points) + ' busy':>16}"
          f"{'N=1 busy':>16}")
    for runtime in RUNTIMES:
        figures[runtime]["warm_ms_per_point"] = {}
        for threads in THREADS:
            classifier = Classifier.load(runtime=runtime, device="cpu", threads=threads)
            row = {}
            for busy in (False, True):
                with busy_core(busy):
                    suffix = "_busy" if busy else ""
                    row[f"n{args.points}{suffix}"] = warm_ms_per_point(classifier, image, points, args.repeats)
                    row[f"n1{suffix}"] = warm_ms_per_point(classifier, image, points[:1], 5 * args.repeats)
            figures[runtime]["warm_ms_per_point"][threads] = row
            cells = "".join(f"{'%.1f (%.1f)' % row[key]:>16}" for key in
                            (f"n{args.points}", "n1", f"n{args.points}_busy", "n1_busy"))
            print(f"  {runtime:<8}{threads:>8}{cells}")
    centred = warm_ms_per_point(Classifier.load(runtime="onnx", device="cpu"), image, points, args.repeats, at_click=False)
    figures["onnx"]["warm_ms_per_point_centred"] = centred
    print(f"  onnx, default threads, each point first centred on the nodule found near it (finder included), "
          f"N = {args.points}: {centred[0]:.1f} ({centred[1]:.1f})")

    print("\n4. LayerCAM saliency ms per point (one 64³ patch, 1 thread); busy = one core kept busy")
    onnx_classifier = Classifier.load(runtime="onnx", device="cpu")
    torch_classifier = Classifier.load(runtime="torch", device="cpu", threads=1)
    from notadiagnosis.geometry import extract_patch

    patch = normalize_hu(extract_patch(image, points[0]).array_hu)
    figures["saliency_ms"] = {}
    for label, classifier in (("onnx", onnx_classifier), ("torch", torch_classifier)):
        quiet = saliency_ms(classifier, patch, args.repeats)
        with busy_core(True):
            busy = saliency_ms(classifier, patch, args.repeats)
        figures["saliency_ms"][label] = {"quiet": quiet, "busy": busy}
        print(f"  {label:<6} {quiet[0]:6.1f} ms wall ({quiet[1]:.1f} CPU); busy {busy[0]:6.1f} ms wall "
              f"({busy[1]:.1f} CPU)   (target 100 ms)")

    a = onnx_classifier.predict(image, points)
    b = torch_classifier.predict(image, points)
    difference = max(abs(x.probability - y.probability) for x, y in zip(a, b))
    figures["max_probability_difference"] = difference
    figures["load_average_at_end"] = os.getloadavg()
    print(f"\n5. largest |probability difference| ONNX Runtime vs torch over {len(points)} points: {difference:.1e}")
    print(f"load average at the end: {figures['load_average_at_end']}")
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
