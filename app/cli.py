"""The ``infosft`` command line. Errors print one line and exit 2, never a traceback."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from infosft.errors import InfosftError


def _fields(pairs: list[str] | None) -> dict[str, str] | None:
    if not pairs:
        return None
    out = {}
    for p in pairs:
        canon, sep, col = p.partition("=")
        if not sep or not canon or not col:
            raise InfosftError(f"--field expects NAME=COLUMN (e.g. prompt=question), got {p!r}")
        out[canon] = col
    return out


def _knobs(args) -> dict:
    threshold = args.threshold
    if threshold is not None and len(threshold) == 1:
        threshold = threshold[0]
    return {"C": args.C, "P": args.P, "threshold": threshold, "direction": args.direction,
            "seed": args.seed}


def _add_scheme_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--scheme", default="infosft", choices=["sft", "dft", "infosft", "profit"])
    p.add_argument("--C", type=float, help="InfoSFT: C > 0 (or give --P)")
    p.add_argument("--P", type=float, help="InfoSFT: P in (0.5, 1); C = log(P/(1-P)); default 0.93")
    p.add_argument("--threshold", type=float, nargs="+",
                   help="ProFit: tau in [0, 1] (default 0.1), or LOW HIGH for --direction middle")
    p.add_argument("--direction", choices=["higher", "lower", "middle", "random"],
                   help="ProFit: which tokens to keep (default higher: q >= tau)")
    p.add_argument("--seed", type=int, help="ProFit random: seed (default 0)")


def cmd_score(args) -> int:
    from infosft.analysis.score import ScoreConfig, score_dataset

    cfg = ScoreConfig(source=args.data, out=args.out, model=args.model,
                      max_length=args.max_length, limit=args.limit, fields=_fields(args.field),
                      use_template=not args.no_template, skip_invalid=args.skip_invalid,
                      split=args.split, top_k=args.top_k,
                      trust_remote_code=args.trust_remote_code, token_budget=args.token_budget,
                      part_tokens=args.part_tokens,
                      device=args.device, dtype=args.dtype)
    run = score_dataset(cfg, resume=args.resume, overwrite=args.overwrite,
                        progress=not args.quiet)
    meta = run.meta()
    c = meta["counts"]
    rate = meta.get("tokens_per_s")  # none when a resume found every part already scored
    print(f"scored {c['examples']} examples ({c['target_tokens']} target tokens of "
          f"{c['tokens']}) into {run.path}" + (f" at {rate:.0f} tokens/s" if rate else "")
          + (f"; skipped {c['skipped']} rows (listed in meta.json)" if c["skipped"] else ""))
    return 0


def cmd_stats(args) -> int:
    from infosft.analysis.stats import format_summary, run_summary

    summary = run_summary(args.run, args.scheme, **_knobs(args))
    print(json.dumps(summary, indent=2) if args.json else format_summary(summary))
    return 0


def cmd_export(args) -> int:
    from infosft.analysis.export import export_weighted

    path = export_weighted(args.run, args.out, args.scheme, overwrite=args.overwrite,
                           **_knobs(args))
    print(f"wrote {path}")
    return 0


def _eval_config(args, **more):
    """The EvalConfig of the evaluation flags ``eval`` and ``sweep`` share."""
    from infosft.analysis.evaluate import EvalConfig

    defaults = EvalConfig()
    return EvalConfig(task_data=args.task_data, prior_data=args.prior_data or [],
                      default_prior=not args.no_default_prior,
                      accuracy_limit=(defaults.accuracy_limit if args.accuracy_limit is None
                                      else args.accuracy_limit),
                      max_new_tokens=(defaults.max_new_tokens if args.max_new_tokens is None
                                      else args.max_new_tokens),
                      **more)


def cmd_eval(args) -> int:
    from infosft.analysis.evaluate import evaluate_runs

    cfg = _eval_config(args, limit=args.limit, overwrite=args.overwrite, device=args.device,
                       dtype=args.dtype)
    for rep in evaluate_runs(args.runs, cfg, progress=not args.quiet):
        learned, forgot, acc = rep["learned"], rep["forgot"], rep.get("accuracy")
        prior_acc = rep.get("prior_accuracy")
        print(f"{rep['run']}: learned: task NLL {learned['delta_nll']:+.4f}, "
              f"q {learned['delta_q']:+.4f}; forgot: prior NLL {forgot['delta_nll']:+.4f}, "
              f"KL {forgot['mean_kl']:.4f}"
              + (f"; accuracy {acc['base']:.0%} -> {acc['tuned']:.0%} (n={acc['n']})"
                 if acc else "")
              + (f"; prior accuracy {prior_acc['base']:.0%} -> {prior_acc['tuned']:.0%} "
                 f"({prior_acc['lost']} of {prior_acc['n']} lost)" if prior_acc else "")
              + f"; report in {Path(rep['run']) / 'eval' / 'report.json'}")
    return 0


def cmd_sweep(args) -> int:
    from infosft.analysis.sweep import (REPORT_FILE, format_report, parse_point, run_sweep,
                                        stored_settings)
    from infosft.train_config import FIELD_NAMES, load_config, resolve

    overrides = {name: getattr(args, name, None) for name in FIELD_NAMES}
    overrides["fields"] = _fields(args.fields)
    if not args.points:  # `--resume` alone: the sweep's own stored settings
        if not args.resume:
            raise InfosftError("give at least one --scheme NAME[:knob=value,...], or "
                               "--resume to continue a sweep with its stored settings")
        given = sorted(f"--{k.replace('_', '-')}" for k, v in overrides.items()
                       if v is not None and k != "out")  # --out: the sweep's own directory
        given += [flag for flag, v in (("--seeds", args.seeds), ("--config", args.config),
                                        ("--task-data", args.task_data),
                                        ("--prior-data", args.prior_data),
                                        ("--accuracy-limit", args.accuracy_limit),
                                        ("--max-new-tokens", args.max_new_tokens)) if v]
        given += ["--no-default-prior"] if args.no_default_prior else []
        if given:
            raise InfosftError(f"--resume without --scheme continues with the sweep's stored "
                               f"settings; drop {', '.join(given)} (or give the whole grid again)")
        points, seeds, train_cfg, eval_cfg = stored_settings(args.out)
    else:
        file_values = load_config(args.config) if args.config else {}
        overrides["out"] = str(Path(args.out) / "runs" / "_")  # set per run by the sweep
        train_cfg = resolve(file_values, overrides, source=args.config)
        points, seeds = args.points, args.seeds or [0]
        for point in points:
            parse_point(point)  # every point checked before the first run starts
        eval_cfg = _eval_config(args, device=train_cfg.device, dtype=train_cfg.dtype)
    report = run_sweep(args.out, points, seeds, train_cfg, eval_cfg,
                       resume=args.resume, progress=not args.quiet)
    print(format_report(report))
    print(f"* on the frontier; report in {Path(args.out) / REPORT_FILE}")
    return 0


def cmd_minitask(args) -> int:
    from infosft.analysis.minitask import write_minitask

    for path in write_minitask(args.out, seed=args.seed, n_train=args.train, n_test=args.test,
                               n_prior=args.prior, overwrite=args.overwrite):
        print(f"wrote {path}")
    return 0


def cmd_app(args) -> int:
    """Start the browser app (Streamlit in this process, see :mod:`app.serve`)."""
    from infosft.app.serve import serve

    return serve(args.host, args.port, args.workspace, args.allow_host)


# How each TrainConfig field becomes a flag; the rest are taken from the annotation.
_TRAIN_FLAG_SPECIAL = {
    "threshold": dict(type=float, nargs="+", metavar="TAU"),
    "report_to": dict(nargs="+", metavar="TRACKER"),
    "use_template": dict(flag="--template", action=argparse.BooleanOptionalAction),
    "trust_remote_code": dict(action="store_const", const=True),
    "fields": dict(flag="--field", action="append", metavar="NAME=COLUMN",
                   help="map a column: prompt=, response=, input=, messages= or text= "
                   "(repeatable)"),
}


def _add_train_flags(p: argparse.ArgumentParser, exclude: frozenset[str] = frozenset()) -> None:
    """Every TrainConfig field (but ``exclude``) as a flag with default None: only typed
    flags override the config file."""
    from dataclasses import fields

    from infosft.train_config import TrainConfig, field_default

    for f in fields(TrainConfig):
        if f.name in exclude:
            continue
        spec = dict(_TRAIN_FLAG_SPECIAL.get(f.name, {}))
        flag = spec.pop("flag", "--" + f.name.replace("_", "-"))
        help_ = spec.pop("help", f.metadata["help"])
        default = field_default(f.name)
        if default is not None and "default" not in help_:
            help_ += f" (default {default})"
        ann = str(f.type)
        if not spec:
            spec = (dict(action=argparse.BooleanOptionalAction) if ann.startswith("bool")
                    else dict(type=int) if ann.startswith("int")
                    else dict(type=float) if ann.startswith("float") else {})
        p.add_argument(flag, dest=f.name, default=None, help=help_, **spec)


def cmd_train(args) -> int:
    from infosft import train_status as ts
    from infosft.train_config import FIELD_NAMES, load_config, resolve, resume_config

    file_values = load_config(args.config) if args.config else {}
    overrides = {name: getattr(args, name) for name in FIELD_NAMES}
    overrides["fields"] = _fields(args.fields)
    if args.resume and args.overwrite:
        raise InfosftError("give --resume or --overwrite, not both")
    if args.resume:
        out = args.out or file_values.get("out")
        if not out:
            raise InfosftError("--resume needs --out RUN, the run directory to continue")
        if not (Path(out) / ts.CONFIG).is_file():
            raise InfosftError(f"{out}: no training run to resume (no {ts.CONFIG})")
        stored = Path(out) / ts.CONFIG
        cfg = resume_config(load_config(stored), file_values, overrides, source=stored)
    else:
        cfg = resolve(file_values, overrides, source=args.config)
    from infosft.train import train  # after the config checks: it imports transformers

    try:
        run = train(cfg, resume=args.resume, overwrite=args.overwrite)
    except (InfosftError, ValueError, OSError, KeyboardInterrupt):
        raise
    except Exception as e:  # noqa: BLE001 - a training crash: one line, details in the log
        from infosft.train import one_line

        print(f"infosft: error: training failed: {one_line(e)} (traceback in "
              f"{Path(cfg.out) / ts.LOG})", file=sys.stderr)
        return 1
    status = ts.read_status(run)
    if status["state"] == "stopped":  # (a finished run was announced by the trainer's log)
        print(f"stopped at step {status['step']}; continue with: infosft train --out {run} "
              "--resume" if status["resumable"] else f"stopped at step {status['step']} "
              "before any checkpoint")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="infosft", description="See what token-weighted SFT (DFT, InfoSFT, ProFit) does "
        "to your data before you train.")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("score", help="score a dataset under a base model into a run directory")
    p.add_argument("data", help="JSONL/JSON/CSV/Parquet file, dataset directory or hub name")
    p.add_argument("--out", required=True, help="run directory to create")
    p.add_argument("--model", help="local path or hub id (default: embedded SmolLM2-135M-Instruct)")
    p.add_argument("--max-length", type=int, default=2048)
    p.add_argument("--limit", type=int, help="score only the first N rows")
    p.add_argument("--field", action="append", metavar="NAME=COLUMN",
                   help="map a column: prompt=, response=, input=, messages= or text= "
                   "(repeatable)")
    p.add_argument("--no-template", action="store_true",
                   help="ignore the tokenizer's chat template: prompt + response")
    p.add_argument("--split", default="train", help="split of a dataset directory / hub name")
    p.add_argument("--skip-invalid", action="store_true",
                   help="skip bad rows (listed in meta.json) instead of stopping")
    p.add_argument("--resume", action="store_true", help="finish an interrupted run")
    p.add_argument("--overwrite", action="store_true", help="replace an existing run")
    p.add_argument("--top-k", type=int, default=5)
    p.add_argument("--token-budget", type=int,
                   help="padded tokens per forward batch (memory vs speed; default 2048 on "
                   "CPU, 16384 on GPU)")
    p.add_argument("--part-tokens", type=int, default=1 << 16,
                   help="tokens per Parquet part (resume granularity)")
    p.add_argument("--device", help="cpu, cuda, mps (default: best available)")
    p.add_argument("--dtype", help="float32, bfloat16 (default: bf16 on CUDA, fp32 elsewhere)")
    p.add_argument("--trust-remote-code", action="store_true",
                   help="allow model repos to run their own code (off by default)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_score)

    p = sub.add_parser("stats", help="print a short summary of a scored run under a scheme")
    p.add_argument("run")
    _add_scheme_args(p)
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=cmd_stats)

    p = sub.add_parser("export", help="write a weighted dataset (Parquet or JSONL)")
    p.add_argument("run")
    p.add_argument("--out", required=True, help="output file, .parquet or .jsonl")
    p.add_argument("--overwrite", action="store_true")
    _add_scheme_args(p)
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("eval", help="before/after report of finished training runs: what "
                       "they learned (held-out task) and forgot (prior-capability set)")
    p.add_argument("runs", nargs="+", metavar="RUN", help="finished training run directories")
    p.add_argument("--task-data", help="held-out task data (default: RUN/data/eval.jsonl)")
    p.add_argument("--prior-data", action="append", metavar="FILE",
                   help="more prior-capability data, besides sample_data/prior.jsonl "
                   "(repeatable)")
    p.add_argument("--no-default-prior", action="store_true",
                   help="leave out the bundled sample_data/prior.jsonl")
    p.add_argument("--accuracy-limit", type=int, default=20,
                   help="math task data: greedy answers on this many examples (0: none)")
    p.add_argument("--max-new-tokens", type=int, default=256)
    p.add_argument("--limit", type=int, help="use only the first N rows of each data file")
    p.add_argument("--overwrite", action="store_true", help="replace an existing RUN/eval")
    p.add_argument("--device", help="cpu, cuda, mps (default: best available)")
    p.add_argument("--dtype", help="float32, bfloat16 (default: bf16 on CUDA, fp32 elsewhere)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("app", help="start the browser app (opens on the bundled sample run)")
    p.add_argument("--host", default="127.0.0.1",
                   help="address to bind (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=8501)
    p.add_argument("--workspace", help="where uploads, runs, exports and jobs go "
                   "(default $INFOSFT_WORKSPACE or ./workspace)")
    p.add_argument("--allow-host", action="append", metavar="NAME",
                   help="another host name the browser may use to reach the app, e.g. behind "
                   "a proxy (repeatable; * = any; also $INFOSFT_ALLOW_HOSTS). Others get 403: "
                   "a page that rebinds its domain to this machine cannot drive the app")
    p.set_defaults(func=cmd_app)

    p = sub.add_parser(
        "train", help="fine-tune with weighted tokens (online or static weights)",
        description="Fine-tune a model with the weighted SFT loss. Flags override the "
        "--config file. Runs on one device as is; for several GPUs launch the same command "
        "with `accelerate launch -m infosft train ...` or `torchrun -m infosft train ...`. "
        "SIGTERM or Ctrl+C checkpoints and stops; --resume continues.")
    p.add_argument("--config", help="YAML or JSON file of config fields")
    p.add_argument("--resume", action="store_true",
                   help="continue the run in --out from its last checkpoint")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    _add_train_flags(p)
    p.set_defaults(func=cmd_train)

    p = sub.add_parser(
        "sweep", help="train and evaluate a grid of schemes, knobs and seeds; report the "
        "learned-vs-forgot frontier",
        description="Each --scheme NAME[:knob=value,...] adds a grid point (e.g. sft, "
        "infosft:P=0.9, profit:threshold=0.2); each runs once per seed as an ordinary "
        "training run in SWEEP/runs/, is evaluated when it finishes, and SWEEP/report.json "
        "gets its row. Other flags are infosft train's and infosft eval's.")
    p.add_argument("--out", required=True, help="the sweep directory")
    p.add_argument("--scheme", dest="points", action="append",
                   metavar="NAME[:knob=value,...]", help="a grid point (repeatable)")
    p.add_argument("--seeds", type=int, nargs="+", help="training seeds (default: 0)")
    p.add_argument("--resume", action="store_true",
                   help="continue a sweep: finished runs are kept; alone (no --scheme), "
                   "with the settings the sweep was started with")
    p.add_argument("--config", help="YAML or JSON file of training config fields")
    p.add_argument("--task-data", help="held-out task data (default: each run's eval split)")
    p.add_argument("--prior-data", action="append", help="prior-capability data (repeatable)")
    p.add_argument("--no-default-prior", action="store_true")
    p.add_argument("--accuracy-limit", type=int, help="greedy answers checked (default 20)")
    p.add_argument("--max-new-tokens", type=int, help="per answer (default 256)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    _add_train_flags(p, exclude=frozenset({"out", "scheme", "C", "P", "threshold",
                                           "direction", "mode", "seed"}))
    p.set_defaults(func=cmd_sweep)

    p = sub.add_parser("minitask", help="write the miniature arithmetic task (train, test, "
                       "prior sets) the default model can learn in minutes")
    p.add_argument("--out", required=True, help="directory for train.jsonl, test.jsonl, "
                   "prior.jsonl")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--train", type=int, default=400, help="training problems (default 400)")
    p.add_argument("--test", type=int, default=80, help="held-out problems (default 80)")
    p.add_argument("--prior", type=int, default=60, help="prior-capability problems (default 60)")
    p.add_argument("--overwrite", action="store_true", help="replace existing files")
    p.set_defaults(func=cmd_minitask)
    return parser


def _one_line(text: object) -> str:
    """A message on one line: errors that embed library text can span several."""
    return " ".join(line.strip() for line in str(text).splitlines() if line.strip())


def describe_error(e: BaseException) -> str:
    """The one line the CLI prints for an error: ours as they are, a file error with its
    file, anything else (a bug, or a library's failure) with its type."""
    if isinstance(e, (InfosftError, ValueError)):
        return _one_line(e)
    first = next((line for line in str(e).splitlines() if line.strip()), "").strip()[:300]
    if isinstance(e, OSError):  # disk full, permissions...: name the file
        return _one_line(f"{e.filename}: {e.strerror or e}") if e.filename else (
            e.strerror or first or type(e).__name__)
    return (f"unexpected {type(e).__name__}" + (f": {first}" if first else "")
            + " (set INFOSFT_DEBUG=1 for the traceback)")


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # our own bar shows scoring progress
    try:
        return args.func(args)
    except KeyboardInterrupt:
        print("infosft: interrupted", file=sys.stderr)
        return 130
    except Exception as e:  # noqa: BLE001 - the last line of defence: one line, exit 2
        if os.environ.get("INFOSFT_DEBUG"):
            raise
        print(f"infosft: error: {describe_error(e)}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
