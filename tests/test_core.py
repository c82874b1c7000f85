"""Model, tokenizer, packing and samplers: shapes, invariances and clear errors on bad input."""

import itertools
import random

import pytest
import torch
from transformers import AutoTokenizer

from medlm.checkpoint import checkpoint_hash, load_checkpoint, new_model, save_checkpoint
from medlm.losses import mixture_loss
from medlm.modeling import MedlmConfig, count_parameters
from medlm.packing import Packer, collate, edit_example, mask_example, padding_waste
from medlm.sampling import DecodeConfig, edit_refine, generate, mask_diffusion
from medlm.tokenizer import (
    SPECIAL_TOKENS,
    chat_prompt_ids,
    decode_response,
    response_ids,
    special_ids,
    stdlib_corpus,
    train_tokenizer,
)


@pytest.fixture(scope="module")
def tok():
    return train_tokenizer(stdlib_corpus(max_files=20), vocab_size=512)


@pytest.fixture(scope="module")
def model(tok):
    return new_model("tiny", tok, seed=0).eval()


def test_tokenizer_round_trips_through_autotokenizer(tok, tmp_path):
    tok.save_pretrained(str(tmp_path))
    again = AutoTokenizer.from_pretrained(str(tmp_path))
    sp = special_ids(again)
    assert [sp.mask, sp.delete, sp.pad, sp.im_start, sp.im_end, sp.eos] == list(range(6))
    text = "def f(x):\n    return x + 1  # ünïcode"
    assert again.decode(again.encode(text, add_special_tokens=False)) == text
    ids = chat_prompt_ids(again, prompt="hi")
    assert again.decode(ids).startswith("<|im_start|>user\nhi<|im_end|>") and ids[-1] != sp.im_end
    assert decode_response(again, response_ids(again, "ok") + [sp.pad, 7]) == "ok"
    for t in SPECIAL_TOKENS:  # specials are atomic
        assert len(again.encode(t, add_special_tokens=False)) == 1


def test_presets_and_sizes(tok):
    assert count_parameters(new_model("tiny", tok)) < 1_000_000
    assert 1_000_000 < count_parameters(new_model("small", tok)) < 10_000_000
    big = MedlmConfig.preset("llada-8b")
    assert big.hidden_size == 4096 and big.num_hidden_layers == 32
    with pytest.raises(ValueError, match="unknown preset 'huge'; known presets: llada-8b, small, tiny"):
        MedlmConfig.preset("huge")


def test_small_preset_ties_the_token_head_and_keeps_it_tied_through_a_checkpoint(tok, tmp_path):
    small = new_model("small", tok)
    assert small.token_head.weight is small.embed_tokens.weight
    assert not MedlmConfig.preset("llada-8b").tie_word_embeddings  # converted LLaDA keeps its own head
    tiny = new_model("tiny", tok)
    assert tiny.token_head.weight is not tiny.embed_tokens.weight
    with torch.no_grad():
        small.embed_tokens.weight[5].fill_(0.5)
    save_checkpoint(small, tok, tmp_path / "ck")
    again, _ = load_checkpoint(tmp_path / "ck")
    assert again.token_head.weight is again.embed_tokens.weight
    assert float(again.token_head.weight[5, 0].detach()) == 0.5


