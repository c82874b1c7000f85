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
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional, Sequence

from medlm.sampling import DecodeConfig, check_decode_options, generate
from medlm.tasks import get_task
from medlm.tokenizer import chat_prompt_ids, decode_response, special_ids

__all__ = [
    "Budget", "budget_table", "load_samples", "load_eval_model", "checkpoint_has_insertion_head",
    "check_budget", "grade_text", "humaneval_completion", "evaluate_samples", "summarise",
    "score_decoded", "sample_seed", "budget_row", "table_markdown", "fraction_label", "plot_accuracy_vs_nfe",
    "render_accuracy_vs_nfe", "DEFAULT_FRACTIONS",
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
           fraction: Optional[float] = None) -> "Budget":
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


def grade_text(task: str, sample: dict, text: str, *, timeout_s: float = 5.0) -> dict:
    """Grade one model text: ``{"correct": bool, ...task details}``; toy adds ``valid`` (the whole
    answer is one of the valid phrasings), humaneval ``reason`` ("passed", "timeout", "failed: ...")."""
    grader = get_task(task).grade
    if task == "toy":
        return dict(grader(_toy_problem(sample), text))
    if task == "gsm8k":
        return dict(grader({"answer": sample["reference"]["answer"]}, text))
    return dict(grader(sample["reference"], humaneval_completion(text), timeout_s=timeout_s))


def _safe_grade(task: str, sample: dict, text: str, timeout_s: float) -> tuple[dict, Optional[dict]]:
    try:
        return grade_text(task, sample, text, timeout_s=timeout_s), None
    except Exception as e:  # a grader bug or a malformed reference fails this sample only
        return {"correct": False}, {"reason": "grade_failed", "detail": f"{type(e).__name__}: {e}"}


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
                  edits: dict, time_s: float, grade_timeout_s: float = 5.0) -> dict:
    """The record of one decoded sample: the draft and the refined text graded separately."""
    before, err_before = _safe_grade(task, sample, draft, grade_timeout_s)
    after, err_after = _safe_grade(task, sample, refined, grade_timeout_s)
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
        results = []
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
                     decode_options: Optional[dict] = None) -> list[dict]:
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
                time_s=res.mask_time_s + res.edit_time_s, grade_timeout_s=grade_timeout_s)
        if on_batch is not None:
            on_batch(min(start + batch_size, len(todo)), len(todo))
    return records  # type: ignore[return-value]


# --------------------------------------------------------------------------- summaries


def _mean(values: Sequence[float]) -> Optional[float]:
    return sum(values) / len(values) if values else None


def summarise(records: Sequence[dict]) -> dict:
    """Aggregate records: accuracies over all ``n`` samples (an errored sample counts as wrong);
    NFE, edits and time over the samples that decoded."""
    ok = [r for r in records if r.get("draft") is not None]
    reasons: dict[str, int] = {}
    for r in records:
        if r.get("error"):
            reasons[r["error"]["reason"]] = reasons.get(r["error"]["reason"], 0) + 1
    summary = {
        "n": len(records),
        "n_errors": sum(reasons.values()),
        "errors_by_reason": reasons,
        "accuracy_before": _mean([float(r["correct_before"]) for r in records]),
        "accuracy_after": _mean([float(r["correct_after"]) for r in records]),
        "mean_mask_nfe": _mean([r["nfe"]["mask"] for r in ok]),
        "mean_edit_steps": _mean([r["nfe"]["edit"] for r in ok]),
        "mean_nfe": _mean([r["nfe"]["mask"] + r["nfe"]["edit"] for r in ok]),
        "mean_edits": {k: _mean([r["edits"][k] for r in ok]) for k in ("replace", "delete", "insert")},
        "time_per_sample_s": _mean([r["time_s"] for r in ok]),
    }
    if records and all("valid_after" in r for r in records):
        summary["valid_before"] = _mean([float(r["valid_before"]) for r in records])
        summary["valid_after"] = _mean([float(r["valid_after"]) for r in records])
    if records and all("skeleton_valid_after" in r for r in records):
        summary["skeleton_valid_before"] = _mean([float(r["skeleton_valid_before"]) for r in records])
        summary["skeleton_valid_after"] = _mean([float(r["skeleton_valid_after"]) for r in records])
    return summary


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


def table_markdown(rows: Sequence[dict]) -> str:
    """A Markdown table, largest budget first, mask-only before mask+edit at equal budget.

    A ``model`` column appears when rows carry one (several checkpoints in one table); the toy
    task adds whole-answer validity and phrasing validity (numbers ignored), draft and final."""
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
    order = sorted(rows, key=lambda r: (-(r.get("fraction") or r["budget_nfe"]), r["edit_steps"] > 0,
                                        str(r.get("model", "")), r["label"]))
    for r in order:
        edits = r.get("mean_edits") or {}
        n_edits = sum(v for v in edits.values() if v is not None) if edits else None
        cells = ([str(r.get("model", "-"))] if has_model else []) + [
            r["label"], fraction_label(r.get("fraction")), str(r["mask_steps"]), str(r["edit_steps"]),
            _num(r.get("mean_nfe")), _pct(r.get("accuracy_before")), _pct(r.get("accuracy_after"))]
        if has_valid:
            cells += [_pct(r.get("valid_before")), _pct(r.get("valid_after"))]
        if has_skeleton:
            cells += [_pct(r.get("skeleton_valid_before")), _pct(r.get("skeleton_valid_after"))]
        cells += [_num(n_edits), _num(r.get("time_per_sample_s"), 3), str(r["n"]), str(r["n_errors"])]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def plot_accuracy_vs_nfe(rows: Sequence[dict], path: str | Path, title: Optional[str] = None) -> Path:
    """Write :func:`render_accuracy_vs_nfe` to a local PNG file; returns its path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(render_accuracy_vs_nfe(rows, title))
    return path


def render_accuracy_vs_nfe(rows: Sequence[dict], title: Optional[str] = None) -> bytes:
    """Final accuracy against NFE actually used per sample (mask + edit steps run), one line per
    decoder; whole-answer validity dashed when the task has it. Log-2 x axis: budgets halve.

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
        ax.plot(xs, [r["accuracy_after"] for _, r in points], "o-", color=colour, label=f"{name}: answer right")
        if all(r.get("valid_after") is not None for _, r in points):
            ax.plot(xs, [r["valid_after"] for _, r in points], "s--", color=colour,
                    label=f"{name}: whole answer valid")
        if all(r.get("skeleton_valid_after") is not None for _, r in points):
            ax.plot(xs, [r["skeleton_valid_after"] for _, r in points], "^:", color=colour,
                    label=f"{name}: phrasing valid (numbers ignored)")
    ax.set_xscale("log", base=2)
    ticks = sorted({r["budget_nfe"] for r in rows})  # the budgets; points sit at the NFE actually used
    ax.set_xticks(ticks, [f"{t:g}" for t in ticks])
    ax.minorticks_off()
    ax.set_xlabel("NFE per sample (mask + edit steps run)")
    ax.set_ylabel("accuracy")
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

