"""`bench` as an API: a validated config in, a stored run (rows + manifest) and a summary out.

A run has a deterministic id (a hash of the resolved config) and is computed as work units
(:mod:`robustmed.units`) by an executor (:mod:`robustmed.executors`); rerunning the same config
skips the units already stored and completes the run.
"""
from __future__ import annotations

import hashlib
import json
import shutil
import time
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field, fields, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Sequence

import torch

from robustmed import checkpoints, data as data_mod, multimodal_bench, store, units as units_mod
from robustmed.attacks import parse_attack, parse_eps_list
from robustmed.checks import LEVELS, CheckContext, Finding, blocking, post_run, run_preflight, unreliable
from robustmed.checks.bpda import bpda, switches
from robustmed.checks.preflight import CLEAN_PASS
from robustmed.contracts import adapt_head, as_multilabel
from robustmed.defenses import DEFENSES
from robustmed.errors import UserError
from robustmed.executors import Executor, get_executor
from robustmed.factory import from_checkpoint, shipped_checkpoint
from robustmed.harness import attack_rows, select_subset, summarize, with_null_baseline
from robustmed.models.zoo import MODELS
from robustmed.progress import status
from robustmed.provenance import ENGINE, git_commit, machine, package_versions, resolve_device, weights_sha256
from robustmed.randomness import is_randomized
from robustmed.tensors import batch_size, take, to_device
from robustmed.usermodel import load_model_file

DEFAULT_EPS = "4/255"


def split_attacks(text: str) -> list[str]:
    """``pgd10:alpha=1/255,restarts=2,bim10`` → [``pgd10:alpha=1/255,restarts=2``, ``bim10``].

    Attacks and options share the comma, so a ``key=value`` token continues the attack before it.
    """
    attacks: list[str] = []
    for token in (t.strip() for t in text.split(",")):
        if not token:
            continue
        if "=" in token and ":" not in token and attacks:
            attacks[-1] += "," + token
        else:
            attacks.append(token)
    return attacks


@dataclass(frozen=True)
class BenchConfig:
    """Everything `robustmed bench` needs; validated before any work or write happens."""

    defense: str = "none"
    attack: str = "pgd100"
    model: str | None = None
    dataset: str | None = None
    data_root: str | None = None
    checkpoint: str | None = None
    model_file: str | None = None
    eps: str = DEFAULT_EPS
    n: int | None = None
    seed: int = 0
    split: str = "test"
    batch_size: int = 256
    device: str = "auto"
    out: str | None = None
    progress: bool = True
    checks: str = "cheap"  # cheap: the always-on checks; full: also the costly re-attacks of a subset
    shard_size: int | None = None  # samples per work unit, a multiple of batch_size (default: one batch)
    executor: str = "local"  # local | ray
    address: str | None = None  # Ray cluster: auto | HOST:PORT (default: a local one for the run)
    resume: str | None = None  # complete this stored run instead of the one the config hashes to
    threat: str | None = None  # multi-input models: inputs attacked (joint, image, tabular, an input's name)
    criterion: str | None = None  # multi-label models: success criterion (any, label:NAME)
    fresh: bool = False  # recompute even when a run with this id is stored

    def specs(self):
        return [parse_attack(a) for a in split_attacks(self.attack)]

    def eps_values(self) -> tuple[float, ...]:
        return parse_eps_list(self.eps)

    def unit_size(self) -> int:
        return self.shard_size or self.batch_size


# Where and how a run is computed, never what it computes: left out of the run id and the manifest's config.
EXECUTION = ("out", "progress", "device", "data_root", "executor", "address", "resume", "fresh")


