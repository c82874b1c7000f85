"""Samplers over packed batches: mask diffusion drafts, then parallel edit refinement.

Both loops keep every sequence as a plain token list and pack only the sequences still running into
one row per step, so a finished sequence costs nothing, lengths may change freely while editing, and
a request decodes the same whether it runs alone or packed with others (no shared padding, per
request seeds).

Mask diffusion (LLaDA's ``generate``): a response of ``gen_len`` masks is filled in ``mask_steps``
forward passes. Each step predicts every masked position, then commits the highest-ranked ones:
``ceil(masked_left / steps_left)`` of them (LLaDA's ``get_num_transfer_tokens`` schedule), or all
above ``threshold`` when that is more. With ``block_size`` the response is filled block by block
(semi-autoregressive), the step budget split evenly over blocks. ``<|del|>`` and ``<|mask|>`` are
never sampled here. The LLaDA options a user relies on are ``DecodeConfig`` fields:

- ``temperature`` > 0 samples each position by Gumbel-max on float64 logits
  (``argmax exp(l) / (-log u)^T``) and ranks by the *clean* softmax probability of the sampled token;
- ``remasking="random"`` ranks by uniform random scores instead of confidence;
- ``cfg_scale`` > 0 runs the model a second time with the prompt fully masked (one more packed
  sequence, so batching still does not change a result) and uses ``un + (cfg + 1) * (cond - un)``;
- ``logits_eos_inf`` never samples an end token; ``confidence_eos_eot_inf`` ranks a position whose
  sampled token is an end token last (ME-DLM's and LLaDA-Instruct's evaluation setting). End tokens:
  ``SpecialIds.end_ids`` (``<|im_end|>``, eos, a tokenizer's own ``<|eot_id|>``), pad (the 8B's
  padding is its eos) and ``stop_ids``.

Random numbers, in the order a reference must draw them to reproduce a decode: one CPU
``torch.Generator`` per request seeded with ``seed``; at every mask step, first (``temperature`` > 0)
a float64 uniform tensor ``[n_masked, vocab]`` for the Gumbel noise, then (``remasking="random"``) a
float64 uniform vector ``[n_masked]`` of scores, where ``n_masked`` counts all still-masked response
positions (every block, in position order). Ties in the ranking go to the leftmost position.

Edit refinement: up to ``edit_steps`` forward passes over prompt + draft (pads stripped). The token
head proposes keep / replace / delete per response token, the insertion head one insert per gap;
all proposals of a step are applied at once (optionally only the ``max_edits_per_step`` most
confident), the response never grows past ``max_len``, and a sequence stops as soon as a step
proposes nothing.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Callable, Mapping, Optional, Sequence

import torch

from medlm.edits import NO_INSERT, apply_edits
from medlm.packing import pack
from medlm.tokenizer import SpecialIds

NEG_INF = float("-inf")
REMASKING = ("low_confidence", "random")


@dataclass
class DecodeConfig:
    """Budgets and knobs for one request."""

    gen_len: int = 64
    mask_steps: int = 64
    edit_steps: int = 0
    threshold: Optional[float] = None
    block_size: Optional[int] = None
    max_edits_per_step: Optional[int] = None
    max_len: Optional[int] = None  # cap on the edited response length; default gen_len
    temperature: float = 0.0
    seed: int = 0
    remasking: str = "low_confidence"  # or "random": the commit order of mask diffusion (module note)
    cfg_scale: float = 0.0  # classifier-free guidance of mask diffusion; 0 = off
    logits_eos_inf: bool = False  # never sample an end token while drafting
    confidence_eos_eot_inf: bool = False  # commit end tokens last while drafting
    stop_ids: tuple[int, ...] = ()  # more token ids that end a response, besides SpecialIds.end_ids

    def validate(self, max_positions: int | None = None, prompt_len: int = 0, vocab_size: int | None = None) -> None:
        if self.remasking not in REMASKING:
            raise ValueError(f"remasking must be one of {', '.join(map(repr, REMASKING))}, got {self.remasking!r}")
        if isinstance(self.cfg_scale, bool) or not isinstance(self.cfg_scale, (int, float)) \
                or not math.isfinite(self.cfg_scale) or self.cfg_scale < 0:
            raise ValueError(f"cfg_scale must be a finite number >= 0, got {self.cfg_scale!r}")
        if self.remasking == "random" and self.threshold is not None:
            raise ValueError("remasking='random' ranks by random scores, which a confidence threshold cannot "
                             "compare against; leave threshold unset")
        if isinstance(self.stop_ids, (str, bytes)) or not all(
                isinstance(t, int) and not isinstance(t, bool) for t in self.stop_ids):
            raise ValueError(f"stop_ids must be a list of token ids (integers), got {self.stop_ids!r}")
        bad = [t for t in self.stop_ids if t < 0 or (vocab_size is not None and t >= vocab_size)]
        if bad:
            where = f"[0, {vocab_size})" if vocab_size is not None else "the non-negative ids"
            raise ValueError(f"stop_ids: token id {bad[0]} is outside the vocabulary {where}")
        if self.gen_len < 1:
            raise ValueError(f"gen_len must be >= 1, got {self.gen_len}")
        if self.mask_steps < 1:
            raise ValueError(f"mask_steps must be >= 1, got {self.mask_steps}")
        if self.edit_steps < 0:
            raise ValueError(f"edit_steps must be >= 0, got {self.edit_steps}")
        if self.threshold is not None and not 0.0 < self.threshold <= 1.0:
            raise ValueError(f"threshold must be in (0, 1], got {self.threshold}")
        if self.max_edits_per_step is not None and self.max_edits_per_step < 1:
            raise ValueError(f"max_edits_per_step must be >= 1, got {self.max_edits_per_step}")
        if self.temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {self.temperature}")
        if self.block_size is not None:
            if self.block_size < 1:
                raise ValueError(f"block_size must be >= 1, got {self.block_size}")
            n_blocks = math.ceil(self.gen_len / self.block_size)
            if self.mask_steps < n_blocks:
                raise ValueError(
                    f"a budget of {self.mask_steps} mask steps is smaller than the {n_blocks} blocks of "
                    f"{self.block_size} tokens in gen_len={self.gen_len}"
                )
        if max_positions is not None:
            longest = prompt_len + max(self.gen_len, self.max_len or 0)
            if longest > max_positions:
                raise ValueError(
                    f"prompt of {prompt_len} tokens + response of {max(self.gen_len, self.max_len or 0)} tokens "
                    f"= {longest} exceeds the model's maximum of {max_positions} positions"
                )


# DecodeConfig fields a job or request may set beside its step budget (the LLaDA decoding options)
DECODE_OPTIONS = ("temperature", "remasking", "cfg_scale", "logits_eos_inf", "confidence_eos_eot_inf", "stop_ids")


def check_decode_options(options: Optional[Mapping] = None, vocab_size: Optional[int] = None) -> dict:
    """``options`` checked (unknown keys and bad values refused naming the field) as DecodeConfig kwargs."""
    opts = dict(options or {})
    unknown = sorted(set(opts) - set(DECODE_OPTIONS))
    if unknown:
        raise ValueError(f"unknown decode option {unknown[0]!r}; known: {', '.join(DECODE_OPTIONS)}")
    if isinstance(opts.get("stop_ids"), list):
        opts["stop_ids"] = tuple(opts["stop_ids"])
    for flag in ("logits_eos_inf", "confidence_eos_eot_inf"):
        if flag in opts and not isinstance(opts[flag], bool):
            raise ValueError(f"{flag} must be true or false, got {opts[flag]!r}")
    DecodeConfig(**opts).validate(vocab_size=vocab_size)
    return opts


@dataclass
class DecodeResult:
    output_ids: list[int]  # final response (pads removed)
    draft_ids: list[int]  # response before editing (pads removed)
    mask_nfe: int = 0
    edit_nfe: int = 0
    n_replace: int = 0
    n_delete: int = 0
    n_insert: int = 0
    mask_time_s: float = 0.0
    edit_time_s: float = 0.0
    history: list[list[int]] = field(default_factory=list)  # response after each edit step

    @property
    def nfe(self) -> int:
        return self.mask_nfe + self.edit_nfe


def _model_device(model) -> torch.device:
    return next(model.parameters()).device


def _check_prompt(prompt: Sequence[int], vocab_size: int) -> None:
    if len(prompt) < 1:
        raise ValueError("prompt must hold at least one token (the insertion head reads gap 0 at the last prompt token)")
    lo, hi = min(prompt), max(prompt)
    if lo < 0 or hi >= vocab_size:
        raise ValueError(f"prompt token id {hi if hi >= vocab_size else lo} is outside the vocabulary [0, {vocab_size})")


def _block_schedule(cfg: DecodeConfig) -> list[tuple[int, int, int]]:
    """(start, end, steps) per block of the response."""
    size = cfg.block_size or cfg.gen_len
    bounds = [(s, min(s + size, cfg.gen_len)) for s in range(0, cfg.gen_len, size)]
    base, extra = divmod(cfg.mask_steps, len(bounds))
    return [(s, e, base + (1 if b < extra else 0)) for b, (s, e) in enumerate(bounds)]


def end_token_ids(cfg: DecodeConfig, special: SpecialIds) -> list[int]:
    """Tokens ``logits_eos_inf`` / ``confidence_eos_eot_inf`` act on: every end token and pad (LLaDA's
    eos is also its padding), sorted."""
    return sorted(set(special.end_ids) | {special.pad} | set(cfg.stop_ids))


def _llada_sample(logits: torch.Tensor, temperature: float, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """(token, clean probability of that token) per row at ``temperature`` > 0, as LLaDA samples:
    Gumbel-max in float64, ``argmax exp(l) / (-log u)^T``, u drawn from ``gen`` on the CPU."""
    l64 = logits.double()
    u = torch.rand(l64.shape, generator=gen, dtype=torch.float64).to(l64.device)
    pred = torch.argmax(l64.exp() / (-torch.log(u)) ** temperature, dim=-1)
    prob = torch.softmax(l64, dim=-1).gather(-1, pred[:, None])[:, 0]
    return pred, prob


@torch.no_grad()
def mask_diffusion(
    model,
    prompts: Sequence[Sequence[int]],
    configs: Sequence[DecodeConfig],
    special: SpecialIds,
    on_step: Optional[Callable[[int, int, list[int]], None]] = None,
    starts: Optional[Sequence[Optional[Sequence[int]]]] = None,
) -> list[tuple[list[int], int]]:
    """Draft each response by masked diffusion. Returns (raw response of gen_len tokens, NFE) per prompt.

    ``on_step(seq_index, step, response)`` sees every sequence's raw response (``<|mask|>`` where not yet
    committed) after each of its steps, for streaming; it only reads, so results do not change.
    ``starts[i]`` (``gen_len`` tokens, ``<|mask|>`` where to draft) replaces the all-mask start of
    request ``i`` (training drafts from a partly masked reference); None keeps all masks.
    """
    device = _model_device(model)
    n = len(prompts)
    starts = list(starts) if starts is not None else [None] * n
    if len(starts) != n:
        raise ValueError(f"{n} prompts but {len(starts)} starts")
    for i, (st, cfg) in enumerate(zip(starts, configs)):
        if st is not None and len(st) != cfg.gen_len:
            raise ValueError(f"starts[{i}] holds {len(st)} tokens, not gen_len={cfg.gen_len}")
    seqs = [list(p) + (list(st) if st is not None else [special.mask] * c.gen_len)
            for p, c, st in zip(prompts, configs, starts)]
    plen = [len(p) for p in prompts]
    schedules = [_block_schedule(c) for c in configs]
    block_idx = [0] * n
    steps_in_block = [0] * n
    nfe = [0] * n
    gens = [torch.Generator(device="cpu").manual_seed(int(c.seed)) for c in configs]
    banned = torch.tensor([special.mask, special.delete], device=device)
    ends = [torch.tensor(end_token_ids(c, special), device=device) for c in configs]
    end_sets = [set(end_token_ids(c, special)) for c in configs]

    def masked_left(i: int) -> list[int]:
        return [j for j in range(plen[i], len(seqs[i])) if seqs[i][j] == special.mask]

    active = [i for i in range(n) if masked_left(i)]
    while active:
        masked = [masked_left(i) for i in active]
        # every request's sequence, then the prompt-masked copies of the requests with guidance
        guided = [a for a, i in enumerate(active) if configs[i].cfg_scale > 0]
        batch = [seqs[i] for i in active]
        batch += [[special.mask] * plen[active[a]] + seqs[active[a]][plen[active[a]]:] for a in guided]
        rows = masked + [masked[a] for a in guided]
        ids, cu = pack(batch, device)
        offsets = cu[:-1].tolist()
        index = torch.tensor([offsets[b] + j for b, m in enumerate(rows) for j in m], device=device)
        logits = model(ids, cu_seqlens=cu, logits_index=index, return_insert=False).token_logits.float()
        row_start = [0]  # first logits row of each entry of `rows`
        for m in rows:
            row_start.append(row_start[-1] + len(m))
        n_cond = row_start[len(active)]
        for g, a in enumerate(guided):  # un + (cfg + 1) * (cond - un), before any -inf
            cond = logits[row_start[a]: row_start[a + 1]]
            un = logits[row_start[len(active) + g]: row_start[len(active) + g + 1]]
            cond.copy_(un + (configs[active[a]].cfg_scale + 1) * (cond - un))
        logits = logits[:n_cond]
        logits[:, banned] = NEG_INF
        for a, i in enumerate(active):
            if configs[i].logits_eos_inf:
                logits[row_start[a]: row_start[a + 1], ends[i]] = NEG_INF
        # one softmax / max for the whole packed batch, then plain-Python bookkeeping per request
        conf_t, pred_t = torch.softmax(logits, dim=-1).max(dim=-1)
        conf_all, pred_all = conf_t.tolist(), pred_t.tolist()
        for a, i in enumerate(active):
            cfg = configs[i]
            m = masked[a]
            conf = conf_all[row_start[a]: row_start[a + 1]]
            pred = pred_all[row_start[a]: row_start[a + 1]]
            # per-request random numbers from the request's own generator (module note: their order),
            # so a request decodes the same alone or packed
            if cfg.temperature > 0:
                p_t, c_t = _llada_sample(logits[row_start[a]: row_start[a + 1]], cfg.temperature, gens[i])
                pred, conf = p_t.tolist(), c_t.tolist()
            if cfg.remasking == "random":
                conf = torch.rand(len(m), generator=gens[i], dtype=torch.float64).tolist()
            if cfg.confidence_eos_eot_inf:
                conf = [NEG_INF if t in end_sets[i] else c for t, c in zip(pred, conf)]
            nfe[i] += 1
            # candidates: masked positions of the current block
            while True:
                b_start, b_end, b_steps = schedules[i][block_idx[i]]
                in_block = [k for k, j in enumerate(m) if b_start <= j - plen[i] < b_end]
                if in_block:
                    break
                block_idx[i] += 1
                steps_in_block[i] = 0
            steps_left = max(1, b_steps - steps_in_block[i])
            k = math.ceil(len(in_block) / steps_left)
            if cfg.threshold is not None:
                k = max(k, sum(1 for c in in_block if conf[c] >= cfg.threshold))
            k = min(k, len(in_block))
            # highest ranked first; ties go to the leftmost position (deterministic)
            chosen = sorted(in_block, key=lambda c: (-conf[c], c))[:k]
            for c in chosen:
                seqs[i][m[c]] = pred[c]
            steps_in_block[i] += 1
            if on_step is not None:
                on_step(i, nfe[i], seqs[i][plen[i]:])
        active = [i for i in active if any(t == special.mask for t in seqs[i][plen[i]:])]
    return [(seqs[i][plen[i]:], nfe[i]) for i in range(n)]


def strip_padding(response: Sequence[int], special: SpecialIds) -> list[int]:
    """Remove ``<|pad|>`` wherever the draft committed it (also mid-sequence) before editing."""
    return [t for t in response if t != special.pad]


@dataclass
class EditState:
    prompt: list[int]
    response: list[int]
    cfg: DecodeConfig
    nfe: int = 0
    n_replace: int = 0
    n_delete: int = 0
    n_insert: int = 0
    done: bool = False
    history: list[list[int]] = field(default_factory=list)
    # labels (medlm.edits format) of the last applied step, against the response before it
    last_labels: Optional[tuple[list[int], list[int]]] = None


@torch.no_grad()
def edit_step(model, states: Sequence[EditState], special: SpecialIds) -> None:
    """One parallel edit step for every state given (they are packed into one forward pass)."""
    device = _model_device(model)
    seqs = [s.prompt + s.response for s in states]
    ids, cu = pack(seqs, device)
    offsets = cu[:-1].tolist()
    # rows from the last prompt token to the end: gap g of the response is read at row g,
    # response token i at row i + 1
    index = torch.tensor(
        [offsets[a] + j for a, s in enumerate(states) for j in range(len(s.prompt) - 1, len(seqs[a]))], device=device
    )
    out = model(ids, cu_seqlens=cu, logits_index=index, return_insert=True)
    tok_logits = out.token_logits.float()
    ins_logits = out.insert_logits.float()
    tok_logits[:, [special.mask, special.pad]] = NEG_INF
    ins_logits[:, [special.mask, special.delete]] = NEG_INF
    tok_conf_t, tok_pred_t = torch.softmax(tok_logits, -1).max(-1)
    ins_conf_t, ins_pred_t = torch.softmax(ins_logits, -1).max(-1)
    tok_pred, tok_conf = tok_pred_t.tolist(), tok_conf_t.tolist()
    ins_pred, ins_conf = ins_pred_t.tolist(), ins_conf_t.tolist()

    row = 0
    for s in states:
        n = len(s.response)
        rows = slice(row, row + n + 1)
        row += n + 1
        t_pred, t_conf = tok_pred[rows][1:], tok_conf[rows][1:]
        g_pred, g_conf = ins_pred[rows], ins_conf[rows]
        s.nfe += 1
        # proposals: (confidence, kind, index)
        props = [(t_conf[i], 0, i) for i in range(n) if t_pred[i] != s.response[i]]
        props += [(g_conf[g], 1, g) for g in range(n + 1) if g_pred[g] != special.no_insert]
        if s.cfg.max_edits_per_step is not None and len(props) > s.cfg.max_edits_per_step:
            props = sorted(props, reverse=True)[: s.cfg.max_edits_per_step]
        max_len = s.cfg.max_len or s.cfg.gen_len
        n_del = sum(1 for c, kind, i in props if kind == 0 and t_pred[i] == special.delete)
        n_ins_allowed = max(0, max_len - (n - n_del))
        inserts = sorted((p for p in props if p[1] == 1), reverse=True)[:n_ins_allowed]
        props = [p for p in props if p[1] == 0] + inserts
        if not props:
            s.done = True
            continue
        token_target = list(s.response)
        insert_target = [NO_INSERT] * (n + 1)
        for _, kind, i in props:
            if kind == 0:
                token_target[i] = t_pred[i]
                if t_pred[i] == special.delete:
                    s.n_delete += 1
                else:
                    s.n_replace += 1
            else:
                insert_target[i] = g_pred[i]
                s.n_insert += 1
        s.response = apply_edits(s.response, token_target, insert_target, del_id=special.delete)
        s.history.append(list(s.response))
        s.last_labels = (token_target, insert_target)


def edit_refine(
    model,
    prompts: Sequence[Sequence[int]],
    drafts: Sequence[Sequence[int]],
    configs: Sequence[DecodeConfig],
    special: SpecialIds,
    on_step: Optional[Callable[[int, int, list[int], tuple[list[int], list[int]]], None]] = None,
) -> list[EditState]:
    """Refine each draft for up to ``cfg.edit_steps`` parallel steps; stops early when nothing changes.

    ``on_step(seq_index, step, response, labels)`` is called after every applied step (for
    streaming); ``labels`` are the step's ``(token_target, insert_target)`` against the response
    before it, so a client can show exactly which tokens the step replaced, deleted and inserted.
    """
    states = [EditState(list(p), list(d), c) for p, d, c in zip(prompts, drafts, configs)]
    for s in states:
        if s.cfg.edit_steps == 0:
            s.done = True
    while True:
        active = [i for i, s in enumerate(states) if not s.done and s.nfe < s.cfg.edit_steps]
        if not active:
            break
        before = {i: len(states[i].history) for i in active}
        edit_step(model, [states[i] for i in active], special)
        if on_step is not None:
            for i in active:
                labels = states[i].last_labels
                if len(states[i].history) > before[i] and labels is not None:  # labels: set by every applied step
                    on_step(i, states[i].nfe, states[i].response, labels)
    return states


def generate(
    model,
    prompts: Sequence[Sequence[int]],
    configs: Sequence[DecodeConfig] | DecodeConfig,
    special: SpecialIds,
    on_draft: Optional[Callable[[int, list[int]], None]] = None,
    on_edit_step: Optional[Callable[[int, int, list[int], tuple[list[int], list[int]]], None]] = None,
    on_mask_step: Optional[Callable[[int, int, list[int]], None]] = None,
) -> list[DecodeResult]:
    """Draft with mask diffusion, strip padding, then refine with edits; one result per prompt.

    The callbacks watch a decode as it runs (see :func:`mask_diffusion` and :func:`edit_refine`);
    ``on_draft(seq_index, draft)`` gets the draft with padding stripped, as editing starts from it.
    """
    if isinstance(configs, DecodeConfig):
        configs = [configs] * len(prompts)
    if len(configs) != len(prompts):
        raise ValueError(f"{len(prompts)} prompts but {len(configs)} decode configs")
    for p, c in zip(prompts, configs):
        _check_prompt(p, model.config.vocab_size)
        c.validate(model.config.max_position_embeddings, len(p), vocab_size=model.config.vocab_size)
    if not prompts:
        return []
    was_training = model.training
    model.eval()
    try:
        t0 = time.perf_counter()
        drafts = mask_diffusion(model, prompts, configs, special, on_step=on_mask_step)
        t1 = time.perf_counter()
        stripped = [strip_padding(d, special) for d, _ in drafts]
        if on_draft is not None:
            for i, d in enumerate(stripped):
                on_draft(i, d)
        states = edit_refine(model, prompts, stripped, configs, special, on_step=on_edit_step)
        t2 = time.perf_counter()
    finally:
        model.train(was_training)
    n = len(prompts)
    return [
        DecodeResult(
            output_ids=states[i].response,
            draft_ids=stripped[i],
            mask_nfe=drafts[i][1],
            edit_nfe=states[i].nfe,
            n_replace=states[i].n_replace,
            n_delete=states[i].n_delete,
            n_insert=states[i].n_insert,
            mask_time_s=(t1 - t0) / n,
            edit_time_s=(t2 - t1) / n,
            history=states[i].history,
        )
        for i in range(n)
    ]
