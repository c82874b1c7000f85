"""The ME-DLM jobs on Ray, one subpackage per capability, each with one public entry:

    pipeline.drafts   run_generate   draft job: sources -> drafts of a checkpoint -> aligned Parquet runs
    pipeline.train    run_training   Ray Train + DeepSpeed (driver.py on the Ray driver, worker.py per worker)
    pipeline.serve    build_app, run_local   the HTTP app on Ray Serve
    pipeline.eval     run_eval       step-budget evaluation on Ray Data
    pipeline.common   plumbing the others share: atomic IO, the Ray connection, reading sources
    pipeline.demo     run_demo       the whole method end to end, on top of the four

A subpackage's ``__init__`` names its entries lazily (:func:`lazy_exports`): importing a stage module
in a Ray task (``pipeline.drafts.align``, say) must not pull in torch or Ray Train with its package.
"""

from __future__ import annotations

import importlib


def lazy_exports(package: str, exports: dict[str, str]):
    """``(__getattr__, __dir__)`` for a package whose public names live in submodules.

    ``exports`` maps each public name to the submodule (relative to ``package``) that defines it;
    the submodule is imported on first use of the name.
    """

    def __getattr__(name: str):
        if name not in exports:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        return getattr(importlib.import_module(f"{package}.{exports[name]}"), name)

    def __dir__() -> list[str]:
        return sorted(exports)

    return __getattr__, __dir__
