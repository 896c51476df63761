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
  ``flock`` on ``.<name>.lock`` beside it) before writing anything; a second
  process is refused in one line and writes nothing. The kernel drops the
  lock of a killed process, so a stale claim is taken over, with a message.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import os
import shutil
import socket
import subprocess
import time
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import numpy as np
import orbax.checkpoint as ocp

from sidjax._version import __version__
from sidjax.errors import ConfigError
from sidjax.train.config import TrainConfig

RUN_FILES = ("config.json", "run.json", "metrics.jsonl", "summary.json", "checkpoints")


def provenance() -> dict[str, Any]:
    """The sidjax version and, where sidjax runs from a git checkout, its commit (and whether it was modified)."""
    here = os.path.dirname(os.path.abspath(__file__))
    try:
        commit = subprocess.run(["git", "-C", here, "rev-parse", "HEAD"], capture_output=True, text=True,
                                timeout=10, check=True).stdout.strip()  # fmt: skip
        changed = subprocess.run(["git", "-C", here, "status", "--porcelain", "--untracked-files=no", "--", ".."],
                                 capture_output=True, text=True, timeout=10, check=True).stdout.strip()  # fmt: skip
    except (OSError, subprocess.SubprocessError):
        commit, changed = None, ""
    return {
        "sidjax_version": __version__,
        "git_commit": commit,
        "git_modified": bool(changed) if commit else None,
    }


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
    """

    def __init__(
        self, path: str, config: TrainConfig, log: Callable[[str], None] = print, steps_per_epoch: int = 1
    ):
        self.path = os.path.abspath(path)
        self.config = config
        self.log = log
        self.steps_per_epoch = steps_per_epoch
        self.incoming = self._sibling("incoming")
        self.live: str | None = None  # where this run writes: incoming until the first checkpoint, then path
        self._manager: ocp.CheckpointManager | None = None
        self._lock: int | None = None  # the claim's file descriptor

    def _sibling(self, kind: str) -> str:
        return os.path.join(os.path.dirname(self.path), f".{os.path.basename(self.path)}.{kind}")

    def existing(self) -> list[str]:
        return [f for f in RUN_FILES if os.path.exists(os.path.join(self.path, f))]

    def check(self, *, resume: bool, overwrite: bool) -> None:
        """Refuses, in one line and writing nothing, what this directory cannot take."""
        if os.path.exists(self.path) and not os.path.isdir(self.path):
            raise ConfigError(f"out {self.path} is a file; name a directory", "out")
        ancestor = self.path
        while not os.path.exists(ancestor):
            ancestor = os.path.dirname(ancestor)
        if not os.access(ancestor, os.W_OK | os.X_OK):
            raise ConfigError(
                f"out {self.path}: cannot write in {ancestor} (permission denied); choose another out"
            )
        existing = self.existing()
        if existing and not (resume or overwrite):
            raise ConfigError(
                f"out {self.path} already holds a run ({', '.join(existing)}); resume it (--resume), "
                "replace it (--overwrite), or choose another",
                "out",
            )
        if existing and resume:
            self._check_same_settings()

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
        if before:  # a writer that ends removes its file: this one was killed
            self.log(f"{self.path}: its last writer ({before}) is no longer running; taking the run over")
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()} on {socket.gethostname()}, since {_now()}".encode(), 0)
        self._lock = fd

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
                f"resume: {path} is damaged ({err}); use --overwrite to start again", "resume"
            ) from None
        now = self.config.record()
        free = set(RESUMABLE) | ({"epochs"} if self.config.schedule == "constant" else set())
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
        root = os.path.join(self.path, "checkpoints")
        if not os.path.isdir(root):
            return []
        recorded = len(self.history())
        with _orbax_quiet():
            manager = self._open(self.path)
            try:
                ids = manager.all_steps()
            finally:
                manager.close()
        positions = [self._position(i) for i in ids]
        return sorted(
            (p for p in positions if p.epochs <= recorded), key=lambda p: (p.epochs, p.step), reverse=True
        )

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

    def restore(self, position: Position, template: Any) -> tuple[Any, dict[str, np.ndarray] | None] | None:
        """The checkpoint's state shaped like ``template`` and its partial epoch's per-step metrics
        (None at an epoch's end); None (with a message) if it is damaged or unreadable."""
        damage = self._damage(position.id)
        if damage:
            self.log(f"{self.path}: the checkpoint of {position.describe()} is damaged ({damage}); skipped")
            return None
        abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, template)
        with _orbax_quiet():
            manager = self._open(self.path)
            try:
                args = ocp.args.Composite(state=ocp.args.StandardRestore(abstract))
                state = manager.restore(position.id, args=args).state
            except Exception as err:  # intact files orbax cannot read: e.g. another version's layout
                self.log(f"{self.path}: the checkpoint of {position.describe()} cannot be read "
                         f"({type(err).__name__}); skipped")  # fmt: skip
                return None
            finally:
                manager.close()
        metrics = None
        if position.step:
            with open(os.path.join(self.path, "checkpoints", str(position.id), POSITION)) as f:
                saved = json.load(f)["metrics"]
            metrics = {k: np.asarray(v, np.float32) for k, v in saved.items()}
        return state, metrics

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
        return None if file_digests(step) == expected else "file checksum mismatch"

    def begin(self, position: Position | None, dataset: dict[str, Any]) -> None:
        """Starts writing: continue this directory after ``position``, or a new run beside it (None).

        ``dataset`` (its shape, classes and split sizes) goes into ``run.json``
        with the provenance and the time, so that the run can be loaded
        without its data (``sidjax.load_run``).
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
        names = os.listdir(root) if os.path.isdir(root) else []
        return [self._position(int(n)) for n in names if n.isdigit()]

    @property
    def _checkpointing(self) -> bool:
        # Checkpoints are single-process: a multi-process run's state spans hosts (and orbax's
        # manager waits for every process, while only process 0 writes files).
        return bool(self.config.checkpoint_every) and jax.process_count() == 1

    def checkpoint_due(self, epoch: int) -> bool:
        every = self.config.checkpoint_every
        return self._checkpointing and (epoch % every == 0 or epoch == self.config.epochs)

    def write_epoch(self, record: dict[str, Any], state: Any | None) -> None:
        """Appends the epoch's metrics line, checkpoints ``state`` if given, and moves a new run into place."""
        with open(os.path.join(self.live, "metrics.jsonl"), "a") as f:
            f.write(json.dumps(record) + "\n")
        if state is not None:
            self.save(state, record["epoch"], 0)
        if self.live == self.incoming:
            self._move_into_place()

    def save(
        self,
        state: Any,
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
        self._manager.save(checkpoint_id, args=ocp.args.Composite(state=ocp.args.StandardSave(state)))
        directory = os.path.join(self.live, "checkpoints", str(checkpoint_id))
        position = {"epochs": epochs, "step": step}
        if step:
            position["metrics"] = {k: np.asarray(v).tolist() for k, v in metrics.items()}
            position["seconds"] = seconds
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
        write_atomic(os.path.join(self.live, "summary.json"), json.dumps(summary, indent=2))
        self.close()

    def close(self) -> None:
        """Closes the checkpoint manager (the claim stays until ``release``)."""
        if self._manager:
            self._manager.close()
            self._manager = None

    def release(self) -> None:
        """Gives up the claim, as the last thing a run does."""
        self.close()
        if self._lock is not None:
            os.remove(self._sibling("lock"))  # while still held: a writer waiting on it will see it is gone
            fcntl.flock(self._lock, fcntl.LOCK_UN)
            os.close(self._lock)
            self._lock = None

    @staticmethod
    def _open(directory: str) -> ocp.CheckpointManager:
        options = ocp.CheckpointManagerOptions(max_to_keep=2, enable_async_checkpointing=False, create=True)
        return ocp.CheckpointManager(os.path.join(directory, "checkpoints"), options=options)


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")


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
