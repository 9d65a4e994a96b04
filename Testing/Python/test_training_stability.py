"""`nadtrain stability`: renders reproduced in their full CT, click jitter, surroundings, the real case.

A tiny `insertion` dataset (two real LIDC nodules in the CPTAC CT at 1.5 mm, two renders each plus one
in a held-out copy), a small random model and its "evaluation" predictions made from the dataset's
stored patches: the stability command must render every sample again, into the whole CT, to the
very patch that was stored (so its at-centre probability is the evaluation's), and report the
figures the model card carries.
"""
from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import SimpleITK as sitk

from helpers import save_random_model
from nadtrain import stability
from nadtrain.cli import main
from nadtrain.dataset import load_dataset, write_nodule_table
from nadtrain.nodules import build_nodule_table
from notadiagnosis import Classifier
from notadiagnosis.preprocessing import normalize_hu

PATIENTS = ["LIDC-IDRI-0001", "LIDC-IDRI-0003"]
NODULES = ["LIDC-IDRI-0003/n1", "LIDC-IDRI-0003/n2"]


def test_summary_figures_are_median_p90_and_max():
    figures = stability.summary(np.arange(11) / 100.0)
    assert figures == {"n": 11, "median": 0.05, "p90": 0.09, "max": 0.1}
    assert stability.spreads({"a": [0.1, 0.4, 0.2], "b": [0.5, 0.5], "c": [0.9]}) == {
        "n": 2, "median": 0.15, "p90": 0.27, "max": 0.3}


def test_the_subset_is_seeded_and_says_all_when_asked_for_more_than_there_are():
    ids = [f"P{i}/n0" for i in range(30)]
    assert stability.choose_nodules(ids, 5, seed=1) == stability.choose_nodules(list(reversed(ids)), 5, seed=1)
    assert stability.choose_nodules(ids, 5, seed=1) != stability.choose_nodules(ids, 5, seed=2)
    assert stability.choose_nodules(ids, 50, seed=0) == sorted(ids)


def test_click_offsets_are_seeded_per_sample_with_the_stated_sigma():
    a = stability.click_offsets(("n", "bg", 0), count=4000, sigma_mm=3.0)
    assert a.shape == (4000, 3) and np.allclose(a.std(axis=0), 3.0, atol=0.15)
    np.testing.assert_array_equal(a[:10], stability.click_offsets(("n", "bg", 0), count=10, sigma_mm=3.0))
    assert not np.allclose(a[:10], stability.click_offsets(("n", "bg", 1), count=10, sigma_mm=3.0))


@pytest.fixture(scope="module")
def small_study(tmp_path_factory, chest_ct_path, lidc_0001_dir):
    """(folder, table path, backgrounds, model path, predictions path) of a tiny dataset and its evaluation."""
    folder = tmp_path_factory.mktemp("stability")
    rows, failures = build_nodule_table(workers=1, patient_ids=PATIENTS, lidc_root=lidc_0001_dir.parent, progress=False)
    assert failures == []
    table = folder / "nodules.csv"
    write_nodule_table(table, rows)
    image = sitk.ReadImage(str(chest_ct_path))
    spacing = (1.5, 1.5, image.GetSpacing()[2])
    size = [int(round(n * s / t)) for n, s, t in zip(image.GetSize(), image.GetSpacing(), spacing)]
    small = sitk.Resample(image, size, sitk.Transform(), sitk.sitkLinear, image.GetOrigin(), spacing,
                          image.GetDirection(), -1024, sitk.sitkInt16)
    backgrounds = (folder / "cptac-small.nrrd", folder / "held-out.nrrd")
    for path in backgrounds:
        sitk.WriteImage(small, str(path))
    assert main(["build", "insertion", "--out", str(folder / "ds"), "--nodule-table", str(table),
                 "--backgrounds", str(backgrounds[0]), "--holdout-background", str(backgrounds[1]), "--renders", "2",
                 "--workers", "1", "--quiet", "--nodules", *NODULES]) == 0
    model = save_random_model(folder / "model", seed=5)
    data = load_dataset(folder / "ds")
    probabilities, _, _ = Classifier.load(model, device="cpu").predict_patches(normalize_hu(data.patches_hu))
    predictions = folder / "predictions.csv"
    with open(predictions, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["sample", "nodule_id", "background", "render_index", "label", "probability"])
        for i, p in enumerate(probabilities):
            writer.writerow([i, data.nodule_ids[i], data.background[i], int(data.render_index[i]), int(data.labels[i]), f"{p:.6f}"])
    return folder, table, backgrounds, model, predictions


@pytest.mark.shared
def test_stability_renders_each_sample_again_in_its_full_ct_and_reports_every_figure(small_study, lidc_0001_dir, capsys):
    folder, table, backgrounds, model, predictions = small_study
    out = folder / "stability.json"
    code = main(["stability", "--model", str(model), "--predictions", str(predictions), "--out", str(out),
                 "--nodule-table", str(table), "--backgrounds", *map(str, backgrounds), "--real-case", str(lidc_0001_dir),
                 "--offsets", "3"])
    assert code == 0
    report = json.loads(out.read_text())
    printed = capsys.readouterr().out
    assert "click sigma 3.0 mm" in printed and "target click_p90_abs_dp" in printed
    # Every sample rendered again, into the whole CT, gives the stored patch's probability.
    assert report["subset"]["samples"] == 6 and report["subset"]["nodules"] == 2
    assert report["reproduction"]["max_abs_dp_vs_evaluation"] < 1e-5
    jitter = report["click_jitter"]
    assert jitter["at_click"]["n"] == 18 and jitter["centred"]["vs_centre_click"]["n"] == 18
    assert set(jitter["centred"]) == {"vs_centre_click", "vs_true_centre", "nodule_found_fraction"}
    assert report["surroundings"]["all_split_nodules_at_centre"]["n"] == 2
    real = report["real_nodules"]
    assert [r["nodule_id"] for r in real] == ["LIDC-IDRI-0001/n0"] and len(real[0]["p_centred"]) == 3
    assert report["latency"]["total_ms_per_point"] > 0
    assert set(report["verdict"]) == set(stability.TARGETS)
    block = stability.card_block(report)
    assert "samples" not in block and block["click_jitter"] == jitter


def _report(name="default", version="1.2.0"):
    figures = stability.summary([0.01, 0.02])
    return {"model": {"name": name, "version": version, "sha256": "ab" * 32},
            "method": {"sigma_mm_per_axis": 3.0}, "subset": {"nodules": 2}, "verdict": {},
            "click_jitter": {"at_click": figures, "centred": {"vs_centre_click": figures}},
            "surroundings": {"subset": {}}, "real_nodules": [], "latency": None, "samples": [{"big": "rows"}]}


def test_the_card_copy_carries_the_stability_figures_and_the_original_is_untouched():
    card = {"name": "default", "version": "1.2.0", "metrics": {"test": {"auc": 0.87}}}
    updated = stability.card_with_stability(card, _report())
    assert "stability" not in card["metrics"]
    block = updated["metrics"]["stability"]
    assert block["measured_on"] == {"name": "default", "version": "1.2.0", "sha256": "ab" * 32}
    assert block["click_jitter"]["at_click"]["p90"] == pytest.approx(0.019) and "samples" not in block
    assert updated["metrics"]["test"] == {"auc": 0.87}


def test_a_stability_report_of_another_model_is_refused_for_the_card():
    from notadiagnosis.errors import InputError

    with pytest.raises(InputError, match="measured on default 1.1.1"):
        stability.card_with_stability({"name": "default", "version": "1.2.0"}, _report(version="1.1.1"))
