"""`bench` as an API: a validated config in, a stored run (rows + manifest) and a summary out.

The path of one run: :func:`start` validates the config, resolves its :class:`~robustmed.run.target.Target`,
runs the pre-flight checks and plans work units (:mod:`robustmed.run.plan`); an executor
(:mod:`robustmed.run.executors`) computes the units (:mod:`robustmed.run.work`); :func:`finish` assembles their
rows, runs the post-run checks and writes the manifest, last, which makes it a run. A run has a deterministic
id (a hash of the resolved config), so rerunning the same config skips the units already stored.
"""
from __future__ import annotations

import hashlib
import json
import shutil
import time
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Sequence

import torch

from robustmed import store
from robustmed.attacks import parse_attack
from robustmed.attacks.corruptions import check_spec
from robustmed.checks import LEVELS, CheckContext, Finding, blocking, post_run, run_preflight, unreliable
from robustmed.checks.bpda import bpda, switches
from robustmed.checks.preflight import CLEAN_PASS
from robustmed.corruption_summary import summarize_corruptions
from robustmed.errors import UserError
from robustmed.ordinal import judged_rows
from robustmed.resolve import with_null_baseline
from robustmed.summary import summarize
from robustmed.progress import status
from robustmed.provenance import ENGINE, machine, package_versions
from robustmed.randomness import is_randomized
from robustmed.run import plan as plan_mod, work
from robustmed.run.config import BenchConfig, identity, job_config, out_root, resumed, run_id_for, split_attacks
from robustmed.run.executors import Executor, get_executor
from robustmed.run.target import Target, prepare
from robustmed.run.threats import run_extras
from robustmed.tracks import CORRUPTIONS, adversarial


def _key(s: dict, summary: list[dict]) -> str:
    """An entry's key in ``--json``: its ε, prefixed by its norm when the run has attacks in two."""
    several = len({e.get("norm", "Linf") for e in summary}) > 1
    return f"{s.get('norm', 'Linf')}:{s['eps']}" if several else str(s["eps"])


@dataclass
class BenchReport:
    config: BenchConfig
    run_dir: Path
    manifest: dict
    summary: list[dict]
    rows: object = field(repr=False)
    reused: bool = False  # read back from the store, not computed by this call

    @property
    def corruptions(self) -> dict | None:
        """The corruption track's figures (:mod:`robustmed.corruption_summary`); None when it did not run."""
        return self.manifest.get("corruption_summary")

    def reuse_note(self) -> str | None:
        """One line saying the figures were read back (made when), so a stale result is never silent."""
        if not self.reused:
            return None
        return (f"read back stored run {self.manifest['run_id']}, made {self.manifest['created'][:19]} UTC "
                f"(--fresh recomputes it)")

    def _expected_json(self, one: bool) -> dict:
        """Randomized models: the expected figures (the headline), per ε when there are several."""
        if "expected_robust_accuracy" not in self.summary[0]:
            return {}
        keys = ("expected_clean_accuracy", "expected_clean_ci", "expected_robust_accuracy", "expected_robust_ci",
                "expected_per_attack", "expected_per_attack_ci", "single_draw_robust_accuracy", "draws")
        if one:
            return {k: self.summary[0][k] for k in keys}
        return {k: {_key(s, self.summary): s[k] for s in self.summary} for k in keys}

    def _cost_json(self, one: bool) -> dict:
        """The attacks' time and passes per sample, in total and per attack, per ε when there are several;
        null where a run was stored before they were recorded."""
        keys = ("attack_time_s", "per_attack_time_s", "passes_per_sample", "per_attack_passes")
        if one:
            return {k: self.summary[0].get(k) for k in keys}
        return {k: {_key(s, self.summary): s.get(k) for s in self.summary} for k in keys}

    def _balance_json(self, one: bool) -> dict:
        """Balanced accuracy, per-class recall and the majority-class rate, per ε when there are several."""
        keys = ("clean_balanced_accuracy", "clean_per_class_recall", "robust_balanced_accuracy",
                "robust_per_class_recall", "majority_class_rate")
        if "clean_balanced_accuracy" not in self.summary[0]:
            return {}
        if one:
            return {k: self.summary[0][k] for k in keys}
        return {k: {_key(s, self.summary): s[k] for s in self.summary} for k in keys}

    def _attack_json(self) -> dict:
        """The attacks' figures (L∞ track): none when the run had only the corruption track."""
        if not self.summary:
            return {}
        robust = {_key(s, self.summary): s["robust_accuracy"] for s in self.summary}
        one = len(self.summary) == 1
        norms = list(dict.fromkeys(s.get("norm", "Linf") for s in self.summary))
        return {
            "norm": norms[0] if len(norms) == 1 else norms,
            "eps": self.summary[0]["eps"] if one else [s["eps"] for s in self.summary],
            "clean_accuracy": self.summary[0]["clean_accuracy"],
            "robust_accuracy": self.summary[0]["robust_accuracy"] if one else robust,
            "robust_ci": self.summary[0]["robust_ci"] if one else {_key(s, self.summary): s["robust_ci"] for s in self.summary},
            "per_attack": self.summary[0]["per_attack"] if one else {_key(s, self.summary): s["per_attack"] for s in self.summary},
            **self._balance_json(one),
            **self._expected_json(one),
            **self._cost_json(one),
        }

    def to_json(self) -> dict:
        corruptions = self.corruptions
        n = self.summary[0]["n"] if self.summary else corruptions["n"]
        clean = {} if self.summary else {"clean_accuracy": corruptions["clean"]["accuracy"]}
        return {
            "run_id": self.manifest["run_id"],
            "defense": self.manifest["defense"], "attack": self.config.attack, "model": self.manifest["model"],
            "dataset": self.manifest["dataset"], "split": self.config.split, "n": n,
            **clean,
            **self._attack_json(),
            **({"corruptions": corruptions} if corruptions else {}),
            "wall_time_s": self.manifest["wall_time_s"],
            "reused": self.reused,
            "unreliable": self.manifest["unreliable"],
            "findings": [f for f in self.manifest["findings"] if f["fired"]],
            "results": str(self.run_dir / store.ROWS_FILE),
            "manifest": str(self.run_dir / store.MANIFEST_FILE),
            **{k: self.manifest[k] for k in ("multimodal", "multilabel") if k in self.manifest},
        }



