"""The Python API: `multivae.fit` / `multivae.load` / `Recommender.recommend`, and docs/recommend.md's snippet run verbatim."""

import re
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

import multivae
from multivae.errors import UserError

from .helpers import clustered_interactions

REPO = Path(__file__).resolve().parents[2]


def readme_snippet() -> str:
    text = (REPO / "docs" / "recommend.md").read_text()
    section = text[text.index("## Python API"):]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def test_readme_snippet_runs_verbatim(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "cache").mkdir()
    monkeypatch.setenv("MULTIVAE_DATA_DIR", str(tmp_path / "cache"))
    code = readme_snippet()
    assert "multivae.fit(" in code and "multivae.load(" in code
    exec(compile(code, "docs/recommend.md:python-api", "exec"), {})
    out = capsys.readouterr().out
    assert "probability" in out and (tmp_path / "runs" / "api-demo" / "model" / "model.json").is_file()


def test_fit_takes_a_dataframe_and_flags_as_keywords(tmp_path):
    df = clustered_interactions(300, 120, seed=2)
    rec = multivae.fit(data=df, out=tmp_path / "run", epochs=1, hidden_dims=[8], latent_dim=4, batch_size=100,
                       cache_dir=str(tmp_path / "cache"))
    assert isinstance(rec, multivae.Recommender)
    assert rec.meta["model_config"]["latent_dim"] == 4 and rec.meta["train_config"]["epochs"] == 1
    top = rec.recommend(users=[int(rec.user_ids[0])], k=3)
    assert list(top.columns) == ["user", "rank", "item", "score"] and len(top) == 3
    before = (tmp_path / "run" / "interactions.parquet").read_bytes()
    with pytest.raises(UserError, match=r"run: a run already exists there"):
        multivae.fit(data=df.head(2000), out=tmp_path / "run", epochs=1)
    assert (tmp_path / "run" / "interactions.parquet").read_bytes() == before      # nothing of the run overwritten
    with pytest.raises(UserError, match=r"multivae\.fit: unknown option 'learning_rate'"):
        multivae.fit(data=df, out=tmp_path / "other", learning_rate=0.1)
    assert not (tmp_path / "other").exists()


def test_import_multivae_stays_light():
    code = "import sys, multivae; print(sorted(m for m in ('torch', 'pandas', 'ray', 'optuna') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO,
                         env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"}, timeout=120)
    assert out.returncode == 0 and out.stdout.strip() == "[]", out.stdout + out.stderr


@pytest.mark.parametrize("kw, message", [
    # argparse's refusal: was SystemExit(2) into the caller, and a message about --epochs
    ({"epochs": "many"}, r"^multivae\.fit: argument epochs: invalid int value: 'many'$"),
    # a check of ours after parsing: the keyword, not the flag
    ({"epochs": 0}, r"^multivae\.fit: epochs must be >= 1, got 0$"),
    ({"model": "ease", "ease_lambda": [float("nan")]}, r"^multivae\.fit: ease_lambda needs values > 0 \(and finite\), got nan$"),
    ({"cache_dir": "a\0b"}, r"^multivae\.fit: cache_dir must not contain a NUL byte, got 'a\\x00b'$"),   # was a ValueError
])
def test_fit_raises_user_error_naming_keywords_never_system_exit(tmp_path, kw, message):
    with pytest.raises(UserError, match=message) as err:
        multivae.fit(data="synthetic", out=tmp_path / "run", **kw)
    assert "--" not in str(err.value)
    assert not (tmp_path / "run").exists()


def test_fit_refuses_a_nul_byte_in_a_path(tmp_path):
    with pytest.raises(UserError, match=r"^multivae\.fit: out must not contain a NUL byte"):
        multivae.fit(data="synthetic", out=str(tmp_path / "r\0un"))
