"""LLaDA -> medlm conversion on a tiny random checkpoint written in the original layout, checked
against an independent implementation of LLaDA's forward pass."""

import json

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import save_file

from medlm.checkpoint import load_checkpoint
from medlm.convert import convert_llada
from medlm.tokenizer import special_ids, stdlib_corpus

D, H, KV, L, FF = 32, 4, 2, 2, 64


def write_tiny_llada(path, vocab):
    g = torch.Generator().manual_seed(0)

    def r(*s):
        return torch.randn(*s, generator=g) * 0.2

    hd = D // H
    sd = {"model.transformer.wte.weight": r(vocab, D), "model.transformer.ln_f.weight": 1 + r(D),
          "model.transformer.ff_out.weight": r(vocab, D)}
    for i in range(L):
        p = f"model.transformer.blocks.{i}."
        sd.update({p + "attn_norm.weight": 1 + r(D), p + "ff_norm.weight": 1 + r(D),
                   p + "q_proj.weight": r(H * hd, D), p + "k_proj.weight": r(KV * hd, D), p + "v_proj.weight": r(KV * hd, D),
                   p + "attn_out.weight": r(D, H * hd), p + "ff_proj.weight": r(FF, D), p + "up_proj.weight": r(FF, D),
                   p + "ff_out.weight": r(D, FF)})
    path.mkdir(parents=True)
    save_file(sd, str(path / "model.safetensors"))
    (path / "config.json").write_text(json.dumps({
        "model_type": "llada", "architectures": ["LLaDAModelLM"], "d_model": D, "n_heads": H, "n_kv_heads": KV,
        "n_layers": L, "mlp_hidden_size": FF, "vocab_size": vocab, "max_sequence_length": 128,
        "rope_theta": 10000.0, "rms_norm_eps": 1e-5, "include_bias": False, "weight_tying": False}))
    return sd


