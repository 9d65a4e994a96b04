"""How the extension is packaged: configuring the real CMakeLists.txt files against a stand-in Slicer
build tree (slicer_cmake_stub/) puts the module, its logic package, UI, icon, requirements AND the
library with its default weights where Slicer loads scripted modules from, from the library's single
source. Also: the module's requirements follow the library's, and the icon is the script's output."""
from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from slicer_support import LIBRARY_DIR, MODULE_DIR, REPO_ROOT

STUB_DIR = Path(__file__).resolve().parent / "slicer_cmake_stub"
SCRIPTED_MODULES_DIR = Path("lib") / "Slicer-5.8" / "qt-scripted-modules"
# Shipped with Slicer itself.
PROVIDED_BY_SLICER = {"numpy", "simpleitk"}


def _library_files(pattern: str):
    return sorted(path.relative_to(LIBRARY_DIR) for path in LIBRARY_DIR.glob(pattern) if "__pycache__" not in path.parts)


@pytest.fixture(scope="module")
def configured(tmp_path_factory):
    """(build dir, record lines) of `cmake` run on the repository with the stub Slicer."""
    if shutil.which("cmake") is None:
        message = "cmake is not installed: the extension's CMake packaging cannot be configured here"
        if os.environ.get("NOTADIAGNOSIS_REQUIRE_SHARED") == "1":  # set by .ci/run: CI must run this test
            pytest.fail(message)
        pytest.skip(message)
    build = tmp_path_factory.mktemp("extension-build")
    completed = subprocess.run(
        ["cmake", "-S", str(REPO_ROOT), "-B", str(build), f"-DSlicer_DIR={STUB_DIR}"],
        capture_output=True, text=True, timeout=600,
    )
    assert completed.returncode == 0, completed.stdout[-3000:] + completed.stderr[-3000:]
    assert "Packaging notadiagnosis" in completed.stdout
    return build, (build / "stub-record.txt").read_text(encoding="utf-8").splitlines()


def test_module_logic_ui_icon_and_requirements_are_packaged(configured):
    build, _ = configured
    destination = build / SCRIPTED_MODULES_DIR
    expected = [Path("NotADiagnosis.py"), Path("Resources/UI/NotADiagnosis.ui"),
                Path("Resources/Icons/NotADiagnosis.png"), Path("Resources/requirements.txt")]
    expected += [path.relative_to(MODULE_DIR) for path in sorted((MODULE_DIR / "nadslicer").glob("*.py"))]
    for relative in expected:
        packaged = destination / relative
        assert packaged.is_file(), f"{relative} is not packaged"
        assert packaged.read_bytes() == (MODULE_DIR / relative).read_bytes()


def test_library_and_its_default_weights_are_packaged_from_their_single_source(configured):
    build, record = configured
    destination = build / SCRIPTED_MODULES_DIR / "notadiagnosis"
    # Every file of the bundled model: the card, the ONNX files the module's runtime loads, the safetensors.
    sources = _library_files("**/*.py") + _library_files("models/*")
    assert Path("__init__.py") in sources and Path("classifier.py") in sources
    assert {Path("models/default.onnx"), Path("models/default.saliency.onnx")} <= set(sources)
    for relative in sources:
        packaged = destination / relative
        assert packaged.is_file(), f"notadiagnosis/{relative} is not packaged"
        assert packaged.read_bytes() == (LIBRARY_DIR / relative).read_bytes()
    assert f"install NotADiagnosisLibrary {SCRIPTED_MODULES_DIR.as_posix()}/notadiagnosis" in record


