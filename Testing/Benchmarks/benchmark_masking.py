"""Nodule-masked input speed benchmark: prints figures, asserts nothing (machines are noisy).

What ``notadiagnosis.masking.mask_surroundings`` (the finder run on the 64³ patch, the margin, the fill)
adds per patch at inference: median and 90th percentile wall time and median CPU time per call, after one
warm-up call, over
  * the patches of each nodule of the synthetic chest CT (``make_synthetic_chest_ct``), centred on it;
  * with ``--dataset DIR``, ``--samples N`` patches of a dataset (evenly spaced sample indices), e.g. insertion
    renders, and the share of them in which the finder found the nodule.
The load average is printed beside the figures: the CPUs are shared.

    python Testing/Benchmarks/benchmark_masking.py [--repeats 5] [--dataset DIR --samples 100] [--json OUT]
"""
from __future__ import annotations

import argparse
import json
import os
import time
from typing import Dict, List

import numpy as np

from notadiagnosis.geometry import extract_patch
from notadiagnosis.masking import DEFAULT_MARGIN_MM, mask_surroundings
from notadiagnosis.synthetic import make_synthetic_chest_ct


def _time(patches: List[np.ndarray], margin_mm: float, repeats: int) -> Dict[str, float]:
    """Per-call wall and CPU milliseconds of ``mask_surroundings`` over ``patches`` (each ``repeats`` times)."""
    mask_surroundings(patches[0], margin_mm)  # warm-up: imports, first allocations
    wall, cpu, found = [], [], []
    for patch in patches:
        for _ in range(repeats):
            started, cpu_started = time.perf_counter(), time.process_time()
            _, was_found = mask_surroundings(patch, margin_mm)
            wall.append((time.perf_counter() - started) * 1000.0)
            cpu.append((time.process_time() - cpu_started) * 1000.0)
        found.append(was_found)
    return {"patches": len(patches), "calls": len(wall), "wall_ms_median": float(np.median(wall)),
            "wall_ms_p90": float(np.percentile(wall, 90)), "cpu_ms_median": float(np.median(cpu)),
            "found_fraction": float(np.mean(found))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--margin-mm", type=float, default=DEFAULT_MARGIN_MM)
    parser.add_argument("--dataset", help="a nadtrain dataset directory: time its patches too")
    parser.add_argument("--samples", type=int, default=100)
    parser.add_argument("--json", help="also write the figures here")
    args = parser.parse_args()
    results = {"load_average_before": os.getloadavg(), "margin_mm": args.margin_mm}
    image, nodules = make_synthetic_chest_ct(seed=0)
    results["synthetic"] = _time([extract_patch(image, n["center_lps"]).array_hu for n in nodules], args.margin_mm,
                                 args.repeats)
    if args.dataset:
        from nadtrain.dataset import load_dataset, load_patches

        n = len(load_dataset(args.dataset, load_patches=False))
        indices = np.linspace(0, n - 1, min(args.samples, n)).round().astype(int)
        results["dataset"] = {"path": args.dataset, **_time(list(load_patches(args.dataset, indices)), args.margin_mm, 1)}
    results["load_average_after"] = os.getloadavg()
    for name in ("synthetic", "dataset"):
        if name in results:
            r = results[name]
            print(f"{name}: {r['patches']} patches, {r['calls']} calls: {r['wall_ms_median']:.0f} ms median wall "
                  f"({r['wall_ms_p90']:.0f} ms p90), {r['cpu_ms_median']:.0f} ms CPU per patch; nodule found in "
                  f"{r['found_fraction']:.0%}")
    print(f"load average {results['load_average_before'][0]:.2f} before, {results['load_average_after'][0]:.2f} after")
    if args.json:
        with open(args.json, "w", encoding="utf-8") as handle:
            json.dump(results, handle, indent=2)


if __name__ == "__main__":
    main()
