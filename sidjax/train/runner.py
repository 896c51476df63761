"""``run``: one configuration trained end to end, as a short composition; ``load_run`` gives it back.

    plan = make_plan(config, model=...)  # validate, build the network and its learner: no data yet
    dirs = run directories, checked      # refuse before any data is loaded
    data, programs = prepare_data(...), make_programs(...)
    state = restored or fresh
    for epoch: train_epoch, evaluate, record (metrics line, checkpoint)
    summarize; the trained state comes back

S seeds (``config.seed`` a tuple) train together in one program and each
writes the files a separate run of that seed writes, in ``out_dir/seed<k>/``.
"""

from __future__ import annotations

import numbers
import os
import platform
import time
import warnings
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import numpy as np
from tqdm.auto import tqdm

from sidjax.architectures import ARCHITECTURES
from sidjax.data import Dataset, DatasetInfo, load_dataset
from sidjax.errors import ConfigError
from sidjax.evaluation import split_metrics
from sidjax.losses import Alpha
from sidjax.network import Network, Variables
from sidjax.schedule import init_slots
from sidjax.state import TrainState, new_state
from sidjax.train.config import TrainConfig
from sidjax.train.epoch import Progress, RunData, epoch_chunks, fits_on_device, prepare_data, train_epoch
from sidjax.train.plan import Model, Optimizer, Plan, make_plan, trained_network
from sidjax.train.programs import RunPrograms, init_states, load_states, make_programs, unload_states
from sidjax.train.rundir import Position, RunDir, provenance
from sidjax.train.signals import StopRequest, stop_signals


class RunInterrupted(KeyboardInterrupt):
    """Ctrl-C during a run; the message says what was saved and how to continue."""


class TrainingDiverged(FloatingPointError):
    """The loss stopped being finite, or grew far beyond a uniform guess's; the message names the
    epoch and the likely cause."""


DIVERGED = 100.0  # an epoch whose last unit's training CE exceeds this many times log(N) has diverged


class RunStopped(SystemExit):
    """A stop signal (SIGTERM, SIGUSR1, SIGUSR2, SIGHUP) ended the run at a checkpoint.

    A ``SystemExit`` (as Ctrl-C's ``RunInterrupted`` is a ``KeyboardInterrupt``):
    uncaught, it ends your script with status 128 + the signal's number, as
    the shell reports a process that signal ended, after ``run`` has logged
    its message; ``except Exception`` does not swallow it.

    Attributes:
      signum: the signal.
      saved: whether the point it stopped at was checkpointed (``resume`` continues there).
      code: the exit status, 128 + ``signum``.
    """

    def __init__(self, message: str, signum: int, saved: bool):
        super().__init__(message)
        self.signum, self.saved = signum, saved
        self.code = 128 + signum


