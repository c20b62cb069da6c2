"""Command line: a thin layer that parses arguments into configs, calls the API and prints.

Heavy modules are imported inside the commands so `robustmed list` starts fast.
"""
from __future__ import annotations

import argparse
import json
import sys

from robustmed.allocator import tune_malloc
from robustmed.errors import UserError, exit_status


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one line, exit status 2 (argparse prints usage too)
        sys.stderr.write(f"robustmed: error: {message}\n")
        raise SystemExit(2)


def _add_common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--defense", default=None,
                   help="registered defense (robustmed list defenses; default none); with --suite: only these "
                        "(comma-separated)")
    p.add_argument("--model", default=None, help="model preset (default mail-rn18-mini)")
    p.add_argument("--dataset", default=None,
                   help="MedMNIST name (pneumoniamnist, breastmnist_64, …) or .npz path; with --suite: only these")
    p.add_argument("--data-root", default=None, help="folder with the npz files (default $ROBUSTMED_DATA, ~/.medmnist)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto", help="auto | cpu | cuda[:N]")
    p.add_argument("--json", action="store_true", help="print one JSON object on stdout")


def _threads_option(parser) -> None:
    parser.add_argument("--threads", type=int, default=None,
                        help="CPU threads (default: $OMP_NUM_THREADS, else the cores other jobs leave idle)")


