"""`nadtrain train` -> `evaluate` -> `export` through the command line on a tiny generated dataset:
the report agrees with its own predictions and with the library's classifier, the exported card
carries the report's numbers and reference predictions the bundled-weights test can replay, and
leaky or mismatched reports are refused."""
from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from notadiagnosis.classifier import Classifier
from notadiagnosis.errors import NotADiagnosisError
from notadiagnosis.preprocessing import normalize_hu
from nadtrain import metrics
from nadtrain.cli import main
from nadtrain.dataset import load_dataset
from nadtrain.export import export_model, reference_patches
from nadtrain.toy import make_toy_dataset

COMMON = ["--architecture", "resnet3d-tiny", "--batch-size", "4", "--lr", "3e-3", "--warmup-epochs", "0",
          "--device", "cpu", "--no-progress"]


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory):
    root = tmp_path_factory.mktemp("pipeline")
    dataset = make_toy_dataset(root / "dataset", n_nodules=20, renders=1, seed=1, backgrounds=("toy-a", "toy-b"))
    run = root / "run"
    assert main(["train", str(dataset), "--out", str(run), "--epochs", "2", "--holdout-background", "toy-b"] + COMMON) == 0
    assert main(["evaluate", str(run), "--bootstrap", "100", "--device", "cpu", "--no-progress"]) == 0
    exported = root / "export" / "toy.safetensors"
    assert main(["export", str(run), "--out", str(exported), "--name", "toy", "--version", "0.0.1"]) == 0
    report = json.loads((run / "evaluation" / "report.json").read_text())
    return {"dataset": dataset, "run": run, "report": report, "exported": exported}


def _predictions(run: Path):
    with open(run / "evaluation" / "predictions.csv", newline="") as handle:
        return list(csv.DictReader(handle))


def test_report_numbers_agree_with_its_predictions_file(pipeline):
    rows = _predictions(pipeline["run"])
    labels = np.array([int(r["label"]) for r in rows])
    probs = np.array([float(r["probability"]) for r in rows])
    base = np.array([float(r["baseline_probability"]) for r in rows])
    overall = pipeline["report"]["overall"]
    threshold = pipeline["report"]["model"]["threshold"]
    assert overall["n_samples"] == len(rows)
    assert overall["model"]["auc"] == pytest.approx(roc_auc_score(labels, probs), abs=1e-4)
    assert overall["baseline"]["auc"] == pytest.approx(roc_auc_score(labels, base), abs=1e-4)
    tp = int(((probs >= threshold) & (labels == 1)).sum())
    assert overall["model"]["sensitivity"] == pytest.approx(tp / labels.sum())
    assert overall["margin"]["auc_margin"] == pytest.approx(overall["model"]["auc"] - overall["baseline"]["auc"])
    # The calibration null is simulated from these very predictions, one label per nodule.
    null = overall["model"]["ece_if_calibrated"]
    assert null["n_groups"] == len({r["nodule_id"] for r in rows}) < len(rows)
    observed, _ = metrics.calibration_bins(labels, probs)
    assert observed == pytest.approx(overall["model"]["ece"], abs=1e-5)
    expected = metrics.ece_if_calibrated(probs, [r["nodule_id"] for r in rows], observed, seed=0)
    # (The file rounds probabilities to 6 decimals, hence approx.)
    assert null["median"] == pytest.approx(expected["median"], abs=1e-4)
    assert null["range90"] == pytest.approx(expected["range90"], abs=1e-4)
    assert null["p_value"] == pytest.approx(expected["p_value"], abs=0.01)
    base_observed, _ = metrics.calibration_bins(labels, base)
    base_expected = metrics.ece_if_calibrated(base, [r["nodule_id"] for r in rows], base_observed, seed=0)
    assert overall["baseline"]["ece_if_calibrated"]["median"] == pytest.approx(base_expected["median"], abs=1e-4)
    assert overall["baseline"]["ece_if_calibrated"]["p_value"] == pytest.approx(base_expected["p_value"], abs=0.01)


def test_evaluation_reports_the_surroundings_spread_of_its_predictions(pipeline):
    by_nodule = {}
    for row in _predictions(pipeline["run"]):
        by_nodule.setdefault(row["nodule_id"], []).append(float(row["probability"]))
    spreads = [max(p) - min(p) for p in by_nodule.values() if len(p) > 1]
    surroundings = pipeline["report"]["surroundings"]
    assert surroundings["n"] == len(spreads) > 0
    assert surroundings["max"] == pytest.approx(max(spreads), abs=1e-4)
    assert surroundings["median"] == pytest.approx(float(np.median(spreads)), abs=1e-4)


