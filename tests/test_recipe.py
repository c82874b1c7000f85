"""The training recipe's fidelity options, in seconds and without Ray: heads' history, ME-DLM's draft
distribution (partly masked starts, random commit order, edit-step curriculum) and loss weighting."""

from __future__ import annotations

import random

import pyarrow as pa
import pytest

from medlm.checkpoint import (
    EDIT_EXAMPLES_SEEN,
    UNTRAINED_HEADS,
    check_insert_head_trained,
    new_model,
    read_meta,
    save_checkpoint,
)
from medlm.evaluation import Budget
from medlm.packing import DRAFT_REQUEST, ExampleStream, edit_example, edit_scale, mask_example
from medlm.sampling import DecodeConfig, mask_diffusion
from medlm.tokenizer import build_default_tokenizer, special_ids
from pipeline.drafts.recipe import DraftRecipe, partial_start, row_recipe
from pipeline.eval.run import run_eval
from pipeline.train.batches import MaskRows
from pipeline.train.config import TrainConfig
from pipeline.train.online_drafts import curriculum_edit_steps, resolve_drafts


@pytest.fixture(scope="module")
def tok():
    return build_default_tokenizer()


@pytest.fixture(scope="module")
def sp(tok):
    return special_ids(tok)


@pytest.fixture(scope="module")
def model(tok):
    return new_model("tiny", tok, seed=0).eval()


def test_untrained_insertion_head_is_refused_by_name(tmp_path, tok, model):
    with pytest.raises(ValueError, match=r"intermediate_prob=0.25 asks for edit steps from ck.*edit_examples_seen=0"):
        check_insert_head_trained(dict(UNTRAINED_HEADS), "ck", "intermediate_prob=0.25")
    assert check_insert_head_trained({EDIT_EXAMPLES_SEEN: 12}, "ck", "x") is True
    assert check_insert_head_trained(None, "ck", "x") is False  # unknown: the caller warns

    # evaluation refuses edit budgets from such a checkpoint before Ray starts; mask-only budgets still run the checks
    ckpt = save_checkpoint(model, tok, tmp_path / "init", extra={"trained_steps": 0, **UNTRAINED_HEADS})
    assert read_meta(ckpt)[EDIT_EXAMPLES_SEEN] == 0
    with pytest.raises(ValueError, match=r"budget 'mask6_edit2' asks for edit steps"):
        run_eval(ckpt, "toy", [Budget.of(6, 0, 48), Budget.of(6, 2, 48)], n_samples=2, out_dir=tmp_path / "eval")
    assert not (tmp_path / "eval").exists()


def test_partial_start_masks_a_share_of_the_padded_reference(sp):
    ref = [10, 11, 12, 13, sp.im_end]
    full = partial_start(ref, 12, 1.0, seed=3, mask_id=sp.mask, pad_id=sp.pad)
    assert full == [sp.mask] * 12
    one = partial_start(ref, 12, 0.0, seed=3, mask_id=sp.mask, pad_id=sp.pad)
    assert one.count(sp.mask) == 1  # at least one position is left to draft
    padded = ref + [sp.pad] * 7
    half = partial_start(ref, 12, 0.5, seed=3, mask_id=sp.mask, pad_id=sp.pad)
    assert half == partial_start(ref, 12, 0.5, seed=3, mask_id=sp.mask, pad_id=sp.pad)  # seeded by the row
    assert all(t == sp.mask or t == p for t, p in zip(half, padded)) and 0 < half.count(sp.mask) < 12
    with pytest.raises(ValueError, match="longer than gen_len=3"):
        partial_start(ref, 3, 0.5, seed=0, mask_id=sp.mask, pad_id=sp.pad)


def test_partial_recipe_keeps_every_rows_budget_and_seed():
    masked, partial = DraftRecipe(gen_len=48), DraftRecipe(gen_len=48, draft_start="partial", commit_order="random")
    ratios = []
    for rid in (f"row-{i}" for i in range(50)):
        a, b = row_recipe(masked, rid), row_recipe(partial, rid)
        assert (a.tokens_per_step, a.mask_steps, a.edit_steps, a.draft_seed) == (b.tokens_per_step, b.mask_steps,
                                                                                   b.edit_steps, b.draft_seed)
        assert a.start_mask_ratio == 1.0
        ratios.append(b.start_mask_ratio)
    assert 0.3 < sum(ratios) / len(ratios) < 0.7 and min(ratios) < 0.2 and max(ratios) > 0.8  # t ~ U(0, 1)
    with pytest.raises(ValueError, match="draft_start must be one of masked, partial"):
        DraftRecipe(draft_start="half").validate()