class RunResult(NamedTuple):
    """A trained (or loaded) run of one seed.

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


def seed_dirs(out_dir: str | None, plan: Plan, log) -> dict[int, RunDir | None]:
    """One ``RunDir`` per seed: ``out_dir`` itself for one seed, ``out_dir/seed<k>`` for several."""
    config = plan.config
    if out_dir is None:
        return dict.fromkeys(config.seeds)
    if isinstance(config.seed, int):
        return {config.seed: RunDir(out_dir, config, log, plan.steps_per_epoch, plan.recipe)}
    return {
        s: RunDir(
            os.path.join(out_dir, f"seed{s}"), config.for_seed(s), log, plan.steps_per_epoch, plan.recipe
        )
        for s in config.seeds
    }


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
) -> RunResult | list[RunResult]:
    """Trains and evaluates one configuration (all its seeds together); returns what it trained.

    Args:
      config: the run.
      out_dir: if given, ``config.json``, ``provenance.json``,
        ``metrics.jsonl`` (a line per epoch), orbax checkpoints and
        ``summary.json`` go here (one ``seed<k>/`` directory per seed when
        ``config.seed`` is a tuple).
      model: your own network instead of the config's architecture: a
        factory ``key -> (network, variables)`` (each seed initialised from
        its own key), a built ``(network, variables)`` (every seed starts
        from it), or a ``sidjax.Backbone`` (built in the config's mode, as a
        named architecture would be). The config then takes the network's
        name, mode and depth.
      tx: your own optimizer instead of the config's (optimizer, lr,
        momentum, weight_decay, schedule): any optax transformation, or a
        function ``total_steps -> transformation`` for schedules over the
        whole run; every part (stem, each unit) gets its own state of it.
        Checkpointed and resumed like the config's; a resume must be given
        one of the same structure.
      alpha: your own alpha instead of the config's: one value, one per unit
        of the network trained, or a schedule ``alpha(step) -> [] or [K]``
        traced inside the step (no recompilation as it changes).
      dataset: already loaded data (``load_dataset`` or
        ``Dataset.from_arrays``); its name must be ``config.dataset``.
      data_dir, manual_dir: passed to ``load_dataset``.
      progress: a progress bar per epoch.
      overwrite: replace an earlier run in ``out_dir``, once this one has
        finished its first epoch.
      resume: continue the run in ``out_dir`` from its last intact
        checkpoint (same settings; ``epochs`` may grow under a constant
        schedule), to the same numbers as an uninterrupted run; a finished
        run is returned as it is.
      on_epoch: called with each seed's record of each epoch (with its ``seed``).
      log: where messages go.

    Returns:
      A ``RunResult`` (summary, network, final state); a list, one per seed,
      when ``config.seed`` is a tuple.

    Raises:
      ConfigError, DatasetUnavailableError: one line, before any data is
        loaded where the problem does not depend on the data.
      TrainingDiverged: the loss stopped being finite.
      RunInterrupted: Ctrl-C; what was saved is kept.
    """
    plan = make_plan(config, dataset, model, tx=tx, alpha=alpha)
    config = plan.config
    if jax.process_count() > 1:  # every process trains; process 0 alone writes the files
        if resume:
            raise ConfigError("resume is for single-process runs; start multi-process runs anew", "resume")
        out_dir = out_dir if jax.process_index() == 0 else None
    if resume and out_dir is None:
        raise ConfigError("resume needs out_dir: the directory of the run to continue", "resume")
    dirs = seed_dirs(out_dir, plan, log)
    claimed = []
    try:
        for d in dirs.values():
            if d is not None:
                d.check(resume=resume, overwrite=overwrite)
        for d in dirs.values():  # every check before any claim: a refused run writes nothing
            if d is not None:
                d.claim()
                claimed.append(d)
        done = {s: _finished(plan, d) for s, d in dirs.items() if d is not None and resume}
        done = {s: r for s, r in done.items() if r is not None}
        seeds = tuple(s for s in config.seeds if s not in done)
        if seeds:
            if dataset is None:
                dataset = load_dataset(config.dataset, data_dir, manual_dir, image_size=config.image_size)
            if dataset.input_shape != plan.info.input_shape:
                raise ConfigError(
                    f"{config.dataset} images are {dataset.input_shape}, expected {plan.info.input_shape}"
                )
            done.update(
                _train(plan, dataset, seeds, {s: dirs[s] for s in seeds}, resume, progress, on_epoch, log)
            )
    except RunStopped as err:
        log(str(err))  # an uncaught SystemExit prints nothing
        raise
    finally:
        for d in claimed:
            d.release()
    results = [done[s] for s in config.seeds]
    return results[0] if isinstance(config.seed, int) else results


def _finished(plan: Plan, run_dir: RunDir) -> RunResult | None:
    """A finished run of this config's length, with its last checkpoint's state where there is one."""
    summary = run_dir.finished_summary()
    if summary is None:
        return None
    positions = run_dir.checkpoints()
    restored = run_dir.restore(positions[0], layout_template(plan)) if positions else None
    return RunResult(summary, plan.network, restored[0] if restored else None)


def layout_template(plan: Plan) -> TrainState:
    """The shapes of a ``TrainState`` in the network's layout (how checkpoints hold it); nothing is computed."""
    config = plan.config

    def fresh(key):
        variables = plan.build(key)[1]
        slots = init_slots(plan.network, variables, config.batch_size) if config.pipelined else ()
        return new_state(variables, plan.tx, slots)

    return jax.eval_shape(fresh, jax.random.key(0))


