"""Human-readable output: the bench table and registry listings."""
from __future__ import annotations

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from robustmed.passes import text as passes_text
from robustmed.stats import wilson
from robustmed.tracks import LINF, WHOLE_IMAGE, eps_label

PASSES = "passes/sample"
COST_CAPTION = ("passes/sample: model forward / backward passes the attacks spent per sample, the same on every "
                "machine (–: not recorded)")


def _pct(value: float) -> str:
    return f"{100 * value:.1f}%"


def _ci(ci) -> str:
    return f"[{100 * ci[0]:.1f}, {100 * ci[1]:.1f}]"


def eps_text(s: dict) -> str:
    """A summary entry's budget with its threat model: L∞ in /255, L2 and L1 over the whole image."""
    norm = s.get("norm", LINF)
    return f"{norm} {eps_label(s['eps'], norm)}" if norm in WHOLE_IMAGE else eps_label(s["eps"])


def _seconds(value: float | None) -> str:
    return "–" if value is None else f"{value:.1f} s"


def _attack_cost(s: dict, name: str) -> list[str]:
    """One attack's time and passes per sample at one ε ("–" for runs stored before they were recorded)."""
    return [_seconds(s.get("per_attack_time_s", {}).get(name)), passes_text(s.get("per_attack_passes", {}).get(name))]


def _total_cost(s: dict) -> list[str]:
    return [_seconds(s.get("attack_time_s")), passes_text(s.get("passes_per_sample"))]


def print_bench(report) -> None:
    m = report.manifest
    console = Console()
    if report.summary and "expected_robust_accuracy" in report.summary[0]:
        console.print(expected_table(report))
    elif report.summary:
        console.print(deterministic_table(report))
    if m.get("corruption_summary"):  # its own table: corruptions are never pooled with the attacks
        console.print(corruption_table(m["corruption_summary"], _title(report)))
    for key in ("multimodal", "multilabel"):
        if key in m:
            console.print(label_table(m[key]))
    for line in balance_lines(report.summary):
        console.print(line, soft_wrap=True)
    print_findings(m.get("findings", []), console, fired_only=True)
    console.print(f"rows: {report.run_dir / 'rows.parquet'}  (wall time {m['wall_time_s']:.1f} s)")
    if report.reuse_note():
        console.print(report.reuse_note(), style="bold", soft_wrap=True)


def balance_lines(summary: list[dict]) -> list[str]:
    """Balanced accuracy and per-class recall beside the majority-class rate, so that a model answering
    one class is seen at a glance (stored runs made before these figures print nothing)."""
    lines = []
    for s in summary:
        if "clean_balanced_accuracy" not in s:
            continue
        recall = lambda key: ", ".join(f"{k}: {_pct(v)}" for k, v in s[key].items())  # noqa: E731
        prefix = f"ε {eps_text(s)}: " if len(summary) > 1 else ""
        lines.append(f"{prefix}balanced accuracy clean {_pct(s['clean_balanced_accuracy'])} "
                     f"(recall {recall('clean_per_class_recall')}), robust {_pct(s['robust_balanced_accuracy'])} "
                     f"(recall {recall('robust_per_class_recall')}); majority-class rate {_pct(s['majority_class_rate'])}")
    return lines


def _title(report) -> str:
    m = report.manifest
    return f"{m['defense']} · {m['model']} · {m['dataset']} ({report.config.split})"


def deterministic_table(report) -> Table:
    table = Table(title=_title(report), caption=COST_CAPTION)
    for column in ("attack", "ε", "n", "clean acc", "robust acc", "95% CI", "time", PASSES):
        table.add_column(column, justify="right" if column not in ("attack",) else "left")
    for s in report.summary:
        several = len(s["per_attack"]) > 1
        table.add_row("worst case" if several else escape(next(iter(s["per_attack"]))), eps_text(s),
                      str(s["n"]), _pct(s["clean_accuracy"]), _pct(s["robust_accuracy"]), _ci(s["robust_ci"]),
                      *_total_cost(s))
        if several or "multimodal" in report.manifest or "multilabel" in report.manifest:  # one row per attack / threat model (F4) under the worst case
            for name, accuracy in s["per_attack"].items():
                interval = wilson(round(accuracy * s["n"]), s["n"])
                table.add_row(f"  {escape(name)}", "", "", "", _pct(accuracy), _ci(interval), *_attack_cost(s, name))
    return table