def _apply_threads(args) -> None:
    from robustmed.threads import apply_threads  # imports torch: not on the path of `robustmed list`

    apply_threads(args.threads)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="robustmed", description="Adversarial-robustness benchmarks for medical image models.")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    bench = sub.add_parser("bench", help="attack a model and store one row per sample",
                           description="example: robustmed bench --defense none --attack pgd100 --eps 2/255,4/255")
    _add_common(bench)
    bench.add_argument("--attack", default="pgd100", help="attack spec(s), comma-separated: pgd100, pgd10:alpha=1/255")
    bench.add_argument("--eps", default="4/255", help="L∞ budget(s) in [0,1] pixel units, e.g. 2/255,4/255,8/255")
    bench.add_argument("-n", "--n", type=int, default=None, help="seeded subset of N test samples (default: all)")
    bench.add_argument("--split", default="test", choices=["train", "val", "test"])
    bench.add_argument("--checkpoint", default=None, help="a checkpoint written by `robustmed train`")
    bench.add_argument("--model-file", default=None, help="FILE.py:FACTORY returning your own nn.Module")
    bench.add_argument("--batch-size", type=int, default=256)
    bench.add_argument("--out", default=None, help="results folder (default results/runs)")
    bench.add_argument("--no-progress", action="store_true")
    bench.add_argument("--checks", default="cheap", choices=["cheap", "full"],
                       help="cheap: the always-on checks; full: also re-attack a seeded subset (B6-B16, C3, D1, D3)")
    bench.add_argument("--suite", default=None, help="run a whole suite file (benchmarks/*.toml) instead")
    bench.add_argument("--executor", default="local", choices=["local", "ray"],
                       help="local: in this process; ray: one Ray task per work unit (pip install 'robustmed[ray]')")
    bench.add_argument("--address", default=None, help="Ray cluster to use: auto | HOST:PORT (default: start one)")
    bench.add_argument("--shard-size", type=int, default=None,
                       help="samples per work unit, a multiple of --batch-size (default: one batch)")
    _threads_option(bench)
    bench.add_argument("--fresh", action="store_true",
                       help="recompute the run even when one with the same id is stored (default: read it back)")
    bench.add_argument("--resume", default=None, metavar="RUN_ID",
                       help="complete a stored run (rerunning the same command does too)")
    bench.add_argument("--threat", default=None,
                       help="multi-input models: inputs attacked, comma-separated: joint | image | tabular | an "
                            "input's name; NAME:INPUT=EPS sets an input's ε (e.g. joint:shape=0.25); default joint")
    bench.add_argument("--criterion", default=None,
                       help="multi-label tasks: success criterion, any (any-label flip, default) | label:NAME")

    train = sub.add_parser("train", help="train a registered model with a defense",
                           description="example: robustmed train --defense none --epochs 12 --out ckpt/none.pt")
    _add_common(train)
    train.add_argument("--recipe", default=None, help="cpu | paper | code (default: cpu for -mini models)")
    train.add_argument("--epochs", type=int, default=None)
    train.add_argument("--out", default=None,
                       help="checkpoint path (default checkpoints/MODEL/DATASET/DEFENSE.pt; `zoo` replaces the "
                            "shipped checkpoint)")
    train.add_argument("--init", default=None, metavar="CHECKPOINT",
                       help="start from this checkpoint's matching weights (e.g. the clean model on the same data)")
    _threads_option(train)
    train.add_argument("--no-progress", action="store_true")

    check = sub.add_parser("check", help="run every evaluation check on a model and print the table",
                           description="example: robustmed check --defense none --n 64 --json "
                                       "(exit status 1 when an ERROR check fires)")
    _add_common(check)
    check.add_argument("--attack", default="pgd20", help="attack spec(s) the run-time checks use")
    check.add_argument("--eps", default="4/255", help="L∞ budget(s) in [0,1] pixel units")
    check.add_argument("-n", "--n", type=int, default=32, help="seeded subset of N test samples")
    check.add_argument("--checkpoint", default=None, help="a checkpoint written by `robustmed train`")
    check.add_argument("--model-file", default=None, help="FILE.py:FACTORY returning your own nn.Module")
    _threads_option(check)
    check.add_argument("--checks", default="full", choices=["cheap", "full"])

    lister = sub.add_parser("list", help="what the registry holds", description="example: robustmed list defenses")
    lister.add_argument("what", choices=["models", "defenses", "attacks", "datasets"])
    lister.add_argument("--json", action="store_true")

    table = sub.add_parser("table", help="paper-style table from a suite's stored rows",
                           description="example: robustmed table --suite benchmarks/table3.toml --format md")
    table.add_argument("--suite", required=True)
    table.add_argument("--format", default="md", choices=["md", "latex"])
    table.add_argument("--out", default=None, help="write to a file instead of stdout")

    board = sub.add_parser("leaderboard", help="ranked leaderboard over stored runs",
                           description="example: robustmed leaderboard --format html --out leaderboard.html")
    board.add_argument("--results", default="results", help="folder searched for runs (default results)")
    board.add_argument("--eps", default="4/255")
    board.add_argument("--format", default="md", choices=["md", "html"])
    board.add_argument("--out", default=None)

    plot = sub.add_parser("plot", help="robust accuracy vs ε, steps or EOT samples (PNG/SVG, Wilson bands)",
                          description="example: robustmed plot --results results/runs --kind steps --out fig6.png")
    plot.add_argument("--results", default="results/runs", help="folder searched for runs")
    plot.add_argument("--kind", default="eps", choices=["eps", "steps", "eot"])
    plot.add_argument("--defense", action="append", help="restrict to these defenses (repeatable)")
    plot.add_argument("--attack", default=None, help="restrict to one attack name (e.g. pgd100)")
    plot.add_argument("--dataset", default=None, help="restrict to one data set")
    plot.add_argument("--protocol", default=None, choices=["adaptive", "paper"],
                      help="restrict to one protocol (default: both, labelled)")
    plot.add_argument("--out", required=True, help="output file ending in .png or .svg")

    regress = sub.add_parser("regress", help="rerun a golden suite and fail on a robust-accuracy drop",
                             description="example: robustmed regress --baseline results/golden/ci")
    regress.add_argument("--baseline", required=True, help="folder of golden runs")
    regress.add_argument("--candidate", default=None, help="compare these stored runs instead of rerunning")
    regress.add_argument("--tolerance", type=float, default=0.02, help="largest allowed absolute drop (default 0.02)")
    regress.add_argument("--alpha", type=float, default=0.05, help="McNemar significance level (default 0.05)")
    regress.add_argument("--device", default="cpu")
    regress.add_argument("--json", action="store_true")

    data = sub.add_parser("data", help="data sets: fetch with MD5 check",
                          description="example: robustmed data fetch pneumoniamnist")
    data_sub = data.add_subparsers(dest="data_command", required=True, parser_class=_Parser)
    fetch = data_sub.add_parser("fetch", help="download an official MedMNIST file and verify its MD5")
    fetch.add_argument("name")
    fetch.add_argument("--data-root", default=None)
    fetch.add_argument("--if-missing", action="store_true", help="do nothing when the file is already there")
    fetch.add_argument("--url", default=None, help="override the download address (mirrors, local files)")
    return parser


def _explicit_defense(args) -> str:
    """``--defense`` as the config takes it; with ``--checkpoint`` an explicit one must match the checkpoint's
    (the config cannot tell an explicit ``none`` from its default)."""
    if args.checkpoint and args.defense:
        from pathlib import Path

        from robustmed.checkpoints import read_metadata, refuse_mismatch

        if Path(args.checkpoint).is_file():
            refuse_mismatch(args.checkpoint, read_metadata(args.checkpoint), defense=args.defense)
    return args.defense or "none"


