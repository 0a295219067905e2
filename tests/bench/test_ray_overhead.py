"""`python -m bench.ray_overhead --tiny` runs end to end on a real local Ray and writes a sane JSON.

In a subprocess: the bench starts and shuts down its own Ray, which must not meet a Ray that this test
session may already run. No timed assertions; the memory check is on sizes (a 10 MB split), which do not
depend on the machine's load.
"""

import json
import math
import os
import subprocess
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]


def test_ray_overhead_tiny(tmp_path):
    env = {**os.environ, "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}
    proc = subprocess.run([sys.executable, "-m", "bench.ray_overhead", "--tiny", "--out", str(tmp_path)],
                          cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    doc = json.loads((tmp_path / "ray_overhead.json").read_text())
    assert doc["bench"] == "ray_overhead" and doc["command"] == "python -m bench.ray_overhead --tiny"
    assert {"cpu_model", "logical_cores", "torch", "loadavg_1_5_15", "ray"} <= set(doc["machine"])
    assert doc["config"]["ray_node_ip"] == "127.0.0.1"
    res = doc["results"]

    t = res["time"]
    for key in ("ray_init_s", "tuner_setup_s", "search_wall_s", "direct_wall_s", "ray_over_direct_wall",
                "overhead_per_trial_s_from_timestamps", "overhead_per_trial_s_from_wall", "cpu_overhead_per_trial_s"):
        assert math.isfinite(t[key]), key
    assert t["overhead_physical_limit_s"] == 0.0
    assert len(res["ray_trials"]) == len(res["direct_runs"]) == doc["config"]["trials"]
    for trial in res["ray_trials"]:
        assert trial["epochs"] == doc["config"]["epochs"]
        assert 0 < trial["in_epochs_s"] < trial["lifetime_s"]
        assert trial["worker_cpu_s"] > 0
    # the direct runs trained the configs the search tried
    assert all(set(trial["config"]) >= {"lr", "dropout", "latent_dim"} for trial in res["ray_trials"])

    mem = res["memory"]
    assert set(mem["cases"]) == {"none", "with_parameters", "config"}
    for case in mem["cases"].values():
        assert case["trial_rss_median_bytes"] >= case["trial_uss_median_bytes"] > 0
        assert case["trial_pss_median_bytes"] > 0
    shared, copied = (mem["cases"][c]["trial_uss_median_bytes"] for c in ("with_parameters", "config"))
    assert copied - shared > 0.5 * mem["dataset_bytes"]   # each config trial holds its own copy of the split