def expected_table(report) -> Table:
    """A randomized model: expected accuracy (the headline) with intervals over samples and draws, the
    null attack beside the attacks, and "correct in all R draws" as a labelled secondary column."""
    draws = report.summary[0]["draws"]
    table = Table(title=f"{_title(report)} · randomized: expected accuracy over {draws} draws per judgement",
                  caption="95% intervals resample samples and draws (two-way bootstrap); null: the clean image "
                          "judged like a candidate; " + COST_CAPTION)
    for column in ("attack", "ε", "n", "expected acc", "95% CI", f"all {draws} draws", "time", PASSES):
        table.add_column(column, justify="left" if column == "attack" else "right")
    for s in report.summary:
        table.add_row("clean", eps_text(s), str(s["n"]), _pct(s["expected_clean_accuracy"]),
                      _ci(s["expected_clean_ci"]), _pct(s["clean_accuracy"]), "", "")
        table.add_row("worst case", "", "", _pct(s["expected_robust_accuracy"]), _ci(s["expected_robust_ci"]),
                      _pct(s["robust_accuracy"]), *_total_cost(s))
        for name, value in s["expected_per_attack"].items():
            table.add_row(f"  {escape(name)}", "", "", _pct(value), _ci(s["expected_per_attack_ci"][name]),
                          _pct(s["per_attack"][name]), *_attack_cost(s, name))
    return table


CORRUPTION_CAPTION = ("numbered columns: accuracy (%) at that severity; mean: over severities (and, last row, over "
                      "corruptions); BE: balanced error, 1 − mean per-class recall, averaged over severities; ΔBE: its "
                      "increase over clean, in points (MedMNIST-C's metrics, not divided by its AlexNet reference); "
                      "95% intervals: Wilson for clean accuracy, else a bootstrap resampling samples within each class")


def corruption_table(c: dict, title: str) -> Table:
    """The corruption track: accuracy per corruption and severity, its mean, BE and ΔBE with intervals."""
    expected = c["draws"] > 1
    table = Table(title=f"{title} · corruptions ({c['corruption_set']} set, n = {c['n']}"
                        + (f", expected accuracy over {c['draws']} draws" if expected else "") + ")",
                  caption=CORRUPTION_CAPTION)
    levels = [str(s) for s in c["severities"]]
    for column in ("corruption", *levels, "mean acc [95% CI]", "BE", "ΔBE [95% CI]"):
        table.add_column(column, justify="left" if column == "corruption" else "right")
    clean, mean = c["clean"], c["mean"]
    table.add_row("clean", *([""] * len(levels)), f"{_pct(clean['accuracy'])} {_ci(clean['accuracy_ci'])}",
                  _pct(clean["balanced_error"]), "")
    for name in c.get("order", sorted(c["per_corruption"])):  # the set's own order (JSON sorts the keys)
        f = c["per_corruption"][name]
        table.add_row(escape(name), *(f"{100 * a:.1f}" for a in f["accuracy"]),
                      f"{_pct(f['mean_accuracy'])} {_ci(f['mean_accuracy_ci'])}", _pct(f["mean_balanced_error"]),
                      f"{_points(f['balanced_error_increase'])} {_ci(f['balanced_error_increase_ci'])}")
    table.add_row("mean", *([""] * len(levels)), f"{_pct(mean['accuracy'])} {_ci(mean['accuracy_ci'])}",
                  _pct(mean["balanced_error"]),
                  f"{_points(mean['balanced_error_increase'])} {_ci(mean['balanced_error_increase_ci'])}")
    return table


