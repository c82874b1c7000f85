"""Online drafts (the paper's stage 3): the model being trained drafts, and learns to edit its own drafts.

Mask examples marked by the stream carry a draft request. Per micro-batch, their prompts are drafted
in one ``medlm.sampling.mask_diffusion`` call at a tokens-per-step rate drawn from
``tokens_per_step`` (2/4/8/16 in the paper, so drafts range from nearly right to badly mixed),
padding is stripped, and each draft is labelled by ``medlm.edits.label_draft`` against the closest
valid reference (the row's ``refs``): labelling against one fixed answer would teach the editor to
rewrite one valid answer into another.

Under ZeRO-3 every forward pass gathers parameters collectively, so all workers must run the same
number of passes: the rate is drawn from a generator seeded by (run seed, step, micro-step), shared
by all workers, and a worker with no request in its micro-batch drafts one prompt anyway and drops it.
"""

from __future__ import annotations

import math
import random

import torch

from medlm.edits import label_draft
from medlm.packing import DRAFT_REQUEST, edit_example, edit_scale
from medlm.sampling import DecodeConfig, edit_refine, mask_diffusion, strip_padding
from medlm.tokenizer import SpecialIds


def draft_rate(seed: int, step: int, micro: int, tokens_per_step: list[int]) -> int:
    """Tokens committed per diffusion step for this micro-step; identical on every worker."""
    return random.Random(f"{seed}:draft-rate:{step}:{micro}").choice(list(tokens_per_step))


def curriculum_edit_steps(step: int, max_steps: int, max_edit_steps: int) -> int:
    """Edit steps before labelling at optimizer step ``step``: 0 at the start, ``max_edit_steps`` by the end.

    ME-DLM's curriculum: the model edits its own drafts only once it has learned something about editing,
    so the insertion head is never asked to edit before it has seen edit labels.
    """
    if max_edit_steps <= 0:
        return 0
    return min(max_edit_steps, int(step / max(1, max_steps) * (max_edit_steps + 1)))


@torch.no_grad()
def resolve_drafts(model, examples: list[dict], special: SpecialIds, *, gen_len: int, tokens_per_step: int,
                   seed: int, start: str = "masked", commit_order: str = "confidence", edit_steps: int = 0,
                   loss_weighting: str = "llada") -> tuple[list[dict], dict]:
    """Replace every example carrying a draft request by an edit example on a fresh draft.

    ``start="partial"`` drafts from the mask example's own partly masked response (ME-DLM) instead of all
    masks; ``commit_order="random"`` commits in random order; ``edit_steps`` > 0 refines the drafts by that
    many edit steps of the model before they are labelled. Returns the new example list and stats (drafts
    made, mean edit distance to the closest reference).
    """
    requests = [ex[DRAFT_REQUEST] for ex in examples if DRAFT_REQUEST in ex]
    if requests:
        prompts = [r["prompt"] for r in requests]
        starts = [r["start"] if start == "partial" else None for r in requests]
    else:  # keep ZeRO-3's collective forward passes in step with the other workers
        first = examples[0]
        prompts = [first["input_ids"][: max(1, len(first["input_ids"]) - gen_len)]]
        starts = [None]
    steps = max(1, math.ceil(gen_len / tokens_per_step))
    remasking = "random" if commit_order == "random" else "low_confidence"
    configs = [DecodeConfig(gen_len=gen_len, mask_steps=steps, edit_steps=edit_steps, seed=seed, remasking=remasking)
               for _ in prompts]
    was_training = model.training
    model.eval()
    try:
        drafts = [strip_padding(raw, special) for raw, _ in mask_diffusion(model, prompts, configs, special, starts=starts)]
        if edit_steps > 0 and requests:
            drafts = [state.response for state in edit_refine(model, prompts, drafts, configs, special)]
    finally:
        model.train(was_training)
    if not requests:
        return examples, {"drafts": 0, "draft_distance": 0.0}

    made = iter(drafts)
    out, distances = [], []
    for ex in examples:
        if DRAFT_REQUEST not in ex:
            out.append(ex)
            continue
        req = ex[DRAFT_REQUEST]
        draft = next(made)
        labels = label_draft(draft, req["refs"], del_id=special.delete)
        distances.append(labels.distance)
        ratio = req["t"] if start == "partial" else 1.0
        out.append(edit_example(req["prompt"], draft, labels.token_target, labels.insert_target, special,
                                scale=edit_scale(loss_weighting, ratio)))
    return out, {"drafts": len(requests), "draft_distance": sum(distances) / len(distances)}
