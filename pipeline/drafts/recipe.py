"""The draft recipe: how each row's draft is made, chosen from (run seed, row id) alone.

Why a pure function of (run seed, row id): a row must get the same budget and the same sampling
seed whichever actor drafts it, in whatever batch, on whatever rerun; that is what makes a run's
content hash independent of the number of actors and makes ``--from-run`` regeneration faithful.

Per row: ``tokens_per_step`` is drawn from the configured list (the paper mixes 2/4/8/16 tokens per
step), ``mask_steps = ceil(gen_len / tokens_per_step)``; with probability ``intermediate_prob`` the
draft is then refined by 1..``max_intermediate_edit_steps`` edit steps of the current checkpoint
before it is labelled (the paper's "intermediate" drafts; refused from a checkpoint whose insertion
head was never trained on edits, see ``medlm.checkpoint.check_insert_head_trained``).

Two settings choose the draft distribution (``docs/fidelity.md`` compares them):

* ``draft_start``: ``masked`` drafts the whole response from masks, as at inference; ``partial``
  starts from the row's reference with each position masked with probability t ~ U(0, 1) (drawn per
  row), as ME-DLM's trainer does, so drafts range from nearly the reference to fully parallel guesses;
* ``commit_order``: ``confidence`` commits the most confident predictions first (LLaDA's
  low-confidence remasking, as at inference); ``random`` commits positions in random order, as ME-DLM
  drafts its training data (harder drafts, more for the editor to learn from).
"""

from __future__ import annotations

import hashlib
import math
import random
from dataclasses import asdict, dataclass

from medlm.sampling import DecodeConfig

SEED_RULE = "int(sha256(f'{seed}:{row_id}').hexdigest()[:8], 16)"
DRAFT_STARTS = ("masked", "partial")
COMMIT_ORDERS = ("confidence", "random")


@dataclass(frozen=True)
class DraftRecipe:
    """Run-level recipe (stored in the manifest; regeneration reads it back)."""

    gen_len: int = 64
    tokens_per_step: tuple[int, ...] = (2, 4, 8, 16)
    intermediate_prob: float = 0.0
    max_intermediate_edit_steps: int = 2
    temperature: float = 0.0
    seed: int = 0
    draft_start: str = "masked"  # masked | partial
    commit_order: str = "confidence"  # confidence | random
    confidence_eos_eot_inf: bool = False  # end-of-text / end-of-turn committed last (LLaDA-Instruct's setting)
    logits_eos_inf: bool = False  # end tokens never sampled while drafting
    cfg_scale: float = 0.0  # classifier-free guidance of the drafts (LLaDA's cfg_scale)
    stop_ids: tuple[int, ...] = ()  # more token ids that end a response (ranked last with the end tokens)

    def validate(self, vocab_size: int | None = None) -> None:
        if self.gen_len < 1:
            raise ValueError(f"gen_len must be >= 1, got {self.gen_len}")
        if not self.tokens_per_step:
            raise ValueError("tokens_per_step must list at least one value, e.g. [2, 4, 8, 16]")
        for t in self.tokens_per_step:
            if not isinstance(t, int) or isinstance(t, bool) or t < 1:
                raise ValueError(f"tokens_per_step values must be integers >= 1, got {t!r}")
        if not 0.0 <= self.intermediate_prob <= 1.0:
            raise ValueError(f"intermediate_prob must be in [0, 1], got {self.intermediate_prob}")
        if self.max_intermediate_edit_steps < 0:
            raise ValueError(f"max_intermediate_edit_steps must be >= 0, got {self.max_intermediate_edit_steps}")
        if self.intermediate_prob > 0 and self.max_intermediate_edit_steps < 1:
            raise ValueError(
                f"intermediate_prob={self.intermediate_prob} needs max_intermediate_edit_steps >= 1, "
                f"got {self.max_intermediate_edit_steps}"
            )
        if self.temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {self.temperature}")
        try:  # the LLaDA decoding options, checked as the sampler checks them
            DecodeConfig(temperature=self.temperature, cfg_scale=self.cfg_scale, stop_ids=tuple(self.stop_ids),
                         logits_eos_inf=self.logits_eos_inf,
                         confidence_eos_eot_inf=self.confidence_eos_eot_inf).validate(vocab_size=vocab_size)
        except ValueError as e:
            raise ValueError(str(e)) from None
        if self.draft_start not in DRAFT_STARTS:
            raise ValueError(f"draft_start must be one of {', '.join(DRAFT_STARTS)}, got {self.draft_start!r}")
        if self.commit_order not in COMMIT_ORDERS:
            raise ValueError(f"commit_order must be one of {', '.join(COMMIT_ORDERS)}, got {self.commit_order!r}")

    def to_dict(self) -> dict:
        d = asdict(self)
        d["tokens_per_step"] = list(self.tokens_per_step)
        d["stop_ids"] = list(self.stop_ids)
        d["seed_rule"] = SEED_RULE
        return d


@dataclass(frozen=True)
class RowRecipe:
    """What one row gets: stored with the row in the shards."""

    tokens_per_step: int
    mask_steps: int
    edit_steps: int
    draft_seed: int
    start_mask_ratio: float = 1.0  # share of the reference masked at the start (1: all masks)


def row_seed(run_seed: int, row_id: str) -> int:
    return int(hashlib.sha256(f"{run_seed}:{row_id}".encode()).hexdigest()[:8], 16)


def row_recipe(recipe: DraftRecipe, row_id: str) -> RowRecipe:
    """The row's budget, drawn from a generator seeded by (run seed, row id) only."""
    seed = row_seed(recipe.seed, row_id)
    rng = random.Random(seed)
    tps = rng.choice(list(recipe.tokens_per_step))
    edit_steps = 0
    if rng.random() < recipe.intermediate_prob:
        edit_steps = rng.randint(1, recipe.max_intermediate_edit_steps)
    # drawn after the older fields, so a masked-start recipe keeps every row's budget and seed
    ratio = rng.random() if recipe.draft_start == "partial" else 1.0
    return RowRecipe(
        tokens_per_step=tps,
        mask_steps=math.ceil(recipe.gen_len / tps),
        edit_steps=edit_steps,
        draft_seed=seed,
        start_mask_ratio=ratio,
    )


def partial_start(reference: list[int], gen_len: int, ratio: float, seed: int, mask_id: int, pad_id: int) -> list[int]:
    """The reference padded to ``gen_len``, each position masked with probability ``ratio`` (at least one)."""
    if len(reference) > gen_len:
        raise ValueError(f"reference of {len(reference)} tokens is longer than gen_len={gen_len}")
    padded = list(reference) + [pad_id] * (gen_len - len(reference))
    rng = random.Random(f"{seed}:partial-start")
    masked = [rng.random() < ratio for _ in padded]
    if not any(masked):
        masked[rng.randrange(gen_len)] = True
    return [mask_id if m else tok for m, tok in zip(masked, padded)]
