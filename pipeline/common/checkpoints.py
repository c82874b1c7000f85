"""Checking a checkpoint where it lies, so a driver never downloads gigabytes of weights only to check them.

A local directory is checked as ``medlm.checkpoint.check_checkpoint_dir`` does. On object storage
the same checks read ``config.json`` and each ``*.safetensors`` header in place (a safetensors file
starts with an 8-byte length and a JSON header naming its tensors: a few kilobytes), and only the
non-weight files (config, tokenizer) are fetched into the local cache for the caller to read.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from medlm.checkpoint import check_checkpoint_config, check_checkpoint_dir, check_weight_names
from pipeline.common.storage import Location, StorageError, local_copy, location

_HEADER_LIMIT = 100 << 20  # safetensors caps its header at 100 MB


def safetensors_names(file: Location) -> set[str]:
    """The tensor names in a ``.safetensors`` file's header, read without reading the tensors."""
    with file.open_input() as f:
        size = int.from_bytes(f.read(8), "little")
        if not 0 < size <= _HEADER_LIMIT:
            raise ValueError(f"{file} is not a safetensors file (header length {size})")
        header = json.loads(f.read(size))
    return {name for name in header if name != "__metadata__"}


def check_checkpoint_at(target: str | os.PathLike | Location, *, require_insert_head: bool = True) -> Path:
    """Check a medlm checkpoint in place; returns a local directory with at least its config and
    tokenizer (the directory itself when local, else a cached copy without the weights).

    Raises ``StorageError`` for a bad URI or a missing bucket or prefix, ``FileNotFoundError`` or
    ``ValueError`` (naming the URI) for something that is not a medlm checkpoint.
    """
    loc = location(target)
    if loc.is_local:
        return check_checkpoint_dir(loc.local_path, require_insert_head=require_insert_head)
    if not loc.exists():
        raise StorageError(f"{loc.uri} does not exist")
    if not (loc / "config.json").is_file():
        raise FileNotFoundError(f"{loc.uri} has no config.json; is it a checkpoint directory?")
    check_checkpoint_config((loc / "config.json").read_json(), loc.uri)
    weights = [f for f in loc.list() if f.name.endswith(".safetensors")]
    if not weights:
        raise FileNotFoundError(f"{loc.uri} has no .safetensors weights")
    check_weight_names(set().union(*(safetensors_names(f) for f in weights)), loc.uri, require_insert_head)
    return local_copy(loc, weights=False)
