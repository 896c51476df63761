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
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import shutil
import subprocess
import time
from collections.abc import Callable
from typing import Any

import jax
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
RESUMABLE = ("checkpoint_every", "steps_per_chunk", "device_data_mb", "eval_batch_size")


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
      log: where messages go (skipped checkpoints, the resume point).
    """

    def __init__(self, path: str, config: TrainConfig, log: Callable[[str], None] = print):
        self.path = os.path.abspath(path)
        self.config = config
        self.log = log
        self.incoming = os.path.join(os.path.dirname(self.path), f".{os.path.basename(self.path)}.incoming")
        self.live: str | None = None  # where this run writes: incoming until the first epoch, then path
        self._manager: ocp.CheckpointManager | None = None

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

    def checkpoint_epochs(self) -> list[int]:
        """Epochs with a checkpoint that the metrics cover, newest first."""
        if not os.path.isdir(os.path.join(self.path, "checkpoints")):
            return []
        recorded = len(self.history())
        with _orbax_quiet():
            manager = self._open(self.path)
            try:
                return sorted((e for e in manager.all_steps() if e <= recorded), reverse=True)
            finally:
                manager.close()

    def restore(self, epoch: int, template: Any) -> Any | None:
        """The checkpoint of ``epoch`` shaped like ``template``, or None (with a message) if damaged."""
        damage = self._damage(epoch)
        if damage:
            self.log(f"{self.path}: the checkpoint of epoch {epoch} is damaged ({damage}); skipped")
            return None
        abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, template)
        with _orbax_quiet():
            manager = self._open(self.path)
            try:
                args = ocp.args.Composite(state=ocp.args.StandardRestore(abstract))
                return manager.restore(epoch, args=args).state
            except Exception as err:  # intact files orbax cannot read: e.g. another version's layout
                self.log(f"{self.path}: the checkpoint of epoch {epoch} cannot be read ({type(err).__name__}); "
                         "skipped")  # fmt: skip
                return None
            finally:
                manager.close()

    def _damage(self, epoch: int) -> str | None:
        """Why the checkpoint's files cannot be trusted, or None when they match their manifest."""
        step = os.path.join(self.path, "checkpoints", str(epoch))
        try:
            with open(os.path.join(step, MANIFEST)) as f:
                expected = json.load(f)
        except FileNotFoundError:
            return "no checksum manifest: the run was stopped while saving it"
        except (json.JSONDecodeError, UnicodeDecodeError):
            return "its checksum manifest is unreadable"
        return None if file_digests(step) == expected else "file checksum mismatch"

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

    def intact(self, epoch: int) -> bool:
        """The checkpoint of ``epoch`` matches its manifest."""
        return self._damage(epoch) is None

    def begin(self, epoch: int, dataset: dict[str, Any]) -> None:
        """Starts writing: continue this directory after ``epoch`` (> 0), or a new run beside it (0).

        ``dataset`` (its shape, classes and split sizes) goes into ``run.json``
        with the provenance and the time, so that the run can be loaded
        without its data (``sidjax.load_run``).
        """
        now = time.strftime("%Y-%m-%dT%H:%M:%S%z")
        if epoch:
            self.live = self.path
            self._drop_checkpoints_after(epoch)
            history = self.history()[:epoch]
            write_atomic(
                os.path.join(self.path, "metrics.jsonl"), "".join(json.dumps(r) + "\n" for r in history)
            )
            summary = os.path.join(self.path, "summary.json")
            if os.path.exists(summary):
                os.remove(summary)  # the run is longer now; written again at its end
            info = self.run_info() or {"dataset": dataset}
            info["resumed"] = [*info.get("resumed", []), {"at": now, "after_epoch": epoch, **provenance()}]
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

    def _drop_checkpoints_after(self, epoch: int) -> None:
        """Removes the checkpoints of the epochs about to run again (a damaged one among them).

        Orbax does not save a step that already exists: a damaged checkpoint left
        in place would outlive the epoch that replaces it.
        """
        root = os.path.join(self.path, "checkpoints")
        for name in os.listdir(root) if os.path.isdir(root) else []:
            if name.isdigit() and int(name) > epoch:
                shutil.rmtree(os.path.join(root, name))

    @property
    def _checkpointing(self) -> bool:
        # Checkpoints are single-process: a multi-process run's state spans hosts (and orbax's
        # manager waits for every process, while only process 0 writes files).
        return bool(self.config.checkpoint_every) and jax.process_count() == 1

    def checkpoint_due(self, epoch: int) -> bool:
        every = self.config.checkpoint_every
        return self._checkpointing and (epoch % every == 0 or epoch == self.config.epochs)

    def write_epoch(self, record: dict[str, Any], state: Any | None) -> None:
        """Appends the epoch's metrics line, checkpoints ``state`` if due, and moves a new run into place."""
        epoch = record["epoch"]
        with open(os.path.join(self.live, "metrics.jsonl"), "a") as f:
            f.write(json.dumps(record) + "\n")
        if self._manager and self.checkpoint_due(epoch):
            self._manager.save(epoch, args=ocp.args.Composite(state=ocp.args.StandardSave(state)))
            step = os.path.join(self.live, "checkpoints", str(epoch))
            write_atomic(os.path.join(step, MANIFEST), json.dumps(file_digests(step)))
        if self.live == self.incoming:
            self._move_into_place()

    def _move_into_place(self) -> None:
        if self._manager:
            self._manager.close()
        old = os.path.join(os.path.dirname(self.path), f".{os.path.basename(self.path)}.replaced")
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
        if self._manager:
            self._manager.close()
            self._manager = None

    @staticmethod
    def _open(directory: str) -> ocp.CheckpointManager:
        options = ocp.CheckpointManagerOptions(max_to_keep=2, enable_async_checkpointing=False, create=True)
        return ocp.CheckpointManager(os.path.join(directory, "checkpoints"), options=options)


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
