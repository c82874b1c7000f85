"""Our mask-diffusion drafter against a straight-line reference of LLaDA's ``generate``.

The reference below is written from the published algorithm (LLaDA, arXiv 2502.09992, and the
options its evaluation documents), one sequence at a time and unpacked, not from our sampler's code:
equal blocks with equal steps, LLaDA's per-step token counts (``get_num_transfer_tokens``),
Gumbel-max in float64 at T > 0 with ranking by the clean softmax probability, random remasking,
classifier-free guidance with a fully masked prompt, and the EOS options. It draws its random
numbers in the order ``medlm.sampling`` documents (one generator per request; per step the Gumbel
uniforms of the still-masked positions, then the random scores), so both see the same noise.

Where the reference states an intended behaviour rather than a line of LLaDA's file (see the
fidelity notes): ``confidence_eos_eot_inf`` ranks every end token last (``-inf``) and only the
current block's masked positions are candidates; ties go to the leftmost position; mask and
``<|del|>`` are never sampled.
"""

import pytest
import torch

from medlm.checkpoint import new_model
from medlm.sampling import DecodeConfig, end_token_ids, generate, mask_diffusion
from medlm.tokenizer import chat_prompt_ids, decode_response, special_ids, stdlib_corpus, train_tokenizer

NEG_INF = float("-inf")


def transfer_counts(n_masked: int, steps: int) -> list[int]:
    """LLaDA's schedule: the block's masks spread evenly over its steps, the remainder first."""
    base, extra = divmod(n_masked, steps)
    return [base + (1 if s < extra else 0) for s in range(steps)]


def reference_generate(forward, prompt, *, steps, gen_length, block_length, mask_id, banned, end_ids,
                       temperature=0.0, cfg_scale=0.0, remasking="low_confidence", logits_eos_inf=False,
                       confidence_eos_eot_inf=False, seed=0):
    """One prompt, unpacked; ``forward(ids) -> [len, vocab]`` float logits. Returns the response ids."""
    gen = torch.Generator().manual_seed(seed)
    P = len(prompt)
    x = torch.tensor(list(prompt) + [mask_id] * gen_length)
    assert gen_length % block_length == 0
    num_blocks = gen_length // block_length
    assert steps % num_blocks == 0
    steps_per_block = steps // num_blocks
    for b in range(num_blocks):
        lo, hi = P + b * block_length, P + (b + 1) * block_length
        counts = transfer_counts(int((x[lo:hi] == mask_id).sum()), steps_per_block)
        for s in range(steps_per_block):
            masked = x == mask_id
            logits = forward(x).float()
            if cfg_scale > 0:
                un_x = x.clone()
                un_x[:P] = mask_id
                un = forward(un_x).float()
                logits = un + (cfg_scale + 1) * (logits - un)
            logits[:, banned] = NEG_INF
            if logits_eos_inf:
                logits[:, end_ids] = NEG_INF
            l64 = logits.double()
            positions = masked.nonzero()[:, 0]  # every masked position, ascending
            if temperature > 0:
                u = torch.rand((len(positions), l64.shape[1]), generator=gen, dtype=torch.float64)
                gumbel = torch.ones_like(l64)
                gumbel[positions] = (-torch.log(u)) ** temperature
                x0 = torch.argmax(l64.exp() / gumbel, dim=-1)
            else:
                x0 = torch.argmax(l64, dim=-1)
            if remasking == "low_confidence":
                score = torch.softmax(l64, dim=-1).gather(-1, x0[:, None])[:, 0]
            elif remasking == "random":
                score = torch.full((len(x),), NEG_INF, dtype=torch.float64)
                score[positions] = torch.rand(len(positions), generator=gen, dtype=torch.float64)
            else:
                raise NotImplementedError(remasking)
            if confidence_eos_eot_inf:
                score[torch.isin(x0, torch.tensor(end_ids))] = NEG_INF
            candidates = [j for j in range(lo, hi) if masked[j]]
            ranked = sorted(candidates, key=lambda j: (-float(score[j]), j))
            for j in ranked[: counts[s]]:
                x[j] = x0[j]
    return x[P:].tolist()


@pytest.fixture(scope="module")
def setup():
    tok = train_tokenizer(stdlib_corpus(max_files=10), vocab_size=384)
    sp = special_ids(tok)
    model = new_model("tiny", tok, seed=3).eval()
    # an untrained model almost never proposes an end token; push them up so the EOS options matter
    push = torch.zeros(model.config.vocab_size)
    push[[sp.im_end, sp.eos, sp.pad]] = 2.5
    model.token_head.register_forward_hook(lambda mod, inp, out: out + push.to(out.dtype))
    prompts = [chat_prompt_ids(tok, prompt=p) for p in ("def f(x):", "import os", "a b c d e f")]
    return tok, sp, model, prompts


CASES = {
    "greedy": dict(),
    "greedy_eos_confidence": dict(confidence_eos_eot_inf=True),
    "greedy_eos_logits": dict(logits_eos_inf=True),
    "sampled": dict(temperature=0.8),
    "sampled_eos_confidence": dict(temperature=1.0, confidence_eos_eot_inf=True),
    "random_greedy": dict(remasking="random"),
    "random_sampled_eos": dict(remasking="random", temperature=0.6, confidence_eos_eot_inf=True),
    "cfg": dict(cfg_scale=1.5, temperature=0.5),
}


