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
                 "valid_after": ok, "skeleton_valid_before": False, "skeleton_valid_after": ok,
                 "nfe": {"mask": 1, "edit": 0}, "edits": {"replace": 0, "delete": 0, "insert": 0},
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


# --- the shipped base (medlm/shipped.py), the host probe, seeds, the control and the recipe options ---


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory):
    from medlm.checkpoint import new_model, save_checkpoint

    tok = build_default_tokenizer()
    return save_checkpoint(new_model("tiny", tok, seed=0), tok, tmp_path_factory.mktemp("ckpt") / "tiny")


def _ship(tiny_checkpoint, dest):
    from medlm.shipped import write_shipped_base

    return write_shipped_base(tiny_checkpoint, dest, {"preset": "tiny", "steps": 7, "commit": "abc"})


def test_a_shipped_base_with_matching_hashes_is_found_and_loads(tiny_checkpoint, tmp_path):
    from medlm.checkpoint import load_checkpoint
    from medlm.shipped import file_sha256, find_shipped_base

    written = _ship(tiny_checkpoint, tmp_path / "base")
    found = find_shipped_base(tmp_path / "base")
    assert found.sha256 == written.sha256 == file_sha256(tiny_checkpoint / "model.safetensors")
    assert found.provenance["steps"] == 7 and "tokenizer.json" in found.provenance["files"]
    load_checkpoint(found.path, require_insert_head=False)  # the same loader as any checkpoint
    # the demo uses it when the preset matches, and says so; another preset trains from scratch
    from pipeline.demo import choose_base

    used, line = choose_base(DemoConfig(preset="tiny"), tmp_path / "base")
    assert used is not None and line.startswith(f"base: shipped, sha256 {found.sha256[:16]}")
    used, line = choose_base(DemoConfig(preset="small"), tmp_path / "base")
    assert used is None and "'tiny' model" in line and "from scratch" in line


@pytest.mark.parametrize("damage, says", [
    ("flip", r"model.safetensors has sha256 .* PROVENANCE.json says"),
    ("delete", r"incomplete: .*model.safetensors is missing"),
    ("no_provenance", r"model.safetensors has no PROVENANCE.json"),
])
def test_a_damaged_shipped_base_is_refused_naming_the_file_and_what_to_run(tiny_checkpoint, tmp_path, damage, says):
    from medlm.shipped import ShippedBaseError, find_shipped_base

    base = tmp_path / "base"
    _ship(tiny_checkpoint, base)
    weights = base / "model.safetensors"
    if damage == "flip":
        data = bytearray(weights.read_bytes())
        data[-1] ^= 0xFF
        weights.write_bytes(bytes(data))
    elif damage == "delete":
        weights.unlink()
    else:
        (base / "PROVENANCE.json").unlink()
    with pytest.raises(ShippedBaseError, match=says) as err:
        find_shipped_base(base)
    assert "make base" in str(err.value) and "medlm demo --from-scratch" in str(err.value)


def test_a_damaged_shipped_base_stops_the_demo_before_ray_starts_but_not_a_retrain(tiny_checkpoint, tmp_path):
    import ray

    from medlm.shipped import ShippedBaseError
    from pipeline.demo import choose_base, run_demo

    base = tmp_path / "base"
    _ship(tiny_checkpoint, base)
    (base / "config.json").write_text((base / "config.json").read_text() + " ")
    cfg = DemoConfig(preset="tiny", out=str(tmp_path / "work"), results=str(tmp_path / "results"))
    was_up = ray.is_initialized()
    with pytest.raises(ShippedBaseError, match="config.json has sha256"):
        run_demo(cfg, say=lambda line: None, shipped_root=base)
    assert ray.is_initialized() == was_up and not (tmp_path / "work").exists()
    # `make base` is how a damaged base gets replaced: from_scratch does not stop on it
    used, line = choose_base(DemoConfig(preset="tiny", from_scratch=True), base)
    assert used is None and "unusable" in line


