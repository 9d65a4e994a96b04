"""Evaluation metrics, temperature and threshold on known predictions, checked against hand computation."""
from __future__ import annotations

import numpy as np
import pytest

from nadtrain import calibration, metrics

# Six nodules, worked by hand below.
LABELS = np.array([0, 0, 0, 1, 1, 1])
PROBS = np.array([0.10, 0.40, 0.35, 0.80, 0.30, 0.90])


def test_auc_matches_the_hand_count_of_ordered_pairs():
    # 9 (malignant, benign) pairs: 0.80 and 0.90 beat all three benign (6), 0.30 beats only 0.10 (1).
    assert metrics.auc_or_none(LABELS, PROBS) == pytest.approx(7 / 9)


def test_bootstrap_auc_formula_equals_sklearn_including_ties():
    from sklearn.metrics import roc_auc_score

    rng = np.random.default_rng(4)
    labels = rng.integers(0, 2, 200)
    scores = np.round(rng.random(200) + 0.3 * labels, 1)  # rounding makes many ties
    assert metrics.rank_auc(labels, scores) == pytest.approx(roc_auc_score(labels, scores), abs=1e-12)
    assert metrics.rank_auc(LABELS, PROBS) == pytest.approx(7 / 9)


def test_threshold_metrics_match_the_hand_count():
    # p >= 0.5: 0.80, 0.90 -> TP 2; 0.30 -> FN 1; benign all below -> TN 3, FP 0.
    m = metrics.threshold_metrics(LABELS, PROBS, 0.5)
    assert m["confusion_matrix"]["matrix"] == [[3, 0], [1, 2]]
    assert m["sensitivity"] == pytest.approx(2 / 3)
    assert m["specificity"] == pytest.approx(1.0)
    assert m["accuracy"] == pytest.approx(5 / 6)
    assert m["ppv"] == pytest.approx(1.0)
    assert m["npv"] == pytest.approx(3 / 4)


def test_ece_matches_the_hand_computation():
    # Bins of width 0.1: [0.1]->0 |0.1|; [0.35, 0.30]->{0,1} |0.5-0.325|; [0.4]->0 |0.4|; [0.8]->1 |0.2|; [0.9]->1 |0.1|.
    expected = (1 * 0.1 + 2 * 0.175 + 1 * 0.4 + 1 * 0.2 + 1 * 0.1) / 6
    ece, bins = metrics.calibration_bins(LABELS, PROBS)
    assert ece == pytest.approx(expected)
    assert [b["n"] for b in bins] == [0, 1, 0, 2, 1, 0, 0, 0, 1, 1]
    assert bins[3]["mean_probability"] == pytest.approx(0.325)
    assert bins[3]["observed_fraction"] == pytest.approx(0.5)


def test_probability_one_falls_in_the_last_bin_and_perfect_calibration_scores_zero():
    ece, bins = metrics.calibration_bins(np.array([1, 0]), np.array([1.0, 0.0]))
    assert ece == 0.0
    assert bins[-1]["n"] == 1 and bins[0]["n"] == 1


def test_ece_if_calibrated_is_zero_for_certain_predictions():
    # Probabilities 0 and 1 leave the simulated labels no freedom: every simulation has ECE 0.
    null = metrics.ece_if_calibrated(np.array([0.0, 1.0, 1.0, 0.0]), observed_ece=0.0, n_sim=50)
    assert null["median"] == 0.0 and null["range90"] == [0.0, 0.0]
    assert null["p_value"] == 1.0


def test_ece_if_calibrated_follows_the_binomial_distribution():
    # Four predictions of 0.5 share one bin, so ECE = |k/4 - 0.5| with k ~ Binomial(4, 0.5):
    # 0.5 with probability 2/16, 0.25 with 8/16, 0 with 6/16 -> median 0.25, P(ECE >= 0.5) = 1/8.
    null = metrics.ece_if_calibrated(np.full(4, 0.5), observed_ece=0.5, n_sim=4000, seed=1)
    assert null["median"] == 0.25
    assert null["range90"] == [0.0, 0.5]
    assert null["p_value"] == pytest.approx(1 / 8, abs=0.015)


def test_ece_if_calibrated_draws_one_label_per_group():
    # Ten renderings of one nodule share its label: 10 nodules vary far more than 100 independent samples.
    probabilities = np.full(100, 0.5)
    nodules = np.repeat([f"n{i}" for i in range(10)], 10)
    grouped = metrics.ece_if_calibrated(probabilities, nodules, n_sim=2000)
    independent = metrics.ece_if_calibrated(probabilities, None, n_sim=2000)
    assert grouped["n_groups"] == 10 and independent["n_groups"] == 100
    # Median of |k/n - 1/2|, k ~ Binomial(n, 1/2): 0.1 for n = 10, 0.03-0.04 for n = 100 (on the edge).
    assert grouped["median"] == pytest.approx(0.1) and 0.03 <= independent["median"] <= 0.04
    assert grouped["p_value"] is None


