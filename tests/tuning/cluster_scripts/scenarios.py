"""Multi-node Ray scenarios for tests/tuning/test_cluster.py, each run in its own process (so it owns its Ray
connection and never meets the test session's `ray.init`):

    python -m tests.tuning.cluster_scripts.scenarios multinode   --workdir DIR
    python -m tests.tuning.cluster_scripts.scenarios gpu_packing --workdir DIR

Each starts a `ray.cluster_utils.Cluster` of several raylets on 127.0.0.1, runs a search through the real
code path (`tuning.run.main([... "--address", cluster.address ...])`), tears the cluster down node by node
(never `ray stop`, which would stop every Ray on the machine) and writes DIR/report.json for the test.

The trainable reports nothing about where it runs, so `tuning.trainable.train_multivae` is wrapped here
(before `tuning.tuner.new_tuner` reads it) by a function that appends one JSON line per trial start and
end to DIR/events.jsonl: trial id, node id, pid, the Ray resources and GPU ids it was given, the checkpoint
it restored (epoch, global step). Tune's own results (epoch, global_step, pid, timestamp) are recorded by a
`tune.Callback` in the driver; pid links the two.
"""

from __future__ import annotations

import os

os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"   # before Ray is imported: every node on 127.0.0.1
os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")

import argparse  # noqa: E402
import json  # noqa: E402
import signal  # noqa: E402
import socket  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
import traceback  # noqa: E402
from pathlib import Path  # noqa: E402

import ray  # noqa: E402
from ray import tune  # noqa: E402
from ray.cluster_utils import Cluster  # noqa: E402

import tuning.trainable  # noqa: E402
from tuning import run  # noqa: E402

LOOPBACK = "127.0.0.1"
# A removed node is declared dead after period x threshold (default 3 s x 5 = 15 s of waiting): shortened.
FAST_FAILURE_DETECTION = {"health_check_initial_delay_ms": 0, "health_check_period_ms": 500,
                          "health_check_timeout_ms": 500, "health_check_failure_threshold": 3}


def free_port() -> int:
    with socket.socket() as s:
        s.bind((LOOPBACK, 0))
        return s.getsockname()[1]


def append_jsonl(path: str, record: dict) -> None:
    with open(path, "a") as f:      # one short line per write: appends from several processes do not interleave
        f.write(json.dumps(record) + "\n")


def read_jsonl(path: str | Path) -> list[dict]:
    p = Path(path)
    return [json.loads(line) for line in p.read_text().splitlines() if line.strip()] if p.exists() else []


def recording_trainable(original, events_path: str):
    """`original` (train_multivae) with a start and an end record per trial process in `events_path`."""

    def train_multivae(config, split=None, **options):   # options: what tuning.tuner passes on (checkpoints, searched)
        ctx, rt = tune.get_context(), ray.get_runtime_context()
        restored = None
        ckpt = tune.get_checkpoint()
        if ckpt is not None:
            from multivae.checkpoint import CHECKPOINT_NAME, load_checkpoint

            with ckpt.as_directory() as d:
                payload = load_checkpoint(Path(d) / CHECKPOINT_NAME)
            restored = {"epoch": int(payload["epoch"]), "global_step": int(payload["global_step"])}
        base = {"trial_id": ctx.get_trial_id(), "node_id": rt.get_node_id(), "pid": os.getpid()}
        append_jsonl(events_path, {**base, "event": "start", "time": time.time(), "restored": restored,
                                   "resources": rt.get_assigned_resources(), "gpu_ids": [str(g) for g in ray.get_gpu_ids()],
                                   "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES")})
        status = "error"
        try:
            original(config, split=split, **options)
            status = "returned"
        finally:
            append_jsonl(events_path, {**base, "event": "end", "time": time.time(), "status": status})

    return train_multivae


class ResultRecorder(tune.Callback):
    """Every result as the driver sees it, plus the cluster's nodes at the start and the end of the search."""

    def __init__(self) -> None:
        self.results: list[dict] = []
        self.nodes_at_start: list[dict] = []
        self.nodes_at_end: list[dict] = []

    def setup(self, **info) -> None:
        self.nodes_at_start = node_table()

    def on_trial_result(self, iteration, trials, trial, result, **info) -> None:
        self.results.append({k: result.get(k) for k in ("trial_id", "epoch", "global_step", "pid", "node_ip", "hostname",
                                                         "timestamp", "time_total_s", "ndcg@100")} | {"wall": time.time()})

    def on_experiment_end(self, trials, **info) -> None:
        self.nodes_at_end = node_table()


