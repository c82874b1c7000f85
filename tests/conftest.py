"""Test-wide settings.

One intra-op thread per process: the suite runs next to Ray workers on 2 cores, and PyTorch's
OpenMP threads spin-wait when cores are oversubscribed (a tiny model's training step measured 40 ms
with one thread and 1.5 s with two on a loaded machine).
"""

import os

os.environ.setdefault("DS_ACCELERATOR", "cpu")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
# GSM8K is not shipped; tests read the copy beside the repository when there is one
_SHARED_GSM8K = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data", "gsm8k")
if os.path.isdir(_SHARED_GSM8K):
    os.environ.setdefault("MEDLM_GSM8K_DIR", os.path.abspath(_SHARED_GSM8K))

import torch

torch.set_num_threads(1)



def pytest_terminal_summary(terminalreporter):
    """Say which OS sandbox boundaries the code-execution tests ran behind (when any ran)."""
    import sys

    sandbox = sys.modules.get("medlm.tasks.sandbox")
    if sandbox is not None and sandbox.available_boundaries.cache_info().currsize:
        status = sandbox.available_boundaries()
        terminalreporter.write_line("sandbox boundaries on this machine: " + "; ".join(
            f"{name}: {problem or 'available, tested'}" for name, problem in status.items()))
