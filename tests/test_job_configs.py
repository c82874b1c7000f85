"""Every job's config goes through jobs.config: typed, range-checked, one precedence rule.

Each job refuses a mistyped and an out-of-range value with exit status 2, naming the key, the value
and what it expects, before Ray starts (these tests would hang or take seconds if Ray started: the
guard below makes starting it an error).
"""

from __future__ import annotations

import dataclasses

import pytest
import ray

from jobs.cli import main as medlm
from jobs.config import ConfigError, load_config
from pipeline.train import TrainConfig

REFUSALS = [
    # (command line, words the message must hold)
    ("train max_steps=abc", ["max_steps: expected an integer, got 'abc'"]),
    ("train max_steps=0", ["max_steps=0", ">= 1"]),
    ("train lr=fast", ["lr: expected a number, got 'fast'"]),
    ("train use_gpu=maybe", ["use_gpu: expected true or false, got 'maybe'"]),
    ("train bogus=1", ["unknown config key 'bogus'", "max_steps"]),
    ("generate --source s.jsonl --checkpoint /x --output OUT --seed abc", ["seed: expected an integer, got 'abc'"]),
    ("generate gen_len=sixty", ["gen_len: expected an integer, got 'sixty'"]),
    ("generate --source s.jsonl --checkpoint /x --output OUT batch_size=0", ["batch_size", "positive", "0"]),
    ("eval --checkpoint /x --mask-steps abc", ["mask_steps: expected an integer, got 'abc'"]),
    ("eval checkpoint=/x edit_steps=-1", ["edit_steps: expected a value >= 0, got -1"]),
    ("eval checkpoint=/x task=mbpp", ["task: expected 'toy', 'gsm8k' or 'humaneval', got 'mbpp'"]),
    ("serve --checkpoint /x --port eighty", ["port: expected an integer, got 'eighty'"]),
    ("serve --checkpoint /x --port 70000", ["port: expected a value <= 65535, got '70000'"]),
    ("serve --checkpoint /x app.max_batch_size=0", ["app.max_batch_size: expected a value >= 1, got 0"]),
    ("serve --checkpoint /x app.max_batch_sise=4", ["unknown config key 'app.max_batch_sise'"]),
    ("demo base_steps=abc", ["base_steps: expected an integer, got 'abc'"]),
    ("demo gen_len=0", ["gen_len=0", ">= 1"]),
    ("init --out OUT --vocab-size abc", ["vocab_size: expected an integer, got 'abc'"]),
    ("init --out OUT --vocab-size 100", ["vocab_size: expected a value >= 262, got '100'"]),
    ("init --out OUT --preset huge", ["preset: expected 'tiny' or 'small', got 'huge'"]),
]


@pytest.fixture(autouse=True)
def no_ray(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("Ray was started before the config was checked")

    monkeypatch.setattr(ray, "init", refuse)


@pytest.mark.parametrize("line,needles", REFUSALS, ids=[r[0] for r in REFUSALS])
def test_bad_values_are_refused_before_ray_naming_key_value_and_expectation(line, needles, tmp_path, capsys):
    argv = [a.replace("OUT", str(tmp_path / "out")) for a in line.split()]
    assert medlm(argv) == 2
    captured = capsys.readouterr()
    message = captured.err + captured.out
    for needle in needles:
        assert needle in message, f"{needle!r} not in {message!r}"


def test_every_job_with_settings_is_covered():
    covered = {line.split()[0] for line, _ in REFUSALS}
    assert covered >= {"train", "generate", "eval", "serve", "demo", "init"}


def test_lr_from_the_train_yaml_example_is_a_float():
    cfg = load_config("jobs/configs/train.yaml", ["lr=3e-4", "min_lr=1e-5"], TrainConfig)
    assert cfg.lr == 3e-4 and isinstance(cfg.lr, float) and cfg.min_lr == 1e-5


def test_precedence_defaults_yaml_overrides_flags(tmp_path):
    from jobs import evaluate, generate, serve

    yml = tmp_path / "c.yaml"
    yml.write_text("mask_steps: 20\nedit_steps: 5\nbatch_size: 3\n")
    cfg = evaluate.parse_args(["--config", str(yml), "edit_steps=6", "mask_steps=30", "--mask-steps", "40"])
    assert (cfg.mask_steps, cfg.edit_steps, cfg.batch_size, cfg.seed) == (40, 6, 3, 0)

    ycfg = tmp_path / "s.yaml"
    ycfg.write_text("port: 8100\nhost: 0.0.0.0\n")
    cfg = serve.build_config(["--config", str(ycfg), "--checkpoint", "/ck", "port=8200", "--port", "8300"])
    assert (cfg.port, cfg.host, cfg.app.checkpoint) == (8300, "0.0.0.0", "/ck")

    import argparse

    ns = argparse.Namespace(config=None, source=["a.jsonl"], checkpoint="/ck", output="/o", run_id=None, seed="7",
                            from_run=None, force=False, overrides=["seed=3", "gen_len=32", "checkpoint=/other"])
    cfg = generate.build_config(ns)  # flags win over overrides in generate too
    assert (cfg.seed, cfg.gen_len, cfg.checkpoint, cfg.source) == (7, 32, "/ck", "a.jsonl")


def test_numbers_given_for_string_keys_stay_strings():
    cfg = load_config(None, ["run_name=2024", "sources=[a.jsonl]"], TrainConfig)
    assert cfg.run_name == "2024"


def test_job_yaml_files_hold_only_what_differs_from_the_defaults():
    from pathlib import Path

    import yaml

    from jobs.evaluate import EvalConfig
    from jobs.serve import ServeJobConfig
    from pipeline.drafts import GenerateConfig

    root = Path(__file__).resolve().parents[1] / "jobs" / "configs"
    classes = {"train": TrainConfig, "train_llada8b": TrainConfig, "generate": GenerateConfig,
               "generate_cluster": GenerateConfig, "evaluate": EvalConfig, "evaluate_llada8b": EvalConfig,
               "serve": ServeJobConfig}
    for name, cls in classes.items():
        data = yaml.safe_load((root / f"{name}.yaml").read_text()) or {}
        defaults = {f.name: (f.default if f.default is not dataclasses.MISSING else f.default_factory())
                    for f in dataclasses.fields(cls)}
        same = sorted(k for k, v in data.items() if k in defaults and defaults[k] == v and not isinstance(v, dict))
        assert not same, f"jobs/configs/{name}.yaml restates defaults: {same}"
        load_config(root / f"{name}.yaml", ["sources=[a.jsonl]"] if cls is TrainConfig and "llada" not in name else [],
                    cls) if cls is not ServeJobConfig else None


def test_config_error_is_a_value_error():
    with pytest.raises(ValueError, match="unknown config key 'max_stepz'"):
        load_config(None, ["max_stepz=3"], TrainConfig)
    assert issubclass(ConfigError, ValueError)
