"""Distributed runs (issue 5): a multi-node Ray cluster on this machine, a node lost under a trial, fractional
GPUs, `ray job submit` to a `ray start` head, and the cluster manifests in cluster/.

Every cluster here is on 127.0.0.1 (RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0, ../../../shared/RAY_NOTES.md) and
runs in a process of its own: `tests/tuning/cluster_scripts/scenarios.py` for the `ray.cluster_utils.Cluster`
scenarios, `ray start --head --block` for the job test. Each gets a private Ray temp dir (RAY_TMPDIR: its
sessions, logs and `ray_current_cluster` file never meet another Ray on the machine) and an environment
marker inherited by every process it starts, so a test can find exactly its own processes afterwards, stop
any that are left (by pid), and fail if there were any. Nothing here runs `ray stop`.
"""

from __future__ import annotations

import collections
import json
import os
import secrets
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import yaml

from tests.tuning.helpers import events, result_rows, trial_dirs
from tuning.tblog import SUBDIR

REPO = Path(__file__).absolute().parents[2]
VENV_BIN = Path(sys.executable).parent          # the tests' python and its `ray` CLI
CLUSTER_DIR = REPO / "cluster"
MARKER = "MULTIVAE_TEST_CLUSTER"                # in the environment of every process a test here starts
LOOPBACK = "127.0.0.1"
SPE = 10                                        # updates per epoch of the scenarios' space: 1,000 users / batch 100


# --- processes and environments ------------------------------------------------------------------------

def free_port() -> int:
    with socket.socket() as s:
        s.bind((LOOPBACK, 0))
        return s.getsockname()[1]


def marked_processes(tag: str) -> list[int]:
    """Pids of live processes whose environment carries MARKER=tag: what this test started, and only that."""
    needle = f"{MARKER}={tag}".encode()
    pids = []
    if not Path("/proc").is_dir():   # not Linux: nothing to look at
        return pids
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            if needle in (entry / "environ").read_bytes().split(b"\0"):
                status = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
                if status != "Z":
                    pids.append(int(entry.name))
        except OSError:   # gone meanwhile, or not ours to read
            continue
    return pids


def reap(tag: str, grace_s: float = 20.0) -> list[str]:
    """Wait for this test's processes to exit; SIGKILL (by pid) any still there after `grace_s`. Returns
    what had to be killed (empty when the teardown left nothing behind)."""
    deadline = time.monotonic() + grace_s
    while marked_processes(tag) and time.monotonic() < deadline:
        time.sleep(0.5)
    left = []
    for pid in marked_processes(tag):
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            left.append(f"{pid} {cmdline[:120]}")
            os.kill(pid, signal.SIGKILL)
        except OSError:
            pass
    return left


def cluster_env(tag: str, ray_tmp: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "PYTEST_CURRENT_TEST")}
    env.update({"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "RAY_TMPDIR": str(ray_tmp), MARKER: tag,
                "PATH": f"{VENV_BIN}{os.pathsep}{env.get('PATH', '')}", "RAY_USAGE_STATS_ENABLED": "0",
                "PYTHONUNBUFFERED": "1"}, **extra)
    return env


@pytest.fixture
def ray_tmp():
    """A short private Ray temp dir (Unix socket paths under it must stay under 108 characters) and the tag
    that marks this test's processes; afterwards nothing of either is left."""
    path = Path(tempfile.mkdtemp(prefix="mvt", dir="/tmp" if Path("/tmp").is_dir() else None))
    try:
        yield path, path.name
    finally:
        reap(path.name, grace_s=5.0)
        shutil.rmtree(path, ignore_errors=True)


def tail(path: Path, n: int = 60) -> str:
    return "\n".join(path.read_text(errors="replace").splitlines()[-n:]) if path.exists() else f"({path} missing)"


