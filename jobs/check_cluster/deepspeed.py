"""DeepSpeed ZeRO JSON configs, checked by DeepSpeed's own ``DeepSpeedConfig``.

DeepSpeed accepts unknown top-level keys silently (``"gradient_clip"`` does nothing), so the parse is
run on a mapping that records which keys DeepSpeed reads: a key it never reads is reported. No key
list is kept here; the installed DeepSpeed is the authority. Before the parse: explicit values (no
``"auto"``, which only the Hugging Face integration understands) and the ZeRO stage the file name says.
"""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path
from typing import Any

from ._common import err, fmt_path, walk

# Read by the engine rather than by DeepSpeedConfig (deepspeed/runtime/engine.py).
ENGINE_ONLY_KEYS = frozenset({"sequence_parallel_size", "zenflow"})


class _ReadRecorder(dict):
    """A dict that records the keys looked up in it; copies share the record."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.read: set = set()

    def __copy__(self):
        new = _ReadRecorder(self)
        new.read = self.read
        return new

    def __deepcopy__(self, memo):
        new = _ReadRecorder(copy.deepcopy(dict(self), memo))
        new.read = self.read
        return new

    def get(self, key, default=None):
        self.read.add(key)
        return super().get(key, default)

    def __getitem__(self, key):
        self.read.add(key)
        return super().__getitem__(key)

    def __contains__(self, key):
        self.read.add(key)
        return super().__contains__(key)

    def keys(self):  # ``KEY in d.keys()`` is how DeepSpeed tests for several sections
        return _RecordingKeys(self)


class _RecordingKeys:
    def __init__(self, d: _ReadRecorder) -> None:
        self._d = d

    def __contains__(self, key) -> bool:
        return key in self._d

    def __iter__(self):
        return iter(dict.keys(self._d))

    def __len__(self) -> int:
        return len(self._d)


def _parse_with_deepspeed(cfg: dict, p: Path) -> set:
    """Parse with ``DeepSpeedConfig``; return the top-level keys it read."""
    from deepspeed.runtime.config import DeepSpeedConfig

    recorder = _ReadRecorder(json.loads(json.dumps(cfg)))
    try:
        ds = DeepSpeedConfig(recorder)
    except Exception as e:
        raise err(p, "", f"rejected by deepspeed.runtime.config.DeepSpeedConfig: {type(e).__name__}: {e}") from e
    if ds.zero_optimization_stage != cfg["zero_optimization"]["stage"]:  # pragma: no cover - sanity
        raise err(p, "zero_optimization.stage", f"DeepSpeed parsed stage {ds.zero_optimization_stage}")
    return recorder.read


def validate_deepspeed_config(path: str | Path, expected_stage: int | None = None) -> dict:
    """Validate a DeepSpeed JSON config; return it.

    ``expected_stage`` defaults to the digit in a ``zeroN.json`` file name.
    """
    p = Path(path)
    try:
        cfg = json.loads(p.read_text())
    except OSError as e:
        raise err(p, "", f"cannot read file ({e})") from e
    except json.JSONDecodeError as e:
        raise err(p, "", f"not valid JSON ({e})") from e
    if not isinstance(cfg, dict):
        raise err(p, "", "expected a JSON object")
    for path_, key, value in walk(cfg):
        if isinstance(value, str) and value.strip().lower() == "auto":
            raise err(
                p,
                fmt_path(path_ + (key,)),
                '"auto" is only understood by the Hugging Face integration, not by deepspeed.initialize; '
                "put an explicit value (the trainer overrides it at runtime)",
            )
    for prec in ("bf16", "fp16"):
        if prec in cfg and (not isinstance(cfg[prec], dict) or not isinstance(cfg[prec].get("enabled", False), bool)):
            raise err(p, f"{prec}.enabled", f"must be true or false, got {cfg[prec]!r}")
    zero = cfg.get("zero_optimization")
    if not isinstance(zero, dict) or "stage" not in zero:
        raise err(p, "zero_optimization.stage", "required field is missing")
    stage = zero["stage"]
    if not isinstance(stage, int) or isinstance(stage, bool) or stage not in (0, 1, 2, 3):
        raise err(p, "zero_optimization.stage", f"must be 0, 1, 2 or 3, got {stage!r}")
    if expected_stage is None:
        m = re.fullmatch(r"zero(\d)\.json", p.name)
        expected_stage = int(m.group(1)) if m else None
    if expected_stage is not None and stage != expected_stage:
        raise err(p, "zero_optimization.stage", f"is {stage} but the file is for stage {expected_stage}")
    opt = cfg.get("optimizer")
    if opt is not None and (not isinstance(opt, dict) or not isinstance(opt.get("type"), str)):
        raise err(p, "optimizer.type", "required string (e.g. AdamW)")

    read = _parse_with_deepspeed(cfg, p)
    unknown = sorted(set(cfg) - read - ENGINE_ONLY_KEYS)
    if unknown and "zero_optimization" in read:  # else the recorder saw nothing: a DeepSpeed that copies dicts
        raise err(p, unknown[0], "unknown DeepSpeed config key: DeepSpeed does not read it (a typo?)")
    return cfg
