"""Evaluation core (no Ray): step budgets, decoding + grading a batch of samples, summaries, plot, table.

Why: the paper's claim is a comparison at equal cost. A *budget* is a number of forward passes
(NFE) per sample; "full" is one token per step (``gen_len`` mask steps). At each fraction of it the
mask-only decoder spends everything on mask steps while mask+edit splits the same total, 3/4 mask
and 1/4 edit by default (the split docs/design.md describes). Every sample is graded twice:
its draft (before editing) and its refined text (after), so the gain from editing is visible
per sample, not only in aggregate.

A sample is a JSON-able dict ``{"id", "prompt", "reference"}``; ``reference`` holds what the task's
grader needs (toy: every valid phrasing + the final number; gsm8k: the reference answer; humaneval:
the problem with its tests). One bad sample (prompt too long, a decode or grader failure) becomes a
record with ``error = {"reason", "detail"}`` and counts as wrong; it never stops the run.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional, Sequence

from medlm.sampling import DecodeConfig, DecodeResult, check_decode_options, generate
from medlm.stats import mcnemar_exact, newcombe_paired_interval, paired_comparison, wilson_interval
from medlm.tasks import get_task
from medlm.tokenizer import chat_prompt_ids, decode_response, special_ids

__all__ = [
    "Budget", "budget_table", "load_samples", "load_eval_model", "checkpoint_has_insertion_head",
    "check_budget", "grade_text", "humaneval_completion", "evaluate_samples", "summarise",
    "score_decoded", "sample_seed", "budget_row", "table_markdown", "fraction_label", "plot_accuracy_vs_nfe",
    "render_accuracy_vs_nfe", "DEFAULT_FRACTIONS", "EDIT_KINDS", "rate_interval", "paired_comparisons",
    "comparison_table", "edit_effects_table", "json_dumps", "check_code_sandbox",
]

DEFAULT_FRACTIONS = (1, 1 / 2, 1 / 4, 1 / 8)
_LABEL = re.compile(r"^[A-Za-z0-9_.+-]+$")  # labels become file names: samples_<label>.jsonl
HUMANEVAL_INSTRUCTION = "Complete the following Python function. Answer with code only.\n\n"


# --------------------------------------------------------------------------- budgets


@dataclass(frozen=True)
class Budget:
    """Forward passes one sample may spend: ``mask_steps`` drafting, then up to ``edit_steps`` editing.

    ``gen_len`` (response positions) and ``fraction`` (of the full budget) are set by
    ``budget_table``; a hand-made budget may leave them out and pass ``gen_len`` to the evaluator.
    """

    mask_steps: int
    edit_steps: int
    label: str
    gen_len: Optional[int] = None
    fraction: Optional[float] = None

    def __post_init__(self):
        if not isinstance(self.mask_steps, int) or self.mask_steps < 1:
            raise ValueError(f"budget {self.label!r}: mask_steps must be an integer >= 1, got {self.mask_steps!r}")
        if not isinstance(self.edit_steps, int) or self.edit_steps < 0:
            raise ValueError(f"budget {self.label!r}: edit_steps must be an integer >= 0, got {self.edit_steps!r}")
        if not isinstance(self.label, str) or not _LABEL.match(self.label):
            raise ValueError(f"budget label {self.label!r} must be non-empty and use only letters, digits, _ . + -")

    @classmethod
    def of(cls, mask_steps: int, edit_steps: int = 0, gen_len: Optional[int] = None,
           fraction: Optional[float] = None) -> Budget:
        """A budget with the standard label: ``mask48`` or ``mask36_edit12``."""
        label = f"mask{mask_steps}" + (f"_edit{edit_steps}" if edit_steps else "")
        return cls(mask_steps, edit_steps, label, gen_len, fraction)

    @property
    def nfe(self) -> int:
        """The budgeted forward passes (editing may stop early and use fewer)."""
        return self.mask_steps + self.edit_steps

    @property
    def kind(self) -> str:
        return "mask_edit" if self.edit_steps else "mask_only"


def budget_table(gen_len: int, fractions: Sequence[float] = DEFAULT_FRACTIONS,
                 edit_share: float = 0.25, min_edit_steps: int = 3) -> list[tuple[Budget, Budget]]:
    """(mask-only, mask+edit) budget pairs at each fraction of the full ``gen_len``-step budget.

    The total is ``round(gen_len * fraction)`` (at least 1); mask+edit gives ``round(total *
    edit_share)`` to editing, but never fewer than ``min_edit_steps`` while that leaves at least half
    the total to masking, and the rest to masking, each at least 1 step. So at a total of 1 the
    mask+edit budget is 1 + 1 (the only case where it exceeds the mask-only total).

    Why a floor: a trained refiner needs two or three edit rounds to settle a draft, and at small
    totals a quarter share cuts it off after one or two (toy task, validation split: at 6 steps,
    3 + 3 beat 4 + 2 by 2.4 points right and 8.3 whole-valid; at 12, 9 + 3 beat 7 + 5 and 6 + 6).
    """
    if not isinstance(gen_len, int) or gen_len < 1:
        raise ValueError(f"gen_len must be an integer >= 1, got {gen_len!r}")
    if not 0.0 < edit_share < 1.0:
        raise ValueError(f"edit_share must be in (0, 1), got {edit_share}")
    if not isinstance(min_edit_steps, int) or min_edit_steps < 1:
        raise ValueError(f"min_edit_steps must be an integer >= 1, got {min_edit_steps!r}")
    if not fractions:
        raise ValueError("fractions must name at least one fraction of the full budget")
    table = []
    for f in fractions:
        if not 0.0 < f <= 1.0:
            raise ValueError(f"budget fraction {f} is outside (0, 1]")
        total = max(1, round(gen_len * f))
        edit = max(1, round(total * edit_share), min(min_edit_steps, total // 2))
        mask = max(1, total - edit)
        table.append((Budget.of(total, 0, gen_len, f), Budget.of(mask, edit, gen_len, f)))
    labels = [b.label for pair in table for b in pair]
    if len(set(labels)) != len(labels):
        raise ValueError(f"fractions {list(fractions)} give repeated budgets {labels} for gen_len={gen_len}")
    return table


def check_budget(budget: Budget, gen_len: int, *, max_positions: int, has_insertion_head: bool = True,
                 threshold: Optional[float] = None, block_size: Optional[int] = None,
                 decode_options: Optional[dict] = None, vocab_size: Optional[int] = None) -> DecodeConfig:
    """Refuse, before any work, a budget the sampler or the model cannot run; returns its DecodeConfig.

    ``decode_options``: the LLaDA decoding options (``medlm.sampling.DECODE_OPTIONS``: temperature,
    remasking, cfg_scale, logits_eos_inf, confidence_eos_eot_inf, stop_ids), refused naming the field."""
    options = check_decode_options(decode_options, vocab_size)
    if budget.edit_steps > 0 and not has_insertion_head:
        raise ValueError(
            f"budget {budget.label!r} asks for {budget.edit_steps} edit steps but the model has no insertion "
            "head (its checkpoint holds no insert_head weights); evaluate mask-only budgets or train the edit head"
        )
    if gen_len >= max_positions:
        raise ValueError(f"gen_len={gen_len} leaves no room for a prompt in the model's {max_positions} positions")
    cfg = DecodeConfig(gen_len=gen_len, mask_steps=budget.mask_steps, edit_steps=budget.edit_steps,
                       threshold=threshold, block_size=block_size, **options)
    try:
        cfg.validate()
    except ValueError as e:
        raise ValueError(f"budget {budget.label!r} cannot run: {e}") from None
    return cfg


def _gen_len(budget: Budget, gen_len: Optional[int]) -> int:
    value = gen_len if gen_len is not None else budget.gen_len
    if value is None:
        raise ValueError(f"budget {budget.label!r} has no gen_len; pass gen_len=")
    if budget.gen_len is not None and gen_len is not None and gen_len != budget.gen_len:
        raise ValueError(f"gen_len={gen_len} disagrees with budget {budget.label!r} (gen_len={budget.gen_len})")
    return int(value)


# --------------------------------------------------------------------------- samples and model


def load_samples(task: str, n: Optional[int], split: str = "test", seed: int = 0) -> list[dict]:
    """The first ``n`` problems of ``task`` (all when ``n`` is None) as JSON-able samples."""
    get_task(task)  # unknown task -> ValueError naming the known ones
    if n is not None and (not isinstance(n, int) or n < 1):
        raise ValueError(f"number of samples must be an integer >= 1, got {n!r}")
    if task == "toy":
        problems = get_task("toy").load(n or 1000, seed=seed, split=split)
        return [{"id": p.id, "prompt": p.question, "reference": {"answers": list(p.answers), "final": p.final}}
                for p in problems]
    if task == "gsm8k":
        rows = get_task("gsm8k").load(split=split, limit=n)
        samples = [{"id": r["id"], "prompt": r["question"], "reference": {"answer": r["answer"]}} for r in rows]
    else:  # humaneval: one fixed set of 164 problems, no split
        problems = get_task("humaneval").load()[:n]
        samples = [{"id": p["task_id"], "prompt": HUMANEVAL_INSTRUCTION + p["prompt"], "reference": p}
                   for p in problems]
    if n is not None and len(samples) < n:
        where = "" if task == "humaneval" else f" (split {split!r})"
        raise ValueError(f"task {task!r}{where} has only {len(samples)} problems, {n} were asked for")
    return samples


def checkpoint_has_insertion_head(checkpoint: str | Path) -> bool:
    """True when the checkpoint's safetensors hold ``insert_head`` weights.

    Why: ``from_pretrained`` fills missing weights with random ones and only logs it, so a
    checkpoint without a trained insertion head would otherwise "edit" with noise.
    """
    from safetensors import safe_open

    files = sorted(Path(checkpoint).glob("*.safetensors"))
    for f in files:
        with safe_open(str(f), framework="pt") as st:
            if any(k == "insert_head.weight" or k.endswith(".insert_head.weight") for k in st.keys()):
                return True
    return False


def load_eval_model(checkpoint: str | Path, device: Optional[str] = None):
    """(model, tokenizer) for evaluation; the randomly filled insertion head of a checkpoint that
    has none is removed, so ``hasattr(model, "insert_head")`` tells the truth."""
    from medlm.checkpoint import load_checkpoint

    model, tokenizer = load_checkpoint(checkpoint, device=device or "auto", require_insert_head=False)
    if not checkpoint_has_insertion_head(checkpoint):
        del model.insert_head
    return model, tokenizer


def sample_seed(seed: int, sample_id: str) -> int:
    """Decode seed from (run seed, sample id): a sample decodes the same in any batch or actor."""
    digest = hashlib.blake2b(f"{seed}|{sample_id}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") & 0x7FFF_FFFF_FFFF_FFFF


# --------------------------------------------------------------------------- grading


def humaneval_completion(text: str) -> str:
    """The code of a model's answer: the first fenced block when there is one, else the text."""
    fence = re.search(r"```[A-Za-z0-9_+-]*\n(.*?)(?:```|$)", text, re.DOTALL)
    return fence.group(1) if fence else text


