"""The demo's own logic without running it: settings that cannot fit are refused before Ray starts,
and the comparison at each budget fraction is computed from the evaluation rows."""

import pytest

from medlm.evaluation import budget_table
from medlm.tasks.toy import generate_problems
from medlm.tokenizer import build_default_tokenizer
from pipeline.demo import DemoConfig, check_fits, compare, comparison_lines


def test_default_and_quick_configs_pass_their_checks():
    DemoConfig().check()
    DemoConfig.quick_preset().check()


@pytest.mark.parametrize("overrides, named", [
    ({"gen_len": 4}, "gen_len=4"),  # 1/8 of 4 steps repeats budgets
    ({"train_problems": 0}, "train_problems=0"),
    ({"test_problems": 0}, "test_problems=0"),
    ({"draft_rows": 1, "num_workers": 2}, "draft_rows=1"),
    ({"gen_len": 2048}, "gen_len=2048"),  # no room for a prompt in max_len
    ({"regenerate_with": "parquet"}, "regenerate_with='parquet'"),
])
def test_configs_that_cannot_fit_are_refused_naming_the_setting(overrides, named):
    with pytest.raises(ValueError, match=named):
        DemoConfig(**overrides).check()


def test_a_gen_len_shorter_than_the_longest_answer_is_refused():
    tok = build_default_tokenizer()
    problems = generate_problems(50, seed=0, split="test")
    check_fits(DemoConfig(gen_len=48), tok, problems)
    with pytest.raises(ValueError, match=r"gen_len=20 is shorter than the longest reference answer"):
        check_fits(DemoConfig(gen_len=20), tok, problems)


def test_comparison_reports_deltas_in_points_at_every_fraction():
    rows = []
    for i, (mask_only, mask_edit) in enumerate(budget_table(48)):
        f = mask_only.fraction
        rows.append({"model": "base", "kind": "mask_only", "fraction": f, "label": mask_only.label,
                     "budget_nfe": mask_only.nfe, "accuracy_after": 0.9 - 0.1 * i, "valid_after": 0.8 - 0.2 * i,
                     "skeleton_valid_after": 0.9 - 0.2 * i})
        rows.append({"model": "refiner", "kind": "mask_edit", "fraction": f, "label": mask_edit.label,
                     "budget_nfe": mask_edit.nfe, "mean_nfe": mask_edit.nfe - 1,
                     "accuracy_before": 0.5, "accuracy_after": 0.88, "valid_before": 0.1, "valid_after": 0.75,
                     "skeleton_valid_before": 0.2, "skeleton_valid_after": 0.85})
    comparison = compare(rows)
    assert [c["fraction"] for c in comparison] == [1.0, 0.5, 0.25, 0.125]
    eighth = comparison[-1]
    assert eighth["mask_only"]["valid"] == pytest.approx(0.2)
    assert eighth["valid_points_vs_mask_only"] == pytest.approx(55.0)
    assert eighth["phrasing_points_vs_mask_only"] == pytest.approx(55.0)
    assert eighth["right_points_vs_full_mask_only"] == pytest.approx(-2.0)
    assert eighth["valid_points_from_editing"] == pytest.approx(65.0)
    assert len(comparison_lines(comparison)) == 4
    assert all(v is None for v in eighth["paired"].values())  # rows without per-sample outcomes


