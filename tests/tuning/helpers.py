"""Reading a Tune experiment's files back in the tuning tests."""

import json
from pathlib import Path

from tensorboard.backend.event_processing.event_accumulator import EventAccumulator


def trial_dirs(exp: Path) -> list[Path]:
    return sorted(p for p in Path(exp).iterdir() if p.is_dir() and (p / "params.json").exists())


def result_rows(trial_dir: Path) -> list[dict]:
    """The trial's reported results (result.json: one JSON object per line), in the order reported."""
    return [json.loads(line) for line in (Path(trial_dir) / "result.json").read_text().splitlines() if line.strip()]


def events(log_dir: Path) -> EventAccumulator:
    """All scalars and plugin data of one TensorBoard run, read back from its event files."""
    acc = EventAccumulator(str(log_dir), size_guidance={"scalars": 0, "tensors": 0})
    acc.Reload()
    return acc