def test_evaluation_probabilities_are_the_library_classifiers(pipeline):
    rows = _predictions(pipeline["run"])[:4]
    data = load_dataset(pipeline["dataset"])
    classifier = Classifier.load(str(pipeline["run"] / "model.json"), device="cpu")
    patches = normalize_hu(data.patches_hu[[int(r["sample"]) for r in rows]])
    probs, _, _ = classifier.predict_patches(patches, tta=True)
    assert np.allclose(probs, [float(r["probability"]) for r in rows], atol=1e-5)


def _copy_dataset(dataset: Path, out: Path, order: np.ndarray, change=lambda patches: patches) -> Path:
    """The same samples in another order, as another renderer's build of the same nodules would be."""
    from nadtrain.dataset import DatasetWriter

    data = load_dataset(dataset)
    with DatasetWriter(out, data.manifest["source"], {"copy_of": str(dataset)}) as writer:
        writer.add(change(data.patches_hu[order]), data.labels[order], data.nodule_ids[order], data.patient_ids[order],
                   data.render_index[order], data.background[order])
        writer.write_nodule_table(data.nodules)
    return out


def test_another_rendering_of_the_same_samples_is_scored_on_the_runs_split_by_sample_key(pipeline, tmp_path):
    data = load_dataset(pipeline["dataset"], load_patches=False)
    order = np.random.default_rng(0).permutation(len(data))
    key = lambda r: (r["nodule_id"], r["background"], r["render_index"])
    home = {key(r): r for r in _predictions(pipeline["run"])}

    # The very same pixels in another order: every test sample keeps its probability.
    shuffled = _copy_dataset(pipeline["dataset"], tmp_path / "shuffled", order)
    assert main(["evaluate", str(pipeline["run"]), "--dataset", str(shuffled), "--out", str(tmp_path / "e1"),
                 "--bootstrap", "50", "--device", "cpu", "--no-progress"]) == 0
    with open(tmp_path / "e1" / "predictions.csv", newline="") as handle:
        mapped = {key(r): r for r in csv.DictReader(handle)}
    assert mapped.keys() == home.keys()
    assert any(mapped[k]["sample"] != home[k]["sample"] for k in home)  # the indices did move
    for k in home:
        assert float(mapped[k]["probability"]) == pytest.approx(float(home[k]["probability"]), abs=1e-5)
    report = json.loads((tmp_path / "e1" / "report.json").read_text())
    assert report["split"]["mapped_by_sample_key_from"] == str(Path(pipeline["dataset"]).resolve())
    assert report["overall"]["model"]["auc"] == pytest.approx(pipeline["report"]["overall"]["model"]["auc"], abs=1e-6)

    # Other pixels (here: mirrored left-right) are read at the mapped samples.
    mirrored = _copy_dataset(pipeline["dataset"], tmp_path / "mirrored", order, lambda p: p[..., ::-1] + 100)
    assert main(["evaluate", str(pipeline["run"]), "--dataset", str(mirrored), "--out", str(tmp_path / "e2"),
                 "--bootstrap", "50", "--device", "cpu", "--no-progress"]) == 0
    with open(tmp_path / "e2" / "predictions.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    other = load_dataset(mirrored)
    classifier = Classifier.load(str(pipeline["run"] / "model.json"), device="cpu")
    probs, _, _ = classifier.predict_patches(normalize_hu(other.patches_hu[[int(r["sample"]) for r in rows[:4]]]), tta=True)
    assert np.allclose(probs, [float(r["probability"]) for r in rows[:4]], atol=1e-5)
    assert {key(r) for r in rows} == home.keys()


def test_a_report_on_another_rendering_never_replaces_the_runs_own_nor_is_exported(pipeline, tmp_path, capsys):
    data = load_dataset(pipeline["dataset"], load_patches=False)
    own = (pipeline["run"] / "evaluation" / "report.json").read_bytes()
    other = _copy_dataset(pipeline["dataset"], tmp_path / "other-rendering", np.arange(len(data))[::-1])
    assert main(["evaluate", str(pipeline["run"]), "--dataset", str(other), "--bootstrap", "50", "--device", "cpu",
                 "--no-progress"]) == 0
    written = pipeline["run"] / "evaluation-on-other-rendering" / "report.json"
    assert str(written) in capsys.readouterr().out
    assert (pipeline["run"] / "evaluation" / "report.json").read_bytes() == own
    assert main(["export", str(pipeline["run"]), "--out", str(tmp_path / "x.safetensors"), "--report", str(written)]) == 2
    assert "another dataset" in capsys.readouterr().err and not (tmp_path / "x.safetensors").exists()


def test_another_dataset_with_other_labels_is_refused(pipeline, tmp_path, capsys):
    data = load_dataset(pipeline["dataset"])
    flipped = tmp_path / "flipped"
    from nadtrain.dataset import DatasetWriter
    with DatasetWriter(flipped, data.manifest["source"], {}) as writer:
        writer.add(data.patches_hu, 1 - data.labels, data.nodule_ids, data.patient_ids, data.render_index, data.background)
        writer.write_nodule_table(data.nodules)
    assert main(["evaluate", str(pipeline["run"]), "--dataset", str(flipped), "--out", str(tmp_path / "e"),
                 "--bootstrap", "50", "--device", "cpu", "--no-progress"]) == 2
    assert "another label" in capsys.readouterr().err and not (tmp_path / "e").exists()


def test_a_moved_run_reads_only_a_dataset_of_the_same_samples_in_the_same_order(pipeline, tmp_path, capsys):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(pipeline["run"], run)
    splits = json.loads((run / "splits.json").read_text())
    splits["dataset"] = str(tmp_path / "gone")  # the training dataset no longer where it was
    (run / "splits.json").write_text(json.dumps(splits))
    moved = tmp_path / "moved"
    shutil.copytree(pipeline["dataset"], moved)
    data = load_dataset(moved, load_patches=False)
    reordered = _copy_dataset(moved, tmp_path / "reordered", np.arange(len(data))[::-1])
    evaluate = lambda dataset, out: main(["evaluate", str(run), "--dataset", str(dataset), "--out", str(tmp_path / out),
                                          "--bootstrap", "50", "--device", "cpu", "--no-progress"])
    assert evaluate(moved, "e1") == 0
    assert evaluate(reordered, "e2") == 2 and "same order" in capsys.readouterr().err
    # A run from before the digest was recorded: the build options in its card tell another build.
    del splits["sample_keys_sha256"]
    (run / "splits.json").write_text(json.dumps(splits))
    assert evaluate(moved, "e3") == 0
    assert evaluate(reordered, "e4") == 2 and "other options" in capsys.readouterr().err


def test_another_dataset_lacking_test_samples_is_refused(pipeline, tmp_path, capsys):
    report = pipeline["report"]
    data = load_dataset(pipeline["dataset"], load_patches=False)
    test_nodule = _predictions(pipeline["run"])[0]["nodule_id"]
    keep = np.flatnonzero(data.nodule_ids != test_nodule)
    partial = _copy_dataset(pipeline["dataset"], tmp_path / "partial", keep)
    assert main(["evaluate", str(pipeline["run"]), "--dataset", str(partial), "--out", str(tmp_path / "e"),
                 "--bootstrap", "50", "--device", "cpu", "--no-progress"]) == 2
    error = capsys.readouterr().err
    assert "test samples" in error and "not in the other dataset" in error and error.count("\n") == 1
    assert not (tmp_path / "e").exists()
    assert report == json.loads((pipeline["run"] / "evaluation" / "report.json").read_text())


def test_report_has_figures_breakdowns_and_the_held_out_background(pipeline):
    report, out = pipeline["report"], pipeline["run"] / "evaluation"
    for name in report["figures"].values():
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert set(report["figures"]) == {"roc", "reliability", "confusion_matrix"}
    backgrounds = report["by_background"]
    assert backgrounds["toy-a"]["seen_in_training"] is True
    assert backgrounds["toy-b"]["seen_in_training"] is False
    assert backgrounds["toy-a"]["n_nodules"] == backgrounds["toy-b"]["n_nodules"]  # same test nodules in both
    assert set(report["by_texture"]) <= {"solid", "part-solid", "ground-glass", "unknown"}
    assert sum(v["n"] for v in report["by_size"].values()) == report["overall"]["n_samples"]
    assert report["split"]["leakage"]["test_patients_also_in_train_or_val"] == 0
    assert report["warnings"] == []


def test_exported_card_carries_the_report_and_replays_its_reference_predictions(pipeline):
    classifier = Classifier.load(str(pipeline["exported"]), device="cpu")
    card, report = classifier.card, pipeline["report"]
    run_card = json.loads((pipeline["run"] / "model.json").read_text())
    assert card["name"] == "toy" and card["version"] == "0.0.1"
    assert card["calibration"]["temperature"] == run_card["calibration"]["temperature"]
    assert card["threshold"] == run_card["threshold"]
    assert card["metrics"]["test"]["model"]["auc"] == report["overall"]["model"]["auc"]
    assert card["metrics"]["test"]["size_only_baseline"]["auc"] == report["overall"]["baseline"]["auc"]
    assert card["metrics"]["test"]["split"]["name"] == "test"
    assert set(card["metrics"]["test"]["by_background"]) == {"toy-a", "toy-b"}
    assert "TOY MODEL" in card["training"]["data"]["statement"]
    # Readable by every user of a shared installation (not mkstemp's 0600).
    assert pipeline["exported"].stat().st_mode & 0o044 == 0o044
    assert pipeline["exported"].with_suffix(".json").stat().st_mode & 0o044 == 0o044
    # A shipped card must not carry the trainer's local paths.
    assert str(pipeline["run"].parent) not in pipeline["exported"].with_suffix(".json").read_text()
    names, patches = reference_patches()
    probs, _, _ = classifier.predict_patches(normalize_hu(patches), tta=True)
    recorded = card["reference_predictions"]["items"]
    assert [item["name"] for item in recorded] == names
    assert np.allclose(probs, [item["probability"] for item in recorded], atol=1e-6)


def test_export_refuses_a_report_of_another_model(pipeline, tmp_path):
    report = dict(pipeline["report"])
    report["model"] = {**report["model"], "sha256": "0" * 64}
    other = tmp_path / "report.json"
    other.write_text(json.dumps(report))
    with pytest.raises(NotADiagnosisError, match="another model"):
        export_model(pipeline["run"], tmp_path / "x.safetensors", other)


def test_leak_prone_split_is_flagged_in_the_report_and_kept_out_of_model_cards(tmp_path):
    dataset = make_toy_dataset(tmp_path / "dataset", n_nodules=16, renders=2, seed=2)
    run = tmp_path / "leaky"
    assert main(["train", str(dataset), "--out", str(run), "--epochs", "1", "--split", "annotation",
                 "--all-renders"] + COMMON) == 0
    assert main(["evaluate", str(run), "--bootstrap", "50", "--device", "cpu", "--no-progress"]) == 0
    report = json.loads((run / "evaluation" / "report.json").read_text())
    assert report["split"]["leakage"]["test_nodules_also_in_train_or_val"] > 0
    assert any("LEAK-PRONE" in w for w in report["warnings"])
    assert main(["export", str(run), "--out", str(tmp_path / "m.safetensors")]) == 2  # refused, one-line error
    assert not (tmp_path / "m.safetensors").exists()


def test_a_dataset_with_its_own_split_and_no_diameters_is_evaluated_without_the_size_baseline(tmp_path):
    # MedMNIST brings a split and no nodule diameters: the report says the baseline is unavailable.
    dataset = make_toy_dataset(tmp_path / "dataset", n_nodules=20, seed=3, medmnist_like=True)
    run = tmp_path / "run"
    assert main(["train", str(dataset), "--out", str(run), "--epochs", "1", "--split", "source"] + COMMON) == 0
    assert main(["evaluate", str(run), "--bootstrap", "50", "--device", "cpu", "--no-progress"]) == 0
    report = json.loads((run / "evaluation" / "report.json").read_text())
    assert report["baseline"]["available"] is False and report["ratings_reference"] is None
    assert report["overall"]["baseline"] is None and report["overall"]["model"]["n"] == 4
    assert report["split"]["mode"] == "source"
    assert main(["export", str(run), "--out", str(tmp_path / "m.safetensors"), "--name", "mm"]) == 0
    card = json.loads((tmp_path / "m.json").read_text())
    assert card["metrics"]["test"]["size_only_baseline"]["available"] is False