def _train(
    plan: Plan, dataset: Dataset, seeds, dirs, resume, progress, on_epoch, log
) -> dict[int, RunResult]:
    """Trains ``seeds`` together from their resume point to the end; returns each seed's result."""
    config = plan.config
    resident = fits_on_device(plan, dataset)
    programs = make_programs(plan, dataset, seeds, streamed=not resident)
    data = prepare_data(plan, dataset, seeds, resident)
    state, position, partial = _start_state(plan, seeds, dirs, resume, log)
    first = 1 if position is None else position.epochs + 1
    resumed = (
        Progress(position.step, partial, partial_seconds(dirs, position))
        if position and position.step
        else None
    )
    compile_time = 0.0
    if first <= config.epochs:  # compiled ahead, so that epoch times exclude compilation
        start = resumed.steps if resumed else 0
        compile_time = programs.chunk.compile(
            state, *next(iter(epoch_chunks(plan, data, seeds, first, start)))
        )
    histories = {s: (dirs[s].history()[: first - 1] if dirs[s] else []) for s in seeds}
    for d in dirs.values():
        if d is not None:
            d.begin(position, plan.info._asdict(), trained_network(plan))
    try:
        with stop_signals() as stop:
            for epoch in range(first, config.epochs + 1):
                state, records = _epoch(plan, programs, state, data, dirs, epoch,
                                        resumed if epoch == first else None, stop, progress)  # fmt: skip
                stopping = bool(stop) and epoch < config.epochs  # a stop signal during the epoch's end
                due = any(d and (d.checkpoint_due(epoch) or stopping) for d in dirs.values())
                host = unload_states(plan, state, len(seeds)) if due else None
                for i, (seed, record) in enumerate(zip(seeds, records, strict=True)):
                    histories[seed].append(record)
                    _record(
                        plan, dirs[seed], seed, record, host[i] if host else None, on_epoch, progress, log
                    )
                if stopping:
                    raise _stopped(stop, dirs, f"after epoch {epoch}", saved=host is not None)
    except KeyboardInterrupt:
        raise RunInterrupted(_interrupted(dirs, histories)) from None
    finally:
        for d in dirs.values():
            if d is not None:
                d.close()
    final = unload_states(plan, state, len(seeds))
    results = {}
    for i, seed in enumerate(seeds):
        summary = summarize(plan, config.for_seed(seed), histories[seed], data, i, len(seeds), compile_time)
        if dirs[seed] is not None:
            dirs[seed].finish(summary)
        results[seed] = RunResult(summary, plan.network, final[i])
    return results


def _record(plan, run_dir: RunDir | None, seed, record: dict, state, on_epoch, progress: bool, log) -> None:
    """One seed's epoch: its metrics line (and checkpoint, if ``state``), the callback, the log line."""
    if run_dir is not None:
        run_dir.write_epoch(record, state)
    if on_epoch:
        on_epoch({**record, "seed": seed})
    if progress:
        log(f"{plan.config.method} seed {seed} epoch {record['epoch']}: loss {record['train_loss']:.4f}, "
            f"test acc {record['test_accuracy']:.4f}, {record['epoch_time_s']:.1f}s")  # fmt: skip


def partial_seconds(dirs, position: Position) -> float:
    """The training time of a resumed epoch's steps before the checkpoint, as recorded with it."""
    first = next((d for d in dirs.values() if d is not None), None)
    return first.partial_seconds(position) if first else 0.0


def _epoch(plan, programs: RunPrograms, state, data: RunData, dirs, epoch, resumed: Progress | None,
           stop: StopRequest, progress: bool) -> tuple[Any, list[dict]]:  # fmt: skip
    """Trains one epoch (checkpointing inside it where due) and evaluates it: each seed's record."""
    state, run = _train_checkpointed(plan, programs, state, data, dirs, epoch, resumed, stop, progress)
    begin = time.perf_counter()
    sums = programs.evaluate(state, data.test_images, data.test_labels)
    diagnostics = _label_diagnostics(plan, programs, state, data)
    eval_time = time.perf_counter() - begin
    records = []
    for seed, mean, sum_, extra in zip(programs.seeds, run.means(), sums, diagnostics, strict=True):
        test = split_metrics(sum_, len(data.dataset.test_labels))
        record = {
            "epoch": epoch,
            "train_loss": float(mean["loss"]),
            "train_ce": float(mean["ce"]),
            "train_accuracy": float(mean["accuracy"]),
            **_per_unit_training(plan, mean),
            "test_accuracy": test["accuracy"],
            "per_unit_accuracy": test["per_unit_accuracy"],
            "per_unit_kl": test["per_unit_kl"],
            **extra,
            "epoch_time_s": run.seconds,
            "eval_time_s": eval_time,
        }
        _check_diverged(plan, record, seed if len(programs.seeds) > 1 else None)
        records.append(record)
    return state, records


