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


#: ``infosft train`` has the flat knobs (``train_config.FLAT_KNOBS``) as config fields of
#: their own; every other scheme knob (EAFT's alpha, excess's keep and per, a user
#: scheme's) travels in its ``knobs``.
_KNOB_CLI = {"threshold": dict(nargs="+", metavar="TAU")}  # a (low, high) pair for middle


def _registry_knobs():
    """Every knob of the registered schemes, once each, in the schemes' order."""
    from infosft.schemes import get, names

    seen: dict[str, object] = {}
    for name in names():
        for knob in get(name).knobs:
            seen.setdefault(knob.name, knob)
    return list(seen.values())


def _add_knob_flags(p: argparse.ArgumentParser, skip: frozenset[str] = frozenset()) -> None:
    """``--NAME`` for every registered scheme's knob (from its declaration) and
    ``--knob NAME=VALUE`` for any knob by name (a ``module:function`` scheme's)."""
    for knob in _registry_knobs():
        if knob.name in skip:
            continue
        kw = dict(type=knob.kind, help=knob.help)
        if knob.choices:
            kw["choices"] = list(knob.choices)
        p.add_argument(f"--{knob.name}", **(kw | _KNOB_CLI.get(knob.name, {})))
    p.add_argument("--knob", action="append", metavar="NAME=VALUE", dest="knob_pairs",
                   help="a scheme knob by name, e.g. --knob gamma=2 for your own "
                   "module:function scheme (numbers become numbers; repeatable)")


def _knob_pairs(pairs: list[str] | None) -> dict:
    from infosft.analysis.sweep import parse_value

    out = {}
    for pair in pairs or ():
        name, sep, value = pair.partition("=")
        if not sep or not name.strip():
            raise InfosftError(f"--knob expects NAME=VALUE (e.g. gamma=2), got {pair!r}")
        out[name.strip()] = parse_value(value.strip())
    return out


def _knobs(args, names: tuple[str, ...] | None = None) -> dict:
    """The knob values given on the command line (None = not given), ``names`` only."""
    out = {k.name: getattr(args, k.name, None) for k in _registry_knobs()}
    if isinstance(out.get("threshold"), list) and len(out["threshold"]) == 1:
        out["threshold"] = out["threshold"][0]
    pairs = _knob_pairs(getattr(args, "knob_pairs", None))
    scheme = getattr(args, "scheme", None)
    if pairs and scheme:  # --knob names this scheme's knobs, whatever else is registered
        from infosft.weights import check_own_knobs

        check_own_knobs(scheme, pairs)
    out |= pairs
    return out if names is None else {k: v for k, v in out.items() if k in names}


def _extra_knobs(args) -> dict | None:
    """The knobs beyond the flat config fields, for TrainConfig's ``knobs`` (None: none)."""
    from infosft.train_config import knob_values

    return knob_values({k: v for k, v in _knobs(args).items() if v is not None})["knobs"]


def _add_scheme_args(p: argparse.ArgumentParser) -> None:
    from infosft.weights import SCHEMES

    p.add_argument("--scheme", default="infosft", metavar="SCHEME",
                   help=f"token weighting: {', '.join(SCHEMES)} (from the scheme registry), "
                   "or your own as module:function (default infosft)")
    _add_knob_flags(p)


def _config(cls, args, *, source_field: str | None = None):
    """``cls`` from ``args.config`` (a YAML/JSON file of its fields) and the flags typed."""
    from infosft.configs import build, flag_values, read_config_file

    values = flag_values(args, cls)
    if "fields" in values:
        values["fields"] = _fields(values["fields"])
    file_values = read_config_file(args.config) if args.config else {}
    return build(cls, file_values, values, source=args.config)


def cmd_score(args) -> int:
    from infosft.analysis.score import ScoreConfig, score_dataset

    cfg = _config(ScoreConfig, args)
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
    if args.by is not None:
        from infosft.analysis.breakdown import breakdown_report, format_breakdown

        if args.max_groups < 1:
            raise InfosftError(f"--max-groups must be at least 1, got {args.max_groups}")
        rep = breakdown_report(args.run, args.by, args.scheme, max_groups=args.max_groups,
                               binned=_binned(args), **_knobs(args))
        print(json.dumps(rep, indent=2) if args.json else format_breakdown(rep))
        return 0
    from infosft.analysis.stats import format_summary, run_summary

    summary = run_summary(args.run, args.scheme, binned=_binned(args), **_knobs(args))
    print(json.dumps(summary, indent=2) if args.json else format_summary(summary))
    return 0


def _binned(args) -> bool | None:
    """``--binned`` / ``--exact``, or None: by the run's size."""
    return True if args.binned else False if args.exact else None


