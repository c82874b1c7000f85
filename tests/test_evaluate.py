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

from jobs import evaluate as eval_job
from jobs.init_model import cli as init_cli
from medlm.evaluation import (
    Budget,
    budget_table,
    checkpoint_has_insertion_head,
    evaluate_samples,
    grade_text,
    load_eval_model,
    load_samples,
    score_decoded,
    summarise,
    table_markdown,
)
from pipeline.eval import run_eval

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
HOSTILE_COMPLETION = "    while True:\n        pass\n"


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    path = tmp_path_factory.mktemp("eval") / "ckpt"
    assert init_cli(["--preset", "tiny", "--out", str(path)]) == 0
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
    mask_only = _read_jsonl(ray_run / "samples_mask4.jsonl")
    assert all(r["draft"] == r["refined"] and r["nfe"]["edit"] == 0 for r in mask_only)  # mask-only never edits
    assert summary["rows"][0]["mean_edits"] == {"replace": 0, "delete": 0, "insert": 0}


def test_ray_run_writes_table_and_png_plot(ray_run):
    assert (ray_run / "accuracy_vs_nfe.png").read_bytes()[:8] == PNG_MAGIC
    table = (ray_run / "table.md").read_text()
    assert "| mask4 | 1/4 | 4 | 0 |" in table and "| mask2_edit2 | 1/4 | 2 | 2 |" in table
    summary = json.loads((ray_run / "summary.json").read_text())
    assert table == table_markdown(summary["rows"])
    assert summary["n_samples"] == 3 and summary["checkpoint_hash"] and summary["split"] == "test"