@dataclass
class BenchReport:
    config: BenchConfig
    run_dir: Path
    manifest: dict
    summary: list[dict]
    rows: object = field(repr=False)
    reused: bool = False  # read back from the store, not computed by this call

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
        return {k: {str(s["eps"]): s[k] for s in self.summary} for k in keys}

    def _balance_json(self, one: bool) -> dict:
        """Balanced accuracy, per-class recall and the majority-class rate, per ε when there are several."""
        keys = ("clean_balanced_accuracy", "clean_per_class_recall", "robust_balanced_accuracy",
                "robust_per_class_recall", "majority_class_rate")
        if "clean_balanced_accuracy" not in self.summary[0]:
            return {}
        if one:
            return {k: self.summary[0][k] for k in keys}
        return {k: {str(s["eps"]): s[k] for s in self.summary} for k in keys}

    def to_json(self) -> dict:
        robust = {str(s["eps"]): s["robust_accuracy"] for s in self.summary}
        one = len(self.summary) == 1
        return {
            "run_id": self.manifest["run_id"],
            "defense": self.manifest["defense"], "attack": self.config.attack, "model": self.manifest["model"],
            "dataset": self.manifest["dataset"], "split": self.config.split, "n": self.summary[0]["n"],
            "eps": self.summary[0]["eps"] if one else [s["eps"] for s in self.summary],
            "clean_accuracy": self.summary[0]["clean_accuracy"],
            "robust_accuracy": self.summary[0]["robust_accuracy"] if one else robust,
            "robust_ci": self.summary[0]["robust_ci"] if one else {str(s["eps"]): s["robust_ci"] for s in self.summary},
            "per_attack": self.summary[0]["per_attack"] if one else {str(s["eps"]): s["per_attack"] for s in self.summary},
            **self._balance_json(one),
            **self._expected_json(one),
            "wall_time_s": self.manifest["wall_time_s"],
            "reused": self.reused,
            "unreliable": self.manifest["unreliable"],
            "findings": [f for f in self.manifest["findings"] if f["fired"]],
            "results": str(self.run_dir / store.ROWS_FILE),
            "manifest": str(self.run_dir / store.MANIFEST_FILE),
            **{k: self.manifest[k] for k in ("multimodal", "multilabel") if k in self.manifest},
        }


def portable_path(path) -> str:
    """Shipped checkpoints as ``zoo/<model>/<dataset>/<defense>.pt``; other paths as the user gave them."""
    resolved = Path(path).resolve()
    try:
        return "zoo/" + resolved.relative_to(checkpoints.ZOO.resolve()).as_posix()
    except ValueError:
        return str(path)


def resolve_model(cfg: BenchConfig, device):
    """(model, dataset, provenance) for a shipped entry, a checkpoint file, or a user's model file."""
    if cfg.model_file:
        model, prov = load_model_file(cfg.model_file)
        dataset = data_mod.load(cfg.dataset or data_mod.DEFAULT_DATASET, cfg.data_root)
        x_all, _ = dataset.split(cfg.split)
        if dataset.multilabel:  # one logit per label, positive above 0 (sigmoid 0.5) unless the model says otherwise
            model = as_multilabel(model.to(device), to_device(take(x_all, slice(0, 1)), device), dataset.labels)
        else:
            model, head = adapt_head(model.to(device), to_device(take(x_all, slice(0, 1)), device),
                                     dataset.num_classes)
            prov = {**prov, **({"head": head} if head else {})}
        multimodal_bench.declare_criterion(model, dataset, cfg.criterion)
        return model.to(device), dataset, {"model": f"file:{Path(prov['model_file']).name}", "defense": "custom",
                                           "checkpoint": _pinned_by_weights(prov, model)}
    preset = multimodal_bench.preset_of(cfg)
    if preset is not None:  # MMCAF-Net, IIMGF-Net: named inputs, their own data
        return multimodal_bench.resolve(cfg, preset, device)
    if cfg.model:
        MODELS.get(cfg.model)
    DEFENSES.get(cfg.defense)
    path = cfg.checkpoint
    if path is None:
        dataset = data_mod.load(cfg.dataset or data_mod.DEFAULT_DATASET, cfg.data_root)
        path = shipped_checkpoint(cfg.defense, cfg.model, dataset.key)
        model, meta = from_checkpoint(path, device)
    else:
        model, meta = from_checkpoint(path, device)
        dataset = _checkpoint_data(cfg, path, meta)
        # a config's defense "none" is also its default, so only the CLI can tell an explicit one (cli.py)
        checkpoints.refuse_mismatch(path, meta, dataset=dataset.key if cfg.dataset else None, model=cfg.model,
                                    defense=None if cfg.defense == "none" else cfg.defense)
    multimodal_bench.declare_criterion(model, dataset, cfg.criterion)
    prov = {"path": portable_path(path), "sha256": meta["sha256"], "weights_sha256": weights_sha256(model),
            "val_accuracy": meta.get("val_accuracy"), "test_accuracy": _test_accuracy(model, meta),
            "trained_on": meta.get("dataset")}
    return model, dataset, {"model": meta["model"], "defense": meta["defense"], "checkpoint": prov}


