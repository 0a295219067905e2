"""Every entry point, console script or `python -m` module, answers --version with the package version."""

import importlib
import sys
from pathlib import Path

import pytest

from multivae.version import __version__

tomllib = pytest.importorskip("tomllib")   # Python 3.11+

REPO = Path(__file__).resolve().parents[1]
SCRIPTS = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]
MODULES = ["multivae.train", "multivae.recommend", "tuning.run", "tuning.report", "tuning.ablation"]


@pytest.mark.parametrize("script", sorted(SCRIPTS))
def test_console_script_answers_version(script, monkeypatch, capsys):
    module, fn = SCRIPTS[script].split(":")
    monkeypatch.setattr(sys, "argv", [script, "--version"])
    with pytest.raises(SystemExit) as exit_:
        getattr(importlib.import_module(module), fn)()
    assert exit_.value.code == 0
    assert capsys.readouterr().out.strip().endswith(f" {__version__}")


@pytest.mark.parametrize("module", MODULES)
def test_module_answers_version(module, capsys):
    with pytest.raises(SystemExit) as exit_:
        importlib.import_module(module).main(["--version"])
    assert exit_.value.code == 0
    assert capsys.readouterr().out.strip() == f"python -m {module} {__version__}"
