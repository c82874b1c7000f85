"""`medlm train` / `python -m jobs.train`: Ray Train + DeepSpeed ZeRO training from a YAML config.

    medlm train                                          # embedded CPU default (jobs/configs/train.yaml)
    medlm train --config jobs/configs/train.yaml objective=mixture draft_runs=[runs/drafts] init_from=CKPT
    ray job submit --address http://HEAD:8265 --working-dir . --runtime-env cluster/runtime_env.yaml \\
        -- python -m jobs.train --config jobs/configs/train_llada8b.yaml

Connects to the cluster in RAY_ADDRESS (set by `ray job submit`) or starts a local Ray. Exit status:
0 trained and exported, 2 the config or the data was refused before training, 1 training failed.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

DEFAULT_CONFIG = Path(__file__).parent / "configs" / "train.yaml"


def cli(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog="medlm train", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", type=Path, default=DEFAULT_CONFIG, help="YAML file of TrainConfig keys")
    ap.add_argument("overrides", nargs="*", help="key=value (YAML values), e.g. max_steps=50 sources=[a.jsonl]")
    args = ap.parse_args(argv)

    from jobs.config import ConfigError, load_config
    from pipeline.train import TrainConfig

    try:
        cfg = load_config(args.config, args.overrides, TrainConfig)  # typed, range-checked, TrainConfig.check()
    except ConfigError as e:
        print(f"medlm train: {e}", file=sys.stderr)
        return 2

    from ray.train import TrainingFailedError

    from pipeline.train import DataError, run_training

    try:  # run_training connects to Ray (a local one with its dashboard)
        result = run_training(cfg)
    except (DataError, FileNotFoundError, ValueError) as e:
        print(f"medlm train: refused before training: {e}", file=sys.stderr)
        return 2
    except TrainingFailedError as e:
        print(f"medlm train: training failed: {e}", file=sys.stderr)
        return 1
    print(json.dumps(result, indent=2, default=str))
    return 0


if __name__ == "__main__":
    raise SystemExit(cli(sys.argv[1:]))
