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
from typing import Any

import jax

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


def check_not_own(init_from: str | None, out_dir: str | None) -> None:
    """Refuses a run whose ``init_from`` is its own directory (or inside it, or holds it): writing the run
    would replace the network it starts from."""
    if not init_from or out_dir is None:
        return
    source, own = os.path.realpath(init_from), os.path.realpath(out_dir)
    if source == own or source.startswith(own + os.sep) or own.startswith(source + os.sep):
        raise ConfigError(
            f"init_from {init_from} is this run's own directory (out {out_dir}): writing the run would replace "
            "the network it starts from; give the run another out",
            "init_from",
        )


def source_changed(recorded: dict | None, network: dict) -> str | None:
    """How the network ``init_from`` holds now (``network``: its name, units and parameters) differs from
    the one a run recorded it started from, or None."""
    if not recorded:
        return None
    diffs = [f"{k} {network[k]}, was {recorded[k]}" for k in ("name", "units", "parameters")
             if k in recorded and recorded[k] != network[k]]  # fmt: skip
    return "; ".join(diffs) or None


def network_summary(plan) -> dict[str, Any]:
    """The network's name, units and trained parameters (what a run records of it, ``trained_network``)."""
    shapes = jax.eval_shape(lambda key: plan.build(key)[1].params, jax.random.key(0))
    parameters = int(sum(leaf.size for leaf in jax.tree.leaves(shapes)))
    return {"name": plan.network.name, "units": plan.network.num_units, "parameters": parameters}


def check_source(plan, recorded: dict | None, path: str) -> None:
    """A run started from ``init_from`` is refused, in one line naming it, where that directory now holds
    another network than the one the run recorded."""
    changed = source_changed(recorded, network_summary(plan)) if plan.config.init_from else None
    if changed:
        raise ConfigError(
            f"{path} started from init_from {plan.config.init_from}, which now holds another network ({changed}): "
            "the run it started from was replaced; restore it, or start anew",
            "init_from",
        )
