"""Executors run work units behind one interface: ``local`` (in-process) and ``ray`` (one warm actor per worker).

Every executor only calls :func:`robustmed.run.work.run` on each unit; the unit writes its own rows
to the store, so executors differ in where units run, never in what they compute.

>>> get_executor("local").name
'local'
"""
from __future__ import annotations

from collections import deque
from contextlib import contextmanager
from typing import Protocol, Sequence

from robustmed import store
from robustmed.allocator import tune_malloc
from robustmed.errors import Interrupted, UserError
from robustmed.progress import listening, progress_bar
from robustmed.run.plan import Unit
from robustmed.run.work import preload, run as run_unit


class Executor(Protocol):
    name: str

    def start(self, units: int, load: dict | None = None) -> None:
        """Get workers ready for ``units`` more units of a run whose units load ``load`` (a
        :func:`robustmed.run.plan.load_spec`); called before the run's pre-flight checks, which it may overlap."""

    def run(self, units: Sequence[Unit], progress: bool = True) -> None:
        """Complete every unit (each one stored and verified), or raise."""

    def close(self) -> None:
        """Release what :meth:`start` took."""


def _describe(unit: Unit, done: int, total: int) -> str:
    return f"{unit.attack} · unit {done}/{total}"


@contextmanager
def _counted_on_interrupt(units: Sequence[Unit]):
    """Ctrl-C while units run becomes :class:`Interrupted` with the stored and planned units of their runs,
    so the command can say how much a rerun will skip."""
    try:
        yield
    except Interrupted:
        raise
    except KeyboardInterrupt:
        counts = [store.saved_units(run_dir) for run_dir in dict.fromkeys(u.run_dir for u in units)]
        raise Interrupted(sum(c[0] for c in counts), sum(c[1] for c in counts)) from None


class LocalExecutor:
    """In this process, one unit after another, with the rich progress bar (samples × ε)."""

    name = "local"

    def start(self, units: int, load: dict | None = None) -> None:
        """Nothing to start: this process already holds torch and the run's model."""

    def run(self, units: Sequence[Unit], progress: bool = True) -> None:
        with _counted_on_interrupt(units), progress_bar(progress) as bar:
            task = bar.add_task("units", total=sum(u.size for u in units))
            finished = 0
            for done, unit in enumerate(units, 1):
                bar.update(task, description=_describe(unit, done, len(units)))
                def moved(share, base=finished, size=unit.size):
                    bar.update(task, completed=base + share * size)

                with listening(moved):
                    run_unit(unit)
                finished += unit.size
                bar.update(task, completed=finished)

    def close(self) -> None:
        """Nothing to release."""


def _ray():
    try:
        import ray
    except ImportError:
        raise UserError("--executor ray needs Ray: pip install 'robustmed[ray]'") from None
    return ray


class _Worker:
    """A Ray actor per worker slot: its process keeps torch, robustmed and the runs' models and data loaded.

    A fresh process's first unit would otherwise pay the imports (seconds) and the model and data
    loading; the models and data stay cached per process by :func:`robustmed.run.work.run`, keyed by the
    run's config, checkpoint and device.
    """

    def __init__(self):
        import torch

        torch.set_num_threads(1)  # the worker holds one CPU
        tune_malloc()  # as the robustmed command's own process

    def preload(self, load: dict) -> str | None:
        """Load a run's model and data ahead of its units; a failure is left for the first unit to raise."""
        try:
            preload(load)
        except Exception as exc:  # noqa: BLE001  (the unit loads again and reports it in its own error)
            return repr(exc)
        return None

    def run(self, unit: Unit) -> dict:
        return run_unit(unit)


