"""Nested settings laid over a base: the job configs' ``key.sub=value`` overrides, DeepSpeed's run settings."""

from __future__ import annotations

import copy


def deep_merge(base: dict, extra: dict) -> dict:
    """A copy of ``base`` with ``extra`` laid over it: dicts merge key by key, anything else replaces."""
    out = copy.deepcopy(base)
    for key, value in extra.items():
        out[key] = deep_merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out