def run_scenario(name: str, workdir: Path, ray_tmp: tuple[Path, str], timeout_s: float) -> tuple[dict, float]:
    """Run one scenario of cluster_scripts/scenarios.py in its own process (and process group); its report."""
    tmp, tag = ray_tmp
    log = workdir / "scenario.log"
    t0 = time.perf_counter()
    with open(log, "w") as out:
        proc = subprocess.Popen([sys.executable, "-m", "tests.tuning.cluster_scripts.scenarios", name, "--workdir", str(workdir)],
                                cwd=REPO, env=cluster_env(tag, tmp), stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)
        try:
            proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    wall = time.perf_counter() - t0
    left = reap(tag)
    report_file = workdir / "report.json"
    report = json.loads(report_file.read_text()) if report_file.exists() else {}
    assert proc.returncode == 0 and "error" not in report, (
        f"scenario {name} exited {proc.returncode} after {wall:.0f} s:\n{report.get('error', '')}\n{tail(log)}")
    assert not left, f"scenario {name} left Ray processes running (killed now): {left}"
    return report, wall


def attempts_by_trial(events: list[dict]) -> dict[str, list[dict]]:
    """Per trial, its processes in start order: {node_id, pid, restored, start, end, status}."""
    out: dict[str, list[dict]] = collections.defaultdict(list)
    for e in sorted(events, key=lambda e: e["time"]):
        if e["event"] == "start":
            out[e["trial_id"]].append({**e, "start": e["time"], "end": None, "status": None})
        else:
            a = next(a for a in out[e["trial_id"]] if a["pid"] == e["pid"])
            a["end"], a["status"] = e["time"], e["status"]
    return dict(out)


# --- 1. several nodes; a node lost under a trial -----------------------------------------------------------

def test_multinode_trials_spread_and_survive_a_lost_node(tmp_path, ray_tmp):
    """A head (0 CPUs: it only drives the search) and three 1-CPU nodes, all raylets on 127.0.0.1; the search
    joins it with `tuning.run.main(["--address", cluster.address, ...])`, 2 trials x 12 epochs at once,
    --max-failures 2. Once Tune holds the first trial's epoch-3 checkpoint, that trial's node is killed, Ray
    processes and the trial's worker alike (SIGKILL, no drain): the trial comes back on another node from
    the epoch-3 checkpoint, and its global step goes on 40, 50, ... 120, in its results and in TensorBoard."""
    report, wall = run_scenario("multinode", tmp_path, ray_tmp, timeout_s=300)
    assert report["rc"] == 0

    nodes = report["nodes_at_start"]
    workers = set(report["worker_node_ids"])
    assert len(nodes) == 4 and {n["node_id"] for n in nodes} == workers | {report["head_node_id"]}
    assert all(n["address"] == LOOPBACK and n["alive"] for n in nodes), nodes
    assert report["address"].startswith(f"{LOOPBACK}:")

    attempts = attempts_by_trial(report["events"])
    assert len(attempts) == 2
    pid_node = {e["pid"]: e["node_id"] for e in report["events"] if e["event"] == "start"}
    results = report["results"]
    assert results and all(r["pid"] in pid_node and r["node_ip"] == LOOPBACK for r in results)
    # the trials ran on more than one node, never on the head
    first_nodes = {a[0]["node_id"] for a in attempts.values()}
    assert len(first_nodes) == 2 and first_nodes <= workers, first_nodes
    assert all(pid_node[r["pid"]] in workers for r in results)

    killed = report["killed"]
    assert killed is not None and killed["node_id"] in workers
    victim = killed["trial_id"]
    first, *rest = attempts[victim]
    assert first["node_id"] == killed["node_id"] and first["restored"] is None and first["status"] in (None, "error")
    assert len(rest) == 1, f"expected one restart of trial {victim}, got {rest}"
    again = rest[0]
    assert again["node_id"] != killed["node_id"] and again["node_id"] in workers and again["status"] == "returned"
    # it came back from the last checkpoint the driver had received from it: epoch 3, where its node was killed
    last_before = max(r["epoch"] for r in report["results"] if r["pid"] == first["pid"])
    assert again["restored"] == {"epoch": last_before, "global_step": last_before * SPE}
    assert last_before == killed["epoch"] == 3 and killed["global_step"] == 3 * SPE
    assert next(n for n in report["nodes_at_end"] if n["node_id"] == killed["node_id"])["alive"] is False

    # the trial's results, as the driver received them: strictly continuing across the move, no reset
    seq = [(r["epoch"], r["global_step"], pid_node[r["pid"]]) for r in results if r["trial_id"] == victim]
    assert [s[0] for s in seq] == list(range(1, 13)), seq
    assert [s[1] for s in seq] == [e * SPE for e in range(1, 13)], seq
    assert {s[2] for s in seq[:3]} == {killed["node_id"]} and {s[2] for s in seq[3:]} == {again["node_id"]}
    exp = Path(report["experiment"])
    victim_dir = next(d for d in trial_dirs(exp) if d.name.endswith(victim))
    assert [r["global_step"] for r in result_rows(victim_dir)] == [e * SPE for e in range(1, 13)]   # Tune's result.json
    # TensorBoard: one event file per process (node), together every update once, in order
    tb = victim_dir / SUBDIR
    assert len(list(tb.glob("events.out.tfevents.*"))) == 2
    assert [e.step for e in events(tb).Scalars("train/loss")] == list(range(1, 12 * SPE + 1))

    res = json.loads((exp / "results.json").read_text())
    assert res["trials"]["completed"] == 2 and res["trials"]["errored"] == 0 and 0 < res["test"]["ndcg@100"] <= 1

    per_node = collections.defaultdict(list)
    for trial_id, runs in attempts.items():
        for a in runs:
            per_node[a["node_id"][:8]].append(trial_id + (" (restored)" if a["restored"] else ""))
    print(f"\nmultinode: {len(nodes)} nodes on {LOOPBACK}; trials per node {dict(per_node)}; node "
          f"{killed['node_id'][:8]} removed after epoch {killed['epoch']} of trial {victim}, restored on "
          f"{again['node_id'][:8]} from epoch {again['restored']['epoch']} (global step {again['restored']['global_step']}) "
          f"{again['start'] - killed['time']:.1f} s later; cluster start {report['cluster_start_s']:.1f} s, search "
          f"{report['search_s']:.1f} s, test {wall:.1f} s")


