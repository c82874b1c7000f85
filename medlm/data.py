"""Source rows -> (prompt ids, response ids), with a reason for every row that cannot be used.

Accepted source formats (one JSON object per row):
    {"history": [{"role", "content"}, ...], "response"}   the ME-DLM SFT format
    {"question", "answer"}                                GSM8K
    {"prompt", "response"}
    {"text"}                                              pretraining: prompt is a lone <|endoftext|>
An ``id`` field is used when present; otherwise the id is a stable hash of the row's content.
``answers`` (a list of equally valid responses, as the toy task writes) is kept for labelling drafts
against the closest valid reference.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from typing import Any, Optional

from medlm.tokenizer import chat_prompt_ids, response_ids, special_ids


class RowError(ValueError):
    """A row that cannot be used; ``reason`` is a short stable code, ``detail`` says more."""

    def __init__(self, reason: str, detail: str = ""):
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


@dataclass
class Example:
    id: str
    source_format: str
    messages: Optional[list[dict]]  # chat prompt, None for pretraining text
    response: str
    answers: list[str] = field(default_factory=list)  # all valid responses (answers[0] == response)


def stable_row_id(row: dict) -> str:
    """Content hash used as the id of rows that bring none."""
    blob = json.dumps(row, sort_keys=True, ensure_ascii=False, default=str)
    return "h-" + hashlib.sha256(blob.encode("utf-8")).hexdigest()[:20]


def _need_str(row: dict, key: str) -> str:
    if key not in row or row[key] is None:
        raise RowError("missing_field", f"field {key!r} is missing")
    value = row[key]
    if not isinstance(value, str):
        raise RowError("non_string_field", f"field {key!r} is {type(value).__name__}, not a string")
    return value


def normalise_row(row: Any) -> Example:
    """Recognise the row's format and return an :class:`Example`, or raise :class:`RowError`."""
    if not isinstance(row, dict):
        raise RowError("not_an_object", f"row is {type(row).__name__}, not a JSON object")
    rid = row.get("id")
    if rid is not None and not isinstance(rid, (str, int)):
        raise RowError("bad_id", f"id is {type(rid).__name__}")
    row_id = str(rid) if rid is not None else stable_row_id(row)
    answers: list[str] = []
    if "history" in row:
        fmt = "history"
        history = row["history"]
        if not isinstance(history, list) or not history:
            raise RowError("bad_history", "history must be a non-empty list of {role, content}")
        messages = []
        for m in history:
            if not isinstance(m, dict) or not isinstance(m.get("role"), str) or not isinstance(m.get("content"), str):
                raise RowError("bad_history", "every history entry needs string role and content")
            if m["role"] not in ("system", "user", "assistant"):
                raise RowError("bad_history", f"unknown role {m['role']!r}")
            messages.append({"role": m["role"], "content": m["content"]})
        response = _need_str(row, "response")
    elif "question" in row or "answer" in row:
        fmt = "question_answer"
        messages = [{"role": "user", "content": _need_str(row, "question")}]
        response = _need_str(row, "answer")
        if isinstance(row.get("answers"), list) and all(isinstance(a, str) for a in row["answers"]):
            answers = list(row["answers"])
    elif "prompt" in row:
        fmt = "prompt_response"
        messages = [{"role": "user", "content": _need_str(row, "prompt")}]
        response = _need_str(row, "response")
    elif "text" in row:
        fmt = "text"
        messages = None
        response = _need_str(row, "text")
    else:
        raise RowError("unknown_format", f"no recognised fields among {sorted(row)[:8]}")
    if not response.strip():
        raise RowError("empty_response", "response text is empty")
    if messages is not None and not any(m["content"].strip() for m in messages):
        raise RowError("empty_prompt", "prompt text is empty")
    if not answers:
        answers = [response]
    elif response not in answers:
        answers = [response] + answers
    return Example(id=row_id, source_format=fmt, messages=messages, response=response, answers=answers)


def parse_json_line(line: str | bytes) -> dict:
    """Decode one JSONL line, turning decoding problems into row errors."""
    if isinstance(line, bytes):
        try:
            line = line.decode("utf-8")
        except UnicodeDecodeError as e:
            raise RowError("invalid_utf8", str(e)) from None
    try:
        return json.loads(line)
    except json.JSONDecodeError as e:
        raise RowError("malformed_json", f"{e.msg} at column {e.colno}") from None


def encode_example(
    tokenizer, ex: Example, max_response_len: int, max_total_len: int | None = None
) -> tuple[list[int], list[int]]:
    """Token ids of the prompt and of the reference response (ending in ``<|im_end|>``)."""
    if ex.messages is None:
        prompt = [special_ids(tokenizer).eos]
    else:
        prompt = chat_prompt_ids(tokenizer, messages=ex.messages)
    target = response_ids(tokenizer, ex.response)
    if len(target) > max_response_len:
        raise RowError("too_long", f"response has {len(target)} tokens, more than the maximum {max_response_len}")
    if max_total_len is not None and len(prompt) + max_response_len > max_total_len:
        raise RowError(
            "too_long",
            f"prompt of {len(prompt)} tokens + response budget {max_response_len} exceeds the model maximum {max_total_len}",
        )
    return prompt, target
