"""Blockwise units in stages, each stage one program on its device.

Blockwise units never exchange gradients, only forward activations, so each
unit and its optimizer state can live on its own device. ``BlockPipeline``
cuts the K units into ``num_stages`` contiguous stages; stage s is one jitted
walk over its units (``sidjax.units.walk``) on ``devices[s * D // num_stages]``,
and activations move to the next stage with one ``jax.device_put`` per stage
boundary. Dispatch is asynchronous, so stages whose inputs are ready compute
at the same time. This works for blocks of any structure (VGG, ResNet) as
for identical ones (ViT). For stacked units the same placement is also
available as one program over a mesh (``placement="mesh:1,D"`` in
``TrainConfig``: the stacked units and slots are split along ``module``).

With the synchronous schedule stage s waits for stages 1..s-1, so on S
devices at most one is busy at a time (the exact blockwise step, tested equal
to the single-device step). With the pipelined schedule (``sidjax.pipelined``)
every stage trains on its slots of the previous step, so all stages compute
at once. On one device, ``num_stages=K`` runs one program per unit, which
holds the least memory (one unit's activations and temp at a time).
"""

from __future__ import annotations

import dataclasses

import chex
import jax
import jax.numpy as jnp
import optax

from sidjax.errors import ConfigError
from sidjax.losses import SIDLoss
from sidjax.methods import get_method
from sidjax.network import NetParams, Network
from sidjax.pipelined import init_slots
from sidjax.state import TrainState, init_train_state
from sidjax.steps import Augment, batch_metrics, check_method, memory_beyond_arguments
from sidjax.units import Part, first_input, make_unit_update, walk