# --- 3. fractional GPUs ------------------------------------------------------------------------------------

def test_fractional_gpus_pack_four_trials_on_two_gpus(tmp_path, ray_tmp):
    """One node declaring 2 GPUs (logical: no CUDA behind them) and 2 CPUs; --gpus-per-trial 0.5
    --cpus-per-trial 0.5 --max-concurrent 4 runs the 4 trials at once, two on each GPU id. The trainable
    must fall back to the CPU when CUDA is unavailable (the trials would fail on device "cuda" otherwise)."""
    report, wall = run_scenario("gpu_packing", tmp_path, ray_tmp, timeout_s=300)
    assert report["rc"] == 0
    assert [n["resources"].get("GPU") for n in report["nodes_at_start"]] == [2.0]
    assert all(n["address"] == LOOPBACK for n in report["nodes_at_start"])

    attempts = attempts_by_trial(report["events"])
    assert len(attempts) == 4 and all(len(a) == 1 for a in attempts.values())
    runs = [a[0] for a in attempts.values()]
    assert all(r["resources"] == {"CPU": 0.5, "GPU": 0.5} and r["status"] == "returned" for r in runs), runs
    assert all(len(r["gpu_ids"]) == 1 and r["cuda_visible_devices"] == r["gpu_ids"][0] for r in runs), runs
    assert sorted(collections.Counter(r["gpu_ids"][0] for r in runs).values()) == [2, 2]   # 2 trials per GPU

    # concurrency, from the trials' own start/end times: all four were running at the same moment
    overlap = min(r["end"] for r in runs) - max(r["start"] for r in runs)
    assert overlap > 0, f"the 4 trials never all ran at once: {[(r['start'], r['end']) for r in runs]}"
    # the driver received every epoch of every trial. (Not compared in time: the driver's clock is when it got
    # round to a result, and on a loaded machine one short trial's results can all be handled before another's
    # first, although the trials themselves overlapped, which the trials' own clocks above show.)
    by_trial = collections.defaultdict(list)
    for r in report["results"]:
        by_trial[r["trial_id"]].append(r["epoch"])
    assert len(by_trial) == 4 and all(sorted(v) == list(range(1, 13)) for v in by_trial.values()), dict(by_trial)

    res = json.loads((Path(report["experiment"]) / "results.json").read_text())
    assert res["trials"]["completed"] == 4 and res["trials"]["errored"] == 0
    starts = sorted(r["start"] for r in runs)
    print(f"\ngpu packing: 4 trials of 0.5 GPU on GPU ids {sorted(r['gpu_ids'][0] for r in runs)}, started within "
          f"{starts[-1] - starts[0]:.1f} s, all 4 running together for {overlap:.1f} s (each ran "
          f"{min(r['end'] - r['start'] for r in runs):.1f}-{max(r['end'] - r['start'] for r in runs):.1f} s); "
          f"cluster start {report['cluster_start_s']:.1f} s, search {report['search_s']:.1f} s, test {wall:.1f} s")


