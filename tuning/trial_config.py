"""A trial's flat config: the fields it may hold, list values as their JSON text, and back to the dataclasses.

List-valued choices (`hidden_dims: {type: choice, values: [[600], [600, 300]]}`) reach the searcher as
their JSON text ("[600]", "[600, 300]"), because Optuna's categorical values must be None, bool, int, float
or str; fixed list values are encoded the same way, so a trial's config is flat scalars.
`split_trial_config` decodes it back into the tuples ModelConfig and TrainConfig expect.

Neither Ray nor Optuna is imported here: a trial's worker, which only decodes its config, needs neither.
"""

from __future__ import annotations

import dataclasses
import json
import types
from typing import Any, Literal, Mapping, Union, get_args, get_origin, get_type_hints

from multivae.config import from_dict
from multivae.errors import UserError
from multivae.model import ModelConfig
from multivae.training import TrainConfig

MODEL_FIELDS = tuple(f.name for f in dataclasses.fields(ModelConfig))
TRAIN_FIELDS = tuple(f.name for f in dataclasses.fields(TrainConfig))
TRIAL_FIELDS = MODEL_FIELDS + TRAIN_FIELDS
# TrainConfig fields that the trainable sets from the resources Tune gives the trial: a value in the space
# would be silently replaced, so it is refused.
SET_BY_TRIAL = {"device": "resources.gpus_per_trial", "threads": "resources.cpus_per_trial"}
SPACE_FIELDS = tuple(f for f in TRIAL_FIELDS if f not in SET_BY_TRIAL)
_FIELD_TYPES: dict[str, Any] = {**get_type_hints(ModelConfig), **get_type_hints(TrainConfig)}


def build_configs(config: Mapping[str, Any], where: str, prefix: str = "") -> tuple[ModelConfig, TrainConfig]:
    """(ModelConfig, TrainConfig) of a mapping of decoded field values; errors name `where` and `prefix`."""
    model = {k: v for k, v in config.items() if k in MODEL_FIELDS}
    train = {k: v for k, v in config.items() if k in TRAIN_FIELDS}
    return from_dict(ModelConfig, model, where=where, prefix=prefix), from_dict(TrainConfig, train, where=where, prefix=prefix)


def encode_value(value: Any) -> Any:
    """A value as the searcher sees it: lists (tuples) become their JSON text, "[600, 300]"."""
    if isinstance(value, (list, tuple)):
        return json.dumps([plain_value(v) for v in value])
    return value


def decode_value(name: str, value: Any, where: str = "trial config") -> Any:
    """The inverse of `encode_value` for field `name`: JSON text becomes a list where the field is a sequence."""
    if not (is_sequence_field(name) and isinstance(value, str)):
        return value
    try:
        decoded = json.loads(value)
    except ValueError:
        decoded = None
    if not isinstance(decoded, list):
        raise UserError(f"{where}: {name} must be a list or its JSON text like '[600, 200]', got {value!r}")
    return decoded


def plain_config(config: Mapping[str, Any]) -> dict[str, Any]:
    """A trial's config with numpy scalars (what TuneBOHB's ConfigSpace samples: np.int64, np.str_) as the
    Python values the dataclasses and the logs take."""
    return {k: (v.item() if type(v).__module__ == "numpy" and hasattr(v, "item") else v) for k, v in config.items()}


def split_trial_config(config: Mapping[str, Any], where: str) -> tuple[ModelConfig, TrainConfig]:
    """A trial's flat config (fixed + sampled values, list choices encoded) as (ModelConfig, TrainConfig)."""
    config = plain_config(config)
    unknown = [k for k in config if k not in TRIAL_FIELDS]
    if unknown:
        raise UserError(f"{where}: unknown key {unknown[0]!r} (allowed: {', '.join(TRIAL_FIELDS)})")
    return build_configs({k: decode_value(k, v, where) for k, v in config.items()}, where=where)


def field_options(name: str) -> tuple:
    """The types field `name` accepts (the members of a union)."""
    tp = _FIELD_TYPES.get(name)
    return get_args(tp) if get_origin(tp) in (Union, types.UnionType) else (tp,)


def is_sequence_field(name: str) -> bool:
    return any(get_origin(t) in (tuple, list) for t in field_options(name))


def takes_text(name: str) -> bool:
    return any(t is str or get_origin(t) is Literal for t in field_options(name))


def same_value(a: Any, b: Any) -> bool:
    """Equal as configuration values: 0 == 0.0, but True != 1 and [600] == (600,)."""
    if isinstance(a, (list, tuple)) or isinstance(b, (list, tuple)):
        return (isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)) and len(a) == len(b)
                and all(same_value(x, y) for x, y in zip(a, b)))
    if isinstance(a, bool) or isinstance(b, bool) or a is None or b is None:
        return type(a) is type(b) and a == b
    if isinstance(a, (int, float)) and isinstance(b, (int, float)):
        return a == b
    return type(a) is type(b) and a == b


def plain_value(v: Any) -> Any:
    """A value with its tuples as lists (as YAML and JSON write them)."""
    return [plain_value(x) for x in v] if isinstance(v, (list, tuple)) else v


__all__ = [
    "MODEL_FIELDS", "SET_BY_TRIAL", "SPACE_FIELDS", "TRAIN_FIELDS", "TRIAL_FIELDS", "build_configs", "decode_value",
    "encode_value", "field_options", "is_sequence_field", "plain_config", "plain_value", "same_value", "split_trial_config",
    "takes_text",
]
