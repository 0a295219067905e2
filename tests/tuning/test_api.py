"""`tuning.search` from Python: docs/search.md's snippet run verbatim (on the session's Ray), and what it returns
agrees with the experiment's files."""

import json
import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def readme_snippet() -> str:
    text = (REPO / "docs" / "search.md").read_text()
    section = text[text.index("The same search from Python"):]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def test_readme_search_snippet_runs_verbatim_and_agrees_with_the_files(ray_session, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MULTIVAE_DATA_DIR", str(tmp_path))
    scope: dict = {}
    exec(compile(readme_snippet(), "docs/search.md:search", "exec"), scope)
    found = scope["found"]
    exp = tmp_path / "ray_results" / "py-demo"
    results = json.loads((exp / "results.json").read_text())
    assert Path(found.experiment) == exp and found.test == results["test"] and found.val == results["val"]
    assert len(found.trials) == results["trials"]["total"] == 6
    assert set(found.trials["status"]) <= {"completed", "stopped_early"}
    # `epochs` is what each trial ran (ASHA stopped some before the configured 6), not its config's maximum
    assert dict(zip(found.trials["trial_id"], found.trials["epochs"])) == {r["trial_id"]: r["epochs"] for r in results["trials_table"]}
    assert min(found.trials["epochs"]) < max(r["config"]["epochs"] for r in results["trials_table"])
    best = found.trials.loc[found.trials["best_ndcg@100"].idxmax()]
    assert best["trial_id"] == results["best_trial"]["trial_id"]
    assert found.best_config["model"]["latent_dim"] == best["latent_dim"]
    assert (Path(found.best_model) / "model.json").is_file()
    out = capsys.readouterr().out
    assert "popularity" in out and "rank" in out
