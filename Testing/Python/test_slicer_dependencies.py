"""Dependencies at first use: torch through the PyTorch extension or a message saying how to get it;
other packages through slicer.packaging.pip_ensure (Slicer 5.12+) or, before 5.12, a confirmation and
slicer.util.pip_install. The Slicer calls are replaced by recorders here (no network, no install)."""
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

    calls = {"pip_install": [], "confirm": []}
    monkeypatch.setattr(slicer.util, "pip_install", lambda requirements: calls["pip_install"].append(requirements), raising=False)
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


def test_torch_present_needs_nothing(monkeypatch):
    monkeypatch.setitem(sys.modules, "PyTorchUtils", None)  # would raise if consulted
    dependencies.ensure_torch()


def test_missing_torch_without_the_pytorch_extension_says_how_to_get_it(monkeypatch):
    monkeypatch.setattr(dependencies, "torch_installed", lambda: False)
    monkeypatch.setitem(sys.modules, "PyTorchUtils", None)
    with pytest.raises(DependencyError, match="'PyTorch' extension from the Extensions Manager"):
        dependencies.ensure_torch()


@pytest.mark.parametrize("installed", [True, False])
def test_missing_torch_is_installed_through_pytorch_utils(monkeypatch, installed):
    calls = []

    class FakeLogic:
        def installTorch(self, askConfirmation=False, forceComputationBackend=None, torchVersionRequirement=None,
                         torchvisionVersionRequirement=None):
            calls.append((askConfirmation, torchVersionRequirement))
            return object() if installed else None

    monkeypatch.setattr(dependencies, "torch_installed", lambda: False)
    monkeypatch.setitem(sys.modules, "PyTorchUtils", types.SimpleNamespace(PyTorchUtilsLogic=FakeLogic))
    if installed:
        dependencies.ensure_torch()
    else:
        with pytest.raises(DependencyError, match="PyTorch Utils"):
            dependencies.ensure_torch()
    assert calls == [(True, dependencies.TORCH_REQUIREMENT)]


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


@pytest.mark.parametrize("error", [subprocess.CalledProcessError(1, ["PythonSlicer", "-m", "light_the_torch"]),
                                   ModuleNotFoundError("No module named 'torch'")])
def test_a_failed_torch_install_is_a_clear_error(monkeypatch, error):
    class FailingLogic:
        def installTorch(self, **kwargs):
            raise error

    monkeypatch.setattr(dependencies, "torch_installed", lambda: False)
    monkeypatch.setitem(sys.modules, "PyTorchUtils", types.SimpleNamespace(PyTorchUtilsLogic=FailingLogic))
    with pytest.raises(DependencyError, match="Installing torch failed"):
        dependencies.ensure_torch()