def _test_accuracy(model, meta: dict) -> float | None:
    """The checkpoint's recorded test accuracy under the run's success criterion (check A9 compares)."""
    criterion = getattr(model, "criterion", None)
    if criterion is not None:
        return meta.get("test_accuracy_by_criterion", {}).get(criterion.name)
    return meta.get("test_accuracy")


def _checkpoint_data(cfg: BenchConfig, path, meta: dict):
    """``--dataset``, else the data set the checkpoint was trained on; a name that does not resolve (a model
    trained on a file elsewhere) says how to point at it."""
    if cfg.dataset:
        return data_mod.load(cfg.dataset, cfg.data_root)
    trained_on = meta.get("dataset", data_mod.DEFAULT_DATASET)
    try:
        return data_mod.load(trained_on, cfg.data_root)
    except UserError as exc:
        raise UserError(f"{exc}; checkpoint {path} was trained on {trained_on!r}: pass --dataset with that "
                        "file") from None


def _pinned_by_weights(prov: dict, model) -> dict:
    """A model file's identity is its code and the weights its factory loaded: the file alone does not
    pin them (retrained weights behind the same file must not read back the old run)."""
    weights = weights_sha256(model)
    combined = hashlib.sha256(f"{prov['sha256']}:{weights}".encode()).hexdigest()
    return {**prov, "file_sha256": prov["sha256"], "weights_sha256": weights, "sha256": combined}


def _check_classes(model, x, dataset, device) -> None:
    with torch.no_grad():
        width = model(to_device(take(x, slice(0, 1)), device)).shape[-1]
    if width != dataset.num_classes:
        raise UserError(f"the model predicts {width} classes but {dataset.key} has {dataset.num_classes}: return "
                        "one logit per class (or one logit for a binary task, read with the sigmoid convention)")


def check_context(cfg: BenchConfig, model, dataset, prov: dict, x, y, ids, total: int, device) -> CheckContext:
    """What the checks need to know about this run (A9 compares with the checkpoint's test accuracy)."""
    info = DEFENSES.get(prov["defense"]) if prov["defense"] in DEFENSES else None
    ckpt = prov["checkpoint"]
    same_data = cfg.split == "test" and ckpt.get("trained_on") == dataset.key
    return CheckContext(model, x, y, cfg.eps_values(), cfg.specs(), dataset.num_classes, task=dataset.task,
                        declared_randomized=bool(info and info.randomized),
                        nondiff_ops=tuple(info.nondiff_ops) if info else (),
                        adversarially_trained=info.train_step != "standard" if info else None,
                        registry_accuracy=ckpt.get("test_accuracy") if same_data else None,
                        full_split=len(ids) == total, device=device, seed=cfg.seed,
                        batch_size=cfg.batch_size, sample_ids=ids)


def refuse_on_errors(findings: list[Finding]) -> None:
    """ERROR findings refuse the run before anything is written."""
    errors = blocking(findings)
    if errors:
        raise UserError("; ".join(f"check {f.id} failed: {f.reason}" for f in errors) +
                        " (`robustmed check` prints every check)")


def identity(cfg: BenchConfig) -> dict:
    """The config fields that decide the rows (everything but :data:`EXECUTION`); the multi-input fields
    only when set, so single-input runs keep their ids."""
    return {k: v for k, v in asdict(cfg).items()
            if k not in EXECUTION and not (k in ("threat", "criterion") and v is None)}


