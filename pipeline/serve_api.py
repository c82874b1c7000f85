"""The HTTP contract of the ME-DLM server: request bodies, server limits, default step budgets, replies.

Kept free of Ray so that the contract (what is accepted, what is refused and why, what a reply
holds) can be read and checked on its own; ``pipeline.serve`` only wires it to a model on Ray Serve.

Every refusal is an :class:`ApiError` whose body names the offending field (``param``), so a client
never has to guess which of its inputs was wrong. Budgets a client leaves out get documented
defaults (:func:`default_steps`) and are echoed back in the reply, so nothing is decided silently.
Streamed steps are rendered by :class:`StepEvents`, so an SSE client sees the same tokens and edit
counts the reply reports.
"""

from __future__ import annotations

import math
import time
import uuid
from dataclasses import dataclass
from typing import Any, Literal, Optional, Sequence, Union

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from medlm.edits import NO_INSERT
from medlm.sampling import DecodeConfig, DecodeResult
from medlm.tokenizer import SpecialIds, chat_prompt_ids, decode_response

MAX_SEED = 2**63 - 1
MASK_PLACEHOLDER = "\u2591"  # "░": a position mask diffusion has not committed yet, in streamed text
CHARS_PER_PROMPT_TOKEN = 32  # cheap guard before tokenizing: no tokenizer of ours packs more into a token


class ApiError(Exception):
    """A request the server refuses; rendered as OpenAI's error shape with the field in ``param``."""

    def __init__(self, status: int, message: str, param: Optional[str] = None, code: str = "invalid_request"):
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param
        self.code = code

    def body(self) -> dict:
        kind = "invalid_request_error" if self.status < 500 else "server_error"
        return {"error": {"message": self.message, "type": kind, "param": self.param, "code": self.code}}


def describe_validation_errors(errors: Sequence[dict]) -> ApiError:
    """Turn pydantic/FastAPI validation errors into one 400 naming the first bad field."""
    first = errors[0]
    loc = [p for p in first.get("loc", ()) if p != "body"]
    param = _dotted(loc) or "body"
    kind = first.get("type", "")
    if not loc and isinstance(first.get("input"), (bytes, str)):  # body sent without a JSON content type
        return ApiError(400, "request body must be a JSON object sent with Content-Type: application/json",
                        "body", "invalid_json")
    if kind == "json_invalid":
        return ApiError(400, f"request body is not valid JSON ({first.get('ctx', {}).get('error', first.get('msg'))})",
                        "body", "invalid_json")
    if kind == "extra_forbidden":
        return ApiError(400, f"unknown field {param!r}", param, "unknown_field")
    if kind == "missing":
        return ApiError(400, f"field {param!r} is required", param, "missing_field")
    shown = repr(first.get("input"))
    shown = shown if len(shown) <= 80 else shown[:77] + "..."
    more = f" (and {len(errors) - 1} more problem{'s' if len(errors) > 2 else ''})" if len(errors) > 1 else ""
    return ApiError(400, f"{param}: {first.get('msg')}, got {shown}{more}", param, "invalid_value")


