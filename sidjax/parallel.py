"""Placing a SID network on a ``(data, module)`` device mesh.

The training step does not change: ``jax.jit`` compiles it for wherever its
inputs live (``NamedSharding``), and XLA inserts the collectives. Stacked
units and their optimizer states are split along ``module``; the batch along
``data``; the stem (the shared extractor) is replicated, so its gradient
(``Σ_i ∂L_i/∂θ_c`` over modules and examples) is reduced over both axes.
Callers choose the mesh, not a different API.
"""

from __future__ import annotations

from typing import Any

import jax
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from sidjax.network import Network
from sidjax.steps import TrainState

DATA, MODULE = "data", "module"


def make_mesh(data: int, module: int, devices: list | None = None) -> Mesh:
    """A ``(data, module)`` mesh over ``data * module`` devices (default: the first ones)."""
    available = devices if devices is not None else jax.devices()
    if data < 1 or module < 1 or data * module > len(available):
        raise ValueError(
            f"a ({data}, {module}) mesh needs {data * module} devices; {len(available)} are available"
        )
    auto = jax.sharding.AxisType.Auto
    return jax.make_mesh((data, module), (DATA, MODULE), (auto, auto), devices=available[: data * module])


def _check(network: Network, mesh: Mesh, batch_size: int | None) -> None:
    modules, data = mesh.shape[MODULE], mesh.shape[DATA]
    if modules > 1 and not network.stacked:
        raise ValueError("sharding over 'module' needs stacked (identical) units; use a mesh with module=1")
    if network.num_units % modules:
        raise ValueError(
            f"the mesh's module axis ({modules}) must divide the number of modules ({network.num_units})"
        )
    if batch_size is not None and batch_size % data:
        raise ValueError(f"the mesh's data axis ({data}) must divide the batch size ({batch_size})")


def shard_state(state: TrainState, network: Network, mesh: Mesh) -> TrainState:
    """Puts params and optimizer state on the mesh: units split along ``module``, the rest replicated."""
    _check(network, mesh, None)
    replicated = NamedSharding(mesh, PartitionSpec())

    def units(tree: Any) -> Any:
        # A size-1 module axis is placed as replicated, which is how the step returns it
        # (otherwise the second step would see a new input sharding and recompile).
        if not network.stacked or mesh.shape[MODULE] == 1:
            return jax.device_put(tree, replicated)
        return jax.tree.map(
            lambda a: jax.device_put(
                a, NamedSharding(mesh, PartitionSpec(MODULE) if a.ndim else PartitionSpec())
            ),
            tree,
        )

    def place(params_like):
        return type(params_like)(jax.device_put(params_like.stem, replicated), units(params_like.units))

    return TrainState(place(state.params), place(state.opt_state), jax.device_put(state.step, replicated))


def shard_batch(batch: tuple, network: Network, mesh: Mesh) -> tuple:
    """Splits ``(x [B, ...], labels [B])`` along ``data``."""
    _check(network, mesh, batch[1].shape[0])
    return jax.device_put(batch, NamedSharding(mesh, PartitionSpec(DATA)))