def cmd_bench(args) -> int:
    from robustmed.report import print_bench
    from robustmed.run.bench import BenchConfig, run_bench

    _apply_threads(args)
    if args.suite:
        return _bench_suite(args)

    cfg = BenchConfig(defense=_explicit_defense(args), attack=args.attack, model=args.model, dataset=args.dataset,
                      data_root=args.data_root, checkpoint=args.checkpoint, model_file=args.model_file,
                      eps=args.eps, n=args.n, seed=args.seed, split=args.split, batch_size=args.batch_size,
                      device=args.device, out=args.out, progress=not (args.no_progress or args.json),
                      checks=args.checks, shard_size=args.shard_size, executor=args.executor, address=args.address,
                      resume=args.resume, threat=args.threat, criterion=args.criterion, fresh=args.fresh)
    report = run_bench(cfg)
    if args.json:
        if report.reuse_note():
            print(report.reuse_note(), file=sys.stderr)
        print(json.dumps(report.to_json()))
    else:
        print_bench(report)
    return 0


def _bench_suite(args) -> int:
    from robustmed.report import print_bench
    from robustmed.suites import load_suite, run_suite

    if args.resume:
        raise UserError("--resume names one run; rerun the same --suite command to complete a suite")
    only = lambda value: tuple(v.strip() for v in value.split(",") if v.strip()) if value else None  # noqa: E731
    reports = run_suite(load_suite(args.suite), args.device, progress=not (args.no_progress or args.json),
                        defenses=only(args.defense), datasets=only(args.dataset),
                        executor=args.executor, address=args.address)
    if args.json:
        for note in filter(None, (r.reuse_note() for r in reports)):
            print(note, file=sys.stderr)
        print(json.dumps([r.to_json() for r in reports]))
    else:
        for report in reports:
            print_bench(report)
    return 0


def _emit(text: str, out: str | None) -> None:
    if out:
        from pathlib import Path

        Path(out).write_text(text)
        print(f"wrote {out}")
    else:
        print(text, end="")


def cmd_table(args) -> int:
    from robustmed.evidence import column_attack
    from robustmed.suites import eps_of, load_suite, suite_evaluations
    from robustmed.tables import render

    suite = load_suite(args.suite)
    evals = suite_evaluations(suite)
    if not evals:
        raise UserError(f"no stored runs for suite {suite.name!r} under {suite.results}; "
                        f"run `robustmed bench --suite {args.suite}` first")
    attacks = [column_attack(a) for a in suite.attacks]
    _emit(render(evals, list(suite.defenses), attacks, eps_of(suite), args.format,
                 title=suite.description, substitutes=suite.randomized_substitutes), args.out)
    return 0


def cmd_leaderboard(args) -> int:
    from robustmed.attacks import parse_eps_list
    from robustmed.leaderboard import boards, render_html, render_markdown
    from robustmed.store import load_runs

    eps = parse_eps_list(args.eps)[0]
    items = boards(load_runs(args.results), eps)
    if not items:
        raise UserError(f"no stored evaluations at ε = {args.eps} under {args.results}")
    _emit(render_html(items, eps) if args.format == "html" else render_markdown(items, eps), args.out)
    return 0


def cmd_plot(args) -> int:
    import pandas as pd

    from robustmed.plots import curves, describe, plot
    from robustmed.store import load_runs

    if not args.out.endswith((".png", ".svg")):
        raise UserError(f"--out must end in .png or .svg, got {args.out!r}")
    frames = [rows.assign(defense=m["defense"], model=m["model"], dataset=m["dataset"])
              for rows, m in load_runs(args.results)]
    rows = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()
    if len(rows):
        rows = rows[rows.attack != "null"]  # the randomized baseline is a table column, not a curve
    if args.defense and len(rows):
        rows = rows[rows.defense.isin(args.defense)]
    if args.attack and len(rows):
        rows = rows[rows.attack == args.attack]
    if args.dataset and len(rows):
        rows = rows[rows.dataset == args.dataset]
    if args.protocol and len(rows):
        rows = rows[(rows.protocol if "protocol" in rows else "adaptive") == args.protocol]
    if rows.empty:
        raise UserError(f"no stored rows to plot under {args.results} for the given filters")
    series = curves(rows, args.kind)
    plot(series, args.kind, args.out, title=describe(rows, args.kind))
    print(f"wrote {args.out}")
    return 0


