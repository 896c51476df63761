"""``run``: one configuration trained end to end; ``load_run`` gives it back.

    plan = make_plan(config, model=...)      # validate, build the network and its learner: no data yet
    dirs = RunDirs.open(out_dir, ...)         # checked and claimed before any data is loaded
    session = Session(plan, dataset, members, dirs, resume=...)
    for epoch in session.epochs(): train, evaluate, record (metrics line, checkpoint)
    summarize; the trained state comes back

S seeds (``config.seed`` a tuple) at G grid points (``lr`` or
``weight_decay`` several values) train together in one program, and each
member writes the files a separate run of it writes, in
``out_dir/<point>/seed<k>/`` (``sidjax.train.members``). With a validation
split, a grid's point is chosen on it (``selection.json``, ``sidjax.train.selection``).
"""

from __future__ import annotations

import numbers
import warnings
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
from tqdm.auto import tqdm

from sidjax.data import Dataset
from sidjax.errors import ConfigError
from sidjax.losses import Alpha
from sidjax.network import Network, Variables
from sidjax.state import TrainState
from sidjax.train.config import TrainConfig
from sidjax.train.directories import RunDirs
from sidjax.train.members import Member, Members
from sidjax.train.plan import (
    Model,
    Optimizer,
    Plan,
    check_own_method,
    checked_dataset,
    make_plan,
    plan_of_run,
    state_template,
)
from sidjax.train.rundir import RunDir
from sidjax.train.selection import select_point
from sidjax.train.session import Session
from sidjax.train.signals import stop_signals
from sidjax.train.stops import DIVERGED, RunInterrupted, RunStopped, TrainingDiverged
from sidjax.train.summary import summarize
from sidjax.train.warm import check_not_own, check_source

__all__ = ["DIVERGED", "RunInterrupted", "RunResult", "RunStopped", "TrainingDiverged", "load_run", "run",
           "summarize"]  # fmt: skip


class RunResult(NamedTuple):
    """A trained (or loaded) run of one seed (at one grid point).

    Attributes:
      summary: the run's summary (``summary.json``): its config, final and
        best accuracies, per-unit diagnostics, speed, provenance.
      network: the static network.
      state: the final ``TrainState`` on the host (params, stats, optimizer
        states, step), or None for a finished run returned by ``resume``
        without a checkpoint to read it from.
    """

    summary: dict[str, Any]
    network: Network
    state: TrainState | None

    @property
    def variables(self) -> Variables | None:
        """``Variables(params, stats)``: what ``sidjax.predict`` and ``sidjax.evaluate`` read."""
        return None if self.state is None else self.state.variables


def run(
    config: TrainConfig,
    out_dir: str | None = None,
    *,
    model: Model | None = None,
    tx: Optimizer | None = None,
    alpha: Alpha | None = None,
    dataset: Dataset | None = None,
    data_dir: str | None = None,
    manual_dir: str | None = None,
    progress: bool = True,
    overwrite: bool = False,
    resume: bool = False,
    on_epoch: Callable[[dict[str, Any]], None] | None = None,
    log: Callable[[str], None] = tqdm.write,
    allow_changed_method: bool = False,
) -> RunResult | list[RunResult]:
    """Trains and evaluates one configuration (all its seeds and grid points together); returns what it trained.

    Args:
      config: the run. out_dir: where ``config.json``, ``run.json``, ``metrics.jsonl``, checkpoints and
        ``summary.json`` go (``<point>/seed<k>/`` per member of a grid or of several seeds).
      model: your own network: a factory ``key -> (network, variables)``, a built pair, or a ``Backbone``.
      tx: your own optax optimizer (or ``total_steps -> transformation``). alpha: one value, one per unit,
        or a schedule ``alpha(step)`` (docs/models.md: your own recipe).
      dataset, data_dir, manual_dir: the data (``load_dataset`` or ``Dataset.from_arrays``).
      progress: a progress bar per epoch. log: where messages go. on_epoch: called with each epoch's record.
      overwrite: replace the run in ``out_dir`` once this one has finished its first epoch.
      resume: continue the run in ``out_dir`` from its last intact checkpoint, to an uninterrupted run's numbers.
      allow_changed_method: resume a run whose rule's code changed, with a warning, instead of refusing.

    Returns:
      A ``RunResult`` (summary, network, final state), or one per member (grid points outermost) for a
      tuple of seeds or a grid.

    Raises:
      ConfigError, DatasetUnavailableError, TrainingDiverged, RunInterrupted, RunStopped: one line each
      (docs/faults.md); finished work is kept.
    """
    plan = make_plan(config, dataset, model, tx=tx, alpha=alpha)
    check_own_method(plan)
    config = plan.config
    dirs = _open_dirs(plan, out_dir, resume, log, allow_changed_method)
    everyone = Members.of(config)
    try:
        dirs.claim(resume=resume, overwrite=overwrite)
        done = _finished(plan, dirs) if resume else {}
        members = Members(tuple(m for m in everyone if m not in done))
        if len(members):
            dataset = checked_dataset(plan, dataset, data_dir, manual_dir)
            done.update(_train(plan, dataset, members, dirs.only(members), resume, progress, on_epoch, log))
    except RunStopped as err:
        log(str(err))  # an uncaught SystemExit prints nothing
        raise
    finally:
        dirs.release()
    if config.grid:
        select_point(plan, {m: done[m][1] for m in everyone}, out_dir if dirs else None, log)
    results = [done[m][0] for m in everyone]
    return results[0] if len(results) == 1 and isinstance(config.seed, int) and not config.grid else results