def node_table() -> list[dict]:
    return [{"node_id": n["NodeID"], "address": n["NodeManagerAddress"], "alive": n["Alive"],
             "resources": n.get("Resources", {})} for n in ray.nodes()]


def write_space(path: Path, *, epochs: int, num_samples: int, max_concurrent: int) -> Path:
    """A small FIFO search (no ASHA: every trial runs all its epochs) with a checkpoint every epoch."""
    path.write_text(f"""\
description: tests/tuning/test_cluster.py
dataset:
  name: synthetic
  synthetic: {{n_users: 1200, n_items: 500, n_topics: 8, seed: 0}}
  protocol: {{heldout_users: 100}}
  cache: false
fixed:
  epochs: {epochs}
  batch_size: 100
  anneal_steps: 60
  hidden_dims: [64]
  latent_dim: 16
  eval_batch_size: 500
params:
  lr: {{type: loguniform, low: 1.0e-3, high: 1.0e-2}}
search: {{num_samples: {num_samples}, max_concurrent: {max_concurrent}, seed: 0}}
scheduler: {{type: fifo}}
resources: {{cpus_per_trial: 1, gpus_per_trial: 0}}
checkpoint: {{every: 1, keep: 2}}
""")
    return path


def start_cluster(head: dict, workers: list[dict]) -> tuple[Cluster, list]:
    head_args = {"node_ip_address": LOOPBACK, "include_dashboard": False,
                 "dashboard_agent_listen_port": free_port(), "_system_config": FAST_FAILURE_DETECTION, **head}
    cluster = Cluster(initialize_head=True, head_node_args=head_args)
    nodes = [cluster.add_node(node_ip_address=LOOPBACK, **w) for w in workers]
    cluster.wait_for_nodes()
    return cluster, nodes


def stop_cluster(cluster: Cluster | None) -> None:
    """Kill this cluster's own processes, workers first, then the head (Cluster.shutdown runs `ray stop --force`,
    which would also stop every other Ray on the machine)."""
    if ray.is_initialized():
        ray.shutdown()
    if cluster is None:
        return
    for node in list(cluster.worker_nodes):
        try:
            cluster.remove_node(node)
        except Exception:  # noqa: BLE001 - keep going: the head must go too
            traceback.print_exc()
    if cluster.head_node is not None:
        cluster.remove_node(cluster.head_node)


def run_search(argv: list[str], events_path: str, callbacks: list) -> int:
    original = tuning.trainable.train_multivae
    tuning.trainable.train_multivae = recording_trainable(original, events_path)   # build_tuner imports it at call time
    try:
        return run.main(argv, callbacks=callbacks)
    finally:
        tuning.trainable.train_multivae = original


# --- scenario 1: trials on several nodes; a node dies under a trial, which goes on elsewhere from its checkpoint --

class NodeKiller(tune.Callback):
    """Kills (SIGKILL, no graceful shutdown) the node of the first trial whose epoch-`at_epoch` checkpoint Tune
    has registered. `on_trial_save` runs after the registration; `on_trial_result` would run before the driver
    even asks the trial for that checkpoint, and the trial would then come back from the epoch before."""

    def __init__(self, cluster: Cluster, nodes: list, events_path: str, at_epoch: int) -> None:
        self.cluster, self.nodes, self.events_path, self.at_epoch = cluster, nodes, events_path, at_epoch
        self.killed: dict | None = None

    def __getstate__(self) -> dict:   # the Tuner pickles its callbacks into the experiment; a Cluster does not pickle
        return {k: v for k, v in self.__dict__.items() if k not in ("cluster", "nodes")}

    def on_trial_save(self, iteration, trials, trial, **info) -> None:
        result = trial.last_result or {}
        if self.killed is not None or result.get("epoch", 0) < self.at_epoch:
            return
        starts = [e for e in read_jsonl(self.events_path) if e["event"] == "start" and e["pid"] == result["pid"]]
        if not starts:
            return
        node_id = starts[-1]["node_id"]
        victim = next(n for n in self.nodes if n.node_id == node_id)
        t = time.time()
        # A lost machine takes every process with it. remove_node kills the node's Ray processes (raylet, object
        # store, agents) but a worker outlives its raylet for a moment (long enough to report another epoch), so
        # the trial's worker process is killed too.
        self.cluster.remove_node(victim, allow_graceful=False)
        os.kill(result["pid"], signal.SIGKILL)
        self.killed = {"node_id": node_id, "trial_id": trial.trial_id, "pid": result["pid"], "epoch": result["epoch"],
                       "global_step": result["global_step"], "time": t, "removal_s": time.time() - t}
        print(f"[scenario] removed node {node_id[:8]} under trial {trial.trial_id} after its epoch {result['epoch']}",
              flush=True)


