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
from typing import Callable

__all__ = ["Task", "get_task", "TASKS", "gsm8k_path", "gsm8k_source", "load_gsm8k"]

GSM8K_ENV = "MEDLM_GSM8K"  # where GSM8K comes from: "hub", or a JSONL / Parquet file or folder
GSM8K_DIR_ENV = "MEDLM_GSM8K_DIR"  # the older name: a folder holding {train,test}.jsonl
GSM8K_HUB = ("openai/gsm8k", "main")  # the Hugging Face dataset and its config
_HUB_NAMES = ("hub", "hf", "openai/gsm8k")


@dataclass(frozen=True)
class Task:
    name: str
    load: Callable[..., list]  # problems (keyword arguments depend on the task)
    grade: Callable[..., dict]  # (problem, model text, **task options) -> {"correct": bool, ...}


def gsm8k_source(source: str | os.PathLike | None = None) -> str:
    """Where GSM8K will be read from: ``source``, else ``$MEDLM_GSM8K``, else ``$MEDLM_GSM8K_DIR``.

    GSM8K is not shipped with medlm. A clear error names both ways to provide it when none is set.
    """
    for value in (source, os.environ.get(GSM8K_ENV), os.environ.get(GSM8K_DIR_ENV)):
        if value:
            return str(value)
    raise FileNotFoundError(
        "GSM8K is not shipped with medlm; say where to read it: "
        f"{GSM8K_ENV}=hub (the Hugging Face dataset {GSM8K_HUB[0]}, config {GSM8K_HUB[1]!r}, through the "
        "`datasets` package: pip install 'medlm[hub]'), or "
        f"{GSM8K_ENV}=PATH to a JSONL or Parquet file or to a folder holding {{train,test}}.jsonl or .parquet "
        f"(rows {{\"question\", \"answer\"}}); {GSM8K_DIR_ENV}=FOLDER still works")


def gsm8k_path(split: str = "test", source: str | os.PathLike | None = None) -> Path:
    """The local file of GSM8K's ``split``: the file named, or ``{split}.jsonl`` / ``.parquet`` in the folder named."""
    src = gsm8k_source(source)
    if src.lower() in _HUB_NAMES:
        raise ValueError(f"GSM8K source {src!r} is the Hugging Face hub, not a local file")
    path = Path(src).expanduser()
    if path.is_file():
        return path
    if not path.exists():
        raise FileNotFoundError(f"GSM8K source {src} does not exist")
    # {split}.jsonl, {split}.parquet, or a hub snapshot's main/{split}-00000-of-00001.parquet
    hub_layout = sorted(path.glob(f"{split}-*.parquet")) + sorted(path.glob(f"*/{split}-*.parquet"))
    for candidate in (path / f"{split}.jsonl", path / f"{split}.parquet", *hub_layout):
        if candidate.is_file():
            return candidate
    raise FileNotFoundError(f"GSM8K source {src} has no {split}.jsonl or {split}.parquet")


def _gsm8k_rows_from_hub(split: str) -> list[dict]:
    try:
        import datasets
    except ImportError:
        raise ImportError(
            f"reading GSM8K from the Hugging Face hub needs the `datasets` package, an optional extra of medlm: "
            f"pip install 'medlm[hub]' (or pip install datasets); or point {GSM8K_ENV} at a local file"
        ) from None
    return [dict(r) for r in datasets.load_dataset(*GSM8K_HUB, split=split)]


def _gsm8k_rows_from_file(path: Path) -> list[dict]:
    if path.suffix == ".parquet":
        import pyarrow.parquet as pq

        return pq.read_table(path, columns=["question", "answer"]).to_pylist()
    with path.open(encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def load_gsm8k(split: str = "test", limit: int | None = None, source: str | os.PathLike | None = None) -> list[dict]:
    """Rows ``{id, question, answer}`` with ids like ``gsm8k-test-000042``.

    ``source`` (default ``$MEDLM_GSM8K``, then ``$MEDLM_GSM8K_DIR``) is ``"hub"`` for the Hugging Face
    dataset ``openai/gsm8k`` (config ``main``), or a JSONL / Parquet file, or a folder holding
    ``{split}.jsonl`` or ``{split}.parquet`` (a downloaded hub snapshot works too).
    """
    src = gsm8k_source(source)
    if src.lower() in _HUB_NAMES:
        raw = _gsm8k_rows_from_hub(split)
        where = f"{GSM8K_HUB[0]} ({split})"
    else:
        path = gsm8k_path(split, src)
        raw = _gsm8k_rows_from_file(path)
        where = str(path)
    rows = []
    for i, row in enumerate(raw[:limit] if limit is not None else raw):
        if not isinstance(row, dict) or not isinstance(row.get("question"), str) or not isinstance(row.get("answer"), str):
            raise ValueError(f"{where}: row {i} lacks the string fields question and answer")
        rows.append({"id": f"gsm8k-{split}-{i:06d}", "question": row["question"], "answer": row["answer"]})
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
    return {"correct": result.passed, "reason": result.reason, "duration_s": result.duration_s,
            "boundary": result.boundary}


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
