"""Experiment configs: one module per experiment, each defining ``EXPERIMENT``.

Run one with ``python -m experiments.run NAME`` (``--smoke`` for its tiny
variant); ``python experiments/report.py`` turns ``results/`` into RESULTS.md.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import importlib

from sidjax.train.config import TrainConfig

NAMES: tuple[str, ...] = (
    "main_table",
    "label_noise",
    "blockwise_heads",
    "depth",
    "alpha",
    "strong_baseline",
    "pipeline",
    "comparison",
)


@dataclasses.dataclass(frozen=True)
class Experiment:
    """A set of named runs, each repeated over ``seeds``.

    Attributes:
      name: the directory under ``results/``.
      doc: what it answers, the command, hardware, expected time and result
        (the config module's docstring).
      runs: run name (a path such as ``noise20/sid``) -> config; the seed is
        set per repetition. A config with a grid (``lr`` several values) is
        tuned: the grid trains on ``select_seeds`` in ``<run>/grid/``, its
        point is chosen on the validation split, and ``seeds`` then train
        at that point in ``<run>/seed<k>/``.
      seeds: the repetitions.
      smoke_runs: fnmatch patterns of the runs the smoke variant keeps (a few
        that cover every kind of run in the config).
      select_seeds: the seeds a grid trains on to choose its point; never
        among ``seeds``, so the reported runs are fresh draws.
      follows: run name -> the tuned run whose chosen point it trains at
        (a floor at the learning rate chosen for the method it is a floor of).
    """

    name: str
    doc: str
    runs: dict[str, TrainConfig]
    seeds: tuple[int, ...] = (0,)
    smoke_runs: tuple[str, ...] = ("*",)
    select_seeds: tuple[int, ...] = (100,)
    follows: dict[str, str] = dataclasses.field(default_factory=dict)

    def __post_init__(self):
        if set(self.select_seeds) & set(self.seeds):
            raise ValueError(f"{self.name}: select_seeds {self.select_seeds} overlap seeds {self.seeds}")
        for run, tuned in self.follows.items():
            if run not in self.runs or tuned not in self.runs or not self.runs[tuned].grid:
                raise ValueError(f"{self.name}: {run!r} follows {tuned!r}, which is not a tuned run of it")

    def select(self, pattern: str) -> dict[str, TrainConfig]:
        """The runs whose names match ``pattern`` (fnmatch, e.g. ``'noise*/sid'``)."""
        return {n: c for n, c in self.runs.items() if fnmatch.fnmatch(n, pattern)}

    def smoke(self) -> Experiment:
        """Every kept run (and the tuned runs they follow) for one epoch on a few examples with tiny
        architectures, two seeds at most, grids of two points."""
        kept = {n: c for pattern in self.smoke_runs for n, c in self.select(pattern).items()}
        kept.update({self.follows[n]: self.runs[self.follows[n]] for n in list(kept) if n in self.follows})
        runs = {n: smoke_config(c) for n, c in self.runs.items() if n in kept}
        follows = {n: t for n, t in self.follows.items() if n in runs}
        return dataclasses.replace(self, runs=runs, seeds=self.seeds[:2], follows=follows)

    def command(self, run: str | None = None, seed: int | None = None) -> str:
        """The command that makes ``run`` (all runs if None) for ``seed`` (all seeds if None)."""
        cmd = f"python -m experiments.run {self.name}"
        if run is not None:
            cmd += f" --only '{run}'"
        if seed is not None:
            cmd += f" --seeds {seed}"
        return cmd


def smoke_config(config: TrainConfig) -> TrainConfig:
    grid = {name: values[:2] for name, values in config.grid.items()}
    return dataclasses.replace(
        config, epochs=1, limit_train=64, limit_test=64, batch_size=32, eval_batch_size=64, tiny=True,
        validation=min(config.validation, 16), **grid,
    )  # fmt: skip


def load(name: str) -> Experiment:
    """The experiment called ``name`` (``KeyError`` listing the known ones)."""
    if name not in NAMES:
        raise KeyError(f"unknown experiment {name!r}; known: {', '.join(NAMES)}")
    return importlib.import_module(f"experiments.configs.{name}").EXPERIMENT