def cmd_regress(args) -> int:
    import tempfile

    from robustmed.regress import compare, rerun, verdict
    from robustmed.store import load_runs

    baseline = load_runs(args.baseline)
    if not baseline:
        raise UserError(f"no golden runs under {args.baseline}")
    with tempfile.TemporaryDirectory() as scratch:
        if args.candidate:
            candidate = load_runs(args.candidate)
        else:
            rerun(baseline, scratch, args.device)
            candidate = load_runs(scratch)
        comparisons, missing = compare(baseline, candidate)
    reasons = verdict(comparisons, missing, args.tolerance, args.alpha)
    if args.json:
        print(json.dumps({"passed": not reasons, "reasons": reasons, "groups": [
            {"group": list(map(str, c.group)), "n": c.n, "baseline": c.baseline_accuracy,
             "candidate": c.candidate_accuracy, "flipped_down": c.flipped_down, "flipped_up": c.flipped_up,
             "p_value": c.p_value} for c in comparisons]}))
    else:
        for c in comparisons:
            print(f"{'/'.join(map(str, c.group))}: {100 * c.baseline_accuracy:.1f} → {100 * c.candidate_accuracy:.1f} "
                  f"(n {c.n}, lost {c.flipped_down or 'none'}, gained {c.flipped_up or 'none'}, "
                  f"McNemar p {c.p_value:.3g})")
        print("FAIL: " + "; ".join(reasons) if reasons else "PASS: no significant robust-accuracy drop")
    return 1 if reasons else 0


def cmd_check(args) -> int:
    from robustmed.checks import unreliable
    from robustmed.report import print_findings
    from robustmed.run.bench import BenchConfig, run_checks

    _apply_threads(args)
    cfg = BenchConfig(defense=_explicit_defense(args), attack=args.attack, model=args.model, dataset=args.dataset,
                      data_root=args.data_root, checkpoint=args.checkpoint, model_file=args.model_file,
                      eps=args.eps, n=args.n, seed=args.seed, device=args.device, progress=not args.json,
                      checks=args.checks)
    findings = run_checks(cfg)
    rows = [f.to_json() for f in findings]
    if args.json:
        print(json.dumps({"findings": [{k: f[k] for k in ("id", "severity", "fired", "reason")} for f in rows],
                          "unreliable": unreliable(findings)}))
    else:
        print_findings(rows)
    return 1 if any(f.fired and f.severity == "ERROR" for f in findings) else 0


def cmd_train(args) -> int:
    from robustmed.models.zoo import DEFAULT_MODEL, MODELS
    from robustmed.provenance import resolve_device
    from robustmed.training import TrainConfig, train

    _apply_threads(args)
    if args.epochs is not None and args.epochs < 1:
        raise UserError(f"--epochs must be at least 1, got {args.epochs}")
    multimodal = getattr(MODELS.get(args.model or DEFAULT_MODEL), "multimodal", False)
    if multimodal:  # MMCAF-Net, IIMGF-Net: their own data, loss and thresholds
        from robustmed.train_multimodal import train
    cfg = TrainConfig(defense=args.defense or "none", model=args.model or DEFAULT_MODEL,
                      dataset=args.dataset or (None if multimodal else "pneumoniamnist"), data_root=args.data_root,
                      recipe=args.recipe,
                      epochs=args.epochs, seed=args.seed, device=str(resolve_device(args.device)), out=args.out,
                      progress=not (args.no_progress or args.json), init=args.init)
    if multimodal and args.init:
        raise UserError("--init is for the image models; the multi-input models train from scratch")
    meta = train(cfg)
    if args.json:
        print(json.dumps({**{k: meta[k] for k in ("checkpoint", "val_accuracy", "test_accuracy", "sha256",
                                                  "training_time_s", "epochs", "seed", "model", "defense", "dataset")},
                          **{k: meta[k] for k in ("val_balanced_accuracy", "val_mean_auroc", "test_mean_auroc",
                                                  "thresholds", "warnings") if k in meta}}))
    else:
        balanced, auroc = meta.get("val_balanced_accuracy"), meta.get("val_mean_auroc")
        print(f"wrote {meta['checkpoint']} (val {meta['val_accuracy']:.4f}"
              + (f", balanced {balanced:.4f}" if balanced is not None else "")
              + (f", mean AUROC {auroc:.4f}" if auroc is not None else "")
              + f", test {meta['test_accuracy']:.4f}, {meta['training_time_s']} s)")
    for warning in meta.get("warnings", []):
        print(f"robustmed: warning: {warning}", file=sys.stderr)
    return 0


def cmd_list(args) -> int:
    from robustmed.report import registry_listing

    entries = registry_listing(args.what)
    if args.json:
        print(json.dumps(entries))
    else:
        for entry in entries:
            print(f"{entry['name']:<18} {entry['description']}")
    return 0


def cmd_data(args) -> int:
    from robustmed.data import fetch

    path = fetch(args.name, args.data_root, if_missing=args.if_missing, url=args.url)
    print(f"{args.name}: {path}")
    return 0


COMMANDS = {"check": cmd_check, "bench": cmd_bench, "train": cmd_train, "list": cmd_list, "data": cmd_data, "table": cmd_table,
            "leaderboard": cmd_leaderboard, "regress": cmd_regress, "plot": cmd_plot}


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    tune_malloc()
    return exit_status("robustmed", lambda: COMMANDS[args.command](args))


if __name__ == "__main__":
    raise SystemExit(main())