def test_packed_forward_equals_separate_forwards(model):
    g = torch.Generator().manual_seed(0)
    seqs = [torch.randint(6, 500, (n,), generator=g) for n in (5, 9, 1, 13)]
    ids = torch.cat(seqs)
    cu = torch.tensor([0, 5, 14, 15, 28], dtype=torch.int32)
    packed = model(ids, cu_seqlens=cu)
    start = 0
    for s in seqs:
        alone = model(s)
        torch.testing.assert_close(packed.token_logits[start:start + len(s)], alone.token_logits, atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(packed.insert_logits[start:start + len(s)], alone.insert_logits, atol=1e-5, rtol=1e-4)
        start += len(s)


def test_model_rejects_bad_input(model):
    with pytest.raises(ValueError, match=r"token id 9999 is outside the vocabulary \[0, 512\)"):
        model(torch.tensor([1, 9999]))
    with pytest.raises(ValueError, match="more than max_position_embeddings=256"):
        model(torch.zeros(300, dtype=torch.long))


def test_checkpoint_round_trip_and_hash(model, tok, tmp_path):
    save_checkpoint(model, tok, tmp_path / "ck")
    again, tok2 = load_checkpoint(tmp_path / "ck")
    ids = torch.arange(6, 30)
    torch.testing.assert_close(again(ids).token_logits, model(ids).token_logits)
    assert (tmp_path / "ck" / "model.safetensors").exists()
    assert checkpoint_hash(tmp_path / "ck") == checkpoint_hash(tmp_path / "ck")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_checkpoint(tmp_path / "nope")


def test_packing_and_losses(tok, model):
    sp = special_ids(tok)
    rng = random.Random(0)
    prompt, target = [sp.im_start, 10, 11], [20, 21, 22, sp.im_end]
    m = mask_example(prompt, target, sp, rng, gen_len=8)
    assert len(m["input_ids"]) == 3 + 8 and m["token_labels"][:3] == [-100] * 3
    masked = [i for i, t in enumerate(m["input_ids"]) if t == sp.mask]
    assert masked and all(m["token_labels"][i] != -100 for i in masked)
    e = edit_example(prompt, [20, 99, 22], [20, 21, 22], [-1, -1, -1, sp.im_end], sp)
    assert e["insert_labels"] == [-100, -100, sp.pad, sp.pad, sp.pad, sp.im_end]
    with pytest.raises(ValueError, match="label lengths"):
        edit_example(prompt, [20], [20, 21], [-1, -1], sp)
    with pytest.raises(ValueError, match="more than gen_len=2"):
        mask_example(prompt, target, sp, rng, gen_len=2)
    batch, waste = Packer(itertools.cycle([m, e]), max_len=40, rows=3).next_batch()
    used = sum(len(x["input_ids"]) for x in batch)
    assert used <= 3 * 40 and waste == pytest.approx(1 - used / 120)
    assert waste == 0  # 11- and 6-token examples fill rows of 40 exactly (2 x 11 + 3 x 6)
    assert padding_waste([[m, e], [m]], 40) == pytest.approx(1 - 28 / 80)
    with pytest.raises(ValueError, match="more than max_len=5"):
        Packer(iter([m]), max_len=5, rows=1).next_batch()
    terms = mixture_loss(model, collate([m, e]))
    assert set(terms) >= {"loss", "mask_loss", "edit_loss"} and torch.isfinite(terms["loss"])
    terms["loss"].backward()
    assert model.insert_head.weight.grad is not None and model.insert_head.weight.grad.abs().sum() > 0
    model.zero_grad()


def test_mask_diffusion_budget_blocks_and_threshold(model, tok):
    sp = special_ids(tok)
    prompt = [sp.im_start, 10, 11, 12]
    (resp, nfe), = mask_diffusion(model, [prompt], [DecodeConfig(gen_len=16, mask_steps=4)], sp)
    assert nfe == 4 and len(resp) == 16 and sp.mask not in resp and sp.delete not in resp
    (resp, nfe), = mask_diffusion(model, [prompt], [DecodeConfig(gen_len=16, mask_steps=8, block_size=4)], sp)
    assert nfe == 8 and sp.mask not in resp
    (_, nfe), = mask_diffusion(model, [prompt], [DecodeConfig(gen_len=16, mask_steps=16, threshold=1e-6)], sp)
    assert nfe == 1  # everything clears the threshold at once
    with pytest.raises(ValueError, match="budget of 2 mask steps is smaller than the 4 blocks"):
        generate(model, [prompt], DecodeConfig(gen_len=16, mask_steps=2, block_size=4), sp)
    with pytest.raises(ValueError, match="exceeds the model's maximum of 256 positions"):
        generate(model, [prompt], DecodeConfig(gen_len=300, mask_steps=4), sp)
    with pytest.raises(ValueError, match="outside the vocabulary"):
        generate(model, [[5000]], DecodeConfig(gen_len=4, mask_steps=4), sp)


def test_generation_is_batch_invariant_and_reports_costs(model, tok):
    sp = special_ids(tok)
    prompts = [chat_prompt_ids(tok, prompt=p) for p in ("a", "longer prompt here", "x y z")]
    cfgs = [DecodeConfig(gen_len=12, mask_steps=4, edit_steps=3, temperature=0.7, seed=s) for s in (1, 2, 3)]
    together = generate(model, prompts, cfgs, sp)
    for p, c, r in zip(prompts, cfgs, together):
        alone = generate(model, [p], [c], sp)[0]
        assert alone.output_ids == r.output_ids and alone.draft_ids == r.draft_ids
        assert r.mask_nfe == 4 and 1 <= r.edit_nfe <= 3
        assert len(r.history) == r.edit_nfe - (1 if r.edit_nfe < 3 or not r.history else 0) or len(r.history) <= 3
        assert len(r.output_ids) <= 12


def test_edit_refinement_stops_when_nothing_changes_and_respects_caps(model, tok):
    sp = special_ids(tok)
    prompt = [sp.im_start, 10]
    # an untrained model proposes edits; a cap of one edit per step bounds the change per step
    cfg = DecodeConfig(gen_len=6, mask_steps=1, edit_steps=5, max_edits_per_step=1)
    s, = edit_refine(model, [prompt], [[20, 21, 22, 23]], [cfg], sp)
    prev = [20, 21, 22, 23]
    for h in s.history:
        from rapidfuzz.distance import Levenshtein
        assert Levenshtein.distance(prev, h) <= 1
        assert len(h) <= 6
        prev = h
    assert s.nfe <= 5
    # a step that changes nothing ends the sequence: a model whose heads always say "keep" / "no insert"
    keep = new_model("tiny", tok, seed=1).eval()
    with torch.no_grad():
        keep.token_head.weight.zero_()
        keep.insert_head.weight.zero_()
        keep.insert_head.weight[sp.no_insert] = 0  # all logits equal -> argmax picks the lowest allowed id
    draft = [sp.eos, sp.eos]
    s, = edit_refine(keep, [prompt], [draft], [DecodeConfig(gen_len=6, mask_steps=1, edit_steps=5)], sp)
    assert s.nfe >= 1
