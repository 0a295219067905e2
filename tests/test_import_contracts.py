"""The layering stays true: `lint-imports` checks the contracts in pyproject.toml ([tool.importlinter]):
multivae/ never imports tuning/, Ray or Optuna; tuning/ flows one way; no import cycles."""

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).absolute().parents[1]


def test_import_contracts_are_kept():
    lint = Path(sys.executable).with_name("lint-imports")
    proc = subprocess.run([str(lint)], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "BROKEN" not in proc.stdout and proc.stdout.count("KEPT") >= 3, proc.stdout
