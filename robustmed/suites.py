"""Benchmark suites as data (TOML): defenses × datasets × attacks, expanded to bench runs.

A suite names where its results live, so tables and regression gates read exactly the
runs the suite produced. Several models (each with its own data sets, threat models and
success criterion) are listed as ``[[models]]`` entries.
"""
from __future__ import annotations

import tomllib
from dataclasses import dataclass, field
from pathlib import Path

from robustmed.errors import UserError
from robustmed.run.config import BenchConfig
from robustmed.tracks import is_corruption_attack

PROTOCOLS = ("adaptive", "paper")


@dataclass(frozen=True)
class Suite:
    name: str
    path: Path
    results: Path
    defenses: tuple[str, ...]
    datasets: tuple[str, ...]
    attacks: tuple[str, ...]
    eps: str = "4/255"
    model: str | None = None
    n: int | None = None
    seed: int = 0
    batch_size: int = 256
    shard_size: int | None = None  # samples per work unit (a multiple of batch_size)
    paper_protocol: bool = True  # randomized defenses also get the paper's single-draw column
    description: str = ""
    options: dict = field(default_factory=dict)
    models: tuple[dict, ...] = ()  # [[models]] entries: model, datasets, threat, criterion, defenses
    # attack → the attack run in its place on randomized defenses under the adaptive protocol
    # (e.g. aa → aa-rand, the EOT profile of check C1); the table
    # shows it in the original attack's column and says so.
    randomized_substitutes: dict = field(default_factory=dict)

    def entries(self) -> tuple[dict, ...]:
        """One entry per model: the ``[[models]]`` tables, else the suite's own model and data sets."""
        return self.models or ({"model": self.model, "datasets": list(self.datasets)},)

    def attacks_for(self, protocol: str, randomized: bool) -> tuple[str, ...]:
        if protocol == "paper":  # a protocol of the attacks: the corruption track runs with the adaptive run only
            return tuple(_paper(a) for a in self.attacks if not is_corruption_attack(a))
        return tuple(self.randomized_substitutes.get(a, a) for a in self.attacks) if randomized else self.attacks

    def configs(self, randomized: set[str], device: str = "auto", progress: bool = True,
                defenses: tuple[str, ...] | None = None, executor: str = "local",
                address: str | None = None, datasets: tuple[str, ...] | None = None) -> list[tuple[str, BenchConfig]]:
        """(protocol, config) per defense × dataset; randomized defenses get a paper-protocol run too.

        ``defenses`` and ``datasets`` keep only those of the suite's (one row of a table, say)."""
        out = []
        for entry in self.entries():
            for defense in entry.get("defenses", self.defenses):
                if defenses and defense not in defenses:
                    continue
                for dataset in entry.get("datasets") or [None]:
                    if datasets and dataset not in datasets:
                        continue
                    protocols = PROTOCOLS if (self.paper_protocol and defense in randomized) else PROTOCOLS[:1]
                    for protocol in protocols:
                        attacks = self.attacks_for(protocol, defense in randomized)
                        if not attacks:
                            continue
                        out.append((protocol, BenchConfig(
                            defense=defense, attack=",".join(attacks), model=entry.get("model"), dataset=dataset,
                            eps=self.eps, n=self.n, seed=self.seed, device=device, out=str(self.results),
                            progress=progress, batch_size=self.batch_size, shard_size=self.shard_size,
                            executor=executor, address=address, threat=entry.get("threat"),
                            criterion=entry.get("criterion"))))
        return out


def _paper(attack: str) -> str:
    """The seed paper's released protocol for one attack: single draw, no EOT."""
    return f"{attack},protocol=paper" if ":" in attack else f"{attack}:protocol=paper"


def load_suite(path: str | Path) -> Suite:
    path = Path(path)
    if not path.is_file():
        raise UserError(f"suite file not found: {path}")
    try:
        raw = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as exc:
        raise UserError(f"suite {path} is not valid TOML: {exc}") from None
    missing = [k for k in ("name", "defenses", "datasets", "attacks")
               if k not in raw and not (k == "datasets" and "models" in raw)]  # [[models]] name their own
    if missing:
        raise UserError(f"suite {path} lacks {', '.join(missing)}")
    results = Path(raw.get("results", f"results/{raw['name']}"))
    if not results.is_absolute():  # relative to the suite file, not the caller's working directory
        results = (path.resolve().parent / results).resolve()
    return Suite(name=raw["name"], path=path, results=results, defenses=tuple(raw["defenses"]),
                 datasets=tuple(raw.get("datasets", ())), attacks=tuple(raw["attacks"]),
                 eps=str(raw.get("eps", "4/255")), models=tuple(raw.get("models", ())),
                 model=raw.get("model"), n=raw.get("n"), seed=int(raw.get("seed", 0)),
                 batch_size=int(raw.get("batch_size", 256)), shard_size=raw.get("shard_size"),
                 paper_protocol=bool(raw.get("paper_protocol", True)), description=raw.get("description", ""),
                 randomized_substitutes=dict(raw.get("randomized_substitutes", {})))


def randomized_defenses() -> set[str]:
    from robustmed.defenses import DEFENSES

    return {name for name, info in DEFENSES.items() if info.randomized}


def run_suite(suite: Suite, device: str = "auto", progress: bool = True, defenses: tuple[str, ...] | None = None,
              executor: str = "local", address: str | None = None, datasets: tuple[str, ...] | None = None):
    """Run every (defense × dataset × protocol) of a suite; checkpoints are checked before any work.

    All runs' units go to one executor together (so Ray spreads a whole suite); runs already
    stored are read back and killed ones completed, so rerunning the command finishes a suite.
    """
    from robustmed.run.bench import run_benches

    plan = suite.configs(randomized_defenses(), device, progress, defenses, executor, address, datasets)
    if not plan:
        raise UserError(f"suite {suite.name!r} has no run for defenses {defenses or 'all'} "
                        f"and data sets {datasets or 'all'}")
    for _, cfg in plan:  # fail fast: a missing checkpoint or data set stops the suite before it starts
        _shipped(cfg)
    return run_benches([cfg for _, cfg in plan])


def _shipped(cfg: BenchConfig):
    from robustmed import data as data_mod, multimodal_data
    from robustmed.factory import shipped_checkpoint
    from robustmed.run.target import preset_of

    preset = preset_of(cfg)
    dataset = multimodal_data.load(preset, cfg.dataset, cfg.data_root) if preset else \
        data_mod.load(cfg.dataset or data_mod.DEFAULT_DATASET)
    return shipped_checkpoint(cfg.defense, cfg.model, dataset.key)


def suite_evaluations(suite: Suite):
    from robustmed.reports.evidence import evaluations
    from robustmed.store import load_runs

    return evaluations(load_runs(suite.results))


def eps_of(suite: Suite) -> float:
    from robustmed.attacks import parse_eps_list

    return parse_eps_list(suite.eps)[0]