def run_id_for(cfg: BenchConfig, defense: str, checkpoint_sha256: str | None, dataset_sha256: str) -> str:
    """``<defense>-<attacks>-<hash>``: the same config, checkpoint and data always name the same run."""
    key = {**identity(cfg), "checkpoint_sha256": checkpoint_sha256, "dataset_sha256": dataset_sha256,
           "engine": ENGINE}
    tag = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:12]
    safe_attack = cfg.attack.replace(",", "+").replace(":", "_").replace("=", "").replace("/", "-")[:60]
    return f"{defense}-{safe_attack}-{tag}"


def _validate(cfg: BenchConfig):
    specs, eps_values = cfg.specs(), cfg.eps_values()  # parse first: bad input fails before any work
    if cfg.fresh and cfg.resume:
        raise UserError("--fresh recomputes a run and --resume completes one: give one of them")
    if not specs:
        raise UserError("no attack given; e.g. --attack pgd100")
    if cfg.n is not None and cfg.n < 1:
        raise UserError(f"--n must be positive, got {cfg.n}")
    if cfg.checks not in LEVELS:
        raise UserError(f"--checks must be one of {', '.join(LEVELS)}, got {cfg.checks!r}")
    if cfg.batch_size < 1 or cfg.unit_size() % cfg.batch_size:
        raise UserError(f"--shard-size must be a positive multiple of --batch-size ({cfg.batch_size}), "
                        f"got {cfg.shard_size}")
    get_executor(cfg.executor, cfg.address)
    return specs, eps_values


def _prepare(cfg: BenchConfig):
    """(check context, dataset, provenance): the model loaded and the seeded subset drawn."""
    device = resolve_device(cfg.device)
    model, dataset, prov = resolve_model(cfg, device)
    x_all, y_all = dataset.split(cfg.split)
    _check_classes(model, x_all, dataset, device)
    ids = select_subset(batch_size(x_all), cfg.n, cfg.seed)
    ctx = check_context(cfg, model, dataset, prov, take(x_all, ids), y_all[ids], ids, batch_size(x_all), device)
    return multimodal_bench.for_checks(ctx), dataset, prov


def _attack_and_check(cfg: BenchConfig, ctx: CheckContext, refuse: bool):
    """Pre-flight, the attack (EOT for randomized models, BPDA over declared non-differentiable ops), checks.

    Returns (rows, findings, number of straight-through sites); with ``refuse`` an ERROR finding
    stops the run, before the attack when a pre-flight check fails.
    """
    with status("pre-flight checks", cfg.progress):
        preflight = run_preflight(ctx)
    if refuse:
        refuse_on_errors(preflight)
    with bpda(ctx.model) if ctx.nondiff_ops else nullcontext(0) as straight_through:
        specs = [parse_attack(name) for name in with_null_baseline([s.name for s in ctx.specs], ctx.randomized)]
        rows = attack_rows(ctx.model, ctx.x, ctx.y, ctx.ids, specs, ctx.eps, seed=cfg.seed,
                           batch_size=cfg.batch_size, device=ctx.device, progress=cfg.progress,
                           randomized=ctx.randomized, clean_pass=_clean_pass(ctx))
        with status(f"{cfg.checks} checks on the rows", cfg.progress):
            findings = post_run(ctx, rows, preflight, cfg.checks)
    if refuse:
        refuse_on_errors(findings)
    return rows, findings, straight_through


def run_checks(cfg: BenchConfig) -> list[Finding]:
    """`robustmed check` as an API: every check on the configured run, nothing refused, nothing written."""
    _validate(cfg)
    ctx, _, _ = _prepare(cfg)
    if "multimodal" in ctx.extras:
        raise UserError("`robustmed check` runs single-input models; `robustmed bench` runs the checks on "
                        "multi-input ones")
    return _attack_and_check(cfg, ctx, refuse=False)[1]


def out_root(cfg: BenchConfig) -> Path:
    return (Path(cfg.out) if cfg.out else store.default_root()).expanduser().resolve()


