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
    # the best single run is where the re-evaluation starts; the pick is its best mean (tuning.reevaluate)
    single = found.trials.loc[found.trials["best_ndcg@100"].idxmax()]
    assert single["trial_id"] == results["reevaluation"]["single_run_best"]
    best = found.trials.set_index("trial_id").loc[results["best_trial"]["trial_id"]]
    assert results["best_trial"]["trial_id"] == results["reevaluation"]["chosen"]
    assert found.best_config["model"]["latent_dim"] == best["latent_dim"]
    assert (Path(found.best_model) / "model.json").is_file()
    out = capsys.readouterr().out
    assert "popularity" in out and "rank" in out


def test_search_raises_user_error_naming_keywords_before_anything_starts(tmp_path):
    """The docstring's promise: bad input is a UserError (not TypeError, KeyError, ValueError or a SystemExit
    into the notebook), and its message names keywords, not flags. Nothing is started or written."""
    import pytest

    import tuning
    from multivae.errors import UserError

    storage = str(tmp_path / "ray_results")
    cases = [
        ({"space": 5}, r"^tuning\.search: space must be a search space name or a YAML path, got 5$"),          # was TypeError
        ({"space": "smoke", "num_samples": "lots"}, r"^tuning\.search: argument num_samples: invalid int value: 'lots'$"),  # SystemExit(2)
        ({"space": "smoke", "num_samples": 0}, r"^tuning\.search: num_samples must be >= 1, got 0$"),
        ({"space": "smoke", "name": "a\0b"}, r"^tuning\.search: name must not contain a NUL byte"),                # was ValueError
        ({"space": "smoke", "nmae": "x"}, r"^tuning\.search: unknown keyword 'nmae' \(keywords: "),
        ({"space": "smoke", "quiet": "yes"}, r"^tuning\.search: quiet must be True or False, got 'yes'$"),
        ({"space": "smoke", "resume": True}, r"^tuning\.search: resume needs name \(the experiment to continue\)$"),
    ]
    for kw, message in cases:
        with pytest.raises(UserError, match=message) as err:
            tuning.search(**{"storage": storage, **kw})
        assert "--" not in str(err.value), str(err.value)
    assert not (tmp_path / "ray_results").exists()