def _dotted(loc: Sequence[Any]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif part in ("str", "list[TextPart]"):
            continue  # names of union branches say nothing to a client
        else:
            out += f".{part}" if out else str(part)
    return out


# ---------------------------------------------------------------- server arguments and limits


class ServeArgs(BaseModel):
    """``build_app`` arguments (the ``args:`` of a Serve config); unknown keys are refused."""

    model_config = ConfigDict(extra="forbid")

    checkpoint: str
    model_name: str = "medlm"
    device: Literal["auto", "cpu", "cuda"] = "auto"
    torch_threads: Optional[int] = Field(None, ge=1)
    max_batch_size: int = Field(16, ge=1, le=1024)
    batch_wait_timeout_s: float = Field(0.01, ge=0.0, le=10.0)
    # request caps (a model's own context length caps prompt + max_new_tokens as well)
    max_prompt_tokens: int = Field(1024, ge=1)
    max_new_tokens: int = Field(512, ge=1)
    max_mask_steps: int = Field(512, ge=1)
    max_edit_steps: int = Field(128, ge=0)
    default_max_new_tokens: int = Field(64, ge=1)
    # deployment options; None leaves the Serve config's (or the deployment's default) value
    num_replicas: Optional[int] = Field(None, ge=1)
    max_ongoing_requests: Optional[int] = Field(None, ge=1)
    max_queued_requests: Optional[int] = Field(None, ge=-1)
    health_check_period_s: Optional[float] = Field(None, gt=0)
    health_check_timeout_s: Optional[float] = Field(None, gt=0)
    num_cpus: Optional[float] = Field(None, ge=0)
    num_gpus: Optional[float] = Field(None, ge=0)

    @classmethod
    def parse(cls, args: Any) -> "ServeArgs":
        """Validate ``args`` with a message naming the bad key (Serve shows it when a deploy fails)."""
        if isinstance(args, ServeArgs):
            return args
        try:
            return cls.model_validate(args or {})
        except ValidationError as e:
            err = describe_validation_errors(e.errors())
            raise ValueError(f"invalid medlm serve argument: {err.message}") from None


@dataclass(frozen=True)
class Limits:
    max_prompt_tokens: int
    max_new_tokens: int
    max_mask_steps: int
    max_edit_steps: int
    default_max_new_tokens: int
    max_positions: int  # the model's context: prompt + response must fit

    @classmethod
    def from_args(cls, args: ServeArgs, max_positions: int) -> "Limits":
        return cls(args.max_prompt_tokens, args.max_new_tokens, args.max_mask_steps, args.max_edit_steps,
                   args.default_max_new_tokens, max_positions)

    def public(self) -> dict:
        return dict(self.__dict__)


def default_steps(max_new_tokens: int) -> tuple[int, int]:
    """Default (mask_steps, edit_steps): a quarter of the tokens as mask steps, then a quarter of those
    as edit steps (64 tokens -> 16 + 4 = 20 forward passes instead of 64). The paper's LLaDA budget
    is 48 + 16 for 512 tokens; a small model here did best with about 3/4 mask and 1/4 edit steps."""
    mask = max(1, math.ceil(max_new_tokens / 4))
    return mask, max(1, math.ceil(mask / 4))


# ---------------------------------------------------------------- request bodies


class _Strict(BaseModel):
    # strict: "5" is not an int and 1 is not a bool; a JSON int is still a valid float
    model_config = ConfigDict(extra="forbid", strict=True)


class TextPart(_Strict):
    type: Literal["text"]
    text: str


class ChatMessage(_Strict):
    role: Literal["system", "user", "assistant"]
    content: Union[str, list[TextPart]]
    name: Optional[str] = None

    def text(self) -> str:
        return self.content if isinstance(self.content, str) else "".join(p.text for p in self.content)


class StepBudget(_Strict):
    """Decoding knobs shared by every endpoint (extra body fields for the OpenAI client)."""

    mask_steps: Optional[int] = Field(None, ge=1)
    edit_steps: Optional[int] = Field(None, ge=0)
    threshold: Optional[float] = Field(None, gt=0.0, le=1.0)
    max_edits_per_step: Optional[int] = Field(None, ge=1, le=1_000_000)
    seed: Optional[int] = Field(None, ge=0, le=MAX_SEED)
    temperature: Optional[float] = Field(None, ge=0.0, le=2.0)


class RefineRequest(StepBudget):
    """``POST /v1/refine``: draft by mask diffusion, then refine by parallel edits."""

    model: Optional[str] = None
    prompt: Optional[str] = None
    messages: Optional[list[ChatMessage]] = None
    max_new_tokens: Optional[int] = Field(None, ge=1)
    return_draft: bool = False
    stream: bool = False
    stream_mask_steps: bool = False  # with stream: also an event after every mask-diffusion step

    def check(self) -> None:
        if (self.prompt is None) == (self.messages is None):
            raise ApiError(400, "pass exactly one of 'prompt' or 'messages'",
                           "prompt" if self.prompt is None else "messages", "invalid_value")
        if self.stream_mask_steps and not self.stream:
            raise ApiError(400, "stream_mask_steps needs stream: true (mask steps are only sent as "
                           "server-sent events)", "stream_mask_steps", "invalid_value")


class StreamOptions(_Strict):
    include_usage: bool = False


class _OpenAICommon(StepBudget):
    """Fields both OpenAI endpoints accept. Sampling knobs this model cannot honour are refused
    unless they hold their neutral value, rather than being ignored."""

    model: str
    max_tokens: Optional[int] = Field(None, ge=1)
    top_p: Optional[float] = None
    n: Optional[int] = None
    stream: bool = False
    stream_options: Optional[StreamOptions] = None
    stop: Optional[Union[str, list[str]]] = None
    user: Optional[str] = None
    presence_penalty: Optional[float] = None
    frequency_penalty: Optional[float] = None

    @field_validator("top_p")
    @classmethod
    def _top_p(cls, v):
        if v is not None and v != 1:
            raise ValueError("only top_p=1 is supported (the sampler draws from the full distribution)")
        return v

    @field_validator("n")
    @classmethod
    def _n(cls, v):
        if v is not None and v != 1:
            raise ValueError("only n=1 is supported; send several requests (they are batched together)")
        return v

    @field_validator("presence_penalty", "frequency_penalty")
    @classmethod
    def _no_penalty(cls, v):
        if v not in (None, 0):
            raise ValueError("penalties are not supported by a diffusion sampler; leave them at 0")
        return v

    @field_validator("stop")
    @classmethod
    def _stop(cls, v):
        if isinstance(v, list) and (len(v) > 4 or any(s == "" for s in v)):
            raise ValueError("stop holds at most 4 non-empty strings")
        if v == "":
            raise ValueError("stop must not be empty")
        return v

    def stops(self) -> list[str]:
        return [] if self.stop is None else [self.stop] if isinstance(self.stop, str) else list(self.stop)


class ChatCompletionRequest(_OpenAICommon):
    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: Optional[int] = Field(None, ge=1)

    def check(self) -> None:
        if self.max_tokens is not None and self.max_completion_tokens is not None \
                and self.max_tokens != self.max_completion_tokens:
            raise ApiError(400, "max_tokens and max_completion_tokens disagree; send one of them",
                           "max_completion_tokens", "invalid_value")

    def new_tokens(self) -> Optional[int]:
        return self.max_completion_tokens if self.max_completion_tokens is not None else self.max_tokens


class CompletionRequest(_OpenAICommon):
    """The prompt becomes the user turn of the chat format: the model writes a response, it does not
    continue raw text."""

    prompt: str

    def check(self) -> None:
        pass

    def new_tokens(self) -> Optional[int]:
        return self.max_tokens


# ---------------------------------------------------------------- request -> (prompt ids, DecodeConfig)


def prompt_ids(tokenizer, limits: Limits, prompt: Optional[str] = None,
               messages: Optional[Sequence[ChatMessage]] = None) -> list[int]:
    """Chat-format token ids of the prompt, refusing empty and over-long prompts."""
    param = "prompt" if messages is None else "messages"
    texts = [prompt] if messages is None else [m.text() for m in messages]
    if not any(t.strip() for t in texts):
        raise ApiError(400, f"{param} is empty", param, "empty_prompt")
    n_chars = sum(len(t) for t in texts)
    char_cap = limits.max_prompt_tokens * CHARS_PER_PROMPT_TOKEN
    if n_chars > char_cap:
        raise ApiError(400, f"{param} has {n_chars} characters, over the cap of {char_cap} "
                       f"({CHARS_PER_PROMPT_TOKEN} per allowed prompt token, max_prompt_tokens={limits.max_prompt_tokens})",
                       param, "prompt_too_long")
    if messages is None:
        ids = chat_prompt_ids(tokenizer, prompt=prompt)
    else:
        ids = chat_prompt_ids(tokenizer, messages=[{"role": m.role, "content": m.text()} for m in messages])
    if len(ids) > limits.max_prompt_tokens:
        raise ApiError(400, f"{param} is {len(ids)} tokens long (chat format included), over the server's "
                       f"limit of max_prompt_tokens={limits.max_prompt_tokens}", param, "prompt_too_long")
    return ids


def decode_config(budget: StepBudget, new_tokens: Optional[int], prompt_len: int, limits: Limits,
                  new_tokens_param: str) -> DecodeConfig:
    """Resolve a request's budget against the server's limits and defaults."""
    room = limits.max_positions - prompt_len
    if room < 1:
        raise ApiError(400, f"the prompt fills all {limits.max_positions} positions of the model's context",
                       new_tokens_param, "context_length_exceeded")
    if new_tokens is None:
        gen_len = min(limits.default_max_new_tokens, limits.max_new_tokens, room)
    else:
        if new_tokens > limits.max_new_tokens:
            raise ApiError(400, f"{new_tokens_param}={new_tokens} exceeds the server's limit of {limits.max_new_tokens}",
                           new_tokens_param, "too_many_tokens")
        if new_tokens > room:
            raise ApiError(400, f"prompt ({prompt_len} tokens) + {new_tokens_param} ({new_tokens}) = "
                           f"{prompt_len + new_tokens} exceeds the model's context of {limits.max_positions} positions",
                           new_tokens_param, "context_length_exceeded")
        gen_len = new_tokens
    mask_default, edit_default = default_steps(gen_len)
    mask_steps = mask_default if budget.mask_steps is None else budget.mask_steps
    edit_steps = edit_default if budget.edit_steps is None else budget.edit_steps
    if mask_steps > limits.max_mask_steps:
        raise ApiError(400, f"mask_steps={mask_steps} exceeds the server's limit of {limits.max_mask_steps}",
                       "mask_steps", "too_many_steps")
    if edit_steps > limits.max_edit_steps:
        raise ApiError(400, f"edit_steps={edit_steps} exceeds the server's limit of {limits.max_edit_steps}",
                       "edit_steps", "too_many_steps")
    cfg = DecodeConfig(
        gen_len=gen_len,
        mask_steps=mask_steps,
        edit_steps=edit_steps,
        threshold=budget.threshold,
        max_edits_per_step=budget.max_edits_per_step,
        temperature=0.0 if budget.temperature is None else float(budget.temperature),
        seed=0 if budget.seed is None else budget.seed,
    )
    try:
        cfg.validate(limits.max_positions, prompt_len)
    except ValueError as e:  # a rule of the sampler this module does not repeat
        raise ApiError(400, str(e), new_tokens_param, "invalid_budget") from None
    return cfg


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
            if t in (sp.im_end, sp.eos):
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
              timing: dict, stops: Sequence[str] = ()) -> "Outcome":
        ids = result.output_ids
        ended = next((i for i, t in enumerate(ids) if t in (special.im_end, special.eos)), None)
        text = decode_response(tokenizer, ids)
        n_tokens = len(ids) if ended is None else ended
        finish = "stop" if ended is not None else "length"
        cut = min((text.find(s) for s in stops if s in text), default=-1)
        if cut >= 0:
            text, finish = text[:cut], "stop"
            n_tokens = len(tokenizer.encode(text, add_special_tokens=False))
        return cls(
            text=text,
            draft=decode_response(tokenizer, result.draft_ids),
            finish_reason=finish,
            prompt_tokens=prompt_len,
            completion_tokens=n_tokens,
            mask_nfe=result.mask_nfe,
            edit_nfe=result.edit_nfe,
            edits={"replace": result.n_replace, "delete": result.n_delete, "insert": result.n_insert},
            timing=timing,
            budget={"max_new_tokens": cfg.gen_len, "mask_steps": cfg.mask_steps, "edit_steps": cfg.edit_steps,
                    "threshold": cfg.threshold, "max_edits_per_step": cfg.max_edits_per_step,
                    "temperature": cfg.temperature, "seed": cfg.seed},
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
