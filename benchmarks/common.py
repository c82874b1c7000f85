"""Shared helpers for benchmark scripts: machine description, medians, JSON results."""

from __future__ import annotations

import datetime as _dt
import json
import os
import platform
import statistics
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"


def machine() -> dict:
    try:
        import torch

        torch_version, threads = torch.__version__, torch.get_num_threads()
    except Exception:  # pragma: no cover
        torch_version, threads = None, None
    return {
        "cpu_count": os.cpu_count(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "processor": platform.processor() or platform.machine(),
        "torch": torch_version,
        "torch_threads": threads,
    }


def median(xs):
    return statistics.median(xs)


def write_result(name: str, payload: dict) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    payload = {"benchmark": name, "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
               "machine": machine(), **payload}
    path = RESULTS / f"{name}.json"
    path.write_text(json.dumps(payload, indent=2, sort_keys=False) + "\n")
    print(f"wrote {path}")
    return path