def test_mask_diffusion_fills_only_the_masks_of_a_start(model, sp, tok):
    prompt = tok.encode("Add 3 and 4.", add_special_tokens=False)
    start = [sp.mask, 40, sp.mask, 41, sp.mask, sp.pad, sp.pad, sp.mask]
    cfg = DecodeConfig(gen_len=8, mask_steps=8)
    (out, nfe), = mask_diffusion(model, [prompt], [cfg], sp, starts=[start])
    assert [t for t, s in zip(out, start) if s != sp.mask] == [40, 41, sp.pad, sp.pad]
    assert sp.mask not in out and nfe == 4  # one masked position a step: 4 masks, 4 passes
    (again, _), = mask_diffusion(model, [prompt], [cfg], sp, starts=[None])
    assert sp.mask not in again
    with pytest.raises(ValueError, match="holds 5 tokens, not gen_len=8"):
        mask_diffusion(model, [prompt], [cfg], sp, starts=[start[:5]])


def test_loss_weightings(sp):
    prompt, target = [7, 8], [20, 21, 22, 23, sp.im_end]
    llada = mask_example(prompt, target, sp, random.Random(5), gen_len=8)
    medlm = mask_example(prompt, target, sp, random.Random(5), gen_len=8, weighting="me-dlm")
    t, n_masked = llada["t"], sum(1 for w in llada["token_weights"] if w > 0)
    assert llada["t"] == medlm["t"] and n_masked >= 1
    assert sum(llada["token_weights"]) == pytest.approx(n_masked / (t * 8))  # LLaDA: 1/t over the response length
    assert sum(medlm["token_weights"]) == pytest.approx(1 / t)  # ME-DLM: mean over masked tokens, / t
    assert edit_scale("llada", 0.25) == 1.0 and edit_scale("me-dlm", 0.25) == 4.0 and edit_scale("me-dlm", 1.0) == 1.0
    ex = edit_example(prompt, [20, 22], [20, 22], [-1, 21, -1], sp, scale=4.0)
    assert set(ex["token_weights"]) == {4.0}


def test_curriculum_grows_edit_steps_with_progress():
    steps = [curriculum_edit_steps(s, 100, 31) for s in range(0, 101, 10)]
    assert steps[0] == 0 and steps[-1] == 31 and steps == sorted(steps)
    assert curriculum_edit_steps(50, 100, 0) == 0
    assert curriculum_edit_steps(99, 100, 3) == 3


def test_online_drafts_from_partly_masked_references_in_random_order(model, tok, sp):
    answers = [[20 + k, 30 + k, 40 + k, sp.im_end] for k in range(3)]
    table = pa.table({"id": ["a", "b", "c"], "prompt_ids": pa.array([[3, 7, 9]] * 3, pa.list_(pa.int32())),
                      "answers_ids": pa.array([[a] for a in answers], pa.list_(pa.list_(pa.int32())))})
    stream = ExampleStream("online", sp, gen_len=8, mix_ratio=1.0, seed=0, rank=0, mask_rows=MaskRows(table),
                           loss_weighting="me-dlm")
    examples = [next(stream) for _ in range(3)]
    requests = [ex[DRAFT_REQUEST] for ex in examples]
    out, stats = resolve_drafts(model, examples, sp, gen_len=8, tokens_per_step=2, seed=1, start="partial",
                                commit_order="random", edit_steps=0, loss_weighting="me-dlm")
    assert stats["drafts"] == 3 and all(ex["is_edit"] for ex in out)
    for ex, req in zip(out, requests):
        draft = ex["input_ids"][len(req["prompt"]):]
        kept = [t for t in req["start"] if t not in (sp.mask, sp.pad)]  # what the start revealed survives
        assert all(t in draft for t in kept)
        assert ex["token_weights"][0] == pytest.approx(1 / req["t"])
    # all masks + confidence order + one edit step of the model: still labelled edit examples of weight 1
    out, _ = resolve_drafts(model, [next(stream) for _ in range(3)], sp, gen_len=8, tokens_per_step=4, seed=1,
                            edit_steps=1)
    assert all(ex["is_edit"] and set(ex["token_weights"]) == {1.0} for ex in out)


def test_train_config_refusals_name_the_setting():
    ok = dict(objective="online", toy_problems=4)
    with pytest.raises(ValueError, match="loss_weighting='mean' is not one of llada, me-dlm"):
        TrainConfig(**ok, loss_weighting="mean").check()
    with pytest.raises(ValueError, match="online_commit_order='lifo'"):
        TrainConfig(**ok, online_commit_order="lifo").check()
    with pytest.raises(ValueError, match="zero_stage=3 cannot run"):
        TrainConfig(**ok, zero_stage=3, online_draft_start="partial").check()
    TrainConfig(**ok, zero_stage=2, online_draft_start="partial", online_edit_steps=4, loss_weighting="me-dlm").check()