def _per_unit_training(plan: Plan, mean: dict[str, np.ndarray]) -> dict[str, list[float]]:
    """Each unit's mean training loss (local methods) and accuracy over the epoch's batches, as seen in training."""
    per_unit = {}
    if plan.method.local:
        per_unit["train_unit_loss"] = mean["unit_loss"].tolist()
    if "unit_accuracy" in mean:
        per_unit["train_unit_accuracy"] = mean["unit_accuracy"].tolist()
    return per_unit


def _check_diverged(plan: Plan, record: dict[str, Any], seed: int | None) -> None:
    """Raises ``TrainingDiverged`` where the epoch's loss is not finite, or where the last unit's
    training cross-entropy exceeds ``DIVERGED`` times a uniform guess's (``log N``): a finite loss
    that large (Adam at lr 1000 reaches 1e19) means the run is at chance and will not come back."""
    chance = float(np.log(plan.info.num_classes))
    if np.isfinite(record["train_loss"]) and record["train_ce"] <= DIVERGED * chance:
        return
    what = (
        f"the training loss is {record['train_loss']}"
        if not np.isfinite(record["train_loss"])
        else f"the last unit's training cross-entropy is {record['train_ce']:.3g}, over {DIVERGED:g} times a "
        f"uniform guess's ({chance:.2f})"
    )
    who = f" (seed {seed})" if seed is not None else ""
    raise TrainingDiverged(
        f"training diverged in epoch {record['epoch']}{who}: {what}; the learning rate is the likely cause: "
        f"lower it (now {plan.config.lr:g})"
    )


def _train_checkpointed(plan, programs: RunPrograms, state, data: RunData, dirs, epoch, resumed: Progress | None,
                        stop: StopRequest, progress: bool) -> tuple[Any, Progress]:  # fmt: skip
    """Trains one epoch to its end; inside it, checkpoints every ``checkpoint_steps`` steps, and at a
    stop signal checkpoints and raises ``RunStopped``."""
    config, steps, seeds = plan.config, plan.steps_per_epoch, programs.seeds
    keeps = config.checkpoint_every and any(d is not None for d in dirs.values())  # else nothing to save
    every = config.checkpoint_steps if keeps else 0
    bar = tqdm(total=steps, initial=resumed.steps if resumed else 0, desc=f"{config.method} epoch {epoch}/{config.epochs}",
               disable=not progress, leave=False, mininterval=1.0 if os.isatty(2) else 30.0)  # fmt: skip
    saved = {"at": resumed.steps if resumed else 0}

    def pause(done: int) -> bool:  # at a chunk boundary inside the epoch
        return bool(stop) or bool(every) and done // every > saved["at"] // every

    state, run = train_epoch(plan, programs, state, data, seeds, epoch, resumed, pause, bar.update)
    while run.steps < steps:  # paused inside the epoch: checkpoint, then stop or go on
        host = unload_states(plan, state, len(seeds))
        runs = [d for d in dirs.values() if d is not None]  # one per seed, in the seeds' order, or none
        wrote = [
            d.save(host[i], epoch - 1, run.steps, run.metrics[i], run.seconds) for i, d in enumerate(runs)
        ]
        saved["at"] = run.steps
        if stop:
            raise _stopped(stop, dirs, f"in epoch {epoch} at step {run.steps} of {steps}", saved=any(wrote))
        state, run = train_epoch(plan, programs, state, data, seeds, epoch, run, pause, bar.update)
    bar.close()
    return state, run


def _stopped(stop: StopRequest, dirs, where: str, saved: bool) -> RunStopped:
    runs = [d for d in dirs.values() if d is not None]
    if saved:
        place = runs[0].path if len(runs) == 1 else os.path.dirname(runs[0].path)
        message = f"stopped by {stop.name} {where}; {place} holds a checkpoint of that point"
    else:
        why = "no out directory" if not runs else "checkpoint_every is 0"
        message = f"stopped by {stop.name} {where}; nothing could be saved ({why})"
    return RunStopped(message, stop.signum, saved)


