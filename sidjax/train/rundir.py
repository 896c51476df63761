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
import fcntl
import hashlib
import json
import logging
import os
import re
import resource
import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import numpy as np
import orbax.checkpoint as ocp

from sidjax._version import __version__
from sidjax.errors import ConfigError
from sidjax.state import TrainState
from sidjax.train.config import TrainConfig
from sidjax.train.layout import CheckpointLayoutError, layout_differences, saved_arrays

RUN_FILES = ("config.json", "run.json", "metrics.jsonl", "summary.json", "checkpoints")


def provenance() -> dict[str, Any]:
    """The sidjax version and, where sidjax runs from a git checkout, its commit and what differs from it.

    Anything in the repository counts (``experiments/`` and its configs, new
    files not yet added included), but ``results/``, which runs write into:
    ``git_modified`` is whether anything differs, ``git_modified_paths`` the
    first 20 paths that do. Without a checkout (an installed package) all
    three are None.
    """
    here = os.path.dirname(os.path.abspath(__file__))
    try:
        top = _git(here, "rev-parse", "--show-toplevel").strip()
        commit = _git(top, "rev-parse", "HEAD").strip()
        status = _git(
            top, "status", "--porcelain", "--untracked-files=normal", "--", ".", ":(exclude)results"
        )
    except (OSError, subprocess.SubprocessError):
        commit, status = None, ""
    paths = [line[3:] for line in status.splitlines() if line.strip()]
    return {
        "sidjax_version": __version__,
        "git_commit": commit,
        "git_modified": bool(paths) if commit else None,
        "git_modified_paths": paths[:20] if commit else None,
    }


def _git(directory: str, *args: str) -> str:
    return subprocess.run(["git", "-C", directory, *args], capture_output=True, text=True, timeout=10,
                          check=True).stdout  # fmt: skip


STALE_CLAIM_S = 600.0  # a claim from another machine, not renewed for this long, is taken over
RENEW_CLAIM_S = 60.0  # how often a writer renews its claim


class RunWriteError(OSError):
    """A run directory could not be written (full disk, quota, file-size limit, ...).

    Attributes:
      what: what could not be written, why, and what is intact (one clause).
      saved: whether an intact checkpoint of the run remains (``resume`` continues there).
    """

    ADVICE = "free space on that disk (or raise the quota or file-size limit)"

    def __init__(self, what: str, saved: bool):
        super().__init__(what)
        self.what, self.saved = what, saved

    def __str__(self) -> str:
        return f"{self.what}; {self.ADVICE} and run again" + (" with resume=True" if self.saved else "")


# Fields that may differ when a run is resumed: they change neither the numbers nor the files.
RESUMABLE = ("checkpoint_every", "checkpoint_steps", "steps_per_chunk", "device_data_mb", "eval_batch_size")
POSITION = "position.json"  # in each checkpoint's directory: where in the run it was taken


class Position(NamedTuple):
    """Where a checkpoint was taken: ``epochs`` finished, then ``step`` steps into the next epoch.

    Attributes:
      id: the checkpoint's directory name (orbax's step).
      epochs: epochs finished.
      step: steps done in epoch ``epochs + 1`` (0 at an epoch's end).
    """

    id: int
    epochs: int
    step: int = 0

    def describe(self) -> str:
        if self.step:
            return f"epoch {self.epochs + 1} at step {self.step}"
        return f"epoch {self.epochs}"


def read_metrics(path: str) -> list[dict[str, Any]]:
    """The epoch records of a ``metrics.jsonl`` file, up to a torn line (a kill mid-write)."""
    records = []
    if not os.path.exists(path):
        return records
    with open(path) as f:
        for line in f:
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                break
            if (
                not line.endswith("\n")
                or not isinstance(record, dict)
                or record.get("epoch") != len(records) + 1
            ):
                break
            records.append(record)
    return records


MANIFEST = "files.sha256.json"  # in each checkpoint's directory, written after orbax's save


def file_digests(directory: str) -> dict[str, str]:
    """sha256 of every file below ``directory`` (its manifest excluded), by relative path."""
    digests = {}
    for root, _, names in os.walk(directory):
        for name in names:
            path = os.path.join(root, name)
            relative = os.path.relpath(path, directory)
            if relative != MANIFEST:
                digests[relative] = _file_sha256(path)
    return digests