def resumed(cfg: BenchConfig) -> BenchConfig:
    """``cfg.resume`` names a stored run: its planned config, with this call's execution fields.

    A result-deciding field set here (not left at its default) must agree with the stored one.
    """
    plan_file = out_root(cfg) / cfg.resume / store.PLAN_FILE
    if not plan_file.is_file():
        raise UserError(f"--resume {cfg.resume}: no run of that name under {out_root(cfg)} (use the same --out)")
    stored = json.loads(plan_file.read_text())["config"]
    defaults = BenchConfig()
    for name, value in identity(cfg).items():
        if value != getattr(defaults, name) and value != stored.get(name):
            raise UserError(f"--resume {cfg.resume}: the run was started with {name}={stored.get(name)!r}, "
                            f"not {value!r}")
    known = {f.name for f in fields(BenchConfig)} - set(EXECUTION)
    return replace(cfg, **{k: v for k, v in stored.items() if k in known})


def _job_config(cfg: BenchConfig) -> dict:
    """The config as a worker anywhere on a shared file system needs it: every path absolute."""
    model_file = cfg.model_file
    if model_file:
        path, _, factory = model_file.rpartition(":")
        model_file = f"{units_mod.absolute(path)}:{factory}"
    dataset = cfg.dataset
    if dataset and (dataset.endswith(".npz") or "/" in dataset):
        dataset = units_mod.absolute(dataset)
    return {**asdict(cfg), "checkpoint": units_mod.absolute(cfg.checkpoint), "model_file": model_file,
            "dataset": dataset, "data_root": str(data_mod.data_root(cfg.data_root).resolve()),
            "out": str(out_root(cfg)), "progress": False, "executor": "local", "address": None, "resume": None,
            "fresh": False}


@dataclass
class _Run:
    """A run between planning and completion."""

    cfg: BenchConfig
    ctx: CheckContext
    dataset: object
    prov: dict
    preflight: list
    run_dir: Path
    units: list
    bpda_sites: int


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


def _share_with_units(cfg: BenchConfig, ctx: CheckContext, dataset, job: dict) -> None:
    """Units computed in this process (local executor) reuse the model and split loaded here instead of
    loading them again, and A9's clean pass instead of repeating it: single-input deterministic models only
    (a randomized model's generators would start the post-run checks where the attack left them, not where
    the pre-flight checks did)."""
    if ctx.randomized or is_randomized(ctx.model) or "multimodal" in ctx.extras:
        return
    units_mod.share(job, ctx.device, ctx.model, *dataset.split(cfg.split), ctx.ids, _clean_pass(ctx))


def _planned_attacks(cfg: BenchConfig, ctx: CheckContext) -> list[str]:
    """The run's attacks, and on a randomized model the null attack beside them (check C5's baseline)."""
    return with_null_baseline(split_attacks(cfg.attack), ctx.randomized)


def _start(cfg: BenchConfig, executor: Executor | None = None) -> _Run | BenchReport:
    """Validate, load, run the pre-flight checks and plan the units; a complete run is just read back.

    An incomplete run announces its units and what they load to ``executor`` before the pre-flight checks,
    so remote workers start up and load the run's model and data while they run.
    """
    if cfg.resume:
        cfg = resumed(cfg)
    _validate(cfg)
    ctx, dataset, prov = _prepare(cfg)
    run_id = cfg.resume or run_id_for(cfg, prov["defense"], prov["checkpoint"].get("sha256"), dataset.sha256)
    run_dir = out_root(cfg) / run_id
    if cfg.fresh and run_dir.exists():
        store.writable(run_dir.parent)
        shutil.rmtree(run_dir)  # its stored units would be read back too
    if (run_dir / store.MANIFEST_FILE).is_file():
        return _stored_report(cfg, run_dir)
    store.writable(run_dir.parent)  # an unwritable --out fails here, before the checks and the attack
    config = _job_config(cfg)
    attacks = _planned_attacks(cfg, ctx)
    if executor is not None:
        executor.start(len(attacks) * len(units_mod.shards(ctx.ids, cfg.unit_size())),
                       units_mod.load_spec(config, prov["checkpoint"].get("sha256")))
    with status(f"pre-flight checks on {run_id}", cfg.progress):
        preflight = run_preflight(ctx)
    refuse_on_errors(preflight)
    sites = len(switches(ctx.model)) if ctx.nondiff_ops else 0
    job = units_mod.job_for(config, prov["checkpoint"].get("sha256"), ctx.randomized, sites)
    plan = units_mod.plan(run_id, str(run_dir), attacks, ctx.ids, cfg.unit_size(), job)
    if executor is not None and executor.name == "local":
        _share_with_units(cfg, ctx, dataset, job)
    run = _Run(cfg, ctx, dataset, prov, preflight, run_dir, plan, sites)
    _write_plan(run)
    return run