@dataclasses.dataclass(frozen=True)
class BlockPipeline:
    """Trains a blockwise network with its units in stages on ``devices``.

    Attributes:
      network: a blockwise network (``make_blockwise_network``).
      tx: the optimizer of every part.
      method: ``"sid"`` or ``"dgl"`` (backprop has one global backward pass
        and cannot be cut into stages).
      loss: local-loss hyperparameters.
      pipelined: the pipelined schedule (else synchronous).
      num_stages: programs per step, 1..K (default: one per device, at most K).
      devices: where the stages go (default: all devices).
      augment: optional ``augment(key, x) -> x`` applied to the fresh batch.
    """

    network: Network
    tx: optax.GradientTransformation
    method: str = "sid"
    loss: SIDLoss = SIDLoss()
    pipelined: bool = False
    num_stages: int | None = None
    devices: tuple | None = None
    augment: Augment | None = None

    def __post_init__(self):
        net, spec = self.network, get_method(self.method)
        if not net.cut_features:
            raise ConfigError(
                "placement: stages need a blockwise network; place the shared trunk on a mesh", "placement"
            )
        if not spec.local:
            raise ConfigError(
                f"placement: method {self.method!r} cannot be cut into stages (one global backward pass); "
                "use 'sid' or 'dgl', or a data mesh for backprop",
                "placement",
            )
        check_method(net, spec)
        devices = tuple(self.devices or jax.devices())
        stages = self.num_stages or min(len(devices), net.num_units)
        if not 1 <= stages <= net.num_units:
            raise ConfigError(
                f"placement: stages must lie in [1, {net.num_units}] (one unit at least each), got {stages}",
                "placement",
            )
        sizes = [net.num_units // stages + (s < net.num_units % stages) for s in range(stages)]
        bounds = tuple((sum(sizes[:s]), sum(sizes[: s + 1])) for s in range(stages))
        update = make_unit_update(net, self.tx, spec.loss(self.loss))
        set_ = object.__setattr__
        set_(self, "devices", devices)
        set_(self, "num_stages", stages)
        set_(self, "bounds", bounds)
        set_(self, "_alphas", spec.loss(self.loss).alphas(net.num_units))
        set_(self, "_update", update)
        set_(self, "_stage", jax.jit(self._stage_program, static_argnums=0))
        set_(self, "_metrics", jax.jit(lambda losses, logits, labels: batch_metrics(
            jnp.stack(losses).sum(), jnp.stack(losses), jnp.stack(logits), labels)))  # fmt: skip

    def stage_device(self, s: int):
        return self.devices[s * len(self.devices) // self.num_stages]

    def device_of(self, k: int):
        """The device of unit k."""
        return self.stage_device(next(s for s, (a, b) in enumerate(self.bounds) if a <= k < b))

    def init(self, params: NetParams, x_shape: tuple[int, ...]) -> TrainState:
        """Fresh optimizer states (and empty slots if pipelined), placed; ``x_shape = (B, H, W, C)``."""
        slots = init_slots(self.network, params, x_shape) if self.pipelined else ()
        return self.place(init_train_state(params, self.tx, slots))

    def place(self, state: TrainState) -> TrainState:
        """A ``TrainState`` in the network's layout (e.g. from a checkpoint) with units on their devices."""
        net = self.network
        per_unit = [net.unit_list(t) for t in (state.params.units, state.opt_state.units)]
        slots = tuple(net.unit_list(state.slots)) if self.pipelined else ()
        place = self._place_units
        dev0 = self.stage_device(0)
        return TrainState(
            NetParams(jax.device_put(state.params.stem, dev0), place(per_unit[0])),
            NetParams(jax.device_put(state.opt_state.stem, dev0), place(per_unit[1])),
            jax.device_put(state.step, dev0),
            place(list(slots)),
        )

    def _place_units(self, trees: list) -> tuple:
        return tuple(jax.device_put(t, self.device_of(k)) for k, t in enumerate(trees))

    def gather(self, state: TrainState, device=None) -> TrainState:
        """The state on one device, in the network's layout (for evaluation and checkpoints)."""
        state = jax.device_put(state, device or self.devices[0])
        join = self.network.join_units
        return TrainState(
            NetParams(state.params.stem, join(list(state.params.units))),
            NetParams(state.opt_state.stem, join(list(state.opt_state.units))),
            state.step,
            join(list(state.slots)) if self.pipelined else (),
        )

    def _stage_program(self, s, units, inputs, stem, batch):
        """Stage s's walk; stage 0 also augments the batch, builds the first input and counts the step."""
        a, b = self.bounds[s]
        x, step = None, None
        if s == 0:
            x, labels, key, step = batch
            if self.augment is not None:
                x = self.augment(jax.random.fold_in(key, step), x)
            fresh = first_input(self.network, x, labels)
            inputs = [fresh._replace(valid=jnp.asarray(True)), *inputs] if self.pipelined else fresh
            step = step + 1
        elif not self.pipelined:
            inputs = inputs._replace(valid=True)  # every synchronous input is valid: no masking traced
        units, stem, outputs = walk(
            self._update, self.network, list(units), range(a, b), inputs, self._alphas, stem, x
        )
        return units, stem, outputs, step

    def step(
        self, state: TrainState, batch: tuple[chex.Array, chex.Array], key: chex.PRNGKey
    ) -> tuple[TrainState, dict[str, chex.Array]]:
        """One step on ``batch = (x [B, ...], labels [B])``, metrics as ``make_train_step``'s."""
        net, dev0 = self.network, self.stage_device(0)
        unit_params, unit_opts = state.params.units, state.opt_state.units  # placed: tuples, any network
        stem = Part(state.params.stem, state.opt_state.stem) if net.stem_def is not None else None
        slots = list(state.slots)
        carry, units, outputs, step = None, [], [], None
        for s, (a, b) in enumerate(self.bounds):
            if self.pipelined:
                inputs = [slots[k] for k in range(max(a, 1), b)]
            else:
                inputs = None if s == 0 else jax.device_put(carry, self.stage_device(s))
            first = jax.device_put((*batch, key), dev0) + (state.step,) if s == 0 else None
            parts = tuple(Part(unit_params[k], unit_opts[k]) for k in range(a, b))
            parts, new_stem, outs, new_step = self._stage(s, parts, inputs, stem if s == 0 else None, first)
            if s == 0:
                stem, step = new_stem if stem is not None else None, new_step
            units += parts
            outputs += outs
            carry = outs[-1].next
        stem = stem or Part(state.params.stem, state.opt_state.stem)
        new = TrainState(
            NetParams(stem.params, tuple(u.params for u in units)),
            NetParams(stem.opt_state, tuple(u.opt_state for u in units)),
            step,
            self._next_slots(slots, outputs) if self.pipelined else (),
        )
        losses, logits = jax.device_put(([o.loss for o in outputs], [o.logits for o in outputs]), dev0)
        return new, self._metrics(losses, logits, jax.device_put(outputs[-1].next.labels, dev0))

    def _next_slots(self, slots: list, outputs: list) -> tuple:
        """Unit k's output waits one step in unit k+1's slot, moved only where k+1 is on another stage."""
        moved = [
            out.next
            if self.device_of(k) == self.device_of(k + 1)
            else jax.device_put(out.next, self.device_of(k + 1))
            for k, out in enumerate(outputs[:-1])
        ]
        return (slots[0], *moved)

    def memory_bytes(self, state: TrainState, batch: tuple, key: chex.PRNGKey) -> int:
        """Compiled memory of one step: the largest over stages of its memory beyond its arguments, plus its inputs.

        Stages run one after another (synchronous) or on different devices,
        so a device holds at most one stage's memory at a time. Not counted:
        the stage programs do not donate, so a stage's new parameters and
        optimizer state live beside the old ones until the step returns.
        """
        calls, program = [], self._stage

        def record(s, *args):
            out = program(s, *args)
            calls.append((s, args, out))
            return out

        object.__setattr__(self, "_stage", record)
        try:
            self.step(state, batch, key)
        finally:
            object.__setattr__(self, "_stage", program)
        peak = 0
        for s, args, _ in calls:
            own = memory_beyond_arguments(program.lower(s, *args).compile())  # outputs included
            inputs = sum(a.nbytes for a in jax.tree.leaves([args[1], args[3]]))  # the step's intermediates
            peak = max(peak, own + inputs)
        return peak