def _file_sha256(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def write_atomic(path: str, text: str) -> None:
    tmp = f"{path}.{os.getpid()}.tmp"
    with open(tmp, "w") as f:
        f.write(text)
    os.replace(tmp, path)


class RunDir:
    """One seed's run directory (see the module docstring).

    Args:
      path: the directory.
      config: the run's config, with this directory's one seed.
      log: where messages go (skipped checkpoints, the resume point, a claim taken over).
      steps_per_epoch: the run's steps per epoch (names the checkpoints: ``epochs * steps + step``).
      recipe: what the config cannot record (``Plan.recipe``: your own optimizer, an alpha schedule).
    """

    def __init__(
        self,
        path: str,
        config: TrainConfig,
        log: Callable[[str], None] = print,
        steps_per_epoch: int = 1,
        recipe: dict[str, str] | None = None,
    ):
        self.path = os.path.realpath(path)  # a symlink and its target are one run
        self.config = config
        self.recipe = recipe or {}
        self.log = log
        self.steps_per_epoch = steps_per_epoch
        self.incoming = self._sibling("incoming")
        self.live: str | None = None  # where this run writes: incoming until the first checkpoint, then path
        self._manager: ocp.CheckpointManager | None = None
        self._lock: int | None = None  # the claim's file descriptor
        self._renewing: threading.Event | None = None  # set to stop the claim's renewal

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
        if ancestor == parent and os.path.isdir(self.path) and not _writable(parent):
            raise ConfigError(
                f"out {self.path}: its parent {parent} is read-only, and a run keeps its lock file (and a new "
                f"run its staging directory) beside its directory; name a directory inside it, e.g. "
                f"{os.path.join(self.path, 'run')}",
                "out",
            )
        for where in (ancestor, self.path):
            if os.path.isdir(where) and not _writable(where):
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
            self._check_same_settings()
            recorded = len(self.history())
            if recorded > self.config.epochs:
                raise ConfigError(
                    f"resume: {self.path} already holds {recorded} finished epochs, more than the "
                    f"{self.config.epochs} asked for; nothing was changed: ask for {recorded} or more epochs "
                    "to continue it, or load it with sidjax.load_run",
                    "resume",
                )

    def claim(self) -> None:
        """Makes this process the directory's only writer, or refuses in one line (writing nothing).

        The claim is an exclusive ``flock`` on ``.<name>.lock`` beside the
        directory, held until ``release`` (which removes the file); the file
        names the holder. The kernel releases the lock of a process that dies,
        even by SIGKILL, and its file stays: such a stale claim is taken over,
        and said so.
        """
        lock = self._sibling("lock")
        os.makedirs(os.path.dirname(lock), exist_ok=True)
        while True:
            fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                holder = os.pread(fd, 4096, 0).decode(errors="replace").strip() or "another process"
                os.close(fd)
                raise ConfigError(
                    f"out {self.path} is being written by another sidjax process ({holder}); wait for it to "
                    "finish or stop it (two writers would corrupt the run), or choose another out",
                    "out",
                ) from None
            with contextlib.suppress(FileNotFoundError):
                if os.fstat(fd).st_ino == os.stat(lock).st_ino:
                    break
            os.close(fd)  # we locked the file of a writer that had just released and removed it: again
        before = os.pread(fd, 4096, 0).decode(errors="replace").strip()
        if before:  # a writer that ends removes its file: this one was killed, or runs elsewhere
            try:
                self._take_over(before, time.time() - os.fstat(fd).st_mtime)
            except ConfigError:
                fcntl.flock(fd, fcntl.LOCK_UN)
                os.close(fd)
                raise
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()} on {socket.gethostname()}, since {_now()}".encode(), 0)
        self._lock = fd
        self._renewing = threading.Event()
        threading.Thread(target=_renew, args=(fd, self._renewing), daemon=True, name="sidjax-claim").start()

    def _take_over(self, holder: str, age: float) -> None:
        """Takes over the claim of ``holder``, last renewed ``age`` seconds ago, or refuses.

        On this machine the free ``flock`` proves the holder is gone. A holder on
        another machine may still be running (its lock is not seen from here):
        it is refused until its claim has gone ``STALE_CLAIM_S`` without renewal.
        """
        host = re.match(r"pid \d+ on (\S+),", holder)
        if host and host.group(1) != socket.gethostname() and age < STALE_CLAIM_S:
            raise ConfigError(
                f"out {self.path} is claimed by {host.group(0)[:-1]} (another machine), renewed {age:.0f} s ago; "
                "sidjax cannot see that process from here: wait for it to finish, or, if it is gone, run again "
                f"once its claim is {STALE_CLAIM_S / 60:.0f} minutes old, or delete {self._sibling('lock')}",
                "out",
            )
        why = (
            "is no longer running"
            if not host or host.group(1) == socket.gethostname()
            else (f"has not renewed its claim for {age / 60:.0f} minutes")
        )
        self.log(f"{self.path}: its last writer ({holder}) {why}; taking the run over")

    def _check_same_settings(self) -> None:
        path = os.path.join(self.path, "config.json")
        try:
            with open(path) as f:
                saved = TrainConfig.from_record(json.load(f)).record()
        except FileNotFoundError:
            raise ConfigError(
                f"resume: {self.path} has no config.json; it was not written by sidjax"
            ) from None
        except (json.JSONDecodeError, ConfigError, TypeError) as err:
            raise ConfigError(
                f"resume: {path} is damaged ({err}); use overwrite=True to start again", "resume"
            ) from None
        trained_with = self.run_info().get("recipe", {})
        if trained_with != self.recipe:
            raise ConfigError(
                f"resume: {self.path} was trained with {describe_recipe(trained_with)}, and this run is given "
                f"{describe_recipe(self.recipe)}; resume it with the same (run's tx and alpha arguments)",
                "resume",
            )
        now = self.config.record()
        constant = (
            self.config.schedule == "constant" and "tx" not in self.recipe
        )  # your tx may decay over them
        free = set(RESUMABLE) | ({"epochs"} if constant else set())
        changed = [k for k in now if k not in free and saved.get(k) != now[k]]
        if changed:
            raise ConfigError(
                f"resume: {self.path} holds a run with other settings "
                f"({', '.join(f'{k}={saved.get(k)!r}' for k in changed)}); use the same settings or another out",
                "resume",
            )

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

    def checkpoints(self) -> list[Position]:
        """Checkpoints whose finished epochs the metrics record, newest first."""
        recorded = len(self.history())
        positions = self._all_positions()  # orbax moves a finished save into a directory named by its step
        return sorted(
            (p for p in positions if p.epochs <= recorded), key=lambda p: (p.epochs, p.step), reverse=True
        )

    def being_written(self, position: Position) -> bool:
        """The checkpoint has no manifest yet while its run's writer holds the claim: a save under way."""
        step = os.path.join(self.path, "checkpoints", str(position.id))
        return os.path.exists(self._sibling("lock")) and not os.path.exists(os.path.join(step, MANIFEST))

    def exists(self, position: Position) -> bool:
        """The checkpoint is still there (a writer keeps only the newest two)."""
        return os.path.isdir(os.path.join(self.path, "checkpoints", str(position.id)))

    def _position(self, checkpoint_id: int) -> Position:
        try:
            with open(os.path.join(self.path, "checkpoints", str(checkpoint_id), POSITION)) as f:
                saved = json.load(f)
            return Position(checkpoint_id, int(saved["epochs"]), int(saved["step"]))
        except (FileNotFoundError, json.JSONDecodeError, KeyError, TypeError, ValueError):
            return Position(checkpoint_id, checkpoint_id)  # older sidjax: checkpoints named by epoch

    def intact(self, position: Position) -> bool:
        """The checkpoint's files match its manifest."""
        return self._damage(position.id) is None

    def restore(
        self, position: Position, template: TrainState
    ) -> tuple[TrainState, dict[str, np.ndarray] | None] | None:
        """The checkpoint's state shaped like ``template`` and its partial epoch's per-step metrics
        (None at an epoch's end); None (with a message) if it is damaged or unreadable."""
        damage = self._damage(position.id)
        if damage:
            self.log(f"{self.path}: the checkpoint of {position.describe()} is damaged ({damage}); skipped")
            return None
        abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, template.saved())  # the checkpoint's form
        state_dir = os.path.join(self.path, "checkpoints", str(position.id), "state")
        # this checkpoint alone: a manager would list every step, which a writer may be removing
        with _orbax_quiet(), ocp.StandardCheckpointer() as checkpointer:  # one reader for layout and arrays
            try:
                differences = layout_differences(saved_arrays(checkpointer, state_dir), abstract)
                if differences and not (self.exists(position) and self.intact(position)):
                    self.log(
                        f"{self.path}: the checkpoint of {position.describe()} was removed while it was read"
                    )
                    return None  # a writer keeps the newest two: what was read was half gone
                if differences:
                    raise CheckpointLayoutError(
                        f"{self.path}: the checkpoint of {position.describe()} holds another network or "
                        f"optimizer than the one given ({differences}); give the model (and tx) it was "
                        "trained with",
                        "model",
                    )
                state = TrainState.from_saved(checkpointer.restore(state_dir, abstract))
            except CheckpointLayoutError:
                raise
            except Exception as err:  # intact files orbax cannot read, or files removed while read
                self.log(f"{self.path}: the checkpoint of {position.describe()} cannot be read "
                         f"({type(err).__name__}); skipped")  # fmt: skip
                return None
        metrics = None
        if position.step:
            try:
                with open(os.path.join(self.path, "checkpoints", str(position.id), POSITION)) as f:
                    saved = json.load(f)["metrics"]
            except FileNotFoundError:
                self.log(
                    f"{self.path}: the checkpoint of {position.describe()} was removed while it was read"
                )
                return None
            metrics = {k: np.asarray(v, np.float32) for k, v in saved.items()}
        return state, metrics

    def newest_restorable(
        self, epoch: int | None, template: TrainState, skipped: list[str]
    ) -> tuple[Position, TrainState]:
        """The newest checkpoint that restores (``epoch``: that epoch's end), and its state.

        A save still under way is not tried. The writer may remove a
        checkpoint (file by file) while it is read: then it looks again.
        ``skipped`` receives a message per checkpoint passed over; with none
        restorable, ``ConfigError`` lists them.
        """
        for _ in range(5):
            skipped.clear()
            tried, restored = self._first_restorable(epoch, template)
            if restored is not None:
                return tried[-1], restored[0]
            if all(self.exists(p) and self.intact(p) for p in tried):
                break
        raise ConfigError(f"{self.path} holds no intact checkpoint to load ({'; '.join(skipped) or 'none'})")

    def _first_restorable(self, epoch: int | None, template: TrainState) -> tuple[list[Position], Any]:
        positions = [p for p in self.checkpoints() if not self.being_written(p)]
        if epoch is not None:
            positions = [p for p in positions if (p.epochs, p.step) == (epoch, 0)]
            if not positions:
                ends = sorted(p.epochs for p in self.checkpoints() if not p.step)
                raise ConfigError(
                    f"{self.path} has no checkpoint of epoch {epoch}; it has {ends or 'none'}", "epoch"
                )
        tried = []
        for position in positions:
            tried.append(position)
            restored = self.restore(position, template)
            if restored is not None:
                return tried, restored
        return tried, None

    def partial_seconds(self, position: Position) -> float:
        """The training time of the steps before a checkpoint inside an epoch."""
        try:
            with open(os.path.join(self.path, "checkpoints", str(position.id), POSITION)) as f:
                return float(json.load(f).get("seconds", 0.0))
        except (FileNotFoundError, json.JSONDecodeError, TypeError, ValueError):
            return 0.0

    def _damage(self, checkpoint_id: int) -> str | None:
        """Why the checkpoint's files cannot be trusted, or None when they match their manifest."""
        step = os.path.join(self.path, "checkpoints", str(checkpoint_id))
        try:
            with open(os.path.join(step, MANIFEST)) as f:
                expected = json.load(f)
        except FileNotFoundError:
            return "no checksum manifest: the run was stopped while saving it"
        except (json.JSONDecodeError, UnicodeDecodeError):
            return "its checksum manifest is unreadable"
        try:
            return None if file_digests(step) == expected else "file checksum mismatch"
        except FileNotFoundError:  # removed while it was read (a writer keeps the newest two)
            return "removed while it was read"

    def begin(
        self, position: Position | None, dataset: dict[str, Any], network: dict[str, Any] | None = None
    ) -> None:
        """Starts writing: continue this directory after ``position``, or a new run beside it (None).

        ``dataset`` (its shape, classes and split sizes) goes into ``run.json``
        with the provenance and the time, so that the run can be loaded
        without its data (``sidjax.load_run``); so does ``network``, what is
        trained (``trained_network``).
        """
        now = _now()
        if position is not None:
            self.live = self.path
            self._drop_checkpoints_after(position)
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

    def _drop_checkpoints_after(self, position: Position) -> None:
        """Removes the checkpoints after ``position``: their steps are about to run again (a damaged one among them).

        Orbax does not save a step that already exists: a damaged checkpoint left
        in place would outlive the steps that replace it.
        """
        for later in self._all_positions():
            if (later.epochs, later.step) > (position.epochs, position.step):
                shutil.rmtree(os.path.join(self.path, "checkpoints", str(later.id)))

    def _all_positions(self) -> list[Position]:
        root = os.path.join(self.path, "checkpoints")
        try:
            names = os.listdir(root)
        except (FileNotFoundError, NotADirectoryError):
            names = []
        return [self._position(int(n)) for n in names if n.isdigit()]

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
        with self._writing(what, discard=directory), _orbax_quiet():
            _room_for(self.live, sum(int(np.asarray(x).nbytes) for x in jax.tree.leaves(state)))
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

    def finish(self, summary: dict[str, Any]) -> None:
        with self._writing("summary.json"):
            write_atomic(os.path.join(self.live, "summary.json"), json.dumps(summary, indent=2))
        self.close()

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
        cause = _io_cause(err)
        if self.live != self.path:
            kept, saved = "nothing was saved (the run had not finished its first epoch)", False
        else:
            intact = next((p for p in self.checkpoints() if self.intact(p)), None)
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
        if self._renewing is not None:
            self._renewing.set()
            self._renewing = None
        if self._lock is not None:
            os.remove(self._sibling("lock"))  # while still held: a writer waiting on it will see it is gone
            fcntl.flock(self._lock, fcntl.LOCK_UN)
            os.close(self._lock)
            self._lock = None

    @staticmethod
    def _open(directory: str) -> ocp.CheckpointManager:
        options = ocp.CheckpointManagerOptions(max_to_keep=2, enable_async_checkpointing=False, create=True)
        return ocp.CheckpointManager(os.path.join(directory, "checkpoints"), options=options)