def _finish(run: _Run) -> BenchReport:
    """Assemble the units' rows, run the post-run checks, write the manifest (the run is complete then)."""
    cfg, ctx, prov, started = run.cfg, run.ctx, run.prov, time.perf_counter()
    rows, unit_metas = units_mod.assemble(run.units)
    rows.insert(0, "run_id", run.run_dir.name)
    for column in ("model", "defense", "dataset", "split"):
        rows.insert(1, column, {"model": prov["model"], "defense": prov["defense"], "dataset": run.dataset.key,
                                "split": cfg.split}[column])
    with bpda(ctx.model) if ctx.nondiff_ops else nullcontext(), \
            status(f"checks on the rows of {run.run_dir.name}", cfg.progress):
        findings = post_run(ctx, rows, run.preflight, cfg.checks)
    if blocking(findings):
        shutil.rmtree(run.run_dir, ignore_errors=True)  # a refused run leaves nothing behind
        refuse_on_errors(findings)
    ids = [int(i) for i in ctx.ids]
    summary = summarize(rows)
    manifest = {
        "run_id": run.run_dir.name, "created": datetime.now(timezone.utc).isoformat(),
        "config": identity(cfg) | {"device": cfg.device},
        "model": prov["model"], "defense": prov["defense"], "checkpoint": prov["checkpoint"],
        "dataset": run.dataset.key, "dataset_path": run.dataset.path.name, "dataset_sha256": run.dataset.sha256,
        "split": cfg.split, "engine": ENGINE, "sample_ids": ids,
        "sample_ids_sha256": hashlib.sha256(json.dumps(ids).encode()).hexdigest(),
        "attacks": {name: json.loads(spec) for name, spec in rows.groupby("attack").spec.first().items()},
        "eps": list(cfg.eps_values()),
        "summary": summary,
        "wall_time_s": round(sum(m["wall_time_s"] for m in unit_metas) + time.perf_counter() - started, 2),
        "units": [{k: m[k] for k in ("unit_id", "attack", "rows", "rows_sha256", "wall_time_s", "device")}
                  for m in unit_metas],
        "executor": cfg.executor, "shard_size": cfg.unit_size(),
        "checks": cfg.checks, "findings": [f.to_json() for f in findings], "unreliable": unreliable(findings),
        "bpda_sites": run.bpda_sites,
        "git_commit": git_commit(), "packages": package_versions(), "machine": machine(ctx.device),
        **multimodal_bench.run_extras(ctx, rows),
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
        started = [_start(cfg, executor) for cfg in cfgs]
        pending = [u for run in started if isinstance(run, _Run) for u in run.units if not u.done()]
        if pending:
            executor.run(pending, cfgs[0].progress)
    finally:
        executor.close()
    return [_finish(run) if isinstance(run, _Run) else run for run in started]


def run_bench(cfg: BenchConfig) -> BenchReport:
    """One run: planned as units, computed by ``cfg.executor``, completed from stored units on a rerun.

    >>> report = run_bench(BenchConfig(defense="none", attack="pgd10", n=64))  # doctest: +SKIP
    >>> report.summary[0]["robust_accuracy"]  # doctest: +SKIP
    """
    return run_benches([cfg])[0]