def cmd_export(args) -> int:
    from infosft.analysis.export import export_weighted

    path = export_weighted(args.run, args.out, args.scheme, overwrite=args.overwrite,
                           where=args.where, drop=args.drop, **_knobs(args))
    print(f"wrote {path}")
    if args.where:
        from infosft.analysis.export import read_export_meta

        f = read_export_meta(path)["filter"]
        kept = f["of"] - f["matched"] if f["mode"] == "drop" else f["matched"]
        print(f"{f['matched']} of {f['of']} examples match {' and '.join(f['where'])}; "
              f"{'dropped them, ' if f['mode'] == 'drop' else ''}wrote {kept}")
    return 0


def cmd_eval(args) -> int:
    from infosft.analysis.evaluate import EvalConfig, evaluate_runs, report_path

    cfg = _config(EvalConfig, args)
    if not cfg.runs:
        raise InfosftError("give at least one finished training run (RUN..., or `runs:` in "
                           "the --config file)")
    for rep in evaluate_runs(cfg.runs, cfg, progress=not args.quiet):
        learned, forgot, acc = rep["learned"], rep["forgot"], rep.get("accuracy")
        prior_acc = rep.get("prior_accuracy")
        print(f"{rep['run']}: learned: task NLL {learned['delta_nll']:+.4f}, "
              f"q {learned['delta_q']:+.4f}; forgot: prior NLL {forgot['delta_nll']:+.4f}, "
              f"KL {forgot['mean_kl']:.4f}"
              + (f"; accuracy {acc['base']:.0%} -> {acc['tuned']:.0%} (n={acc['n']})"
                 if acc else "")
              + (f"; prior accuracy {prior_acc['base']:.0%} -> {prior_acc['tuned']:.0%} "
                 f"({prior_acc['lost']} of {prior_acc['n']} lost)" if prior_acc else "")
              + "".join(f"; {k.replace('_', ' ')} skipped: {why}"
                        for k, why in rep.get("skipped", {}).items())
              + f"; report in {report_path(rep['run'])}")
    return 0


#: The evaluation settings ``infosft sweep`` takes (the rest are per run or per machine).
SWEEP_EVAL_FIELDS = ("task_data", "prior_data", "default_prior", "accuracy_limit",
                     "max_new_tokens")


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
        given += [flag for flag, v in (("--seeds", args.seeds), ("--config", args.config))
                  if v]
        given += [f"--{k.replace('_', '-')}" for k in SWEEP_EVAL_FIELDS
                  if getattr(args, k) is not None]
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
        from infosft.analysis.evaluate import EvalConfig
        from infosft.configs import build, flag_values

        eval_cfg = build(EvalConfig, None, flag_values(args, EvalConfig)
                         | {"device": train_cfg.device, "dtype": train_cfg.dtype})
    report = run_sweep(args.out, points, seeds, train_cfg, eval_cfg,
                       resume=args.resume, progress=not args.quiet, devices=args.devices)
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


def cmd_train(args) -> int:
    from infosft import train_status as ts
    from infosft.train_config import FIELD_NAMES, load_config, resolve, resume_config

    file_values = load_config(args.config) if args.config else {}
    overrides = {name: getattr(args, name, None) for name in FIELD_NAMES}
    overrides["fields"] = _fields(args.fields)
    overrides["knobs"] = _extra_knobs(args)
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

        raise _Failed(1, f"training failed: {one_line(e)} (traceback in "
                         f"{Path(cfg.out) / ts.LOG})") from None
    status = ts.read_status(run)
    if status["state"] == "stopped":  # (a finished run was announced by the trainer's log)
        print(f"stopped at step {status['step']}; continue with: infosft train --out {run} "
              "--resume" if status["resumable"] else f"stopped at step {status['step']} "
              "before any checkpoint")
    return 0