def test_ece_if_calibrated_scores_each_rendering_by_its_own_probability():
    # A nodule rendered twice, once clearly benign-looking (0.05) and once malignant-looking (0.95):
    # calibrated renderings keep their own label probabilities, so the floor stays small. Drawing
    # from the nodule's mean (0.5) would put a 0.45 gap into every simulation.
    probabilities = np.tile([0.05, 0.95], 50)
    nodules = np.repeat([f"n{i}" for i in range(50)], 2)
    null = metrics.ece_if_calibrated(probabilities, nodules, observed_ece=0.45, n_sim=1000)
    assert null["range90"][1] < 0.1
    assert null["p_value"] == pytest.approx(1 / 1001)


def test_ece_if_calibrated_separates_calibrated_from_overconfident_predictions():
    rng = np.random.default_rng(7)
    probabilities = rng.random(400)
    calibrated_labels = (rng.random(400) < probabilities).astype(int)
    overconfident_labels = (rng.random(400) < probabilities ** 3).astype(int)  # truth far below the predictions
    for labels, calibrated in ((calibrated_labels, True), (overconfident_labels, False)):
        observed, _ = metrics.calibration_bins(labels, probabilities)
        null = metrics.ece_if_calibrated(probabilities, observed_ece=observed, n_sim=1000)
        if calibrated:
            assert null["p_value"] > 0.05 and observed <= null["range90"][1]
        else:
            assert null["p_value"] < 0.01 and observed > null["range90"][1]


def test_ece_if_calibrated_refuses_mismatched_groups():
    from notadiagnosis.errors import InputError

    with pytest.raises(InputError, match="one group per prediction"):
        metrics.ece_if_calibrated(np.full(4, 0.5), ["a", "b"])


def test_youden_threshold_is_between_the_best_cut_and_the_next_score():
    # Cut at >= 0.80 gives sens 2/3, 1-spec 0 (J = 2/3), better than >= 0.30 (J = 1/3): the midpoint
    # between 0.80 and the next lower score 0.40 is 0.60.
    assert calibration.youden_threshold(LABELS, PROBS) == pytest.approx(0.60)


def test_fitted_temperature_recovers_the_temperature_that_generated_the_labels():
    rng = np.random.default_rng(0)
    logits = rng.normal(0, 4, 20_000)
    true_t = 2.5
    labels = (rng.random(logits.size) < 1 / (1 + np.exp(-logits / true_t))).astype(int)
    t = calibration.fit_temperature(logits, labels)
    assert t == pytest.approx(true_t, rel=0.05)
    nll = calibration.nll_at_temperature(logits, labels, t)
    assert nll <= calibration.nll_at_temperature(logits, labels, t * 1.1)
    assert nll <= calibration.nll_at_temperature(logits, labels, t / 1.1)


def test_platt_fit_recovers_temperature_and_offset_and_matches_the_malignant_rate():
    rng = np.random.default_rng(6)
    logits = rng.normal(0, 3, 20_000)
    true_t, true_offset = 2.0, -0.8  # the shift class weighting leaves behind
    labels = (rng.random(logits.size) < 1 / (1 + np.exp(-(logits + true_offset) / true_t))).astype(int)
    t, offset = calibration.fit_platt(logits, labels)
    assert t == pytest.approx(true_t, rel=0.05)
    assert offset == pytest.approx(true_offset, abs=0.1)
    # With a free offset, the maximum-likelihood fit predicts exactly the observed malignant rate.
    probs = 1 / (1 + np.exp(-(logits + offset) / t))
    assert probs.mean() == pytest.approx(labels.mean(), abs=1e-3)
    assert calibration.nll_platt(logits, labels, t, offset) <= calibration.nll_at_temperature(
        logits, labels, calibration.fit_temperature(logits, labels))


def test_bootstrap_ci_brackets_the_auc_and_is_degenerate_for_perfect_separation():
    rng = np.random.default_rng(1)
    labels = np.repeat([0, 1], 100)
    scores = labels + rng.normal(0, 0.8, labels.size)
    s = metrics.summarize(labels, scores.clip(0, 1), 0.5, n_boot=400)
    low, high = s["auc_ci95"]
    assert low < s["auc"] < high
    assert high - low < 0.2
    perfect = metrics.summarize(labels, labels * 0.8 + 0.1, 0.5, n_boot=200)
    assert perfect["auc"] == 1.0 and perfect["auc_ci95"] == [1.0, 1.0]