def _open_dirs(plan: Plan, out_dir: str | None, resume: bool, log, allow_changed_method: bool) -> RunDirs:
    """The run's directories (none where ``out_dir`` is None, or on a process other than 0), checked."""
    check_not_own(plan.config.init_from, out_dir)
    if jax.process_count() > 1:  # every process trains; process 0 alone writes the files
        if resume:
            raise ConfigError("resume is for single-process runs; start multi-process runs anew", "resume")
        out_dir = out_dir if jax.process_index() == 0 else None
    if resume and out_dir is None:
        raise ConfigError("resume needs out_dir: the directory of the run to continue", "resume")
    dirs = RunDirs.open(out_dir, plan.config, log, plan.steps_per_epoch, plan.recipe, allow_changed_method)
    for d in dirs if resume else ():  # before the settings, which init_from's network replaced
        check_source(plan, d.run_info().get("network"), d.path)
    return dirs


def _finished(plan: Plan, dirs: RunDirs) -> dict[Member, tuple[RunResult, list[dict]]]:
    """The members whose runs have finished at this config's length, with their last checkpoint's state
    and their epoch records."""
    finished = dirs.finished()
    template = state_template(plan) if finished else None
    return {
        m: (RunResult(summary, plan.network, dirs.finished_state(m, template)), dirs.histories([m], None)[m])
        for m, summary in finished.items()
    }


def _train(plan: Plan, dataset: Dataset, members: Members, dirs: RunDirs, resume: bool, progress: bool,
           on_epoch, log) -> dict[Member, tuple[RunResult, list[dict]]]:  # fmt: skip
    """Trains ``members`` together from their resume point to the end; returns each one's result and
    epoch records."""
    session = Session(plan, dataset, members, dirs, resume=resume, log=log)
    session.compile()
    with stop_signals() as stop, session.writing():  # handlers first: run.json says they are in place
        for epoch in session.epochs():
            trained = session.train(epoch, stop, progress)
            session.record(session.evaluate(epoch, trained), stop, on_epoch, progress)
    results = {}
    for member, state in zip(members, session.host_states(), strict=True):
        summary = dirs.finish(member, summarize(session, member))
        results[member] = (RunResult(summary, plan.network, state), session.histories[member])
    if stop:  # it came during the last epoch, which finished: the job still stops (a sweep goes no further)
        where = f"; {dirs.where} holds the finished run" if dirs else ""
        raise RunStopped(
            f"stopped by {stop.name} during the last epoch, which finished{where}", stop.signum, True
        )
    return results


def load_run(
    path: str,
    epoch: int | None = None,
    *,
    model: Model | None = None,
    tx: Optimizer | None = None,
    allow_changed_method: bool = False,
) -> RunResult:
    """A run directory's trained network, ready to use: ``(summary, network, state)``.

    Safe while the run is still training (a notebook watching a job): it loads
    the newest checkpoint whose files are complete, and looks again if the
    writer removes it while it is read.

    Args:
      path: a run directory (``out_dir``, or ``out_dir/seed<k>`` of several seeds).
      epoch: the epoch whose checkpoint to load (an int; default: the latest
        intact checkpoint). A damaged latest checkpoint is skipped for an
        earlier one with a warning.
      model: the same ``model`` the run was given, for your own network
        (built-in architectures are rebuilt from ``config.json``).
      tx: the same ``tx`` the run was given, for your own optimizer (its
        state is part of the checkpoint).
      allow_changed_method: load a run whose method's code is not the one
        it recorded (a warning), instead of refusing.

    Returns:
      A ``RunResult`` whose summary describes the state loaded: ``summary.json``
      when that is the finished run's last epoch, else ``{"epochs_done": n}``
      with the loaded epoch's record; ``loaded_checkpoint`` names it.

    Raises:
      ConfigError: not a run directory, no such or no intact checkpoint, in one line.
    """
    if epoch is not None and (isinstance(epoch, bool) or not isinstance(epoch, numbers.Integral)):
        raise ConfigError(f"epoch must be an int, a finished epoch's number; got {epoch!r}", "epoch")
    plan = plan_of_run(path, model, tx, allow_changed_method)
    skipped: list[str] = []
    run_dir = RunDir(path, plan.config, log=skipped.append, steps_per_epoch=plan.steps_per_epoch)
    position, state = run_dir.stored.newest_restorable(
        None if epoch is None else int(epoch), state_template(plan), skipped
    )
    for message in skipped:
        warnings.warn(f"{message}; loaded the checkpoint of {position.describe()}", stacklevel=2)
    history = run_dir.history()
    summary = run_dir.finished_summary()
    if summary is None or (position.epochs, position.step) != (plan.config.epochs, 0):
        loaded = history[position.epochs - 1] if position.epochs and not position.step else {}
        summary = {"epochs_done": len(history), **loaded}
    return RunResult({**summary, "loaded_checkpoint": position.describe()}, plan.network, state)
