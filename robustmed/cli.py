"""Command line: a thin layer that parses arguments into configs, calls the API and prints.

Heavy modules are imported inside the commands so `robustmed list` starts fast.
"""
from __future__ import annotations

import argparse
import json
import sys

from robustmed.errors import UserError


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one line, exit status 2 (argparse prints usage too)
        sys.stderr.write(f"robustmed: error: {message}\n")
        raise SystemExit(2)


def _add_common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--defense", default="none", help="registered defense (robustmed list defenses)")
    p.add_argument("--model", default=None, help="model preset (default mail-rn18-mini)")
    p.add_argument("--dataset", default=None, help="MedMNIST name (pneumoniamnist, breastmnist_64, …) or .npz path")
    p.add_argument("--data-root", default=None, help="folder with the npz files (default $ROBUSTMED_DATA, ~/.medmnist)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto", help="auto | cpu | cuda[:N]")
    p.add_argument("--json", action="store_true", help="print one JSON object on stdout")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="robustmed", description="Adversarial-robustness benchmarks for medical image models.")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    bench = sub.add_parser("bench", help="attack a model and store one row per sample",
                           description="example: robustmed bench --defense none --attack pgd100 --eps 2/255,4/255")
    _add_common(bench)
    bench.add_argument("--attack", default="pgd100", help="attack spec(s), comma-separated: pgd100, pgd10:alpha=1/255")
    bench.add_argument("--eps", default="4/255", help="L∞ budget(s) in [0,1] pixel units, e.g. 2/255,4/255,8/255")
    bench.add_argument("--n", type=int, default=None, help="seeded subset of N test samples (default: all)")
    bench.add_argument("--split", default="test", choices=["train", "val", "test"])
    bench.add_argument("--checkpoint", default=None, help="a checkpoint written by `robustmed train`")
    bench.add_argument("--model-file", default=None, help="FILE.py:FACTORY returning your own nn.Module")
    bench.add_argument("--batch-size", type=int, default=256)
    bench.add_argument("--out", default=None, help="results folder (default results/runs)")
    bench.add_argument("--no-progress", action="store_true")

    train = sub.add_parser("train", help="train a registered model with a defense",
                           description="example: robustmed train --defense none --epochs 12 --out ckpt/none.pt")
    _add_common(train)
    train.add_argument("--recipe", default=None, help="cpu | paper | code (default: cpu for -mini models)")
    train.add_argument("--epochs", type=int, default=None)
    train.add_argument("--out", default=None, help="checkpoint path (default: the shipped location)")
    train.add_argument("--no-progress", action="store_true")

    lister = sub.add_parser("list", help="what the registry holds", description="example: robustmed list defenses")
    lister.add_argument("what", choices=["models", "defenses", "attacks", "datasets"])
    lister.add_argument("--json", action="store_true")

    data = sub.add_parser("data", help="data sets: fetch with MD5 check",
                          description="example: robustmed data fetch pneumoniamnist")
    data_sub = data.add_subparsers(dest="data_command", required=True, parser_class=_Parser)
    fetch = data_sub.add_parser("fetch", help="download an official MedMNIST file and verify its MD5")
    fetch.add_argument("name")
    fetch.add_argument("--data-root", default=None)
    fetch.add_argument("--if-missing", action="store_true", help="do nothing when the file is already there")
    fetch.add_argument("--url", default=None, help="override the download address (mirrors, local files)")
    return parser


def cmd_bench(args) -> int:
    from robustmed.report import print_bench
    from robustmed.runner import BenchConfig, run_bench

    cfg = BenchConfig(defense=args.defense, attack=args.attack, model=args.model, dataset=args.dataset,
                      data_root=args.data_root, checkpoint=args.checkpoint, model_file=args.model_file,
                      eps=args.eps, n=args.n, seed=args.seed, split=args.split, batch_size=args.batch_size,
                      device=args.device, out=args.out, progress=not (args.no_progress or args.json))
    report = run_bench(cfg)
    if args.json:
        print(json.dumps(report.to_json()))
    else:
        print_bench(report)
    return 0


def cmd_train(args) -> int:
    from robustmed.models.zoo import DEFAULT_MODEL
    from robustmed.provenance import resolve_device
    from robustmed.training import TrainConfig, train

    if args.epochs is not None and args.epochs < 1:
        raise UserError(f"--epochs must be at least 1, got {args.epochs}")
    cfg = TrainConfig(defense=args.defense, model=args.model or DEFAULT_MODEL,
                      dataset=args.dataset or "pneumoniamnist", data_root=args.data_root, recipe=args.recipe,
                      epochs=args.epochs, seed=args.seed, device=str(resolve_device(args.device)), out=args.out,
                      progress=not (args.no_progress or args.json))
    meta = train(cfg)
    if args.json:
        print(json.dumps({k: meta[k] for k in ("checkpoint", "val_accuracy", "test_accuracy", "sha256",
                                               "training_time_s", "epochs", "seed", "model", "defense", "dataset")}))
    else:
        print(f"wrote {meta['checkpoint']} (val {meta['val_accuracy']:.4f}, test {meta['test_accuracy']:.4f}, "
              f"{meta['training_time_s']} s)")
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


COMMANDS = {"bench": cmd_bench, "train": cmd_train, "list": cmd_list, "data": cmd_data}


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return COMMANDS[args.command](args)
    except UserError as exc:
        sys.stderr.write(f"robustmed: error: {exc}\n")
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
