"""The command line's arguments: one parser per command, errors as one line and exit status 2."""
from __future__ import annotations

import argparse
import sys


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


def _bench_parser(sub) -> None:
    bench = sub.add_parser("bench", help="attack a model and store one row per sample",
                           description="example: robustmed bench --defense none --attack pgd100 --eps 2/255,4/255")
    _add_common(bench)
    bench.add_argument("--attack", default="pgd100", help="attack spec(s), comma-separated: pgd100, pgd10:alpha=1/255")
    bench.add_argument("--eps", default="4/255", help="budget(s) in [0,1] pixel units, e.g. 2/255,4/255,8/255 "
                       "(L2: over the whole image, may exceed 1)")
    bench.add_argument("--norm", default="linf", choices=["linf", "l2", "l1"],
                       help="threat model of every attack that sets no norm= of its own (default linf)")
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
                       help="multi-label tasks: any (any-label flip, default) | label:NAME; ordinal tasks: grade:K "
                            "(the prediction moves at least K grades)")


def _train_parser(sub) -> None:
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


def _check_parser(sub) -> None:
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


def _list_parser(sub) -> None:
    lister = sub.add_parser("list", help="what the registry holds", description="example: robustmed list defenses")
    lister.add_argument("what", choices=["models", "defenses", "attacks", "datasets"])
    lister.add_argument("--json", action="store_true")


def _table_parser(sub) -> None:
    table = sub.add_parser("table", help="paper-style table from a suite's stored rows",
                           description="example: robustmed table --suite benchmarks/table3.toml --format md")
    table.add_argument("--suite", required=True)
    table.add_argument("--format", default="md", choices=["md", "latex"])
    table.add_argument("--out", default=None, help="write to a file instead of stdout")


def _leaderboard_parser(sub) -> None:
    board = sub.add_parser("leaderboard", help="ranked leaderboard over stored runs",
                           description="example: robustmed leaderboard --format html --out leaderboard.html")
    board.add_argument("--results", default="results", help="folder searched for runs (default results)")
    board.add_argument("--eps", default="4/255", help="the L∞ boards' budget")
    board.add_argument("--l2-eps", default="0.5", help="the L2 boards' budget (over the whole image)")
    board.add_argument("--l1-eps", default="3", help="the L1 boards' budget (over the whole image)")
    board.add_argument("--format", default="md", choices=["md", "html"])
    board.add_argument("--out", default=None)


def _plot_parser(sub) -> None:
    plot = sub.add_parser("plot", help="robust accuracy vs ε, steps or EOT samples, or accuracy vs corruption severity (PNG/SVG)",
                          description="example: robustmed plot --results results/runs --kind steps --out fig6.png")
    plot.add_argument("--results", default="results/runs", help="folder searched for runs")
    plot.add_argument("--kind", default="eps", choices=["eps", "steps", "eot", "severity"],
                      help="severity: accuracy against corruption severity, one curve per corruption")
    plot.add_argument("--defense", action="append", help="restrict to these defenses (repeatable)")
    plot.add_argument("--attack", default=None, help="restrict to one attack name (e.g. pgd100)")
    plot.add_argument("--dataset", default=None, help="restrict to one data set")
    plot.add_argument("--protocol", default=None, choices=["adaptive", "paper"],
                      help="restrict to one protocol (default: both, labelled)")
    plot.add_argument("--norm", default="linf", choices=["linf", "l2", "l1"],
                      help="threat model whose attacks are drawn (default linf; never both in one plot)")
    plot.add_argument("--out", required=True, help="output file ending in .png or .svg")


def _regress_parser(sub) -> None:
    regress = sub.add_parser("regress", help="rerun a golden suite and fail on a robust-accuracy drop",
                             description="example: robustmed regress --baseline results/golden/ci")
    regress.add_argument("--baseline", required=True, help="folder of golden runs")
    regress.add_argument("--candidate", default=None, help="compare these stored runs instead of rerunning")
    regress.add_argument("--tolerance", type=float, default=0.02, help="largest allowed absolute drop (default 0.02)")
    regress.add_argument("--alpha", type=float, default=0.05, help="McNemar significance level (default 0.05)")
    regress.add_argument("--device", default="cpu")
    regress.add_argument("--json", action="store_true")


def _data_parser(sub) -> None:
    data = sub.add_parser("data", help="data sets: fetch with MD5 check",
                          description="example: robustmed data fetch pneumoniamnist")
    data_sub = data.add_subparsers(dest="data_command", required=True, parser_class=_Parser)
    fetch = data_sub.add_parser("fetch", help="download an official MedMNIST file and verify its MD5")
    fetch.add_argument("name")
    fetch.add_argument("--data-root", default=None)
    fetch.add_argument("--if-missing", action="store_true", help="do nothing when the file is already there")
    fetch.add_argument("--url", default=None, help="override the download address (mirrors, local files)")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="robustmed", description="Adversarial-robustness benchmarks for medical image models.")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    for add in (_bench_parser, _train_parser, _check_parser, _list_parser, _table_parser, _leaderboard_parser,
                _plot_parser, _regress_parser, _data_parser):
        add(sub)
    return parser
