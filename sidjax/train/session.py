"""One run's life after its plan: members, run directories, programs, data and state, epoch by epoch.

    session = Session(plan, dataset, Members.of(config), dirs, resume=True)
    session.compile()
    with stop_signals() as stop, session.writing():
        for epoch in session.epochs():
            progress = session.train(epoch, stop)
            session.record(session.evaluate(epoch, progress), stop)
    states = session.host_states()

Benchmarks and tests drive a ``Session`` as ``sidjax.run`` does; without run
directories (``RunDirs({})``) it writes nothing.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable, Iterator
from typing import Any

import jax
from tqdm.auto import tqdm

from sidjax.data import Dataset
from sidjax.state import TrainState
from sidjax.train.directories import RunDirs
from sidjax.train.epoch import Progress, epoch_chunks, fits_on_device, per_member, prepare_data
from sidjax.train.members import Members
from sidjax.train.plan import Plan, state_template
from sidjax.train.programs import init_states, load_states, make_programs, unload_states
from sidjax.train.records import (
    check_diverged,
    diverged_epoch,
    epoch_record,
    label_diagnostics,
    partial_divergence,
    trained_network,
)
from sidjax.train.signals import StopRequest
from sidjax.train.stops import RunInterrupted, RunStopped


class Session:
    """The members (seeds, grid points) of one plan trained together, from a fresh or resumed state to the
    config's last epoch.

    Args:
      plan: from ``make_plan``.
      dataset: the data (its statistics normalise every batch).
      members: the members trained together.
      dirs: their run directories (``RunDirs({})``: none).
      resume: start from the newest checkpoint every member's directory holds.
      log: where messages go.

    Attributes:
      state: the placed training state (stacked along a leading member axis for several members).
      position: the checkpoint resumed from, or None.
      histories: member -> its epoch records so far.
      network: what is trained (``trained_network``), recorded with the run.
      compile_time: seconds ``compile`` took.
    """

    def __init__(self, plan: Plan, dataset: Dataset, members: Members, dirs: RunDirs | None = None, *,
                 resume: bool = False, log: Callable[[str], None] = print):  # fmt: skip
        self.plan, self.members, self.dirs, self.log = plan, members, dirs or RunDirs({}), log
        resident = fits_on_device(plan, dataset)
        self.programs = make_programs(plan, dataset, members, streamed=not resident)
        self.data = prepare_data(plan, dataset, members, resident)
        self.network = trained_network(plan)
        # the data as trained on: the limits applied, before the validation hold-out (the seed's noise apart)
        self.fingerprint = dataset.subset(plan.config.limit_train, plan.config.limit_test).fingerprint()
        if resume:
            self.dirs.check_data(self.fingerprint)
        start = self.dirs.start(state_template(plan), log) if resume else None
        self.position, self.resumed = None, None
        if start is None:
            self.state = init_states(plan, members)
        else:
            states, self.position, partial = start
            self.state = load_states(plan, members, states)
            if self.position.step:
                self.resumed = Progress(self.position.step, partial, self.dirs.partial_seconds(self.position))
        self.first = 1 if self.position is None else self.position.epochs + 1
        self.histories = self.dirs.histories(members, self.first - 1)
        self.compile_time = 0.0

    def epochs(self) -> range:
        """The epochs still to train."""
        return range(self.first, self.plan.config.epochs + 1)

    def compile(self) -> float:
        """Compiles the first chunk ahead, so that epoch times exclude compilation; its seconds."""
        if self.first <= self.plan.config.epochs:
            start = self.resumed.steps if self.resumed else 0
            args = next(iter(epoch_chunks(self.plan, self.data, self.members, self.first, start)))
            self.compile_time = self.programs.chunk.compile(self.state, *args)
        return self.compile_time

    @contextlib.contextmanager
    def writing(self) -> Iterator[None]:
        """Writes the run directories while inside; Ctrl-C becomes ``RunInterrupted``, saying what was kept."""
        self.dirs.begin(
            self.position, {**self.plan.info._asdict(), "fingerprint": self.fingerprint}, self.network
        )
        try:
            yield
        except KeyboardInterrupt:
            recorded = min(len(h) for h in self.histories.values())
            raise RunInterrupted(self.dirs.interrupted(recorded)) from None
        finally:
            self.dirs.close()

    def train(self, epoch: int, stop: StopRequest | None = None, progress: bool = False) -> Progress:
        """Trains ``epoch`` to its end; inside it, checkpoints every ``checkpoint_steps`` steps, and at a
        stop signal checkpoints and raises ``RunStopped``."""
        config, steps = self.plan.config, self.plan.steps_per_epoch
        resumed = self.resumed if epoch == self.first else None
        every = config.checkpoint_steps if config.checkpoint_every and self.dirs else 0
        bar = tqdm(total=steps, initial=resumed.steps if resumed else 0, desc=f"{config.method} epoch {epoch}/{config.epochs}",
                   disable=not progress, leave=False, mininterval=1.0 if os.isatty(2) else 30.0)  # fmt: skip
        saved = {"at": resumed.steps if resumed else 0}

        def pause(done: int) -> bool:  # at a chunk boundary inside the epoch
            return bool(stop) or bool(every) and done // every > saved["at"] // every

        self.state, run = self._train_from(epoch, resumed, pause, bar.update)
        while run.steps < steps:  # paused inside the epoch: checkpoint (unless diverging), then stop or go on
            healthy = self.plan.config.grid or not partial_divergence(self.plan, run.means())
            wrote = healthy and self.dirs.save(
                self.host_states(), epoch - 1, run.steps, run.metrics, run.seconds
            )
            saved["at"] = run.steps
            if stop:
                raise self._stopped(stop, f"in epoch {epoch} at step {run.steps} of {steps}", wrote)
            self.state, run = self._train_from(epoch, run, pause, bar.update)
        bar.close()
        return run

    def _train_from(self, epoch: int, progress: Progress | None, pause: Callable[[int], bool],
                    on_chunk: Callable[[int], None]) -> tuple[Any, Progress]:  # fmt: skip
        """Trains ``epoch`` from ``progress`` (None: its start) to its end, or to the first chunk boundary
        where ``pause(steps_done)`` says so (to checkpoint, or to stop).

        The order of batches comes from ``(seed, epoch)`` alone (``epoch_order``),
        and a resumed epoch continues on the same chunk boundaries, so an epoch
        trained in segments gives the numbers of one trained at once. Chunk i+1 is
        queued before chunk i's metrics are waited for, so the device never waits
        for the host; ``on_chunk(steps)`` reports progress.
        """
        progress, state = progress or Progress(), self.state
        begin = time.perf_counter()
        results, pending, done = [], None, progress.steps
        for chunk in epoch_chunks(self.plan, self.data, self.members, epoch, done):
            state, metrics = self.programs.chunk(state, *chunk)
            if pending is not None:
                jax.block_until_ready(pending[0])
                on_chunk(pending[1])
            pending = (metrics, chunk.length)
            results.append(metrics)
            done += chunk.length
            if done < self.plan.steps_per_epoch and pause(done):
                break
        jax.block_until_ready((state, pending[0]))
        seconds = time.perf_counter() - begin
        on_chunk(pending[1])
        return state, progress.extend(done, per_member(results, self.members), seconds)

    def evaluate(self, epoch: int, run: Progress) -> list[dict[str, Any]]:
        """Each member's record of ``epoch`` (training means, test and validation metrics, times), checked
        for divergence: ``TrainingDiverged``, except in a grid, where a point that diverged is part of the
        record (its summary says so) and the others go on."""
        begin = time.perf_counter()
        tests = self.programs.evaluate(self.state, self.data.test_images, self.data.test_labels)
        extras = label_diagnostics(
            self.plan, self.data, lambda images: self.programs.predict(self.state, images)
        )
        seconds = {"epoch_time_s": run.seconds, "eval_time_s": time.perf_counter() - begin}
        num_test = len(self.data.dataset.test_labels)
        records = []
        for member, mean, test, extra in zip(self.members, run.means(), tests, extras, strict=True):
            records.append(epoch_record(self.plan, epoch, mean, test, num_test, extra, seconds))
            if not self.plan.config.grid:
                check_diverged(self.plan, records[-1], member.seed if self.members.together else None)
        return records

    def record(self, records: list[dict], stop: StopRequest | None = None,
               on_epoch: Callable[[dict], None] | None = None, progress: bool = False) -> None:  # fmt: skip
        """Each member's epoch: its metrics line (and checkpoint where due), the callback, the log line;
        ``RunStopped`` after it if a stop signal arrived."""
        config, epoch = self.plan.config, records[0]["epoch"]
        stopping = bool(stop) and epoch < config.epochs  # a stop signal during the epoch's end
        due = bool(self.dirs) and (self.dirs.checkpoint_due(epoch) or stopping)
        saved = self.dirs.write_epoch(records, self.host_states() if due else None)
        for member, record in zip(self.members, records, strict=True):
            self.histories[member].append(record)
            if on_epoch:
                on_epoch({**record, "seed": member.seed, **dict(member.point)})
            if progress:
                self.log(f"{config.method} {member.describe()} epoch {epoch}: loss {record['train_loss']:.4f}, "
                         f"test acc {record['test_accuracy']:.4f}, {record['epoch_time_s']:.1f}s")  # fmt: skip
            if config.grid and diverged_epoch(self.plan, self.histories[member]) == epoch:
                self.log(f"{config.method} {member.describe()} diverged in epoch {epoch}; the grid goes on")
        if stopping:
            raise self._stopped(stop, f"after epoch {epoch}", saved)

    def host_states(self) -> list[TrainState]:
        """Each member's state on the host, in the network's layout."""
        return unload_states(self.plan, self.members, self.state)

    def _stopped(self, stop: StopRequest, where: str, saved: bool) -> RunStopped:
        return RunStopped(self.dirs.stopped(stop.name, where, saved), stop.signum, saved)