def _points(value: float) -> str:
    return f"{100 * value:+.1f}"


def label_table(facts: dict) -> Table:
    """Check F2: per label, clean accuracy and how many of the attacked samples had that label flipped."""
    table = Table(title=f"per label · success criterion: {facts['criterion_description']}", title_justify="left")
    for column in ("attack", "ε", "label", "clean acc", "attacked", "flipped", "flip rate"):
        table.add_column(column, justify="left" if column in ("attack", "label") else "right")
    for eps, attacks in facts["per_label"].items():
        for attack, labels in attacks.items():
            for label, f in labels.items():
                table.add_row(escape(attack), f"{float(eps) * 255:.3g}/255", label, _pct(f["clean_accuracy"]),
                              str(f["attacked"]), str(f["flipped"]), _pct(f["flip_rate"]))
    return table


_STYLE = {"ERROR": "bold red", "FLAG": "yellow", "INFO": "cyan"}


def findings_table(findings: list[dict], fired_only: bool = False) -> Table:
    """Checks as a table: ID, severity, status and the one-line reason (docs/checks.md)."""
    from robustmed.checks.registry import ran  # here: robustmed.checks loads torch, which `robustmed list` skips

    table = Table(title="checks", title_justify="left")
    for column in ("id", "severity", "status", "reason"):
        table.add_column(column, overflow="fold")
    for f in findings:
        if f["fired"] or not ran(f) or not fired_only:
            table.add_row(f["id"], f["severity"], _status(f), escape(f["reason"]))  # an error message is not markup
    return table


def _status(finding: dict) -> str:
    from robustmed.checks.registry import ran

    if not ran(finding):
        return "[dim]not run[/]"
    return f"[{_STYLE[finding['severity']]}]fired[/]" if finding["fired"] else "ok"


def print_findings(findings: list[dict], console: Console | None = None, fired_only: bool = False) -> None:
    """The fired checks and those that could not run under the bench table (all of them for `robustmed check`),
    then the verdict."""
    from robustmed.checks.registry import ran

    console = console or Console()
    fired = [f for f in findings if f["fired"]]
    if fired or not all(ran(f) for f in findings) or not fired_only:
        console.print(findings_table(findings, fired_only))
    flagged = [f["id"] for f in fired if f["severity"] in ("ERROR", "FLAG")]
    verdict = f"[yellow]potentially unreliable[/] ({', '.join(flagged)})" if flagged else "no check flagged the result"
    skipped = [f["id"] for f in findings if not ran(f)]
    console.print(f"{len(findings) - len(skipped)} checks run: {verdict}" +
                  (f"; could not run: {', '.join(skipped)}" if skipped else ""))


def registry_listing(what: str) -> list[dict]:
    if what == "models":
        from robustmed.models.zoo import MODELS

        return [{"name": n, "description": p.description, "input_size": p.input_size} for n, p in MODELS.items()]
    if what == "defenses":
        from robustmed.defenses import DEFENSES

        return [{"name": n, "description": d.description, "family": d.family, "randomized": d.randomized,
                 "nondiff_ops": list(d.nondiff_ops), "forward_passes": d.forward_passes, "reference": d.reference}
                for n, d in DEFENSES.items()]
    if what == "attacks":
        from robustmed.attacks import FAMILIES

        return [{"name": f"{n}N", "description": f.description, "default_steps": f.default_steps,
                 "alpha_rule": f.alpha_rule} for n, f in FAMILIES.items()]
    from robustmed.data import data_root, file_name, medmnist_info

    root = data_root()
    return [{"name": n, "description": f"{i['task']}, {len(i['label'])} classes, {i['n_channels']} channel(s)",
             "available": (root / file_name(n, 28)).is_file()}
            for n, i in medmnist_info().items() if not n.endswith("3d")]