class RayExecutor:
    """One actor per worker slot (1 CPU, plus 1 GPU where the cluster has GPUs); units go to idle actors.

    Uses the Ray session already initialized in this process, else connects to ``address``
    (``auto``, ``HOST:PORT``), else starts a local one until :meth:`close`. Each unit writes its
    rows to the shared store as it finishes; the actors only save each unit the start-up.
    """

    name = "ray"

    def __init__(self, address: str | None = None):
        self.address = address
        self._ray = None
        self._started_ray = False
        self._workers: list = []
        self._wanted = 0

    def start(self, units: int, load: dict | None = None) -> None:
        """Start up to one actor per slot for the units announced so far; while the caller runs its pre-flight
        checks they import robustmed and load ``load`` (the model and data of the run announcing them).

        Actors take units in the order they were started, so the actors a run starts take its first units.
        """
        ray = self._connect()
        self._wanted += units
        resources = ray.cluster_resources()
        gpus = 1 if resources.get("GPU", 0) >= 1 else 0
        slots = int(resources.get("GPU" if gpus else "CPU", 1))
        actor = ray.remote(_Worker).options(num_cpus=1, num_gpus=gpus, max_restarts=1, max_task_retries=1)
        while len(self._workers) < max(1, min(self._wanted, slots)):
            worker = actor.remote()
            if load is not None:
                worker.preload.remote(load)  # runs before any unit sent to this actor: its tasks run in order
            self._workers.append(worker)

    def run(self, units: Sequence[Unit], progress: bool = True) -> None:
        owned = not self._workers
        if owned:
            self.start(len(units))
        try:
            with _counted_on_interrupt(units):
                self._dispatch(units, progress)
        finally:
            if owned:
                self.close()

    def close(self) -> None:
        """Kill the actors and stop the Ray session this executor started; also after Ctrl-C, when the
        cluster may already be tearing the actors down itself."""
        try:
            for worker in self._workers:
                try:
                    self._ray.kill(worker)
                except Exception:  # noqa: BLE001  (an actor already gone needs no killing)
                    pass
        finally:
            self._workers, self._wanted = [], 0
            if self._started_ray:
                self._ray.shutdown()
            self._ray, self._started_ray = None, False

    def _connect(self):
        if self._ray is not None:
            return self._ray
        ray = _ray()
        if not ray.is_initialized():
            options = {"address": self.address} if self.address else {"include_dashboard": False}
            try:
                ray.init(**options, logging_level="WARNING", log_to_driver=False)
            except ConnectionError as exc:
                raise UserError(f"cannot reach the Ray cluster at {self.address!r}: {exc}") from None
            self._started_ray = True
        self._ray = ray
        return ray

    def _dispatch(self, units: Sequence[Unit], progress: bool) -> None:
        """Every unit through the actors; on Ctrl-C the units in flight are cancelled before the actors go."""
        running: dict = {}  # task → (actor, unit), shared with the Ctrl-C path
        try:
            self._send(units, progress, running)
        except KeyboardInterrupt:
            self._cancel(running)
            raise

    def _cancel(self, running: dict) -> None:
        """Cancel the units in flight: a cancelled task is not retried (nor reported) when close() kills its actor."""
        for ref in running:
            try:
                self._ray.cancel(ref)
            except Exception:  # noqa: BLE001  (a task that already ended needs no cancelling)
                pass

    def _send(self, units: Sequence[Unit], progress: bool, running: dict) -> None:
        """Each idle actor takes the next unit; finished units are counted as they come back."""
        ray, queue, idle = self._ray, deque(units), deque(self._workers)
        with progress_bar(progress) as bar:
            handle = bar.add_task("units", total=sum(u.size for u in units))
            while queue or running:
                while queue and idle:
                    worker, unit = idle.popleft(), queue.popleft()
                    running[worker.run.remote(unit)] = (worker, unit)
                (ref,), _ = ray.wait(list(running), num_returns=1)
                worker, unit = running.pop(ref)
                try:
                    ray.get(ref)
                except ray.exceptions.RayTaskError as exc:
                    if isinstance(exc.cause, UserError):
                        raise exc.cause from None
                    raise
                idle.append(worker)
                bar.update(handle, description=_describe(unit, len(units) - len(queue) - len(running), len(units)))
                bar.advance(handle, unit.size)


EXECUTORS = {"local": LocalExecutor, "ray": RayExecutor}


def get_executor(name: str = "local", address: str | None = None) -> Executor:
    if name not in EXECUTORS:
        raise UserError(f"unknown executor {name!r}; choices: {', '.join(EXECUTORS)}")
    if address and name != "ray":
        raise UserError("--address needs --executor ray")
    return RayExecutor(address) if name == "ray" else LocalExecutor()
