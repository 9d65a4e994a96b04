"""Dependencies at first use, from the one list in Resources/requirements.txt: slicer.packaging.pip_ensure
(Slicer 5.12+) or, before 5.12, a confirmation and slicer.util.pip_install with the busy cursor only while
pip runs; in testing mode never an install but an error the self-test turns into a skip; minimum versions
checked when a package is already there; the runtime must import. The Slicer calls are replaced by
recorders here (no network, no install)."""
from __future__ import annotations

import subprocess
import sys
import types

import pytest

pytest.importorskip("slicer", reason="slicer-core provides slicer.util, which the fallback path calls")

import slicer_support  # noqa: E402,F401  (puts the module folder on sys.path)
from nadslicer import dependencies  # noqa: E402
from nadslicer.errors import DependencyError  # noqa: E402


def test_requirements_file_lines_are_read_without_comments_or_options(tmp_path):
    path = tmp_path / "requirements.txt"
    path.write_text("# comment\nsafetensors>=0.4  # inline\n\n-c constraints.txt\ntqdm\n", encoding="utf-8")
    assert dependencies.read_requirements(path) == ["safetensors>=0.4", "tqdm"]


def test_installed_versions_are_compared_with_the_minimum():
    assert dependencies.is_satisfied("numpy")
    assert dependencies.is_satisfied("numpy>=1.0")
    assert not dependencies.is_satisfied("numpy>=999.0")
    assert not dependencies.is_satisfied("surely-not-an-installed-package-xyz")
    assert dependencies.missing_requirements(["numpy>=1.0", "surely-not-an-installed-package-xyz>=1"]) == [
        "surely-not-an-installed-package-xyz>=1"
    ]


@pytest.fixture
def recorder(monkeypatch):
    """Replaces slicer.util's install/confirm calls and hides slicer.packaging (as on Slicer < 5.12)."""
    import slicer.util

    import contextlib

    calls = {"pip_install": [], "confirm": []}
    monkeypatch.setattr(slicer.util, "pip_install", lambda requirements: calls["pip_install"].append(requirements), raising=False)
    monkeypatch.setattr(slicer.util, "WaitCursor", contextlib.nullcontext, raising=False)
    monkeypatch.setitem(sys.modules, "slicer.packaging", None)  # `import slicer.packaging` raises ImportError
    return calls


def test_nothing_is_installed_or_asked_when_everything_is_there(recorder):
    dependencies.ensure_packages(["numpy>=1.0"], confirm=lambda message: recorder["confirm"].append(message) or True)
    assert recorder == {"pip_install": [], "confirm": []}


def test_before_slicer_5_12_declining_installs_nothing(recorder):
    with pytest.raises(DependencyError, match="accept the installation"):
        dependencies.ensure_packages(["not-installed-pkg-abc>=1.2"], confirm=lambda message: recorder["confirm"].append(message) or False)
    assert recorder["pip_install"] == []
    assert "not-installed-pkg-abc>=1.2" in recorder["confirm"][0]


def test_before_slicer_5_12_agreeing_runs_pip_install_and_checks_the_result(recorder):
    with pytest.raises(DependencyError, match="did not succeed"):  # the recorder installs nothing
        dependencies.ensure_packages(["not-installed-pkg-abc>=1.2", "numpy"], confirm=lambda message: True)
    assert recorder["pip_install"] == ["not-installed-pkg-abc>=1.2"]


def test_on_slicer_5_12_pip_ensure_is_used(monkeypatch):
    calls = []
    packaging = types.ModuleType("slicer.packaging")
    packaging.pip_ensure = lambda requirements, requester=None: calls.append((requirements, requester))
    monkeypatch.setitem(sys.modules, "slicer.packaging", packaging)
    monkeypatch.setattr(dependencies, "missing_requirements", lambda requirements: [] if calls else list(requirements))
    dependencies.ensure_packages(["safetensors>=0.4"])
    assert calls == [(["safetensors>=0.4"], dependencies.REQUESTER)]


def test_on_slicer_5_12_declining_pip_ensure_is_a_clear_error(monkeypatch):
    def decline(requirements, requester=None):
        raise RuntimeError("User declined package installation")

    packaging = types.ModuleType("slicer.packaging")
    packaging.pip_ensure = decline
    monkeypatch.setitem(sys.modules, "slicer.packaging", packaging)
    with pytest.raises(DependencyError, match="not-installed-pkg-abc"):
        dependencies.ensure_packages(["not-installed-pkg-abc>=1"])


def test_the_module_requirements_are_satisfied_in_this_environment():
    from slicer_support import MODULE_DIR

    assert dependencies.missing_requirements(dependencies.read_requirements(MODULE_DIR / "Resources" / "requirements.txt")) == []


def _failing(error):
    def fail(*args, **kwargs):
        raise error

    return fail


