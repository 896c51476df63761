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
        set per repetition.
      seeds: the repetitions.
      smoke_runs: fnmatch patterns of the runs the smoke variant keeps (a few
        that cover every kind of run in the config).
    """

    name: str
    doc: str
    runs: dict[str, TrainConfig]
    seeds: tuple[int, ...] = (0,)
    smoke_runs: tuple[str, ...] = ("*",)

    def select(self, pattern: str) -> dict[str, TrainConfig]:
        """The runs whose names match ``pattern`` (fnmatch, e.g. ``'noise*/sid'``)."""
        return {n: c for n, c in self.runs.items() if fnmatch.fnmatch(n, pattern)}

    def smoke(self) -> Experiment:
        """Every kept run for one epoch on a few examples with tiny architectures, two seeds at most."""
        kept = {n: c for pattern in self.smoke_runs for n, c in self.select(pattern).items()}
        runs = {n: smoke_config(c) for n, c in self.runs.items() if n in kept}
        return dataclasses.replace(self, runs=runs, seeds=self.seeds[:2])

    def command(self, run: str | None = None, seed: int | None = None) -> str:
        """The command that makes ``run`` (all runs if None) for ``seed`` (all seeds if None)."""
        cmd = f"python -m experiments.run {self.name}"
        if run is not None:
            cmd += f" --only '{run}'"
        if seed is not None:
            cmd += f" --seeds {seed}"
        return cmd


def smoke_config(config: TrainConfig) -> TrainConfig:
    return dataclasses.replace(
        config, epochs=1, limit_train=64, limit_test=64, batch_size=32, eval_batch_size=64, tiny=True,
        validation=min(config.validation, 16),
    )  # fmt: skip


def load(name: str) -> Experiment:
    """The experiment called ``name`` (``KeyError`` listing the known ones)."""
    if name not in NAMES:
        raise KeyError(f"unknown experiment {name!r}; known: {', '.join(NAMES)}")
    return importlib.import_module(f"experiments.configs.{name}").EXPERIMENT