def _toy_problem(sample: dict):
    from medlm.tasks.toy import ToyProblem

    ref = sample["reference"]
    return ToyProblem(id=sample["id"], question=sample["prompt"], answers=tuple(ref["answers"]), final=int(ref["final"]))


def grade_text(task: str, sample: dict, text: str, *, timeout_s: float = 5.0,
               allow_unisolated_code: bool = False) -> dict:
    """Grade one model text: ``{"correct": bool, ...task details}``; toy adds ``valid`` (the whole
    answer is one of the valid phrasings), humaneval ``reason`` ("passed", "timeout", "failed: ...",
    "error: sandbox unavailable (...)") and ``boundary`` (the OS sandbox it ran behind, docs/sandbox.md).
    ``allow_unisolated_code``: run code with the in-process guards alone when no OS boundary exists."""
    grader = get_task(task).grade
    if task == "toy":
        return dict(grader(_toy_problem(sample), text))
    if task == "gsm8k":
        return dict(grader({"answer": sample["reference"]["answer"]}, text))
    return dict(grader(sample["reference"], humaneval_completion(text), timeout_s=timeout_s,
                       allow_unisolated=allow_unisolated_code))


def _safe_grade(task: str, sample: dict, text: str, timeout_s: float,
                allow_unisolated_code: bool = False) -> tuple[dict, Optional[dict]]:
    from medlm.tasks.sandbox import UNAVAILABLE

    try:
        grade = grade_text(task, sample, text, timeout_s=timeout_s, allow_unisolated_code=allow_unisolated_code)
    except Exception as e:  # a grader bug or a malformed reference fails this sample only
        return {"correct": False}, {"reason": "grade_failed", "detail": f"{type(e).__name__}: {e}"}
    if str(grade.get("reason", "")).startswith(UNAVAILABLE):  # not graded: the code never ran
        return grade, {"reason": "sandbox_unavailable", "detail": grade["reason"]}
    return grade, None