@pytest.mark.parametrize("error", [subprocess.CalledProcessError(1, ["pip", "install"]),
                                   RuntimeError("PythonSlicer executable not found")])
def test_on_slicer_5_12_a_failed_install_is_a_clear_error_not_a_decline(monkeypatch, error):
    packaging = types.ModuleType("slicer.packaging")
    packaging.pip_ensure = _failing(error)
    monkeypatch.setitem(sys.modules, "slicer.packaging", packaging)
    with pytest.raises(DependencyError, match=r"Installing not-installed-pkg-abc>=1 failed .*check the network") as raised:
        dependencies.ensure_packages(["not-installed-pkg-abc>=1"])
    assert "accept the installation" not in str(raised.value)


def test_before_slicer_5_12_a_failed_pip_install_is_a_clear_error(recorder, monkeypatch):
    import slicer.util

    monkeypatch.setattr(slicer.util, "pip_install", _failing(subprocess.CalledProcessError(1, ["pip"])), raising=False)
    with pytest.raises(DependencyError, match="failed .*CalledProcessError"):
        dependencies.ensure_packages(["not-installed-pkg-abc>=1.2"], confirm=lambda message: True)


def test_in_testing_mode_nothing_is_installed_and_the_missing_packages_are_named(monkeypatch, recorder):
    import slicer as slicer_package

    from nadslicer.errors import DependenciesMissingInTesting

    monkeypatch.setattr(slicer_package, "app", types.SimpleNamespace(testingEnabled=lambda: True), raising=False)
    packaging = types.ModuleType("slicer.packaging")
    packaging.pip_ensure = lambda *args, **kwargs: pytest.fail("pip_ensure must not run in testing mode")
    monkeypatch.setitem(sys.modules, "slicer.packaging", packaging)
    with pytest.raises(DependenciesMissingInTesting, match=r"testing mode: not-installed-pkg-abc>=1 \(not installed\)"):
        dependencies.ensure_packages(["numpy", "not-installed-pkg-abc>=1"], confirm=lambda message: pytest.fail("asked"))
    assert recorder["pip_install"] == []
    dependencies.ensure_packages(["numpy>=1.0"])  # present: nothing to say, also in testing mode


def test_the_busy_cursor_is_shown_while_pip_runs_never_under_the_confirmation(recorder, monkeypatch):
    import contextlib

    import slicer.util

    state = {"busy": False}
    seen = []

    @contextlib.contextmanager
    def busy():
        state["busy"] = True
        try:
            yield
        finally:
            state["busy"] = False

    monkeypatch.setattr(slicer.util, "pip_install", lambda requirements: seen.append(("pip", state["busy"])), raising=False)
    with pytest.raises(DependencyError, match="did not succeed"):
        dependencies.ensure_packages(["not-installed-pkg-abc>=1"], confirm=lambda message: seen.append(("ask", state["busy"])) or True,
                                     busy=busy)
    assert seen == [("ask", False), ("pip", True)]


def test_an_installed_package_older_than_the_minimum_is_named_with_its_version(recorder):
    import numpy

    asked = []
    with pytest.raises(DependencyError):
        dependencies.ensure_packages(["numpy>=999.0"], confirm=lambda message: asked.append(message) or False)
    assert f"numpy>=999.0 ({numpy.__version__} installed)" in asked[0]


def test_a_runtime_that_does_not_import_is_a_dependency_error():
    with pytest.raises(DependencyError, match="cannot be loaded .*ModuleNotFoundError"):
        dependencies.import_runtime("surely_not_an_importable_runtime_xyz")
    assert dependencies.import_runtime("json").__name__ == "json"


def test_the_module_requirements_are_read_from_one_file():
    from slicer_support import MODULE_DIR

    assert dependencies.module_requirements(MODULE_DIR) == dependencies.read_requirements(MODULE_DIR / "Resources" / "requirements.txt")
    assert dependencies.module_requirements(MODULE_DIR)


def test_onnxruntime_gpu_satisfies_onnxruntime(monkeypatch):
    """Installing the CPU onnxruntime next to onnxruntime-gpu would break both: the GPU build counts."""
    import importlib.metadata

    versions = {"onnxruntime-gpu": "1.20.1"}

    def version(name):
        if name in versions:
            return versions[name]
        raise importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(dependencies.importlib.metadata, "version", version)
    assert dependencies.is_satisfied("onnxruntime>=1.14")
    assert not dependencies.is_satisfied("onnxruntime>=1.21")
    assert dependencies.describe_missing(["onnxruntime>=1.21"]) == "onnxruntime>=1.21 (1.20.1 installed)"
    versions.clear()
    assert dependencies.missing_requirements(["onnxruntime>=1.14"]) == ["onnxruntime>=1.14"]
