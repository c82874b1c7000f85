"""The draft job: sources -> drafts of a checkpoint -> aligned, labelled Parquet runs, committed atomically.

Entry: ``run_generate(cfg)`` with a ``GenerateConfig`` (or ``plan_run`` then ``run_plan``, to check
everything before Ray starts; ``config_from_run`` to redo a run with another checkpoint). Reading a
finished run: ``open_run`` (``RunNotReady`` when it is not complete). Modules: ``plan`` (config and
fail-fast checks), ``job`` (the Ray Data pipeline and the commit), ``stages`` (the draft actor),
``align`` (labelling), ``recipe`` (per-row draft budgets), ``shards`` (schema, layout, reader).
"""

from pipeline import lazy_exports

__all__ = ["run_generate", "run_plan", "plan_run", "config_from_run", "GenerateConfig", "GenerateError",
           "open_run", "RunNotReady"]
__getattr__, __dir__ = lazy_exports(__name__, {
    "run_generate": "job", "run_plan": "job", "plan_run": "plan", "config_from_run": "plan",
    "GenerateConfig": "plan", "GenerateError": "plan", "open_run": "shards", "RunNotReady": "shards",
})