# --------------------------------------------------------------------------- evaluation


def _error_record(task: str, sample: dict, budget: Budget, reason: str, detail: str) -> dict:
    record = {
        "id": str(sample.get("id")), "task": task, "budget": budget.label, "prompt": sample.get("prompt"),
        "draft": None, "refined": None, "correct_before": False, "correct_after": False,
        "grade_before": None, "grade_after": None,
        "nfe": {"mask": 0, "edit": 0}, "edits": {"replace": 0, "delete": 0, "insert": 0},
        "time_s": 0.0, "error": {"reason": reason, "detail": detail},
    }
    if task == "toy":
        record.update(valid_before=False, valid_after=False, skeleton_valid_before=False, skeleton_valid_after=False)
    return record


def score_decoded(task: str, sample: dict, budget: Budget, draft: str, refined: str, *, nfe: dict,
                  edits: dict, time_s: float, grade_timeout_s: float = 5.0,
                  allow_unisolated_code: bool = False) -> dict:
    """The record of one decoded sample: the draft and the refined text graded separately."""
    before, err_before = _safe_grade(task, sample, draft, grade_timeout_s, allow_unisolated_code)
    after, err_after = _safe_grade(task, sample, refined, grade_timeout_s, allow_unisolated_code)
    record = {
        "id": str(sample["id"]), "task": task, "budget": budget.label, "prompt": sample["prompt"],
        "draft": draft, "refined": refined,
        "correct_before": bool(before.pop("correct")), "correct_after": bool(after.pop("correct")),
        "grade_before": before, "grade_after": after,
        "nfe": dict(nfe), "edits": dict(edits), "time_s": round(float(time_s), 6),
        "error": err_before or err_after,
    }
    if task == "toy":
        record.update(valid_before=bool(before.get("valid", False)), valid_after=bool(after.get("valid", False)),
                      skeleton_valid_before=bool(before.get("skeleton_valid", False)),
                      skeleton_valid_after=bool(after.get("skeleton_valid", False)))
    return record


