"""The ME-DLM network in one file: a LLaDA-style bidirectional transformer with two heads.

* token head      -- per position, the token that should stand there. During mask diffusion it fills
                     ``<|mask|>`` positions; during editing it says keep (same id), replace (another
                     id) or delete (``<|del|>``).
* insertion head  -- per position p, the token to insert into the gap right AFTER p, or
                     ``config.no_insert_token_id`` (the pad id) for nothing. Reading gaps at the
                     token before them keeps both heads the same shape as the sequence.

Batches are packed: several sequences of any length in one row, described by cumulative lengths
(``cu_seqlens``), with block-diagonal attention. Sequences whose length changes during editing never
need re-padding. The attention kernel is the config's attention implementation
(``config._attn_implementation``, set by ``from_pretrained(..., attn_implementation=...)``):

* ``"sdpa"`` (the default) -- PyTorch SDPA, one call per packed sequence;
* ``"flash_attention_2"`` -- ``flash_attn_varlen_func`` over the whole packed row (the default when
  ``flash_attn`` is installed and CUDA is available); on tensors it cannot run on (CPU, float32) the
  forward falls back to SDPA, which computes the same attention;
* ``"eager"`` -- plain softmax attention, for debugging.

Architecture follows LLaDA (bidirectional attention, RMSNorm, RoPE, SwiGLU, optional GQA) so that an
LLaDA-8B checkpoint maps onto it one-to-one (see ``medlm.convert``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn
from transformers import PretrainedConfig, PreTrainedModel
from transformers.utils import ModelOutput

try:  # optional fast path on GPU
    from flash_attn import flash_attn_varlen_func
except Exception:  # pragma: no cover - flash-attn is not installable on CPU machines
    flash_attn_varlen_func = None


PRESETS: dict[str, dict] = {
    # tests: < 1M parameters with a 1k vocabulary
    "tiny": dict(hidden_size=64, intermediate_size=176, num_hidden_layers=4, num_attention_heads=4,
                 num_key_value_heads=2, max_position_embeddings=256),
    # CPU demo: a few million parameters. The token head is tied to the input embeddings: the toy task
    # copies numbers from the question, and with a tied head a number attended to is already the logit
    # of that number; untied, the copy plateau lasted about twice as many steps
    # (docs/toy-task.md, "Training recipe").
    "small": dict(hidden_size=192, intermediate_size=512, num_hidden_layers=4, num_attention_heads=6,
                  num_key_value_heads=6, max_position_embeddings=512, tie_word_embeddings=True),
    # config only: the real model is downloaded and converted on the user's cluster
    "llada-8b": dict(vocab_size=126464, hidden_size=4096, intermediate_size=12288, num_hidden_layers=32,
                     num_attention_heads=32, num_key_value_heads=32, max_position_embeddings=4096,
                     rope_theta=500000.0, mask_token_id=126336),
}


class MedlmConfig(PretrainedConfig):
    """Hyper-parameters plus the special token ids the samplers and losses need."""

    model_type = "medlm"

    def __init__(
        self,
        vocab_size: int = 1024,
        hidden_size: int = 64,
        intermediate_size: int = 176,
        num_hidden_layers: int = 2,
        num_attention_heads: int = 4,
        num_key_value_heads: Optional[int] = None,
        max_position_embeddings: int = 256,
        rope_theta: float = 10000.0,
        rms_norm_eps: float = 1e-5,
        initializer_range: float = 0.02,
        mask_token_id: int = 0,
        del_token_id: int = 1,
        pad_token_id: int = 2,
        eos_token_id: int = 4,
        no_insert_token_id: Optional[int] = None,
        **kwargs,
    ):
        self.vocab_size = vocab_size
        self.hidden_size = hidden_size
        self.intermediate_size = intermediate_size
        self.num_hidden_layers = num_hidden_layers
        self.num_attention_heads = num_attention_heads
        self.num_key_value_heads = num_key_value_heads or num_attention_heads
        self.max_position_embeddings = max_position_embeddings
        self.rope_theta = rope_theta
        self.rms_norm_eps = rms_norm_eps
        self.initializer_range = initializer_range
        self.mask_token_id = mask_token_id
        self.del_token_id = del_token_id
        self.no_insert_token_id = pad_token_id if no_insert_token_id is None else no_insert_token_id
        kwargs.pop("attn_implementation_hint", None)  # an unused field of configs saved before 2026-12
        kwargs.setdefault("tie_word_embeddings", False)
        # transformers 5 takes the token ids through PreTrainedConfig's **kwargs, which its typed signature hides
        super().__init__(pad_token_id=pad_token_id, eos_token_id=eos_token_id, **kwargs)  # type: ignore[call-arg]
        if hidden_size % num_attention_heads:
            raise ValueError(f"hidden_size={hidden_size} is not divisible by num_attention_heads={num_attention_heads}")
        if self.num_attention_heads % self.num_key_value_heads:
            raise ValueError(
                f"num_attention_heads={num_attention_heads} is not a multiple of num_key_value_heads={self.num_key_value_heads}"
            )

    @classmethod
    def preset(cls, name: str, **overrides) -> MedlmConfig:
        """A named configuration (``tiny``, ``small``, ``llada-8b``) with optional overrides."""
        if name not in PRESETS:
            raise ValueError(f"unknown preset {name!r}; known presets: {', '.join(sorted(PRESETS))}")
        return cls(**{**PRESETS[name], **overrides})

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads


@dataclass
class MedlmOutput(ModelOutput):
    """The forward's result, a ``transformers`` ``ModelOutput`` (attribute, key and index access).

    token_logits: ``[..., T, V]``, the token head.
    insert_logits: ``[..., T, V]``, the insertion head; ``None`` when ``return_insert=False``.
    """

    token_logits: Optional[torch.FloatTensor] = None
    insert_logits: Optional[torch.FloatTensor] = None


ATTN_IMPLEMENTATIONS = ("sdpa", "flash_attention_2", "eager")


def default_attn_implementation() -> str:
    """``flash_attention_2`` when ``flash_attn`` is installed and CUDA is available, else ``sdpa``."""
    return "flash_attention_2" if flash_attn_varlen_func is not None and torch.cuda.is_available() else "sdpa"


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dtype = x.dtype
        x = x.float()
        x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * x.to(dtype)


def rope_cos_sin(position_ids: torch.Tensor, head_dim: int, theta: float, dtype: torch.dtype):
    """cos/sin tables for rotary embeddings at arbitrary (restarting, packed) positions."""
    inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, device=position_ids.device, dtype=torch.float32) / head_dim))
    freqs = position_ids.float()[..., None] * inv_freq  # [T, D/2]
    emb = torch.cat([freqs, freqs], dim=-1)
    return emb.cos().to(dtype), emb.sin().to(dtype)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x: [T, H, D]; cos/sin: [T, D]."""
    half = x.shape[-1] // 2
    rotated = torch.cat([-x[..., half:], x[..., :half]], dim=-1)
    return x * cos[:, None, :] + rotated * sin[:, None, :]


