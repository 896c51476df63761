"""A config tuned as the comparison tunes it: its grid on selection seeds, the point chosen on validation,
then fresh seeds at that point (``sidjax compare`` and ``experiments/run.py``)."""

from __future__ import annotations

import dataclasses
import os
from typing import Any

from sidjax.errors import ConfigError
from sidjax.train.config import TrainConfig
from sidjax.train.runner import run
from sidjax.train.selection import read_selection


def at_chosen_point(
    config: TrainConfig, out_dir: str, select_seeds: tuple[int, ...], **run_args: Any
) -> TrainConfig:
    """``config`` at the point its grid chooses: the grid trains (or resumes) on ``select_seeds`` in
    ``out_dir/grid`` and its ``selection.json`` names the point; ``config`` itself without a grid.

    ``run_args`` go to ``sidjax.run`` (dataset, model, resume, ...). Raises ``ConfigError`` where the
    selection seeds are among the config's (the reported runs must be fresh draws), there is no
    validation split, or every point diverged.
    """
    if not config.grid:
        return config
    if set(select_seeds) & set(config.seeds):
        raise ConfigError(f"the selection seeds {select_seeds} must differ from the seeds {config.seeds}: the runs "
                          "reported at the chosen point are fresh draws", "seed")  # fmt: skip
    if not config.validation:
        raise ConfigError("a grid is chosen on a validation split: give validation N (examples held out)",
                          "validation")  # fmt: skip
    grid_dir = os.path.join(out_dir, "grid")
    run(dataclasses.replace(config, seed=tuple(select_seeds)), grid_dir, **run_args)
    record = read_selection(grid_dir)
    if record["chosen"] is None:
        raise ConfigError(f"{grid_dir}: every point of the grid diverged; nothing to train at", "lr")
    return config.for_point(tuple(record["chosen"]["point"].items()))