def _decode_isolating_failures(model, prompts, configs, special) -> list:
    """``generate`` on the whole batch; if it fails, sample by sample so only the culprit fails."""
    try:
        return generate(model, prompts, configs, special)
    except Exception:
        results: list[DecodeResult | Exception] = []
        for p, c in zip(prompts, configs):
            try:
                results.append(generate(model, [p], [c], special)[0])
            except Exception as e:
                results.append(e)
        return results


def evaluate_samples(model, tokenizer, samples: Sequence[dict], budget: Budget, task: str, batch_size: int = 8,
                     seed: int = 0, threshold: Optional[float] = None, block_size: Optional[int] = None, *,
                     gen_len: Optional[int] = None, grade_timeout_s: float = 5.0,
                     on_batch: Optional[Callable[[int, int], None]] = None,
                     decode_options: Optional[dict] = None, allow_unisolated_code: bool = False) -> list[dict]:
    """Decode ``samples`` under ``budget`` (batches of ``batch_size``, packed) and grade draft and result.

    Returns one record per sample, in order (see ``score_decoded`` / the module note for the fields).
    Raises ValueError before any decoding for an unknown task or a budget the model cannot run.
    ``on_batch(done, total)`` reports progress. ``decode_options`` as in :func:`check_budget`; text
    after the first end token (``<|im_end|>``, eos, ``<|eot_id|>``, ``stop_ids``) is not graded.
    """
    get_task(task)
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be an integer >= 1, got {batch_size!r}")
    length = _gen_len(budget, gen_len)
    max_positions = model.config.max_position_embeddings
    base = check_budget(budget, length, max_positions=max_positions, threshold=threshold, block_size=block_size,
                        decode_options=decode_options, vocab_size=model.config.vocab_size,
                        has_insertion_head=hasattr(model, "insert_head"))
    special = special_ids(tokenizer)
    records: list[Optional[dict]] = [None] * len(samples)
    todo: list[tuple[int, list[int], DecodeConfig]] = []
    for i, sample in enumerate(samples):
        try:
            prompt = chat_prompt_ids(tokenizer, sample["prompt"])
        except (KeyError, TypeError, ValueError) as e:
            records[i] = _error_record(task, sample, budget, "bad_sample", f"{type(e).__name__}: {e}")
            continue
        if len(prompt) + length > max_positions:
            records[i] = _error_record(
                task, sample, budget, "too_long",
                f"prompt of {len(prompt)} tokens + gen_len {length} exceeds the model's {max_positions} positions")
            continue
        cfg = dataclasses.replace(base, seed=sample_seed(seed, str(sample["id"])))
        todo.append((i, prompt, cfg))
    for start in range(0, len(todo), batch_size):
        chunk = todo[start:start + batch_size]
        results = _decode_isolating_failures(model, [p for _, p, _ in chunk], [c for _, _, c in chunk], special)
        for (i, _, _), res in zip(chunk, results):
            if isinstance(res, Exception):
                records[i] = _error_record(task, samples[i], budget, "decode_failed", f"{type(res).__name__}: {res}")
                continue
            records[i] = score_decoded(
                task, samples[i], budget,
                decode_response(tokenizer, res.draft_ids, base.stop_ids),
                decode_response(tokenizer, res.output_ids, base.stop_ids),
                nfe={"mask": res.mask_nfe, "edit": res.edit_nfe},
                edits={"replace": res.n_replace, "delete": res.n_delete, "insert": res.n_insert},
                time_s=res.mask_time_s + res.edit_time_s, grade_timeout_s=grade_timeout_s,
                allow_unisolated_code=allow_unisolated_code)
        if on_batch is not None:
            on_batch(min(start + batch_size, len(todo)), len(todo))
    return records  # type: ignore[return-value]  # no slot is None here: each got an error or a scored record


# --------------------------------------------------------------------------- summaries


def _mean(values: Sequence[float]) -> Optional[float]:
    return sum(values) / len(values) if values else None


# per-sample outcome -> record field; "valid" only where the task grades whole-answer validity (toy)
_OUTCOMES = {"right_before": "correct_before", "right_after": "correct_after",
             "valid_before": "valid_before", "valid_after": "valid_after"}
_RATES = ("accuracy_before", "accuracy_after", "valid_before", "valid_after", "skeleton_valid_before",
          "skeleton_valid_after")
EDIT_KINDS = ("replace", "delete", "insert")


def _edit_effects(before: Sequence[bool], after: Sequence[bool]) -> dict:
    """Draft against final text on each sample: fixed (wrong -> right), broken (right -> wrong), kept."""
    pairs = list(zip(before, after))
    return {"wrong_to_right": sum(1 for b, a in pairs if not b and a),
            "right_to_wrong": sum(1 for b, a in pairs if b and not a),
            "right_kept": sum(1 for b, a in pairs if b and a),
            "wrong_kept": sum(1 for b, a in pairs if not b and not a)}