def _label_diagnostics(plan: Plan, programs: RunPrograms, state, data: RunData) -> list[dict[str, float]]:
    """Per seed: validation accuracy (on its labels as given), and with label noise the memorisation curve.

    With noise, the training examples are predicted once more (evaluation mode) and split by
    whether the seed flipped their label: ``train_clean_accuracy`` (unflipped, predicted as
    labelled), ``train_flipped_memorised`` (flipped, predicted as the wrong label they were given)
    and ``train_flipped_true`` (flipped, predicted as their true class).
    """
    found = [{} for _ in data.noisy_labels]
    if data.val_images is not None:
        predictions = programs.predict(state, data.val_images)
        for extra, predicted, labels in zip(found, predictions, data.val_labels, strict=True):
            extra["val_accuracy"] = float((predicted == labels).mean())
    if plan.config.label_noise > 0:
        images = data.train_images if data.resident else plan.learner.put(data.train_images)
        clean = data.dataset.train_labels
        predictions = programs.predict(state, images)
        for extra, predicted, noisy in zip(found, predictions, data.noisy_labels, strict=True):
            flipped = noisy != clean
            extra["train_clean_accuracy"] = _mean(predicted[~flipped] == clean[~flipped])
            extra["train_flipped_memorised"] = _mean(predicted[flipped] == noisy[flipped])
            extra["train_flipped_true"] = _mean(predicted[flipped] == clean[flipped])
    return found


def _mean(hits: np.ndarray) -> float:
    return float(hits.mean()) if hits.size else float("nan")


def _start_state(plan: Plan, seeds, dirs, resume: bool, log) -> tuple[Any, Position | None, list | None]:
    """The placed state to start from, the checkpoint's position and the partial epoch's per-step
    metrics of each seed (None at an epoch's end): a common intact checkpoint, or fresh."""
    config = plan.config
    runs = [d for d in dirs.values() if d is not None]
    if not (resume and runs and any(d.history() or d.checkpoints() for d in runs)):
        return init_states(plan, seeds), None, None
    common = set.intersection(*({(p.epochs, p.step) for p in d.checkpoints()} for d in runs))
    template = layout_template(plan)
    for epochs, step in sorted(common, reverse=True):
        restored = [d.restore(next(p for p in d.checkpoints() if (p.epochs, p.step) == (epochs, step)), template)
                    for d in runs]  # fmt: skip
        if all(r is not None for r in restored):
            position = next(p for p in runs[0].checkpoints() if (p.epochs, p.step) == (epochs, step))
            finished = max(len(d.history()) for d in runs)
            if finished > epochs or step:
                later = f"; epochs {epochs + 1}..{finished} run again" if finished > epochs else ""
                log(f"resuming from the checkpoint of {position.describe()}{later}")
            partial = [r[1] for r in restored] if step else None
            return load_states(plan, [r[0] for r in restored]), position, partial
    first = max(runs, key=lambda d: len(d.history()))
    why = (
        "checkpoint_every is 0"
        if not config.checkpoint_every
        else "no intact checkpoint of a recorded epoch is left"
    )
    raise ConfigError(
        "resume: "
        f"{first.path} holds {len(first.history())} finished epochs but nothing to continue from "
        f"({why}); nothing was changed: use overwrite=True to start again, or another out_dir",
        "resume",
    )


def _interrupted(dirs, histories) -> str:
    recorded = min(len(h) for h in histories.values())
    runs = [d for d in dirs.values() if d is not None]
    if not runs:
        return f"interrupted after {recorded} epochs; nothing was saved (no out directory)"
    where = runs[0].path if len(runs) == 1 else os.path.dirname(runs[0].path)
    if any(d.live != d.path for d in runs):
        return f"interrupted before the first epoch ended; nothing was saved in {where}"
    return f"interrupted; {where} holds epochs 1..{recorded} and continues from its last checkpoint"


def summarize(
    plan: Plan,
    config: TrainConfig,
    history: list[dict],
    data: RunData,
    index: int,
    together: int,
    compile_time: float,
) -> dict[str, Any]:
    """A finished run of one seed: its config, final and best epoch, depth diagnostics, speed, machine."""
    train_time = sum(r["epoch_time_s"] for r in history)
    examples = plan.steps_per_epoch * config.batch_size * config.epochs
    best = max(history, key=lambda r: r["test_accuracy"])
    validated = {}
    if "val_accuracy" in history[-1]:  # the epoch a validation split would choose (early stopping)
        chosen = max(history, key=lambda r: r["val_accuracy"])
        validated = {
            "final_val_accuracy": history[-1]["val_accuracy"],
            "best_val_epoch": chosen["epoch"],
            "test_accuracy_at_best_val": chosen["test_accuracy"],
        }
    return {
        **config.record(),
        "final_test_accuracy": history[-1]["test_accuracy"],
        "best_test_accuracy": best["test_accuracy"],
        "best_epoch": best["epoch"],
        **validated,
        "per_unit_accuracy": history[-1]["per_unit_accuracy"],
        "per_unit_kl": history[-1]["per_unit_kl"],
        "network": trained_network(plan),
        "train_time_s": train_time,
        "time_per_epoch_s": train_time / config.epochs,
        "examples_per_s": examples / train_time,
        "seeds_trained_together": together,
        "compile_time_s": compile_time,
        "num_train": len(data.dataset.train_labels),
        "num_test": len(data.dataset.test_labels),
        "realised_label_noise": data.realised_noise[index],
        "data_on_device": bool(data.resident),
        "backend": jax.default_backend(),
        "device": str(jax.devices()[0].device_kind),
        "host": f"{platform.machine()}, {os.cpu_count()} cpus",
        "jax_version": jax.__version__,
        "num_processes": jax.process_count(),
        **provenance(),
    }


