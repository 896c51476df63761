"""Placing a SID network on a ``(data, unit)`` device mesh.

The training step does not change: ``jax.jit`` compiles it for wherever its
inputs live (``NamedSharding``), and XLA inserts the collectives. Stacked
units, their stats and optimizer states are split along ``unit``; the batch
along ``data``; the stem (the shared extractor) is replicated, so its gradient
(``Σ_i ∂L_i/∂θ_c`` over units and examples) is reduced over both axes.
Callers choose the mesh, not a different API.

Arrays are placed with ``jax.make_array_from_callback`` from host values that
every process holds (same data, same seed), so the same code places them on a
mesh that spans several processes (``sidjax.distributed``).
"""

from __future__ import annotations

from typing import Any

import jax
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from sidjax.errors import ConfigError
from sidjax.network import Network, Parts
from sidjax.state import TrainState

DATA, UNIT = "data", "unit"


def make_mesh(data: int, unit: int, devices: list | None = None) -> Mesh:
    """A ``(data, unit)`` mesh over ``data * unit`` devices (default: the first ones)."""
    available = devices if devices is not None else jax.devices()
    if data < 1 or unit < 1 or data * unit > len(available):
        raise ConfigError(
            f"placement: a ({data}, {unit}) mesh needs {data * unit} devices; {len(available)} are available",
            "placement",
        )
    auto = jax.sharding.AxisType.Auto
    return jax.make_mesh((data, unit), (DATA, UNIT), (auto, auto), devices=available[: data * unit])


def check_mesh(network: Network, mesh: Mesh, batch_size: int | None) -> None:
    """``ConfigError`` (one line) for a mesh that does not divide the units or the batch."""
    units, data = mesh.shape[UNIT], mesh.shape[DATA]
    if units > 1 and not network.stacked:
        raise ConfigError(
            "placement: splitting units over the mesh's unit axis needs identical (stacked) units; use unit=1, "
            "or stages for blocks of different structure",
            "placement",
        )
    if network.num_units % units:
        raise ConfigError(
            f"placement: the mesh's unit axis ({units}) must divide the number of units ({network.num_units})",
            "placement",
        )
    if batch_size is not None and batch_size % data:
        raise ConfigError(
            f"placement: the mesh's data axis ({data}) must divide the batch size ({batch_size})", "placement"
        )


def _place(tree: Any, sharding_of) -> Any:
    """Global arrays from host values held by every process; ``sharding_of(array) -> sharding``."""

    def place(a):
        host = np.asarray(a)
        return jax.make_array_from_callback(host.shape, sharding_of(host), lambda index: host[index])

    return jax.tree.map(place, tree)


def replicate(tree: Any, mesh: Mesh) -> Any:
    """Host arrays (the same on every process) -> global arrays held whole by every device of ``mesh``."""
    replicated = NamedSharding(mesh, PartitionSpec())
    return _place(tree, lambda a: replicated)


def to_host(tree: Any) -> Any:
    """Host (numpy) copies of possibly multi-process sharded arrays, on every process."""
    if jax.process_count() == 1:
        return jax.device_get(tree)
    return multihost_utils.process_allgather(tree, tiled=True)


def shard_state(state: TrainState, network: Network, mesh: Mesh) -> TrainState:
    """Puts params, stats and optimizer state on the mesh: units split along ``unit``, the rest replicated."""
    check_mesh(network, mesh, None)
    replicated = NamedSharding(mesh, PartitionSpec())

    def units(tree: Any) -> Any:
        # A size-1 unit axis is placed as replicated, which is how the step returns it
        # (otherwise the second step would see a new input sharding and recompile).
        if not network.stacked or mesh.shape[UNIT] == 1:
            return _place(tree, lambda a: replicated)
        split = NamedSharding(mesh, PartitionSpec(UNIT))
        return _place(tree, lambda a: split if a.ndim else replicated)

    parts = Parts(_place(state.parts.stem, lambda a: replicated), units(state.parts.units))
    return TrainState(parts, _place(state.step, lambda a: replicated), units(state.slots))


def shard_batch(batch: tuple, network: Network, mesh: Mesh) -> tuple:
    """Splits ``(x [B, ...], labels [B])`` along ``data``."""
    check_mesh(network, mesh, batch[1].shape[0])
    return _place(batch, lambda a: NamedSharding(mesh, PartitionSpec(DATA)))
