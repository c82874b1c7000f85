"""The shipped base model: a pretrained ``small`` checkpoint that travels with the package.

The paper starts from a pretrained LLaDA and trains the edit refiner on top; the toy world's
counterpart is a base model trained once by the demo's own base stage (``make base``) and kept as
package data in ``medlm/base/``: ``model.safetensors``, ``config.json``, the tokenizer files and
``PROVENANCE.json`` (commit, config, data seed, steps, wall time, its own mask-only rows, and the
sha256 of every file). Nothing here imports Ray: the check runs before any cluster starts.

States of the folder:
  * no ``PROVENANCE.json`` and no weights: nothing is shipped (:func:`find_shipped_base` returns None);
  * ``PROVENANCE.json`` whose files are all present with matching sha256: usable;
  * anything else (a file missing from an install, a hash that does not match, weights without
    provenance): :class:`ShippedBaseError`, whose message says what to run.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Optional

PROVENANCE_FILE = "PROVENANCE.json"
WEIGHTS_FILE = "model.safetensors"
# the files a usable base must hold besides the tokenizer's (whose names PROVENANCE.json lists)
REQUIRED_FILES = (WEIGHTS_FILE, "config.json")
MAX_WEIGHTS_BYTES = 10 * 1024 * 1024  # what the repository agrees to carry
RETRAIN_HINT = ("retrain it with `make base` (or `medlm demo --from-scratch`, which also runs the demo), "
                "or run the demo without it: `medlm demo --from-scratch`")


class ShippedBaseError(RuntimeError):
    """The shipped base is damaged or incomplete; the message names the file and what to run."""


@dataclass(frozen=True)
class ShippedBase:
    path: Path  # the folder: a checkpoint directory `medlm.checkpoint.load_checkpoint` loads
    provenance: dict
    sha256: str  # of model.safetensors

    def summary(self) -> str:
        steps = self.provenance.get("steps")
        return (f"base: shipped, sha256 {self.sha256[:16]}, {self.provenance.get('preset', '?')} preset, "
                f"{steps if steps is not None else '?'} steps, commit {str(self.provenance.get('commit') or '?')[:10]}")


def package_base_dir() -> Path:
    """``medlm/base`` as installed (the source folder under ``pip install -e .``)."""
    return Path(str(resources.files("medlm") / "base"))


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def find_shipped_base(root: Optional[Path | str] = None) -> Optional[ShippedBase]:
    """The verified shipped base in ``root`` (default: the package's ``medlm/base``), or None when none
    is shipped. Raises :class:`ShippedBaseError` when one is shipped but a file is missing or its sha256
    differs from ``PROVENANCE.json``. Reads every file once (~10 MB: well under a second)."""
    root = Path(root) if root is not None else package_base_dir()
    prov_file = root / PROVENANCE_FILE
    if not prov_file.is_file():
        if (root / WEIGHTS_FILE).exists():
            raise ShippedBaseError(f"{root / WEIGHTS_FILE} has no {PROVENANCE_FILE} beside it, so it cannot be "
                                   f"checked; {RETRAIN_HINT}")
        return None
    try:
        provenance = json.loads(prov_file.read_text())
        expected = dict(provenance["files"])
    except (json.JSONDecodeError, KeyError, TypeError, ValueError) as e:
        raise ShippedBaseError(f"{prov_file} is not a valid provenance record ({e}); {RETRAIN_HINT}") from None
    for name in REQUIRED_FILES:
        if name not in expected:
            raise ShippedBaseError(f"{prov_file} lists no sha256 for {name}; {RETRAIN_HINT}")
    for name, digest in sorted(expected.items()):
        f = root / name
        if not f.is_file():
            raise ShippedBaseError(
                f"the shipped base model is incomplete: {f} is missing (was the package installed without its "
                f"data? `pip install -e .` from a full clone keeps it); {RETRAIN_HINT}")
        actual = file_sha256(f)
        if actual != digest:
            raise ShippedBaseError(
                f"the shipped base model does not match its provenance: {f} has sha256 {actual}, "
                f"{PROVENANCE_FILE} says {digest} (a changed or partly copied file); restore it "
                f"(`git checkout -- {f}` in a clone) or {RETRAIN_HINT}")
    return ShippedBase(path=root, provenance=provenance, sha256=expected[WEIGHTS_FILE])


def write_shipped_base(checkpoint: Path | str, dest: Path | str, provenance: dict) -> ShippedBase:
    """Copy a checkpoint directory (weights, config, tokenizer, metadata) into ``dest`` with a
    ``PROVENANCE.json`` that adds the sha256 of every copied file; returns the verified result.

    ``dest`` is replaced as a whole (written beside it, then renamed), so an interrupted write never
    leaves weights that disagree with their provenance. Refuses weights over ``MAX_WEIGHTS_BYTES``."""
    import shutil

    src, dest = Path(checkpoint), Path(dest)
    weights = src / WEIGHTS_FILE
    if not weights.is_file() or not (src / "config.json").is_file():
        raise FileNotFoundError(f"{src} is not a checkpoint directory with {WEIGHTS_FILE} and config.json")
    if weights.stat().st_size > MAX_WEIGHTS_BYTES:
        raise ValueError(f"{weights} is {weights.stat().st_size / 2**20:.1f} MiB; a shipped base may be at most "
                         f"{MAX_WEIGHTS_BYTES / 2**20:.0f} MiB")
    tmp = dest.with_name(dest.name + ".writing")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    files = {}
    for f in sorted(src.iterdir()):
        if f.is_file() and f.name != PROVENANCE_FILE:
            shutil.copy2(f, tmp / f.name)
            files[f.name] = file_sha256(tmp / f.name)
    record = {**provenance, "sha256": files[WEIGHTS_FILE], "weights_bytes": weights.stat().st_size, "files": files}
    (tmp / PROVENANCE_FILE).write_text(json.dumps(record, indent=2, sort_keys=True, default=str) + "\n")
    # keep what is in dest but not the checkpoint's (the folder's README); everything else is replaced
    if dest.is_dir():
        for f in dest.iterdir():
            if f.is_file() and f.name.lower().startswith("readme") and not (tmp / f.name).exists():
                shutil.copy2(f, tmp / f.name)
        old = dest.with_name(dest.name + ".old")
        shutil.rmtree(old, ignore_errors=True)
        dest.rename(old)
        tmp.rename(dest)
        shutil.rmtree(old, ignore_errors=True)
    else:
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp.rename(dest)
    found = find_shipped_base(dest)
    assert found is not None
    return found