def refuse_on_errors(findings: list[Finding]) -> None:
    """ERROR findings refuse the run before anything is written."""
    errors = blocking(findings)
    if errors:
        raise UserError("; ".join(f"check {f.id} failed: {f.reason}" for f in errors) +
                        " (`robustmed check` prints every check)")



def validate(cfg: BenchConfig):
    specs, eps_values = cfg.specs(), cfg.eps_values()  # parse first: bad input fails before any work
    if cfg.fresh and cfg.resume:
        raise UserError("--fresh recomputes a run and --resume completes one: give one of them")
    if not specs:
        raise UserError("no attack given; e.g. --attack pgd100")
    for spec in specs:
        if spec.family == CORRUPTIONS:
            check_spec(spec)
    if cfg.n is not None and cfg.n < 1:
        raise UserError(f"--n must be positive, got {cfg.n}")
    if cfg.checks == "full" and (cfg.criterion or "").startswith("grade:"):
        raise UserError("--checks full re-attacks with an argmax flip; under --criterion grade:K use --checks cheap")
    if cfg.checks not in LEVELS:
        raise UserError(f"--checks must be one of {', '.join(LEVELS)}, got {cfg.checks!r}")
    if cfg.batch_size < 1 or cfg.unit_size() % cfg.batch_size:
        raise UserError(f"--shard-size must be a positive multiple of --batch-size ({cfg.batch_size}), "
                        f"got {cfg.shard_size}")
    get_executor(cfg.executor, cfg.address)
    return specs, eps_values



def attack_and_check(cfg: BenchConfig, ctx: CheckContext, refuse: bool):
    """Pre-flight, the attack (EOT for randomized models, BPDA over declared non-differentiable ops), checks.

    Returns (rows, findings, number of straight-through sites); with ``refuse`` an ERROR finding
    stops the run, before the attack when a pre-flight check fails.
    """
    with status("pre-flight checks", cfg.progress):
        preflight = run_preflight(ctx)
    if refuse:
        refuse_on_errors(preflight)
    with bpda(ctx.model) if ctx.nondiff_ops else nullcontext(0) as straight_through:
        names = with_null_baseline([s.name for s in ctx.specs], ctx.randomized)
        specs = [parse_attack(name, cfg.spec_version) for name in names]
        rows = judged_rows(ctx.model, ctx.x, ctx.y, ctx.ids, specs, ctx.eps, ctx.extras.get("grade"), seed=cfg.seed,
                           batch_size=cfg.batch_size, device=ctx.device, progress=cfg.progress,
                           randomized=ctx.randomized, clean_pass=_clean_pass(ctx),
                           corruption_set=ctx.extras.get("corruption_set"))
        with status(f"{cfg.checks} checks on the rows", cfg.progress):
            findings = post_run(ctx, rows, preflight, cfg.checks)
    if refuse:
        refuse_on_errors(findings)
    return rows, findings, straight_through