def load_run(
    path: str, epoch: int | None = None, *, model: Model | None = None, tx: Optimizer | None = None
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

    Returns:
      A ``RunResult`` whose summary describes the state loaded: ``summary.json``
      when that is the finished run's last epoch, else ``{"epochs_done": n}``
      with the loaded epoch's record; ``loaded_checkpoint`` names it.

    Raises:
      ConfigError: not a run directory, no such or no intact checkpoint, in one line.
    """
    if epoch is not None and (isinstance(epoch, bool) or not isinstance(epoch, numbers.Integral)):
        raise ConfigError(f"epoch must be an int, a finished epoch's number; got {epoch!r}", "epoch")
    config = RunDir.read_config(path)
    run_info = RunDir(path, config).run_info()
    saved = run_info.get("dataset")
    info = None if saved is None else DatasetInfo(**{**saved, "input_shape": tuple(saved["input_shape"])})
    if "tx" in run_info.get("recipe", {}) and tx is None:
        raise ConfigError(f"{path} was trained with your own optimizer: give load_run the same tx", "tx")
    if model is None and config.model not in ARCHITECTURES:
        raise ConfigError(
            f"{path} was trained with your own model {config.model!r}: give load_run the same model", "model"
        )
    plan = make_plan(config, model=model, info=info, tx=tx)
    if plan.config.model != config.model:
        raise ConfigError(
            f"{path} was trained with the model {config.model!r}; the model given builds {plan.config.model!r}",
            "model",
        )
    skipped: list[str] = []
    run_dir = RunDir(path, plan.config, log=skipped.append, steps_per_epoch=plan.steps_per_epoch)
    template = layout_template(plan)
    for _ in range(5):  # the writer may remove a checkpoint (file by file) while it is read: look again
        skipped.clear()
        chosen, restored = _newest_restorable(run_dir, None if epoch is None else int(epoch), template)
        if restored is not None or all(run_dir.exists(p) and run_dir.intact(p) for p in chosen):
            break
    if restored is None:
        raise ConfigError(f"{path} holds no intact checkpoint to load ({'; '.join(skipped) or 'none'})")
    position = chosen[-1]
    for message in skipped:
        warnings.warn(f"{message}; loaded the checkpoint of {position.describe()}", stacklevel=2)
    history = run_dir.history()
    summary = run_dir.finished_summary()
    if summary is None or (position.epochs, position.step) != (plan.config.epochs, 0):
        loaded = history[position.epochs - 1] if position.epochs and not position.step else {}
        summary = {"epochs_done": len(history), **loaded}
    return RunResult({**summary, "loaded_checkpoint": position.describe()}, plan.network, restored[0])


def _newest_restorable(run_dir: RunDir, epoch: int | None, template) -> tuple[list[Position], Any]:
    """The checkpoints tried, newest first, and the first one restored (None if none could be).

    A save still under way is not tried; ``epoch`` restricts the choice to that epoch's end."""
    positions = [p for p in run_dir.checkpoints() if not run_dir.being_written(p)]
    if epoch is not None:
        positions = [p for p in positions if (p.epochs, p.step) == (epoch, 0)]
        if not positions:
            ends = sorted(p.epochs for p in run_dir.checkpoints() if not p.step)
            raise ConfigError(
                f"{run_dir.path} has no checkpoint of epoch {epoch}; it has {ends or 'none'}", "epoch"
            )
    tried = []
    for position in positions:
        tried.append(position)
        restored = run_dir.restore(position, template)
        if restored is not None:
            return tried, restored
    return tried, None