def test_with_no_base_shipped_the_demo_trains_it_and_says_so_in_one_line(tmp_path):
    from medlm.shipped import find_shipped_base, package_base_dir
    from pipeline.demo import choose_base

    assert find_shipped_base(tmp_path) is None  # an empty folder ships nothing
    used, line = choose_base(DemoConfig(), tmp_path)
    assert used is None and line == (f"base: none shipped yet ({tmp_path} has no PROVENANCE.json); training it from "
                                     "scratch (6000 steps; `make base` ships one)")
    # the package's own folder is found after `pip install -e .`; whatever it holds must verify
    assert package_base_dir().name == "base" and (package_base_dir() / "README.md").is_file()
    shipped = find_shipped_base()
    if shipped is not None:
        assert shipped.provenance["preset"] == DemoConfig().preset


def test_the_cli_refuses_base_options_that_would_ship_the_wrong_model(capsys):
    from jobs.demo import cli

    assert cli(["--base-only"]) == 2
    assert "--base-only and --base-dest go with --from-scratch" in capsys.readouterr().err
    assert cli(["--quick", "--from-scratch", "--base-only"]) == 2
    assert "needs --base-dest DIR" in capsys.readouterr().err
    assert cli(["draft_start=half"]) == 2
    assert "draft_start='half'" in capsys.readouterr().err


@pytest.mark.parametrize("overrides, named", [
    ({"draft_start": "half"}, "draft_start='half'"),
    ({"commit_order": "left"}, "commit_order='left'"),
    ({"loss_weighting": "elbo"}, "loss_weighting='elbo'"),
    ({"seeds": 0}, "seeds=0"),
    ({"seeds": 3, "regenerate_steps": 500}, "seeds=3 repeats the first refiner stage only"),
    ({"probe_seconds": -1}, "probe_seconds=-1"),
    ({"time_goal_minutes": 0}, "time_goal_minutes=0"),
])
def test_new_settings_that_cannot_work_are_refused_naming_the_setting(overrides, named):
    with pytest.raises(ValueError, match=named):
        DemoConfig(**overrides).check()


def test_recipe_options_enter_the_fingerprints_only_when_changed_and_seeds_get_their_own():
    import dataclasses

    from pipeline.demo import stages_fp

    cfg = DemoConfig()
    drafts = ("draft_rows", "gen_len", "tokens_per_step")
    # at their defaults the recipe options leave the fingerprints of runs recorded before them unchanged
    assert cfg.fingerprint(*drafts, "draft_start", "commit_order") == cfg.fingerprint(*drafts)
    assert cfg.fingerprint("refine_steps", "loss_weighting") == cfg.fingerprint("refine_steps")
    for name, value in (("draft_start", "partial"), ("commit_order", "random"), ("loss_weighting", "me-dlm")):
        changed = dataclasses.replace(cfg, **{name: value})
        assert changed.fingerprint(*drafts, name, "refine_steps") != cfg.fingerprint(*drafts, name, "refine_steps")
    # seeds and control add stages; they leave the default stages' fingerprints alone
    refine = ("seed", "preset", "refine_steps", "refine_lr", "mix_ratio", "loss_weighting")
    upstream = {"run_dir": "drafts/x"}
    extra = dataclasses.replace(cfg, seeds=3, control=True)
    assert stages_fp(extra, upstream, *refine) == stages_fp(cfg, upstream, *refine)
    per_seed = {stages_fp(dataclasses.replace(cfg, seed=s), upstream, *refine) for s in (0, 1, 2)}
    assert len(per_seed) == 3 and stages_fp(cfg, upstream, *refine) in per_seed


def test_seed_spread_reports_mean_and_sample_sd_per_refiner_row():
    from pipeline.demo import seed_spread, seeds_markdown

    rows = [{"model": m, "label": "m3e3", "kind": "mask_edit", "fraction": 0.125, "accuracy_after": a,
             "valid_after": v} for m, a, v in (("refiner", 0.80, 0.5), ("refiner_seed1", 0.84, 0.6),
                                                ("refiner_seed2", 0.82, 0.7))]
    rows.append({"model": "refiner", "label": "m48", "kind": "mask_only", "fraction": 1.0, "accuracy_after": 0.9})
    summary = seed_spread(rows, [0, 1, 2])
    assert [e["label"] for e in summary["rows"]] == ["m48", "m3e3"]
    eighth = summary["rows"][1]
    assert eighth["right"]["mean"] == pytest.approx(0.82) and eighth["right"]["sd"] == pytest.approx(0.02)
    assert eighth["valid"]["min"] == 0.5 and eighth["valid"]["max"] == 0.7 and "valid" not in summary["rows"][0]
    assert "| m3e3 | 1/8 | 82.0 ± 2.0 (80.0-84.0) | 60.0 ± 10.0 (50.0-70.0) |" in seeds_markdown(summary)


