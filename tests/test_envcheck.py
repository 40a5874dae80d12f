"""The install step's torchvision repair: a torchvision that breaks `import lightning` is removed."""

import shutil

from mosaics_lab import envcheck


def _fake_broken_torchvision(root):
    pkg = root / "torchvision"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("raise RuntimeError('operator torchvision::nms does not exist')\n")
    return pkg


def test_broken_torchvision_breaks_lightning_and_is_removed(tmp_path, monkeypatch):
    pkg = _fake_broken_torchvision(tmp_path)
    monkeypatch.setenv("PYTHONPATH", str(tmp_path))
    ok, err = envcheck.imports_cleanly("lightning")
    assert not ok and "torchvision::nms" in err  # the trap is real: torchmetrics imports torchvision

    removed_calls = []

    def fake_uninstall(name, python):
        removed_calls.append(name)
        shutil.rmtree(pkg)

    removed = envcheck.fix_environment(uninstall=fake_uninstall, log=lambda msg: None)
    assert removed == ["torchvision"] and removed_calls == ["torchvision"]
    assert envcheck.imports_cleanly("lightning") == (True, "")


def test_healthy_environment_is_left_alone(monkeypatch):
    calls = []
    removed = envcheck.fix_environment(uninstall=lambda n, p: calls.append(n), log=lambda msg: None)
    assert removed == [] and calls == []


def test_installed_environment_imports_the_whole_stack():
    for module in ("lightning", "litdata", "torchmetrics", "optuna"):
        assert envcheck.imports_cleanly(module) == (True, ""), module