def test_renderings_of_one_nodule_do_not_narrow_the_patient_bootstrap():
    # Ten copies of every sample, each group resampled whole, give the same AUCs as the originals:
    # repeats of one nodule are not independent evidence.
    rng = np.random.default_rng(2)
    labels = np.repeat([0, 1], 20)
    scores = labels + rng.normal(0, 1.0, labels.size)
    ids = np.array([f"p{i:02d}" for i in range(labels.size)])
    single = metrics.bootstrap_auc(labels, [scores], ids, n_boot=200, seed=5)
    repeated = metrics.bootstrap_auc(np.repeat(labels, 10), [np.repeat(scores, 10)], np.repeat(ids, 10), n_boot=200, seed=5)
    assert np.allclose(single, repeated)
    naive = metrics.bootstrap_auc(np.repeat(labels, 10), [np.repeat(scores, 10)], None, n_boot=200, seed=5)
    assert np.std(naive) < 0.6 * np.std(single)  # what ignoring the grouping would wrongly claim


def test_auc_margin_is_model_minus_baseline_with_a_paired_interval():
    labels = np.repeat([0, 1], 30)
    rng = np.random.default_rng(3)
    model = labels + rng.normal(0, 0.5, labels.size)
    baseline = labels + rng.normal(0, 1.5, labels.size)
    m = metrics.auc_margin(labels, model, baseline, n_boot=300)
    assert m["auc_margin"] == pytest.approx(metrics.auc_or_none(labels, model) - metrics.auc_or_none(labels, baseline))
    assert m["ci95"][0] < m["auc_margin"] < m["ci95"][1]
    assert m["fraction_of_resamples_model_better"] > 0.9


def test_size_baseline_learns_that_larger_nodules_are_more_often_malignant():
    diameters = np.array([4, 5, 6, 7, 8, 9, 15, 18, 22, 25, 9, 16], dtype=float)
    labels = np.array([0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 0, 0])
    baseline = metrics.SizeBaseline().fit(diameters, labels)
    p = baseline.predict_proba(np.array([5.0, 10.0, 30.0]))
    assert p[0] < p[1] < p[2]
    assert baseline.describe()["coefficient"] > 0


def test_size_classes():
    assert [metrics.size_bin(d) for d in (3.0, 6.0, 9.9, 10.0, 25.0)] == ["<6 mm", "6-10 mm", "6-10 mm", "10-20 mm", ">=20 mm"]


def test_breakdown_reports_auc_only_where_both_classes_exist():
    labels = np.array([0, 1, 0, 1, 1, 1])
    probs = np.array([0.2, 0.7, 0.6, 0.4, 0.9, 0.8])
    cats = np.array(["a", "a", "a", "a", "b", "b"])
    out = metrics.breakdown(labels, probs, probs, cats, n_boot=0)
    # In "a": pairs (0.7>0.2, 0.7>0.6, 0.4>0.2, 0.4<0.6) -> 3/4.
    assert out["a"]["auc"] == pytest.approx(0.75)
    assert out["a"]["n"] == 4 and out["a"]["n_malignant"] == 2
    assert out["b"]["auc"] is None and out["b"]["n_malignant"] == 2


def test_breakdown_leaves_out_the_interval_of_a_group_with_few_patients():
    rng = np.random.default_rng(0)
    labels = np.tile([0, 1], 60)
    probs = np.clip(0.5 + 0.3 * (labels - 0.5) + rng.normal(0, 0.2, labels.size), 0, 1)
    # "many": 40 patients, each with a benign and a malignant sample; "few": 3 patients, 40 samples of each class.
    patients = np.array([f"p{i // 2}" for i in range(80)] + [f"q{i % 3}" for i in range(40)])
    cats = np.array(["many"] * 80 + ["few"] * 40)
    out = metrics.breakdown(labels, probs, None, cats, groups=patients, n_boot=50)
    assert out["many"]["patients_malignant"] == 40 and out["many"]["patients_benign"] == 40
    assert out["many"]["auc_ci95"] is not None and "auc_ci95_omitted" not in out["many"]
    assert out["few"]["patients_malignant"] == 3 and out["few"]["patients_benign"] == 3
    assert out["few"]["auc"] is not None and out["few"]["auc_ci95"] is None
    assert "fewer than 10 patients" in out["few"]["auc_ci95_omitted"]


def test_render_spread_is_each_nodules_max_minus_min_over_its_renders():
    # a: 0.1, 0.4, 0.2 -> 0.3; b: 0.5, 0.5 -> 0; c has one render and is left out.
    figures = metrics.render_spread([0.1, 0.5, 0.4, 0.9, 0.2, 0.5], ["a", "b", "a", "c", "a", "b"])
    assert figures == {"n": 2, "median": 0.15, "p90": 0.27, "max": 0.3}
    assert metrics.render_spread([0.3], ["a"])["n"] == 0
