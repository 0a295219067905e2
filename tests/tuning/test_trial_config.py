"""`tuning.trial_config`: a trial's flat config to the dataclasses, and list values as their JSON text."""

import pytest

from multivae.errors import UserError
from multivae.model import ModelConfig
from multivae.training import TrainConfig
from tuning.trial_config import decode_value, encode_value, split_trial_config


def test_split_trial_config_routes_and_decodes():
    model_cfg, cfg = split_trial_config({"hidden_dims": "[600, 400]", "latent_dim": 100, "dropout": 0.3,
                                         "likelihood": "bernoulli", "lr": 0.002, "batch_size": 256,
                                         "anneal_steps": 900, "weight_decay": 0}, where="trial t")
    assert model_cfg == ModelConfig(hidden_dims=(600, 400), latent_dim=100, dropout=0.3, likelihood="bernoulli")
    assert cfg == TrainConfig(lr=0.002, batch_size=256, anneal_steps=900, weight_decay=0.0)
    assert isinstance(cfg.weight_decay, float)


def test_split_trial_config_takes_plain_lists_and_empty_configs():
    model_cfg, cfg = split_trial_config({"hidden_dims": [300], "metrics": ["ndcg@100", "recall@10"]}, where="t")
    assert model_cfg.hidden_dims == (300,) and cfg.metrics == ("ndcg@100", "recall@10")
    assert split_trial_config({"metrics": '["ndcg@100"]'}, where="t")[1].metrics == ("ndcg@100",)
    assert split_trial_config({}, where="t") == (ModelConfig(), TrainConfig())


@pytest.mark.parametrize("config,pattern", [
    ({"learning_rate": 0.1}, r"^trial 7: unknown key 'learning_rate' \(allowed: model, hidden_dims, .*lr, .*seed"),
    ({"hidden_dims": "600-300"}, r"^trial 7: hidden_dims must be a list or its JSON text like '\[600, 200\]', got '600-300'"),
    ({"hidden_dims": '{"a": 1}'}, r"^trial 7: hidden_dims must be a list"),
    ({"latent_dim": "200"}, r"^trial 7: latent_dim must be int, got '200'"),
    ({"dropout": 1.0}, r"^trial 7: dropout must be in \[0, 1\), got 1.0"),
])
def test_split_trial_config_refusals(config, pattern):
    with pytest.raises(UserError, match=pattern):
        split_trial_config(config, where="trial 7")


@pytest.mark.parametrize("value", [(600,), (600, 300), (), [800, 400, 200]])
def test_list_choice_encoding_round_trips(value):
    text = encode_value(value)
    assert isinstance(text, str) and text == "[" + ", ".join(str(v) for v in value) + "]"
    assert decode_value("hidden_dims", text) == list(value)
    assert split_trial_config({"hidden_dims": text}, where="t")[0].hidden_dims == tuple(value)


def test_scalars_are_not_encoded_or_decoded():
    for v in (None, True, 3, 0.5, "multinomial"):
        assert encode_value(v) is v
    assert decode_value("likelihood", "[600]") == "[600]"   # only sequence fields decode