# --- 2. `ray job submit` to a `ray start` head ---------------------------------------------------------------

def http_status(url: str, token: str | None) -> int:
    req = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"} if token else {})
    try:
        with urllib.request.urlopen(req, timeout=5) as r:
            return r.status
    except urllib.error.HTTPError as exc:
        return exc.code
    except OSError:
        return 0


@pytest.mark.slow
def test_ray_job_submit_smoke_search(tmp_path, ray_tmp):
    """`ray start --head` on 127.0.0.1 (its own process group, free ports, token auth with a token made for this
    test), then `ray job submit --working-dir <repo> -- python -m tuning.run --space smoke ...`. The working dir
    ships the code to the cluster as it would to a remote one, so the job does not depend on how (or whether)
    this checkout is installed in the head's python; the head's PATH starts with the venv's bin, whose python
    has the dependencies. The head is stopped by signalling its process group, whatever happens."""
    ray_cli = VENV_BIN / "ray"
    if not ray_cli.exists():
        pytest.skip(f"{ray_cli} not found: `ray job submit` needs ray[default] (pip install -e '.[dev]')")
    tmp, tag = ray_tmp
    token = secrets.token_hex(32)
    env = cluster_env(tag, tmp, RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=token,
                      RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S="0")   # SIGTERM: stop now, no 30 s drain
    dash = free_port()
    ports = {"--port": free_port(), "--dashboard-port": dash, "--ray-client-server-port": free_port(),
             "--dashboard-agent-listen-port": free_port()}   # defaults (6379, 8265, 10001, 52365) may be taken here
    head_cmd = [str(ray_cli), "start", "--head", f"--node-ip-address={LOOPBACK}", f"--dashboard-host={LOOPBACK}",
                "--num-cpus=2", "--disable-usage-stats", "--block", *(f"{k}={v}" for k, v in ports.items())]
    address = f"http://{LOOPBACK}:{dash}"
    storage, name, job_id = tmp_path / "storage", "jobsmoke", f"multivae-smoke-{tag}"
    head_log, submit_log = tmp_path / "head.log", tmp_path / "submit.log"
    t0 = time.perf_counter()
    head = None
    try:
        with open(head_log, "w") as out:
            head = subprocess.Popen(head_cmd, cwd=tmp, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + 90
        while http_status(f"{address}/api/version", token) != 200:
            assert head.poll() is None, f"the head exited ({head.returncode}):\n{tail(head_log)}"
            assert time.monotonic() < deadline, f"the head's dashboard did not answer in 90 s:\n{tail(head_log)}"
            time.sleep(0.5)
        head_ready = time.perf_counter() - t0
        assert http_status(f"{address}/api/jobs/", None) in (401, 403)   # token authentication is on
        assert http_status(f"{address}/api/jobs/", token) == 200

        entry = ["python", "-m", "tuning.run", "--space", "smoke", "--storage", str(storage), "--name", name]
        t1 = time.perf_counter()
        with open(submit_log, "w") as out:
            submit = subprocess.run([str(ray_cli), "job", "submit", "--address", address, "--submission-id", job_id,
                                     "--working-dir", str(REPO), "--", *entry],
                                    cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT, timeout=420)
        job_wall = time.perf_counter() - t1
        status = subprocess.run([str(ray_cli), "job", "status", "--address", address, job_id], env=env,
                                capture_output=True, text=True, timeout=60)
        assert submit.returncode == 0 and "succeeded" in status.stdout + status.stderr, (
            f"job {job_id}: submit exited {submit.returncode}, status {status.stdout[-500:]}\n{tail(submit_log)}")
    finally:
        if head is not None:
            for sig, wait_s in ((signal.SIGTERM, 20), (signal.SIGKILL, 10)):
                try:
                    os.killpg(head.pid, sig)   # the head's own process group (start_new_session)
                except ProcessLookupError:
                    break
                try:
                    head.wait(timeout=wait_s)
                    break
                except subprocess.TimeoutExpired:
                    continue
    left = reap(tag)
    assert not left, f"the head left Ray processes running (killed now): {left}"

    exp = storage / name
    res = json.loads((exp / "results.json").read_text())
    assert res["space"] == "smoke" and res["trials"]["total"] == 6 and res["trials"]["errored"] == 0
    for split in ("val", "test"):
        assert all(0.0 < res[split][m] <= 1.0 for m in ("ndcg@100", "recall@20", "recall@50")), res[split]
    assert res["test"]["ndcg@100"] > res["popularity"]["test"]["ndcg@100"]
    assert (exp / "best_config.yaml").exists() and len(trial_dirs(exp)) == 6
    assert "Connecting to existing Ray cluster" in submit_log.read_text()   # the driver joined the head (RAY_ADDRESS)
    print(f"\nray job submit: head ready in {head_ready:.1f} s, job {job_wall:.1f} s (search "
          f"{res['wall_time_s']['search']:.1f} s), test NDCG@100 {res['test']['ndcg@100']:.4f}, "
          f"test {time.perf_counter() - t0:.1f} s")


# --- 4. cluster/ manifests --------------------------------------------------------------------------------

GPU_INSTANCE_FAMILIES = ("g4dn.", "g5.", "g6.", "g6e.", "p3.", "p4d.", "p4de.", "p5.")


def load_manifest(name: str) -> dict:
    data = yaml.safe_load((CLUSTER_DIR / name).read_text())
    assert isinstance(data, dict), f"cluster/{name}: not a YAML mapping"
    return data


def test_aws_cluster_launcher_config():
    cfg = load_manifest("ray-cluster.aws.yaml")
    assert isinstance(cfg["cluster_name"], str) and cfg["cluster_name"]
    assert cfg["provider"]["type"] == "aws" and cfg["provider"]["region"]
    types = cfg["available_node_types"]
    assert cfg["head_node_type"] in types
    head = types[cfg["head_node_type"]]
    assert head["resources"].get("CPU") == 0, "the head should drive the search, not run trials"

    def gpus(t: dict) -> float:
        return t.get("resources", {}).get("GPU", 0)

    gpu_types = {k: t for k, t in types.items() if k != cfg["head_node_type"]
                 and (gpus(t) > 0 or t["node_config"]["InstanceType"].startswith(GPU_INSTANCE_FAMILIES))}
    assert gpu_types, "no GPU worker type"
    for name, t in gpu_types.items():
        assert 0 <= t["min_workers"] <= t["max_workers"] <= cfg["max_workers"], name
        assert t["node_config"]["InstanceType"].startswith(GPU_INSTANCE_FAMILIES), name
    setup = " && ".join(cfg["setup_commands"])
    assert "pip install" in setup and "multivae-tune" in setup and "[cluster]" in setup
    mounted = {k: v for k, v in cfg["file_mounts"].items() if v in (".", "./")}
    assert mounted and all(path in setup for path in mounted), "the repository copied to the nodes must be what is installed"
    head_start = " ".join(cfg["head_start_ray_commands"])
    assert "--head" in head_start and "--dashboard-host=127.0.0.1" in head_start   # dashboard only through `ray dashboard`
    assert any("--address=$RAY_HEAD_IP" in c for c in cfg["worker_start_ray_commands"])
    # token authentication on every node, with one token copied from the launching machine
    assert any(remote.endswith("/.ray/auth_token") for remote in cfg["file_mounts"])
    starts = [c for c in cfg["head_start_ray_commands"] + cfg["worker_start_ray_commands"] if "ray start" in c]
    assert len(starts) == 2 and all("RAY_AUTH_MODE=token" in c for c in starts), starts


def test_kuberay_rayjob_manifest_and_entrypoint():
    from tuning import run
    from tuning.space import load_space, with_overrides
    from tuning.space_yaml import available_spaces

    job = load_manifest("kuberay-rayjob.yaml")
    assert job["apiVersion"] == "ray.io/v1" and job["kind"] == "RayJob" and job["metadata"]["name"]
    spec = job["spec"]
    cluster = spec["rayClusterSpec"]
    head = cluster["headGroupSpec"]
    assert head["rayStartParams"].get("num-cpus") == "0"
    groups = cluster["workerGroupSpecs"]
    assert groups

    def containers(group: dict) -> list[dict]:
        return group["template"]["spec"]["containers"]

    gpu_groups = [g for g in groups if any("nvidia.com/gpu" in c.get("resources", {}).get("limits", {}) for c in containers(g))]
    assert gpu_groups, "no worker group asks for nvidia.com/gpu"
    for g in gpu_groups:
        assert 0 <= g["minReplicas"] <= g["replicas"] <= g["maxReplicas"], g["groupName"]
    images = {c["image"] for g in [head, *groups] for c in containers(g)}
    assert len(images) == 1, f"head and workers must run the same image (same code, same Ray): {images}"

    # the entrypoint is a command our CLI accepts, for a space we ship, with resources that space allows
    argv = shlex.split(spec["entrypoint"])
    assert argv[:3] == ["python", "-m", "tuning.run"]
    args = run._parser().parse_args(argv[3:])
    args.argv = argv[3:]
    run._check_args(args)
    assert args.space in available_spaces()
    space = with_overrides(load_space(args.space), **run._overrides(args))
    assert space.resources.gpus_per_trial > 0 and args.storage.startswith(("s3://", "gs://"))
    assert args.address == "auto" or args.address is None   # KubeRay sets RAY_ADDRESS for the entrypoint
    # the trials fit the GPU pods, and enough run at once to fill the pods the cluster starts with
    slots = 0.0
    for g in gpu_groups:
        limits = next(c["resources"]["limits"] for c in containers(g) if "nvidia.com/gpu" in c["resources"]["limits"])
        per_pod = float(limits["nvidia.com/gpu"]) / space.resources.gpus_per_trial
        assert per_pod * space.resources.cpus_per_trial <= float(limits["cpu"]), (g["groupName"], limits)
        slots += g["replicas"] * per_pod
    assert space.search.max_concurrent >= slots, f"--max-concurrent {space.search.max_concurrent} leaves GPU slots idle ({slots:g})"

    # one Ray version everywhere: the RayJob's and the image's
    dockerfile = (CLUSTER_DIR / "Dockerfile").read_text()
    base = next(line.split()[1] for line in dockerfile.splitlines() if line.startswith("FROM "))
    assert base.startswith(f"rayproject/ray:{cluster['rayVersion']}-"), (base, cluster["rayVersion"])
    assert "pip install" in dockerfile and "[cluster]" in dockerfile
