"""The run directories of the members trained together: one per seed and grid point, or none (no ``out_dir``).

Every question "is there a directory to write to?" is answered here, so the
run layer writes, checkpoints and restores the same way with or without one.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from typing import Any

from sidjax.errors import ConfigError
from sidjax.state import TrainState
from sidjax.train.checkpoints import Position
from sidjax.train.config import TrainConfig
from sidjax.train.members import Member, Members, member_config, member_path
from sidjax.train.rundir import RunDir


class RunDirs:
    """One ``RunDir`` per member, in the members' order, or none.

    Args:
      dirs: member -> its directory (empty: the run writes nothing).
    """

    def __init__(self, dirs: dict[Member, RunDir]):
        self._dirs = dirs

    @classmethod
    def open(cls, out_dir: str | None, config: TrainConfig, log: Callable[[str], None], steps_per_epoch: int,
             recipe: dict[str, Any], allow_changed_method: bool = False) -> RunDirs:  # fmt: skip
        """One directory per member (``member_path``: ``out_dir`` itself for one seed without a grid);
        none without ``out_dir``."""
        if out_dir is None:
            return cls({})
        return cls({
            m: RunDir(member_path(out_dir, config, m), member_config(config, m), log, steps_per_epoch, recipe,
                      allow_changed_method)
            for m in Members.of(config)
        })  # fmt: skip

    def __bool__(self) -> bool:
        return bool(self._dirs)

    def __iter__(self) -> Iterator[RunDir]:
        return iter(self._dirs.values())

    def only(self, members) -> RunDirs:
        """The directories of ``members`` (those still to train)."""
        return RunDirs({m: self._dirs[m] for m in members if m in self._dirs})

    @property
    def where(self) -> str | None:
        """The directory messages name: the run's, or what several members' share (None without one)."""
        runs = list(self)
        if not runs:
            return None
        return runs[0].path if len(runs) == 1 else os.path.commonpath([d.path for d in runs])

    def claim(self, *, resume: bool, overwrite: bool) -> None:
        """Checks every directory, then claims every one: a refused run writes nothing (``release`` after)."""
        for d in self:
            d.check(resume=resume, overwrite=overwrite)
        for d in self:
            d.claim()

    def release(self) -> None:
        for d in self:
            d.release()

    def finished(self) -> dict[Member, dict[str, Any]]:
        """Each member whose run has finished at this config's length: its summary."""
        found = {m: d.finished_summary() for m, d in self._dirs.items()}
        return {m: summary for m, summary in found.items() if summary is not None}

    def finished_state(self, member: Member, template: TrainState) -> TrainState | None:
        """The last checkpoint's state of a finished run, where it has one."""
        run_dir = self._dirs[member]
        positions = run_dir.stored.checkpoints()
        restored = run_dir.stored.restore(positions[0], template) if positions else None
        return restored[0] if restored else None

    def histories(self, members, epochs: int | None) -> dict[Member, list[dict]]:
        """Each member's recorded epochs 1..``epochs`` (all for None; none without a directory)."""
        return {m: self._dirs[m].history()[:epochs] if m in self._dirs else [] for m in members}

    def check_data(self, fingerprint: str) -> None:
        """Refuses, in one line, to resume a run on other data than it trained on (where it recorded it)."""
        for d in self:
            recorded = d.run_info().get("dataset", {}).get("fingerprint")
            if recorded is not None and recorded != fingerprint:
                raise ConfigError(
                    f"resume: {d.path} trained on other data (fingerprint {recorded}, now {fingerprint}): resume it "
                    "with the same dataset, limits and arrays, or start anew (overwrite=True or another out)",
                    "resume",
                )

    def begin(self, position: Position | None, dataset: dict, network: dict) -> None:
        for d in self:
            d.begin(position, dataset, network)

    def close(self) -> None:
        for d in self:
            d.close()

    def checkpoint_due(self, epoch: int) -> bool:
        return any(d.checkpoint_due(epoch) for d in self)

    def write_epoch(self, records: list[dict], states: list[TrainState] | None) -> bool:
        """Each member's metrics line, and its checkpoint where ``states`` are given; whether one was saved."""
        if not self:
            return False
        saved = [d.write_epoch(record, states[i] if states else None) for i, (d, record) in
                 enumerate(zip(self, records, strict=True))]  # fmt: skip
        return any(saved)

    def save(self, states: list[TrainState], epochs: int, steps: int, metrics: list, seconds: float) -> bool:
        """A checkpoint inside an epoch for every member; False where nothing could be saved."""
        wrote = [d.save(states[i], epochs, steps, metrics[i], seconds) for i, d in enumerate(self)]
        return any(wrote)

    def finish(self, member: Member, summary: dict[str, Any]) -> dict[str, Any]:
        """Writes ``member``'s summary where it has a directory; returns the summary as written."""
        return self._dirs[member].finish(summary) if member in self._dirs else summary

    def start(self, template: TrainState, log: Callable[[str], None]):
        """The newest checkpoint every member holds intact: ``(states, position, partial metrics or None)``.

        None where there is nothing to resume (no directory, or nothing
        recorded); ``ConfigError`` where epochs are recorded but none can be
        continued from.
        """
        runs = list(self)
        listed = [
            {(p.epochs, p.step): p for p in d.stored.checkpoints()} for d in runs
        ]  # read once per member
        if not (runs and any(d.history() or found for d, found in zip(runs, listed, strict=True))):
            return None
        common = set.intersection(*(set(found) for found in listed))
        for at in sorted(common, reverse=True):
            epochs, step = at
            positions = [found[at] for found in listed]
            restored = [d.stored.restore(p, template) for d, p in zip(runs, positions, strict=True)]
            if all(r is not None for r in restored):
                finished = max(len(d.history()) for d in runs)
                if finished > epochs or step:
                    later = f"; epochs {epochs + 1}..{finished} run again" if finished > epochs else ""
                    log(f"resuming from the checkpoint of {positions[0].describe()}{later}")
                partial = [r[1] for r in restored] if step else None
                return [r[0] for r in restored], positions[0], partial
        first = max(runs, key=lambda d: len(d.history()))
        why = "checkpoint_every is 0" if not first.config.checkpoint_every else "no intact checkpoint of a recorded epoch is left"  # fmt: skip
        raise ConfigError(
            f"resume: {first.path} holds {len(first.history())} finished epochs but nothing to continue from "
            f"({why}); nothing was changed: use overwrite=True to start again, or another out_dir",
            "resume",
        )

    def partial_seconds(self, position: Position) -> float:
        """The training time of a resumed epoch's steps before the checkpoint, as recorded with it."""
        first = next(iter(self), None)
        return first.stored.partial_seconds(position) if first else 0.0

    def stopped(self, signal: str, where: str, saved: bool) -> str:
        """The message of a run a stop signal ended."""
        if saved:
            return f"stopped by {signal} {where}; {self.where} holds a checkpoint of that point"
        why = "no out directory" if not self else "checkpoint_every is 0"
        return f"stopped by {signal} {where}; nothing could be saved ({why})"

    def interrupted(self, recorded: int) -> str:
        """The message of a run Ctrl-C ended after ``recorded`` epochs."""
        if not self:
            return f"interrupted after {recorded} epochs; nothing was saved (no out directory)"
        if any(d.live != d.path for d in self):
            return f"interrupted before the first epoch ended; nothing was saved in {self.where}"
        return f"interrupted; {self.where} holds epochs 1..{recorded} and continues from its last checkpoint"
