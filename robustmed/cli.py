"""Command line: a thin layer that parses arguments into configs, calls the API and prints.

Heavy modules are imported inside the commands so `robustmed list` starts fast.
"""
from __future__ import annotations

import json
import sys

from robustmed.allocator import tune_malloc
from robustmed.cli_parser import build_parser
from robustmed.errors import UserError, exit_status


def _apply_threads(args) -> None:
    from robustmed.threads import apply_threads  # imports torch: not on the path of `robustmed list`

    apply_threads(args.threads)


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
    from robustmed.run.config import run_norm

    _apply_threads(args)
    if args.suite:
        return _bench_suite(args)

    cfg = BenchConfig(defense=_explicit_defense(args), attack=args.attack, model=args.model, dataset=args.dataset,
                      data_root=args.data_root, checkpoint=args.checkpoint, model_file=args.model_file,
                      eps=args.eps, n=args.n, seed=args.seed, split=args.split, batch_size=args.batch_size,
                      device=args.device, out=args.out, progress=not (args.no_progress or args.json),
                      checks=args.checks, shard_size=args.shard_size, executor=args.executor, address=args.address,
                      resume=args.resume, threat=args.threat, criterion=args.criterion, fresh=args.fresh,
                      norm=run_norm(args.norm))
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
    from robustmed.reports import corruption_board
    from robustmed.reports.evidence import column_attack, evaluations
    from robustmed.reports.tables import render, render_rows
    from robustmed.store import load_runs
    from robustmed.suites import eps_of, load_suite
    from robustmed.tracks import is_corruption_attack

    suite = load_suite(args.suite)
    runs = load_runs(suite.results)
    evals = evaluations(runs)
    header, body = corruption_board.table_data(runs, list(suite.defenses))
    if not evals and not body:
        raise UserError(f"no stored runs for suite {suite.name!r} under {suite.results}; "
                        f"run `robustmed bench --suite {args.suite}` first")
    attacks = [column_attack(a) for a in suite.attacks if not is_corruption_attack(a)]
    parts = [render(evals, list(suite.defenses), attacks, eps_of(suite), args.format, title=suite.description,
                    substitutes=suite.randomized_substitutes)] if evals and attacks else []
    if body:  # the corruption track: its own table, never a column of the L∞ one
        parts.append(render_rows(header, body, corruption_board.TABLE_CAPTION, args.format))
    _emit("\n".join(parts), args.out)
    return 0


def cmd_leaderboard(args) -> int:
    from robustmed.attacks import parse_eps_list
    from robustmed.reports.corruption_board import corruption_boards
    from robustmed.reports.leaderboard import boards, render_html, render_markdown
    from robustmed.store import load_runs

    eps = parse_eps_list(args.eps)[0]
    runs = load_runs(args.results)
    items = boards(runs, eps, parse_eps_list(args.l2_eps, None)[0], parse_eps_list(args.l1_eps, None)[0])
    corruption = corruption_boards(runs)
    if not items and not corruption:
        raise UserError(f"no stored evaluations at ε = {args.eps} under {args.results}")
    _emit(render_html(items, eps, corruption) if args.format == "html" else render_markdown(items, eps, corruption),
          args.out)
    return 0


def cmd_plot(args) -> int:
    import pandas as pd

    from robustmed.reports.plots import curves, describe, plot, severity_curves
    from robustmed.store import load_runs
    from robustmed.attacks.base import NORMS
    from robustmed.tracks import adversarial, corrupted, norms

    if not args.out.endswith((".png", ".svg")):
        raise UserError(f"--out must end in .png or .svg, got {args.out!r}")
    frames = [rows.assign(defense=m["defense"], model=m["model"], dataset=m["dataset"])
              for rows, m in load_runs(args.results)]
    rows = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()
    if len(rows):  # a severity plot reads the corruption track, the others the attacks: never both
        rows = corrupted(rows) if args.kind == "severity" else adversarial(rows)
        rows = rows[~rows.attack.str.startswith("null")]  # the randomized baseline is a table column, not a curve
    if args.kind != "severity" and len(rows):  # one threat model per plot: an L2 ε is no L∞ one
        rows = rows[norms(rows) == NORMS[args.norm]]
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
    series = severity_curves(rows) if args.kind == "severity" else curves(rows, args.kind)
    plot(series, args.kind, args.out, title=describe(rows, args.kind), norm=args.norm)
    print(f"wrote {args.out}")
    return 0


def cmd_regress(args) -> int:
    import tempfile

    from robustmed.reports.regress import compare, kernel_notes, rerun, verdict
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
        notes = kernel_notes(baseline, candidate)
    reasons = verdict(comparisons, missing, args.tolerance, args.alpha)
    if args.json:
        print(json.dumps({"passed": not reasons, "reasons": reasons, "notes": notes, "groups": [
            {"group": list(map(str, c.group)), "n": c.n, "baseline": c.baseline_accuracy,
             "candidate": c.candidate_accuracy, "flipped_down": c.flipped_down, "flipped_up": c.flipped_up,
             "p_value": c.p_value} for c in comparisons]}))
    else:
        for c in comparisons:
            print(f"{'/'.join(map(str, c.group))}: {100 * c.baseline_accuracy:.1f} → {100 * c.candidate_accuracy:.1f} "
                  f"(n {c.n}, lost {c.flipped_down or 'none'}, gained {c.flipped_up or 'none'}, "
                  f"McNemar p {c.p_value:.3g})")
        for note in notes:
            print(f"note: {note}")
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
    from robustmed.models.zoo import DEFAULT_MODEL
    from robustmed.provenance import resolve_device
    from robustmed.training import TrainConfig, train

    _apply_threads(args)
    cfg = TrainConfig(defense=args.defense or "none", model=args.model or DEFAULT_MODEL, dataset=args.dataset,
                      data_root=args.data_root, recipe=args.recipe, epochs=args.epochs, seed=args.seed,
                      device=str(resolve_device(args.device)), out=args.out,
                      progress=not (args.no_progress or args.json), init=args.init)
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
