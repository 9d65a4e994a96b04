"""The training dataset format (nadtrain.dataset): round trip, validation, interruption and resume."""
from __future__ import annotations

import json

import numpy as np
import pytest

from nadtrain.dataset import DatasetError, DatasetWriter, load_dataset, load_patches, sample_key
from nadtrain.nodule_table import read_nodule_table
from notadiagnosis.errors import NotADiagnosisError


def _rows(ids):
    return [{"nodule_id": i, "patient_id": i.split("/")[0], "label": 1, "malignancy": [5, 4, 4],
             "median_diameter_mm": 7.25, "centroid_x_lps": None} for i in ids]


def _patches(n, seed=0):
    return np.random.default_rng(seed).normal(-500, 400, size=(n, 64, 64, 64)).astype(np.float32)


def test_round_trip_keeps_samples_order_metadata_and_rounds_hu_to_int16(tmp_path):
    patches = _patches(5)
    patches[0, 0, 0, 0] = 40000.0  # beyond int16: clipped, not wrapped
    ids = [f"P{i}/n0" for i in range(5)]
    with DatasetWriter(tmp_path / "ds", "insertion", {"renders": 2}, shard_samples=2) as writer:
        writer.add(patches, [0, 1, 0, 1, 1], ids, [i.split("/")[0] for i in ids], [0, 1, 0, 1, 0], ["bg"] * 5)
        writer.write_nodule_table(_rows(ids))
    data = load_dataset(tmp_path / "ds")
    assert len(data) == 5 and data.patches_hu.dtype == np.int16
    assert data.manifest["complete"] is True and data.manifest["n_samples"] == 5
    assert data.manifest["shards"] == ["shard-00000.npz", "shard-00001.npz", "shard-00002.npz"]
    np.testing.assert_array_equal(data.labels, [0, 1, 0, 1, 1])
    assert list(data.nodule_ids) == ids and list(data.background) == ["bg"] * 5 and list(data.split) == [""] * 5
    assert data.patches_hu[0, 0, 0, 0] == 32767
    np.testing.assert_array_equal(data.patches_hu[1:], np.rint(patches[1:]).astype(np.int16))
    table = data.nodule_table()
    assert table["P0/n0"]["malignancy"] == [5, 4, 4] and table["P0/n0"]["median_diameter_mm"] == 7.25
    assert table["P0/n0"]["centroid_x_lps"] is None and table["P0/n0"]["label"] == 1
    np.testing.assert_array_equal(load_patches(tmp_path / "ds", [4, 1]), data.patches_hu[[4, 1]])
    light = load_dataset(tmp_path / "ds", load_patches=False)
    assert light.patches_hu.shape == (0, 64, 64, 64) and list(light.nodule_ids) == ids


def test_interrupted_build_is_incomplete_and_resumes_without_redoing_samples(tmp_path):
    path = tmp_path / "ds"
    ids = [f"P{i}/n0" for i in range(4)]
    with pytest.raises(KeyboardInterrupt):
        with DatasetWriter(path, "lidc", {"a": 1}, shard_samples=8) as writer:
            writer.add(_patches(2), [0, 1], ids[:2], ids[:2])
            raise KeyboardInterrupt
    manifest = json.loads((path / "manifest.json").read_text())
    assert manifest["complete"] is False and manifest["n_samples"] == 2  # buffered samples were kept
    with pytest.raises(DatasetError, match="incomplete"):
        load_dataset(path)
    assert isinstance(DatasetError("x"), NotADiagnosisError)
    with DatasetWriter(path, "lidc", {"a": 1}) as writer:
        assert writer.done_keys() == {sample_key(i, "", 0) for i in ids[:2]}
        todo = [i for i in ids if sample_key(i, "", 0) not in writer.done_keys()]
        writer.add(_patches(2, seed=1), [1, 1], todo, todo)
        writer.write_nodule_table(_rows(ids))
    data = load_dataset(path)
    assert sorted(data.nodule_ids) == ids and len(data) == 4


def test_a_shard_written_just_before_a_crash_is_recovered_on_resume(tmp_path):
    path = tmp_path / "ds"
    with DatasetWriter(path, "lidc", {}, shard_samples=1) as writer:
        writer.add(_patches(1), [1], ["A/n0"], ["A"])
        writer.write_nodule_table(_rows(["A/n0"]))
    # The manifest of an older state that does not list the shard yet (crash between the two writes).
    manifest = json.loads((path / "manifest.json").read_text())
    manifest.update(shards=[], n_samples=0, complete=False)
    (path / "manifest.json").write_text(json.dumps(manifest))
    writer = DatasetWriter(path, "lidc", {})
    assert writer.done_keys() == {sample_key("A/n0", "", 0)}
    writer.close()
    assert len(load_dataset(path)) == 1


def test_resuming_with_other_options_is_refused_unless_overwritten(tmp_path):
    with DatasetWriter(tmp_path, "insertion", {"renders": 4}) as writer:
        writer.add(_patches(1), [0], ["A/n0"], ["A"])
        writer.write_nodule_table(_rows(["A/n0"]))
    with pytest.raises(DatasetError, match="other options"):
        DatasetWriter(tmp_path, "insertion", {"renders": 2})
    with DatasetWriter(tmp_path, "insertion", {"renders": 2}, overwrite=True) as writer:
        assert writer.done_keys() == set()
        writer.add(_patches(2), [0, 0], ["A/n0", "A/n0"], ["A", "A"], [0, 1], ["bg", "bg"])
        writer.write_nodule_table(_rows(["A/n0"]))
    assert len(load_dataset(tmp_path)) == 2


@pytest.mark.parametrize("bad", [
    dict(patches=np.zeros((1, 32, 64, 64)), labels=[0]),
    dict(patches=np.zeros((2, 64, 64, 64)), labels=[0]),
    dict(patches=np.zeros((1, 64, 64, 64)), labels=[2]),
])
def test_malformed_samples_are_rejected(tmp_path, bad):
    writer = DatasetWriter(tmp_path, "lidc", {})
    with pytest.raises(DatasetError):
        writer.add(bad["patches"], bad["labels"], ["A/n0"] * len(bad["labels"]), ["A"] * len(bad["labels"]))


def test_missing_or_foreign_directories_give_clear_errors(tmp_path):
    with pytest.raises(DatasetError, match="does not exist"):
        load_dataset(tmp_path / "nope")
    with pytest.raises(DatasetError, match="no manifest"):
        load_dataset(tmp_path)
    (tmp_path / "manifest.json").write_text(json.dumps({"format": "something-else"}))
    with pytest.raises(DatasetError, match="format"):
        load_dataset(tmp_path)
    with pytest.raises(DatasetError, match="unknown dataset source"):
        DatasetWriter(tmp_path / "x", "luna", {})


def test_closing_without_a_nodule_table_is_refused(tmp_path):
    writer = DatasetWriter(tmp_path, "lidc", {})
    writer.add(_patches(1), [0], ["A/n0"], ["A"])
    with pytest.raises(DatasetError, match="nodule table"):
        writer.close()


def test_nodule_table_needs_unique_ids(tmp_path):
    from nadtrain.nodule_table import write_nodule_table

    with pytest.raises(DatasetError, match="unique"):
        write_nodule_table(tmp_path / "t.csv", _rows(["A/n0", "A/n0"]))
    write_nodule_table(tmp_path / "t.csv", _rows(["A/n0", "A/n1"]))
    assert [r["nodule_id"] for r in read_nodule_table(tmp_path / "t.csv")] == ["A/n0", "A/n1"]
