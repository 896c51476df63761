"""A run's directory: config.json, metrics.jsonl, checkpoints, summary.json; resume and faults.

Guarantees:

* Nothing is written until the run has really started: a new run is built
  in a hidden sibling (``.<name>.incoming``) and moved into place once its
  first epoch is recorded and checkpointed. A failed start leaves the
  directory as it was; ``overwrite`` replaces an old run only at that moment.
* Every checkpoint carries a manifest of its files' sha256, written after
  orbax's save. A checkpoint whose files do not match it, or that has none
  (a kill before it was written), is skipped for an earlier intact one, with
  a message, and never handed to orbax (a damaged array file made orbax's
  reader fail with a trail of asyncio tracebacks at exit) or trained on.
* Finished epochs are never thrown away: ``resume`` refuses (one line, nothing
  changed) a directory whose epochs have no checkpoint to continue from. A
  torn last line of ``metrics.jsonl`` (a kill mid-write) is dropped and its
  epoch run again.
* Checkpoints may also be taken inside an epoch (every ``checkpoint_steps``
  steps, and when a stop signal arrives): each records its position (epochs
  finished, steps into the next) and the partial epoch's per-step metrics,
  so a resume continues mid-epoch to the numbers of an uninterrupted run.
* One writer per run: a process claims the directory (an exclusive
  ``flock`` on ``.<name>.lock`` beside it, the directory's path resolved, so
  a symlink names the same run) before writing anything; a second process is
  refused in one line and writes nothing. The kernel drops the lock of a
  killed process, so a stale claim is taken over, with a message. A claim
  made on another machine cannot be checked from here (``flock`` does not
  reach across machines on many shared file systems): its writer renews it
  every minute, and it is honoured until it has gone ``STALE_CLAIM_S``
  without renewal.
* A write that fails (a full disk, a quota, a file-size limit) ends the run
  with one line (``RunWriteError``): what could not be written, what is
  intact, what to do. The half-written checkpoint is removed; earlier ones
  are untouched, so ``resume`` continues from the last intact one.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import shutil
import time
from collections.abc import Callable
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp
from orbax.checkpoint import checkpoint_managers

from sidjax.errors import ConfigError
from sidjax.state import TrainState
from sidjax.train.checkpoints import POSITION, Position, StoredCheckpoints
from sidjax.train.claim import STALE_CLAIM_S, Claim
from sidjax.train.config import TrainConfig
from sidjax.train.files import (
    MANIFEST,
    RunWriteError,
    file_digests,
    io_cause,
    orbax_quiet,
    read_metrics,
    room_for,
    writable,
    write_atomic,
)
from sidjax.train.provenance import provenance, with_start_commit
from sidjax.train.resuming import check_same_run

__all__ = ["STALE_CLAIM_S", "Position", "RunDir", "RunWriteError", "provenance", "read_metrics"]

RUN_FILES = ("config.json", "run.json", "metrics.jsonl", "summary.json", "checkpoints")


class RunDir:
    """One seed's run directory (see the module docstring).

    Args:
      path: the directory.
      config: the run's config, with this directory's one seed.
      log: where messages go (skipped checkpoints, the resume point, a claim taken over).
      steps_per_epoch: the run's steps per epoch (names the checkpoints: ``epochs * steps + step``).
      recipe: what the config cannot record (``Plan.recipe``: your own optimizer, an alpha schedule).
      allow_changed_method: resume with another rule than the one recorded (a warning), instead of refusing.
    """

    def __init__(
        self,
        path: str,
        config: TrainConfig,
        log: Callable[[str], None] = print,
        steps_per_epoch: int = 1,
        recipe: dict[str, Any] | None = None,
        allow_changed_method: bool = False,
    ):
        self.path = os.path.realpath(path)  # a symlink and its target are one run
        self.allow_changed_method = allow_changed_method
        self.config = config
        self.recipe = recipe or {}
        self.log = log
        self.steps_per_epoch = steps_per_epoch
        self.incoming = self._sibling("incoming")
        self.live: str | None = None  # where this run writes: incoming until the first checkpoint, then path
        self._manager: ocp.CheckpointManager | None = None
        self._claim = Claim(self.path, self._sibling("lock"), log)
        self.stored = StoredCheckpoints(self.path, self._sibling("lock"), log, lambda: len(self.history()))

    def _sibling(self, kind: str) -> str:
        return _sibling(self.path, kind)

    def existing(self) -> list[str]:
        return [f for f in RUN_FILES if os.path.exists(os.path.join(self.path, f))]

    def check(self, *, resume: bool, overwrite: bool) -> None:
        """Refuses, in one line and writing nothing, what this directory cannot take."""
        if os.path.exists(self.path) and not os.path.isdir(self.path):
            raise ConfigError(f"out {self.path} is a file; name a directory", "out")
        parent = os.path.dirname(self.path)
        ancestor = parent  # where the claim and a new run's staging directory are written
        while not os.path.exists(ancestor):
            ancestor = os.path.dirname(ancestor)
        if ancestor == parent and os.path.isdir(self.path) and not writable(parent):
            raise ConfigError(
                f"out {self.path}: its parent {parent} is read-only, and a run keeps its lock file (and a new "
                f"run its staging directory) beside its directory; name a directory inside it, e.g. "
                f"{os.path.join(self.path, 'run')}",
                "out",
            )
        for where in (ancestor, self.path):
            if os.path.isdir(where) and not writable(where):
                raise ConfigError(
                    f"out {self.path}: cannot write in {where} (permission denied); choose another out",
                    "out",
                )
        existing = self.existing()
        if existing and not (resume or overwrite):
            raise ConfigError(
                f"out {self.path} already holds a run ({', '.join(existing)}); resume it (resume=True), "
                "replace it (overwrite=True), or choose another",
                "out",
            )
        if existing and resume:
            check_same_run(self.path, self.config, self.recipe, self.run_info(), self.allow_changed_method,
                           self.log)  # fmt: skip
            recorded = len(self.history())
            if recorded > self.config.epochs:
                raise ConfigError(
                    f"resume: {self.path} already holds {recorded} finished epochs, more than the "
                    f"{self.config.epochs} asked for; nothing was changed: ask for {recorded} or more epochs "
                    "to continue it, or load it with sidjax.load_run",
                    "resume",
                )

    def claim(self) -> None:
        """Makes this process the directory's only writer, or refuses in one line (writing nothing);
        ``release`` gives the claim up (``sidjax.train.claim``)."""
        self._claim.acquire()

    def finished_summary(self) -> dict[str, Any] | None:
        """The summary of a finished run of this config's length, else None."""
        path = os.path.join(self.path, "summary.json")
        if not os.path.exists(path):
            return None
        try:
            with open(path) as f:
                summary = json.load(f)
        except json.JSONDecodeError:
            return None  # torn by a kill: the run is finished again from its last checkpoint
        return summary if summary.get("epochs") == self.config.epochs else None

    def history(self) -> list[dict[str, Any]]:
        return read_metrics(os.path.join(self.path, "metrics.jsonl"))

    @staticmethod
    def read_config(path: str) -> TrainConfig:
        """The config of the run in ``path`` (``ConfigError`` where there is none)."""
        file = os.path.join(path, "config.json")
        if os.path.isfile(path):
            raise ConfigError(f"{path} is a file; give the run's directory (the one that holds config.json)")
        if not os.path.exists(path):
            staged = _sibling(os.path.realpath(path), "incoming")
            why = (
                "a run there has not finished its first epoch yet"
                if os.path.isdir(staged)
                else "no such directory"
            )
            raise ConfigError(f"{path} holds no run: {why}")
        try:
            with open(file) as f:
                return TrainConfig.from_record(json.load(f))
        except FileNotFoundError:
            raise ConfigError(f"{path} is not a run directory: it has no config.json") from None
        except (json.JSONDecodeError, TypeError) as err:
            raise ConfigError(f"{file} is damaged ({err})") from None

    def run_info(self) -> dict[str, Any]:
        """``run.json``: provenance, start and resumes, the dataset's shape and sizes ({} for older runs)."""
        try:
            with open(os.path.join(self.path, "run.json")) as f:
                return json.load(f)
        except (FileNotFoundError, json.JSONDecodeError):
            return {}

    def begin(
        self, position: Position | None, dataset: dict[str, Any], network: dict[str, Any] | None = None
    ) -> None:
        """Starts writing: continue this directory after ``position``, or a new run beside it (None).

        ``dataset`` (its shape, classes and split sizes) goes into ``run.json``
        with the provenance and the time, so that the run can be loaded
        without its data (``sidjax.load_run``); so does ``network``, what is
        trained (``trained_network``).
        """
        now = time.strftime("%Y-%m-%dT%H:%M:%S%z")
        if position is not None:
            self.live = self.path
            self.stored.drop_after(position)
            # the settings it continues with (a longer run, another chunk size): config.json says what ran
            write_atomic(os.path.join(self.path, "config.json"), json.dumps(self.config.record(), indent=2))
            history = self.history()[: position.epochs]
            write_atomic(
                os.path.join(self.path, "metrics.jsonl"), "".join(json.dumps(r) + "\n" for r in history)
            )
            summary = os.path.join(self.path, "summary.json")
            if os.path.exists(summary):
                os.remove(summary)  # the run is longer now; written again at its end
            info = self.run_info() or {"dataset": dataset}
            info["resumed"] = [
                *info.get("resumed", []),
                {"at": now, "from": position.describe(), **provenance()},
            ]
        else:
            shutil.rmtree(self.incoming, ignore_errors=True)  # a start that failed before
            os.makedirs(self.incoming)
            self.live = self.incoming
            write_atomic(
                os.path.join(self.incoming, "config.json"), json.dumps(self.config.record(), indent=2)
            )
            info = {**provenance(), "started": now, "dataset": dataset}
            if network is not None:
                info["network"] = network
            if self.recipe:
                info["recipe"] = self.recipe
        write_atomic(os.path.join(self.live, "run.json"), json.dumps(info, indent=2))
        self._manager = self._open(self.live) if self._checkpointing else None

    @property
    def _checkpointing(self) -> bool:
        # Checkpoints are single-process: a multi-process run's state spans hosts (and orbax's
        # manager waits for every process, while only process 0 writes files).
        return bool(self.config.checkpoint_every) and jax.process_count() == 1

    def checkpoint_due(self, epoch: int) -> bool:
        every = self.config.checkpoint_every
        return self._checkpointing and (epoch % every == 0 or epoch == self.config.epochs)

    def write_epoch(self, record: dict[str, Any], state: TrainState | None) -> bool:
        """Appends the epoch's metrics line, checkpoints ``state`` if given, and moves a new run into place;
        whether a checkpoint was saved."""
        with (
            self._writing(f"epoch {record['epoch']}'s metrics"),
            open(os.path.join(self.live, "metrics.jsonl"), "a") as f,
        ):
            f.write(json.dumps(record) + "\n")
        saved = state is not None and self.save(state, record["epoch"], 0)
        if self.live == self.incoming:
            self._move_into_place()
        return saved

    def save(
        self,
        state: TrainState,
        epochs: int,
        step: int,
        metrics: dict[str, np.ndarray] | None = None,
        seconds: float = 0.0,
    ) -> bool:
        """Checkpoints ``state`` at ``step`` steps after ``epochs`` finished epochs, with the partial
        epoch's per-step ``metrics`` and training ``seconds``; a new run is moved into place (it is
        under way). False when this run keeps no checkpoints."""
        if not self._manager:
            return False
        checkpoint_id = epochs * self.steps_per_epoch + step
        directory = os.path.join(self.live, "checkpoints", str(checkpoint_id))
        position = {"epochs": epochs, "step": step}
        if step:
            position["metrics"] = {k: np.asarray(v).tolist() for k, v in metrics.items()}
            position["seconds"] = seconds
        what = f"the checkpoint of {Position(checkpoint_id, epochs, step).describe()}"
        with self._writing(what, discard=directory), orbax_quiet():
            room_for(self.live, sum(int(np.asarray(x).nbytes) for x in jax.tree.leaves(state)))
            saved = ocp.args.StandardSave(state.saved())
            self._manager.save(checkpoint_id, args=ocp.args.Composite(state=saved))
            write_atomic(os.path.join(directory, POSITION), json.dumps(position))
            write_atomic(os.path.join(directory, MANIFEST), json.dumps(file_digests(directory)))
        if self.live == self.incoming:
            self._move_into_place()
        return True

    def _move_into_place(self) -> None:
        if self._manager:
            self._manager.close()
        old = self._sibling("replaced")
        if os.path.exists(self.path):
            shutil.rmtree(old, ignore_errors=True)
            os.replace(self.path, old)
        os.replace(self.incoming, self.path)
        shutil.rmtree(old, ignore_errors=True)
        self.live = self.path
        self._manager = self._open(self.path) if self._checkpointing else None

    def finish(self, summary: dict[str, Any]) -> dict[str, Any]:
        """Writes ``summary.json`` with the commit the run started from (``with_start_commit``); returns it."""
        summary = with_start_commit(summary, self.run_info())
        with self._writing("summary.json"):
            write_atomic(os.path.join(self.live, "summary.json"), json.dumps(summary, indent=2))
        self.close()
        return summary

    @contextlib.contextmanager
    def _writing(self, what: str, discard: str | None = None):
        """Turns a failed write into one ``RunWriteError`` line; ``discard`` (a half-written
        checkpoint's directory, and orbax's temporary ones of that step) is removed first."""
        try:
            yield
        except (OSError, ValueError, RuntimeError) as err:  # tensorstore reports I/O as ValueError
            manager, self._manager = self._manager, None  # it may be mid-save: dropped, not closed
            with contextlib.suppress(Exception):
                if manager:
                    manager.close()
            if discard:
                for name in os.listdir(os.path.dirname(discard)):
                    if name == os.path.basename(discard) or name.startswith(os.path.basename(discard) + "."):
                        shutil.rmtree(os.path.join(os.path.dirname(discard), name), ignore_errors=True)
            raise self._write_failed(what, err) from None

    def _write_failed(self, what: str, err: Exception) -> RunWriteError:
        cause = io_cause(err)
        if self.live != self.path:
            kept, saved = "nothing was saved (the run had not finished its first epoch)", False
        else:
            intact = next((p for p in self.stored.checkpoints() if self.stored.intact(p)), None)
            saved = intact is not None
            kept = (
                f"the checkpoint of {intact.describe()} is intact"
                if saved
                else "no intact checkpoint is left"
            )
        return RunWriteError(f"could not write {what} in {self.path} ({cause}); {kept}", saved)

    def close(self) -> None:
        """Closes the checkpoint manager (the claim stays until ``release``)."""
        if self._manager:
            self._manager.close()
            self._manager = None

    def release(self) -> None:
        """Gives up the claim, as the last thing a run does; a new run that never got under way
        (no first checkpoint: it diverged, failed or was interrupted) leaves no staging directory."""
        self.close()
        if self.live == self.incoming:
            shutil.rmtree(self.incoming, ignore_errors=True)
            self.live = None
        self._claim.release()

    def _open(self, directory: str) -> ocp.CheckpointManager:
        """The newest two checkpoints are kept, and always the newest at an epoch's end: checkpoints inside
        an epoch (``checkpoint_steps``, a stop signal) never rotate out the last finished epoch's."""
        keep = checkpoint_managers.AnyPreservationPolicy(
            [checkpoint_managers.LatestN(2), LatestEpochEnd(self.steps_per_epoch)]
        )
        options = ocp.CheckpointManagerOptions(
            enable_async_checkpointing=False, create=True, preservation_policy=keep
        )
        return ocp.CheckpointManager(os.path.join(directory, "checkpoints"), options=options)


@dataclasses.dataclass
class LatestEpochEnd:
    """Preserves the newest checkpoint taken at an epoch's end (its id a multiple of ``steps_per_epoch``)."""

    steps_per_epoch: int

    def should_preserve(self, checkpoints, *, context) -> list[bool]:
        ends = [i for i, c in enumerate(checkpoints) if c.step % self.steps_per_epoch == 0]
        return [bool(ends) and i == ends[-1] for i in range(len(checkpoints))]


def _sibling(path: str, kind: str) -> str:
    """``.<name>.<kind>`` beside the run directory ``path``: its lock, a new run's staging directory."""
    return os.path.join(os.path.dirname(path), f".{os.path.basename(path)}.{kind}")