def summarise(records: Sequence[dict]) -> dict:
    """Aggregate records: accuracies over all ``n`` samples (an errored sample counts as wrong), each
    with its Wilson 95% interval (``ci95``); NFE, edits and time over the samples that decoded.

    ``edit_effects`` counts what editing did to each draft (fixed, broken, kept) and ``outcomes``
    keeps every sample's id, draft/final right (and valid) as 0/1 and its edits by kind, in sample
    order: enough to recompute every rate, interval and paired test without the samples files."""
    ok = [r for r in records if r.get("draft") is not None]
    reasons: dict[str, int] = {}
    for r in records:
        if r.get("error"):
            reasons[r["error"]["reason"]] = reasons.get(r["error"]["reason"], 0) + 1
    summary: dict = {
        "n": len(records),
        "n_errors": sum(reasons.values()),
        "errors_by_reason": reasons,
        "accuracy_before": _mean([float(r["correct_before"]) for r in records]),
        "accuracy_after": _mean([float(r["correct_after"]) for r in records]),
        "mean_mask_nfe": _mean([r["nfe"]["mask"] for r in ok]),
        "mean_edit_steps": _mean([r["nfe"]["edit"] for r in ok]),
        "mean_nfe": _mean([r["nfe"]["mask"] + r["nfe"]["edit"] for r in ok]),
        "mean_edits": {k: _mean([r["edits"][k] for r in ok]) for k in EDIT_KINDS},
        "time_per_sample_s": _mean([r["time_s"] for r in ok]),
    }
    has_valid = bool(records) and all("valid_after" in r for r in records)
    if has_valid:
        summary["valid_before"] = _mean([float(r["valid_before"]) for r in records])
        summary["valid_after"] = _mean([float(r["valid_after"]) for r in records])
    if records and all("skeleton_valid_after" in r for r in records):
        summary["skeleton_valid_before"] = _mean([float(r["skeleton_valid_before"]) for r in records])
        summary["skeleton_valid_after"] = _mean([float(r["skeleton_valid_after"]) for r in records])
    summary["ci95"] = {key: list(rate_interval(summary[key], len(records))) for key in _RATES
                       if summary.get(key) is not None}
    summary["edit_effects"] = {"right": _edit_effects([r["correct_before"] for r in records],
                                                      [r["correct_after"] for r in records])}
    if has_valid:
        summary["edit_effects"]["valid"] = _edit_effects([r["valid_before"] for r in records],
                                                         [r["valid_after"] for r in records])
    outcomes: dict = {"ids": [str(r["id"]) for r in records]}
    for name, field in _OUTCOMES.items():
        if field.startswith("correct") or has_valid:
            outcomes[name] = [int(bool(r[field])) for r in records]
    outcomes["edits"] = {k: [int(r["edits"][k]) for r in records] for k in EDIT_KINDS}
    summary["outcomes"] = outcomes
    summary.update(_sandbox_summary(records))
    return summary


def _sandbox_summary(records: Sequence[dict]) -> dict:
    """Code tasks: which OS boundary the programs ran behind, how many were never run (sandbox
    unavailable, counted apart from failed completions) and whether any ran without isolation."""
    grades = [g for r in records for g in (r.get("grade_before"), r.get("grade_after"))
              if isinstance(g, dict) and "boundary" in g]
    if not grades:
        return {}
    from medlm.tasks.sandbox import UNAVAILABLE

    boundaries: dict[str, int] = {}
    for g in grades:
        if not str(g.get("reason", "")).startswith(UNAVAILABLE):
            boundaries[g["boundary"]] = boundaries.get(g["boundary"], 0) + 1
    return {"sandbox_boundaries": boundaries,
            "n_sandbox_unavailable": sum(1 for r in records if (r.get("error") or {}).get("reason")
                                         == "sandbox_unavailable"),
            "graded_without_isolation": "none" in boundaries}


def check_code_sandbox(task: str, allow_unisolated_code: bool = False) -> Optional[dict]:
    """Before any work: for a task that runs model-written code, the OS boundary this machine offers.

    Returns ``{"boundary", "isolated", "allow_unisolated_code", "unavailable"}`` (None for tasks that
    run no code). Raises ValueError when there is no boundary and the caller did not accept the
    in-process guards alone (``allow_unisolated_code``)."""
    if task != "humaneval":
        return None
    from medlm.tasks.sandbox import available_boundaries, pick_boundary

    chosen = pick_boundary()
    why = {name: problem for name, problem in available_boundaries().items() if problem is not None}
    if chosen is None and not allow_unisolated_code:
        raise ValueError(
            "humaneval runs model-written code, but this machine offers no OS sandbox boundary ("
            + "; ".join(f"{k}: {v}" for k, v in why.items()) + "). Install bubblewrap (apt-get install "
            "bubblewrap), or pass allow_unisolated_code=true (--allow-unisolated-code) to grade with the "
            "in-process guards alone; the summary then marks the scores as graded without isolation "
            "(docs/sandbox.md)")
    return {"boundary": chosen or "none", "isolated": chosen is not None,
            "allow_unisolated_code": bool(allow_unisolated_code), "unavailable": why}