def run_checks(cfg: BenchConfig) -> list[Finding]:
    """`robustmed check` as an API: every check on the configured run, nothing refused, nothing written."""
    validate(cfg)
    ctx, _ = prepare(cfg)
    if "multimodal" in ctx.extras:
        raise UserError("`robustmed check` runs single-input models; `robustmed bench` runs the checks on "
                        "multi-input ones")
    return attack_and_check(cfg, ctx, refuse=False)[1]



@dataclass
class _Run:
    """A run between planning and completion."""

    cfg: BenchConfig
    ctx: CheckContext
    target: Target
    preflight: list
    run_dir: Path
    units: list
    bpda_sites: int
    source_commit: str | None  # the commit its units record (read once per process, when the run starts)



def _write_plan(run: _Run) -> None:
    """``plan.json`` on first start; on a rerun the stored plan must name the same units."""
    plan_file = run.run_dir / store.PLAN_FILE
    unit_ids = [u.unit_id for u in run.units]
    if plan_file.is_file():
        if json.loads(plan_file.read_text())["units"] != unit_ids:
            raise UserError(f"run {run.run_dir.name} under {run.run_dir.parent} was planned with other units; "
                            "remove it or write to another --out")
        return
    config = {k: v for k, v in asdict(run.cfg).items() if k not in ("out", "progress", "executor", "address",
                                                                     "resume", "fresh")}
    store.write_json(plan_file, {"run_id": run.run_dir.name, "config": config, "units": unit_ids,
                                 "created": datetime.now(timezone.utc).isoformat()})



def _unit_entry(meta: dict) -> dict:
    """A unit's line in the manifest; units stored before they recorded their kernels have none."""
    entry = {k: meta[k] for k in ("unit_id", "attack", "rows", "rows_sha256", "wall_time_s", "device")}
    return {**entry, "kernels": meta["kernels"]} if "kernels" in meta else entry


def _stored_report(cfg: BenchConfig, run_dir: Path) -> BenchReport:
    rows, manifest = store.read_run(run_dir)
    return BenchReport(cfg, run_dir, manifest, manifest["summary"], rows, reused=True)



def _clean_pass(ctx: CheckContext):
    """Check A9's clean pass, when the attack may take it for its own: a deterministic model on the CPU
    (the same forward pass in the same batches gives the same logits; a randomized model's pass is seeded
    per run, and a GPU's kernels are not held to bitwise repeatability here)."""
    if ctx.randomized or is_randomized(ctx.model) or torch.device(ctx.device).type != "cpu":
        return None
    return ctx.extras.get(CLEAN_PASS)



def _share_with_units(cfg: BenchConfig, ctx: CheckContext, target: Target, job: dict) -> None:
    """Units computed in this process (local executor) reuse the model and split loaded here instead of
    loading them again, and A9's clean pass instead of repeating it: single-input deterministic models only
    (a randomized model's generators would start the post-run checks where the attack left them, not where
    the pre-flight checks did)."""
    if ctx.randomized or is_randomized(ctx.model) or "multimodal" in ctx.extras:
        return
    work.share(job, ctx.device, ctx.model, *target.dataset.split(cfg.split), ctx.ids, _clean_pass(ctx))



def _planned_attacks(cfg: BenchConfig, ctx: CheckContext) -> list[str]:
    """The run's attacks, and on a randomized model the null attack beside them (check C5's baseline)."""
    return with_null_baseline(cfg.attack_names(), ctx.randomized)



def start(cfg: BenchConfig, executor: Executor | None = None) -> _Run | BenchReport:
    """Validate, load, run the pre-flight checks and plan the units; a complete run is just read back.

    An incomplete run announces its units and what they load to ``executor`` before the pre-flight checks,
    so remote workers start up and load the run's model and data while they run.
    """
    if cfg.resume:
        cfg = resumed(cfg)
    validate(cfg)
    ctx, target = prepare(cfg)
    run_id = cfg.resume or run_id_for(cfg, target.defense, target.checkpoint_sha256, target.dataset.sha256)
    run_dir = out_root(cfg) / run_id
    if cfg.fresh and run_dir.exists():
        store.writable(run_dir.parent)
        shutil.rmtree(run_dir)  # its stored units would be read back too
    if (run_dir / store.MANIFEST_FILE).is_file():
        return _stored_report(cfg, run_dir)
    store.writable(run_dir.parent)  # an unwritable --out fails here, before the checks and the attack
    config = job_config(cfg)
    attacks = _planned_attacks(cfg, ctx)
    if executor is not None:
        executor.start(len(attacks) * len(plan_mod.shards(ctx.ids, cfg.unit_size())),
                       plan_mod.load_spec(config, target.checkpoint_sha256))
    with status(f"pre-flight checks on {run_id}", cfg.progress):
        preflight = run_preflight(ctx)
    refuse_on_errors(preflight)
    sites = len(switches(ctx.model)) if ctx.nondiff_ops else 0
    job = {**plan_mod.job_for(config, target.checkpoint_sha256, ctx.randomized, sites),
           "corruption_set": ctx.extras.get("corruption_set")}  # the data set whose MedMNIST-C set runs
    units = plan_mod.plan(run_id, str(run_dir), attacks, ctx.ids, cfg.unit_size(), job)
    if executor is not None and executor.name == "local":
        _share_with_units(cfg, ctx, target, job)
    run = _Run(cfg, ctx, target, preflight, run_dir, units, sites, work.source_commit())
    _write_plan(run)
    return run



