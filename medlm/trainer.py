"""A plain single-process training loop: for tests, notebooks and as the baseline the distributed
Ray Train + DeepSpeed job is measured against. Same losses, same packing, no Ray."""

from __future__ import annotations

import time
from typing import Callable, Optional

import torch

from medlm.losses import mixture_loss
from medlm.packing import PackedBatch
from medlm.schedule import cosine_lr


def train_local(
    model,
    next_batch: Callable[[int], PackedBatch],
    steps: int,
    lr: float = 3e-3,
    warmup: int = 20,
    min_lr: float = 0.0,
    weight_decay: float = 0.0,
    clip: float = 1.0,
    edit_weight: float = 1.0,
    log_every: int = 0,
    on_log: Optional[Callable[[dict], None]] = None,
) -> list[dict]:
    """Train ``model`` for ``steps`` AdamW steps on batches from ``next_batch(step)``; returns metrics."""
    device = next(model.parameters()).device
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay, betas=(0.9, 0.98))
    model.train()
    history = []
    t0 = time.perf_counter()
    tokens = 0
    for step in range(steps):
        for group in opt.param_groups:
            group["lr"] = cosine_lr(step, base_lr=lr, warmup=warmup, total=steps, min_lr=min_lr)
        batch = next_batch(step).to(device)
        terms = mixture_loss(model, batch, edit_weight=edit_weight)
        opt.zero_grad(set_to_none=True)
        terms["loss"].backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
        opt.step()
        tokens += batch.n_tokens
        rec = {k: float(v.detach()) for k, v in terms.items()}
        rec.update(step=step, lr=opt.param_groups[0]["lr"], tokens_per_s=tokens / (time.perf_counter() - t0))
        history.append(rec)
        if log_every and (step % log_every == 0 or step == steps - 1):
            if on_log is not None:
                on_log(rec)
            else:
                print(f"step {step:5d}  loss {rec['loss']:.4f}  mask {rec['mask_loss']:.4f}  edit {rec['edit_loss']:.4f}  "
                      f"lr {rec['lr']:.2e}  {rec['tokens_per_s']:.0f} tok/s", flush=True)
    model.eval()
    return history
