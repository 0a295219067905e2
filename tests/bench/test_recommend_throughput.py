"""bench.recommend_throughput at its --tiny size: the JSON's shape, and ours agreeing with the numpy ranking."""

import json

from bench import recommend_throughput


def test_recommend_throughput_tiny(tmp_path):
    recommend_throughput.main(["--tiny", "--out", str(tmp_path)])
    doc = json.loads((tmp_path / "recommend_throughput.json").read_text())
    assert doc["bench"] == "recommend_throughput" and doc["command"].startswith("python -m bench.recommend_throughput --tiny")
    assert doc["agreement_with_numpy_reference"] == {"users_checked": 20, "all_equal": True}
    res = doc["results"]
    assert {"ours: Recommender.recommend_all (DataFrame)", "forward alone", "limit: the matmuls ours does",
            "limit: dense forward's matmuls"} <= set(res)
    for row in res.values():
        assert row["users_per_s_cpu"] > 0 and row["pct_of_limit_ours_matmuls_cpu"] > 0
    assert res["limit: the matmuls ours does"]["pct_of_limit_ours_matmuls_cpu"] == 100
