"""The HTTP contract of the ME-DLM server: request bodies, server limits, default step budgets.

Kept free of Ray so that the contract (what is accepted, what is refused and why, what a reply
holds) can be read and checked on its own; ``pipeline.serve.app`` only wires it to a model on Ray Serve.
Replies and streamed events are rendered in :mod:`pipeline.serve.replies`.

Every refusal is an :class:`ApiError` whose body names the offending field (``param``), so a client
never has to guess which of its inputs was wrong. Budgets a client leaves out get documented
defaults (:func:`default_steps`) and are echoed back in the reply, so nothing is decided silently.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Annotated, Any, Literal, Optional, Sequence, Union

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from medlm.sampling import DecodeConfig
from medlm.tokenizer import chat_prompt_ids

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

    def __reduce__(self):  # crosses Ray processes as a value (the ingress forwards a replica's refusal)
        return type(self), (self.status, self.message, self.param, self.code)

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

    checkpoint: str  # a local directory or an s3:// URI
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
    # resilience (pipeline.serve.ingress): a thin ingress retries what a dying model replica lost
    ingress: bool = True  # false: model replicas serve HTTP themselves (one hop fewer, no retries)
    max_retries: int = Field(2, ge=0, le=5)  # further tries of a request whose replica died
    graceful_shutdown_timeout_s: Optional[float] = Field(None, ge=0)  # drain limit of a replica being replaced
    graceful_shutdown_wait_loop_s: Optional[float] = Field(None, gt=0)  # how often a draining replica looks

    @classmethod
    def parse(cls, args: Any) -> ServeArgs:
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
    vocab_size: Optional[int] = None  # the model's vocabulary: stop_token_ids must lie inside it

    @classmethod
    def from_args(cls, args: ServeArgs, max_positions: int, vocab_size: Optional[int] = None) -> Limits:
        return cls(args.max_prompt_tokens, args.max_new_tokens, args.max_mask_steps, args.max_edit_steps,
                   args.default_max_new_tokens, max_positions, vocab_size)

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
    """Decoding knobs shared by every endpoint (extra body fields for the OpenAI client).

    The LLaDA options (``remasking``, ``cfg_scale``, ``logits_eos_inf``, ``confidence_eos_eot_inf``,
    ``stop_token_ids``) are ``medlm.sampling.DecodeConfig``'s; left out, they are off."""

    mask_steps: Optional[int] = Field(None, ge=1)
    edit_steps: Optional[int] = Field(None, ge=0)
    threshold: Optional[float] = Field(None, gt=0.0, le=1.0)
    max_edits_per_step: Optional[int] = Field(None, ge=1, le=1_000_000)
    seed: Optional[int] = Field(None, ge=0, le=MAX_SEED)
    temperature: Optional[float] = Field(None, ge=0.0, le=2.0)
    remasking: Optional[Literal["low_confidence", "random"]] = None
    cfg_scale: Optional[float] = Field(None, ge=0.0, le=100.0)
    logits_eos_inf: Optional[bool] = None
    confidence_eos_eot_inf: Optional[bool] = None
    stop_token_ids: Optional[list[Annotated[int, Field(ge=0)]]] = Field(None, max_length=16)


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
        remasking=budget.remasking or "low_confidence",
        cfg_scale=0.0 if budget.cfg_scale is None else float(budget.cfg_scale),
        logits_eos_inf=bool(budget.logits_eos_inf),
        confidence_eos_eot_inf=bool(budget.confidence_eos_eot_inf),
        stop_ids=tuple(budget.stop_token_ids or ()),
    )
    if limits.vocab_size is not None:
        bad = [t for t in cfg.stop_ids if t >= limits.vocab_size]
        if bad:
            raise ApiError(400, f"stop_token_ids: token id {bad[0]} is outside the model's vocabulary "
                           f"[0, {limits.vocab_size})", "stop_token_ids", "invalid_value")
    if cfg.remasking == "random" and cfg.threshold is not None:
        raise ApiError(400, "remasking='random' ranks by random scores, which a confidence threshold cannot "
                       "compare against; leave threshold unset", "threshold", "invalid_value")
    try:
        cfg.validate(limits.max_positions, prompt_len, vocab_size=limits.vocab_size)
    except ValueError as e:  # a rule of the sampler this module does not repeat
        raise ApiError(400, str(e), new_tokens_param, "invalid_budget") from None
    return cfg
