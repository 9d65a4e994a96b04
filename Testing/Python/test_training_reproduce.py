"""`nadtrain reproduce` end to end on LUNA16-style data made from the real LIDC-IDRI-0001 scan.

LIDC-IDRI-0001 holds one (malignant) nodule, and cross-validation needs both classes in several
patients: the scan is written once as LUNA16's ``<SeriesInstanceUID>.mhd`` and linked under other
(made-up) series UIDs, each given a nodule-table row of its own (a benign or malignant label, a
centroid moved around the scan). A tiny budget (one epoch of resnet3d-tiny, two folds, 50 bootstrap
resamples) checks every stage and the resume, not learning."""
from __future__ import annotations

import json

import pytest
import SimpleITK as sitk

from nadtrain.cli import main
from nadtrain.dataset import load_dataset
from nadtrain.nodule_table import write_nodule_table
from nadtrain.nodules import build_nodule_table
from notadiagnosis.readers import read_ct
from notadiagnosis.weights import sha256_of

from conftest import LIDC_0001_SERIES_UID

pytestmark = pytest.mark.shared

N_PER_CLASS = 6


@pytest.fixture(scope="module")
def luna16_cohort(tmp_path_factory, lidc_0001_dir):
    """(LUNA16 root, nodule table) of 2 x N_PER_CLASS made-up patients sharing LIDC-IDRI-0001's pixels."""
    base = tmp_path_factory.mktemp("cohort")
    subset = base / "luna16" / "subset0"
    subset.mkdir(parents=True)
    real = subset / f"{LIDC_0001_SERIES_UID}.mhd"
    sitk.WriteImage(read_ct(lidc_0001_dir, series_uid=LIDC_0001_SERIES_UID), str(real))
    rows, failures = build_nodule_table(workers=1, patient_ids=["LIDC-IDRI-0001"], progress=False)
    assert failures == [] and len(rows) == 1
    template = rows[0]
    table = []
    for n in range(2 * N_PER_CLASS):
        malignant = n % 2 == 0
        uid = f"1.2.826.0.1.3680043.8.498.{100 + n}"
        (subset / f"{uid}.mhd").symlink_to(real)  # the .raw named in the header sits beside the link
        patient = f"LIDC-IDRI-9{n:03d}"
        table.append({**template, "patient_id": patient, "series_uid": uid, "nodule_id": f"{patient}/n0",
                      "label": int(malignant), "median_malignancy": 5.0 if malignant else 1.0,
                      "malignancy": [5, 5] if malignant else [1, 2],
                      "median_diameter_mm": template["median_diameter_mm"] * (1.0 if malignant else 0.3) + n,
                      # benign "nodules" are lung and chest wall elsewhere in the scan
                      "centroid_slice": template["centroid_slice"] - (0 if malignant else 10 + 3 * n),
                      "centroid_col": template["centroid_col"] + (n % 3)})
    table_path = base / "nodules.csv"
    write_nodule_table(table_path, table)
    return base / "luna16", table_path


def test_reproduce_runs_every_stage_on_a_tiny_budget_and_resumes(tmp_path, luna16_cohort, capsys):
    root, table = luna16_cohort
    out = tmp_path / "repro"
    command = ["reproduce", "--luna16-root", str(root), "--out", str(out), "--nodule-table", str(table),
               "--folds", "2", "--epochs", "1", "--batch-size", "4", "--bootstrap", "50", "--workers", "1",
               "--device", "cpu"]
    assert main(command) == 0
    printed = capsys.readouterr().out
    assert "estimated time: at most" in printed
    stage_lines = [line for line in printed.splitlines() if line.startswith("[")]
    assert [line.split("]")[0] + "]" for line in stage_lines] == [f"[{i}/7]" for i in range(1, 8)]
    assert "12 patches (6 benign, 6 malignant), 0 scans failed" in printed

    result = json.loads((out / "reproduce.json").read_text())
    assert [row["fold"] for row in result["folds"]] == [1, 2]
    assert sum(row["n_nodules"] for row in result["folds"]) == 12  # every nodule tested exactly once
    for row in result["folds"]:
        assert 0.0 <= row["auc"] <= 1.0 and 0.0 <= row["size_only_auc"] <= 1.0 and 0.0 <= row["ece"] <= 1.0
    model = out / "model" / "reproduced.safetensors"
    assert result["sha256"] == sha256_of(model)
    assert f"exported model: {model}" in printed and f"sha256: {result['sha256']}" in printed
    card = json.loads(model.with_suffix(".json").read_text())
    assert card["metrics"]["extra"]["cross_validation"]["folds"] == result["folds"]
    assert load_dataset(out / "dataset", load_patches=False).manifest["params"]["layout"] == "luna16"
    test_patients = [set(json.loads((out / "cv" / f"fold-{k}" / "splits.json").read_text())["splits"]["test"]["patients"])
                     for k in (1, 2)]
    assert not test_patients[0] & test_patients[1]

    # Rerunning finds every stage finished: nothing is trained again and the same model comes out.
    stamps = {k: (out / "cv" / f"fold-{k}" / "model.safetensors").stat().st_mtime_ns for k in (1, 2)}
    assert main(command) == 0
    assert {k: (out / "cv" / f"fold-{k}" / "model.safetensors").stat().st_mtime_ns for k in (1, 2)} == stamps
    assert json.loads((out / "reproduce.json").read_text())["sha256"] == result["sha256"]

    # Interrupted after fold 2's last epoch (no model yet): only fold 2 resumes, from its checkpoint.
    fold2 = out / "cv" / "fold-2"
    for name in ("model.safetensors", "model.json", "train_summary.json"):
        (fold2 / name).unlink()
    assert main(command) == 0
    assert (out / "cv" / "fold-1" / "model.safetensors").stat().st_mtime_ns == stamps[1]
    assert (fold2 / "model.json").is_file()
    assert "resuming after epoch 1" in (out / "logs" / "5-fold-2-of-2-training.log").read_text()