def describe_recipe(recipe: dict[str, str]) -> str:
    """``{"tx": "custom", "alpha": "schedule"}`` -> 'your own optimizer (tx) and alpha (alpha: schedule)'."""
    parts = (["your own optimizer (tx)"] if "tx" in recipe else []) + (
        [f"your own alpha ({recipe['alpha']})"] if "alpha" in recipe else []
    )
    return " and ".join(parts) or "the config's optimizer and alpha"


def _sibling(path: str, kind: str) -> str:
    """``.<name>.<kind>`` beside the run directory ``path``: its lock, a new run's staging directory."""
    return os.path.join(os.path.dirname(path), f".{os.path.basename(path)}.{kind}")


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")


def _writable(directory: str) -> bool:
    """The directory can take new files (``access`` also answers a read-only file system)."""
    return os.access(directory, os.W_OK | os.X_OK)


def _room_for(directory: str, nbytes: int) -> None:
    """Raises ``OSError`` before a checkpoint of ``nbytes`` is written where it cannot fit: a failure
    inside orbax's writer threads cannot be turned into one line."""
    limit = resource.getrlimit(resource.RLIMIT_FSIZE)[0]
    if limit != resource.RLIM_INFINITY and limit < nbytes:
        raise OSError(f"the file-size limit (ulimit -f) is {limit} bytes; the checkpoint needs {nbytes}")
    free = shutil.disk_usage(directory).free
    if free < nbytes:
        raise OSError(f"No space left on device: {free} bytes free, the checkpoint needs {nbytes}")


def _renew(fd: int, stop: threading.Event) -> None:
    """Renews a claim (its lock file's modification time) until ``stop`` is set."""
    while not stop.wait(RENEW_CLAIM_S):
        with contextlib.suppress(OSError):  # the claim was just released
            os.utime(fd)


def _io_cause(err: Exception) -> str:
    """The operating system's words for a failed write, e.g. ``No space left on device``."""
    if isinstance(err, OSError) and err.strerror:
        return err.strerror
    if isinstance(err, OSError) and err.args:
        return str(err.args[0])
    found = re.search(r"([^:\[\]]+) \[os_error_code='?\d+'?\]", str(err))  # tensorstore's form
    if found:
        return found.group(1).strip()
    first = (str(err).splitlines() or [type(err).__name__])[0]
    return first if len(first) <= 160 else first[:157] + "..."


@contextlib.contextmanager
def _orbax_quiet():
    """Orbax logs each unreadable checkpoint file through absl before it raises; the run says it once."""
    logger = logging.getLogger("absl")
    level = logger.level
    logger.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        logger.setLevel(level)
