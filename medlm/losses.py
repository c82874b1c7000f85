"""Training objectives, kept apart from the network (as MDLM does).

* mask loss  -- masked-diffusion cross-entropy on masked response tokens, weighted by 1/t and
                averaged per sequence (LLaDA's estimator of the negative ELBO);
* edit loss  -- cross-entropy of the token head against ``token_target`` and of the insertion head
                against the gap labels, on drafts, each draft's terms scaled by its example weight
                (1, or 1/t under ME-DLM's weighting: ``medlm.packing.LOSS_WEIGHTINGS``);
* mixture    -- both on one packed batch that may hold mask and edit examples side by side.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from medlm.packing import IGNORE, PackedBatch


def _labelled_positions(batch: PackedBatch) -> torch.Tensor:
    return ((batch.token_labels != IGNORE) | (batch.insert_labels != IGNORE)).nonzero(as_tuple=True)[0]


def mixture_loss(model, batch: PackedBatch, edit_weight: float = 1.0) -> dict[str, torch.Tensor]:
    """Loss terms for one packed batch; only labelled positions go through the vocabulary heads.

    Edit positions are plain cross-entropy, as in the paper: keep / no-insert labels weigh as much as
    changes.
    """
    index = _labelled_positions(batch)
    out = model(batch.input_ids, cu_seqlens=batch.cu_seqlens, logits_index=index)
    tok_labels = batch.token_labels[index]
    ins_labels = batch.insert_labels[index]
    weights = batch.token_weights[index]
    is_edit = batch.is_edit[index]
    # both heads stay in the graph even when a term is absent: ZeRO-2/3 reduce gradients per parameter,
    # and a worker whose batch never touched the insertion head would leave the others waiting
    zero = out.token_logits.sum() * 0.0 + (out.insert_logits.sum() * 0.0 if out.insert_logits is not None else 0.0)

    terms: dict[str, torch.Tensor] = {}
    ce_tok = F.cross_entropy(out.token_logits.float(), tok_labels.clamp(min=0), reduction="none")
    mask_sel = (~is_edit) & (tok_labels != IGNORE)
    if batch.n_mask_seqs:
        terms["mask_loss"] = (ce_tok * weights * mask_sel).sum() / batch.n_mask_seqs
    else:
        terms["mask_loss"] = zero
    if batch.n_edit_seqs:
        edit_tok = is_edit & (tok_labels != IGNORE)
        edit_ins = is_edit & (ins_labels != IGNORE)
        ce_ins = F.cross_entropy(out.insert_logits.float(), ins_labels.clamp(min=0), reduction="none")
        w_tok = edit_tok.float()
        w_ins = edit_ins.float()
        terms["edit_token_loss"] = (ce_tok * w_tok * weights).sum() / w_tok.sum().clamp(min=1)
        terms["edit_insert_loss"] = (ce_ins * w_ins * weights).sum() / w_ins.sum().clamp(min=1)
        terms["edit_loss"] = terms["edit_token_loss"] + terms["edit_insert_loss"]
    else:
        terms["edit_loss"] = zero
    terms["loss"] = terms["mask_loss"] + edit_weight * terms["edit_loss"]
    return terms
