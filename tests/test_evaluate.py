"""Evaluation harness: budgets, grading of known texts, bad input, and a real run through Ray + the CLI.

The model is a tiny random checkpoint, so its answers are wrong and uncontrolled: grading is tested
on texts we write (``grade_text`` / ``score_decoded``), decoding and bookkeeping on the model's own output.
"""

from __future__ import annotations

import json
import os
import shutil

import pytest
import ray
from safetensors.torch import load_file, save_file
from trained_heads import train_edit_head

from jobs import evaluate as eval_job
from jobs.init_model import cli as init_cli
from medlm.evaluation import (
    EDIT_KINDS,
    Budget,
    budget_row,
    budget_table,
    checkpoint_has_insertion_head,
    evaluate_samples,
    grade_text,
    json_dumps,
    load_eval_model,
    load_samples,
    paired_comparisons,
    render_accuracy_vs_nfe,
    score_decoded,
    summarise,
    table_markdown,
)
from medlm.stats import mcnemar_exact, newcombe_paired_interval, wilson_interval
from pipeline.eval import run_eval

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
HOSTILE_COMPLETION = "    while True:\n        pass\n"


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    path = tmp_path_factory.mktemp("eval") / "ckpt"
    assert init_cli(["--preset", "tiny", "--out", str(path)]) == 0
    train_edit_head(path)  # edit budgets are refused from an insertion head that never saw an edit label
    return path


@pytest.fixture(scope="module")
def headless_checkpoint(checkpoint, tmp_path_factory):
    """The same checkpoint with ``insert_head.weight`` removed from its safetensors file: what a
    plain masked-diffusion model (never given an edit head) looks like on disk."""
    path = tmp_path_factory.mktemp("eval") / "headless"
    shutil.copytree(checkpoint, path)
    weights = load_file(str(path / "model.safetensors"))
    del weights["insert_head.weight"]
    save_file(weights, str(path / "model.safetensors"), metadata={"format": "pt"})
    return path


@pytest.fixture(scope="module")
def model_and_tokenizer(checkpoint):
    return load_eval_model(checkpoint, device="cpu")


@pytest.fixture(scope="module")
def ray_run(checkpoint, tmp_path_factory):
    """One real evaluation through `python -m jobs.evaluate`-style config + Ray Data: 3 toy samples,
    two budgets (gen_len 16 at 1/4: mask4 vs mask2_edit2), into a folder holding an earlier run's samples."""
    out = tmp_path_factory.mktemp("eval") / "run"
    out.mkdir()
    (out / "samples_mask3_edit1.jsonl").write_text("{}\n")  # a budget this run does not evaluate
    previous_ci = os.environ.get("CI")
    os.environ["CI"] = "1"  # no progress bars in test logs
    ray.init(num_cpus=2, include_dashboard=False)
    try:
        rc = eval_job.cli([f"checkpoint={checkpoint}", "n_samples=3", "gen_len=16", "table=true",
                           "fractions=[0.25]", "batch_size=2", f"out_dir={out}", "seed=3"])
    finally:
        ray.shutdown()
        if previous_ci is None:
            os.environ.pop("CI", None)
        else:
            os.environ["CI"] = previous_ci
    assert rc == 0
    return out


