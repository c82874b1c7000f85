"""Final-answer extraction and comparison for GSM8K/MATH-style outputs.

Why: "answer right" must not depend on how a model formats a number. A reference
ends in ``#### 1,234``; a model may write ``$1234.``, ``\\boxed{1234}`` or just end
with the number. We extract one string per text and compare numerically.
"""

from __future__ import annotations

import re
from fractions import Fraction

__all__ = ["extract_answer", "answers_match", "normalize_number"]

# A number: thousands-grouped ("1,234,567") or plain digits, optional decimals,
# or a bare decimal (".5"). Grouping needs exactly three digits per group, so a
# list like "1, 2" yields two numbers, not "12".
_NUMBER = re.compile(r"[-+]?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?|[-+]?\.\d+")
_FRAC = re.compile(r"\\[dt]?frac\{([^{}]*)\}\{([^{}]*)\}")


def _boxed_content(text: str) -> str | None:
    """Content of the last ``\\boxed{...}`` (or ``\\fbox{...}``), nested braces included."""
    start = max(text.rfind("\\boxed{"), text.rfind("\\fbox{"))
    if start < 0:
        return None
    i = text.index("{", start) + 1
    depth, j = 1, i
    while j < len(text):
        if text[j] == "{":
            depth += 1
        elif text[j] == "}":
            depth -= 1
            if depth == 0:
                return text[i:j].strip()
        j += 1
    return None  # unbalanced: treat as no box


def _clean(answer: str) -> str:
    """Drop formatting that never changes the value: ``$``, commas, spaces, trailing dots."""
    s = answer.strip().replace("$", "").replace(",", "").replace("\\!", "")
    s = s.strip().rstrip(".").strip()
    return s


def extract_answer(text: str | None) -> str | None:
    """The final answer of ``text``, or None when it holds none.

    Order: the line after the last ``####`` (GSM8K), else the last ``\\boxed{}``
    (MATH), else the last number anywhere in the text.
    """
    if not text:
        return None
    if "####" in text:
        tail = text.rsplit("####", 1)[1].strip().split("\n", 1)[0]
        cleaned = _clean(tail)
        if cleaned:
            match = _NUMBER.search(cleaned)
            return match.group(0).lstrip("+") if match else cleaned
    boxed = _boxed_content(text)
    if boxed is not None:
        return _clean(boxed) or None
    numbers = _NUMBER.findall(text)
    if not numbers:
        return None
    return numbers[-1].replace(",", "").lstrip("+")


def normalize_number(answer: str) -> Fraction | None:
    """Exact value of a formatted number (``"1,000"``, ``"3.0"``, ``"$5"``, ``"3/4"``, ``"\\frac{3}{4}"``)."""
    s = _clean(answer)
    s = _FRAC.sub(r"(\1)/(\2)", s).replace("(", "").replace(")", "")
    s = s.rstrip("%").strip()  # "50%" and "50" compare equal: GSM8K refs drop units
    try:
        return Fraction(s)
    except (ValueError, ZeroDivisionError):
        return None


def answers_match(pred: str | None, ref: str | None) -> bool:
    """True when ``pred`` and ``ref`` denote the same answer.

    Numbers compare by exact value (so ``"1,000" == "1000"``, ``"3.0" == "3"``);
    anything non-numeric compares as whitespace-free text.
    """
    if pred is None or ref is None:
        return False
    a, b = normalize_number(pred), normalize_number(ref)
    if a is not None and b is not None:
        return a == b
    if a is not None or b is not None:
        return False
    return "".join(_clean(pred).split()) == "".join(_clean(ref).split())
