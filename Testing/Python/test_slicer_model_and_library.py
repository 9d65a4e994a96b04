"""The panel's model choice (bundled or a file, its version and sha256, a wrong or missing file said
before Classify) and which copy of the library the module uses (the bundled one first, named)."""
from __future__ import annotations

import sys

import pytest

from helpers import save_random_model
from slicer_support import MODULE_DIR  # puts the module folder on sys.path

from nadslicer.library import bundled_library_dir, library_in_use, prefer_bundled_library
from nadslicer.model_info import model_summary
from nadslicer.validation import model_problem


def test_the_model_summary_names_version_and_sha256(tmp_path):
    from notadiagnosis.weights import bundled_models_dir, model_files, onnx_files, read_card, sha256_of

    card_path = save_random_model(tmp_path, seed=2)
    tensors_path, _ = model_files(card_path)
    summary = model_summary(str(tensors_path))
    assert "random-test-model" in summary and str(card_path) in summary
    pinned = onnx_files(card_path)[0] if onnx_files(card_path)[0].is_file() else tensors_path
    assert f"sha256 of {pinned.name}: {sha256_of(pinned)}" in summary
    bundled = bundled_models_dir() / "default.json"
    bundled_summary = model_summary(None)
    assert "(bundled)" in bundled_summary and read_card(bundled)["version"] in bundled_summary
    # The bundled model's pin is its ONNX file, the file ONNX Runtime loads.
    assert f"sha256 of default.onnx: {sha256_of(onnx_files(bundled)[0])}" in bundled_summary
    assert "cannot be read" in model_summary(str(tmp_path / "missing.safetensors"))


def test_a_missing_model_file_is_said_before_classify(tmp_path):
    assert model_problem(True, None) is None
    assert "Choose a model file" in model_problem(False, ".")
    assert "does not exist" in model_problem(False, str(tmp_path / "nothing.safetensors"))
    existing = tmp_path / "model.safetensors"
    existing.write_bytes(b"x")
    assert model_problem(False, str(existing)) is None


def test_the_bundled_library_goes_first_on_the_path(tmp_path):
    (tmp_path / "notadiagnosis").mkdir()
    (tmp_path / "notadiagnosis" / "__init__.py").write_text("", encoding="utf-8")
    path = ["/site-packages", str(tmp_path), "/other"]
    assert prefer_bundled_library(tmp_path, path) == tmp_path / "notadiagnosis"
    assert path == [str(tmp_path), "/site-packages", "/other"]
    assert prefer_bundled_library(tmp_path, path) == tmp_path / "notadiagnosis" and path[0] == str(tmp_path)
    elsewhere = ["/site-packages"]
    assert prefer_bundled_library(tmp_path / "no-library-here", elsewhere) is None and elsewhere == ["/site-packages"]


def test_the_status_names_the_library_copy_in_use(tmp_path):
    import notadiagnosis

    from pathlib import Path

    imported = str(Path(notadiagnosis.__file__).resolve().parent)  # the editable install's library
    in_use = library_in_use(MODULE_DIR)  # in development the module folder holds no copy
    assert bundled_library_dir(MODULE_DIR) is None
    assert imported in in_use and "no copy is bundled" in in_use
    (tmp_path / "notadiagnosis").mkdir()
    (tmp_path / "notadiagnosis" / "__init__.py").write_text("", encoding="utf-8")
    shadowed = library_in_use(tmp_path)
    assert "shadows the one bundled" in shadowed and imported in shadowed
    assert sys.modules["notadiagnosis"] is notadiagnosis


def test_the_packaged_module_prefers_its_bundled_library(tmp_path):
    """A stand-in for a pip-installed notadiagnosis earlier on sys.path loses to the bundled copy."""
    import subprocess

    shadow = tmp_path / "site" / "notadiagnosis"
    shadow.mkdir(parents=True)
    (shadow / "__init__.py").write_text("WHICH = 'pip-installed'\n", encoding="utf-8")
    bundle = tmp_path / "modules"
    (bundle / "notadiagnosis").mkdir(parents=True)
    (bundle / "notadiagnosis" / "__init__.py").write_text("WHICH = 'bundled'\n", encoding="utf-8")
    code = (
        "import sys; sys.path.insert(0, sys.argv[1]); sys.path.append(sys.argv[2]); sys.path.append(sys.argv[3]);"
        "from nadslicer.library import prefer_bundled_library, library_in_use;"
        "prefer_bundled_library(sys.argv[3]);"
        "import notadiagnosis; print(notadiagnosis.WHICH); print(library_in_use(sys.argv[3]))"
    )
    completed = subprocess.run([sys.executable, "-c", code, str(tmp_path / "site"), str(MODULE_DIR), str(bundle)],
                               capture_output=True, text=True, timeout=120)
    assert completed.returncode == 0, completed.stderr[-2000:]
    which, sentence = completed.stdout.splitlines()[:2]
    assert which == "bundled" and "bundled with the extension" in sentence
