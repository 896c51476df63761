"""``make_learner``: one factory, one ``Learner`` record, for every method, execution, schedule and placement.

    learner = sidjax.make_learner(network, optax.adam(1e-3), "sid")
    state = learner.init(variables)
    state, metrics = learner.step(state, (x, labels), key)

Placements (``sidjax.placement.Placement``):

* ``"single"``: the step is one ``jax.jit`` program on the default device.
* ``"mesh:DATA,UNIT"``: the same program on a ``(data, unit)`` mesh: the
  batch split ``DATA`` ways, stacked units and their optimizer states
  ``UNIT`` ways, the stem replicated; XLA inserts the collectives
  (``sidjax.parallel``).
* ``"stages[:N]"``: blockwise units in N stages, one program each, placed
  over the devices (``sidjax.stages``).

Every rule of what a method can train how is checked here, by its owner
(``sidjax.methods``), before anything is compiled.
"""

from __future__ import annotations

import jax
import optax
from jax.sharding import NamedSharding, PartitionSpec

from sidjax.losses import SIDLoss
from sidjax.methods import Method, check_adapted, check_training, get_method
from sidjax.network import Network, Variables
from sidjax.parallel import DATA, check_mesh, make_mesh, replicate, shard_state
from sidjax.placement import Placement
from sidjax.schedule import init_slots
from sidjax.stages import make_stages
from sidjax.state import Learner, TrainState, new_state
from sidjax.steps import Augment, make_step, memory_beyond_arguments


def make_learner(
    network: Network,
    tx: optax.GradientTransformation,
    method: str | Method = "sid",
    loss: SIDLoss = SIDLoss(),
    *,
    execution: str = "auto",
    pipelined: bool = False,
    placement: str | Placement = "single",
    devices: list | None = None,
    augment: Augment | None = None,
    batch_size: int | None = None,
    donate: bool = False,
    refresh: bool = False,
) -> Learner:
    """The ``Learner`` that trains ``network`` with ``method``.

    Args:
      network: from ``sidjax.blockwise``, ``sidjax.trunk``,
        ``sidjax.make_network``, ...
      tx: optax optimizer, applied per part (the stem and each unit, each on
        its own state).
      method: a key of ``sidjax.METHODS`` (or a ``sidjax.Method``). A method
        that changes the network or how it predicts (``fa``, ``dfa``, ``ff``,
        ``hsic``, ``noprop``) takes the network its ``adapt`` returns.
      loss: local-loss hyperparameters (BP uses only ``label_smoothing``).
      execution: how a local step groups its unit updates: ``"auto"``,
        ``"vmap"``, ``"fused"`` or ``"sequential"`` (``sidjax.steps``).
      pipelined: the pipelined schedule (blockwise, local methods;
        ``sidjax.schedule``).
      placement: ``"single"``, ``"mesh:DATA,UNIT"`` or ``"stages[:N]"``.
      devices: the devices of a mesh or of stages (default: all).
      augment: optional ``augment(key, x) -> x`` run on each batch.
      batch_size: examples per step; the pipelined schedule (its slots) and
        a mesh (its data axis) need it.
      donate: the single-device step donates its input state (training
        loops that do not keep the old state).
      refresh: execution ``"sequential"``: each unit reads its predecessor's
        output as it is after that unit's update of this step (the units
        updated in turn, as the HSIC bottleneck's authors train), not the
        output that unit's update used.

    Returns:
      A ``Learner``.

    Raises:
      ConfigError: a combination the method, network or devices cannot
        train, in one line naming the setting.
    """
    spec, placement = get_method(method), Placement.parse(placement)
    check_adapted(spec, network)
    execution = check_training(spec, network.mode, belief_input=network.belief_input, execution=execution,
                               pipelined=pipelined, stages=placement.kind == "stages", stacked=network.stacked,
                               refresh=refresh)  # fmt: skip
    loss = spec.loss(loss)
    loss.check_units(network.num_units)
    if placement.kind == "stages":
        return make_stages(network, spec, tx, loss, pipelined=pipelined, num_stages=placement.stages or None,
                           devices=devices, augment=augment, batch_size=batch_size, refresh=refresh)  # fmt: skip
    step = make_step(network, tx, spec, loss, execution, pipelined, augment, refresh)

    def init(variables: Variables) -> TrainState:
        slots = init_slots(network, spec, variables, batch_size) if pipelined else ()
        return new_state(variables, tx, slots)

    def template(variables: Variables) -> TrainState:
        return jax.eval_shape(init, variables)

    def memory_bytes(state, batch, key) -> int:
        return memory_beyond_arguments(jax.jit(step, donate_argnums=0).lower(state, batch, key).compile())

    donated = (0,) if donate else ()
    if placement.kind == "mesh":
        return _on_mesh(network, step, init, memory_bytes, placement, devices, batch_size, donated, execution)
    return Learner(
        network=network,
        init=init,
        step=jax.jit(step, donate_argnums=donated),
        place=jax.device_put,
        gather=lambda state: state,
        put=jax.device_put,
        memory_bytes=memory_bytes,
        template=template,
        execution=execution,
    )


def _on_mesh(
    network, step, init, memory_bytes, placement: Placement, devices, batch_size, donated, execution
) -> Learner:
    """The single-device step as one program on a ``(data, unit)`` mesh: the batch split along ``data``."""
    mesh = make_mesh(*placement.mesh, devices)
    check_mesh(network, mesh, batch_size)
    data = NamedSharding(mesh, PartitionSpec(DATA))

    def sharded(state, batch, key):
        return step(state, jax.lax.with_sharding_constraint(batch, data), key)

    def place(state):
        return shard_state(state, network, mesh)

    return Learner(
        network=network,
        init=lambda variables: place(init(variables)),
        step=jax.jit(sharded, donate_argnums=donated),
        place=place,
        gather=lambda state: state,  # global arrays: one program reads them where they are
        put=lambda tree: replicate(tree, mesh),
        memory_bytes=memory_bytes,
        template=lambda variables: jax.eval_shape(init, variables),
        execution=execution,
    )