def rate_interval(rate: float, n: int, confidence: float = 0.95) -> tuple[float, float]:
    """The Wilson interval of a rate over ``n`` samples, from the rate itself (rates here are k/n)."""
    return wilson_interval(int(round(rate * n)), n, confidence)


def budget_row(budget: Budget, summary: dict) -> dict:
    """One row of the results table: the budget's settings next to its summary."""
    return {"label": budget.label, "kind": budget.kind, "mask_steps": budget.mask_steps,
            "edit_steps": budget.edit_steps, "budget_nfe": budget.nfe, "fraction": budget.fraction, **summary}


def fraction_label(fraction: Optional[float]) -> str:
    """1, 1/2, 1/4 ... for the table."""
    return "-" if fraction is None else ("1" if fraction >= 1 else f"1/{math.floor(1 / fraction + 0.5)}")


def _pct(x: Optional[float]) -> str:
    return "-" if x is None else f"{100 * x:.1f}%"


def _num(x: Optional[float], digits: int = 1) -> str:
    return "-" if x is None else f"{x:.{digits}f}"


def _pct_ci(row: dict, key: str) -> str:
    """``86.3% [82.0, 89.8]``: the rate and its Wilson 95% interval (percent)."""
    rate, n = row.get(key), row.get("n")
    if rate is None or not n:
        return _pct(rate)
    lo, hi = (row.get("ci95") or {}).get(key) or rate_interval(rate, n)
    return f"{100 * rate:.1f}% [{100 * lo:.1f}, {100 * hi:.1f}]"


def _points_ci(diff: float, ci: Sequence[float]) -> str:
    return f"{100 * diff:+.1f} [{100 * ci[0]:+.1f}, {100 * ci[1]:+.1f}]"


def _p(p: float) -> str:
    return f"{p:.2g}" if p < 0.001 else f"{p:.3f}"


def _order(rows: Sequence[dict]) -> list[dict]:
    """Largest budget first, mask-only before mask+edit at equal budget, then by model."""
    return sorted(rows, key=lambda r: (-(r.get("fraction") or r["budget_nfe"]), r["edit_steps"] > 0,
                                       str(r.get("model", "")), r["label"]))


def _same_fraction(a: dict, b: dict) -> bool:
    fa, fb = a.get("fraction"), b.get("fraction")
    if fa is None or fb is None:
        return fa is None and fb is None and a["budget_nfe"] == b["budget_nfe"]
    return abs(float(fa) - float(fb)) < 1e-9


def _paired_outcomes(x: dict, y: dict, key: str) -> Optional[tuple[list, list]]:
    """The outcome ``key`` of rows x and y on the samples both ran, matched by sample id."""
    ox, oy = x.get("outcomes") or {}, y.get("outcomes") or {}
    if key not in ox or key not in oy:
        return None
    if ox["ids"] == oy["ids"]:
        return ox[key], oy[key]
    where = {sid: i for i, sid in enumerate(oy["ids"])}
    pairs = [(ox[key][i], oy[key][where[sid]]) for i, sid in enumerate(ox["ids"]) if sid in where]
    return [a for a, _ in pairs], [b for _, b in pairs]


def _compare(x: dict, y: dict, key: str) -> Optional[dict]:
    paired = _paired_outcomes(x, y, key)
    result = paired_comparison(*paired) if paired else None
    return None if result is None else result.as_dict()


def paired_comparisons(rows: Sequence[dict], baseline_model: Optional[str] = "base") -> list[dict]:
    """Every mask + edit row against mask-only decoding at the same fraction and at the full budget,
    of its own model and of ``baseline_model`` when rows of it are present (the demo's base model),
    as paired differences over the same samples: for ``right`` (and ``valid`` where the task has it)
    the four counts, the difference of the rates with Newcombe's 95% interval and the exact McNemar
    p-value. Samples are matched by id; ``n`` is the number both rows ran.

    Rows without per-sample ``outcomes`` (written before they were kept) are left out."""
    ordered = _order(rows)
    out = []
    for x in ordered:
        if x["kind"] != "mask_edit" or not x.get("outcomes"):
            continue
        refs: list[tuple[dict, str]] = []
        for model in dict.fromkeys([x.get("model"), baseline_model]):
            own = [r for r in ordered if r.get("model") == model and r["kind"] == "mask_only" and r.get("outcomes")]
            same = [r for r in own if _same_fraction(r, x)]
            full = [r for r in own if (r.get("fraction") or 0) >= 1 - 1e-9]
            for ref, what in [(r, "same budget") for r in same] + [(r, "full budget") for r in full]:
                if all(ref is not seen for seen, _ in refs):
                    refs.append((ref, what))
        for ref, what in refs:
            entry = {"model": x.get("model"), "label": x["label"], "fraction": x.get("fraction"),
                     "vs_model": ref.get("model"), "vs_label": ref["label"], "vs_fraction": ref.get("fraction"),
                     "vs": what, "right": _compare(x, ref, "right_after"), "valid": _compare(x, ref, "valid_after")}
            if entry["right"] is not None:
                out.append(entry)
    return out


