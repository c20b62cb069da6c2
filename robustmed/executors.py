"""Executors run work units behind one interface: ``local`` (in-process) and ``ray`` (one task per unit).

Every executor only calls :func:`robustmed.units.run` on each unit; the unit writes its own rows
to the store, so executors differ in where units run, never in what they compute.

>>> get_executor("local").name
'local'
"""
from __future__ import annotations

from typing import Protocol, Sequence

from robustmed.errors import UserError
from robustmed.progress import progress_bar
from robustmed.units import Unit, run as run_unit


class Executor(Protocol):
    name: str

    def run(self, units: Sequence[Unit], progress: bool = True) -> None:
        """Complete every unit (each one stored and verified), or raise."""


def _describe(unit: Unit, done: int, total: int) -> str:
    return f"{unit.attack} · unit {done}/{total}"


class LocalExecutor:
    """In this process, one unit after another, with the rich progress bar (samples × ε)."""

    name = "local"

    def run(self, units: Sequence[Unit], progress: bool = True) -> None:
        with progress_bar(progress) as bar:
            task = bar.add_task("units", total=sum(u.size for u in units))
            for done, unit in enumerate(units, 1):
                bar.update(task, description=_describe(unit, done, len(units)))
                run_unit(unit)
                bar.advance(task, unit.size)


def _ray():
    try:
        import ray
    except ImportError:
        raise UserError("--executor ray needs Ray: pip install 'robustmed[ray]'") from None
    return ray


def _ray_task(unit: Unit) -> dict:
    return run_unit(unit)


class RayExecutor:
    """One Ray task per unit (1 CPU, plus 1 GPU where the cluster has GPUs); results go to the shared store.

    Uses the Ray session already initialized in this process, else connects to ``address``
    (``auto``, ``HOST:PORT``), else starts a local one for the duration of the run.
    """

    name = "ray"

    def __init__(self, address: str | None = None):
        self.address = address

    def run(self, units: Sequence[Unit], progress: bool = True) -> None:
        ray = _ray()
        started_here = not ray.is_initialized()
        if started_here:
            options = {"address": self.address} if self.address else {"include_dashboard": False}
            try:
                ray.init(**options, logging_level="WARNING", log_to_driver=False)
            except ConnectionError as exc:
                raise UserError(f"cannot reach the Ray cluster at {self.address!r}: {exc}") from None
        try:
            self._submit_and_wait(ray, units, progress)
        finally:
            if started_here:
                ray.shutdown()

    def _submit_and_wait(self, ray, units: Sequence[Unit], progress: bool) -> None:
        gpus = 1 if ray.cluster_resources().get("GPU", 0) >= 1 else 0
        task = ray.remote(_ray_task).options(num_cpus=1, num_gpus=gpus, max_retries=1)
        pending = {task.remote(unit): unit for unit in units}
        with progress_bar(progress) as bar:
            handle = bar.add_task("units", total=sum(u.size for u in units))
            while pending:
                (ref,), _ = ray.wait(list(pending), num_returns=1)
                unit = pending.pop(ref)
                try:
                    ray.get(ref)
                except ray.exceptions.RayTaskError as exc:
                    if isinstance(exc.cause, UserError):
                        raise exc.cause from None
                    raise
                bar.update(handle, description=_describe(unit, len(units) - len(pending), len(units)))
                bar.advance(handle, unit.size)


EXECUTORS = {"local": LocalExecutor, "ray": RayExecutor}


def get_executor(name: str = "local", address: str | None = None) -> Executor:
    if name not in EXECUTORS:
        raise UserError(f"unknown executor {name!r}; choices: {', '.join(EXECUTORS)}")
    if address and name != "ray":
        raise UserError("--address needs --executor ray")
    return RayExecutor(address) if name == "ray" else LocalExecutor()