def finish(run: _Run) -> BenchReport:
    """Assemble the units' rows, run the post-run checks, write the manifest (the run is complete then)."""
    cfg, ctx, prov, dataset, started = run.cfg, run.ctx, run.target.provenance, run.target.dataset, time.perf_counter()
    rows, unit_metas = plan_mod.assemble(run.units)
    rows.insert(0, "run_id", run.run_dir.name)
    for column in ("model", "defense", "dataset", "split"):
        rows.insert(1, column, {"model": prov["model"], "defense": prov["defense"], "dataset": dataset.key,
                                "split": cfg.split}[column])
    with bpda(ctx.model) if ctx.nondiff_ops else nullcontext(), \
            status(f"checks on the rows of {run.run_dir.name}", cfg.progress):
        findings = post_run(ctx, rows, run.preflight, cfg.checks)
    if blocking(findings):
        shutil.rmtree(run.run_dir, ignore_errors=True)  # a refused run leaves nothing behind
        refuse_on_errors(findings)
    ids = [int(i) for i in ctx.ids]
    summary, corruptions = summarize(rows), summarize_corruptions(rows)
    manifest = {
        "run_id": run.run_dir.name, "created": datetime.now(timezone.utc).isoformat(),
        "config": identity(cfg) | {"device": cfg.device},
        "model": prov["model"], "defense": prov["defense"], "checkpoint": prov["checkpoint"],
        "dataset": dataset.key, "dataset_path": dataset.path.name, "dataset_sha256": dataset.sha256,
        "split": cfg.split, "engine": ENGINE, "sample_ids": ids,
        "sample_ids_sha256": hashlib.sha256(json.dumps(ids).encode()).hexdigest(),
        "attacks": {name: json.loads(spec) for name, spec in rows.groupby("attack").spec.first().items()},
        **({"corruption_summary": corruptions} if corruptions else {}),
        "eps": list(cfg.eps_values()),
        "summary": summary,
        "wall_time_s": round(sum(m["wall_time_s"] for m in unit_metas) + time.perf_counter() - started, 2),
        "units": [_unit_entry(m) for m in unit_metas],
        "executor": cfg.executor, "shard_size": cfg.unit_size(),
        "checks": cfg.checks, "findings": [f.to_json() for f in findings], "unreliable": unreliable(findings),
        "bpda_sites": run.bpda_sites,
        "git_commit": run.source_commit, "packages": package_versions(), "machine": machine(ctx.device),
        **run_extras(ctx, adversarial(rows)),
    }
    store.finish_run(run.run_dir, rows, manifest)
    return BenchReport(cfg, run.run_dir, manifest, summary, rows)



def run_benches(cfgs: Sequence[BenchConfig], executor: Executor | None = None) -> list[BenchReport]:
    """Several runs through one executor (a suite): every run is checked and planned before any unit runs.

    Units already stored and verified are skipped, so rerunning a killed call completes it.
    ``executor`` defaults to the one the configs name.
    """
    if len({(c.executor, c.address) for c in cfgs}) > 1:
        raise UserError("the runs of one call share one executor")
    executor = executor or get_executor(cfgs[0].executor, cfgs[0].address)
    try:
        started = [start(cfg, executor) for cfg in cfgs]
        pending = [u for run in started if isinstance(run, _Run) for u in run.units if not u.done()]
        if pending:
            executor.run(pending, cfgs[0].progress)
    finally:
        executor.close()
    return [finish(run) if isinstance(run, _Run) else run for run in started]



def run_bench(cfg: BenchConfig) -> BenchReport:
    """One run: planned as units, computed by ``cfg.executor``, completed from stored units on a rerun.

    >>> report = run_bench(BenchConfig(defense="none", attack="pgd10", n=64))  # doctest: +SKIP
    >>> report.summary[0]["robust_accuracy"]  # doctest: +SKIP
    """
    return run_benches([cfg])[0]
