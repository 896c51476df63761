"""A run directory's checkpoints: where each was taken, whether its files are intact, and restoring one.

Every checkpoint carries a manifest of its files' sha256, written after
orbax's save; a checkpoint whose files do not match it, or that has none, is
never handed to orbax. The state is restored from its own step directory
(the same format a ``CheckpointManager`` writes), so a reader never lists the
steps a writer may be removing.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import numpy as np
import orbax.checkpoint as ocp

from sidjax.errors import ConfigError
from sidjax.state import TrainState
from sidjax.train.files import MANIFEST, file_digests, orbax_quiet
from sidjax.train.layout import CheckpointLayoutError, layout_differences, saved_arrays

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


class StoredCheckpoints:
    """The checkpoints in ``path/checkpoints``.

    Args:
      path: the run directory (named in messages).
      lock: its writer's claim file (a save under way is not read while it exists).
      log: where skipped checkpoints are said.
      recorded: how many finished epochs the run's metrics record.
    """

    def __init__(self, path: str, lock: str, log: Callable[[str], None], recorded: Callable[[], int]):
        self.path, self.lock, self.log, self.recorded = path, lock, log, recorded
        self.root = os.path.join(path, "checkpoints")

    def checkpoints(self) -> list[Position]:
        """Checkpoints whose finished epochs the metrics record, newest first."""
        recorded = self.recorded()
        positions = self._all_positions()  # orbax moves a finished save into a directory named by its step
        return sorted(
            (p for p in positions if p.epochs <= recorded), key=lambda p: (p.epochs, p.step), reverse=True
        )

    def being_written(self, position: Position) -> bool:
        """The checkpoint has no manifest yet while its run's writer holds the claim: a save under way."""
        step = os.path.join(self.root, str(position.id))
        return os.path.exists(self.lock) and not os.path.exists(os.path.join(step, MANIFEST))

    def exists(self, position: Position) -> bool:
        """The checkpoint is still there (a writer keeps only the newest two)."""
        return os.path.isdir(os.path.join(self.root, str(position.id)))

    def _position(self, checkpoint_id: int) -> Position:
        try:
            with open(os.path.join(self.root, str(checkpoint_id), POSITION)) as f:
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
        state_dir = os.path.join(self.root, str(position.id), "state")
        # this checkpoint alone: a manager would list every step, which a writer may be removing
        with orbax_quiet(), ocp.StandardCheckpointer() as checkpointer:  # one reader for layout and arrays
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
                with open(os.path.join(self.root, str(position.id), POSITION)) as f:
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
            with open(os.path.join(self.root, str(position.id), POSITION)) as f:
                return float(json.load(f).get("seconds", 0.0))
        except (FileNotFoundError, json.JSONDecodeError, TypeError, ValueError):
            return 0.0

    def _damage(self, checkpoint_id: int) -> str | None:
        """Why the checkpoint's files cannot be trusted, or None when they match their manifest."""
        step = os.path.join(self.root, str(checkpoint_id))
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

    def drop_after(self, position: Position) -> None:
        """Removes the checkpoints after ``position``: their steps are about to run again (a damaged one among them).

        Orbax does not save a step that already exists: a damaged checkpoint left
        in place would outlive the steps that replace it.
        """
        for later in self._all_positions():
            if (later.epochs, later.step) > (position.epochs, position.step):
                shutil.rmtree(os.path.join(self.root, str(later.id)))

    def _all_positions(self) -> list[Position]:
        root = self.root
        try:
            names = os.listdir(root)
        except (FileNotFoundError, NotADirectoryError):
            names = []
        return [self._position(int(n)) for n in names if n.isdigit()]