def _read_jsonl(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


# --------------------------------------------------------------------------- budgets


def test_budget_table_gives_a_quarter_to_editing_but_at_least_three_steps_while_masking_keeps_half():
    table = budget_table(48)
    assert [(a.mask_steps, b.mask_steps, b.edit_steps) for a, b in table] == [
        (48, 36, 12), (24, 18, 6), (12, 9, 3), (6, 3, 3)]
    assert [(b.mask_steps, b.edit_steps) for _, b in budget_table(48, min_edit_steps=1)] == [
        (36, 12), (18, 6), (9, 3), (4, 2)]  # the plain quarter share
    assert [(b.mask_steps, b.edit_steps) for _, b in budget_table(8, fractions=(1, 1 / 2, 1 / 4))] == [
        (5, 3), (2, 2), (1, 1)]  # the floor never takes more than half
    for mask_only, mask_edit in table:
        assert mask_only.edit_steps == 0 and mask_only.nfe == mask_edit.nfe
        assert mask_edit.gen_len == 48 and mask_only.kind == "mask_only" and mask_edit.kind == "mask_edit"
    tiny = budget_table(4, fractions=(1 / 8,))[0]
    assert (tiny[0].mask_steps, tiny[1].mask_steps, tiny[1].edit_steps) == (1, 1, 1)  # each at least 1
    with pytest.raises(ValueError, match="edit_share"):
        budget_table(48, edit_share=1.0)
    with pytest.raises(ValueError, match="min_edit_steps"):
        budget_table(48, min_edit_steps=0)
    with pytest.raises(ValueError, match="fraction 2"):
        budget_table(48, fractions=(2,))
    with pytest.raises(ValueError, match="label"):
        Budget(4, 0, "bad/label")


# --------------------------------------------------------------------------- grading known texts


def test_toy_grading_separates_right_number_from_valid_answer():
    sample = load_samples("toy", 1, seed=5)[0]
    canonical = sample["reference"]["answers"][0]
    final = sample["reference"]["final"]
    assert grade_text("toy", sample, canonical) == {"correct": True, "final_correct": True, "valid": True,
                                                    "skeleton_valid": True}
    wrong = canonical.replace(f"#### {final}", f"#### {final + 1}")
    assert grade_text("toy", sample, wrong)["correct"] is False
    garbled = f"the answer is\n#### {final}"
    assert grade_text("toy", sample, garbled) == {"correct": True, "final_correct": True, "valid": False,
                                                  "skeleton_valid": False}

    record = score_decoded("toy", sample, Budget.of(3, 1), garbled, canonical, nfe={"mask": 3, "edit": 1},
                           edits={"replace": 2, "delete": 0, "insert": 1}, time_s=0.5)
    assert (record["correct_before"], record["correct_after"]) == (True, True)
    assert (record["valid_before"], record["valid_after"]) == (False, True)
    assert (record["skeleton_valid_before"], record["skeleton_valid_after"]) == (False, True)
    assert record["error"] is None and record["budget"] == "mask3_edit1"


def test_gsm8k_grading_compares_the_final_number():
    sample = {"id": "g1", "prompt": "How many?", "reference": {"answer": "3 + 4 = 7 apples\n#### 1,007"}}
    assert grade_text("gsm8k", sample, "so the total is 1007.")["correct"] is True
    assert grade_text("gsm8k", sample, "#### 1008")["correct"] is False


def test_humaneval_infinite_loop_is_a_timeout_and_the_next_sample_is_still_graded():
    from medlm.tasks.humaneval import load_humaneval

    problem = load_humaneval()[0]
    sample = {"id": problem["task_id"], "prompt": problem["prompt"], "reference": problem}
    kwargs = dict(nfe={"mask": 1, "edit": 0}, edits={"replace": 0, "delete": 0, "insert": 0}, time_s=0.0,
                  grade_timeout_s=1.0)
    records = [score_decoded("humaneval", sample, Budget.of(1), text, text, **kwargs)
               for text in (HOSTILE_COMPLETION, f"```python\n{problem['canonical_solution']}```")]
    assert records[0]["correct_after"] is False and records[0]["grade_after"]["reason"] == "timeout"
    assert records[1]["correct_after"] is True and records[1]["grade_after"]["reason"] == "passed"
    summary = summarise(records)
    assert summary["accuracy_after"] == 0.5 and summary["n_errors"] == 0


# --------------------------------------------------------------------------- summaries, intervals, paired tests


def _outcome_records(outcomes, *, edits=(0, 0, 0), ids=None):
    """Hand-made toy records: ``outcomes`` is one (draft right, final right, draft valid, final valid)
    tuple per sample."""
    ids = ids or [f"s{i}" for i in range(len(outcomes))]
    return [{"id": sid, "draft": "d", "correct_before": cb, "correct_after": ca, "valid_before": vb,
             "valid_after": va, "nfe": {"mask": 3, "edit": 1}, "time_s": 0.1, "error": None,
             "edits": dict(zip(EDIT_KINDS, edits))}
            for sid, (cb, ca, vb, va) in zip(ids, outcomes)]


def _row(budget, records, model=None):
    row = budget_row(budget, summarise(records))
    return row if model is None else {**row, "model": model}


def test_summary_keeps_wilson_intervals_edit_effects_and_every_sample_outcome():
    T, F = True, False
    records = _outcome_records([(T, T, F, T)] * 5 + [(F, T, F, F)] * 2 + [(T, F, T, F)] + [(F, F, F, F)] * 2,
                               edits=(2, 0, 1))
    records[-1].update(draft=None, refined=None, error={"reason": "decode_failed", "detail": "x"})
    s = summarise(records)
    assert (s["accuracy_before"], s["accuracy_after"]) == (0.6, 0.7)
    assert s["ci95"]["accuracy_after"] == list(wilson_interval(7, 10))
    assert s["ci95"]["valid_before"] == list(wilson_interval(1, 10))
    assert s["edit_effects"]["right"] == {"wrong_to_right": 2, "right_to_wrong": 1, "right_kept": 5, "wrong_kept": 2}
    assert s["edit_effects"]["valid"] == {"wrong_to_right": 5, "right_to_wrong": 1, "right_kept": 0, "wrong_kept": 4}
    o = s["outcomes"]
    assert o["ids"] == [f"s{i}" for i in range(10)]
    assert o["right_before"] == [1] * 5 + [0, 0, 1, 0, 0] and o["right_after"] == [1] * 7 + [0, 0, 0]
    assert o["edits"] == {"replace": [2] * 10, "delete": [0] * 10, "insert": [1] * 10}
    assert "valid_after" not in summarise([{k: v for k, v in r.items() if not k.startswith("valid")}
                                           for r in records])["outcomes"]  # gsm8k / humaneval: right only


def test_paired_comparisons_pair_by_sample_id_against_same_budget_full_budget_and_base():
    T, F = True, False
    (full, full_edit), (half, half_edit) = budget_table(8, fractions=(1, 0.5))
    ids = [f"s{i}" for i in range(12)]
    # refiner mask + edit at 1/2: right on s0-s9; its mask-only at 1/2 right on s0-s3 and s10, s11
    edit = _outcome_records([(F, T, F, T)] * 10 + [(T, F, T, F)] * 2, ids=ids)
    half_only = _outcome_records([(T, T, F, F)] * 4 + [(F, F, F, F)] * 6 + [(T, T, T, T)] * 2, ids=ids)
    every = _outcome_records([(T, T, T, T)] * 12, ids=ids)
    base_half = list(reversed(_outcome_records([(F, F, F, F)] * 12, ids=ids)))  # another order: matched by id
    rows = [_row(full, every, "refiner"), _row(half, half_only, "refiner"), _row(half_edit, edit, "refiner"),
            _row(full, every, "base"), _row(half, base_half, "base"), _row(full, every, "other")]
    got = {(c["vs_model"], c["vs_label"]): c for c in paired_comparisons(rows) if c["label"] == half_edit.label}
    assert set(got) == {("refiner", half.label), ("refiner", full.label), ("base", half.label), ("base", full.label)}
    same = got[("refiner", half.label)]
    assert same["vs"] == "same budget" and same["right"]["n"] == 12
    assert (same["right"]["only_x"], same["right"]["only_y"]) == (6, 2)  # s4-s9 gained, s10-s11 lost
    assert same["right"]["p_value"] == mcnemar_exact(6, 2) and same["right"]["diff"] == pytest.approx(4 / 12)
    assert (same["valid"]["only_x"], same["valid"]["only_y"]) == (10, 2)
    base = got[("base", half.label)]["right"]
    assert (base["only_x"], base["only_y"], base["both"]) == (10, 0, 0) and base["ci"][0] > 0
    assert got[("base", full.label)]["vs"] == "full budget"


def test_table_shows_intervals_paired_comparisons_and_what_the_edits_did():
    T, F = True, False
    mask_only, mask_edit = budget_table(8, fractions=(0.5,))[0]
    rows = [_row(mask_only, _outcome_records([(T, T, T, T)] * 5 + [(F, F, F, F)] * 5)),
            _row(mask_edit, _outcome_records([(T, T, F, T)] * 4 + [(F, T, F, T)] * 3 + [(T, F, T, F)]
                                             + [(F, F, F, F)] * 2, edits=(1, 0, 2)))]
    table = table_markdown(rows)
    lo, hi = wilson_interval(5, 10)
    assert f"| 50.0% [{100 * lo:.1f}, {100 * hi:.1f}] |" in table  # mask-only right (draft and final)
    assert "Paired comparisons" in table and "What the edits did" in table
    # mask + edit's final text is right on s0-s6, mask-only on s0-s4: 5 both, 2 gained, 0 lost, 3 neither
    diff, clo, chi = newcombe_paired_interval(5, 2, 0, 3)
    assert f"| {mask_edit.label} (1/2) | {mask_only.label} (1/2), same budget | 10 | +20.0 [{100 * clo:+.1f}, " \
           f"{100 * chi:+.1f}] | 2 / 0 | 0.500 |" in table
    assert "| 3 | 1 (10.0%) | 4 | 2 |" in table  # right: fixed, broken (share of samples), kept right, kept wrong
    assert "| 1.00 | 0.00 | 2.00 | 10 |" in table  # replace / delete / insert per sample, n
    # rows written before outcomes were kept: intervals from the rate and n, no paired sections
    old = [{k: v for k, v in r.items() if k not in ("outcomes", "ci95", "edit_effects")} for r in rows]
    old_table = table_markdown(old)
    assert f"| 50.0% [{100 * lo:.1f}, {100 * hi:.1f}] |" in old_table and "Paired" not in old_table
    assert render_accuracy_vs_nfe(old)[:8] == PNG_MAGIC
    assert "What the edits did" not in table_markdown([budget_row(mask_edit, summarise([]))])  # no samples


def test_json_dumps_keeps_per_sample_lists_on_one_line():
    obj = {"rows": [{"outcomes": {"ids": ["a", "b"], "right": [1, 0]}, "ci": [0.1, 0.9], "empty": []}], "n": 2}
    text = json_dumps(obj)
    assert json.loads(text) == obj
    assert '"ids": ["a", "b"]' in text and '"right": [1, 0]' in text and len(text.splitlines()) == 13


# --------------------------------------------------------------------------- decoding with the real model


def test_evaluate_samples_records_budgets_and_keeps_going_past_a_too_long_prompt(model_and_tokenizer):
    model, tok = model_and_tokenizer
    short, too_long = load_samples("humaneval", 2)  # HumanEval/1's prompt alone fills most of 256 positions
    records = evaluate_samples(model, tok, [too_long, short], Budget.of(3, 2), "humaneval", batch_size=2,
                               gen_len=32, grade_timeout_s=2.0)
    assert [r["id"] for r in records] == ["HumanEval/1", "HumanEval/0"]
    assert records[0]["error"]["reason"] == "too_long" and "256 positions" in records[0]["error"]["detail"]
    assert records[1]["error"] is None and records[1]["nfe"]["mask"] == 3 and records[1]["nfe"]["edit"] <= 2
    assert isinstance(records[1]["refined"], str) and records[1]["grade_after"]["reason"]
    summary = summarise(records)
    assert summary["n"] == 2 and summary["errors_by_reason"] == {"too_long": 1}
    assert summary["mean_mask_nfe"] == 3  # averaged over the sample that decoded only
    assert summary["accuracy_after"] == records[1]["correct_after"] / 2  # the failed sample counts as wrong


def test_decoding_is_the_same_alone_or_batched(model_and_tokenizer):
    model, tok = model_and_tokenizer
    samples = load_samples("toy", 3)
    together = evaluate_samples(model, tok, samples, Budget.of(4, 1), "toy", batch_size=3, gen_len=16, seed=1)
    alone = evaluate_samples(model, tok, samples[1:2], Budget.of(4, 1), "toy", batch_size=1, gen_len=16, seed=1)
    assert together[1]["refined"] == alone[0]["refined"] and together[1]["draft"] == alone[0]["draft"]


# --------------------------------------------------------------------------- bad input


def test_unknown_task_is_refused_naming_the_known_ones(model_and_tokenizer, checkpoint, tmp_path):
    model, tok = model_and_tokenizer
    with pytest.raises(ValueError, match="unknown task 'mbpp'.*gsm8k, humaneval, toy"):
        evaluate_samples(model, tok, [], Budget.of(4), "mbpp", gen_len=16)
    with pytest.raises(ValueError, match="unknown task 'mbpp'"):
        run_eval(checkpoint, "mbpp", [Budget.of(4, gen_len=16)], 2, out_dir=tmp_path / "out")
    assert not (tmp_path / "out").exists()  # refused before any work


def test_budget_smaller_than_the_blocks_is_refused_before_any_work(model_and_tokenizer, checkpoint, tmp_path):
    model, tok = model_and_tokenizer
    with pytest.raises(ValueError, match=r"budget 'mask4_edit2'.*4 mask steps is smaller than the 6 blocks"):
        evaluate_samples(model, tok, load_samples("toy", 1), Budget.of(4, 2), "toy", gen_len=48, block_size=8)
    with pytest.raises(ValueError, match="smaller than the 6 blocks"):
        run_eval(checkpoint, "toy", [Budget.of(4, 2, gen_len=48)], 2, out_dir=tmp_path / "out", block_size=8)
    assert not (tmp_path / "out").exists()  # refused before any work


def test_checkpoint_without_insertion_head_refuses_edit_budgets(headless_checkpoint, tmp_path):
    assert not checkpoint_has_insertion_head(headless_checkpoint)
    model, tok = load_eval_model(headless_checkpoint, device="cpu")
    assert not hasattr(model, "insert_head")  # not the random weights from_pretrained filled in
    samples = load_samples("toy", 2)
    with pytest.raises(ValueError, match="no insertion head"):
        evaluate_samples(model, tok, samples, Budget.of(3, 1), "toy", gen_len=16)
    with pytest.raises(ValueError, match="no insertion head"):
        run_eval(headless_checkpoint, "toy", [Budget.of(3, 1, gen_len=16)], 2, out_dir=tmp_path / "out")
    assert not (tmp_path / "out").exists()
    mask_only = evaluate_samples(model, tok, samples, Budget.of(3), "toy", gen_len=16)
    assert [r["nfe"] for r in mask_only] == [{"mask": 3, "edit": 0}] * 2  # a mask-only model still evaluates


def test_config_rejects_unknown_keys_and_flags_override(capsys):
    assert eval_job.cli(["checkpoint=/x", "mask_step=4"]) == 2
    assert "unknown config key 'mask_step'" in capsys.readouterr().err
    cfg = eval_job.parse_args(["--config", "jobs/configs/evaluate.yaml", "task=gsm8k", "--checkpoint", "/ck",
                               "--mask-steps", "9", "--edit-steps", "3"])
    assert (cfg.task, cfg.checkpoint, cfg.mask_steps, cfg.edit_steps, cfg.table) == ("gsm8k", "/ck", 9, 3, False)
    assert [b.label for b in eval_job.budgets_of(cfg)] == ["mask9_edit3"]


# --------------------------------------------------------------------------- the distributed run


def test_ray_run_writes_one_jsonl_per_budget_with_complete_records(ray_run):
    summary = json.loads((ray_run / "summary.json").read_text())
    labels = [row["label"] for row in summary["rows"]]
    assert labels == ["mask4", "mask2_edit2"]
    assert sorted(p.name for p in ray_run.glob("samples_*.jsonl")) == ["samples_mask2_edit2.jsonl", "samples_mask4.jsonl"]
    for row in summary["rows"]:
        records = _read_jsonl(ray_run / f"samples_{row['label']}.jsonl")
        assert [r["id"] for r in records] == [f"toy-test-{i:06d}" for i in range(3)]  # sample order kept
        for r in records:
            assert {"prompt", "draft", "refined", "correct_before", "correct_after", "valid_before", "valid_after",
                    "nfe", "edits", "time_s", "error"} <= set(r)
            assert r["budget"] == row["label"] and r["error"] is None
            assert r["nfe"]["mask"] == row["mask_steps"] and 0 <= r["nfe"]["edit"] <= row["edit_steps"]
        # summary arithmetic: every rate is the mean of the records
        for key in ("correct_before", "correct_after", "valid_before", "valid_after"):
            rate_key = key.replace("correct", "accuracy")
            assert row[rate_key] == pytest.approx(sum(r[key] for r in records) / len(records))
        assert row["mean_edit_steps"] == pytest.approx(sum(r["nfe"]["edit"] for r in records) / 3)
        assert row["n"] == 3 and row["n_errors"] == 0
        # the summary alone recomputes every paired test: each sample's outcomes and edits, in sample order
        assert row["outcomes"]["ids"] == [r["id"] for r in records]
        assert row["outcomes"]["right_after"] == [int(r["correct_after"]) for r in records]
        assert row["outcomes"]["valid_before"] == [int(r["valid_before"]) for r in records]
        assert row["outcomes"]["edits"]["insert"] == [r["edits"]["insert"] for r in records]
    mask_only = _read_jsonl(ray_run / "samples_mask4.jsonl")
    assert all(r["draft"] == r["refined"] and r["nfe"]["edit"] == 0 for r in mask_only)  # mask-only never edits
    assert summary["rows"][0]["mean_edits"] == {"replace": 0, "delete": 0, "insert": 0}


def test_ray_run_writes_table_and_png_plot(ray_run):
    assert (ray_run / "accuracy_vs_nfe.png").read_bytes()[:8] == PNG_MAGIC
    table = (ray_run / "table.md").read_text()
    assert "| mask4 | 1/4 | 4 | 0 |" in table and "| mask2_edit2 | 1/4 | 2 | 2 |" in table
    summary = json.loads((ray_run / "summary.json").read_text())
    assert table == table_markdown(summary["rows"])
    assert "What the edits did" in table and "Paired comparisons" in table
    assert [(c["label"], c["vs_label"], c["vs"], c["right"]["n"]) for c in summary["comparisons"]] == [
        ("mask2_edit2", "mask4", "same budget", 3)]
    assert summary["n_samples"] == 3 and summary["checkpoint_hash"] and summary["split"] == "test"
