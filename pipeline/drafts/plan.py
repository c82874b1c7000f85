"""The draft job's configuration and its plan: every check that can stop a job, done before Ray works.

Everything that can stop a job (missing checkpoint, unreadable source, unwritable output, bad
config) is checked in :func:`plan_run`, before Ray does any work. The default run id is a hash of
what decides the content (sources, checkpoint, tokenizer, recipe), so rerunning the same command
finishes an interrupted run or reuses a complete one. :mod:`pipeline.drafts.job` runs a plan.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from medlm.checkpoint import check_checkpoint_dir, check_insert_head_trained, checkpoint_hash, read_meta
from medlm.tokenizer import load_tokenizer, special_ids, tokenizer_hash
from pipeline.common.sources import SourceError, SourceFile, resolve_sources
from pipeline.common.storage import Location, StorageError, check_writable, local_copy, location
from pipeline.drafts.recipe import DraftRecipe
from pipeline.drafts.shards import SCHEMA_VERSION, RunLayout, open_run

CONTENT_FIELDS = (  # config fields that decide the rows; the rest (actors, batch sizes...) do not
    "seed", "gen_len", "tokens_per_step", "intermediate_prob", "max_intermediate_edit_steps",
    "temperature", "max_response_len", "draft_start", "commit_order", "confidence_eos_eot_inf",
    "logits_eos_inf", "cfg_scale", "stop_ids",
)


class GenerateError(ValueError):
    """A problem found before any work: the message names the value and what was expected."""


@dataclass
class GenerateConfig:
    source: Any = None  # a JSONL/Parquet file, a directory of them, or a list
    checkpoint: Optional[str] = None
    output: Optional[str] = None
    run_id: Optional[str] = None  # default: a hash of sources + checkpoint + recipe
    seed: int = 0
    gen_len: int = 64
    tokens_per_step: list = field(default_factory=lambda: [2, 4, 8, 16])
    # share of rows refined by a few edit steps of the checkpoint before labelling; needs a checkpoint whose
    # insertion head was trained on edits (a base model's is not), so off by default
    intermediate_prob: float = 0.0
    max_intermediate_edit_steps: int = 2
    temperature: float = 0.0
    draft_start: str = "masked"  # masked | partial (the reference with t ~ U(0, 1) of it masked, as ME-DLM)
    commit_order: str = "confidence"  # confidence | random (ME-DLM's training drafts)
    confidence_eos_eot_inf: bool = False  # commit end-of-text / end-of-turn last (on in the LLaDA-8B config)
    logits_eos_inf: bool = False  # never sample an end token while drafting
    cfg_scale: float = 0.0  # classifier-free guidance (LLaDA's cfg_scale); 0 = off
    stop_ids: list = field(default_factory=list)  # more token ids that end a response
    max_response_len: Optional[int] = None  # default gen_len; longer references are rejected
    num_actors: Any = 1  # an int, or [min, max] for an autoscaling pool
    cpus_per_actor: float = 1.0
    num_gpus_per_actor: float = 0.0
    batch_size: int = 16  # rows per draft call
    tokens_per_forward: int = 2048  # rows of a batch are packed into forward passes of this many tokens
    # CPUs reserved per align+write task. 0 lets them run beside draft actors that hold every CPU
    # (one machine); align is light. On a GPU cluster with spare CPUs reserve some (0.5).
    align_num_cpus: float = 0.0
    align_concurrency: int = 2  # align+write tasks at once (with 0 CPUs reserved, this is the only cap)
    rows_per_file: int = 5000
    row_group_size: int = 1024
    force: bool = False  # regenerate even when a complete run with this id exists
    from_run: Optional[str] = None  # rebuild that run's sources + recipe with `checkpoint`

    def recipe(self) -> DraftRecipe:
        return DraftRecipe(
            gen_len=self.gen_len,
            tokens_per_step=tuple(self.tokens_per_step),
            intermediate_prob=float(self.intermediate_prob),
            max_intermediate_edit_steps=self.max_intermediate_edit_steps,
            temperature=float(self.temperature),
            seed=self.seed,
            draft_start=self.draft_start,
            commit_order=self.commit_order,
            confidence_eos_eot_inf=bool(self.confidence_eos_eot_inf),
            logits_eos_inf=bool(self.logits_eos_inf),
            cfg_scale=self.cfg_scale,
            stop_ids=tuple(self.stop_ids),
        )

    def pool_size(self) -> tuple[int, int]:
        n = self.num_actors
        if isinstance(n, int) and not isinstance(n, bool) and n >= 1:
            return n, n
        if isinstance(n, (list, tuple)) and len(n) == 2 and all(isinstance(x, int) for x in n) and 1 <= n[0] <= n[1]:
            return int(n[0]), int(n[1])
        raise GenerateError(f"num_actors must be an integer >= 1 or [min, max] with 1 <= min <= max, got {n!r}")


@dataclass
class RunPlan:
    config: GenerateConfig
    sources: list[SourceFile]
    checkpoint: Path  # a local directory (a cached copy when the checkpoint is on object storage)
    checkpoint_uri: str  # as given: what workers on other nodes load
    checkpoint_hash: str
    tokenizer_hash: str
    del_id: int
    max_positions: int
    max_response_len: int
    recipe: DraftRecipe
    layout: RunLayout
    run_id: str
    derived_from: Optional[dict] = None
    warnings: list = field(default_factory=list)  # written into the manifest


def _positive(name: str, value, kind=int) -> None:
    if not isinstance(value, kind) or isinstance(value, bool) or value <= 0:
        raise GenerateError(f"{name} must be a positive {kind.__name__}, got {value!r}")


def _check_output_writable(output: Location) -> None:
    try:
        (output / "runs").mkdir()
        check_writable(output / "runs")
    except (OSError, StorageError) as e:
        raise GenerateError(f"output {output} is not writable: {e}") from None


def _derived_run_id(sources: list[SourceFile], ckpt_hash: str, tok_hash: str, cfg: GenerateConfig, max_len: int) -> str:
    key = {
        "sources": [s.sha256 for s in sources],
        "checkpoint": ckpt_hash,
        "tokenizer": tok_hash,
        "recipe": {k: getattr(cfg, k) for k in CONTENT_FIELDS} | {"max_response_len": max_len},
        "schema": SCHEMA_VERSION,
    }
    return "drafts-" + hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:12]


def config_from_run(run_dir: str | Path, overrides: dict) -> GenerateConfig:
    """The old run's config (sources + recipe) with ``overrides`` applied; run id and force reset."""
    try:
        old = open_run(run_dir)
    except Exception as e:
        raise GenerateError(f"--from-run: {e}") from None
    base = dict(old.manifest["config"])
    base.update(run_id=None, force=False, from_run=old.run_dir.uri)
    base.setdefault("output", old.run_dir.parent.parent.uri)
    known = {f.name for f in dataclasses.fields(GenerateConfig)}
    unknown = sorted(set(overrides) - known)
    if unknown:
        raise GenerateError(f"unknown config key {unknown[0]!r}")
    base.update(overrides)
    return GenerateConfig(**{k: v for k, v in base.items() if k in known})


