"""Convert an original LLaDA checkpoint (e.g. GSAI-ML/LLaDA-8B-Instruct) to the medlm layout.

LLaDA's names map one-to-one onto ours:

    model.transformer.wte                       -> embed_tokens
    model.transformer.blocks.N.attn_norm        -> layers.N.attn_norm
    model.transformer.blocks.N.{q,k,v}_proj     -> layers.N.attn.{q,k,v}_proj
    model.transformer.blocks.N.attn_out         -> layers.N.attn.o_proj
    model.transformer.blocks.N.ff_norm          -> layers.N.mlp_norm
    model.transformer.blocks.N.ff_proj          -> layers.N.mlp.gate_proj   (SiLU side of SwiGLU)
    model.transformer.blocks.N.up_proj          -> layers.N.mlp.up_proj
    model.transformer.blocks.N.ff_out           -> layers.N.mlp.down_proj
    model.transformer.ln_f                      -> norm
    model.transformer.ff_out                    -> token_head   (and insert_head, as a copy)

The insertion head starts as a copy of the token head (the paper's initialisation: both read the
same hidden states; fine-tuning separates them). Tensors keep their dtype; nothing is cast.

Tokens, as the real LLaDA-8B(-Instruct) checkpoint comes out (``tests/test_convert.py`` has a
fixture with this layout):

- LLaDA's tokenizer has ``<|mdm_mask|>`` but does not register it as its mask token; the converted
  tokenizer does, so it stays the mask id (126336).
- A tokenizer's own pad token is kept. LLaDA-8B's pad token is its eos, ``<|endoftext|>``, so there
  pad = eos = the insertion head's "nothing to insert" class, as LLaDA and ME-DLM pad their
  responses with ``<|endoftext|>``. Only a tokenizer without a pad token gets ``<|pad|>`` as pad.
- ``<|del|>``, ``<|pad|>``, ``<|im_start|>`` and ``<|im_end|>`` are added to the tokenizer when it lacks
  them and take the next ids. LLaDA-8B has 126464 embedding rows for a tokenizer of about 126350
  entries, so these ids fall on LLaDA's spare rows and keep those rows' weights as they are (nothing
  is resized). Only a checkpoint with no spare rows is resized, the new rows starting at the mean of
  the old ones. ``<|eot_id|>`` ends a response (``medlm.tokenizer.END_OF_TURN_TOKENS``).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from medlm.checkpoint import UNTRAINED_HEADS
from medlm.modeling import MedlmConfig
from medlm.tokenizer import DEL, IM_END, IM_START, PAD, special_ids

_BLOCK = re.compile(r"^model\.transformer\.blocks\.(\d+)\.(\w+)\.weight$")
_BLOCK_NAMES = {
    "attn_norm": "attn_norm",
    "q_proj": "attn.q_proj",
    "k_proj": "attn.k_proj",
    "v_proj": "attn.v_proj",
    "attn_out": "attn.o_proj",
    "ff_norm": "mlp_norm",
    "ff_proj": "mlp.gate_proj",
    "up_proj": "mlp.up_proj",
    "ff_out": "mlp.down_proj",
}
_TOP_NAMES = {
    "model.transformer.wte.weight": "embed_tokens.weight",
    "model.transformer.ln_f.weight": "norm.weight",
    "model.transformer.ff_out.weight": "token_head.weight",
}


def map_llada_name(name: str) -> str:
    """Our parameter name for one LLaDA parameter name; raises on names we do not know."""
    if name in _TOP_NAMES:
        return _TOP_NAMES[name]
    m = _BLOCK.match(name)
    if m and m.group(2) in _BLOCK_NAMES:
        return f"layers.{m.group(1)}.{_BLOCK_NAMES[m.group(2)]}.weight"
    raise ValueError(f"unexpected parameter {name!r} in the LLaDA checkpoint (bias terms or another architecture?)")


def read_llada_config(src: Path) -> dict:
    cfg_file = src / "config.json"
    if not cfg_file.exists():
        raise FileNotFoundError(f"{src} has no config.json")
    cfg = json.loads(cfg_file.read_text())
    kind = str(cfg.get("model_type", "")) + " " + " ".join(cfg.get("architectures", []) or [])
    if "llada" not in kind.lower():
        raise ValueError(f"{src} is not an LLaDA checkpoint (model_type={cfg.get('model_type')!r}, "
                         f"architectures={cfg.get('architectures')!r})")
    if cfg.get("include_bias") or cfg.get("weight_tying"):
        raise ValueError(f"{src}: LLaDA variants with biases or tied weights are not supported")
    return cfg


def _medlm_config(llada: dict, vocab_size: int, ids) -> MedlmConfig:
    return MedlmConfig(
        vocab_size=vocab_size,
        hidden_size=llada["d_model"],
        intermediate_size=llada.get("mlp_hidden_size") or llada["mlp_ratio"] * llada["d_model"],
        num_hidden_layers=llada["n_layers"],
        num_attention_heads=llada["n_heads"],
        num_key_value_heads=llada.get("n_kv_heads") or llada["n_heads"],
        max_position_embeddings=llada.get("max_sequence_length", 4096),
        rope_theta=float(llada.get("rope_theta", 10000.0)),
        rms_norm_eps=float(llada.get("rms_norm_eps", 1e-5)),
        mask_token_id=ids.mask,
        del_token_id=ids.delete,
        pad_token_id=ids.pad,
        eos_token_id=ids.eos,
    )


def _resize_rows(weight: torch.Tensor, rows: int) -> torch.Tensor:
    if weight.shape[0] >= rows:
        return weight
    extra = weight.float().mean(0, keepdim=True).to(weight.dtype).expand(rows - weight.shape[0], -1)
    return torch.cat([weight, extra], dim=0)


def convert_llada(src_dir: str | Path, out_dir: str | Path) -> Path:
    """Write a medlm checkpoint (config, safetensors, tokenizer) converted from ``src_dir``."""
    from transformers import AutoTokenizer

    src, out = Path(src_dir), Path(out_dir)
    llada = read_llada_config(src)
    files = sorted(src.glob("*.safetensors"))
    if not files:
        raise FileNotFoundError(f"{src} has no .safetensors weights")

    tok = AutoTokenizer.from_pretrained(str(src), trust_remote_code=False)
    if tok.mask_token is None:
        mask = "<|mdm_mask|>"
        if tok.convert_tokens_to_ids(mask) in (None, tok.unk_token_id):
            raise ValueError(f"{src}: tokenizer has neither a mask_token nor {mask!r}")
        tok.mask_token = mask
    if tok.pad_token is None:
        tok.pad_token = PAD
    missing = [t for t in (DEL, PAD, IM_START, IM_END) if tok.convert_tokens_to_ids(t) in (None, tok.unk_token_id)]
    if missing:
        tok.add_special_tokens({"additional_special_tokens": missing})
    ids = special_ids(tok)

    state: dict[str, torch.Tensor] = {}
    for f in files:
        with safe_open(str(f), framework="pt") as fh:
            for name in fh.keys():
                state[map_llada_name(name)] = fh.get_tensor(name)
    n_layers = llada["n_layers"]
    expected = set(_TOP_NAMES.values()) | {
        f"layers.{i}.{ours}.weight" for i in range(n_layers) for ours in _BLOCK_NAMES.values()
    }
    absent = sorted(expected - set(state))
    if absent:
        raise ValueError(f"LLaDA checkpoint at {src} lacks {len(absent)} parameters, e.g. {absent[:3]}")

    old_vocab = state["embed_tokens.weight"].shape[0]
    vocab = max(old_vocab, len(tok))
    for key in ("embed_tokens.weight", "token_head.weight"):
        state[key] = _resize_rows(state[key], vocab)
    state["insert_head.weight"] = state["token_head.weight"].clone()

    cfg = _medlm_config(llada, vocab, ids)
    out.mkdir(parents=True, exist_ok=True)
    cfg.architectures = ["MedlmForEditing"]
    cfg.save_pretrained(str(out))
    save_file({k: v.contiguous() for k, v in state.items()}, str(out / "model.safetensors"), metadata={"format": "pt"})
    tok.save_pretrained(str(out))
    (out / "medlm_meta.json").write_text(
        json.dumps({"converted_from": str(src), "source_vocab": old_vocab, "added_tokens": missing,
                    # the insertion head is a copy of the token head: trained on nothing yet
                    **UNTRAINED_HEADS}, indent=2)
    )
    return out
