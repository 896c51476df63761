"""Starting a run from another run's trained network (``TrainConfig.init_from``).

The network is the other run's, as its method built it; each seed starts
from that run's ``seed<k>/`` when it trained several seeds (else every seed
from the one run), from its newest intact checkpoint. ``make_plan`` builds
the other run's plan; this module finds its directory and reads its state.
"""

from __future__ import annotations

import dataclasses
import os
import warnings

from sidjax.errors import ConfigError
from sidjax.state import TrainState
from sidjax.train.config import TrainConfig
from sidjax.train.rundir import RunDir

# What a warm start takes from the run it starts from: the network as that run built it.
NETWORK_FIELDS = ("model", "mode", "num_modules", "num_blocks", "head", "belief_input", "tiny", "conv_impl",
                  "image_size")  # fmt: skip


def source_dir(init_from: str, seed: int) -> str:
    """The run directory a seed starts from: ``init_from/seed<seed>`` when that run trained several seeds."""
    per_seed = os.path.join(init_from, f"seed{seed}")
    if os.path.isdir(per_seed):
        return per_seed
    several = os.path.isdir(init_from) and not os.path.isfile(os.path.join(init_from, "config.json"))
    trained = sorted(d for d in os.listdir(init_from) if d.startswith("seed")) if several else []
    if trained:
        raise ConfigError(
            f"init_from {init_from} trained {', '.join(trained)}, not seed{seed}: train the same seeds, "
            f"or give one seed's directory ({os.path.join(init_from, trained[0])}) for every seed",
            "init_from",
        )
    return init_from


def from_source(config: TrainConfig, source: TrainConfig) -> TrainConfig:
    """``config`` with the network settings of the run it starts from (refusing another dataset)."""
    if source.dataset != config.dataset:
        raise ConfigError(
            f"init_from {config.init_from} was trained on {source.dataset}, not {config.dataset}", "init_from"
        )
    return dataclasses.replace(config, **{name: getattr(source, name) for name in NETWORK_FIELDS})


def trained_state(run_dir: RunDir, template: TrainState) -> TrainState:
    """The newest intact checkpoint of ``run_dir``; a warning where that run has not finished or its newest
    checkpoint is damaged (the checkpoint read is named)."""
    skipped: list[str] = []
    position, state = run_dir.stored.newest_restorable(None, template, skipped)
    if skipped or run_dir.finished_summary() is None:
        why = "; ".join(skipped) or "that run has not finished"
        warnings.warn(f"init_from {run_dir.path}: {why}; starting from its checkpoint of {position.describe()}",
                      stacklevel=3)  # fmt: skip
    return state
