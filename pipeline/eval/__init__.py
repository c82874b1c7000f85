"""Step-budget evaluation on Ray Data: ``run_eval`` decodes every (budget, sample) pair with a pool of
model actors and writes per-budget records, the table and the accuracy-vs-NFE plot (``run.py``)."""

from pipeline import lazy_exports

__all__ = ["run_eval"]
__getattr__, __dir__ = lazy_exports(__name__, {"run_eval": "run"})