def _main_table(rows: Sequence[dict]) -> list[str]:
    has_model = any("model" in r for r in rows)
    has_valid = any("valid_after" in r for r in rows)
    has_skeleton = any("skeleton_valid_after" in r for r in rows)
    head = (["model"] if has_model else []) + ["budget", "fraction", "mask", "edit", "NFE used",
                                               "right (draft)", "right (final)"]
    if has_valid:
        head += ["valid (draft)", "valid (final)"]
    if has_skeleton:
        head += ["phrasing ok (draft)", "phrasing ok (final)"]
    head += ["edits/sample", "s/sample", "n", "errors"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in _order(rows):
        edits = r.get("mean_edits") or {}
        n_edits = sum(v for v in edits.values() if v is not None) if edits else None
        cells = ([str(r.get("model", "-"))] if has_model else []) + [
            r["label"], fraction_label(r.get("fraction")), str(r["mask_steps"]), str(r["edit_steps"]),
            _num(r.get("mean_nfe")), _pct_ci(r, "accuracy_before"), _pct_ci(r, "accuracy_after")]
        if has_valid:
            cells += [_pct_ci(r, "valid_before"), _pct_ci(r, "valid_after")]
        if has_skeleton:
            cells += [_pct_ci(r, "skeleton_valid_before"), _pct_ci(r, "skeleton_valid_after")]
        cells += [_num(n_edits), _num(r.get("time_per_sample_s"), 3), str(r["n"]), str(r["n_errors"])]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def _named(model: Optional[str], label: str, fraction: Optional[float]) -> str:
    return (f"{model} " if model else "") + f"{label} ({fraction_label(fraction)})"


def comparison_table(rows: Sequence[dict], baseline_model: Optional[str] = "base") -> list[str]:
    """Markdown lines of :func:`paired_comparisons` (none when there is nothing to compare)."""
    comparisons = paired_comparisons(rows, baseline_model)
    if not comparisons:
        return []
    has_valid = any(c["valid"] for c in comparisons)
    head = ["mask + edit", "against", "n", "right: Δ points [95% CI]", "gained / lost", "McNemar p"]
    if has_valid:
        head += ["valid: Δ points [95% CI]", "gained / lost", "McNemar p"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for c in comparisons:
        cells = [_named(c["model"], c["label"], c["fraction"]),
                 _named(c["vs_model"], c["vs_label"], c["vs_fraction"]) + f", {c['vs']}", str(c["right"]["n"])]
        for metric in ("right", "valid") if has_valid else ("right",):
            m = c[metric]
            cells += (["-", "-", "-"] if m is None else
                      [_points_ci(m["diff"], m["ci"]), f"{m['only_x']} / {m['only_y']}", _p(m["p_value"])])
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def edit_effects_table(rows: Sequence[dict]) -> list[str]:
    """Markdown lines: per mask + edit row, what editing did to the drafts (fixed = wrong draft, right
    final; broken = right draft, wrong final), final against draft as a paired difference, and the
    edits per sample by kind. None when no row edits or keeps its outcomes."""
    edited = [r for r in _order(rows) if r["kind"] == "mask_edit" and r.get("edit_effects") and r.get("n")]
    if not edited:
        return []
    has_model = any("model" in r for r in edited)
    metrics = ["right"] + (["valid"] if any("valid" in r["edit_effects"] for r in edited) else [])
    head = (["model"] if has_model else []) + ["budget", "fraction"]
    for m in metrics:
        head += [f"{m}: fixed", "broken", "kept right" if m == "right" else "kept valid",
                 "kept wrong" if m == "right" else "kept invalid", "final − draft, points [95% CI]", "McNemar p"]
    head += ["replace/sample", "delete/sample", "insert/sample", "n"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in edited:
        cells = ([str(r.get("model", "-"))] if has_model else []) + [r["label"], fraction_label(r.get("fraction"))]
        for m in metrics:
            e = r["edit_effects"].get(m)
            if e is None:
                cells += ["-"] * 6
                continue
            fixed, broken = e["wrong_to_right"], e["right_to_wrong"]
            n = fixed + broken + e["right_kept"] + e["wrong_kept"]
            diff, lo, hi = newcombe_paired_interval(e["right_kept"], fixed, broken, e["wrong_kept"])
            cells += [str(fixed), f"{broken} ({100 * broken / n:.1f}%)", str(e["right_kept"]), str(e["wrong_kept"]),
                      _points_ci(diff, (lo, hi)), _p(mcnemar_exact(fixed, broken))]
        edits = r.get("mean_edits") or {}
        cells += [_num(edits.get(k), 2) for k in EDIT_KINDS] + [str(r["n"])]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def table_markdown(rows: Sequence[dict], baseline_model: Optional[str] = "base") -> str:
    """The results in Markdown: the main table (every rate with its Wilson 95% interval), then,
    where rows keep per-sample outcomes, the paired comparisons of each mask + edit row and what the
    edits did to the drafts (docs/statistics.md says how to read them).

    Main table: largest budget first, mask-only before mask+edit at equal budget; a ``model`` column
    appears when rows carry one (several checkpoints in one table); the toy task adds whole-answer
    validity and phrasing validity (numbers ignored), draft and final."""
    lines = _main_table(rows)
    comparisons = comparison_table(rows, baseline_model)
    if comparisons:
        lines += ["", "Paired comparisons (same problems; Δ = mask + edit minus the other row, Newcombe 95% CI; "
                      "gained / lost = problems only the mask + edit row / only the other row gets right):", ""]
        lines += comparisons
    effects = edit_effects_table(rows)
    if effects:
        lines += ["", "What the edits did (draft before editing against the final text, same samples):", ""]
        lines += effects
    return "\n".join(lines) + "\n"


def json_dumps(obj) -> str:
    """JSON indented like ``indent=2``, except that a list of numbers or strings stays on one line:
    a results file keeps its per-sample outcomes without one line per sample."""
    def render(value, depth: int) -> str:
        pad, inner = "  " * depth, "  " * (depth + 1)
        if isinstance(value, dict) and value:
            items = [f"{inner}{json.dumps(str(k))}: {render(v, depth + 1)}" for k, v in value.items()]
            return "{\n" + ",\n".join(items) + f"\n{pad}}}"
        if isinstance(value, (list, tuple)) and value:
            if all(not isinstance(v, (dict, list, tuple)) for v in value):
                return json.dumps(list(value), ensure_ascii=False, default=str)
            return "[\n" + ",\n".join(f"{inner}{render(v, depth + 1)}" for v in value) + f"\n{pad}]"
        return json.dumps(value, ensure_ascii=False, default=str)
    return render(obj, 0)


def plot_accuracy_vs_nfe(rows: Sequence[dict], path: str | Path, title: Optional[str] = None) -> Path:
    """Write :func:`render_accuracy_vs_nfe` to a local PNG file; returns its path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(render_accuracy_vs_nfe(rows, title))
    return path


def render_accuracy_vs_nfe(rows: Sequence[dict], title: Optional[str] = None) -> bytes:
    """Final accuracy against NFE actually used per sample (mask + edit steps run), one line per
    decoder; whole-answer validity dashed when the task has it; every point with its Wilson 95%
    interval as an error bar. Log-2 x axis: budgets halve.

    Returns the PNG bytes, so a caller can put them anywhere (a local file, object storage)."""
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(10, 4.5))
    names = {"mask_only": "mask only", "mask_edit": "mask + edit"}
    colours = iter(["tab:blue", "tab:orange", "tab:gray", "tab:green", "tab:red", "tab:purple"])
    groups: dict[tuple, list] = {}
    for r in rows:  # one line per (model, decoder); rows without a model form one group per decoder
        groups.setdefault((str(r.get("model", "")), r["kind"]), []).append(r)
    for (model, kind), members in groups.items():
        name, colour = (f"{model}, " if model else "") + names.get(kind, kind), next(colours)
        points = sorted(((r.get("mean_nfe") or r["budget_nfe"], r) for r in members), key=lambda p: p[0])
        xs = [x for x, _ in points]
        for key, style, what in (("accuracy_after", "o-", "answer right"), ("valid_after", "s--", "whole answer valid"),
                                 ("skeleton_valid_after", "^:", "phrasing valid (numbers ignored)")):
            if not all(r.get(key) is not None for _, r in points):
                continue
            ys = [r[key] for _, r in points]
            bounds = [(r.get("ci95") or {}).get(key) or rate_interval(r[key], r["n"]) for _, r in points]
            ax.errorbar(xs, ys, yerr=[[y - lo for y, (lo, _) in zip(ys, bounds)],
                                      [hi - y for y, (_, hi) in zip(ys, bounds)]],
                        fmt=style, color=colour, capsize=3, elinewidth=0.8, label=f"{name}: {what}")
    ax.set_xscale("log", base=2)
    ticks = sorted({r["budget_nfe"] for r in rows})  # the budgets; points sit at the NFE actually used
    ax.set_xticks(ticks, [f"{t:g}" for t in ticks])
    ax.minorticks_off()
    ax.set_xlabel("NFE per sample (mask + edit steps run)")
    ax.set_ylabel("accuracy (bars: 95% Wilson interval)")
    ax.set_ylim(-0.02, 1.02)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5))
    if title:
        ax.set_title(title)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=120)
    plt.close(fig)
    return buf.getvalue()

