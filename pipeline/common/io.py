"""Files that are either complete or absent: write to a temporary name beside the target, then rename.

``os.replace`` within one directory is atomic on POSIX, so a reader (or a rerun after a crash) sees the
old file or the new one, never half of one. Directories go the same way with :func:`replace_dir`.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator


def _beside(path: Path, tag: str) -> Path:
    return path.with_name(f".{path.name}.{tag}-{uuid.uuid4().hex[:8]}")


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """A temporary path to write; renamed to ``path`` when the block ends without an error."""
    path = Path(path)
    tmp = _beside(path, "tmp")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        if tmp.is_dir():
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            tmp.unlink(missing_ok=True)


def write_text_atomic(path: str | Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_json_atomic(path: str | Path, data) -> None:
    write_text_atomic(path, json.dumps(data, indent=2, sort_keys=True, default=str) + "\n")


def replace_dir(staging: str | Path, target: str | Path) -> Path:
    """Move a finished directory into place, replacing ``target`` (the old one is moved aside first,
    then deleted, so ``target`` is never missing a file while the new one arrives)."""
    staging, target = Path(staging), Path(target)
    old = None
    if target.exists():
        old = _beside(target, "old")
        os.replace(target, old)
    os.replace(staging, target)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
    return target


def file_sha256(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()
