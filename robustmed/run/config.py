"""The validated `bench` configuration and what names a run: its id, and its config as workers need it.

Nothing here loads a model or data; every other layer of :mod:`robustmed.run` reads a :class:`BenchConfig`.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path

from robustmed import data as data_mod, store
from robustmed.attacks import FAMILIES, parse_attack, parse_eps_list
from robustmed.attacks.base import SPEC_VERSION
from robustmed.tracks import CORRUPTIONS, WHOLE_IMAGE, is_corruption_attack
from robustmed.errors import UserError
from robustmed.provenance import ENGINE


DEFAULT_EPS = "4/255"



NORMS = ("linf", "l2", "l1")


def run_norm(norm: str | None) -> str | None:
    """``--norm``/``norm=`` as a config stores it: None for L∞ (the default, so L∞ runs keep their ids)."""
    value = (norm or "linf").strip().lower()
    if value not in NORMS:
        raise UserError(f"bad norm {norm!r}: use linf, l2 or l1")
    return None if value == "linf" else value


def with_norm(attack: str, norm: str | None) -> str:
    """``pgd20`` under ``--norm l2`` → ``pgd20:norm=l2``; an attack naming its own norm, and the corruption
    track (no norm ball), as given."""
    options = attack.partition(":")[2]
    if not norm or is_corruption_attack(attack) or any(o.startswith("norm=") for o in options.split(",")):
        return attack
    return f"{attack},norm={norm}" if options else f"{attack}:norm={norm}"


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
    spec_version: str | None = None  # read attack names as this spec version did (a stored run's rerun)
    norm: str | None = None  # l2: every attack that sets no norm of its own attacks in L2 (None: L∞)

    def attack_names(self) -> list[str]:
        """The run's attacks as its rows name them: ``--norm l2`` written into each that sets no norm."""
        return [with_norm(a, self.norm) for a in split_attacks(self.attack)]

    def specs(self):
        return [parse_attack(a, self.spec_version) for a in self.attack_names()]

    def eps_values(self) -> tuple[float, ...]:
        """The budgets; beyond 1 only when every attack that uses ε is L2 or L1 (an L∞ budget above 1 is the box)."""
        specs = [s for s in self.specs() if FAMILIES.get(s.family).uses_eps and s.family != CORRUPTIONS]
        whole_image = bool(specs) and all(s.norm in WHOLE_IMAGE for s in specs)
        return parse_eps_list(self.eps, None if whole_image else 1.0)

    def unit_size(self) -> int:
        return self.shard_size or self.batch_size



# Where and how a run is computed, never what it computes: left out of the run id and the manifest's config.
EXECUTION = ("out", "progress", "device", "data_root", "executor", "address", "resume", "fresh")



def identity(cfg: BenchConfig) -> dict:
    """The config fields that decide the rows (everything but :data:`EXECUTION`); the multi-input fields and
    the norm only when set, so single-input L∞ runs keep their ids."""
    return {k: v for k, v in asdict(cfg).items()
            if k not in EXECUTION and not (k in ("threat", "criterion", "spec_version", "norm") and v is None)}



def run_id_for(cfg: BenchConfig, defense: str, checkpoint_sha256: str | None, dataset_sha256: str) -> str:
    """``<defense>-<attacks>-<hash>``: the same config, checkpoint and data always name the same run."""
    key = {**identity(cfg), "checkpoint_sha256": checkpoint_sha256, "dataset_sha256": dataset_sha256,
           "engine": ENGINE}
    if versions := sorted({s.version for s in cfg.specs()} - {SPEC_VERSION}):
        key["spec_versions"] = versions  # a name whose meaning moved (aa) never reads back the older run
    if revised := sorted({f"{s.family}:{s.variant or 'canonical'}@{r}" for s in cfg.specs()
                          if (r := FAMILIES.get(s.family).revisions.get(s.variant, 0))}):
        key["revisions"] = revised
    tag = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:12]
    safe_attack = cfg.attack.replace(",", "+").replace(":", "_").replace("=", "").replace("/", "-")[:60]
    return f"{defense}-{safe_attack}-{tag}"



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



def absolute(path: str | None) -> str | None:
    return str(Path(path).expanduser().resolve()) if path else path



def job_config(cfg: BenchConfig) -> dict:
    """The config as a worker anywhere on a shared file system needs it: every path absolute."""
    model_file = cfg.model_file
    if model_file:
        path, _, factory = model_file.rpartition(":")
        model_file = f"{absolute(path)}:{factory}"
    dataset = cfg.dataset
    if dataset and (dataset.endswith(".npz") or "/" in dataset):
        dataset = absolute(dataset)
    return {**asdict(cfg), "checkpoint": absolute(cfg.checkpoint), "model_file": model_file,
            "dataset": dataset, "data_root": str(data_mod.data_root(cfg.data_root).resolve()),
            "out": str(out_root(cfg)), "progress": False, "executor": "local", "address": None, "resume": None,
            "fresh": False}
