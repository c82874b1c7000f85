"""Checkpoints: our Hugging Face layout (config.json + model.safetensors + tokenizer files).

``medlm`` loads only checkpoints of its own architecture and says clearly when it is handed
something else (an original LLaDA checkpoint must go through ``medlm.convert`` first).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import torch
from safetensors import safe_open
from transformers.utils import logging as hf_logging

from medlm.modeling import MedlmConfig, MedlmForEditing
from medlm.tokenizer import load_tokenizer, special_ids


def save_checkpoint(model: MedlmForEditing, tokenizer, out_dir: str | Path, extra: dict | None = None) -> Path:
    """Write weights as safetensors, the config, the tokenizer and optional metadata."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(out), safe_serialization=True)
    tokenizer.save_pretrained(str(out))
    if extra:
        (out / META_FILE).write_text(json.dumps(extra, indent=2, sort_keys=True))
    return out


META_FILE = "medlm_meta.json"
# What the two heads have been trained on, counted over the checkpoint's whole history (a run started from
# another checkpoint adds to its counts). The insertion head learns only from edit examples: a checkpoint
# whose count is 0 (``medlm init``, a converted LLaDA model, a mask-only base) has an insertion head that
# would grow drafts with junk if it were asked to edit.
EDIT_EXAMPLES_SEEN = "edit_examples_seen"
MASK_EXAMPLES_SEEN = "mask_examples_seen"
UNTRAINED_HEADS = {EDIT_EXAMPLES_SEEN: 0, MASK_EXAMPLES_SEEN: 0}


def edit_examples_seen(meta: dict | None) -> int | None:
    """Edit examples the insertion head was trained on, from a checkpoint's ``medlm_meta.json``
    (None when the checkpoint does not record it: made by other code)."""
    if not meta or meta.get(EDIT_EXAMPLES_SEEN) is None:
        return None
    return int(meta[EDIT_EXAMPLES_SEEN])


def check_insert_head_trained(meta: dict | None, where: str, setting: str) -> bool:
    """Refuse ``setting`` (a request for edit steps) when ``where``'s insertion head never saw an edit label.

    Returns False, without raising, when the checkpoint does not record its training (the caller warns).
    """
    seen = edit_examples_seen(meta)
    if seen == 0:
        raise ValueError(
            f"{setting} asks for edit steps from {where}, whose insertion head has never been trained on edit "
            f"labels ({META_FILE}: {EDIT_EXAMPLES_SEEN}=0): it would grow drafts with junk. Set it to 0, or use a "
            "checkpoint trained with objective edit, mixture or online"
        )
    return seen is not None


def check_checkpoint_config(cfg: dict, where: str) -> None:
    """Refuse a ``config.json`` of another architecture, naming ``where`` it came from."""
    if cfg.get("model_type") != MedlmConfig.model_type:
        hint = " (convert an LLaDA checkpoint with `medlm convert` first)" if "llada" in json.dumps(cfg).lower() else ""
        raise ValueError(
            f"{where} holds a checkpoint of architecture {cfg.get('model_type') or cfg.get('architectures')!r}, "
            f"not {MedlmConfig.model_type!r}{hint}"
        )


def check_weight_names(names: set[str], where: str, require_insert_head: bool = True) -> None:
    """Refuse weights that cannot refine drafts (no insertion head) when the caller needs editing."""
    if require_insert_head and "insert_head.weight" not in names:
        raise ValueError(f"{where} has no insertion head (insert_head.weight): it cannot refine drafts")


def check_checkpoint_dir(path: str | Path, require_insert_head: bool = True) -> Path:
    """Fail early, naming the problem, when ``path`` is not a medlm checkpoint.

    Without ``insert_head.weight`` the model can draft but not refine; only callers that need no
    editing (mask-only evaluation) pass ``require_insert_head=False``.
    """
    path = Path(path)
    if not path.is_dir():
        raise FileNotFoundError(f"checkpoint directory {path} does not exist")
    cfg_file = path / "config.json"
    if not cfg_file.exists():
        raise FileNotFoundError(f"{path} has no config.json; is it a checkpoint directory?")
    check_checkpoint_config(json.loads(cfg_file.read_text()), str(path))
    weights = sorted(path.glob("*.safetensors"))
    if not weights:
        raise FileNotFoundError(f"{path} has no .safetensors weights")
    names: set[str] = set()
    for f in weights:
        with safe_open(str(f), framework="pt") as fh:
            names.update(fh.keys())
    check_weight_names(names, str(path), require_insert_head)
    return path


def device_and_dtype(device: str | torch.device | None = "auto", dtype: torch.dtype | None = None):
    """(device, dtype) to load a model with: ``"auto"`` (or None) is CUDA when there is one, else CPU;
    the dtype, unless given, is bfloat16 on CUDA and float32 on CPU."""
    if device is None or device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if dtype is None:
        dtype = torch.bfloat16 if str(device).startswith("cuda") else torch.float32
    return device, dtype


def load_checkpoint(
    path: str | Path, device: str | torch.device | None = "cpu", dtype: torch.dtype | None = None,
    require_insert_head: bool = True,
):
    """Load (model, tokenizer) from a medlm checkpoint directory; the model is put in eval mode.

    ``device`` and ``dtype`` as in :func:`device_and_dtype` (``device="auto"`` picks CUDA when present).
    """
    path = check_checkpoint_dir(path, require_insert_head=require_insert_head)
    device, dtype = device_and_dtype(device, dtype)
    hf_logging.disable_progress_bar()
    model = MedlmForEditing.from_pretrained(str(path), dtype=dtype)
    model.to(device).eval()  # type: ignore[arg-type]  # transformers' decorated .to() is typed as unbound
    tokenizer = load_tokenizer(path)
    sp = special_ids(tokenizer)
    if sp.mask != model.config.mask_token_id or sp.delete != model.config.del_token_id:
        raise ValueError(
            f"{path}: tokenizer special ids (mask={sp.mask}, del={sp.delete}) disagree with the model config "
            f"(mask={model.config.mask_token_id}, del={model.config.del_token_id})"
        )
    return model, tokenizer


def checkpoint_hash(path: str | Path) -> str:
    """sha256 over the weight and config files: the provenance id of a checkpoint."""
    path = Path(path)
    h = hashlib.sha256()
    for f in sorted(list(path.glob("*.safetensors")) + [path / "config.json"]):
        h.update(f.name.encode())
        with open(f, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                h.update(chunk)
    return h.hexdigest()[:16]


def read_meta(path: str | Path) -> dict | None:
    """A local checkpoint's ``medlm_meta.json``, or None when it has none."""
    f = Path(path) / META_FILE
    return json.loads(f.read_text()) if f.is_file() else None


def new_model(preset: str, tokenizer, seed: int = 0, **overrides) -> MedlmForEditing:
    """A randomly initialised model whose special ids and vocabulary match ``tokenizer``."""
    sp = special_ids(tokenizer)
    cfg = MedlmConfig.preset(
        preset,
        **{
            "vocab_size": len(tokenizer),
            "mask_token_id": sp.mask,
            "del_token_id": sp.delete,
            "pad_token_id": sp.pad,
            "eos_token_id": sp.im_end,
            **overrides,
        },
    )
    torch.manual_seed(seed)
    return MedlmForEditing(cfg)
