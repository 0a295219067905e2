"""The experiment on disk, in one place: its file names, storage access, its trials' result rows and
checkpoints, the one `trial_status` rule, and the lock that keeps one live run per experiment.

An experiment is the folder `<storage>/<name>/` (a local path, or an `s3://` / `gs://` URI read through
pyarrow's filesystems, as Ray does). Ray Tune writes `trial_*/params.json`, `trial_*/result.json` (one JSON
object per reported epoch), `trial_*/checkpoint_NNNNNN/` and its own `experiment_state-*.json`; `tuning.run`
adds the files named below. The run, the report and the ablations read trials only through `read_trials`,
and classify them only through `trial_status`.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

from multivae.errors import UserError
from multivae.files import WriterLock, atomic_write_bytes, dumps_json

RUN_META = "tuning_run.json"          # how the run was started; --resume reads it back
SPACE_COPY = "search_space.yaml"      # the space file as it was when the run started
RESULTS = "results.json"              # the final step's summary (tuning.finalize)
BEST_CONFIG = "best_config.yaml"      # the best trial's configuration, for `multivae.train --config`
BEST_MODEL = "best_model"             # the best trial's self-contained model (multivae.recommend --checkpoint)
TRIAL_PARAMS = "params.json"
TRIAL_RESULTS = "result.json"
TRIAL_ERRORS = ("error.txt", "error.pkl")

# The experiment's layout, recorded in RUN_META with the package version. Raise it whenever a change makes an
# older experiment unreadable by --resume: a file renamed or reshaped, or a name that Tune's pickled state
# refers to (`tuning.progress.rebuild`'s kinds) renamed. A missing format_version is the layout before this.
FORMAT_VERSION = 2
COMPATIBLE_FORMATS = (2,)

# A trial's status. Every reader of an experiment uses these words and `trial_status`'s rule.
STATUSES = ("completed", "stopped_early", "errored", "unfinished", "pending")
STATUS_LABEL = {"completed": "completed", "stopped_early": "stopped early", "errored": "errored",
                "unfinished": "unfinished", "pending": "no result yet"}


def trial_status(*, epochs: int, planned: int | None, stopped: bool, errored: bool, checkpoint_epoch: int | None) -> str:
    """The status of one trial, from what it reported and how it ended.

    epochs            the last epoch it reported (0: none)
    planned           the epochs it was meant to train (the scheduler's max_t, else its `epochs`); None: unknown
    stopped           its last result carries Tune's `done` flag (a scheduler stopped it, or it ended)
    errored           its final state is an error (not a crash it recovered from)
    checkpoint_epoch  the epoch of its latest checkpoint (None: none)

    A trial that errored after training all its epochs counts as completed only when its last epoch is
    checkpointed (its best weights are saved; there is nothing left to retry); otherwise it is errored,
    which is what `--retry-errored` reruns. A trial that ended early without `done` (its worker vanished,
    the driver was interrupted) is unfinished: `--resume` continues it."""
    full = planned is not None and epochs >= planned
    if errored and not (full and checkpoint_epoch is not None and checkpoint_epoch >= planned):
        return "errored"
    if full:
        return "completed"
    if epochs == 0:
        return "pending"
    if stopped:
        return "stopped_early" if planned is not None else "completed"
    return "unfinished"


# --- storage: a local folder or a URI, through pyarrow's filesystems (what Ray itself uses) --------------

def storage_root(storage: str) -> str:
    return storage if "://" in storage else str(Path(storage).expanduser().resolve())


def join(root: str, *parts: str) -> str:
    return "/".join([root.rstrip("/"), *parts])


def local_path(path: str) -> Path | None:
    """The local folder of a storage path (a plain path or a file:// URI); None for a remote URI."""
    if "://" not in path:
        return Path(path)
    if path.startswith("file://"):
        return Path(path[len("file://"):])
    return None


def _fs(path: str):
    import pyarrow.fs

    try:
        return pyarrow.fs.FileSystem.from_uri(path)
    except Exception as exc:  # noqa: BLE001 - pyarrow raises several kinds for an unusable URI
        raise UserError(f"{path}: not a usable storage location ({exc})") from None


def exists(path: str) -> bool:
    import pyarrow.fs

    fs, p = _fs(path)
    return fs.get_file_info(p).type != pyarrow.fs.FileType.NotFound


def is_dir(path: str) -> bool:
    import pyarrow.fs

    fs, p = _fs(path)
    return fs.get_file_info(p).type == pyarrow.fs.FileType.Directory


def read_bytes(path: str) -> bytes:
    fs, p = _fs(path)
    with fs.open_input_stream(p) as f:
        return f.read()


def read_text(path: str) -> str:
    return read_bytes(path).decode("utf-8", errors="replace")


def write_bytes(path: str, data: bytes) -> None:
    """Atomically on a local disk (temporary file + rename); remote object stores replace an object whole."""
    local = local_path(path)
    if local is not None:
        atomic_write_bytes(local, data)
        return
    fs, p = _fs(path)
    fs.create_dir(p.rsplit("/", 1)[0], recursive=True)
    with fs.open_output_stream(p) as f:
        f.write(data)


def write_text(path: str, text: str) -> None:
    write_bytes(path, text.encode("utf-8"))


def write_json(path: str, data: Any) -> None:
    write_text(path, dumps_json(data) + "\n")


def read_json(path: str, what: str) -> Any:
    """A JSON file the run wrote; a damaged one is a one-line error naming it."""
    try:
        return json.loads(read_text(path))
    except (ValueError, UnicodeDecodeError) as exc:
        raise UserError(f"{path}: {what} is not valid JSON ({exc.__class__.__name__}: {str(exc)[:100]})") from None


def delete_dir(path: str) -> None:
    fs, p = _fs(path)
    fs.delete_dir(p)


def list_dirs(path: str) -> list[str]:
    import pyarrow.fs

    fs, p = _fs(path)
    prefix = path[: len(path) - len(p)] if path.endswith(p) else ""   # keep a URI's scheme on what we return
    return sorted(prefix + i.path for i in fs.get_file_info(pyarrow.fs.FileSelector(p)) if i.type == pyarrow.fs.FileType.Directory)


def check_format(meta: dict, exp_path: str) -> None:
    """Refuse, before anything of the experiment is loaded, to resume one whose layout this version cannot read:
    one line naming both versions and the ways on."""
    from multivae.version import __version__

    fmt, version = meta.get("format_version"), meta.get("package_version")
    if fmt in COMPATIBLE_FORMATS and not isinstance(fmt, bool):
        return
    was = f"multivae-tune {version}" if isinstance(version, str) else "an earlier multivae-tune (no version recorded)"
    raise UserError(f"{exp_path}: written by {was}, experiment format {fmt if fmt is not None else 1}; this is multivae-tune "
                    f"{__version__}, format {FORMAT_VERSION}, which cannot resume it. Finish it with the version that wrote "
                    f"it, or start a new search here: from its best trial (`python -m multivae.train --config "
                    f"{join(exp_path, BEST_CONFIG)}`, once it has one) or with `python -m tuning.run --space "
                    f"{join(exp_path, SPACE_COPY)} --name <new name>`")


def versions() -> dict[str, Any]:
    """What RUN_META records of the code that writes the experiment."""
    from multivae.version import __version__

    return {"package_version": __version__, "format_version": FORMAT_VERSION}


def list_files(path: str) -> list[str]:
    """Every file below `path` (recursively), as paths relative to it with `/`, sorted."""
    import pyarrow.fs

    fs, p = _fs(path)
    p = p.rstrip("/")
    infos = fs.get_file_info(pyarrow.fs.FileSelector(p, recursive=True, allow_not_found=True))
    return sorted(i.path[len(p) + 1:] for i in infos if i.type == pyarrow.fs.FileType.File)


# --- trials ---------------------------------------------------------------------------------------------

def parse_result_rows(text: str) -> list[dict[str, Any]]:
    """The rows of a trial's result.json: one JSON object per line, each an epoch's report. A line cut short
    by a crash, or anything that is not such an object, is skipped."""
    rows = []
    for line in text.splitlines():
        try:
            row = json.loads(line)
        except ValueError:
            continue
        if isinstance(row, dict) and isinstance(row.get("epoch"), (int, float)) and not isinstance(row["epoch"], bool):
            rows.append(row)
    return rows


def rows_by_epoch(rows: Iterable[dict[str, Any]], keep: str = "last") -> list[dict[str, Any]]:
    """One row per epoch, in epoch order. A trial restored from a checkpoint reports some epochs again:
    `keep="last"` takes the latest report of an epoch (what the trial went on from), "first" the original."""
    out: dict[int, dict[str, Any]] = {}
    for r in rows:
        e = int(r["epoch"])
        if keep == "last" or e not in out:
            out[e] = r
    return [out[e] for e in sorted(out)]


# The trial worker's CPU seconds (all its threads) since the trial last started or restarted: setup, epochs,
# validation, checkpoints. A restarted trial (a retry, a resume, a paused HyperBand trial) counts from 0 again.
CPU_COLUMN = "cpu_time_s"


def cpu_increment(previous: float | None, value: float, restarted: bool = False) -> float:
    """The CPU seconds one report adds to its trial's total: the growth of the trial's running count, or all of
    it where the count began again (`restarted`: Ray's iterations_since_restore is 1; or the count went down)."""
    if previous is None or restarted or value < previous:
        return value
    return value - previous


def cpu_seconds(rows: Iterable[dict[str, Any]]) -> float:
    """A trial's CPU seconds over every run of it, from all its reports in order (epochs it trained twice
    count twice: they were paid twice)."""
    total, previous = 0.0, None
    for r in rows:
        value = r.get(CPU_COLUMN)
        if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
            total += cpu_increment(previous, float(value), r.get("iterations_since_restore") == 1)
            previous = float(value)
    return total


@dataclass
class TrialRecord:
    """One trial as the experiment's files tell it."""
    trial_id: str
    number: int                               # the order it was created in (trial_0003_...: 3)
    path: str                                 # its folder (local path or URI)
    config: dict[str, Any]                    # params.json: the flat trial config
    rows: list[dict[str, Any]] = field(default_factory=list)   # one per epoch, in order (latest report of each)
    errored: bool = False                     # its final state is an error
    status: str = "pending"
    cpu_s: float = 0.0                        # CPU seconds of every run of it (`cpu_seconds`)
    last_report: float | None = None          # unix time of its latest report (Ray's `timestamp`)

    @property
    def epochs(self) -> int:
        return int(self.rows[-1]["epoch"]) if self.rows else 0

    @property
    def stopped(self) -> bool:
        return bool(self.rows and self.rows[-1].get("done"))

    def checkpoints(self) -> list[tuple[int, str]]:
        """(epoch, folder) of each checkpoint the trial reported that is still on disk, oldest first."""
        found = []
        for r in self.rows:
            name = r.get("checkpoint_dir_name")
            if name and exists(join(self.path, name)):
                found.append((int(r["epoch"]), join(self.path, name)))
        return found

    @property
    def checkpoint_epoch(self) -> int | None:
        ck = self.checkpoints()
        return ck[-1][0] if ck else None

    def best(self, metric: str, mode: str) -> dict[str, Any] | None:
        """The row with the best finite `metric` (the first of equals)."""
        rows = [r for r in self.rows if isinstance(r.get(metric), (int, float)) and math.isfinite(r[metric])]
        if not rows:
            return None
        return (max if mode == "max" else min)(rows, key=lambda r: r[metric])

    def best_value(self, metric: str, mode: str) -> float:
        best = self.best(metric, mode)
        return float(best[metric]) if best else math.nan


_TRIAL_DIR = re.compile(r"trial_(\d+)_(\w+)$")


def planned_epochs(config: dict[str, Any]) -> int | None:
    """The epochs a trial was configured for (its config's `epochs`, flat or nested); None when absent."""
    for k, v in config.items():
        if k == "epochs" and isinstance(v, int) and not isinstance(v, bool):
            return v
        if isinstance(v, dict) and (found := planned_epochs(v)) is not None:
            return found
    return None


def read_trials(exp_path: str, *, max_t: int | None = None, final_states: dict[str, str] | None = None,
                stop_epochs: Iterable[int] = ()) -> list[TrialRecord]:
    """Every trial folder of the experiment (those with params.json), read and classified, in creation order.

    `max_t`: the last epoch of a scheduler that stops trials early (ASHA, BOHB's HyperBand), else each
    trial's planned epochs come from its config.
    `final_states`: Tune's status of each trial id (`tuning.ray_compat.snapshot_trial_states`); without it an
    error file in the trial folder counts as a final error.
    `stop_epochs`: the scheduler's rungs. HyperBand pauses a trial at a rung and may stop it later while it is
    paused, which logs no `done` row: a trial that Tune ended (TERMINATED) at a rung was stopped there."""
    stop_epochs = set(stop_epochs)
    trials = []
    for i, d in enumerate(p for p in list_dirs(exp_path) if exists(join(p, TRIAL_PARAMS))):
        name = d.rstrip("/").rsplit("/", 1)[-1]
        try:
            config = json.loads(read_text(join(d, TRIAL_PARAMS)))
        except ValueError:
            config = {}
        config = config if isinstance(config, dict) else {}
        reports = parse_result_rows(read_text(join(d, TRIAL_RESULTS))) if exists(join(d, TRIAL_RESULTS)) else []
        rows = rows_by_epoch(reports)
        m = _TRIAL_DIR.match(name)
        trial_id = str(rows[-1].get("trial_id") or "") if rows else ""
        trial_id = trial_id or (m.group(2) if m else name)
        if final_states is not None and trial_id in final_states:
            errored = final_states[trial_id] == "ERROR"
        else:
            errored = any(exists(join(d, e)) for e in TRIAL_ERRORS)
        t = TrialRecord(trial_id, int(m.group(1)) if m else i + 1, d, config, rows, errored, cpu_s=cpu_seconds(reports),
                        last_report=max((float(r["timestamp"]) for r in reports if isinstance(r.get("timestamp"), (int, float))), default=None))
        stopped_while_paused = (final_states or {}).get(trial_id) == "TERMINATED" and t.epochs in stop_epochs
        t.status = trial_status(epochs=t.epochs, planned=max_t or planned_epochs(config), stopped=t.stopped or stopped_while_paused,
                                errored=errored, checkpoint_epoch=t.checkpoint_epoch)
        trials.append(t)
    return sorted(trials, key=lambda t: t.number)


def status_counts(trials: Iterable[TrialRecord]) -> dict[str, int]:
    trials = list(trials)
    return {s: sum(t.status == s for t in trials) for s in STATUSES} | {"total": len(trials)}


# --- one live run per experiment ------------------------------------------------------------------------

def lock_path(root: str, name: str) -> Path:
    """Where the experiment's lock lives: beside it on a local storage (so it exists before the experiment
    folder and survives its --overwrite); for a remote URI, in a local folder keyed by the URI, which protects
    against a second run on this machine only (see docs/scaling.md)."""
    local = local_path(root)
    if local is not None:
        return local / f".{name}.lock"
    key = hashlib.sha256(join(root, name).encode()).hexdigest()[:16]
    base = Path(os.environ.get("MULTIVAE_LOCK_DIR") or Path.home() / ".cache" / "multivae" / "locks")
    return base / f"{key}.lock"


class ExperimentLock(WriterLock):
    """The experiment's `multivae.files.WriterLock`, held by the driver from before it writes anything until
    it exits; a second run is refused with one line naming the experiment and the holder."""

    def __init__(self, root: str, name: str) -> None:
        self.exp = join(root, name)
        super().__init__(lock_path(root, name), self.exp, "another tuning.run is using this experiment",
                         "wait for it to finish, or use another --name")


__all__ = [
    "BEST_CONFIG", "BEST_MODEL", "COMPATIBLE_FORMATS", "CPU_COLUMN", "ExperimentLock", "FORMAT_VERSION", "RESULTS", "RUN_META", "SPACE_COPY", "STATUSES", "STATUS_LABEL",
    "TrialRecord", "check_format", "cpu_increment", "cpu_seconds", "delete_dir", "exists", "is_dir", "join", "list_files", "local_path", "lock_path", "parse_result_rows",
    "planned_epochs", "read_bytes", "read_json", "read_text", "read_trials", "rows_by_epoch", "status_counts", "storage_root",
    "trial_status", "versions", "write_bytes", "write_json", "write_text",
]