def plan_run(cfg: GenerateConfig) -> RunPlan:
    """Every check that can fail before any work: config values, checkpoint, sources, output."""
    recipe = cfg.recipe()
    try:
        recipe.validate()
    except ValueError as e:
        raise GenerateError(str(e)) from None
    for name in ("batch_size", "rows_per_file", "row_group_size", "tokens_per_forward", "align_concurrency"):
        _positive(name, getattr(cfg, name))
    cfg.pool_size()
    if cfg.cpus_per_actor <= 0 or cfg.num_gpus_per_actor < 0 or cfg.align_num_cpus < 0:
        raise GenerateError(
            f"cpus_per_actor ({cfg.cpus_per_actor}) must be > 0, align_num_cpus ({cfg.align_num_cpus}) and "
            f"num_gpus_per_actor ({cfg.num_gpus_per_actor}) >= 0"
        )
    max_response_len = cfg.gen_len if cfg.max_response_len is None else cfg.max_response_len
    if not isinstance(max_response_len, int) or not 1 <= max_response_len <= cfg.gen_len:
        raise GenerateError(
            f"max_response_len must be an integer in [1, gen_len={cfg.gen_len}] (a draft has gen_len positions), "
            f"got {cfg.max_response_len!r}"
        )
    if not cfg.checkpoint:
        raise GenerateError("no checkpoint given: set `checkpoint` (a directory written by `medlm init` or training)")
    try:
        ckpt_uri = location(cfg.checkpoint).uri
        ckpt = check_checkpoint_dir(local_copy(ckpt_uri))
    except (FileNotFoundError, ValueError, OSError) as e:
        raise GenerateError(f"checkpoint: {e}") from None
    warnings = []
    if recipe.intermediate_prob > 0:
        try:
            known = check_insert_head_trained(read_meta(ckpt), f"checkpoint {ckpt_uri}",
                                              f"intermediate_prob={recipe.intermediate_prob}")
        except ValueError as e:
            raise GenerateError(str(e)) from None
        if not known:
            warnings.append(f"intermediate_prob={recipe.intermediate_prob}: checkpoint {ckpt_uri} does not record what its "
                            "insertion head was trained on (no edit_examples_seen in medlm_meta.json); its intermediate "
                            "edits are trusted as given")
            print(f"[generate] warning: {warnings[-1]}", flush=True)
    model_config = json.loads((ckpt / "config.json").read_text())
    max_positions = int(model_config["max_position_embeddings"])
    try:  # stop ids must be tokens of this model
        recipe.validate(vocab_size=int(model_config["vocab_size"]))
    except ValueError as e:
        raise GenerateError(str(e)) from None
    if cfg.gen_len >= max_positions:
        raise GenerateError(f"gen_len={cfg.gen_len} leaves no room for a prompt in the model's {max_positions} positions")
    tokenizer = load_tokenizer(ckpt)
    try:
        sources = resolve_sources(cfg.source)
    except SourceError as e:
        raise GenerateError(str(e)) from None
    if not cfg.output:
        raise GenerateError("no output given: set `output` (the directory that will hold runs/ and CURRENT)")
    try:
        output = location(cfg.output)
    except StorageError as e:
        raise GenerateError(f"output: {e}") from None
    _check_output_writable(output)
    ckpt_hash = checkpoint_hash(ckpt)
    tok_hash = tokenizer_hash(tokenizer)
    derived_from = None
    if cfg.from_run:
        old = open_run(cfg.from_run, verify_files=True).manifest
        old_sha = {s["path"]: s["sha256"] for s in old["sources"]}
        for s in sources:
            if s.path in old_sha and old_sha[s.path] != s.sha256:
                raise GenerateError(f"--from-run: source {s.path} changed since run {old['run_id']} (sha256 differs)")
        derived_from = {"run_id": old["run_id"], "checkpoint_hash": old["checkpoint"]["hash"],
                        "content_hash": old["content_hash"]}
    run_id = cfg.run_id or _derived_run_id(sources, ckpt_hash, tok_hash, cfg, max_response_len)
    if "/" in run_id or run_id.startswith(".") or ".tmp-" in run_id:
        raise GenerateError(f"run_id {run_id!r} must be a plain directory name")
    return RunPlan(
        config=cfg,
        sources=sources,
        checkpoint=ckpt,
        checkpoint_uri=ckpt_uri,
        checkpoint_hash=ckpt_hash,
        tokenizer_hash=tok_hash,
        del_id=special_ids(tokenizer).delete,
        max_positions=max_positions,
        max_response_len=max_response_len,
        recipe=recipe,
        layout=RunLayout(output),
        run_id=run_id,
        derived_from=derived_from,
        warnings=warnings,
    )
