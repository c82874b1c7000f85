"""Shared helpers for benchmark scripts: machine and load description, medians, JSON results.

Every script calls :func:`start` first and :func:`write_result` last, so each JSON says how busy
the machine was (1/5/15-minute load average against the core count, at start and end): numbers
from a busy machine are not comparable with numbers from an idle one. ``--quick`` smoke runs write
``<name>.smoke.json`` (git-ignored) so they never replace a real result.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import platform
import statistics
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"
BUSY_FRACTION = 0.5  # a 1-minute load average above this share of the cores makes the numbers suspect


def load_average() -> dict:
    one, five, fifteen = os.getloadavg()
    return {"1min": round(one, 2), "5min": round(five, 2), "15min": round(fifteen, 2)}


def add_quick_flag(ap: argparse.ArgumentParser) -> None:
    ap.add_argument("--quick", action="store_true",
                    help="seconds-long smoke run at tiny sizes; writes <name>.smoke.json, never the real result")


def start(name: str) -> dict:
    """Record the load at start and warn (without refusing) when the machine is already busy."""
    load = load_average()
    cores = os.cpu_count() or 1
    busy = load["1min"] > BUSY_FRACTION * cores
    if busy:
        print(f"WARNING [{name}]: 1-min load average {load['1min']} (5-min {load['5min']}, 15-min {load['15min']}) "
              f"is above {BUSY_FRACTION} x {cores} cores: other work is running and the numbers will be noisy. "
              f"Run on an idle machine for results worth recording.", flush=True)
    return {"load_average_at_start": load, "cpu_count": cores, "busy_at_start": busy}


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


def result_path(name: str, quick: bool = False) -> Path:
    return RESULTS / (f"{name}.smoke.json" if quick else f"{name}.json")


def write_result(name: str, payload: dict, *, started: dict | None = None, quick: bool = False,
                 out: Path | None = None) -> Path:
    """Write ``payload`` with date, machine and load averages; smoke runs go to ``<name>.smoke.json``."""
    info = {**machine(), **(started or {}), "load_average_at_end": load_average()}
    payload = {"benchmark": name, "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
               "quick_smoke_run": bool(quick), "machine": info, **payload}
    path = Path(out) if out else result_path(name, quick)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, indent=2, sort_keys=False) + "\n")
    print(f"wrote {path}")
    return path