def test_packaged_module_imports_the_packaged_library(configured):
    """Inside Slicer the scripted-modules folder is on sys.path: the packaged copy must be what loads."""
    build, _ = configured
    destination = build / SCRIPTED_MODULES_DIR
    code = (
        "import sys; sys.path.insert(0, sys.argv[1]);"
        "import notadiagnosis, nadslicer.logic, nadslicer.validation;"
        "from notadiagnosis.weights import bundled_models_dir;"
        "assert notadiagnosis.__file__.startswith(sys.argv[1]), notadiagnosis.__file__;"
        "assert nadslicer.logic.__file__.startswith(sys.argv[1]), nadslicer.logic.__file__;"
        "assert str(bundled_models_dir()).startswith(sys.argv[1]);"
        # What the module runs: the bundled model on ONNX Runtime, from the packaged copy.
        "from notadiagnosis.classifier import Classifier;"
        "classifier = Classifier.load(runtime='onnx');"
        "assert classifier.runtime == 'onnxruntime', classifier.runtime"
    )
    completed = subprocess.run([sys.executable, "-c", code, str(destination.resolve())],
                               capture_output=True, text=True, timeout=300, env={**os.environ, "PYTHONDONTWRITEBYTECODE": "1"})
    assert completed.returncode == 0, completed.stderr[-2000:]


def test_self_test_and_generic_tests_are_registered(configured):
    _, record = configured
    assert f"unittest NotADiagnosis {MODULE_DIR.as_posix()}/NotADiagnosis.py" in record
    assert "generic_tests NotADiagnosis" in record


def test_module_folder_holds_no_copy_of_the_library():
    library_hashes = {hashlib.sha256(path.read_bytes()).hexdigest() for path in LIBRARY_DIR.rglob("*.py")}
    for path in MODULE_DIR.rglob("*"):
        assert path.name != "notadiagnosis", f"{path} looks like a copy of the library"
        if path.is_file() and path.suffix in (".py", ".safetensors", ".json"):
            assert hashlib.sha256(path.read_bytes()).hexdigest() not in library_hashes, f"{path} copies a library file"


def _requirement_names_and_minimums(lines):
    pairs = {}
    for line in lines:
        name, _, minimum = line.partition(">=")
        pairs[name.strip().lower()] = minimum.strip()
    return pairs


def _module_requirements():
    from nadslicer.dependencies import read_requirements

    return _requirement_names_and_minimums(read_requirements(MODULE_DIR / "Resources" / "requirements.txt"))


def test_library_dependencies_are_the_inference_requirements_without_torch():
    import tomllib

    from notadiagnosis.runtime import EXPORT_REQUIREMENTS, INFERENCE_REQUIREMENTS, TORCH_REQUIREMENTS

    project = tomllib.loads((REPO_ROOT / "NotADiagnosisLib" / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    assert project["dependencies"] == list(INFERENCE_REQUIREMENTS)
    assert project["optional-dependencies"] == {"torch": list(TORCH_REQUIREMENTS), "export": list(EXPORT_REQUIREMENTS)}
    names = _requirement_names_and_minimums(project["dependencies"])
    assert "onnxruntime" in names and "torch" not in names and "safetensors" not in names


def test_module_requirements_contain_no_torch():
    assert "torch" not in _module_requirements()


def test_module_requirements_install_what_inference_needs_beyond_slicer():
    from notadiagnosis.runtime import INFERENCE_REQUIREMENTS

    # tqdm draws the command line's progress bars only; the module may leave it out.
    needed = {name: minimum for name, minimum in _requirement_names_and_minimums(INFERENCE_REQUIREMENTS).items()
              if name not in PROVIDED_BY_SLICER | {"tqdm"}}
    module = _module_requirements()
    assert {name: module.get(name) for name in needed} == needed
    assert "safetensors" not in module


def test_icon_is_a_128_pixel_png_drawn_by_the_script():
    from PIL import Image

    sys.path.insert(0, str(MODULE_DIR / "Utilities"))
    try:
        import make_icon
    finally:
        sys.path.remove(str(MODULE_DIR / "Utilities"))
    committed = Image.open(MODULE_DIR / "Resources" / "Icons" / "NotADiagnosis.png")
    assert committed.format == "PNG" and committed.size == (128, 128)
    assert committed.convert("RGBA").tobytes() == make_icon.draw_icon().tobytes()