def multinode(workdir: Path, report: dict) -> None:
    events = str(workdir / "events.jsonl")
    storage = workdir / "storage"
    space = write_space(workdir / "space.yaml", epochs=12, num_samples=2, max_concurrent=2)
    cluster = None
    t0 = time.time()
    try:
        # the head drives the search and runs no trial (0 CPUs); three 1-CPU nodes run them, one at a time each
        cluster, nodes = start_cluster({"num_cpus": 0}, [{"num_cpus": 1, "resources": {"node_a": 1}},
                                                        {"num_cpus": 1, "resources": {"node_b": 1}},
                                                        {"num_cpus": 1, "resources": {"node_c": 1}}])
        report["cluster_start_s"] = time.time() - t0
        report["head_node_id"] = cluster.head_node.node_id
        report["worker_node_ids"] = [n.node_id for n in nodes]
        report["address"] = cluster.address
        recorder = ResultRecorder()
        killer = NodeKiller(cluster, nodes, events, at_epoch=3)
        argv = ["--address", cluster.address, "--space", str(space), "--storage", str(storage), "--name", "multinode",
                "--max-failures", "2"]
        t1 = time.time()
        report["rc"] = run_search(argv, events, [recorder, killer])
        report["search_s"] = time.time() - t1
        report |= {"results": recorder.results, "nodes_at_start": recorder.nodes_at_start,
                   "nodes_at_end": recorder.nodes_at_end, "killed": killer.killed, "argv": argv}
    finally:
        stop_cluster(cluster)
        report["events"] = read_jsonl(events)
        report["experiment"] = str(storage / "multinode")
        report["total_s"] = time.time() - t0


# --- scenario 3: fractional GPUs: 0.5 GPU per trial on a node with 2 (logical) GPUs runs 4 trials at once ---------

def gpu_packing(workdir: Path, report: dict) -> None:
    events = str(workdir / "events.jsonl")
    storage = workdir / "storage"
    space = write_space(workdir / "space.yaml", epochs=12, num_samples=4, max_concurrent=1)
    cluster = None
    t0 = time.time()
    try:
        # one node declaring 2 GPUs (no CUDA behind them) and 2 CPUs: 4 trials of 0.5 GPU + 0.5 CPU fit at once
        cluster, _ = start_cluster({"num_cpus": 2, "num_gpus": 2}, [])
        report["cluster_start_s"] = time.time() - t0
        recorder = ResultRecorder()
        argv = ["--address", cluster.address, "--space", str(space), "--storage", str(storage), "--name", "packing",
                "--gpus-per-trial", "0.5", "--cpus-per-trial", "0.5", "--max-concurrent", "4"]
        t1 = time.time()
        report["rc"] = run_search(argv, events, [recorder])
        report["search_s"] = time.time() - t1
        report |= {"results": recorder.results, "nodes_at_start": recorder.nodes_at_start, "argv": argv}
    finally:
        stop_cluster(cluster)
        report["events"] = read_jsonl(events)
        report["experiment"] = str(storage / "packing")
        report["total_s"] = time.time() - t0


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("scenario", choices=["multinode", "gpu_packing"])
    p.add_argument("--workdir", required=True)
    a = p.parse_args()
    workdir = Path(a.workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    report: dict = {"scenario": a.scenario}
    status = 0
    try:
        {"multinode": multinode, "gpu_packing": gpu_packing}[a.scenario](workdir, report)
    except BaseException:  # noqa: BLE001 - the test shows it
        report["error"] = traceback.format_exc()
        traceback.print_exc()
        status = 1
    (workdir / "report.json").write_text(json.dumps(report, indent=1, default=str))
    print(f"[scenario] {a.scenario}: rc {report.get('rc')}, {report.get('total_s', 0):.1f} s; report in "
          f"{workdir / 'report.json'}", flush=True)
    return status


if __name__ == "__main__":
    sys.exit(main())
