"""Tasks by name: where problems come from and how an answer is graded.

Why: jobs and benchmarks name a task in a config ("toy", "gsm8k", "humaneval");
this registry is the one place a name turns into a loader and a grader. Every
grader returns a dict with at least ``correct: bool``. Submodules load lazily,
so importing ``medlm.tasks`` stays cheap.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

__all__ = ["Task", "get_task", "TASKS", "gsm8k_path", "load_gsm8k"]

GSM8K_ENV = "MEDLM_GSM8K_DIR"  # a folder with GSM8K's {train,test}.jsonl; the data is not shipped


@dataclass(frozen=True)
class Task:
    name: str
    load: Callable[..., list]  # problems (keyword arguments depend on the task)
    grade: Callable[[Any, str], dict]  # (problem, model text) -> {"correct": bool, ...}


def gsm8k_path(split: str = "test") -> Path:
    """GSM8K ``{split}.jsonl`` under ``$MEDLM_GSM8K_DIR``; a clear error when it is not set or not there."""
    folder = os.environ.get(GSM8K_ENV)
    if not folder:
        raise FileNotFoundError(
            f"GSM8K is not shipped with medlm: set {GSM8K_ENV} to a folder holding train.jsonl / test.jsonl "
            "(rows {\"question\", \"answer\"}, e.g. the Hugging Face dataset openai/gsm8k, config 'main', "
            "written out as JSON lines)")
    path = Path(folder).expanduser() / f"{split}.jsonl"
    if not path.is_file():
        raise FileNotFoundError(f"{GSM8K_ENV}={folder} has no {split}.jsonl")
    return path


def load_gsm8k(split: str = "test", limit: int | None = None) -> list[dict]:
    """Rows ``{id, question, answer}``; ids like ``gsm8k-test-000042``."""
    rows = []
    with gsm8k_path(split).open(encoding="utf-8") as f:
        for i, line in enumerate(f):
            if limit is not None and i >= limit:
                break
            row = json.loads(line)
            rows.append({"id": f"gsm8k-{split}-{i:06d}", "question": row["question"],
                         "answer": row["answer"]})
    return rows


def _load_toy(n: int = 1000, *, seed: int = 0, split: str = "test") -> list:
    from medlm.tasks.toy import generate_problems

    return generate_problems(n, seed=seed, split=split)


def _grade_toy(problem, text: str) -> dict:
    from medlm.tasks.toy import check_solution

    result = check_solution(problem, text)
    return {"correct": result["final_correct"], **result}


def _grade_gsm8k(problem: dict, text: str) -> dict:
    from medlm.tasks.graders import answers_match, extract_answer

    pred, ref = extract_answer(text), extract_answer(problem["answer"])
    return {"correct": answers_match(pred, ref), "pred": pred, "ref": ref}


def _load_humaneval() -> list[dict]:
    from medlm.tasks.humaneval import load_humaneval

    return load_humaneval()


def _grade_humaneval(problem: dict, completion: str, **sandbox) -> dict:
    from medlm.tasks.humaneval import check_completion

    result = check_completion(problem, completion, **sandbox)
    return {"correct": result.passed, "reason": result.reason, "duration_s": result.duration_s}


TASKS: dict[str, Task] = {
    "toy": Task("toy", _load_toy, _grade_toy),
    "gsm8k": Task("gsm8k", load_gsm8k, _grade_gsm8k),
    "humaneval": Task("humaneval", _load_humaneval, _grade_humaneval),
}


def get_task(name: str) -> Task:
    """The task called ``name``; ``ValueError`` naming the known tasks otherwise."""
    try:
        return TASKS[name]
    except KeyError:
        raise ValueError(f"unknown task {name!r}; known tasks: {', '.join(sorted(TASKS))}") from None