def test_comparison_adds_paired_intervals_and_mcnemar_when_rows_keep_outcomes():
    from medlm.evaluation import budget_row, summarise
    from medlm.stats import mcnemar_exact

    def records(right_after):  # 20 problems, the same ids in every row
        return [{"id": f"p{i}", "draft": "d", "correct_before": False, "correct_after": ok, "valid_before": False,
                 "valid_after": ok, "skeleton_valid_before": False, "skeleton_valid_after": ok, "nfe": {"mask": 1, "edit": 0}, "edits": {"replace": 0, "delete": 0, "insert": 0},
                 "time_s": 0.0, "error": None} for i, ok in enumerate(right_after)]

    rows = []
    for mask_only, mask_edit in budget_table(48, fractions=(1, 1 / 8)):
        full = mask_only.fraction == 1
        rows.append({**budget_row(mask_only, summarise(records([i < (18 if full else 8) for i in range(20)]))),
                     "model": "base"})
        rows.append({**budget_row(mask_edit, summarise(records([i < 16 for i in range(20)]))), "model": "refiner"})
    eighth = compare(rows)[-1]["paired"]
    # at 1/8 the refiner is right on p0-p15, base mask-only on p0-p7: 8 gained, none lost
    assert (eighth["right_vs_mask_only"]["only_x"], eighth["right_vs_mask_only"]["only_y"]) == (8, 0)
    assert eighth["right_vs_mask_only"]["p_value"] == mcnemar_exact(8, 0) and eighth["right_vs_mask_only"]["ci"][0] > 0
    # against base at the full budget (p0-p17): none gained, 2 lost
    assert (eighth["right_vs_full_mask_only"]["only_x"], eighth["right_vs_full_mask_only"]["only_y"]) == (0, 2)
    assert "McNemar p=0.0078" in comparison_lines(compare(rows))[-1]


def test_a_stage_resumes_its_own_interrupted_attempt_but_not_one_started_under_other_settings(tmp_path):
    from pipeline.demo import Stages

    said: list[str] = []
    stages = Stages(tmp_path, said.append)
    work = tmp_path / "train" / "base"

    def interrupted():
        work.mkdir(parents=True, exist_ok=True)
        (work / "checkpoint").write_text("step 100")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        stages.run("train_base", "fp-a", interrupted, work=work)
    # same settings: the attempt's folder is kept for the trainer to resume from
    assert stages.run("train_base", "fp-a", lambda: {"resumed": (work / "checkpoint").exists()}, work=work) == {
        "resumed": True}
    assert any("resuming" in line for line in said)
    # finished: reused without running
    assert stages.run("train_base", "fp-a", lambda: pytest.fail("ran again"), work=work) == {"resumed": True}
    # other settings: the old folder (and its checkpoint) is gone before the stage runs
    assert stages.run("train_base", "fp-b", lambda: {"resumed": (work / "checkpoint").exists()}, work=work) == {
        "resumed": False}
    assert any("settings changed" in line for line in said)


def test_a_resumed_stage_counts_the_time_of_its_interrupted_attempts(tmp_path):
    """stages_seconds once counted only a stage's last attempt: a base stage that trained 35 minutes,
    failed at its export and was resumed reported 118 s."""
    import json
    import os
    import time

    from pipeline.demo import Stages

    stages = Stages(tmp_path, lambda line: None)
    work = tmp_path / "train" / "base"

    def interrupted():
        work.mkdir(parents=True, exist_ok=True)
        (work / "checkpoint").write_text("step 100")
        raise KeyboardInterrupt

    for _ in range(2):  # two interrupted attempts, each "ran" 600 s until its last write
        with pytest.raises(KeyboardInterrupt):
            stages.run("train_base", "fp-a", interrupted, work=work)
        marker = tmp_path / "stages" / "train_base.started"
        saved = json.loads(marker.read_text())
        saved["started"] = time.time() - 600
        marker.write_text(json.dumps(saved))
        os.utime(work / "checkpoint", (time.time(), time.time()))
    stages.run("train_base", "fp-a", lambda: {"ok": True}, work=work)
    assert 1199 < stages.timings["train_base"] < 1300
    saved = json.loads((tmp_path / "stages" / "train_base.json").read_text())
    assert 1199 < saved["earlier_attempts_seconds"] < 1300
    # a stage that was never interrupted counts only its own run
    stages.run("evaluate", "fp-e", lambda: {}, work=tmp_path / "eval")
    assert stages.timings["evaluate"] < 60