def llada_reference_forward(sd, ids):
    """LLaDA's forward written from its description, independent of medlm.modeling."""
    hd = D // H
    x = sd["model.transformer.wte.weight"][ids]
    T = len(ids)
    pos = torch.arange(T).float()
    inv = 1.0 / (10000.0 ** (torch.arange(0, hd, 2).float() / hd))
    ang = torch.cat([pos[:, None] * inv] * 2, -1)

    def rope(t):  # t: [H, T, hd]
        t1, t2 = t[..., : hd // 2], t[..., hd // 2:]
        return t * ang.cos() + torch.cat([-t2, t1], -1) * ang.sin()

    def rms(v, w):
        return w * v * torch.rsqrt(v.pow(2).mean(-1, keepdim=True) + 1e-5)

    for i in range(L):
        p = f"model.transformer.blocks.{i}."
        h = rms(x, sd[p + "attn_norm.weight"])
        q = (h @ sd[p + "q_proj.weight"].T).view(T, H, hd).transpose(0, 1)
        k = (h @ sd[p + "k_proj.weight"].T).view(T, KV, hd).transpose(0, 1).repeat_interleave(H // KV, 0)
        v = (h @ sd[p + "v_proj.weight"].T).view(T, KV, hd).transpose(0, 1).repeat_interleave(H // KV, 0)
        att = torch.softmax(rope(q) @ rope(k).transpose(-1, -2) / hd ** 0.5, -1)  # bidirectional
        x = x + (att @ v).transpose(0, 1).reshape(T, D) @ sd[p + "attn_out.weight"].T
        h = rms(x, sd[p + "ff_norm.weight"])
        x = x + (F.silu(h @ sd[p + "ff_proj.weight"].T) * (h @ sd[p + "up_proj.weight"].T)) @ sd[p + "ff_out.weight"].T
    return rms(x, sd["model.transformer.ln_f.weight"]) @ sd["model.transformer.ff_out.weight"].T


@pytest.fixture()
def llada_dir(tmp_path):
    # an LLaDA-like tokenizer: its own mask token, none of medlm's edit specials
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    bpe.train_from_iterator(list(stdlib_corpus(max_files=5)), trainers.BpeTrainer(
        vocab_size=380, special_tokens=["<|endoftext|>", "<|mdm_mask|>"], show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    llada_tok = PreTrainedTokenizerFast(tokenizer_object=bpe, eos_token="<|endoftext|>")
    src = tmp_path / "llada"
    sd = write_tiny_llada(src, vocab=len(llada_tok))
    llada_tok.save_pretrained(str(src))
    return src, sd, len(llada_tok)


def test_converted_model_matches_llada_forward(llada_dir, tmp_path):
    src, sd, old_vocab = llada_dir
    out = convert_llada(src, tmp_path / "medlm")
    model, tok = load_checkpoint(out)
    sp = special_ids(tok)
    assert tok.convert_ids_to_tokens(sp.mask) == "<|mdm_mask|>"
    assert model.config.mask_token_id == sp.mask
    assert len({sp.delete, sp.pad, sp.im_start, sp.im_end}) == 4 and min(sp.delete, sp.pad, sp.im_start, sp.im_end) >= old_vocab
    assert model.config.vocab_size == len(tok) == old_vocab + 4

    ids = torch.randint(0, old_vocab, (17,), generator=torch.Generator().manual_seed(1))
    ref = llada_reference_forward(sd, ids)
    out_ = model(ids)
    torch.testing.assert_close(out_.token_logits[:, :old_vocab], ref, atol=1e-4, rtol=1e-4)
    # the insertion head starts as a copy of the token head
    torch.testing.assert_close(out_.insert_logits, out_.token_logits)
    # new rows start at the mean of the old ones
    torch.testing.assert_close(model.embed_tokens.weight[sp.delete], sd["model.transformer.wte.weight"].mean(0))


SPARE_ROWS = 24  # LLaDA-8B: 126464 embedding rows for a tokenizer of about 126350 entries


@pytest.fixture()
def llada8b_layout_dir(tmp_path):
    """The real LLaDA-8B-Instruct layout in miniature: pad = eos = ``<|endoftext|>``, ``<|eot_id|>`` ends a
    turn, ``<|mdm_mask|>`` is a token but not the tokenizer's mask token, and the checkpoint has more
    embedding rows than the tokenizer has entries."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    specials = ["<|startoftext|>", "<|endoftext|>", "<|mdm_mask|>", "<|start_header_id|>", "<|end_header_id|>",
                "<|eot_id|>"]
    bpe.train_from_iterator(list(stdlib_corpus(max_files=5)), trainers.BpeTrainer(
        vocab_size=380, special_tokens=specials, show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    llada_tok = PreTrainedTokenizerFast(tokenizer_object=bpe, bos_token="<|startoftext|>", eos_token="<|endoftext|>",
                                        pad_token="<|endoftext|>")
    assert llada_tok.mask_token is None
    src = tmp_path / "llada8b"
    sd = write_tiny_llada(src, vocab=len(llada_tok) + SPARE_ROWS)
    llada_tok.save_pretrained(str(src))
    return src, sd, len(llada_tok)


def test_real_8b_layout_pad_is_eos_and_new_tokens_keep_llada_rows(llada8b_layout_dir, tmp_path):
    src, sd, n_tok = llada8b_layout_dir
    rows = n_tok + SPARE_ROWS
    out = convert_llada(src, tmp_path / "medlm")
    model, tok = load_checkpoint(out)
    sp = special_ids(tok)
    endoftext = tok.convert_tokens_to_ids("<|endoftext|>")
    # pad = eos = "nothing to insert" = <|endoftext|>, as in LLaDA's own padding
    assert sp.pad == sp.eos == sp.no_insert == endoftext
    # <|mdm_mask|> becomes the mask token; <|eot_id|> ends a response
    assert tok.convert_ids_to_tokens(sp.mask) == "<|mdm_mask|>" and model.config.mask_token_id == sp.mask
    assert sp.stops == (tok.convert_tokens_to_ids("<|eot_id|>"),)
    # the tokens medlm adds take the next ids, inside LLaDA's spare rows: nothing is resized
    added = [tok.convert_tokens_to_ids(t) for t in ("<|del|>", "<|pad|>", "<|im_start|>", "<|im_end|>")]
    assert sorted(added) == list(range(n_tok, n_tok + 4)) and sp.delete in added and sp.im_end in added
    assert model.config.vocab_size == rows == model.embed_tokens.weight.shape[0] > len(tok)
    for t in added:  # LLaDA's unused rows, as they were (not the mean of the trained rows)
        torch.testing.assert_close(model.embed_tokens.weight[t], sd["model.transformer.wte.weight"][t])
        torch.testing.assert_close(model.token_head.weight[t], sd["model.transformer.ff_out.weight"][t])
    ids = torch.randint(0, n_tok, (13,), generator=torch.Generator().manual_seed(2))
    torch.testing.assert_close(model(ids).token_logits, llada_reference_forward(sd, ids), atol=1e-4, rtol=1e-4)
    meta = json.loads((out / "medlm_meta.json").read_text())
    assert meta["source_vocab"] == rows and meta["added_tokens"] == ["<|del|>", "<|pad|>", "<|im_start|>", "<|im_end|>"]


def test_convert_rejects_other_architectures_and_missing_parts(llada_dir, tmp_path):
    src, _, _ = llada_dir
    cfg = json.loads((src / "config.json").read_text())
    bad = tmp_path / "llama"
    bad.mkdir()
    (bad / "config.json").write_text(json.dumps({"model_type": "llama"}))
    with pytest.raises(ValueError, match="not an LLaDA checkpoint .*llama"):
        convert_llada(bad, tmp_path / "o1")
    # one layer too many in the config: parameters are missing
    cfg["n_layers"] = L + 1
    (src / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match="lacks .* parameters"):
        convert_llada(src, tmp_path / "o2")
    # an unconverted LLaDA checkpoint is refused by the loader with a hint
    cfg["n_layers"] = L
    (src / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match="medlm convert"):
        load_checkpoint(src)