@pytest.mark.parametrize("name", list(CASES))
def test_drafts_match_the_reference_token_for_token(setup, name):
    tok, sp, model, prompts = setup
    opts = CASES[name]
    gen_len, steps, block = 16, 8, 8
    configs = [DecodeConfig(gen_len=gen_len, mask_steps=steps, block_size=block, seed=11 + i, **opts)
               for i in range(len(prompts))]
    ours = [r for r, _ in mask_diffusion(model, prompts, configs, sp)]  # all prompts packed together

    def forward(ids):
        with torch.no_grad():
            return model(ids, return_insert=False).token_logits

    for prompt, cfg, got in zip(prompts, configs, ours):
        want = reference_generate(forward, prompt, steps=steps, gen_length=gen_len, block_length=block,
                                  mask_id=sp.mask, banned=[sp.mask, sp.delete], end_ids=end_token_ids(cfg, sp),
                                  seed=cfg.seed, **opts)
        assert got == want, (name, tok.convert_ids_to_tokens(got), tok.convert_ids_to_tokens(want))


def test_eos_options_change_what_is_drafted(setup):
    """Not vacuous: the pushed model drafts end tokens early; the options move or remove them."""
    _, sp, model, prompts = setup
    ends = set(end_token_ids(DecodeConfig(), sp))
    base = dict(gen_len=16, mask_steps=8, block_size=8)

    def drafts(**opts):
        return [r for r, _ in mask_diffusion(model, prompts, [DecodeConfig(**base, **opts)] * len(prompts), sp)]

    plain, no_eos = drafts(), drafts(logits_eos_inf=True)
    assert any(t in ends for r in plain for t in r)
    assert not any(t in ends for r in no_eos for t in r)
    # ranked last: with one block and one token per step, every end token is committed after every other token
    order = []
    mask_diffusion(model, prompts[:1], [DecodeConfig(gen_len=8, mask_steps=8, confidence_eos_eot_inf=True)], sp,
                   on_step=lambda i, step, resp: order.append(list(resp)))
    committed = [next(j for j, (a, b) in enumerate(zip(prev, cur)) if a != b)
                 for prev, cur in zip([[sp.mask] * 8] + order[:-1], order)]
    kinds = [order[-1][j] in ends for j in committed]
    assert kinds == sorted(kinds), kinds  # False (content) before True (end tokens)


def test_every_option_is_batch_invariant(setup):
    """A seeded request gives the same draft and result alone or packed with others, with every option."""
    _, sp, model, prompts = setup
    opts = list(CASES.values()) + [dict(stop_ids=(7,), cfg_scale=0.5, remasking="random", logits_eos_inf=True)]
    configs = [DecodeConfig(gen_len=12, mask_steps=6, edit_steps=2, seed=5 + k, **o) for k, o in enumerate(opts)]
    batch_prompts = [prompts[k % len(prompts)] for k in range(len(configs))]
    together = generate(model, batch_prompts, configs, sp)
    for p, c, r in zip(batch_prompts, configs, together):
        alone, = generate(model, [p], [c], sp)
        assert (alone.draft_ids, alone.output_ids, alone.nfe) == (r.draft_ids, r.output_ids, r.nfe), c


def test_stop_ids_and_eot_end_a_response(setup):
    tok, sp, _, _ = setup
    word = tok.encode(" return", add_special_tokens=False)
    assert decode_response(tok, word + [sp.im_end] + word) == " return"
    assert decode_response(tok, word + [9] + word, stop_ids=[9]) == " return"
    # a tokenizer with LLaDA-Instruct's end-of-turn token stops there on its own
    tok2 = train_tokenizer(stdlib_corpus(max_files=3), vocab_size=300)
    tok2.add_special_tokens({"additional_special_tokens": ["<|eot_id|>"]})
    sp2 = special_ids(tok2)
    eot = tok2.convert_tokens_to_ids("<|eot_id|>")
    assert sp2.stops == (eot,) and eot in sp2.end_ids and eot in end_token_ids(DecodeConfig(), sp2)
    w2 = tok2.encode(" return", add_special_tokens=False)
    assert decode_response(tok2, w2 + [eot] + w2) == " return"


@pytest.mark.parametrize("field, value, message", [
    ("remasking", "top_k", "remasking must be one of 'low_confidence', 'random', got 'top_k'"),
    ("cfg_scale", -0.5, "cfg_scale must be a finite number >= 0"),
    ("cfg_scale", float("nan"), "cfg_scale must be a finite number >= 0"),
    ("stop_ids", (10**6,), "stop_ids: token id 1000000 is outside the vocabulary"),
    ("stop_ids", ("<|eot_id|>",), "stop_ids must be a list of token ids"),
])
def test_bad_options_are_refused_before_any_work_naming_the_field(setup, field, value, message):
    _, sp, model, prompts = setup
    calls = []
    handle = model.register_forward_hook(lambda *a: calls.append(1))
    try:
        with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
            generate(model, prompts[:1], [DecodeConfig(gen_len=4, mask_steps=2, **{field: value})], sp)
    finally:
        handle.remove()
    assert calls == []
    with pytest.raises(ValueError, match="remasking='random'.*threshold"):
        DecodeConfig(remasking="random", threshold=0.9).validate()
