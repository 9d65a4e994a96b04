"""The `medmnist` source on a small npz generated in MedMNIST's nodulemnist3d_64 format, and the samples PNG."""
from __future__ import annotations

import numpy as np
import pytest

from nadtrain.cli import main
from nadtrain.dataset import load_dataset
from nadtrain.sources.medmnist import MedMnistError, images_to_hu
from notadiagnosis.preprocessing import normalize_hu

COUNTS = {"train": 5, "val": 2, "test": 3}


def _write_npz(path, channel_axis=False, **override):
    rng = np.random.default_rng(0)
    arrays = {}
    for split, n in COUNTS.items():
        shape = (n, 1, 64, 64, 64) if channel_axis else (n, 64, 64, 64)
        arrays[f"{split}_images"] = rng.integers(0, 256, size=shape, dtype=np.uint8)
        arrays[f"{split}_labels"] = (np.arange(n) % 2).astype(np.uint8).reshape(n, 1)
    arrays.update(override)
    arrays = {k: v for k, v in arrays.items() if v is not None}
    np.savez(path, **arrays)
    return arrays


@pytest.mark.parametrize("channel_axis", [False, True])
def test_medmnist_npz_becomes_a_dataset_with_its_split_and_exact_intensities(tmp_path, channel_axis):
    arrays = _write_npz(tmp_path / "nodulemnist3d_64.npz", channel_axis)
    assert main(["build", "medmnist", "--out", str(tmp_path / "ds"), "--npz", str(tmp_path / "nodulemnist3d_64.npz"),
                 "--quiet"]) == 0
    data = load_dataset(tmp_path / "ds")
    assert len(data) == 10 and data.manifest["source"] == "medmnist"
    assert list(data.split) == ["train"] * 5 + ["val"] * 2 + ["test"] * 3
    np.testing.assert_array_equal(data.labels, np.concatenate([arrays[f"{s}_labels"].reshape(-1) for s in COUNTS]))
    assert len(set(data.nodule_ids)) == 10 and list(data.patient_ids) == list(data.nodule_ids)
    # The library's normalisation gives MedMNIST's intensities back exactly (HU stored as int16).
    original = np.concatenate([arrays[f"{s}_images"].reshape(-1, 64, 64, 64) for s in COUNTS])
    recovered = np.rint(normalize_hu(data.patches_hu) * 255.0).astype(np.uint8)
    np.testing.assert_array_equal(recovered, original)
    assert {row["split"] for row in data.nodules} == {"train", "val", "test"}


def test_images_to_hu_maps_0_and_255_to_the_window_ends():
    np.testing.assert_allclose(images_to_hu(np.array([0, 255], dtype=np.uint8)), [-1000.0, 400.0])
    np.testing.assert_allclose(images_to_hu(np.array([0.0, 0.5, 1.0]), -1200.0, 600.0), [-1200.0, -300.0, 600.0])
    with pytest.raises(MedMnistError):
        images_to_hu(np.array([2.0]))


@pytest.mark.parametrize("override, message", [
    ({"val_images": None}, "lacks val_images"),
    ({"test_images": np.zeros((3, 28, 28, 28), np.uint8)}, "64³"),
    ({"train_labels": np.full((5, 1), 3, np.uint8)}, "0 \\(benign\\) or 1"),
])
def test_npz_of_another_format_is_a_clear_error(tmp_path, override, message):
    from argparse import Namespace

    from nadtrain.sources import medmnist

    _write_npz(tmp_path / "bad.npz", **override)
    args = Namespace(npz=tmp_path / "bad.npz", out=str(tmp_path / "ds"), hu_low=-1000.0, hu_high=400.0, limit=None,
                     overwrite=False)
    with pytest.raises(MedMnistError, match=message):
        medmnist.build(args)


def test_missing_npz_is_a_one_sentence_cli_error(tmp_path, capsys):
    assert main(["build", "medmnist", "--out", str(tmp_path / "ds"), "--npz", str(tmp_path / "none.npz")]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_samples_png_shows_each_dataset(tmp_path):
    _write_npz(tmp_path / "m.npz")
    main(["build", "medmnist", "--out", str(tmp_path / "ds"), "--npz", str(tmp_path / "m.npz"), "--quiet"])
    out = tmp_path / "samples.png"
    assert main(["samples", str(tmp_path / "ds"), str(tmp_path / "ds"), "--out", str(out), "--per-dataset", "4"]) == 0
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    import matplotlib.image

    height, width = matplotlib.image.imread(out).shape[:2]
    assert height > width * 0.8  # two datasets x (axial + coronal) rows of 4 patches
