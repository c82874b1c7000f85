"""The draft stage of the pipeline: a model per actor drafts every row of a batch by its recipe.

Draft: each row's recipe comes from (run seed, row id) (see ``pipeline.drafts.recipe``); rows of a Ray batch
are packed into forward passes of at most ``tokens_per_forward`` tokens (``medlm.packing.pack_groups``:
a bound on what one forward pass holds in memory) and drafted with
``medlm.sampling.mask_diffusion`` + ``strip_padding``, then, for "intermediate" rows, refined by a
few ``edit_refine`` steps. The samplers decode each sequence independently of its pack-mates, so a
row's draft does not depend on which batch or actor it landed in.
"""

from __future__ import annotations

import time
from typing import Optional

import pyarrow as pa

from medlm.packing import pack_groups
from medlm.sampling import DecodeConfig, edit_refine, mask_diffusion, strip_padding
from pipeline.drafts.recipe import DraftRecipe, partial_start, row_recipe

DRAFTED_COLUMNS = pa.schema(
    [
        ("draft_ids", pa.list_(pa.int32())),
        ("tokens_per_step", pa.int32()),
        ("mask_steps", pa.int32()),
        ("edit_steps", pa.int32()),
        ("edit_steps_applied", pa.int32()),
        ("draft_seed", pa.int64()),
        ("start_mask_ratio", pa.float32()),
    ]
)
CARRIED_COLUMNS = ["id", "source_format", "source_index", "record_no", "prompt_text", "prompt_ids", "answers_text", "answers_ids"]


def draft_rows(
    model, special, prompts: list[list[int]], row_ids: list[str], recipe: DraftRecipe, tokens_per_forward: int,
    references: Optional[list[list[int]]] = None,
) -> dict[str, list]:
    """Drafts (after optional intermediate edits) and the recipe values of each row.

    ``references`` (each row's reference answer) is needed when the recipe starts from a partly masked
    reference (``draft_start="partial"``).
    """
    recipes = [row_recipe(recipe, rid) for rid in row_ids]
    configs = [
        DecodeConfig(
            gen_len=recipe.gen_len,
            mask_steps=r.mask_steps,
            edit_steps=r.edit_steps,
            temperature=recipe.temperature,
            seed=r.draft_seed,
            remasking="random" if recipe.commit_order == "random" else "low_confidence",
            confidence_eos_eot_inf=recipe.confidence_eos_eot_inf,
            logits_eos_inf=recipe.logits_eos_inf,
            cfg_scale=recipe.cfg_scale,
            stop_ids=tuple(recipe.stop_ids),
        )
        for r in recipes
    ]
    starts: list[Optional[list[int]]] = [None] * len(prompts)
    if recipe.draft_start == "partial":
        if references is None:
            raise ValueError("draft_start='partial' needs each row's reference answer")
        starts = [partial_start(ref, recipe.gen_len, r.start_mask_ratio, r.draft_seed, special.mask, special.pad)
                  for ref, r in zip(references, recipes)]
    drafts: list[list[int]] = [[] for _ in prompts]
    lengths = [len(p) + recipe.gen_len for p in prompts]
    for group in pack_groups(lengths, tokens_per_forward):
        raw = mask_diffusion(model, [prompts[i] for i in group], [configs[i] for i in group], special,
                             starts=[starts[i] for i in group])
        for i, (response, _nfe) in zip(group, raw):
            drafts[i] = strip_padding(response, special)
    applied = [0] * len(prompts)
    to_edit = [i for i, c in enumerate(configs) if c.edit_steps > 0]
    for sub in pack_groups([lengths[i] for i in to_edit], tokens_per_forward):
        group = [to_edit[k] for k in sub]
        states = edit_refine(
            model, [prompts[i] for i in group], [drafts[i] for i in group], [configs[i] for i in group], special
        )
        for i, state in zip(group, states):
            drafts[i] = state.response
            applied[i] = len(state.history)
    return {
        "draft_ids": drafts,
        "tokens_per_step": [r.tokens_per_step for r in recipes],
        "mask_steps": [r.mask_steps for r in recipes],
        "edit_steps": [r.edit_steps for r in recipes],
        "edit_steps_applied": applied,
        "draft_seed": [r.draft_seed for r in recipes],
        "start_mask_ratio": [r.start_mask_ratio for r in recipes],
    }


def draft_table(model, special, batch: pa.Table, recipe: DraftRecipe, tokens_per_forward: int) -> pa.Table:
    drafted = draft_rows(
        model,
        special,
        batch.column("prompt_ids").to_pylist(),
        batch.column("id").to_pylist(),
        recipe,
        tokens_per_forward,
        # the canonical (first) answer: ME-DLM masks one reference
        references=[a[0] for a in batch.column("answers_ids").to_pylist()] if recipe.draft_start == "partial" else None,
    )
    out = batch.select(CARRIED_COLUMNS)
    for field in DRAFTED_COLUMNS:
        out = out.append_column(field, pa.array(drafted[field.name], field.type))
    return out


class DraftActor:
    """Ray Data class UDF: the checkpoint is loaded once per actor, then every batch reuses it."""

    def __init__(
        self,
        checkpoint: str,
        recipe: dict,
        tokens_per_forward: int,
        num_threads: int = 1,
        device: Optional[str] = None,
    ):
        import torch

        from medlm.checkpoint import device_and_dtype, load_checkpoint
        from medlm.tokenizer import special_ids

        device, dtype = device_and_dtype(device)
        if device == "cpu":
            torch.set_num_threads(max(1, int(num_threads)))
        started = time.perf_counter()
        from pipeline.common.storage import local_copy  # an s3:// checkpoint is fetched once per node

        self.model, tokenizer = load_checkpoint(local_copy(checkpoint), device=device, dtype=dtype)
        self.special = special_ids(tokenizer)
        self.recipe = DraftRecipe(**{k: v for k, v in recipe.items() if k != "seed_rule"})
        self.tokens_per_forward = tokens_per_forward
        self.load_seconds = time.perf_counter() - started

    def __call__(self, batch: pa.Table) -> pa.Table:
        return draft_table(self.model, self.special, batch, self.recipe, self.tokens_per_forward)
