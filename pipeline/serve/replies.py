"""The replies of the ME-DLM server: streamed step events, the outcome of a decode, and reply bodies.

The request side of the contract (what is accepted and refused) is :mod:`pipeline.serve.api`; this
module renders what goes back, so an SSE client sees the same tokens and edit counts the reply
reports. Free of Ray, like the request side.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass
from typing import Optional, Sequence

from medlm.edits import NO_INSERT
from medlm.sampling import DecodeConfig, DecodeResult
from medlm.tokenizer import SpecialIds, decode_response, response_end
from pipeline.serve.api import MASK_PLACEHOLDER

# ---------------------------------------------------------------- stream events of /v1/refine


class StepEvents:
    """The payloads of streamed ``mask_step`` and ``edit`` events, built from the sampler's token lists.

    A mask step shows the response as decoded so far with :data:`MASK_PLACEHOLDER` for each position
    still masked (cut at the end token, like the reply's text), so its last state reads exactly as
    the draft. An edit step lists the step's operations as ``segments`` in response order: runs of
    kept text, and one segment per replaced, deleted or inserted token, taken from the labels the
    sampler applied; per step they add up to the reply's ``edits`` counts. Special tokens show by
    name there, so an edit around ``<|im_end|>`` is visible.
    """

    def __init__(self, tokenizer, special: SpecialIds):
        self.tokenizer = tokenizer
        self.special = special
        self._pieces: dict[int, str] = {}  # token id -> its text; grows to at most the vocabulary

    def piece(self, token: int) -> str:
        text = self._pieces.get(token)
        if text is None:
            text = self._pieces[token] = self.tokenizer.decode([token], skip_special_tokens=False)
        return text

    def mask_step(self, step: int, response: Sequence[int]) -> dict:
        sp = self.special
        parts: list[str] = []
        run: list[int] = []
        for t in response:
            if t in sp.end_ids:
                break
            if t == sp.mask:
                parts.append(self.tokenizer.decode(run, skip_special_tokens=True) + MASK_PLACEHOLDER)
                run = []
            elif t not in (sp.pad, sp.delete):
                run.append(t)
        parts.append(self.tokenizer.decode(run, skip_special_tokens=True))
        masked = sum(1 for t in response if t == sp.mask)
        return {"type": "mask_step", "step": step, "text": "".join(parts), "masked": masked}

    def edit_step(self, step: int, before: Sequence[int], after: Sequence[int],
                  labels: tuple[Sequence[int], Sequence[int]]) -> dict:
        token_target, insert_target = labels
        segments: list[dict] = []
        kept: list[int] = []
        counts = {"replace": 0, "delete": 0, "insert": 0}

        def close_kept_run() -> None:
            if kept:
                segments.append({"op": "keep", "text": self.tokenizer.decode(kept, skip_special_tokens=False)})
                kept.clear()

        def add(op: str, **fields) -> None:
            close_kept_run()
            segments.append({"op": op, **fields})
            counts[op] += 1

        for i in range(len(before) + 1):  # gap i lies before token i, as medlm.edits.apply_edits reads it
            if insert_target[i] != NO_INSERT:
                add("insert", text=self.piece(insert_target[i]))
            if i == len(before):
                break
            old, new = before[i], token_target[i]
            if new == old:
                kept.append(old)
            elif new == self.special.delete:
                add("delete", text=self.piece(old))
            else:
                add("replace", text=self.piece(new), old=self.piece(old))
        close_kept_run()
        return {"type": "edit", "step": step, "text": decode_response(self.tokenizer, after), "tokens": len(after),
                "edits": counts, "segments": segments}


# ---------------------------------------------------------------- replies


@dataclass
class Outcome:
    """What one request got, in text and counts; every reply format is built from it."""

    text: str
    draft: str
    finish_reason: str  # "stop": the model ended its answer (or a stop string cut it); "length": budget ran out
    prompt_tokens: int
    completion_tokens: int
    mask_nfe: int
    edit_nfe: int
    edits: dict
    timing: dict
    budget: dict

    @classmethod
    def build(cls, result: DecodeResult, cfg: DecodeConfig, tokenizer, special: SpecialIds, prompt_len: int,
              timing: dict, stops: Sequence[str] = ()) -> Outcome:
        ids = result.output_ids
        ended = response_end(ids, special, cfg.stop_ids)  # <|im_end|>, eos, <|eot_id|> or a stop_token_id
        text = decode_response(tokenizer, ids, cfg.stop_ids)
        n_tokens = len(ids) if ended is None else ended
        finish = "stop" if ended is not None else "length"
        cut = min((text.find(s) for s in stops if s in text), default=-1)
        if cut >= 0:
            text, finish = text[:cut], "stop"
            n_tokens = len(tokenizer.encode(text, add_special_tokens=False))
        return cls(
            text=text,
            draft=decode_response(tokenizer, result.draft_ids, cfg.stop_ids),
            finish_reason=finish,
            prompt_tokens=prompt_len,
            completion_tokens=n_tokens,
            mask_nfe=result.mask_nfe,
            edit_nfe=result.edit_nfe,
            edits={"replace": result.n_replace, "delete": result.n_delete, "insert": result.n_insert},
            timing=timing,
            budget={"max_new_tokens": cfg.gen_len, "mask_steps": cfg.mask_steps, "edit_steps": cfg.edit_steps,
                    "threshold": cfg.threshold, "max_edits_per_step": cfg.max_edits_per_step,
                    "temperature": cfg.temperature, "seed": cfg.seed, "remasking": cfg.remasking,
                    "cfg_scale": cfg.cfg_scale, "logits_eos_inf": cfg.logits_eos_inf,
                    "confidence_eos_eot_inf": cfg.confidence_eos_eot_inf, "stop_token_ids": list(cfg.stop_ids)},
        )

    def usage(self) -> dict:
        return {"prompt_tokens": self.prompt_tokens, "completion_tokens": self.completion_tokens,
                "total_tokens": self.prompt_tokens + self.completion_tokens}

    def nfe(self) -> dict:
        return {"mask": self.mask_nfe, "edit": self.edit_nfe, "total": self.mask_nfe + self.edit_nfe}

    def medlm_details(self) -> dict:
        """The refinement record the OpenAI formats carry under the extra key ``medlm``."""
        return {"nfe": self.nfe(), "edits": self.edits, "timing": self.timing, "budget": self.budget}


def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:24]}"


def refine_reply(request_id: str, model: str, out: Outcome, return_draft: bool) -> dict:
    reply = {"id": request_id, "object": "refine", "model": model, "text": out.text}
    if return_draft:
        reply["draft"] = out.draft
    reply.update(finish_reason=out.finish_reason, nfe=out.nfe(), edits=out.edits, usage=out.usage(),
                 timing=out.timing, budget=out.budget)
    return reply


def chat_completion_reply(request_id: str, model: str, out: Outcome) -> dict:
    return {
        "id": request_id, "object": "chat.completion", "created": int(time.time()), "model": model,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": out.text},
                     "logprobs": None, "finish_reason": out.finish_reason}],
        "usage": out.usage(), "medlm": out.medlm_details(),
    }


def completion_reply(request_id: str, model: str, out: Outcome) -> dict:
    return {
        "id": request_id, "object": "text_completion", "created": int(time.time()), "model": model,
        "choices": [{"index": 0, "text": out.text, "logprobs": None, "finish_reason": out.finish_reason}],
        "usage": out.usage(), "medlm": out.medlm_details(),
    }


def chat_chunk(request_id: str, model: str, created: int, delta: dict, finish_reason: Optional[str] = None,
               with_usage_field: bool = False) -> dict:
    chunk = {"id": request_id, "object": "chat.completion.chunk", "created": created, "model": model,
             "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}]}
    if with_usage_field:
        chunk["usage"] = None
    return chunk


def completion_chunk(request_id: str, model: str, created: int, text: str, finish_reason: Optional[str] = None,
                     with_usage_field: bool = False) -> dict:
    chunk = {"id": request_id, "object": "text_completion", "created": created, "model": model,
             "choices": [{"index": 0, "text": text, "logprobs": None, "finish_reason": finish_reason}]}
    if with_usage_field:
        chunk["usage"] = None
    return chunk


def usage_chunk(request_id: str, model: str, created: int, obj: str, out: Outcome) -> dict:
    """The last chunk when ``stream_options.include_usage`` is set: no choices, only usage."""
    return {"id": request_id, "object": obj, "created": created, "model": model, "choices": [],
            "usage": out.usage(), "medlm": out.medlm_details()}