def test_the_control_section_compares_the_refiner_with_the_control_paired():
    from medlm.evaluation import budget_row, summarise
    from pipeline.demo import control_section

    def records(right):
        return [{"id": f"p{i}", "draft": "d", "correct_before": False, "correct_after": ok, "valid_before": False,
                 "valid_after": ok, "skeleton_valid_before": False, "skeleton_valid_after": ok,
                 "nfe": {"mask": 1, "edit": 0}, "edits": {"replace": 0, "delete": 0, "insert": 0}, "time_s": 0.0,
                 "error": None} for i, ok in enumerate(right)]

    rows = []
    for mask_only, mask_edit in budget_table(48, fractions=(1, 1 / 8)):
        rows.append({**budget_row(mask_only, summarise(records([i < 10 for i in range(20)]))), "model": "base"})
        rows.append({**budget_row(mask_only, summarise(records([i < 12 for i in range(20)]))), "model": "control"})
        rows.append({**budget_row(mask_edit, summarise(records([i < 16 for i in range(20)]))), "model": "refiner"})
    text = control_section(rows)
    assert "Stage-2 control" in text and "control m" in text and "| 4 / 0 |" in text
    assert "base m" not in text  # only the control is the reference here


def test_the_time_goal_scales_with_the_host_and_the_last_line_says_whether_it_was_met():
    from pipeline.demo import goal_line, time_goal

    assert time_goal(DemoConfig(), {"tokens_per_s": 6000})["seconds"] == pytest.approx(20 * 60)
    goal = time_goal(DemoConfig(), {"tokens_per_s": 3000})
    assert goal["seconds"] == pytest.approx(40 * 60)
    assert goal_line(goal, {"tokens_per_s": 3000}, 30 * 60, 30 * 60, []).startswith(
        "time goal met: this run took 30.0 min against 40.0 min")
    assert goal_line(goal, {"tokens_per_s": 3000}, 60, 45 * 60, ["data", "train_base"]).startswith(
        "time goal missed: its stages (2 reused) took 45.0 min")
    assert time_goal(DemoConfig(), None) is None and "not judged" in goal_line(None, None, 1, 1, [])


def test_the_host_probe_measures_the_plain_training_loop(tmp_path):
    from pipeline.demo import host_probe

    tok_dir = tmp_path / "tok"
    build_default_tokenizer(tok_dir)
    probe = host_probe(str(tok_dir), tmp_path / "probe", seconds=0.1)
    assert probe["tokens_per_s"] > 100 and probe["steps"] >= 3 and probe["seconds"] >= 0.1
    assert len(probe["step_tokens_per_s"]) == probe["steps"] and probe["mean_tokens_per_s"] > 100
    assert (probe["preset"], probe["max_len"], probe["rows_per_step"]) == ("small", 1024, 2)


def shipped_base_decodes(root=None, n: int = 8) -> tuple[int, int]:
    """(right, n): the shipped base decoding the first ``n`` held-out toy problems mask-only at the full budget."""
    from medlm.evaluation import evaluate_samples, load_eval_model, load_samples
    from medlm.shipped import find_shipped_base

    shipped = find_shipped_base(root)
    gen_len = int(shipped.provenance.get("config", {}).get("gen_len", 48))
    model, tok = load_eval_model(shipped.path, device="cpu")
    full = budget_table(gen_len)[0][0]
    records = evaluate_samples(model, tok, load_samples("toy", n, split="test"), full, "toy", batch_size=n,
                               gen_len=gen_len)
    return sum(bool(r["correct_after"]) for r in records), n


def test_the_shipped_base_decodes_held_out_problems_right_at_the_full_budget():
    """A regression guard for the shipped file, not a quality measurement (that is PROVENANCE.json's rows)."""
    from medlm.shipped import find_shipped_base, package_base_dir

    if find_shipped_base() is None:
        pytest.skip(f"no base is shipped yet ({package_base_dir()} has no PROVENANCE.json; `make base` ships one)")
    right, n = shipped_base_decodes()
    assert right >= n - 1, f"the shipped base got {right} of {n} held-out problems right at the full budget"
