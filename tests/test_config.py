"""Run configuration: presets, YAML files, overrides, and the errors bad input gets."""

from __future__ import annotations

import functools
import re

import pytest

from rstar_math.config import ConfigError, RunConfig, config_hash, load_config, preset_names


def test_presets_load():
    assert {"paper", "default", "smoke"} <= set(preset_names())
    for name in preset_names():
        assert isinstance(load_config(name), RunConfig)


def test_paper_preset_has_the_method_settings():
    cfg = load_config("paper")
    assert cfg.rounds == 4
    assert [cfg.search.rollouts_for(r) for r in (1, 2, 3, 4)] == [8, 16, 16, 16]
    assert cfg.search.hard_rollouts_for(4) > cfg.search.rollouts_for(4)
    assert cfg.search.hard_rollouts_for(2) == 16  # 0 means "same as rollouts"
    assert (cfg.search.candidates, cfg.search.c_uct, cfg.search.ppm_from_round) == ((8,), 2.0, 3)
    policy = cfg.train.policy
    assert (policy.learning_rate, policy.epochs, policy.batch_size) == (7e-6, 2.0, 128)
    assert (cfg.select.sft_per_problem, cfg.select.ppm_positives, cfg.select.ppm_negatives) == (2, 2, 2)
    assert cfg.select.sft_max_q_gap is None  # plain top-2 by average Q


def test_smoke_extends_default():
    default, smoke = load_config("default"), load_config("smoke")
    assert smoke.name == "smoke"
    assert smoke.model == default.model  # inherited untouched
    assert smoke.search.rollouts_for(1) < default.search.rollouts_for(1)


def test_candidates_are_per_round_and_the_last_repeats():
    widening = load_config("default", ["search.candidates=[6, 3]"])
    assert [widening.search.candidates_for(r) for r in (1, 2, 3, 4)] == [6, 3, 3, 3]
    assert load_config("default", ["search.candidates=5"]).search.candidates_for(3) == 5  # one number: every round


def test_user_file_extends_a_preset_and_overrides_win(tmp_path):
    path = tmp_path / "mine.yaml"
    path.write_text("extends: paper\nrounds: 2\nsearch:\n  candidates: 4\n")
    cfg = load_config(path, overrides=["search.candidates=6", "data.train=s3://b/p.jsonl"])
    assert cfg.rounds == 2 and cfg.search.candidates == (6,)
    assert cfg.search.max_depth == 16  # from the preset
    assert cfg.data.train == ("s3://b/p.jsonl",)


def test_unknown_key_is_an_error_naming_file_and_key(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("search:\n  candidatez: 4\n")
    with pytest.raises(ConfigError, match=r"bad\.yaml.*search.*candidatez"):
        load_config(path)


def test_wrong_type_is_an_error_naming_the_key(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("search:\n  rollouts: [8, sixteen]\n")
    with pytest.raises(ConfigError, match=r"search\.rollouts\[1\].*integer"):
        load_config(path)
    with pytest.raises(ConfigError, match=r"rounds.*integer"):
        load_config("default", overrides=["rounds=true"])


def test_an_unknown_control_is_an_error_naming_the_file_and_field(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("extends: default\nevaluate:\n  controls: [rejection, continude]\n")
    with pytest.raises(ConfigError, match=r"bad\.yaml.*evaluate\.controls.*continude.*known: rejection, outcome_loop, continued"):
        load_config(path)


def test_a_composed_cap_of_one_is_an_error_naming_the_file_and_field(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("extends: default\ndata:\n  generator:\n    max_composed_modules: 1\n")
    with pytest.raises(ConfigError, match=r"bad\.yaml.*data\.generator\.max_composed_modules.*got 1"):
        load_config(path)
    with pytest.raises(ConfigError, match=r"embedded\.max_composed_modules.*got -2"):
        load_config("default", overrides=["embedded.max_composed_modules=-2"])


@pytest.mark.parametrize("override, expected", [
    ("model.dtype=fp32", r"model\.dtype: expected one of auto, float32, bfloat16, float16, got 'fp32'"),
    ("embedded.dtype=float16", r"embedded\.dtype: expected one of auto, bfloat16, float32, got 'float16'"),
    ("train.ppm.precision=bfloat16", r"train\.ppm\.precision: expected one of auto, bf16, fp32, got 'bfloat16'"),
])
def test_a_precision_outside_its_choices_fails_when_the_config_is_read(override, expected):
    with pytest.raises(ConfigError, match=rf"default\.yaml \(with overrides {re.escape(override)}\): {expected}"):
        load_config("default", overrides=[override])
    name, value = override.split("=")
    good = {"model.dtype": "float32", "embedded.dtype": "bfloat16", "train.ppm.precision": "bf16"}[name]
    assert functools.reduce(getattr, name.split("."), load_config("default", overrides=[f"{name}={good}"])) == good


def test_a_q_gap_outside_the_q_range_is_an_error_naming_the_field():
    assert load_config("default", overrides=["select.sft_max_q_gap=0.5"]).select.sft_max_q_gap == 0.5
    with pytest.raises(ConfigError, match=r"select\.sft_max_q_gap.*got 2\.5"):
        load_config("default", overrides=["select.sft_max_q_gap=2.5"])


def test_missing_preset_and_file_are_clear_errors(tmp_path):
    with pytest.raises(ConfigError, match="no preset named 'nope'"):
        load_config("nope")
    with pytest.raises(ConfigError, match="no such config file"):
        load_config(tmp_path / "absent.yaml")
    with pytest.raises(ConfigError, match="key.path=value"):
        load_config("default", overrides=["justakey"])


def test_extends_cycle_is_detected(tmp_path):
    (tmp_path / "a.yaml").write_text("extends: b.yaml\n")
    (tmp_path / "b.yaml").write_text("extends: a.yaml\n")
    with pytest.raises(ConfigError, match="cycle"):
        load_config(tmp_path / "a.yaml")


def test_yaml_round_trip_and_hash(tmp_path):
    cfg = load_config("default")
    path = tmp_path / "dump.yaml"
    path.write_text(cfg.to_yaml())
    again = load_config(path)
    assert again == cfg and config_hash(again) == config_hash(cfg)
    assert config_hash(load_config("default", overrides=["seed=1"])) != config_hash(cfg)