class Attention(nn.Module):
    def __init__(self, config: MedlmConfig):
        super().__init__()
        self.n_heads = config.num_attention_heads
        self.n_kv = config.num_key_value_heads
        self.head_dim = config.head_dim
        d = config.hidden_size
        self.q_proj = nn.Linear(d, self.n_heads * self.head_dim, bias=False)
        self.k_proj = nn.Linear(d, self.n_kv * self.head_dim, bias=False)
        self.v_proj = nn.Linear(d, self.n_kv * self.head_dim, bias=False)
        self.o_proj = nn.Linear(self.n_heads * self.head_dim, d, bias=False)

    def forward(self, x: torch.Tensor, cos, sin, attn: PackedAttention) -> torch.Tensor:
        T = x.shape[0]
        q = apply_rope(self.q_proj(x).view(T, self.n_heads, self.head_dim), cos, sin)
        k = apply_rope(self.k_proj(x).view(T, self.n_kv, self.head_dim), cos, sin)
        v = self.v_proj(x).view(T, self.n_kv, self.head_dim)
        out = attn(q, k, v)  # [T, H, D]
        return self.o_proj(out.reshape(T, -1))


class PackedAttention:
    """Bidirectional attention restricted to each packed sequence (block-diagonal)."""

    def __init__(self, cu_seqlens: torch.Tensor, device, use_flash: bool, eager: bool = False):
        self.cu_seqlens = cu_seqlens.to(device=device, dtype=torch.int32)
        lengths = (self.cu_seqlens[1:] - self.cu_seqlens[:-1]).long()
        self.max_seqlen = int(lengths.max().item()) if lengths.numel() else 0
        self.use_flash = use_flash
        self.kernel = _eager if eager else _sdpa
        self.single = lengths.numel() == 1
        # Without flash-attn each sequence gets its own SDPA call: a dense [T, T] block-diagonal mask
        # would make a packed batch cost O(T^2) (16 requests packed ran no faster than 16 alone), and
        # it runs the same kernel as a lone sequence, which keeps decoding batch-invariant.
        bounds = self.cu_seqlens.tolist()
        self.bounds = [(s, e) for s, e in zip(bounds[:-1], bounds[1:]) if e > s]

    def __call__(self, q, k, v):
        n_heads, n_kv = q.shape[1], k.shape[1]
        if self.use_flash:
            return flash_attn_varlen_func(q, k, v, self.cu_seqlens, self.cu_seqlens, self.max_seqlen,
                                          self.max_seqlen, causal=False)
        if n_kv != n_heads:
            k = k.repeat_interleave(n_heads // n_kv, dim=1)
            v = v.repeat_interleave(n_heads // n_kv, dim=1)
        if self.single or not self.bounds:
            return self.kernel(q, k, v)
        return torch.cat([self.kernel(q[s:e], k[s:e], v[s:e]) for s, e in self.bounds])


def _sdpa(q, k, v):
    """Unmasked bidirectional SDPA over one sequence; SDPA wants [B, H, T, D]."""
    out = F.scaled_dot_product_attention(q.transpose(0, 1)[None], k.transpose(0, 1)[None], v.transpose(0, 1)[None])
    return out[0].transpose(0, 1)


def _eager(q, k, v):
    """The same attention as :func:`_sdpa`, written out: softmax(q k^T / sqrt(d)) v per head."""
    scores = torch.einsum("thd,shd->hts", q, k) / (q.shape[-1] ** 0.5)
    return torch.einsum("hts,shd->thd", scores.softmax(-1), v)


class MLP(nn.Module):
    def __init__(self, config: MedlmConfig):
        super().__init__()
        self.gate_proj = nn.Linear(config.hidden_size, config.intermediate_size, bias=False)
        self.up_proj = nn.Linear(config.hidden_size, config.intermediate_size, bias=False)
        self.down_proj = nn.Linear(config.intermediate_size, config.hidden_size, bias=False)

    def forward(self, x):
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class Block(nn.Module):
    def __init__(self, config: MedlmConfig):
        super().__init__()
        self.attn_norm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.attn = Attention(config)
        self.mlp_norm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.mlp = MLP(config)

    def forward(self, x, cos, sin, attn):
        x = x + self.attn(self.attn_norm(x), cos, sin, attn)
        return x + self.mlp(self.mlp_norm(x))


def positions_from_cu_seqlens(cu_seqlens: torch.Tensor, total: int) -> torch.Tensor:
    """Position ids that restart at 0 for each packed sequence."""
    cu = cu_seqlens.long()
    lengths = cu[1:] - cu[:-1]
    starts = torch.repeat_interleave(cu[:-1], lengths)
    return torch.arange(total, device=cu.device) - starts


class MedlmForEditing(PreTrainedModel):
    """Two-head bidirectional transformer over packed variable-length batches."""

    config_class = MedlmConfig
    base_model_prefix = "medlm"
    supports_gradient_checkpointing = False
    _no_split_modules = ["Block"]
    # used only when config.tie_word_embeddings (the small preset); LLaDA-8B keeps separate matrices
    _tied_weights_keys = {"token_head.weight": "embed_tokens.weight"}
    _supports_sdpa = True
    _supports_flash_attn = True  # flash_attn_varlen_func over the packed row
    _supports_flash_attn_2 = True  # the same, under the name transformers 4.x reads

    def get_correct_attn_implementation(self, requested_attention: Optional[str], is_init_check: bool = False) -> str:
        """No implementation asked for: flash-attention 2 where it can run, SDPA elsewhere."""
        if requested_attention is None:
            requested_attention = default_attn_implementation()
        return super().get_correct_attn_implementation(requested_attention, is_init_check)

    def __init__(self, config: MedlmConfig):
        super().__init__(config)
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size)
        self.layers = nn.ModuleList(Block(config) for _ in range(config.num_hidden_layers))
        self.norm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.token_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.insert_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.post_init()

    def _init_weights(self, module):
        std = self.config.initializer_range
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, mean=0.0, std=std)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, mean=0.0, std=std)
        elif isinstance(module, RMSNorm):
            nn.init.ones_(module.weight)

    def _check_inputs(self, input_ids: torch.Tensor, cu_seqlens: torch.Tensor):
        if input_ids.numel() and (int(input_ids.min()) < 0 or int(input_ids.max()) >= self.config.vocab_size):
            bad = int(input_ids.max()) if int(input_ids.max()) >= self.config.vocab_size else int(input_ids.min())
            raise ValueError(f"token id {bad} is outside the vocabulary [0, {self.config.vocab_size})")
        lengths = cu_seqlens[1:] - cu_seqlens[:-1]
        if lengths.numel() and int(lengths.max()) > self.config.max_position_embeddings:
            raise ValueError(
                f"a packed sequence has {int(lengths.max())} tokens, more than max_position_embeddings="
                f"{self.config.max_position_embeddings}"
            )
        if int(cu_seqlens[-1]) != input_ids.shape[0]:
            raise ValueError(f"cu_seqlens ends at {int(cu_seqlens[-1])} but the packed row has {input_ids.shape[0]} tokens")

    def forward(
        self,
        input_ids: torch.Tensor,
        cu_seqlens: Optional[torch.Tensor] = None,
        position_ids: Optional[torch.Tensor] = None,
        return_insert: bool = True,
        logits_index: Optional[torch.Tensor] = None,
    ) -> MedlmOutput:
        """Run the packed row ``input_ids`` ([T] or [1, T]) split by ``cu_seqlens`` ([N+1]).

        ``logits_index`` selects the positions whose logits are wanted (saves the vocabulary
        projection on prompt tokens); by default logits are returned for every position.
        """
        squeeze = input_ids.dim() == 2
        if squeeze:
            if input_ids.shape[0] != 1:
                raise ValueError("pass packed rows as [T] or [1, T]; use medlm.packing.pack() for several sequences")
            input_ids = input_ids[0]
        T = input_ids.shape[0]
        if cu_seqlens is None:
            cu_seqlens = torch.tensor([0, T], dtype=torch.int32, device=input_ids.device)
        self._check_inputs(input_ids, cu_seqlens)
        if position_ids is None:
            position_ids = positions_from_cu_seqlens(cu_seqlens.to(input_ids.device), T)
        x = self.embed_tokens(input_ids)
        cos, sin = rope_cos_sin(position_ids, self.config.head_dim, self.config.rope_theta, x.dtype)
        impl = getattr(self.config, "_attn_implementation", None) or "sdpa"
        if impl not in ATTN_IMPLEMENTATIONS:
            raise ValueError(f"attention implementation {impl!r} is not supported; use one of {', '.join(ATTN_IMPLEMENTATIONS)}")
        use_flash = (
            impl == "flash_attention_2" and flash_attn_varlen_func is not None and x.is_cuda
            and x.dtype in (torch.float16, torch.bfloat16)
        )
        attn = PackedAttention(cu_seqlens, x.device, use_flash, eager=impl == "eager")
        for layer in self.layers:
            x = layer(x, cos, sin, attn)
        x = self.norm(x)
        if logits_index is not None:
            x = x[logits_index]
        token_logits = self.token_head(x)
        insert_logits = self.insert_head(x) if return_insert else None
        if squeeze and logits_index is None:
            token_logits = token_logits[None]
            insert_logits = insert_logits[None] if insert_logits is not None else None
        return MedlmOutput(token_logits=token_logits, insert_logits=insert_logits)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def _register_with_auto_classes() -> None:
    """Let AutoConfig / AutoModel (and AutoTokenizer, which reads config.json) recognise 'medlm'.

    Done when this module is imported (medlm.checkpoint imports it), not by ``import medlm``: the package's
    light modules (medlm.stats, medlm.tasks, medlm.shipped) are used where torch is not loaded."""
    from transformers import AutoConfig, AutoModel

    try:
        AutoConfig.register(MedlmConfig.model_type, MedlmConfig)
        AutoModel.register(MedlmConfig, MedlmForEditing)
    except ValueError:  # already registered (module re-imported)
        pass


_register_with_auto_classes()