def build_parser() -> argparse.ArgumentParser:
    from infosft.analysis.evaluate import EvalConfig
    from infosft.analysis.score import ScoreConfig
    from infosft.configs import add_flags
    from infosft.train_config import FIELD_NAMES, TrainConfig

    parser = argparse.ArgumentParser(
        prog="infosft", description="See what token-weighted SFT (DFT, InfoSFT, ProFit, "
        "EAFT, Rho-1's excess loss, your own) does to your data before you train.")
    parser.add_argument("--status-file", metavar="FILE",
                        help="when the command ends, write its outcome as JSON to FILE "
                        "(returncode, the one-line error): how a launcher tells why it failed")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("score", help="score a dataset under a base model into a run directory")
    p.add_argument("--config", help="YAML or JSON file of the fields below (flags beat it)")
    p.add_argument("--resume", action="store_true", help="finish an interrupted run")
    p.add_argument("--overwrite", action="store_true", help="replace an existing run")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    add_flags(p, ScoreConfig, exclude=frozenset({"head_chunk"}))
    p.set_defaults(func=cmd_score)

    p = sub.add_parser("stats", help="print a short summary of a scored run under a scheme")
    p.add_argument("run")
    _add_scheme_args(p)
    p.add_argument("--by", metavar="COLUMN",
                   help="break the run down by a record column (task, source, ...): per "
                   "group the q distribution and, under every scheme, mean weight, effective "
                   "tokens and the share of the weight")
    p.add_argument("--max-groups", type=int, default=20, metavar="N",
                   help="with --by: the N groups with the most target tokens, the rest "
                   "pooled as (other) (default 20)")
    how = p.add_mutually_exclusive_group()
    how.add_argument("--binned", action="store_true",
                     help="summarize the run's histogram of cells instead of every token: "
                     "memory and time flat in the run's size, within 1%% of the exact values "
                     "(the default above 20M target tokens)")
    how.add_argument("--exact", action="store_true",
                     help="load every target token (the default up to 20M; ~100 bytes each)")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=cmd_stats)

    p = sub.add_parser("export", help="write a weighted dataset (Parquet or JSONL)")
    p.add_argument("run")
    p.add_argument("--out", required=True, help="output file, .parquet or .jsonl")
    p.add_argument("--overwrite", action="store_true")
    _add_scheme_args(p)
    p.add_argument("--where", action="append", metavar="EXPR",
                   help="export only the examples that match, e.g. \"min_q<0.01\" or "
                   "\"weight_mass<=0.05 and truncated==false\" (repeatable, ANDed): FIELD OP "
                   "VALUE, OP one of < <= > >= == !=; FIELD an examples column (n_target, "
                   "mean_q, min_q, mean_logp, min_logp, mean_entropy, top1_share, truncated, "
                   "...) or, under the chosen scheme, weight_mass (mean weight) or "
                   "zero_weight_share; recorded in the export's metadata")
    p.add_argument("--drop", action="store_true",
                   help="with --where: drop the matching examples, export the rest")
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("eval", help="before/after report of finished training runs: what "
                       "they learned (held-out task) and forgot (prior-capability set)")
    p.add_argument("--config", help="YAML or JSON file of the fields below (flags beat it)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    add_flags(p, EvalConfig, exclude=frozenset({"token_budget", "gen_batch_size"}))
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
    add_flags(p, TrainConfig)
    _add_knob_flags(p, skip=frozenset(FIELD_NAMES))
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
    p.add_argument("--devices", nargs="+", metavar="DEVICE",
                   help="run the queue side by side, one run per device (cuda:0 cuda:1 ...; "
                   "cpu may repeat); default: one per GPU where there are several, else "
                   "one run after another")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    add_flags(p, EvalConfig, only=SWEEP_EVAL_FIELDS)
    add_flags(p, TrainConfig, exclude=frozenset({"out", "scheme", "C", "P", "threshold",
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
    import time

    started = time.time()
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--status-file")
    status_file = pre.parse_known_args(argv)[0].status_file
    command, error = None, None
    try:
        args = build_parser().parse_args(argv)
        command = args.command
        rc = _run(args)
    except SystemExit as e:  # argparse: its message is on stderr already
        rc = e.code if isinstance(e.code, int) else 2
        error = None if rc == 0 else "invalid command line (see the usage message)"
    except _Failed as e:
        rc, error = e.rc, e.line
    if status_file:
        from infosft.outcome import write_outcome

        write_outcome(status_file, command or "", rc, error, started)
    return rc


class _Failed(Exception):
    def __init__(self, rc: int, line: str):
        super().__init__(line)
        self.rc, self.line = rc, line


def _run(args) -> int:
    """Run the command; an error is printed as one line and raised as :class:`_Failed`."""
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # our own bar shows scoring progress
    try:
        return args.func(args)
    except _Failed as e:  # a command's own failure, its line made already
        print(f"infosft: error: {e.line}", file=sys.stderr)
        raise
    except KeyboardInterrupt:
        print("infosft: interrupted", file=sys.stderr)
        raise _Failed(130, "interrupted") from None
    except Exception as e:  # noqa: BLE001 - the last line of defence: one line, exit 2
        if os.environ.get("INFOSFT_DEBUG"):
            raise
        line = describe_error(e)
        print(f"infosft: error: {line}", file=sys.stderr)
        raise _Failed(2, line) from None


if __name__ == "__main__":
    sys.exit(main())
